"""`gpuledger agent` live: the real pynvml over the fake NVML library, the real kubelet
pod-resources gRPC protocol (FakeKubelet) and a real HTTP API server (FakeKube).

Two H100s on a p5.48xlarge node: GPU 0 held by a PyTorchJob worker at 90% utilisation,
GPU 1 free. Whatever the agent attributes must satisfy what we know independently:
every observed second of GPU 0 after the pod appeared is the team's, used at 0.9; GPU 1
is unallocated; the cost is seconds x the snapshot's p5.48xlarge price per GPU.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from collectors.pricing.ratecard import RateCardPricer, load_snapshot
from tests.agentrun import ROOT, free_port, get, rollup_rows, stop, wait_for
from tests.fakekube import FakeKube
from tests.fakekube import objects as k8s
from tests.fakekube.kubelet import FakeKubelet
from tests.fakenvml import FakeNvml, fake_nvml, h100  # noqa: F401 (fixture)
from tests.test_record_kubernetes import kubeconfig

LABELS = {"node.kubernetes.io/instance-type": "p5.48xlarge", "topology.kubernetes.io/region": "us-east-1"}


def _metrics(port: int) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(get(port, "/metrics")[1]):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def test_live_agent_attributes_a_pods_gpu_and_serves_its_team(fake_nvml: FakeNvml, tmp_path: Path):
    worker = k8s.pytorchjob_worker()
    gpu0, gpu1 = h100(0, util=90), h100(1, util=0)
    fake_nvml.set([gpu0, gpu1])
    ledger = tmp_path / "ledger"
    with FakeKube(tokens={"test"}) as kube, FakeKubelet() as kubelet:
        kube.add("nodes", k8s.gpu_node(LABELS))
        kube.add("pods", worker)
        kubelet.set_pod("research", worker["metadata"]["name"], [("pytorch", [("nvidia.com/gpu", [gpu0.uuid])])])
        port = free_port()
        env = fake_nvml.env(dict(os.environ, PYTHONPATH=str(ROOT)))
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "agent", "--node", k8s.NODE, "--interval", "200ms",
             "--kubernetes", "on", "--kubelet-socket", kubelet.socket_path,
             "--kubeconfig", str(kubeconfig(tmp_path / "kubeconfig", kube.url)), "--proc-root", str(tmp_path),
             "--ledger-dir", str(ledger), "--listen", f"127.0.0.1:{port}", "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: get(port, "/readyz")[0] == 200, 30, "/readyz", proc)
            wait_for(lambda: any(s.value > 0 for s in _metrics(port).get("gpuledger_gpu_cost_total", [])),
                     30, "cost for the pod's team", proc)
            metrics = _metrics(port)
        finally:
            assert stop(proc, timeout=10) == 0, proc.stderr.read()
    [cost] = metrics["gpuledger_gpu_cost_total"]
    assert cost.labels == {"node": k8s.NODE, "gpu_model": gpu0.name, "namespace": "research",
                           "team": "ml-research", "workload_class": "training", "workload": "PyTorchJob/llama-ft"}
    [util] = [s for s in metrics["gpuledger_gpu_utilization_ratio"] if s.labels["uuid"] == gpu0.uuid]
    assert util.value == 0.9 and util.labels["pod"] == worker["metadata"]["name"]
    [price] = metrics["gpuledger_gpu_hourly_price"]
    assert price.labels["instance_type"] == "p5.48xlarge" and price.labels["currency"] == "USD"
    assert metrics["gpuledger_build_info"][0].labels["mode"] == "live"

    # The ledger written at SIGTERM: every second of both GPUs, split as we know it must be.
    rows = rollup_rows(ledger)
    hourly = RateCardPricer(load_snapshot())(LABELS, gpu0.name, 2).hourly
    assert hourly == 55.04 / 2  # the snapshot's p5.48xlarge us-east-1 price over the 2 GPUs NVML shows
    assert math.isclose(price.value, hourly)
    held = [r for r in rows if r["pod_uid"] is not None]
    assert held and {r["device_uuid"] for r in held} == {gpu0.uuid}
    allocated = sum(r["allocated_gpu_seconds"] for r in held)
    assert math.isclose(sum(r["used_gpu_seconds"] for r in held), 0.9 * allocated, rel_tol=1e-9)
    assert math.isclose(sum(r["cost"] for r in held), allocated * hourly / 3600, rel_tol=1e-9)
    free = [r for r in rows if r["device_uuid"] == gpu1.uuid]
    assert free and all(r["pod_uid"] is None for r in free)
    # both GPUs were sampled the same number of times, each sample covering its interval
    seconds = {u: sum(r["allocated_gpu_seconds"] + r["unallocated_gpu_seconds"] for r in rows if r["device_uuid"] == u)
               for u in (gpu0.uuid, gpu1.uuid)}
    samples = {u: sum(r["samples"] for r in rows if r["device_uuid"] == u) for u in (gpu0.uuid, gpu1.uuid)}
    assert samples[gpu0.uuid] == samples[gpu1.uuid] > 0
    assert math.isclose(seconds[gpu0.uuid], seconds[gpu1.uuid], rel_tol=0.05)


def test_readyz_says_why_no_gpu_is_sampled(fake_nvml: FakeNvml, tmp_path: Path):
    """Without the NVIDIA driver's NVML, and with it but no GPU: the agent runs, stays not
    ready, and /readyz says the cause, not just 'no samples attributed yet'."""
    for case, env, cause in (
            ("no library", {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"},
             "no NVIDIA driver: NVML (libnvidia-ml.so.1) is not installed or not on the library path"),
            ("no GPU", fake_nvml.env(), "NVML found no NVIDIA GPU on this machine")):
        fake_nvml.set([])
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "agent", "--node", "n", "--interval", "200ms", "--kubernetes", "off",
             "--ledger-dir", str(tmp_path / case), "--listen", f"127.0.0.1:{port}", "--log-level", "error"],
            cwd=ROOT, env=dict(env, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: get(port, "/healthz")[0] == 200, 30, "/healthz", proc)
            wait_for(lambda: cause in get(port, "/readyz")[1], 10, f"/readyz naming the cause ({case})", proc)
            status, text = get(port, "/readyz")
            assert status == 503 and text.startswith(f"no samples attributed yet: {cause}"), text
        finally:
            assert stop(proc, timeout=10) == 0, proc.stderr.read()
