"""`gpuledger record` with the Kubernetes collectors: node and pods records join the
NVML records, and the trace replays to per-team costs."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main
from agent.config import Config
from agent.replay import replay
from collectors.pricing.ratecard import RateCard
from collectors.records import NodeRecord, PodsRecord, Sample
from collectors.tracefile import iter_records
from tests.fakekube import FakeKube
from tests.fakekube import objects as k8s
from tests.fakekube.kubelet import FakeKubelet
from tests.fakenvml import FakeNvml, fake_nvml, h100  # noqa: F401 (fixture)


def kubeconfig(path: Path, url: str) -> Path:
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{url}"}}}}]
users: [{{name: agent, user: {{token: test}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: agent}}}}]
current-context: fake
""")
    return path


@pytest.mark.slow
def test_record_adds_node_and_pods_records(fake_nvml: FakeNvml, tmp_path: Path):
    worker = k8s.pytorchjob_worker()
    gpu0, gpu1 = h100(0, util=90), h100(1, util=10)
    fake_nvml.set([gpu0, gpu1])
    with FakeKube(tokens={"test"}) as kube, FakeKubelet() as kubelet:  # the kubeconfig's token, or 401
        kube.add("nodes", k8s.gpu_node({"node.kubernetes.io/instance-type": "p5.48xlarge"}))
        kube.add("pods", worker)
        kubelet.set_pod("research", worker["metadata"]["name"], [("pytorch", [("nvidia.com/gpu", [gpu0.uuid])])])
        out = tmp_path / "t.jsonl"
        code = main(["record", "--out", str(out), "--interval", "200ms", "--duration", "1s", "--node", k8s.NODE,
                     "--kubernetes", "on", "--kubelet-socket", kubelet.socket_path,
                     "--kubeconfig", str(kubeconfig(tmp_path / "kubeconfig", kube.url)),
                     "--proc-root", str(tmp_path)])
    assert code == 0
    records = [r for _, r in iter_records(out)]
    [node] = [r for r in records if isinstance(r, NodeRecord)]
    assert node.labels["node.kubernetes.io/instance-type"] == "p5.48xlarge"
    snapshots = [r for r in records if isinstance(r, PodsRecord)]
    assert [p.name for p in snapshots[-1].pods] == [worker["metadata"]["name"]]
    held = sum(s.interval_s or 0.2 for s in records if isinstance(s, Sample) and s.uuid == gpu0.uuid
               and s.ts >= snapshots[0].ts)
    early = sum(s.interval_s or 0.2 for s in records if isinstance(s, Sample) and s.uuid == gpu0.uuid
                and s.ts < snapshots[0].ts)  # before the first pods snapshot nobody holds it
    free = sum(s.interval_s or 0.2 for s in records if isinstance(s, Sample) and s.uuid == gpu1.uuid)
    result = replay([out], RateCard(currency="USD", default_gpu_hourly=3.6), Config())
    [team] = result.summary["teams"]
    assert team["allocated_gpu_seconds"] == pytest.approx(held, rel=1e-9)
    assert team["by_class"].keys() == {"training"}
    assert result.summary["totals"]["unallocated_gpu_seconds"] == pytest.approx(free + early, rel=1e-9)


def test_a_kubeconfig_that_cannot_be_loaded_is_an_input_error(fake_nvml: FakeNvml, tmp_path: Path, capsys):
    fake_nvml.set([h100(0)])
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\ncurrent-context: nowhere\n")
    out = tmp_path / "t.jsonl"
    with FakeKubelet() as kubelet:
        code = main(["record", "--out", str(out), "--duration", "1s", "--kubernetes", "on",
                     "--kubelet-socket", kubelet.socket_path, "--kubeconfig", str(bad), "--proc-root", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gpuledger: error: {bad}: cannot configure the Kubernetes API client: ") and "nowhere" in err
    assert not out.exists()


def test_kubernetes_off_records_gpus_only(fake_nvml: FakeNvml, tmp_path: Path):
    fake_nvml.set([h100(0)])
    out = tmp_path / "t.jsonl"
    assert main(["record", "--out", str(out), "--interval", "200ms", "--duration", "400ms",
                 "--kubelet-socket", str(tmp_path / "no.sock"), "--proc-root", str(tmp_path)]) == 0
    kinds = {type(r).__name__ for _, r in iter_records(out)}
    assert kinds == {"Meta", "DevicesRecord", "Sample"}
