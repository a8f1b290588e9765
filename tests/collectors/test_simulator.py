"""The demo cluster simulator: valid, deterministic, and holding what docs/simulator.md promises."""

from __future__ import annotations

import gzip
import math
from collections import Counter
from pathlib import Path

import pytest

from agent.accounting.classify import team_of, workload_class_of
from agent.config import Config
from agent.replay import replay
from collectors.errors import InputError
from collectors.pricing.ratecard import load_snapshot
from collectors.records import DevicesRecord, Meta, NodeRecord, PodsRecord, Sample
from collectors.simulator import DEFAULT_START, simulate
from collectors.tracefile import iter_records

HOURS, INTERVAL = 1.0, 10.0
STEPS = int(HOURS * 3600 / INTERVAL)
# Devices each node of the four-node pattern samples: p5 (8 GPUs + 3 MIG slices), p4d, g5, g6e.
DEVICES_PER_NODE = (11, 8, 4, 4)
TDP_W = {"NVIDIA H100 80GB HBM3": 700.0, "NVIDIA A100-SXM4-40GB": 400.0, "NVIDIA A10G": 300.0, "NVIDIA L40S": 350.0}


class Demo:
    """A small demo trace read back record by record, with the state in effect for each sample."""

    def __init__(self, path: Path, stats) -> None:
        self.path, self.stats = path, stats
        self.records = [r for _, r in iter_records(path)]
        self.samples = [r for r in self.records if isinstance(r, Sample)]
        self.nodes = {r.node: r for r in self.records if isinstance(r, NodeRecord)}
        self.inventories = [r for r in self.records if isinstance(r, DevicesRecord)]
        self.snapshots = [r for r in self.records if isinstance(r, PodsRecord)]
        self.devices = {d.uuid: d for r in self.inventories for d in r.devices}
        self.pods = {p.uid: p for r in self.snapshots for p in r.pods}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Demo:
    path = tmp_path_factory.mktemp("sim") / "demo.jsonl"
    return Demo(path, simulate(path, seed=7, hours=HOURS, interval_s=INTERVAL))


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = simulate(tmp_path / "a.jsonl", seed=3, hours=0.5).path.read_bytes()
    b = simulate(tmp_path / "b.jsonl", seed=3, hours=0.5).path.read_bytes()
    c = simulate(tmp_path / "c.jsonl", seed=4, hours=0.5).path.read_bytes()
    assert a == b
    assert a != c


def test_gzip_output_holds_the_same_lines(tmp_path):
    plain = simulate(tmp_path / "t.jsonl", seed=2, hours=0.25)
    packed = simulate(tmp_path / "t.jsonl.gz", seed=2, hours=0.25)
    assert packed.path.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(packed.path.read_bytes()) == plain.path.read_bytes()
    again = simulate(tmp_path / "again.jsonl.gz", seed=2, hours=0.25)
    assert again.path.read_bytes() == packed.path.read_bytes()  # no timestamp in the gzip header


# --------------------------------------------------------------------------- format


def test_every_line_is_a_valid_record_in_time_order(demo):
    assert isinstance(demo.records[0], Meta)
    assert demo.records[0].interval_s == INTERVAL and demo.records[0].source == "simulator"
    assert not any(isinstance(r, Meta) for r in demo.records[1:])
    times = [r.ts for r in demo.records[1:]]
    assert times == sorted(times)
    assert demo.stats.lines == len(demo.records)
    assert demo.stats.start == DEFAULT_START
    assert demo.stats.end == DEFAULT_START + HOURS * 3600 == max(times)


def test_each_sample_follows_an_inventory_of_its_node_that_lists_it(demo):
    listed: dict[str, set[str]] = {}
    for record in demo.records[1:]:
        if isinstance(record, DevicesRecord):
            listed[record.node] = {d.uuid for d in record.devices}
        elif isinstance(record, Sample):
            assert record.uuid in listed.get(record.node, ()), record


def test_processes_match_the_pods_snapshot_in_effect(demo):
    """Each process names a pod that lists the device; each pod-held GPU shows its processes."""
    in_effect: dict[str, dict[str, set[str]]] = {}  # node -> device -> holder pod uids
    for record in demo.records[1:]:
        if isinstance(record, PodsRecord):
            holders: dict[str, set[str]] = {}
            for pod in record.pods:
                for device in pod.devices:
                    holders.setdefault(device, set()).add(pod.uid)
            in_effect[record.node] = holders
        elif isinstance(record, Sample):
            device = demo.devices[record.uuid]
            if device.mig_profile is None and any(d.parent_uuid == device.uuid for d in demo.devices.values()):
                assert record.processes == ()  # a MIG parent: its processes are on the slices
                continue
            expected = in_effect[record.node].get(record.uuid, set())
            assert {p.pod_uid for p in record.processes} == expected
            assert len({p.pid for p in record.processes}) == len(record.processes)


def test_readings_are_physically_plausible(demo):
    for s in demo.samples:
        device = demo.devices[s.uuid]
        assert 0 <= s.mem_used_bytes <= device.memory_total_bytes
        assert sum(p.mem_used_bytes for p in s.processes) <= s.mem_used_bytes
        if device.parent_uuid is None:
            assert 0 < s.power_w <= TDP_W[device.model]
        else:
            assert s.power_w is None  # NVML reports no power for a MIG slice
        if s.util is not None:
            assert sum(p.util for p in s.processes) <= s.util <= 100


# --------------------------------------------------------------------------- counts


def test_sample_count_is_devices_times_steps(demo):
    devices = sum(DEVICES_PER_NODE)
    assert demo.stats.samples == len(demo.samples) == devices * STEPS
    assert len(demo.inventories) == 4 and sum(len(r.devices) for r in demo.inventories) == devices
    assert Counter(s.uuid for s in demo.samples) == Counter({u: STEPS for u in demo.devices})
    assert demo.stats.nodes == 4
    assert demo.stats.gpus == 8 + 8 + 4 + 4
    assert demo.stats.pods == len(demo.pods)


def test_more_nodes_repeat_the_pattern_with_new_names(tmp_path):
    stats = simulate(tmp_path / "six.jsonl", seed=5, nodes=6, hours=0.2, interval_s=30.0)
    records = [r for _, r in iter_records(stats.path)]
    steps = int(0.2 * 3600 / 30.0)
    per_node = DEVICES_PER_NODE + DEVICES_PER_NODE[:2]
    assert stats.samples == sum(per_node) * steps
    nodes = [r for r in records if isinstance(r, NodeRecord)]
    assert [n.node for n in nodes] == [f"gpu-node-{i:04d}" for i in range(1, 7)]
    types = [n.labels["node.kubernetes.io/instance-type"] for n in nodes]
    assert types == ["p5.48xlarge", "p4d.24xlarge", "g5.12xlarge", "g6e.12xlarge", "p5.48xlarge", "p4d.24xlarge"]
    uuids = [d.uuid for r in records if isinstance(r, DevicesRecord) for d in r.devices]
    assert len(uuids) == len(set(uuids)) == sum(per_node)
    pods = {p.uid: p for r in records if isinstance(r, PodsRecord) for p in r.pods}
    names = Counter((p.namespace, p.name) for p in pods.values())
    assert max(names.values()) == 1  # every pod name is new
    jobs = {p.owner.name for p in pods.values() if p.owner and p.owner.kind == "PyTorchJob"}
    assert len(jobs) >= 4  # two per p5 node, none repeated


def test_uneven_hours_give_whole_intervals(tmp_path):
    stats = simulate(tmp_path / "t.jsonl", hours=0.1, interval_s=7.0, start=1_700_000_000.5)
    steps = math.floor(0.1 * 3600 / 7.0)
    assert stats.samples == sum(DEVICES_PER_NODE) * steps
    assert stats.end == 1_700_000_000.5 + steps * 7.0
    assert max(r.ts for _, r in iter_records(stats.path) if not isinstance(r, Meta)) == stats.end


def test_progress_reports_samples(tmp_path):
    calls = []
    stats = simulate(tmp_path / "t.jsonl", hours=0.5, interval_s=1.0, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (stats.samples, stats.samples)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


# --------------------------------------------------------------------------- contents


def test_node_labels_and_real_models(demo):
    labels = {n: r.labels for n, r in demo.nodes.items()}
    assert {lab["node.kubernetes.io/instance-type"] for lab in labels.values()} == {
        "p5.48xlarge", "p4d.24xlarge", "g5.12xlarge", "g6e.12xlarge"}
    for lab in labels.values():
        for key in ("topology.kubernetes.io/region", "topology.kubernetes.io/zone", "karpenter.sh/capacity-type",
                    "nvidia.com/gpu.product"):
            assert lab[key]
    capacity = {lab["node.kubernetes.io/instance-type"]: lab["karpenter.sh/capacity-type"] for lab in labels.values()}
    assert capacity["g6e.12xlarge"] == "spot" and capacity["p5.48xlarge"] == "on-demand"
    memory = {d.model: d.memory_total_bytes for d in demo.devices.values() if d.parent_uuid is None}
    assert memory == {"NVIDIA H100 80GB HBM3": 81559 << 20, "NVIDIA A100-SXM4-40GB": 40960 << 20,
                      "NVIDIA A10G": 23028 << 20, "NVIDIA L40S": 46068 << 20}


def test_a_mig_gpu_with_part_of_it_uninstantiated(demo):
    slices = [d for d in demo.devices.values() if d.parent_uuid]
    assert {d.mig_profile for d in slices} == {"3g.40gb", "2g.20gb", "1g.10gb"}
    parent = demo.devices[slices[0].parent_uuid]
    assert parent.model == "NVIDIA H100 80GB HBM3"
    assert sum(int(d.mig_profile[0]) for d in slices) < 7
    mig = {d.uuid for d in slices} | {parent.uuid}
    mig_samples = [s for s in demo.samples if s.uuid in mig]
    assert mig_samples and all(s.util is None for s in mig_samples)
    held = [s for s in mig_samples if s.uuid != parent.uuid and s.processes]
    assert held and all(s.mem_used_bytes > 1 << 30 for s in held)
    assert any(s.processes for s in held)


def test_shared_and_unallocated_gpus(demo):
    shared = sorted({d for r in demo.snapshots for d, n in Counter(d for p in r.pods for d in p.devices).items()
                     if n >= 2})
    assert shared  # listed by two or more pods of one snapshot: time-sliced
    utils = {}
    for s in demo.samples:
        if s.uuid == shared[0] and len(s.processes) >= 2:
            utils.setdefault(s.uuid, []).append(tuple(p.util for p in s.processes))
    assert any(len(set(u)) > 1 for u in utils[shared[0]])  # per-process shares differ
    holders = {d for p in demo.pods.values() for d in p.devices}
    never = [u for u, d in demo.devices.items() if u not in holders and d.parent_uuid is None
             and not any(x.parent_uuid == u for x in demo.devices.values())]
    assert len(never) >= 2
    for s in demo.samples:
        if s.uuid in never:
            assert s.util == 0 and s.processes == ()


def test_every_workload_class_signal_is_present(demo):
    pods = list(demo.pods.values())
    kinds = {p.owner.kind if p.owner else None for p in pods}
    assert {"PyTorchJob", "Deployment", "Notebook", "RayService", "InferenceService", None} <= kinds
    assert kinds & {"JobSet", "RayJob"}
    assert any("serving.kserve.io/inferenceservice" in p.labels for p in pods)
    assert any("notebook-name" in p.labels for p in pods)
    assert any(p.labels.get("ray.io/originated-from-crd") == "RayService" for p in pods)
    assert any("training.kubeflow.org/job-name" in p.labels for p in pods)
    config = Config()
    assert {workload_class_of(p, config) for p in pods} == {"training", "inference", "interactive", "other"}
    for p in pods:  # uids are UUIDs
        assert len(p.uid) == 36 and p.uid.count("-") == 4


def test_teams_from_labels_and_from_namespaces(demo):
    pods = list(demo.pods.values())
    config = Config()
    teams = {team_of(p, config) for p in pods}
    assert len(teams) >= 3
    assert {"ml-research", "search", "recsys", "platform"} <= teams
    assert any("team" in p.labels for p in pods) and any("gpuledger.io/team" in p.labels for p in pods)
    assert any(not ({"team", "gpuledger.io/team"} & set(p.labels)) for p in pods)  # team from the namespace


def test_pods_come_and_go_mid_window(demo):
    end = demo.stats.end
    mid = [r for r in demo.snapshots if DEFAULT_START < r.ts < end]
    assert mid
    by_node: dict[str, list[PodsRecord]] = {}
    for r in demo.snapshots:
        by_node.setdefault(r.node, []).append(r)
    started = finished = False
    for records in by_node.values():
        assert records[0].ts == DEFAULT_START  # every node starts with a snapshot
        for before, after in zip(records, records[1:]):
            old, new = {p.uid for p in before.pods}, {p.uid for p in after.pods}
            assert old != new  # a snapshot only when the pod set changes
            started |= bool(new - old)
            finished |= bool(old - new)
    assert started and finished
    # a training job completes, and a later one starts after a gap
    spans: dict[str, list[float]] = {}
    for r in demo.snapshots:
        for p in r.pods:
            if p.owner and p.owner.kind == "PyTorchJob":
                spans.setdefault(p.owner.name, []).append(r.ts)
    assert len(spans) == 2
    first, second = sorted(spans.values(), key=min)
    assert min(first) == DEFAULT_START and max(first) < min(second) < end
    gap = [r for r in demo.snapshots if max(first) < r.ts < min(second)]
    assert all(not (p.owner and p.owner.kind == "PyTorchJob") for r in gap for p in r.pods)


def test_training_is_busy_and_inference_follows_the_day(tmp_path):
    stats = simulate(tmp_path / "day.jsonl", seed=1, hours=24.0, interval_s=300.0)
    records = [r for _, r in iter_records(stats.path)]
    pods = {p.uid: p for r in records if isinstance(r, PodsRecord) for p in r.pods}
    train, serve = [], {}
    for s in records:
        if not isinstance(s, Sample):
            continue
        for p in s.processes:
            pod = pods[p.pod_uid]
            if pod.owner and pod.owner.kind == "PyTorchJob" and p.util is not None:
                train.append(p.util)
            if "serving.kserve.io/inferenceservice" in pod.labels:
                hour = int(((s.ts - 5 * 3600) % 86400) // 3600)  # us-east-1 local time
                serve.setdefault(hour, []).append(p.util)
    train.sort()
    assert train[len(train) // 2] >= 85  # median of a training GPU
    night = sum(sum(serve[h]) for h in (1, 2, 3, 4)) / sum(len(serve[h]) for h in (1, 2, 3, 4))
    day = sum(sum(serve[h]) for h in (13, 14, 15)) / sum(len(serve[h]) for h in (13, 14, 15))
    assert night < 5 and day > 25


def test_the_demo_replays(demo):
    summary = replay([demo.path], load_snapshot(), Config()).summary
    totals = summary["totals"]
    assert totals["gpu_seconds"] == pytest.approx(24 * HOURS * 3600, rel=1e-9)
    assert totals["unallocated_gpu_seconds"] > 0 and totals["util_unknown_gpu_seconds"] > 0
    assert len(summary["teams"]) >= 4


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("kwargs, field", [
    ({"nodes": 0}, "--nodes"),
    ({"nodes": 1.5}, "--nodes"),
    ({"nodes": True}, "--nodes"),
    ({"hours": 0}, "--hours"),
    ({"hours": -1}, "--hours"),
    ({"hours": float("nan")}, "--hours"),
    ({"hours": 0.001}, "--hours"),  # less than one interval
    ({"interval_s": 0}, "--interval"),
    ({"interval_s": float("inf")}, "--interval"),
    ({"seed": -1}, "--seed"),
    ({"seed": "x"}, "--seed"),
    ({"start": float("nan")}, "--start"),
])
def test_bad_arguments_raise_input_error_and_write_nothing(tmp_path, kwargs, field):
    out = tmp_path / "t.jsonl"
    with pytest.raises(InputError) as info:
        simulate(out, **kwargs)
    assert info.value.field == field
    assert list(tmp_path.iterdir()) == []


def test_inference_pods_report_serving_counts_and_nothing_else_changes(demo):
    """Trace format 1.1: each inference pod's server counts requests around its utilisation × its
    capacity; training, notebooks and idle pods count nothing. Serving draws use generators of
    their own, so the samples are those of a trace without them (the README's figures hold)."""
    from collectors.records import ServingRecord, from_json
    from collectors.simulator import _serving_shape

    import json

    lines = [json.loads(x) for x in Path(demo.stats.path).read_text().splitlines()]
    assert lines[0]["version"] == 1.1
    served = [from_json(x) for x in lines if x["kind"] == "serving"]
    assert len(served) == demo.stats.serving > 0 and all(isinstance(r, ServingRecord) for r in served)
    owners = {demo.pods[r.pod_uid].owner.kind for r in served}
    assert owners <= {"Deployment", "InferenceService", "RayService"}
    # mean requests per step ≈ mean utilisation / 100 × capacity × interval, per pod (Poisson noise)
    by_pod: dict[str, list[float]] = {}
    for r in served:
        by_pod.setdefault(r.pod_uid, []).append(r.requests)
    utils: dict[str, list[float]] = {}
    for s in demo.samples:
        for p in s.processes or ():
            if p.pod_uid in by_pod and p.util is not None:
                utils.setdefault(p.pod_uid, []).append(p.util)
    for uid, util in utils.items():
        rps = _serving_shape(uid)[0]
        expected = sum(util) / 100 * rps * INTERVAL
        assert abs(sum(by_pod[uid]) - expected) < 5 * expected ** 0.5 + 5, uid
