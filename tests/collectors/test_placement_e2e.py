"""End to end: live collectors (kubelet gRPC, API server, fake NVML) -> trace -> replay.

The placement source and the NVML collector run against their fakes exactly as on a
node; their records are written with the trace writer and replayed, and the per-team
costs come out as the cost model says they must.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Config
from agent.replay import replay
from collectors.faults import FaultCounter
from collectors.kubeapi import WatchSettings, node_informer, pod_informer
from collectors.kubelet.client import PodResourcesClient
from collectors.owners import OwnerCache
from collectors.placement import PlacementSource
from collectors.pricing.ratecard import RateCard
from collectors.records import Meta, PodsRecord, Sample
from collectors.tracefile import iter_records
from collectors.tracewriter import TraceWriter
from tests.fakekube import FakeKube
from tests.fakekube import objects as k8s
from tests.fakekube.kubelet import FakeKubelet
from tests.fakenvml import MIB, FakeNvml, FakeProc, fake_nvml, h100, h100_mig  # noqa: F401 (fixture)

T0 = 1_763_632_800_000_000
SEC = 1_000_000
FAST = WatchSettings(backoff_initial_s=0.01, backoff_max_s=0.05, watch_timeout_s=30, read_timeout_s=10)


def cgroup(root: Path, pid: int, uid: str) -> None:
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "cgroup").write_text(
        f"0::/kubepods.slice/kubepods-pod{uid.replace('-', '_')}.slice/cri-containerd-{pid}.scope\n")


def test_live_collectors_record_a_trace_that_replays_to_the_per_team_costs(fake_nvml: FakeNvml, tmp_path: Path):
    from collectors.nvml import NvmlCollector
    from collectors.procfs import PodResolver

    predictor, bare, notebook, worker = k8s.kserve_predictor(), k8s.bare_pod(), k8s.notebook_pod(), k8s.pytorchjob_worker()
    proc = tmp_path / "proc"
    cgroup(proc, 1001, predictor["metadata"]["uid"])
    cgroup(proc, 1002, bare["metadata"]["uid"])
    gpu0 = h100(0, util=90)
    gpu1 = h100(1, util=80, procs=[FakeProc(1001, 8000 * MIB, sm=60), FakeProc(1002, 2000 * MIB, sm=20)])
    gpu2 = h100_mig(2)
    fake_nvml.set([gpu0, gpu1, gpu2], clock_us=T0)
    mig_3g = gpu2.mig[0].uuid  # 3g.40gb

    faults = FaultCounter()
    with FakeKube() as kube, FakeKubelet() as kubelet:
        kube.add("nodes", k8s.gpu_node({"node.kubernetes.io/instance-type": "p5.48xlarge"}))
        kube.add_owner("apps/v1", "statefulsets", k8s.notebook_statefulset())
        for obj in (predictor, bare, notebook, worker):
            kube.add("pods", obj)
        kubelet.set_pod("research", worker["metadata"]["name"], [("pytorch", [("nvidia.com/gpu", [gpu0.uuid])])])
        kubelet.set_pod("serving", predictor["metadata"]["name"], [("kserve-container", [("nvidia.com/gpu.shared", [gpu1.uuid + "::0"])])])
        kubelet.set_pod("sandbox", "cuda-debug", [("cuda-debug", [("nvidia.com/gpu.shared", [gpu1.uuid + "::1"])])])
        kubelet.set_pod("kubeflow-alice", "alice-nb-0", [("alice-nb", [("nvidia.com/mig-3g.40gb", [mig_3g])])])

        api = kube.client()
        pods = pod_informer(api, k8s.NODE, faults, FAST).start()
        node = node_informer(api, k8s.NODE, faults, FAST).start()
        kube.wait_for(lambda: len(pods.cache) == 4 and node.get("", k8s.NODE) is not None)
        placement = PlacementSource(k8s.NODE, PodResourcesClient(kubelet.socket_path, faults=faults), pods, node,
                                    owners=OwnerCache.from_api_client(api, faults=faults), faults=faults)
        nvml = NvmlCollector(k8s.NODE, resolver=PodResolver(str(proc)), faults=faults)
        trace = tmp_path / "node.jsonl.gz"
        try:
            with TraceWriter(trace, Meta(interval_s=1.0, source="nvml")) as writer:
                for step in range(11):
                    t_us = T0 + step * SEC
                    fake_nvml.clock(t_us)
                    for record in placement.poll(t_us / SEC) + nvml.poll(t_us / SEC):
                        writer.write(record)
        finally:
            placement.close()
            nvml.close()

    records = [r for _, r in iter_records(trace)]
    [snapshot] = [r for r in records if isinstance(r, PodsRecord)]
    assert {p.name: p.owner.kind if p.owner else None for p in snapshot.pods} == {
        "llama-ft-worker-0": "PyTorchJob", "llama-chat-predictor-6b8f7d9c4f-x2v9k": "Deployment",
        "cuda-debug": None, "alice-nb-0": "Notebook"}
    seconds = sum((r.interval_s or 1.0) for r in records if isinstance(r, Sample) and r.uuid == gpu0.uuid)
    assert seconds == pytest.approx(10.0)

    result = replay([trace], RateCard(currency="USD", default_gpu_hourly=3.6), Config())
    per_second = 3.6 / 3600
    teams = {t["team"]: t for t in result.summary["teams"]}
    expected = {
        "ml-research": seconds * per_second,  # a whole H100
        "assistants": seconds * per_second * 60 / 80,  # time-sliced H100, by process utilisation
        "sandbox": seconds * per_second * 20 / 80,
        "kubeflow-alice": seconds * per_second * 3 / 7,  # a 3g slice of seven
    }
    assert {k: pytest.approx(v, rel=1e-9) for k, v in expected.items()} == {k: t["cost"] for k, t in teams.items()}
    assert teams["ml-research"]["by_class"].keys() == {"training"}
    assert teams["assistants"]["by_class"].keys() == {"inference"}
    assert teams["kubeflow-alice"]["by_class"].keys() == {"interactive"}
    totals = result.summary["totals"]
    assert totals["cost"] + totals["unallocated_cost"] == pytest.approx(3 * seconds * per_second, rel=1e-9)
