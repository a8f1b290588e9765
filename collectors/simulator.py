"""A demo GPU cluster as a trace file: ``gpuledger simulate``.

The demo lets anyone try gpuledger with no GPU and no cluster, and it backs the replay
benchmark. It writes trace format v1 (``docs/trace-format.md``) for a small EKS-style
cluster whose nodes, GPUs and workloads are modelled on real ones: real instance types
and NVML product names, memory totals and power limits taken from real ``nvidia-smi``
captures, the labels and owners that Kubeflow, JobSet, KServe, KubeRay and plain
Deployments put on their pods, and load shapes (steady training, diurnal inference,
idle notebooks, a GPU held idle) of the kind clusters show. What is invented, and the
layout, are in ``docs/simulator.md``.

The output is a pure function of the arguments: same seed, same bytes (plain ``.jsonl``;
a ``.gz`` file's gzip header carries the time of writing). Every random draw comes from
numpy Generators seeded from ``seed`` and the node's number.

It is built for speed: each device's readings are drawn with numpy for a block of time
steps at once and formatted into JSON text with one ``%`` template per device, and the
blocks are streamed to the file, so memory stays bounded whatever the length.
"""

from __future__ import annotations

import json
import math
import numbers
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from collectors.errors import InputError, describe
from collectors.records import (
    Container,
    Device,
    DevicesRecord,
    Meta,
    NodeRecord,
    Owner,
    Pod,
    PodsRecord,
    SERVING_VERSION,
    VERSION,
)
from collectors.tracewriter import TraceWriter

DEFAULT_START = 1764046800.0  # 2025-11-25T05:00:00Z: Tuesday midnight in us-east-1, a working day
MIB = 1 << 20
REGION = "us-east-1"
UTC_OFFSET_H = -5.0  # us-east-1's clock (EST) for the daily load cycle
BLOCK_LINES = 120_000  # sample lines formatted and written at a time

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SimulationStats:
    """What :func:`simulate` wrote. ``end`` is the ``ts`` of the last sample."""

    path: Path
    nodes: int
    gpus: int
    pods: int
    samples: int
    lines: int
    start: float
    end: float
    serving: int = 0  # serving records (trace format 1.1) of the inference pods


# --------------------------------------------------------------------------- GPU models


@dataclass(frozen=True)
class GpuModel:
    """An NVML product with the figures the simulator needs.

    ``idle_w`` is the draw with no process (P8, or what the capture shows idle);
    ``busy_idle_w`` the draw with a CUDA context open but no kernels running (P0).
    """

    name: str
    memory_mib: int
    tdp_w: float
    idle_w: float
    busy_idle_w: float
    product_label: str  # nvidia.com/gpu.product as GPU feature discovery writes it


# Memory totals and power limits are the ones nvidia-smi reports (see docs/simulator.md).
H100 = GpuModel("NVIDIA H100 80GB HBM3", 81559, 700.0, 70.0, 118.0, "NVIDIA-H100-80GB-HBM3")
A100 = GpuModel("NVIDIA A100-SXM4-40GB", 40960, 400.0, 55.0, 72.0, "NVIDIA-A100-SXM4-40GB")
A10G = GpuModel("NVIDIA A10G", 23028, 300.0, 25.0, 58.0, "NVIDIA-A10G")
L40S = GpuModel("NVIDIA L40S", 46068, 350.0, 34.0, 110.0, "NVIDIA-L40S")

# H100 80GB MIG profiles used on the MIG GPU: (profile, compute slices, memory MiB, MiB
# used with no process), as nvidia-smi shows them for these instances.
H100_MIG = (("3g.40gb", 3, 40448, 26), ("2g.20gb", 2, 20096, 17), ("1g.10gb", 1, 9984, 9))
H100_COMPUTE_SLICES = 7


# --------------------------------------------------------------------------- load shapes


class _Smooth:
    """Slow noise: standard normal values at fixed knots, linearly interpolated."""

    def __init__(self, rng: np.random.Generator, t0: float, t1: float, spacing: float,
                 values: Callable[[np.random.Generator, int], np.ndarray] | None = None) -> None:
        n = int((t1 - t0) // spacing) + 3
        self.t = t0 - spacing + spacing * np.arange(n, dtype=np.float64)
        self.v = values(rng, n) if values else rng.standard_normal(n)

    def __call__(self, ts: np.ndarray) -> np.ndarray:
        return np.interp(ts, self.t, self.v)


def _local(ts: np.ndarray) -> np.ndarray:
    return ts + UTC_OFFSET_H * 3600.0


def diurnal(ts: np.ndarray) -> np.ndarray:
    """Daily demand, 0 at night to 1 at the mid-afternoon peak, lower at weekends."""
    local = _local(ts)
    hour = (local % 86400.0) / 3600.0
    shape = np.clip(np.sin(np.pi * (hour - 6.5) / 16.0), 0.0, None) ** 1.5  # 06:30-22:30
    weekday = ((local // 86400.0) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    return shape * np.where(weekday >= 5, 0.7, 1.0)


class Behaviour:
    """How one process uses its GPU: ``(util 0-100, memory MiB)`` at the times ``ts``."""

    def __call__(self, ts: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class Training(Behaviour):
    """Data-parallel training: a ramp at start, then steady 85-99 % with brief checkpoint stalls."""

    def __init__(self, rng, window, t_on, level, mem_mib, ckpt_every_s=1800.0):
        self.t_on, self.level, self.mem_mib = t_on, level, mem_mib
        self.ckpt_every_s = ckpt_every_s
        self.ckpt_s = float(rng.uniform(40, 90))
        self.slow = _Smooth(rng, *window, spacing=300.0)

    def __call__(self, ts, rng):
        n = len(ts)
        age = ts - self.t_on
        steady = np.clip(self.level + 2.0 * self.slow(ts) + rng.normal(0.0, 1.6, n), 85.0, 99.0)
        ramp = np.clip(age / 240.0, 0.0, 1.0)  # loading data, compiling
        util = steady * ramp
        stall = (age % self.ckpt_every_s) < self.ckpt_s
        if stall.any():
            util[stall] = rng.uniform(2.0, 25.0, int(stall.sum()))
        mem = self.mem_mib * (0.04 + 0.96 * np.clip(age / 90.0, 0.0, 1.0)) + rng.integers(-2, 3, n) * 2
        return util, mem


class Inference(Behaviour):
    """A model server: load follows the day, with minute-scale traffic bursts; weights stay in memory."""

    def __init__(self, rng, window, night, peak, weights_mib, kv_mib, burst_rate=0.06):
        self.night, self.peak = night, peak
        self.weights_mib, self.kv_mib = weights_mib, kv_mib
        self.slow = _Smooth(rng, *window, spacing=900.0)
        self.bursts = _Smooth(
            rng, *window, spacing=120.0,
            values=lambda r, n: 1.0 + (r.random(n) < burst_rate) * r.exponential(0.9, n),
        )

    def __call__(self, ts, rng):
        n = len(ts)
        load = self.night + (self.peak - self.night) * diurnal(ts)
        load = load * np.exp(0.12 * self.slow(ts)) * self.bursts(ts)
        util = np.clip(load + rng.normal(0.0, 0.8 + 0.05 * load, n), 0.0, 100.0)
        mem = self.weights_mib + self.kv_mib * np.clip(load / max(self.peak, 1.0), 0.0, 1.0)
        return util, np.round(mem / 2.0) * 2.0


class IdleHolder(Behaviour):
    """A server nobody calls: memory held, utilisation 0 apart from health checks."""

    def __init__(self, rng, window, mem_mib):
        self.mem_mib = mem_mib

    def __call__(self, ts, rng):
        n = len(ts)
        util = np.where(rng.random(n) < 0.02, rng.integers(1, 4, n), 0).astype(np.float64)
        return util, np.full(n, float(self.mem_mib))


class Notebook(Behaviour):
    """An interactive notebook: idle most of the time, short bursts when someone runs a cell.

    Sessions come more often in working hours; after a session the kernel keeps its
    model in memory until it is restarted.
    """

    def __init__(self, rng, window, held_mib, context_mib=520.0):
        t0, t1 = window
        starts, ends, levels, mems = [], [], [], []
        hour = math.floor(t0 / 3600.0) * 3600.0
        mem = context_mib
        while hour < t1:
            local = _local(np.array([hour]))[0]
            h, weekday = (local % 86400.0) / 3600.0, ((local // 86400.0) + 3) % 7
            rate = 0.02 if not 9 <= h < 19 else (0.12 if weekday >= 5 else 0.7)
            for _ in range(int(rng.poisson(rate))):
                s = hour + rng.uniform(0, 3600.0)
                starts.append(s)
                ends.append(s + float(np.clip(rng.exponential(12 * 60.0), 120.0, 3600.0)))
                levels.append(float(rng.uniform(25.0, 95.0)))
                mem = held_mib * float(rng.uniform(0.6, 1.0)) if mem == context_mib or rng.random() < 0.3 else mem
                mems.append(mem)
            hour += 3600.0
        order = np.argsort(starts, kind="stable")
        self.starts = np.asarray(starts, np.float64)[order]
        self.ends = np.asarray(ends, np.float64)[order]
        self.levels = np.asarray(levels, np.float64)[order]
        self.mems = np.asarray(mems, np.float64)[order]
        self.context_mib = context_mib

    def __call__(self, ts, rng):
        n = len(ts)
        util = np.zeros(n)
        mem = np.full(n, self.context_mib)
        if len(self.starts):
            last = np.searchsorted(self.starts, ts, side="right") - 1
            seen = last >= 0
            i = np.maximum(last, 0)
            active = seen & (ts < self.ends[i])
            util = np.where(active, np.clip(self.levels[i] + rng.normal(0, 6.0, n), 0, 100), 0.0)
            mem = np.where(seen, self.mems[i], self.context_mib)
        # a little activity between cells: the kernel polling, a plot
        util = np.maximum(util, np.where(rng.random(n) < 0.01, rng.integers(1, 6, n), 0))
        return util, np.round(mem)


# --------------------------------------------------------------------------- the plan


@dataclass
class _Device:
    uuid: str
    model: GpuModel
    index: int | None
    memory_mib: int
    parent: "_Device | None" = None
    profile: str | None = None
    compute_slices: int = 0
    slices: list["_Device"] = field(default_factory=list)
    rng: np.random.Generator | None = None
    base_mib: int = 0  # memory used with no process

    def record(self) -> Device:
        return Device(uuid=self.uuid, model=self.model.name, memory_total_bytes=self.memory_mib * MIB,
                      index=self.index, parent_uuid=self.parent.uuid if self.parent else None,
                      mig_profile=self.profile)


@dataclass
class _Process:
    device: _Device
    pod_uid: str
    pid: int
    behaviour: Behaviour
    rng: np.random.Generator


@dataclass
class _Pod:
    pod: Pod
    t_on: float  # present in snapshots with t_on <= ts < t_off
    t_off: float
    processes: list[_Process]

    def active(self, ts: float) -> bool:
        return self.t_on <= ts < self.t_off


@dataclass
class _Node:
    name: str
    labels: dict[str, str]
    devices: list[_Device]  # in record order: each MIG parent followed by its slices
    pods: list[_Pod]

    def snapshot(self, ts: float) -> tuple[Pod, ...]:
        return tuple(p.pod for p in self.pods if p.active(ts))


class _Builder:
    """Draws names, ids and timing for one node from the node's own Generator."""

    def __init__(self, seed: int, number: int, start: float, end: float) -> None:
        self.seq = np.random.SeedSequence([seed, number])
        self.rng = np.random.default_rng(self.seq.spawn(1)[0])
        self.number = number
        self.replica = (number - 1) // 4
        self.start, self.end = start, end
        self.window = (start, end)
        self.duration = end - start

    def child_rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seq.spawn(1)[0])

    def hexs(self, n: int) -> str:
        return "".join(f"{b:02x}" for b in self.rng.integers(0, 256, (n + 1) // 2))[:n]

    def uuid(self) -> str:
        """A random (version 4) UUID string, from this node's Generator."""
        h = self.hexs(32)
        variant = "89ab"[int(h[16], 16) & 3]
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}"

    def gpu_uuid(self, kind: str = "GPU") -> str:
        h = self.hexs(32)
        return f"{kind}-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"

    def suffix(self, n: int = 5) -> str:
        alphabet = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' generateName alphabet
        return "".join(alphabet[i] for i in self.rng.integers(0, len(alphabet), n))

    def rs_hash(self) -> str:
        return self.suffix(self.rng.integers(8, 11))

    def pid(self) -> int:
        return int(self.rng.integers(12_000, 3_900_000))

    def at(self, fraction: float, jitter: float = 0.04) -> float:
        """A time at ``fraction`` of the window (jittered for nodes after the first four)."""
        if self.replica:
            fraction += float(self.rng.uniform(-jitter, jitter))
        return self.start + round(max(fraction, 0.0) * self.duration)

    def before_start(self) -> float:
        return self.start - round(float(self.rng.uniform(2.0, 30.0)) * 3600.0)

    def name(self, pool: Sequence[str]) -> str:
        """A workload name from ``pool``, different for each repeat of the node pattern."""
        r = self.replica
        base = pool[r % len(pool)]
        return base if r < len(pool) else f"{base}-v{r // len(pool) + 1}"

    def gpus(self, model: GpuModel, count: int) -> list[_Device]:
        return [_Device(self.gpu_uuid(), model, i, model.memory_mib, rng=self.child_rng(),
                        base_mib=int(self.rng.integers(0, 6))) for i in range(count)]

    def node_labels(self, instance: str, model: GpuModel, gpus: int, zone: str,
                    capacity: str = "on-demand", pool: str = "gpu-on-demand") -> dict[str, str]:
        return {
            "kubernetes.io/arch": "amd64",
            "kubernetes.io/os": "linux",
            "node.kubernetes.io/instance-type": instance,
            "topology.kubernetes.io/region": REGION,
            "topology.kubernetes.io/zone": zone,
            "karpenter.sh/capacity-type": capacity,
            "karpenter.sh/nodepool": pool,
            "nvidia.com/gpu.product": model.product_label,
            "nvidia.com/gpu.count": str(gpus),
        }

    def pod(self, namespace: str, name: str, labels: dict[str, str], owner: Owner | None,
            containers: list[tuple[str, list[_Device]]], behaviours: list[Behaviour],
            t_on: float, t_off: float) -> _Pod:
        """A pod; one process per device of its containers, with ``behaviours`` in device order."""
        uid = self.uuid()
        pod = Pod(uid=uid, namespace=namespace, name=name, labels=labels, owner=owner,
                  containers=tuple(Container(c, tuple(d.uuid for d in devs)) for c, devs in containers))
        devices = [d for _, devs in containers for d in devs]
        first = self.pid()
        pids = [first + i for i in range(len(devices))]  # one rank per GPU: consecutive pids
        procs = [_Process(d, uid, pid, b, self.child_rng()) for d, pid, b in zip(devices, pids, behaviours)]
        return _Pod(pod, t_on, t_off, procs)


# The four node archetypes. Each returns a node; names repeat with a version suffix
# when the pattern repeats past the end of a pool.

def _training_node(b: _Builder, name: str) -> _Node:
    """p5.48xlarge, 8x H100: a PyTorchJob that finishes and another that starts later,
    a CronJob's batch run, and one GPU in MIG mode serving small models."""
    gpus = b.gpus(H100, 8)
    mig = gpus[7]
    for profile, g, mem, base in H100_MIG:  # 6 of 7 compute slices instantiated
        s = _Device(b.gpu_uuid("MIG"), H100, None, mem, parent=mig, profile=profile,
                    compute_slices=g, rng=b.child_rng(), base_mib=base)
        mig.slices.append(s)
    devices = [d for gpu in gpus for d in [gpu, *gpu.slices]]
    w = b.window
    pods: list[_Pod] = []

    # Training job 1: runs from before the window, completes at ~42 %.
    job = b.name(["llama3-8b-sft", "qwen2-7b-sft", "mixtral-lora", "gemma2-9b-sft", "phi3-ft"])
    t_on, t_off = b.before_start(), b.at(0.42)
    team = {"team": "ml-research"}
    for role, devs in (("master", gpus[0:4]), ("worker", gpus[4:6])):
        labels = {"training.kubeflow.org/job-name": job, "training.kubeflow.org/operator-name": "pytorchjob-controller",
                  "training.kubeflow.org/replica-type": role, "training.kubeflow.org/replica-index": "0", **team}
        pods.append(b.pod("research", f"{job}-{role}-0", labels, Owner("PyTorchJob", job), [("pytorch", devs)],
                          [Training(b.rng, w, t_on, float(b.rng.uniform(92, 96)), float(b.rng.uniform(68000, 76000)))
                           for _ in devs], t_on, t_off))

    # Training job 2: queued, starts at ~58 % on four GPUs and runs past the end.
    job2 = b.name(["mistral-7b-dpo", "llama3-70b-lora", "clip-vit-l-pretrain", "t5-xl-distill", "whisper-ft"])
    t_on2 = b.at(0.58)
    labels = {"training.kubeflow.org/job-name": job2, "training.kubeflow.org/operator-name": "pytorchjob-controller",
              "training.kubeflow.org/replica-type": "master", "training.kubeflow.org/replica-index": "0", **team}
    pods.append(b.pod("research", f"{job2}-master-0", labels, Owner("PyTorchJob", job2), [("pytorch", gpus[0:4])],
                      [Training(b.rng, w, t_on2, float(b.rng.uniform(88, 94)), float(b.rng.uniform(60000, 74000)))
                       for _ in range(4)], t_on2, math.inf))

    # A nightly CronJob's batch embedding run on GPU 6 (team by label).
    cron = b.name(["embedding-backfill", "doc-embed-refresh", "index-rebuild", "catalog-embed"])
    t_on3, t_off3 = b.at(0.15), b.at(0.70)
    run = f"{cron}-{int(t_on3 // 60)}"  # a CronJob names its Jobs by the scheduled minute
    labels = {"batch.kubernetes.io/job-name": run, "job-name": run, "gpuledger.io/team": "search"}
    pods.append(b.pod("search-batch", f"{run}-{b.suffix()}", labels, Owner("CronJob", cron), [("embedder", [gpus[6]])],
                      [Training(b.rng, w, t_on3, float(b.rng.uniform(86, 90)), float(b.rng.uniform(30000, 42000)),
                                ckpt_every_s=600.0)], t_on3, t_off3))

    # Small inference Deployments on two MIG slices; the 1g.10gb slice is free.
    s3g, s2g, _s1g = mig.slices
    for ns, app, team_labels, slice_, weights, kv, peak in (
        ("search-prod", b.name(["query-rewriter", "spell-suggest", "query-classifier", "intent-tagger"]),
         {"gpuledger.io/team": "search"}, s3g, 21000.0, 12000.0, 70.0),
        ("recsys", b.name(["feature-embedder", "item-tower", "user-tower", "session-encoder"]), {}, s2g, 9000.0, 6000.0, 55.0),
    ):
        labels = {"app": app, "pod-template-hash": b.rs_hash(), **team_labels}
        pods.append(b.pod(ns, f"{app}-{labels['pod-template-hash']}-{b.suffix()}", labels, Owner("Deployment", app),
                          [("server", [slice_])], [Inference(b.rng, w, 0.5, peak, weights, kv)],
                          b.before_start(), math.inf))
    labels = b.node_labels("p5.48xlarge", H100, 8, f"{REGION}{'abcdf'[b.replica % 5]}")
    labels["nvidia.com/mig.strategy"] = "mixed"
    return _Node(name, labels, devices, pods)


def _mixed_node(b: _Builder, name: str) -> _Node:
    """p4d.24xlarge, 8x A100 40GB: a JobSet, a KServe predictor, a notebook, 2 GPUs unallocated."""
    gpus = b.gpus(A100, 8)
    w = b.window
    pods: list[_Pod] = []

    js = b.name(["dlrm-v3-train", "two-tower-train", "seq-rec-pretrain", "ctr-dcn-train"])
    t_on = b.at(0.06)
    for i, devs in enumerate((gpus[0:2], gpus[2:4])):
        job = f"{js}-workers-0"
        labels = {"jobset.sigs.k8s.io/jobset-name": js, "jobset.sigs.k8s.io/replicatedjob-name": "workers",
                  "jobset.sigs.k8s.io/job-index": "0", "batch.kubernetes.io/job-name": job,
                  "batch.kubernetes.io/job-completion-index": str(i)}
        pods.append(b.pod("recsys", f"{job}-{i}-{b.suffix()}", labels, Owner("JobSet", js), [("trainer", devs)],
                          [Training(b.rng, w, t_on, float(b.rng.uniform(87, 93)), float(b.rng.uniform(30000, 36000)))
                           for _ in devs], t_on, math.inf))

    isvc = b.name(["ranker", "ctr-model", "reranker-xl", "next-item"])
    hash_ = b.rs_hash()
    labels = {"serving.kserve.io/inferenceservice": isvc, "component": "predictor",
              "app": f"{isvc}-predictor", "pod-template-hash": hash_, "team": "recsys"}
    pods.append(b.pod("recsys-serving", f"{isvc}-predictor-{hash_}-{b.suffix()}", labels,
                      Owner("InferenceService", isvc), [("kserve-container", [gpus[4]]), ("queue-proxy", [])],
                      [Inference(b.rng, w, 0.4, 78.0, 26000.0, 7000.0, burst_rate=0.12)],
                      b.before_start(), math.inf))

    nb = b.name(["alice-llm-scratch", "bob-eval", "chen-rlhf-debug", "dana-viz"])
    labels = {"notebook-name": nb, "statefulset": nb, "app": nb, "gpuledger.io/team": "ml-research"}
    pods.append(b.pod("notebooks", f"{nb}-0", labels, Owner("Notebook", nb), [(nb, [gpus[5]])],
                      [Notebook(b.rng, w, held_mib=float(b.rng.uniform(9000, 16000)))],
                      b.before_start(), math.inf))
    # gpus[6] and gpus[7]: no pod ever asks for them.
    return _Node(name, b.node_labels("p4d.24xlarge", A100, 8, f"{REGION}{'bcdfa'[b.replica % 5]}"), gpus, pods)


def _inference_node(b: _Builder, name: str) -> _Node:
    """g5.12xlarge, 4x A10G: Deployments; one idle holding memory; one GPU time-sliced by three pods."""
    gpus = b.gpus(A10G, 4)
    w = b.window
    pods: list[_Pod] = []

    def deployment(ns, app, team_labels, devs, behaviour):
        hash_ = b.rs_hash()
        labels = {"app": app, "pod-template-hash": hash_, **team_labels}
        return b.pod(ns, f"{app}-{hash_}-{b.suffix()}", labels, Owner("Deployment", app), [("server", devs)],
                     [behaviour], b.before_start(), math.inf)

    pods.append(deployment("search-prod", b.name(["search-embedder", "passage-encoder", "sparse-encoder"]),
                           {"team": "search"}, [gpus[0]], Inference(b.rng, w, 1.0, 62.0, 9500.0, 3000.0)))
    pods.append(deployment("recsys", b.name(["candidate-gen-v1", "legacy-ranker", "ab-test-shadow"]), {},
                           [gpus[1]], IdleHolder(b.rng, w, float(b.rng.uniform(17500, 19500)))))
    # Time-sliced GPU 2 (the device plugin's sharing.timeSlicing, replicas: 4): three pods, one GPU.
    for ns, app, team_labels, night, peak, weights in (
        ("search-prod", b.name(["spellcheck", "autocomplete", "typo-fixer"]), {"gpuledger.io/team": "search"}, 0.5, 34.0, 3100.0),
        ("platform", b.name(["ner-tagger", "pii-redactor", "toxicity-filter"]), {}, 0.3, 18.0, 2400.0),
        ("platform", b.name(["lang-detect", "ocr-lite", "thumbnailer"]), {}, 0.2, 7.0, 1500.0),
    ):
        pods.append(deployment(ns, app, team_labels, [gpus[2]], Inference(b.rng, w, night, peak, weights, 600.0)))
    pods.append(deployment("platform", b.name(["whisper-transcribe", "tts-service", "audio-tagger"]),
                           {"team": "platform"}, [gpus[3]], Inference(b.rng, w, 0.5, 45.0, 11000.0, 4000.0)))
    return _Node(name, b.node_labels("g5.12xlarge", A10G, 4, f"{REGION}{'cdfab'[b.replica % 5]}"), gpus, pods)


def _spot_node(b: _Builder, name: str) -> _Node:
    """g6e.12xlarge spot, 4x L40S: a RayService, a RayJob that comes and goes, a bare debug pod."""
    gpus = b.gpus(L40S, 4)
    w = b.window
    pods: list[_Pod] = []

    svc = b.name(["sdxl-serve", "flux-serve", "llava-serve", "sd3-serve"])
    cluster = f"{svc}-raycluster-{b.suffix()}"
    for dev in gpus[0:2]:
        labels = {"ray.io/originated-from-crd": "RayService", "ray.io/originated-from-cr-name": svc,
                  "ray.io/cluster": cluster, "ray.io/node-type": "worker", "ray.io/group": "gpu-group",
                  "gpuledger.io/team": "genai"}
        pods.append(b.pod("genai-serving", f"{cluster}-gpu-group-worker-{b.suffix()}", labels,
                          Owner("RayService", svc), [("ray-worker", [dev])],
                          [Inference(b.rng, w, 0.8, 85.0, 23000.0, 9000.0, burst_rate=0.1)],
                          b.before_start(), math.inf))

    debug = f"debug-cuda-{b.name(['mwong', 'jpatel', 'kli', 'sgarcia'])}"
    t_on, t_off = b.at(0.30), b.at(0.65)
    pods.append(b.pod("platform", debug, {"run": debug}, None, [("cuda", [gpus[2]])],
                      [IdleHolder(b.rng, w, float(b.rng.uniform(1200, 2600)))], t_on, t_off))

    rj = b.name(["caption-backfill", "image-dedup", "clip-score-batch", "video-tagging"])
    t_on2, t_off2 = b.at(0.20), b.at(0.75)
    labels = {"ray.io/originated-from-crd": "RayJob", "ray.io/originated-from-cr-name": rj,
              "ray.io/cluster": f"{rj}-raycluster-{b.suffix()}", "ray.io/node-type": "worker",
              "ray.io/group": "gpu-group", "gpuledger.io/team": "genai"}
    pods.append(b.pod("genai-batch", f"{labels['ray.io/cluster']}-gpu-group-worker-{b.suffix()}", labels,
                      Owner("RayJob", rj), [("ray-worker", [gpus[3]])],
                      [Training(b.rng, w, t_on2, float(b.rng.uniform(86, 92)), float(b.rng.uniform(30000, 40000)),
                                ckpt_every_s=900.0)], t_on2, t_off2))
    labels = b.node_labels("g6e.12xlarge", L40S, 4, f"{REGION}{'dfabc'[b.replica % 5]}", capacity="spot", pool="gpu-spot")
    return _Node(name, labels, gpus, pods)


ARCHETYPES = (_training_node, _mixed_node, _inference_node, _spot_node)


def plan_cluster(seed: int, nodes: int, start: float, end: float) -> list[_Node]:
    """The demo cluster's nodes, pods and load behaviours (no samples yet)."""
    plan = []
    for number in range(1, nodes + 1):
        builder = _Builder(seed, number, start, end)
        plan.append(ARCHETYPES[(number - 1) % len(ARCHETYPES)](builder, f"gpu-node-{number:04d}"))
    return plan


# --------------------------------------------------------------------------- samples


def _power(model: GpuModel, util: np.ndarray, busy: bool, rng: np.random.Generator) -> np.ndarray:
    """Board power following utilisation, from idle (or context-open idle) up to the limit."""
    n = len(util)
    if not busy:
        return np.clip(model.idle_w + rng.normal(0.0, 0.6, n), 0.0, model.tdp_w)
    floor = model.busy_idle_w
    frac = np.clip(util / 100.0, 0.0, 1.0)
    watts = floor + (model.tdp_w - floor) * frac ** 0.85 + rng.normal(0.0, 1.0 + 0.015 * model.tdp_w * frac, n)
    return np.clip(watts, model.idle_w, model.tdp_w)


def _json(text: str) -> str:
    """A JSON string literal that is safe inside a ``%`` template."""
    return json.dumps(text).replace("%", "%%")


@dataclass
class _Readings:
    """One device's numbers for a block: ``util`` None where NVML reports none."""

    util: np.ndarray | None
    mem_bytes: np.ndarray
    power: np.ndarray | None
    procs: list[tuple[_Process, np.ndarray, np.ndarray]]  # (process, util, memory bytes)
    load: np.ndarray  # what the device really did, for its MIG parent's power


def _readings(device: _Device, ts: np.ndarray, procs: list[_Process],
              slices: list[_Readings]) -> _Readings:
    n = len(ts)
    utils, mems = [], []
    for p in procs:
        u, m = p.behaviour(ts, p.rng)
        utils.append(np.clip(np.rint(u), 0, 100).astype(np.int64))
        mems.append(np.maximum(np.rint(m), 1).astype(np.int64))
    if len(utils) > 1:  # time-sliced: the SM time the processes got adds up to at most 100 %
        total = np.sum(utils, axis=0)
        over = total > 100
        if over.any():
            utils = [np.where(over, (u * 100) // np.maximum(total, 1), u) for u in utils]
    load = np.minimum(np.sum(utils, axis=0), 100) if utils else np.zeros(n, np.int64)
    mem = device.base_mib * MIB + (np.sum(mems, axis=0) * MIB if mems else np.zeros(n, np.int64))
    listed = [(p, u, m * MIB) for p, u, m in zip(procs, utils, mems)]
    if device.parent is not None:  # a MIG slice: NVML reports no utilisation and no power
        return _Readings(None, mem, None, listed, load)
    if device.slices:  # a GPU in MIG mode: board power and memory, no utilisation
        eff = sum((r.load * s.compute_slices for r, s in zip(slices, device.slices)), np.zeros(n)) / H100_COMPUTE_SLICES
        mem = mem + sum((r.mem_bytes for r in slices), np.zeros(n, np.int64))
        return _Readings(None, mem, _power(device.model, eff, True, device.rng), [], eff)
    return _Readings(load, mem, _power(device.model, load.astype(np.float64), bool(procs), device.rng), listed, load)


def _format(node: _Node, device: _Device, r: _Readings, ts_text: list[str]) -> list[str]:
    """The sample lines of one device for a block, from one ``%`` template."""
    tmpl = '{"kind":"sample","ts":%s,"node":' + _json(node.name) + ',"uuid":' + _json(device.uuid)
    columns: list[list] = [ts_text]
    if r.util is None:
        tmpl += ',"util":null'
    else:
        tmpl += ',"util":%d'
        columns.append(r.util.tolist())
    tmpl += ',"mem_used_bytes":%d'
    columns.append(r.mem_bytes.tolist())
    if r.power is not None:
        tmpl += ',"power_w":%.1f'
        columns.append(r.power.tolist())
    entries = []
    for proc, util, mem in r.procs:
        entry = '{"pid":%d,"pod_uid":%s' % (proc.pid, _json(proc.pod_uid))
        if r.util is not None:
            entry += ',"util":%d'
            columns.append(util.tolist())
        entries.append(entry + ',"mem_used_bytes":%d}')
        columns.append(mem.tolist())
    tmpl += ',"processes":[' + ",".join(entries) + "]}\n"
    return [tmpl % row for row in zip(*columns)]


def _block_lines(plan: list[_Node], ts: np.ndarray, ts_text: list[str], interval_s: float,
                 serving_rngs: dict[str, np.random.Generator]) -> list[str]:
    """All lines of a block in time order: at each ts, every node's devices in order, then
    the serving records of the inference pods that ran then (``serving_rngs``: each
    server's own generator, kept across blocks)."""
    per_step: list[list[str]] = []
    at = float(ts[0])
    for node in plan:
        holders: dict[str, list[_Process]] = {}
        for pod in node.pods:
            if pod.active(at):
                for proc in pod.processes:
                    holders.setdefault(proc.device.uuid, []).append(proc)
        done: dict[str, _Readings] = {}
        for device in node.devices:  # slices before their parent: its power follows their load
            for s in device.slices:
                done[s.uuid] = _readings(s, ts, holders.get(s.uuid, []), [])
            if device.uuid not in done:
                done[device.uuid] = _readings(device, ts, holders.get(device.uuid, []),
                                              [done[s.uuid] for s in device.slices])
        per_step += [_format(node, d, done[d.uuid], ts_text) for d in node.devices]
        for d in node.devices:
            for proc, util, _ in done[d.uuid].procs:
                if isinstance(proc.behaviour, Inference):
                    rng = serving_rngs.setdefault(proc.pod_uid, np.random.default_rng(
                        zlib.crc32(proc.pod_uid.encode())))
                    per_step.append(_serving_lines(node, proc, util, ts_text, interval_s, rng))
    width = len(per_step)
    out: list[str] = [""] * (width * len(ts))
    for k, lines in enumerate(per_step):
        out[k::width] = lines
    return out


def _serving_shape(pod_uid: str) -> tuple[float, float, float]:
    """(requests per second at full utilisation, mean input tokens, mean output tokens) of a
    model server, fixed by its pod's uid, so adding serving records changes no other number."""
    h = zlib.crc32(pod_uid.encode())
    return 20.0 + h % 40, 200.0 + (h >> 8) % 1000, 60.0 + (h >> 16) % 240


def _serving_lines(node: _Node, proc: _Process, util: np.ndarray, ts_text: list[str], interval_s: float,
                   rng: np.random.Generator) -> list[str]:
    """One ``serving`` record per sample step of an inference pod: requests drawn around its
    utilisation × its capacity, tokens around its means (trace format 1.1)."""
    rps, mean_in, mean_out = _serving_shape(proc.pod_uid)
    requests = rng.poisson(np.asarray(util, np.float64) / 100.0 * rps * interval_s)
    inputs = rng.poisson(requests * mean_in)
    outputs = rng.poisson(requests * mean_out)
    tmpl = ('{"kind":"serving","ts":%s,"node":' + _json(node.name) + ',"pod_uid":' + _json(proc.pod_uid)
            + ',"requests":%d,"input_tokens":%d,"output_tokens":%d}\n')
    return [tmpl % row for row in zip(ts_text, requests.tolist(), inputs.tolist(), outputs.tolist())]


# --------------------------------------------------------------------------- simulate


def _check(value, field_name: str, *, whole: bool = False, positive: bool = True, low: float | None = None) -> None:
    ok_type = isinstance(value, numbers.Integral) if whole else isinstance(value, numbers.Real)
    if isinstance(value, bool) or not ok_type or (not whole and not math.isfinite(value)):
        kind = "a whole number" if whole else "a number"
        raise InputError(f"expected {kind}, got {describe(value)}", field=field_name)
    if low is not None and value < low:
        raise InputError(f"expected a number of at least {low:g}, got {describe(value)}", field=field_name)
    if low is None and positive and value <= 0:
        raise InputError(f"expected a number above 0, got {describe(value)}", field=field_name)


def _first_step_at(start: float, interval: float, t: float) -> int:
    """The smallest step j with ``start + j * interval >= t``."""
    j = max(1, math.ceil((t - start) / interval))
    while start + j * interval < t:
        j += 1
    while j > 1 and start + (j - 1) * interval >= t:
        j -= 1
    return j


def simulate(
    out: str | Path,
    *,
    seed: int = 1,
    nodes: int = 4,
    hours: float = 24.0,
    start: float = DEFAULT_START,
    interval_s: float = 10.0,
    progress: Progress | None = None,
) -> SimulationStats:
    """Write the demo cluster's trace to ``out`` (gzip when it ends in ``.gz``).

    ``nodes`` repeats the four node archetypes (p5.48xlarge, p4d.24xlarge, g5.12xlarge,
    g6e.12xlarge spot) with new names and pods; ``hours`` of samples every ``interval_s``
    seconds from ``start``. ``progress(done, total)`` is called with sample counts.
    Raises :class:`InputError` for a bad argument; nothing is written then.
    """
    _check(seed, "--seed", whole=True, low=0)
    _check(nodes, "--nodes", whole=True, low=1)
    _check(hours, "--hours")
    _check(interval_s, "--interval")
    _check(start, "--start", positive=False, low=0)
    seed, nodes = int(seed), int(nodes)
    start, interval_s, hours = float(start), float(interval_s), float(hours)
    steps = int(math.floor(hours * 3600.0 / interval_s + 1e-9))
    if steps < 1:
        raise InputError(f"expected at least one --interval ({interval_s:g} s) of samples, got {hours:g} h",
                         field="--hours")
    end = start + steps * interval_s
    plan = plan_cluster(seed, nodes, start, end)
    width = sum(len(n.devices) for n in plan)
    total = width * steps

    # State records: each node's labels, inventory and first pods snapshot at start, then
    # a new snapshot whenever a pod starts or stops within the window.
    states: list[tuple[int, float, int, object]] = []  # (step, ts, node order, record)
    for order, node in enumerate(plan):
        changes = sorted({t for p in node.pods for t in (p.t_on, p.t_off) if start < t <= end})
        for t in changes:
            states.append((_first_step_at(start, interval_s, t), t, order,
                           PodsRecord(ts=t, node=node.name, pods=node.snapshot(t))))
    states.sort(key=lambda s: (s[1], s[2]))
    cuts = {1, steps + 1} | {s[0] for s in states}
    block_steps = max(1, BLOCK_LINES // width)
    cuts |= set(range(1, steps + 1, block_steps))
    bounds = sorted(cuts)

    integral = start.is_integer() and interval_s.is_integer()
    created = datetime.fromtimestamp(end, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    serves = any(isinstance(p.behaviour, Inference) for n in plan for pod in n.pods for p in pod.processes)
    meta = Meta(interval_s=interval_s, source="simulator", created=created,
                version=SERVING_VERSION if serves else VERSION)
    serving_rngs: dict[str, np.random.Generator] = {}  # its own generators: adding them changes no sample
    done = served = 0
    pods_seen = {p.pod.uid for n in plan for p in n.pods if p.active(start)}
    with TraceWriter(out, meta) as writer:
        for node in plan:
            writer.write(NodeRecord(ts=start, node=node.name, labels=node.labels))
            writer.write(DevicesRecord(ts=start, node=node.name, devices=tuple(d.record() for d in node.devices)))
            writer.write(PodsRecord(ts=start, node=node.name, pods=node.snapshot(start)))
        pending = 0
        for j0, j1 in zip(bounds, bounds[1:]):
            while pending < len(states) and states[pending][0] <= j0:
                record = states[pending][3]
                writer.write(record)  # type: ignore[arg-type]
                pods_seen.update(p.uid for p in record.pods)  # type: ignore[attr-defined]
                pending += 1
            ts = start + np.arange(j0, j1, dtype=np.float64) * interval_s
            ts_text = [str(int(t)) for t in ts.tolist()] if integral else [repr(t) for t in ts.tolist()]
            lines = _block_lines(plan, ts, ts_text, interval_s, serving_rngs)
            writer.write_lines("".join(lines), len(lines))
            done += width * len(ts)
            served += len(lines) - width * len(ts)
            if progress:
                progress(done, total)
        lines_written = writer.count
    return SimulationStats(
        path=Path(out), nodes=nodes, gpus=sum(1 for n in plan for d in n.devices if d.parent is None),
        pods=len(pods_seen), samples=done, lines=lines_written, start=start, end=end, serving=served,
    )
