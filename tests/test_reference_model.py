"""Whole traces: the vectorised replay against the loop-by-loop reference model.

The demo cluster has everything at once (MIG, time-slicing, pods coming and going,
unallocated GPUs, several nodes and prices), so agreement per pod to 1e-9 is strong
evidence that the fast path computes the documented model.
"""

from __future__ import annotations

import math
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from agent.config import Config
from agent.replay import replay
from collectors.pricing.ratecard import load_rate_card
from collectors.simulator import simulate
from tests.reference_model import reference

pytestmark = pytest.mark.slow  # drives real processes or servers; see README "Fast loop"

RATES = """currency: USD
nodes:
  - match: {node.kubernetes.io/instance-type: p5.48xlarge}
    hourly: 55.04
  - match: {node.kubernetes.io/instance-type: p4d.24xlarge}
    hourly: 21.96
default_gpu_hourly: 1.5
"""


def price_of(labels, model, physical):
    """The rate card above, by hand."""
    hourly = {"p5.48xlarge": 55.04, "p4d.24xlarge": 21.96}.get(labels.get("node.kubernetes.io/instance-type"))
    return hourly / physical if hourly is not None else 1.5


@pytest.mark.parametrize("seed, nodes, split", [(1, 4, False), (5, 6, True)])
def test_replay_matches_the_reference_model_per_pod(tmp_path, seed, nodes, split):
    trace = simulate(tmp_path / "t.jsonl", seed=seed, nodes=nodes, hours=1.5, interval_s=10.0).path
    paths = [trace]
    if split:  # the same records as two gzip files, one holding the state records only
        lines = trace.read_text().splitlines()
        state = [lines[0]] + [l for l in lines[1:] if '"kind":"sample"' not in l]
        samples = [lines[0]] + [l for l in lines[1:] if '"kind":"sample"' in l]
        import gzip
        paths = [tmp_path / "state.jsonl.gz", tmp_path / "samples.jsonl.gz"]
        paths[0].write_bytes(gzip.compress(("\n".join(state) + "\n").encode()))
        paths[1].write_bytes(gzip.compress(("\n".join(samples) + "\n").encode()))
    rates = tmp_path / "rates.yaml"
    rates.write_text(RATES)
    result = replay(paths, load_rate_card(rates), Config())
    expected = reference(paths, price_of)

    table = result.table
    got = defaultdict(lambda: defaultdict(float))
    for row in table.select(["pod_uid", "allocated_gpu_seconds", "used_gpu_seconds",
                             "util_unknown_gpu_seconds", "cost"]).to_pylist():
        if row["pod_uid"] is not None:
            fig = got[row["pod_uid"]]
            fig["allocated"] += row["allocated_gpu_seconds"]
            fig["used"] += row["used_gpu_seconds"]
            fig["unknown"] += row["util_unknown_gpu_seconds"]
            fig["cost"] += row["cost"]
    pods = {k for k in expected if k not in ("total", "unallocated")}
    assert pods == set(got)
    assert len(pods) >= 10
    for uid in pods:
        for key in ("allocated", "used", "unknown", "cost"):
            assert math.isclose(got[uid][key], expected[uid][key], rel_tol=1e-9, abs_tol=1e-9), (uid, key)
    t = result.summary["totals"]
    assert math.isclose(t["unallocated_gpu_seconds"], expected["unallocated"]["seconds"], rel_tol=1e-9)
    assert math.isclose(t["unallocated_cost"], expected["unallocated"]["cost"], rel_tol=1e-9)
    assert math.isclose(t["gpu_seconds"], expected["total"]["capacity"], rel_tol=1e-9)
    # conservation: capacity and its price, exactly once
    assert math.isclose(t["allocated_gpu_seconds"] + t["unallocated_gpu_seconds"], t["gpu_seconds"], rel_tol=1e-9)
    assert math.isclose(t["cost"] + t["unallocated_cost"], expected["total"]["capacity_cost"], rel_tol=1e-9)
    # the demo has the features this test means to cover
    assert t["util_unknown_gpu_seconds"] > 0
    assert t["unallocated_gpu_seconds"] > 0
    pods_on_device = table.filter(pc.is_valid(table["pod_uid"])).group_by(["minute", "device_uuid"]).aggregate([([], "count_all")])
    assert max(pods_on_device["count_all"].to_pylist()) >= 2  # a time-sliced GPU
    assert len(set(table["node"].to_pylist())) == nodes
