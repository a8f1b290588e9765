"""The node agent's cost on an 8-GPU node with 50 GPU pods at 1-second sampling.

    python benchmarks/agent_bench.py [--seconds 300] [--warmup 20] [--scrapes 200] [--blocks 5]
                                     [--api kubeconfig|in-cluster] [--serving N] [--json FILE]

Builds a node the real ``gpuledger agent`` runs against, as a child process
(``python -m agent.cli agent --kubernetes on --interval 1s ...``):

* NVML: the test suite's fake ``libnvidia-ml.so.1`` (gcc) serving 8 H100s, its clock
  following wall time so every cycle sees a second of new samples; the GPUs are
  time-sliced: 6 or 7 processes each, one per pod, 50 in all;
* a fake /proc whose ``<pid>/cgroup`` files put each process in its pod (systemd
  cgroup paths, as on EKS);
* the kubelet: FakeKubelet, the real pod-resources gRPC protocol on a unix socket,
  assigning each pod a replica of its GPU (``GPU-…::N``, as NVIDIA's device plugin
  does with time-slicing);
* the API server: FakeKube, real HTTP list and watch, serving the node (a p5.48xlarge
  with GPU feature discovery's labels) and the 50 pod objects: 9 teams in 9
  namespaces, owned by PyTorchJobs, Deployments (KServe), RayJobs and a RayService,
  a CronJob, Kubeflow Notebooks (their StatefulSets are read with a GET) and bare pods.

``--api kubeconfig`` (the default) points the agent at the fake API server with
``--kubeconfig`` and a bearer token; ``--api in-cluster`` serves the API over HTTPS and
gives the agent what a pod has instead (``KUBERNETES_SERVICE_HOST``/``PORT`` and a
service-account directory with ``token`` and ``ca.crt``; the directory is the one
argument the command line does not expose, so a two-line wrapper sets it before
``agent.cli.main`` runs). The two differ in memory: a kubeconfig is read by the
``kubernetes`` package's loader, which imports the whole generated client.

After ``--warmup`` seconds it measures, over ``--seconds`` (split into ``--blocks``
blocks, medians reported, since the machine is shared):

1. **CPU % of one core** of the agent from ``/proc/<pid>/stat`` (utime + stime; the
   kernel reports them in 10 ms ticks, so a 30 s half block resolves about 0.03 % of a
   core; the pooled figure over all quiet halves resolves finer). Each block is a quiet
   half, with no scrape (the sampling alone: the figure the target is about), then a
   half with the scrapes below. The scraped half less the quiet one gives the CPU per
   scrape, so the figure at the chart's 30 s scrape interval is reported too. A burst of
   back-to-back scrapes after the window gives the CPU a scrape takes with warm caches;
   subtracting that from the scraped halves is how "sampling only" was estimated before
   the quiet halves, and under-counts the scrapes (reported beside, for comparison with
   older figures).
2. **RSS**, from ``/proc/<pid>/status`` every second: at readiness, first and last of
   the window, peak, and the slope over the window's second half.
3. **/metrics scrape latency** from the client: ``--scrapes`` scrapes spread evenly
   over the scraped halves (a fresh connection each, as the agent's HTTP/1.0 server closes
   it), median and p99, body size and the number of series.
4. **The baseline, in the same run and at the same time**: a separate Python process
   that, every second, spawns a trivial command with ``subprocess.run`` (``/bin/true``,
   output captured), as an exporter that runs ``nvidia-smi`` per sample does. Its CPU
   per cycle (its own + its child's, ``getrusage``) and the spawn's wall time, and its
   CPU % of a core per block. The ratio agent (quiet half) / baseline is per block,
   median over the blocks.

With ``--serving N`` the first N pods run a model server: each has a pod IP (127.0.0.1),
``prometheus.io/scrape`` annotations and a port of its own, where a local HTTP server
(in this process, so its CPU is not the agent's) answers a vLLM exposition whose
counters grow every second; the agent reads them every 15 s (``--serving on``). Run it
with ``--serving 0`` (the agent with ``--serving off``) and ``--serving 50`` one after the
other to see what reading 50 endpoints costs (issue 12: under 0.2 % of a core and 5 MB,
scrapes under 5 ms).

It also checks that the agent is attributing: ``/readyz`` answers 200,
``gpuledger_samples_total`` grows by 8 a second, every team's cost counter is above 0,
no GPU-second is unallocated once the pods are known, and it lists
``gpuledger_collector_errors_total``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakekube import FakeKube  # noqa: E402
from tests.fakekube import objects as k8s  # noqa: E402
from tests.fakekube.kubelet import FakeKubelet  # noqa: E402
from tests.fakenvml import MIB, FakeNvml, FakeProc, build, h100  # noqa: E402

GPUS = 8
TOKEN = "bench-token"
NODE_LABELS = {
    "node.kubernetes.io/instance-type": "p5.48xlarge", "beta.kubernetes.io/instance-type": "p5.48xlarge",
    "topology.kubernetes.io/region": "us-east-1", "topology.kubernetes.io/zone": "us-east-1a",
    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.memory": "81559",
    "nvidia.com/gpu.replicas": "7", "nvidia.com/gpu.sharing-strategy": "time-slicing",
}
# The agent run in a pod: the service-account directory is the default argument of
# api_client_from_environment, which the command line does not expose.
IN_CLUSTER = (
    "import sys\n"
    "import collectors.kubeapi as k\n"
    "k.api_client_from_environment.__defaults__ = (None, sys.argv.pop(1))\n"
    "from agent.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
BASELINE = (
    "import json, resource, subprocess, sys, time\n"
    "interval, cmd = float(sys.argv[1]), sys.argv[2:]\n"
    "def cpu(who):\n"
    "    u = resource.getrusage(who)\n"
    "    return u.ru_utime + u.ru_stime\n"
    "due = time.monotonic()\n"
    "while True:\n"
    "    s0, c0, w0 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN), time.perf_counter()\n"
    "    subprocess.run(cmd, capture_output=True)\n"
    "    w1, s1, c1 = time.perf_counter(), cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)\n"
    "    print(json.dumps({'wall_ms': (w1 - w0) * 1e3, 'self_ms': (s1 - s0) * 1e3, 'child_ms': (c1 - c0) * 1e3,\n"
    "                      'total_s': s1 + c1}), flush=True)\n"
    "    due += interval\n"
    "    time.sleep(max(0.0, due - time.monotonic()))\n"
)


# --------------------------------------------------------------------- the node


def _uid(i: int) -> str:
    return f"{0x5eed0000 + i:08x}-7c1d-4e2f-9a3b-{i:012x}"


def _pods() -> list[dict]:
    """50 pod objects: (namespace, team, owner) spread as on a shared inference/training node."""
    ref, pod = k8s._ref, k8s._pod
    pods: list[dict] = []

    def add(namespace, name, labels, owners, container, image, generate_name=None):
        pods.append(pod(namespace, name, _uid(len(pods)), labels, owners, container, image,
                        generate_name=generate_name))

    for job, team in (("llama-ft", "ml-research"), ("mixtral-sft", "ml-research"), ("bert-pretrain", "nlp")):
        for r in range(4):
            add("research", f"{job}-worker-{r}",
                {"team": team, "training.kubeflow.org/job-name": job, "training.kubeflow.org/replica-index": str(r),
                 "training.kubeflow.org/replica-type": "worker", "training.kubeflow.org/operator-name": "pytorchjob-controller"},
                [ref("kubeflow.org/v1", "PyTorchJob", job, _uid(1000 + len(pods)))], "pytorch", "ghcr.io/example/train:2.4")
    for namespace, app, team, count, h in (("serving", "llama-chat-predictor", "assistants", 8, "6b8f7d9c4f"),
                                           ("search", "reranker", "search", 4, "7d9c4f6b8f")):
        for r in range(count):
            add(namespace, f"{app}-{h}-{r:05x}",
                {"app": app, "pod-template-hash": h, "team": team, "component": "predictor",
                 "serving.kserve.io/inferenceservice": app.removesuffix("-predictor")},
                [ref("apps/v1", "ReplicaSet", f"{app}-{h}", _uid(2000 + len(pods)))], "kserve-container",
                "ghcr.io/example/serve:1.0", generate_name=f"{app}-{h}-")
    for crd, cr, cluster, team, count in (("RayJob", "nightly-eval", "nightly-eval-raycluster-v5x6k", "recsys", 6),
                                          ("RayService", "chat-serve", "chat-serve-raycluster-k8q2w", "assistants", 2)):
        for r in range(count):
            add("ray", f"{cluster}-gpu-group-worker-{r:05x}",
                {"ray.io/cluster": cluster, "ray.io/group": "gpu-group", "ray.io/node-type": "worker",
                 "ray.io/originated-from-crd": crd, "ray.io/originated-from-cr-name": cr, "team": team},
                [ref("ray.io/v1", "RayCluster", cluster, _uid(3000 + len(pods)))], "ray-worker",
                "rayproject/ray:2.40.0-gpu", generate_name=f"{cluster}-gpu-group-worker-")
    for minutes in (29412360, 29413800):
        for r in range(3):
            job = f"nightly-finetune-{minutes}"
            add("batch", f"{job}-{r:05x}", {"job-name": job, "team": "ml-research"},
                [ref("batch/v1", "Job", job, _uid(4000 + len(pods)))], "finetune", "ghcr.io/example/finetune:0.3",
                generate_name=f"{job}-")
    for user in ("alice", "bob", "carol"):
        for nb in (f"{user}-nb", f"{user}-gpu"):
            add(f"kubeflow-{user}", f"{nb}-0", {"notebook-name": nb, "statefulset": nb},
                [ref("apps/v1", "StatefulSet", nb, _uid(5000 + len(pods)))], nb,
                "kubeflownotebookswg/jupyter-pytorch-cuda-full:v1.9.0", generate_name=f"{nb}-")
    for r in range(6):
        add("sandbox", f"cuda-debug-{r}", {"run": f"cuda-debug-{r}", "team": "platform"}, [], "cuda-debug",
            "nvidia/cuda:12.6.2-base-ubuntu24.04")
    assert len(pods) == 50
    return pods


def notebook_statefulsets(pods: list[dict]) -> list[dict]:
    """The StatefulSets the agent GETs for the notebook pods, each owned by its Notebook."""
    out = []
    for p in pods:
        [owner] = p["metadata"].get("ownerReferences") or [{}]
        if owner.get("kind") != "StatefulSet":
            continue
        out.append({"apiVersion": "apps/v1", "kind": "StatefulSet",
                    "metadata": {"name": owner["name"], "namespace": p["metadata"]["namespace"], "uid": owner["uid"],
                                 "ownerReferences": [k8s._ref("kubeflow.org/v1", "Notebook", owner["name"],
                                                              _uid(6000 + len(out)))]},
                    "spec": {"replicas": 1}})
    return out


def build_node(work: Path) -> dict:
    """The fake library, /proc, GPUs, pods and which pod is on which GPU replica."""
    fake = FakeNvml(build(work / "lib"), work / "state")
    proc = work / "proc"
    pods = _pods()
    per_gpu: list[list[int]] = [[] for _ in range(GPUS)]
    for i in range(len(pods)):
        per_gpu[i % GPUS].append(i)  # 7, 7, 6, 6, 6, 6, 6, 6 pods a GPU
    gpus, placement = [], []
    for g, members in enumerate(per_gpu):
        procs = []
        for k, i in enumerate(members):
            pid = 20_000 + i
            uid = _uid(i)
            qos = ("burstable", "besteffort", "")[i % 3]  # "": Guaranteed, no QoS level in the path
            parent = f"kubepods-{qos}.slice/" if qos else ""
            pod_slice = f"kubepods-{qos + '-' if qos else ''}pod{uid.replace('-', '_')}.slice"
            path = f"/kubepods.slice/{parent}{pod_slice}/cri-containerd-{i:064x}.scope"
            (proc / str(pid)).mkdir(parents=True)
            (proc / str(pid) / "cgroup").write_text(f"0::{path}\n")
            sm = 90 // len(members) + (k % 3) - 1  # ~90 % of the GPU shared unevenly
            procs.append(FakeProc(pid, (1500 + 700 * k) * MIB, sm))
            placement.append((i, g, k))
        used = sum(p.mem_bytes for p in procs) + 600 * MIB
        gpus.append(h100(g, util=85 + g % 3 * 5, mem_used=used, procs=procs))
    return {"fake": fake, "proc": proc, "gpus": gpus, "pods": pods, "placement": placement}


class ModelServers:
    """N local HTTP servers answering a vLLM exposition whose counters grow with wall time."""

    def __init__(self, n: int) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.started = time.monotonic()
        started = self.started

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as vLLM's uvicorn answers

            def do_GET(self):  # noqa: N802
                t = time.monotonic() - started
                body = (VLLM_EXPOSITION % (3000 + 7 * t, 1.2e6 + 4100 * t, 3.9e5 + 1300 * t)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.servers = []
        for _ in range(n):
            httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            httpd.daemon_threads = True
            threading.Thread(target=httpd.serve_forever, daemon=True).start()
            self.servers.append(httpd)

    @property
    def ports(self) -> list[int]:
        return [h.server_address[1] for h in self.servers]

    def close(self) -> None:
        for h in self.servers:
            h.shutdown()
            h.server_close()


VLLM_EXPOSITION = (  # the counters the agent reads, among vLLM's other series (gauges and a histogram)
    "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
    "# TYPE vllm:num_requests_running gauge\n"
    'vllm:num_requests_running{engine="0",model_name="llama"} 3.0\n'
    "# TYPE vllm:request_success_total counter\n"
    'vllm:request_success_total{engine="0",finished_reason="stop",model_name="llama"} %.1f\n'
    "# TYPE vllm:prompt_tokens_total counter\n"
    'vllm:prompt_tokens_total{engine="0",model_name="llama"} %.1f\n'
    "# TYPE vllm:generation_tokens_total counter\n"
    'vllm:generation_tokens_total{engine="0",model_name="llama"} %.1f\n'
    "# TYPE vllm:e2e_request_latency_seconds histogram\n"
    + "".join(f'vllm:e2e_request_latency_seconds_bucket{{engine="0",le="{le}",model_name="llama"}} 100.0\n'
              for le in ("0.3", "0.5", "0.8", "1.0", "1.5", "2.0", "2.5", "5.0", "10.0", "+Inf"))
    + 'vllm:e2e_request_latency_seconds_sum{engine="0",model_name="llama"} 80.0\n'
    'vllm:e2e_request_latency_seconds_count{engine="0",model_name="llama"} 100.0\n')


def serve_models(node: dict, n: int) -> ModelServers:
    """Start the model servers and annotate the first ``n`` pods to point at them."""
    servers = ModelServers(n)
    for pod, port in zip(node["pods"], servers.ports):
        pod["status"]["podIP"] = "127.0.0.1"
        pod["metadata"]["annotations"] = {"prometheus.io/scrape": "true", "prometheus.io/port": str(port)}
    return servers


def start_cluster(node: dict, work: Path, api: str) -> tuple[FakeKube, FakeKubelet]:
    tls = None
    if api == "in-cluster":
        from tests.fakekube.tls import make_tls

        tls = make_tls(work / "tls")
    kube = FakeKube(tls=tls, tokens={TOKEN}).__enter__()
    kubelet = FakeKubelet().start()
    kube.add("nodes", k8s.gpu_node(NODE_LABELS))
    for p in node["pods"]:
        kube.add("pods", p)
    for sts in notebook_statefulsets(node["pods"]):
        kube.add_owner("apps/v1", "statefulsets", sts)
    for i, g, k in node["placement"]:
        meta = node["pods"][i]["metadata"]
        container = node["pods"][i]["spec"]["containers"][0]["name"]
        kubelet.set_pod(meta["namespace"], meta["name"],
                        [(container, [("nvidia.com/gpu", [f"{node['gpus'][g].uuid}::{k}"])])])
    return kube, kubelet


def agent_argv(node: dict, kube: FakeKube, kubelet: FakeKubelet, work: Path, port: int, api: str,
               serving: int = 0) -> tuple[list[str], dict]:
    env = node["fake"].env(dict(os.environ, PYTHONPATH=str(ROOT)))
    flags = ["agent", "--node", k8s.NODE, "--interval", "1s", "--kubernetes", "on",
             "--serving", "on" if serving else "off", "--serving-interval", "15s",
             "--kubelet-socket", kubelet.socket_path, "--proc-root", str(node["proc"]),
             "--ledger-dir", str(work / "ledger"), "--listen", f"127.0.0.1:{port}", "--log-level", "warning"]
    if api == "kubeconfig":
        config = work / "kubeconfig"
        config.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: fake, cluster: {{server: \"{kube.url}\"}}}}]\n"
            f"users: [{{name: agent, user: {{token: {TOKEN}}}}}]\n"
            "contexts: [{name: fake, context: {cluster: fake, user: agent}}]\ncurrent-context: fake\n")
        return [sys.executable, "-m", "agent.cli", *flags, "--kubeconfig", str(config)], env
    account = work / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(TOKEN)
    (account / "ca.crt").write_text(Path(kube.tls.ca).read_text())
    env.update(KUBERNETES_SERVICE_HOST="127.0.0.1", KUBERNETES_SERVICE_PORT=str(kube.port))
    env.pop("KUBECONFIG", None)
    return [sys.executable, "-c", IN_CLUSTER, str(account), *flags], env


# --------------------------------------------------------------------- measuring


def proc_cpu(pid: int, children: bool = False) -> float:
    """CPU seconds of a process (utime + stime, with its waited-for children's if asked)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def proc_mem(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon and RssFile in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(line.split()[1]) / 1024
    return out


def smaps_by_file(pid: int, top: int = 12) -> dict[str, float]:
    """The process's resident memory by what is mapped (a library, [heap], anonymous), MB, largest first."""
    sizes: dict[str, int] = {}
    name = "[anonymous]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if len(head) >= 5 and "-" in head[0] and ":" in head[3]:  # a mapping's header line
            name = head[5].strip() if len(head) == 6 else "[anonymous]"
            name = name if name.startswith("[") else name.rsplit("/site-packages/", 1)[-1]
        elif line.startswith("Rss:"):
            sizes[name] = sizes.get(name, 0) + int(line.split()[1])
    ordered = sorted(sizes.items(), key=lambda kv: -kv[1])
    out = {k: round(v / 1024, 1) for k, v in ordered[:top]}
    out["(everything else)"] = round(sum(v for _, v in ordered[top:]) / 1024, 1)
    return out


IMPORT_RSS = (
    "import importlib, json, re, sys\n"
    "def rss():\n"
    "    return int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
    "out = [('(python start-up)', rss())]\n"
    "for name in json.load(open(sys.argv[1])):\n"
    "    try:\n"
    "        importlib.import_module(name)\n"
    "    except Exception:\n"
    "        continue\n"
    "    out.append((name, rss()))\n"
    "json.dump(out, sys.stdout)\n"
)


def import_breakdown(argv: list[str], env: dict, port: int, work: Path) -> dict:
    """What the agent imports, and the resident memory each package adds.

    The agent is run once more with ``-X importtime`` until it has been ready for 5 s
    (so lazy imports in its jobs are in the log); then a fresh interpreter imports the
    same modules in the same order, reading its RSS after each. Each package is charged
    the RSS its modules added, in the agent's order (a package imported first also
    carries the libraries it loads that others share).
    """
    log_path = work / "importtime.log"
    with log_path.open("w") as log:
        agent = subprocess.Popen([argv[0], "-X", "importtime", *argv[1:]], cwd=ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_ready(agent, port, 120)
            time.sleep(5)
            agent_rss = proc_mem(agent.pid)["VmRSS"]
        finally:
            agent.terminate()
            agent.wait(30)
    modules = []
    for line in log_path.read_text().splitlines():
        if line.startswith("import time:") and "|" in line and "imported package" not in line:
            modules.append(line.rsplit("|", 1)[1].strip())
    listing = work / "modules.json"
    listing.write_text(json.dumps(modules))
    done = subprocess.run([sys.executable, "-c", IMPORT_RSS, str(listing)], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)
    steps = json.loads(done.stdout)
    groups: dict[str, float] = {"(python start-up)": steps[0][1] / 1024}
    for (_, before), (name, after) in zip(steps, steps[1:]):
        top = name.split(".", 1)[0]
        if top in ("agent", "collectors"):
            group = "gpuledger (agent, collectors)"
        elif top in sys.stdlib_module_names or top.startswith("_"):
            group = "python standard library"
        else:
            group = top
        groups[group] = groups.get(group, 0.0) + (after - before) / 1024
    return {
        "agent_rss_mb": round(agent_rss, 1),
        "fresh_interpreter_rss_mb": round(steps[-1][1] / 1024, 1),
        "modules": len(modules),
        "mb_by_package": {k: round(v, 1) for k, v in sorted(groups.items(), key=lambda kv: -kv[1]) if v >= 0.05},
    }


def http_get(port: int, path: str) -> tuple[float, int, bytes]:
    """(seconds, status, body) of one GET on a fresh connection, timed from the client."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    return time.perf_counter() - started, resp.status, body


def parse_metrics(body: bytes) -> dict[str, list]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def series_count(body: bytes) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def slope_per_min(points: list[tuple[float, float]]) -> float:
    xs, ys = [p[0] / 60 for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)


class Baseline:
    """The shell-out exporter: a child spawning ``/bin/true`` every second; its lines are read here."""

    def __init__(self, interval: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", BASELINE, str(interval), "/bin/true"],
                                     stdout=subprocess.PIPE, text=True)
        self.cycles: list[tuple[float, dict]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.cycles.append((time.monotonic(), json.loads(line)))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def wait_ready(agent: subprocess.Popen, port: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if agent.poll() is not None:
            raise SystemExit(f"the agent exited ({agent.returncode})")
        try:
            if http_get(port, "/readyz")[1] == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the agent was not ready within {timeout:.0f} s")


def run(args: argparse.Namespace) -> dict:
    from tests.agentrun import free_port

    work = Path(tempfile.mkdtemp(prefix="gpuledger-agent-bench-"))
    node = build_node(work)
    node["fake"].set(node["gpus"])  # no frozen clock: the library's samples follow wall time
    models = serve_models(node, args.serving) if args.serving else None
    kube, kubelet = start_cluster(node, work, args.api)
    port = free_port()
    argv, env = agent_argv(node, kube, kubelet, work, port, args.api, args.serving)
    log = (work / "agent.log").open("w")
    launched = time.monotonic()
    agent = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    baseline = None
    rss: list[tuple[float, dict]] = []  # (seconds since launch, memory)
    try:
        ready_s = wait_ready(agent, port, 120)
        rss_ready = proc_mem(agent.pid)
        baseline = Baseline(1.0)
        while time.monotonic() - launched < ready_s + args.warmup:
            rss.append((time.monotonic() - launched, proc_mem(agent.pid)))
            time.sleep(1.0)
        _, ready_code, _ = http_get(port, "/readyz")
        _, _, body = http_get(port, "/metrics")
        first = parse_metrics(body)

        # ----- the window: each block a quiet half (no scrapes: the sampling alone), then a
        # half with the scrapes spread evenly; CPU at each edge, RSS every second
        start = time.monotonic()
        half = args.seconds / args.blocks / 2
        edges = [start + i * half for i in range(2 * args.blocks + 1)]
        marks = [(start, proc_cpu(agent.pid), proc_cpu(baseline.proc.pid, children=True))]
        scrape_every = args.seconds / 2 / args.scrapes
        scrapes: list[tuple[float, float, int]] = []  # (monotonic, seconds, bytes)
        next_sample, e = start + 1.0, 1
        next_scrape = math.inf
        last_body = body
        while e < len(edges):
            now = time.monotonic()
            if now >= edges[e]:
                marks.append((now, proc_cpu(agent.pid), proc_cpu(baseline.proc.pid, children=True)))
                e += 1
                if e < len(edges) and e % 2 == 0:  # a scraped half begins
                    next_scrape = edges[e - 1] + scrape_every / 2
                continue
            if now >= next_sample:
                rss.append((now - launched, proc_mem(agent.pid)))
                next_sample += 1.0
            scraping = e % 2 == 0  # in the half from edges[e - 1] to edges[e]
            if scraping and now >= next_scrape:
                took, code, last_body = http_get(port, "/metrics")
                if code != 200:
                    raise SystemExit(f"/metrics answered {code}")
                scrapes.append((now, took, len(last_body)))
                next_scrape += scrape_every
            if agent.poll() is not None:
                raise SystemExit(f"the agent exited ({agent.returncode}) during the run")
            wake = min(next_sample, edges[e], next_scrape if scraping else edges[e])
            time.sleep(max(0.0, wake - time.monotonic()))
        end = time.monotonic()
        mapped = smaps_by_file(agent.pid)
        last = parse_metrics(last_body)
        _, end_code, _ = http_get(port, "/readyz")

        # ----- CPU per scrape: a burst of back-to-back scrapes
        burst_t0, burst_c0 = time.monotonic(), proc_cpu(agent.pid)
        burst_lat = [http_get(port, "/metrics")[0] for _ in range(args.burst)]
        burst_t1, burst_c1 = time.monotonic(), proc_cpu(agent.pid)
        baseline_cycles = list(baseline.cycles)
    finally:
        if baseline is not None:
            baseline.stop()
        if agent.poll() is None:
            agent.terminate()
        code = agent.wait(30)
        log.close()
    try:
        imports = import_breakdown(argv, env, port, work) if args.imports else None
    finally:
        kubelet.close()
        kube.stop()
        if models is not None:
            models.close()
    result = analyse(args, node, work, launched, ready_s, rss_ready, rss, marks, scrapes, first, last, last_body,
                     (burst_t1 - burst_t0, burst_c1 - burst_c0, burst_lat), baseline_cycles,
                     ready_code, end_code, code, start, end)
    result["agent"]["rss_mb_by_mapping"] = mapped
    if imports:
        result["imports"] = imports
    return result


def analyse(args, node, work, launched, ready_s, rss_ready, rss, marks, scrapes, first, last, last_body,
            burst, baseline_cycles, ready_code, end_code, exit_code, start, end) -> dict:
    window_s = end - start
    burst_s, burst_cpu, burst_lat = burst
    per_scrape_burst = burst_cpu / len(burst_lat)  # back to back: caches warm, so a lower bound

    def baseline_cpu(t0: float, t1: float) -> tuple[float, float]:
        """The baseline's own getrusage totals over [t0, t1) (ns resolution; its /proc ticks are
        too coarse for ~1 ms a cycle): CPU seconds and the seconds they cover."""
        before = [(t, c["total_s"]) for t, c in baseline_cycles if t < t0][-1:]
        inside = [(t, c["total_s"]) for t, c in baseline_cycles if t0 <= t < t1]
        (tb0, cb0), (tb1, cb1) = (before or inside[:1])[0], inside[-1]
        return cb1 - cb0, tb1 - tb0

    # per block: the quiet half (sampling alone) and the scraped half
    blocks = []
    for b in range(len(marks) // 2):
        (t0, a0, _), (t1, a1, _), (t2, a2, _) = marks[2 * b:2 * b + 3]
        n = sum(1 for t, _, _ in scrapes if t1 <= t < t2)
        quiet_pct = 100 * (a1 - a0) / (t1 - t0)
        scraped_pct = 100 * (a2 - a1) / (t2 - t1)
        base_cpu, base_s = baseline_cpu(t0, t2)
        base_pct = 100 * base_cpu / base_s
        blocks.append({
            "seconds": t2 - t0, "scrapes": n, "baseline_pct": base_pct,
            "agent_quiet_pct": quiet_pct, "agent_pct": scraped_pct,
            # the method before the quiet halves: the scraped half less the scrapes at their back-to-back cost
            "agent_sampling_pct": scraped_pct - 100 * n * per_scrape_burst / (t2 - t1),
            "cpu_per_scrape_s": ((a2 - a1) - (a1 - a0) / (t1 - t0) * (t2 - t1)) / n if n else math.nan,
        })
    for x in blocks:
        x["ratio"] = x["agent_pct"] / x["baseline_pct"] if x["baseline_pct"] else float("inf")
        x["sampling_ratio"] = x["agent_quiet_pct"] / x["baseline_pct"] if x["baseline_pct"] else float("inf")
    quiet_total = sum(m1[1] - m0[1] for m0, m1 in zip(marks[0::2], marks[1::2]))
    quiet_seconds = sum(m1[0] - m0[0] for m0, m1 in zip(marks[0::2], marks[1::2]))
    med = lambda key: statistics.median(x[key] for x in blocks)  # noqa: E731

    # RSS
    window = [(t, m["VmRSS"]) for t, m in rss if t >= start - launched]
    second_half = [p for p in window if p[0] >= (start - launched) + window_s / 2]
    last_mem = rss[-1][1]

    # attribution checks
    def total(metrics, name):
        return sum(s.value for s in metrics.get(name, []))

    samples_per_s = (total(last, "gpuledger_samples_total") - total(first, "gpuledger_samples_total")) / (
        max(s.value for s in last["gpuledger_last_sample_timestamp_seconds"])
        - max(s.value for s in first["gpuledger_last_sample_timestamp_seconds"]))
    cost_by_team: dict[str, float] = {}
    for s in last.get("gpuledger_gpu_cost_total", []):
        cost_by_team[s.labels["team"]] = cost_by_team.get(s.labels["team"], 0.0) + s.value
    workloads = {(s.labels["namespace"], s.labels["workload"]) for s in last.get("gpuledger_gpu_cost_total", [])}
    classes = sorted({s.labels["workload_class"] for s in last.get("gpuledger_gpu_cost_total", [])})
    unalloc = total(last, "gpuledger_gpu_unallocated_seconds_total") - total(first, "gpuledger_gpu_unallocated_seconds_total")
    alloc = total(last, "gpuledger_gpu_allocated_seconds_total") - total(first, "gpuledger_gpu_allocated_seconds_total")
    errors = {f"{s.labels['collector']}/{s.labels['reason']}": s.value
              for s in last.get("gpuledger_collector_errors_total", [])}
    lat = [x[1] * 1000 for x in scrapes]
    cycles = [c for t, c in baseline_cycles if start <= t < end]
    agent_log = (work / "agent.log").read_text().strip().splitlines()
    return {
        "date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "api": args.api,
        "gpus": GPUS, "pods": len(node["pods"]), "interval_s": 1.0, "warmup_s": args.warmup,
        "window_s": round(window_s, 1), "blocks": args.blocks,
        "agent": {
            "ready_after_s": round(ready_s, 2),
            "cpu_percent_without_scrapes_median": round(med("agent_quiet_pct"), 3),
            "cpu_percent_without_scrapes_pooled": round(100 * quiet_total / quiet_seconds, 3),
            "cpu_percent_without_scrapes_blocks": [round(x["agent_quiet_pct"], 3) for x in blocks],
            "cpu_percent_of_core_median": round(med("agent_pct"), 3),
            "cpu_percent_blocks": [round(x["agent_pct"], 3) for x in blocks],
            "cpu_percent_sampling_only_median": round(med("agent_sampling_pct"), 3),
            "cpu_percent_sampling_only_blocks": [round(x["agent_sampling_pct"], 3) for x in blocks],
            "cpu_ms_per_scrape": round(med("cpu_per_scrape_s") * 1000, 2),
            "cpu_ms_per_scrape_back_to_back": round(per_scrape_burst * 1000, 2),
            "cpu_percent_at_30s_scrapes": round(med("agent_quiet_pct") + 100 * med("cpu_per_scrape_s") / 30, 3),
            "rss_mb_at_ready": round(rss_ready["VmRSS"], 1),
            "rss_mb_first": round(window[0][1], 1), "rss_mb_last": round(window[-1][1], 1),
            "rss_mb_peak": round(max(m["VmRSS"] for _, m in rss), 1),
            "rss_anon_mb_last": round(last_mem.get("RssAnon", 0), 1),
            "rss_file_mb_last": round(last_mem.get("RssFile", 0), 1),
            "rss_slope_mb_per_min_second_half": round(slope_per_min(second_half), 4),
            "rss_mb_every_minute": [round(m, 1) for t, m in window[::60]],
            "exit_code": exit_code,
            "log_lines": agent_log[-20:],
        },
        "scrape": {
            "count": len(lat), "every_s": round(args.seconds / 2 / args.scrapes, 2),
            "median_ms": round(statistics.median(lat), 2), "p99_ms": round(pct(lat, 0.99), 2),
            "max_ms": round(max(lat), 2),
            "burst_count": len(burst_lat), "burst_median_ms": round(statistics.median(burst_lat) * 1000, 2),
            "body_bytes": len(last_body), "series": series_count(last_body),
            "gpuledger_series": sum(1 for line in last_body.splitlines() if line.startswith(b"gpuledger_")),
        },
        "baseline": {
            "what": "python loop, subprocess.run(['/bin/true'], capture_output=True) every 1 s, concurrent with the agent",
            "cycles": len(cycles),
            "cpu_ms_per_cycle_median": round(statistics.median(c["self_ms"] + c["child_ms"] for c in cycles), 2),
            "parent_cpu_ms_per_cycle_median": round(statistics.median(c["self_ms"] for c in cycles), 2),
            "child_cpu_ms_per_cycle_median": round(statistics.median(c["child_ms"] for c in cycles), 2),
            "spawn_wall_ms_median": round(statistics.median(c["wall_ms"] for c in cycles), 2),
            "spawn_wall_ms_p99": round(pct([c["wall_ms"] for c in cycles], 0.99), 2),
            "cpu_percent_of_core_median": round(med("baseline_pct"), 3),
            "cpu_percent_blocks": [round(x["baseline_pct"], 3) for x in blocks],
        },
        "ratio_agent_over_baseline_median": round(med("ratio"), 2),
        "ratio_without_scrapes_over_baseline_median": round(med("sampling_ratio"), 2),
        "checks": {
            "readyz_before": ready_code, "readyz_after": end_code,
            "samples_per_trace_second": round(samples_per_s, 3),
            "teams_with_cost": {k: round(v, 4) for k, v in sorted(cost_by_team.items())},
            "workloads": len(workloads), "workload_classes": classes,
            "allocated_gpu_seconds_in_window": round(alloc, 1),
            "unallocated_gpu_seconds_in_window": round(unalloc, 3),
            "collector_errors": errors,
            "serving_requests_in_window": round(total(last, "gpuledger_serving_requests_total")
                                                - total(first, "gpuledger_serving_requests_total"), 1),
            "serving_endpoints": total(last, "gpuledger_serving_endpoints"),
        },
    }


def report(r: dict) -> None:
    a, s, b, c = r["agent"], r["scrape"], r["baseline"], r["checks"]
    rows = [
        ("agent CPU, % of a core, without scrapes", f"{a['cpu_percent_without_scrapes_median']:.3f}",
         f"median of the quiet halves {a['cpu_percent_without_scrapes_blocks']}; pooled "
         f"{a['cpu_percent_without_scrapes_pooled']:.3f}"),
        ("  with a scrape every " + f"{s['every_s']} s", f"{a['cpu_percent_of_core_median']:.3f}",
         f"the scraped halves {a['cpu_percent_blocks']}"),
        ("  scraped less back-to-back scrapes", f"{a['cpu_percent_sampling_only_median']:.3f}",
         f"{a['cpu_ms_per_scrape_back_to_back']} ms a scrape back to back (the estimate before quiet halves)"),
        ("  at the chart's 30 s scrape interval", f"{a['cpu_percent_at_30s_scrapes']:.3f}",
         f"{a['cpu_ms_per_scrape']} ms CPU per scrape (scraped less quiet)"),
        ("baseline CPU, % of a core (median of blocks)", f"{b['cpu_percent_of_core_median']:.3f}",
         f"{b['cpu_ms_per_cycle_median']} ms CPU/cycle (parent {b['parent_cpu_ms_per_cycle_median']}, "
         f"child {b['child_cpu_ms_per_cycle_median']}); spawn {b['spawn_wall_ms_median']} ms wall"),
        ("ratio agent / baseline", f"{r['ratio_without_scrapes_over_baseline_median']:.2f}",
         f"without scrapes; with them {r['ratio_agent_over_baseline_median']:.2f}"),
        ("agent RSS, MB", f"{a['rss_mb_last']:.1f}",
         f"ready {a['rss_mb_at_ready']}, first {a['rss_mb_first']}, peak {a['rss_mb_peak']}, "
         f"anon {a['rss_anon_mb_last']} + file {a['rss_file_mb_last']}; slope {a['rss_slope_mb_per_min_second_half']} "
         "MB/min; target < 100 MB"),
        ("/metrics scrape, ms", f"{s['median_ms']:.2f}",
         f"p99 {s['p99_ms']}, max {s['max_ms']} over {s['count']}; back-to-back {s['burst_median_ms']}; "
         f"{s['body_bytes']:,} bytes, {s['series']} series ({s['gpuledger_series']} gpuledger_); target < 10 ms"),
    ]
    width = max(len(x[0]) for x in rows)
    print(f"gpuledger agent, {r['gpus']} GPUs, {r['pods']} pods, 1 s sampling, API by {r['api']}: "
          f"{r['window_s']} s after {r['warmup_s']} s warm-up, {r['blocks']} blocks, {r['cores']} cores")
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>8}  {note}")
    print("  agent RSS by mapping, MB: " + ", ".join(f"{k} {v}" for k, v in a["rss_mb_by_mapping"].items()))
    if "imports" in r:
        i = r["imports"]
        print(f"  RSS by imported package (fresh interpreter, the agent's {i['modules']} imports in its order: "
              f"{i['fresh_interpreter_rss_mb']} MB; that agent {i['agent_rss_mb']} MB): "
              + ", ".join(f"{k} {v}" for k, v in i["mb_by_package"].items()))
    print(f"  checks: /readyz {c['readyz_before']} -> {c['readyz_after']}; {c['samples_per_trace_second']} samples/s; "
          f"{len(c['teams_with_cost'])} teams with cost, {c['workloads']} workloads ({', '.join(c['workload_classes'])}); "
          f"allocated {c['allocated_gpu_seconds_in_window']} GPU-s, unallocated {c['unallocated_gpu_seconds_in_window']}; "
          f"errors {c['collector_errors'] or 'none'}; exit {a['exit_code']}; serving: {c['serving_endpoints']:g} "
          f"endpoints, {c['serving_requests_in_window']:,} requests counted in the window")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0, help="measured window (default 300)")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds after /readyz before measuring (default 20)")
    parser.add_argument("--scrapes", type=int, default=200, help="/metrics scrapes, spread over the scraped halves of the blocks (default 200)")
    parser.add_argument("--burst", type=int, default=200, help="back-to-back scrapes after the window, for CPU per scrape")
    parser.add_argument("--blocks", type=int, default=5, help="CPU is measured per block; medians reported (default 5)")
    parser.add_argument("--api", choices=("kubeconfig", "in-cluster"), default="kubeconfig",
                        help="how the agent reaches the API server (default kubeconfig; in-cluster: as in a pod)")
    parser.add_argument("--imports", action="store_true",
                        help="then run the agent once more with -X importtime and charge its RSS to the packages it imports")
    parser.add_argument("--serving", type=int, default=0, metavar="N",
                        help="the first N pods run a model server the agent reads every 15 s (default 0: --serving off)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    result = run(args)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
