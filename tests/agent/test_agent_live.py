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

import pytest

from prometheus_client.parser import text_string_to_metric_families

from collectors.pricing.ratecard import RateCardPricer, load_snapshot
from tests.agentrun import ROOT, free_port, get, rollup_rows, stop, wait_for
from tests.fakekube import FakeKube
from tests.fakekube import objects as k8s
from tests.fakekube.kubelet import FakeKubelet
from tests.fakenvml import FakeNvml, fake_nvml, h100  # noqa: F401 (fixture)
from tests.agent.test_record_kubernetes import kubeconfig

pytestmark = pytest.mark.slow  # drives real processes or servers; see README "Fast loop"

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


def test_live_agent_counts_the_pods_model_server_requests(fake_nvml: FakeNvml, tmp_path: Path):
    """A vLLM exposition served over HTTP on the pod's IP (127.0.0.1 here), found through the
    pod's prometheus.io annotations: its counters' increments after the first reading reach
    the workload's serving counters and the ledger; the server is restarted (a counter reset)
    half way and nothing is lost or counted twice."""
    from tests.agent.test_serving import Server, exposition

    server = Server()
    worker = k8s.pytorchjob_worker()
    worker["status"]["podIP"] = "127.0.0.1"
    worker["metadata"]["annotations"] = {"prometheus.io/scrape": "true", "prometheus.io/port": str(server.port)}
    gpu0 = h100(0, util=40)
    fake_nvml.set([gpu0])
    base = exposition("vllm")
    counted = {"requests": 3000.0}  # what the server's counter says

    def serve(requests: float) -> None:
        counted["requests"] = requests
        server.body = base.replace('finished_reason="stop",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2950.0',
                                   f'finished_reason="stop",model_name="meta-llama/Llama-3.1-8B-Instruct"}} {requests - 50}')

    serve(3000.0)
    ledger = tmp_path / "ledger"
    with FakeKube(tokens={"test"}) as kube, FakeKubelet() as kubelet:
        kube.add("nodes", k8s.gpu_node(LABELS))
        kube.add("pods", worker)
        kubelet.set_pod("research", worker["metadata"]["name"], [("pytorch", [("nvidia.com/gpu", [gpu0.uuid])])])
        port = free_port()
        env = fake_nvml.env(dict(os.environ, PYTHONPATH=str(ROOT)))
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "agent", "--node", k8s.NODE, "--interval", "200ms",
             "--kubernetes", "on", "--kubelet-socket", kubelet.socket_path, "--serving-interval", "1s",
             "--kubeconfig", str(kubeconfig(tmp_path / "kubeconfig", kube.url)), "--proc-root", str(tmp_path),
             "--ledger-dir", str(ledger), "--listen", f"127.0.0.1:{port}", "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: get(port, "/readyz")[0] == 200, 30, "/readyz", proc)

            def read_once() -> bool:  # the first reading of the pod's server is its baseline
                m = _metrics(port)
                return (m.get("gpuledger_serving_endpoints", [None])[0] is not None
                        and m["gpuledger_serving_endpoints"][0].value == 1
                        and m["gpuledger_serving_rounds_total"][0].value >= 2)

            wait_for(read_once, 30, "the scraper to read the pod's server", proc)

            def requests_seen() -> float:
                return sum(s.value for s in _metrics(port).get("gpuledger_serving_requests_total", []))

            def serving_counted() -> bool:  # the baseline is taken once the placement knows the pod
                return requests_seen() > 0

            serve(3100.0)
            wait_for(serving_counted, 30, "the first increment", proc)
            first = requests_seen()
            # the server restarted: every counter starts again from 0
            server.body = ("# TYPE vllm:request_success_total counter\n"
                           'vllm:request_success_total{finished_reason="stop",model_name="m"} 40\n'
                           "# TYPE vllm:prompt_tokens_total counter\nvllm:prompt_tokens_total{model_name=\"m\"} 9000\n"
                           "# TYPE vllm:generation_tokens_total counter\n"
                           'vllm:generation_tokens_total{model_name="m"} 300\n')
            wait_for(lambda: requests_seen() > first, 30, "the increment after the reset", proc)
            metrics = _metrics(port)
        finally:
            assert stop(proc, timeout=10) == 0, proc.stderr.read()
            server.close()
    [requests] = metrics["gpuledger_serving_requests_total"]
    assert requests.labels["workload"] == "PyTorchJob/llama-ft" and requests.labels["team"] == "ml-research"
    # 100 after the baseline, then 40 counted from 0 after the reset; nothing else moved
    assert requests.value in (100.0, 140.0) and first == 100.0
    assert requests.value == 140.0
    [out] = metrics["gpuledger_serving_output_tokens_total"]
    assert out.value == 300.0  # unchanged before the restart, 300 counted since
    [info] = metrics["gpuledger_pod_info"]
    assert info.labels["pod"] == worker["metadata"]["name"] and info.labels["workload"] == "PyTorchJob/llama-ft"
    rows = rollup_rows(ledger)
    assert sum(r["requests"] or 0 for r in rows) == 140.0
    assert {r["device_uuid"] for r in rows if r["requests"]} == {gpu0.uuid}
