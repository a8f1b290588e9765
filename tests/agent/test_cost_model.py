"""The cost model, rule by rule, on small traces whose figures are worked out by hand.

Every expected number here is written from the rule in docs/cost-model.md, not read
back from the code; each test also checks conservation.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from agent.config import Config
from agent.replay import replay
from collectors.pricing.ratecard import load_rate_card
from tests.conftest import write_jsonl

RATES = """
currency: USD
nodes:
  - match: {node.kubernetes.io/instance-type: p4d.24xlarge}
    hourly: 36.0
gpus:
  "NVIDIA H100 80GB HBM3": 7.2
default_gpu_hourly: 3.6
"""
A100 = "NVIDIA A100-SXM4-40GB"
H100 = "NVIDIA H100 80GB HBM3"


def node(ts=0, name="gpu-a", itype="p4d.24xlarge"):
    return {"kind": "node", "ts": ts, "node": name, "labels": {"node.kubernetes.io/instance-type": itype}}


def devices(*devs, ts=0, name="gpu-a"):
    return {"kind": "devices", "ts": ts, "node": name, "devices": list(devs)}


def gpu(uuid, model=A100, index=0):
    return {"uuid": uuid, "index": index, "model": model, "memory_total_bytes": 42949672960}


def mig(uuid, parent, profile, model=A100):
    return {"uuid": uuid, "parent_uuid": parent, "mig_profile": profile, "model": model}


def pod(uid, *devs, ns="research", labels=None, owner=("PyTorchJob", "ft")):
    p = {"uid": uid, "namespace": ns, "name": f"pod-{uid}", "labels": labels or {},
         "containers": [{"name": "main", "devices": list(devs)}]}
    if owner:
        p["owner"] = {"kind": owner[0], "name": owner[1]}
    return p


def pods(*ps, ts=0, name="gpu-a"):
    return {"kind": "pods", "ts": ts, "node": name, "pods": list(ps)}


def sample(uuid, ts, util, name="gpu-a", mem=None, procs=None, interval=None):
    s = {"kind": "sample", "ts": ts, "node": name, "uuid": uuid, "util": util}
    if mem is not None:
        s["mem_used_bytes"] = mem
    if procs is not None:
        s["processes"] = [{"pid": 100 + i, "pod_uid": uid, "util": u} for i, (uid, u) in enumerate(procs)]
    if interval is not None:
        s["interval_s"] = interval
    return s


def run(tmp_path: Path, records, rates_text=RATES, config=Config()):
    rates = tmp_path / "rates.yaml"
    rates.write_text(rates_text)
    trace = write_jsonl(tmp_path / "t.jsonl", records)
    result = replay([trace], load_rate_card(rates), config)
    check_conservation(result.summary)
    return result


def check_conservation(summary):
    t = summary["totals"]
    assert math.isclose(t["allocated_gpu_seconds"] + t["unallocated_gpu_seconds"], t["gpu_seconds"], rel_tol=1e-9)
    teams = sum(x["allocated_gpu_seconds"] for x in summary["teams"])
    assert math.isclose(teams, t["allocated_gpu_seconds"], rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(sum(x["cost"] for x in summary["teams"]), t["cost"], rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(sum(x["cost"] for x in summary["workloads"]), t["cost"], rel_tol=1e-9, abs_tol=1e-12)
    for team in summary["teams"]:
        by_class = sum(c["cost"] for c in team["by_class"].values())
        assert math.isclose(by_class, team["cost"], rel_tol=1e-9, abs_tol=1e-12)


def team(summary, name):
    return next(t for t in summary["teams"] if t["team"] == name)


def test_exclusive_gpu_allocated_used_and_cost(tmp_path):
    # p4d node price 36/h over 2 physical GPUs -> 18/h per GPU = 0.005 per second.
    result = run(tmp_path, [
        node(), devices(gpu("GPU-a"), gpu("GPU-b", index=1)),
        pods(pod("p1", "GPU-a", labels={"team": "ml"})),
        sample("GPU-a", 1, 50), sample("GPU-a", 2, 100), sample("GPU-a", 4, 0, interval=2),
        sample("GPU-b", 1, 30),
    ])
    s = result.summary
    ml = team(s, "ml")
    assert ml["allocated_gpu_seconds"] == pytest.approx(4.0)  # 1 + 1 + 2
    assert ml["used_gpu_seconds"] == pytest.approx(0.5 + 1.0 + 0.0)
    assert ml["cost"] == pytest.approx(4 * 0.005)
    assert ml["idle_cost"] == pytest.approx((4 - 1.5) * 0.005)
    assert s["totals"]["unallocated_gpu_seconds"] == pytest.approx(1.0)
    assert s["totals"]["unallocated_cost"] == pytest.approx(0.005)
    assert s["totals"]["gpu_seconds"] == pytest.approx(5.0)
    assert ml["by_class"]["training"]["cost"] == pytest.approx(0.02)


def test_shared_gpu_split_by_process_utilisation(tmp_path):
    # Two pods share GPU-a. util 80 on the device; processes say p1 30, p2 10 -> 3/4 and 1/4.
    result = run(tmp_path, [
        node(), devices(gpu("GPU-a")),
        pods(pod("p1", "GPU-a", labels={"team": "a"}), pod("p2", "GPU-a", labels={"team": "b"})),
        sample("GPU-a", 10, 80, procs=[("p1", 30), ("p2", 10)], interval=4),
    ])
    s = result.summary
    # one physical GPU on the node: 36/h -> 0.01/s
    assert team(s, "a")["allocated_gpu_seconds"] == pytest.approx(3.0)
    assert team(s, "b")["allocated_gpu_seconds"] == pytest.approx(1.0)
    assert team(s, "a")["used_gpu_seconds"] == pytest.approx(3.0 * 0.8)
    assert team(s, "b")["used_gpu_seconds"] == pytest.approx(1.0 * 0.8)
    assert team(s, "a")["cost"] == pytest.approx(0.03)
    assert team(s, "b")["cost"] == pytest.approx(0.01)


@pytest.mark.parametrize("procs", [None, [], [("p1", 0), ("p2", 0)], [("other", 50)]])
def test_shared_gpu_without_usable_process_data_splits_evenly(tmp_path, procs):
    result = run(tmp_path, [
        node(), devices(gpu("GPU-a")),
        pods(pod("p1", "GPU-a", labels={"team": "a"}), pod("p2", "GPU-a", labels={"team": "b"}),
             pod("p3", "GPU-a", labels={"team": "c"})),
        sample("GPU-a", 3, 60, procs=procs, interval=3),
    ])
    for name in "abc":
        assert team(result.summary, name)["allocated_gpu_seconds"] == pytest.approx(1.0)
        assert team(result.summary, name)["used_gpu_seconds"] == pytest.approx(0.6)


def test_mig_slices_weighted_and_parent_remainder_unallocated(tmp_path):
    # A100 has 7 compute slices. 3g + 2g instantiated: parent remainder 2/7, always unallocated.
    result = run(tmp_path, [
        node(), devices(gpu("GPU-a"), mig("MIG-3", "GPU-a", "3g.20gb"), mig("MIG-2", "GPU-a", "2g.10gb")),
        pods(pod("p1", "MIG-3", labels={"team": "a"}), pod("p2", "GPU-a", labels={"team": "b"})),
        sample("GPU-a", 7, 90, interval=7),  # parent: listed by p2, still unallocated
        sample("MIG-3", 7, None, mem=5, interval=7),
        sample("MIG-2", 7, None, interval=7),  # no pod: unallocated
    ])
    s = result.summary
    a = team(s, "a")
    assert a["allocated_gpu_seconds"] == pytest.approx(3.0)
    assert a["util_unknown_gpu_seconds"] == pytest.approx(3.0)
    assert a["used_gpu_seconds"] == 0
    assert a["cost"] == pytest.approx(3.0 * 0.01)  # 1 physical GPU: 36/h = 0.01/s, slice = 3/7 of it
    assert all(t["team"] != "b" for t in s["teams"])
    assert s["totals"]["unallocated_gpu_seconds"] == pytest.approx(2.0 + 2.0)
    assert s["totals"]["gpu_seconds"] == pytest.approx(7.0)  # the whole GPU, counted once


def test_a30_has_four_compute_slices(tmp_path):
    a30 = "NVIDIA A30"
    result = run(tmp_path, [
        devices(gpu("GPU-a", a30), mig("MIG-1", "GPU-a", "1g.6gb", a30)),
        pods(pod("p1", "MIG-1", labels={"team": "a"})),
        sample("MIG-1", 4, None, interval=4), sample("GPU-a", 4, 0, interval=4),
    ])
    assert team(result.summary, "a")["allocated_gpu_seconds"] == pytest.approx(1.0)
    assert result.summary["totals"]["unallocated_gpu_seconds"] == pytest.approx(3.0)
    # no node labels -> model price -> default 3.6/h = 0.001/s
    assert team(result.summary, "a")["cost"] == pytest.approx(0.001)


def test_pods_snapshot_in_effect_is_the_latest_not_after_the_sample(tmp_path):
    result = run(tmp_path, [
        node(), devices(gpu("GPU-a")),
        pods(pod("p1", "GPU-a", labels={"team": "a"}), ts=0),
        pods(pod("p2", "GPU-a", labels={"team": "b"}), ts=10),
        pods(ts=20),
        sample("GPU-a", 9, 100), sample("GPU-a", 10, 100), sample("GPU-a", 15, 100),
        sample("GPU-a", 20, 100), sample("GPU-a", 21, 100),
    ])
    s = result.summary
    assert team(s, "a")["allocated_gpu_seconds"] == pytest.approx(1.0)
    assert team(s, "b")["allocated_gpu_seconds"] == pytest.approx(2.0)
    assert s["totals"]["unallocated_gpu_seconds"] == pytest.approx(2.0)


def test_later_node_and_devices_records_replace_earlier_ones(tmp_path):
    result = run(tmp_path, [
        node(itype="p4d.24xlarge"), devices(gpu("GPU-a"), gpu("GPU-b", index=1)),
        sample("GPU-a", 5, 0),  # 36/h over 2 GPUs = 0.005/s
        node(ts=10, itype="unknown-type"), devices(gpu("GPU-a"), ts=10),
        sample("GPU-a", 15, 0),  # model price: A100 not in gpus -> default 3.6/h = 0.001/s
    ])
    t = result.summary["totals"]
    assert t["unallocated_cost"] == pytest.approx(0.005 + 0.001)
    sources = {p["source"] for p in result.summary["prices"]}
    assert sources == {"rate-card", "default"}


def test_gpu_share_and_model_prices(tmp_path):
    text = RATES.replace("currency: USD", "currency: EUR\ngpu_share: 0.5")
    result = run(tmp_path, [
        node(), devices(gpu("GPU-a"), gpu("GPU-b", index=1), gpu("GPU-c", index=2), gpu("GPU-d", index=3)),
        devices(gpu("GPU-h", H100), name="gpu-b"),
        sample("GPU-a", 1, 0), sample("GPU-h", 1, 0, name="gpu-b"),
    ], rates_text=text)
    s = result.summary
    assert s["currency"] == "EUR"
    # node: 36/h x 0.5 / 4 GPUs = 4.5/h; H100 on an unlabelled node: 7.2/h
    assert s["totals"]["unallocated_cost"] == pytest.approx(4.5 / 3600 + 7.2 / 3600)


def test_several_nodes_and_default_interval(tmp_path):
    meta = {"kind": "meta", "format": "gpuledger-trace", "version": 1, "interval_s": 5.0}
    trace = write_jsonl(tmp_path / "t.jsonl", [
        devices(gpu("GPU-1")), devices(gpu("GPU-2"), name="gpu-b"),
        sample("GPU-1", 5, 10), sample("GPU-2", 5, 20, name="gpu-b"),
    ], meta=meta)
    rates = tmp_path / "r.yaml"
    rates.write_text(RATES)
    s = replay([trace], load_rate_card(rates), Config()).summary
    assert s["totals"]["gpu_seconds"] == pytest.approx(10.0)


def test_team_and_class_come_from_the_config(tmp_path):
    from agent.config import LabelRule

    config = Config(namespace_teams={"research": "ml-research"},
                    label_rules=(LabelRule("app", "inference", "llm"),))
    result = run(tmp_path, [
        devices(gpu("GPU-a"), gpu("GPU-b", index=1)),
        pods(pod("p1", "GPU-a", labels={"app": "llm"}, owner=None),
             pod("p2", "GPU-b", ns="other", owner=("Job", "etl"))),
        sample("GPU-a", 1, 10), sample("GPU-b", 1, 10),
    ], config=config)
    s = result.summary
    assert team(s, "ml-research")["by_class"].keys() == {"inference"}
    assert team(s, "other")["by_class"].keys() == {"training"}
    kinds = {(w["kind"], w["name"]) for w in s["workloads"]}
    assert kinds == {("Pod", "pod-p1"), ("Job", "etl")}


@pytest.mark.parametrize("profile, slices", [
    ("3g.20gb", 3), ("1g.10gb+me", 1), ("7g.80gb", 7), ("1c.3g.71gb", 1), ("2c.3g.71gb", 2), ("big", None), ("3g", None),
])
def test_mig_profile_compute_slices(profile, slices):
    from collectors.mig import profile_compute_slices

    assert profile_compute_slices(profile) == slices


def test_compute_instances_of_one_gpu_instance_add_up_to_it(tmp_path):
    # H200 (G = 7): a 3g instance split 1c + 2c, plus 2g and 1g: 1 + 2 + 2 + 1 = 6 of 7.
    h200 = "NVIDIA H200"
    result = run(tmp_path, [
        devices(gpu("GPU-a", h200), mig("CI-1", "GPU-a", "1c.3g.71gb", h200), mig("CI-2", "GPU-a", "2c.3g.71gb", h200),
                mig("M-2", "GPU-a", "2g.35gb", h200), mig("M-1", "GPU-a", "1g.18gb", h200)),
        pods(pod("p1", "CI-2", labels={"team": "a"})),
        *[sample(u, 7, None, interval=7) for u in ("GPU-a", "CI-1", "CI-2", "M-2", "M-1")],
    ])
    s = result.summary
    assert team(s, "a")["allocated_gpu_seconds"] == pytest.approx(2.0)
    assert s["totals"]["unallocated_gpu_seconds"] == pytest.approx(1 + 2 + 1 + 1)  # CI-1, M-2, M-1, remainder
    assert s["totals"]["gpu_seconds"] == pytest.approx(7.0)
