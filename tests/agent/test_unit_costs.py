"""Unit economics: serving records on ledger rows, and cost per request and per token by hand,
on a GPU of its own, a MIG slice and a time-shared GPU, through replay, the agent's meter and
the report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.config import Config
from agent.metering import Meter
from collectors.errors import InputError
from collectors.pricing.ratecard import RateCardPricer, load_rate_card
from collectors.records import from_json
from recommenders.history import ensure_categorical
from recommenders.unit_costs import unit_costs
from tests.agent.test_cost_model import devices, gpu, mig, node, pod, pods, run, sample
from tests.conftest import META, write_jsonl

META_11 = dict(META, version=1.1)


def serving(pod_uid, ts, requests=None, inputs=None, outputs=None, interval=None, name="gpu-a", errors=None):
    r = {"kind": "serving", "ts": ts, "node": name, "pod_uid": pod_uid}
    for k, v in (("requests", requests), ("input_tokens", inputs), ("output_tokens", outputs),
                 ("interval_s", interval), ("errors", errors)):
        if v is not None:
            r[k] = v
    return r


def rows_of(result):
    import pandas as pd

    table = result.table.to_pandas()
    table["minute"] = (table["minute"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return table


def workload(summary, name="ft"):
    return next(w for w in summary["workloads"] if w["name"] == name)


def test_serving_counts_land_on_the_pods_first_gpu_row_in_the_midpoints_minute(tmp_path):
    # a pod on GPU-a and GPU-b; 60 one-second samples per GPU (the minute 0..60) and serving
    # records: 100 requests over the 30 s ending at 30 (midpoint 15: minute 0) and 20 over
    # the 40 s ending at 80 (midpoint 60: minute 60, where no sample is: a row of 0 seconds)
    records = [node(), devices(gpu("GPU-a"), gpu("GPU-b", index=1)), pods(pod("p1", "GPU-a", "GPU-b"))]
    records += [sample(u, t, 50) for t in range(1, 61) for u in ("GPU-a", "GPU-b")]
    records += [serving("p1", 30, requests=100, outputs=4000, interval=30), serving("p1", 80, requests=20, interval=40)]
    result = run(tmp_path, records)
    t = rows_of(result)
    held = t[t["pod_uid"] == "p1"].set_index(["minute", "device_uuid"])
    assert held.loc[(0, "GPU-a"), "requests"] == 100 and held.loc[(0, "GPU-a"), "output_tokens"] == 4000
    assert math.isnan(held.loc[(0, "GPU-a"), "input_tokens"])  # the server did not count it: unknown, not 0
    assert math.isnan(held.loc[(0, "GPU-b"), "requests"])  # counts go to the pod's first GPU only
    only = held.loc[(60, "GPU-a")]
    assert (only["requests"], only["allocated_gpu_seconds"], only["cost"], only["samples"]) == (20, 0, 0, 0)
    # the GPU-seconds are untouched: 120 of them, 0.005/s (36/h over 2 GPUs)
    w = workload(result.summary)
    assert w["allocated_gpu_seconds"] == pytest.approx(120) and w["cost"] == pytest.approx(0.6)
    assert (w["requests"], w["output_tokens"], w["input_tokens"]) == (120, 4000, None)
    assert w["cost_per_1k_requests"] == pytest.approx(0.6 / 120 * 1000)
    assert w["cost_per_1m_output_tokens"] == pytest.approx(0.6 / 4000 * 1e6)
    assert w["cost_per_1m_input_tokens"] is None


def test_a_serving_record_of_an_unlisted_pod_names_its_line(tmp_path):
    records = [node(), devices(gpu("GPU-a")), pods(pod("p1", "GPU-a")), sample("GPU-a", 1, 50),
               serving("ghost", 1, requests=5)]
    with pytest.raises(InputError) as err:
        run(tmp_path, records)
    assert (err.value.line, err.value.field) == (6, "pod_uid") and "'ghost'" in err.value.message


@pytest.mark.parametrize("line, field", [
    ({"kind": "serving", "ts": 1, "node": "gpu-a"}, "pod_uid"),
    ({"kind": "serving", "ts": 1, "node": "gpu-a", "pod_uid": "p1", "requests": -1}, "requests"),
    ({"kind": "serving", "ts": 1, "node": "gpu-a", "pod_uid": "p1", "output_tokens": "12"}, "output_tokens"),
    ({"kind": "serving", "ts": 1, "node": "gpu-a", "pod_uid": "p1", "interval_s": 0}, "interval_s"),
])
def test_bad_serving_records_name_their_field(line, field):
    with pytest.raises(InputError) as err:
        from_json(line)
    assert err.value.field == field


def test_version_1_1_traces_read_and_2_is_refused(tmp_path):
    records = [node(), devices(gpu("GPU-a")), pods(pod("p1", "GPU-a")), sample("GPU-a", 1, 50),
               serving("p1", 1, requests=3)]
    path = write_jsonl(tmp_path / "t.jsonl", records, meta=META_11)
    from agent.replay import replay

    rates = tmp_path / "r.yaml"
    rates.write_text("currency: USD\ndefault_gpu_hourly: 3.6\n")
    result = replay([path], load_rate_card(rates), Config())
    assert workload(result.summary)["requests"] == 3


# --------------------------------------------------------------------------- per token by hand


def test_cost_per_token_on_a_mig_slice_and_a_time_shared_gpu(tmp_path):
    # node price 36/h over 2 physical GPUs: 0.005 per GPU-second.
    # GPU-a is split: a 3g.20gb slice held by "slice" (3/7 of the GPU); GPU-b is time-shared by
    # "left" and "right" whose processes use 30 and 10 (3/4 and 1/4). One 60 s sample each.
    records = [node(), devices(gpu("GPU-a"), mig("MIG-1", "GPU-a", "3g.20gb"), gpu("GPU-b", index=1)),
               pods(pod("s1", "MIG-1", owner=("Deployment", "slice")),
                    pod("l1", "GPU-b", owner=("Deployment", "left")),
                    pod("r1", "GPU-b", owner=("Deployment", "right"))),
               sample("GPU-a", 60, None, interval=60), sample("MIG-1", 60, None, interval=60),
               sample("GPU-b", 60, 80, procs=[("l1", 30), ("r1", 10)], interval=60),
               serving("s1", 60, requests=300, outputs=90_000, interval=60),
               serving("l1", 60, requests=1000, outputs=200_000, interval=60),
               serving("r1", 60, requests=50, outputs=5_000, interval=60)]
    s = run(tmp_path, records).summary
    cost_slice = 60 * 3 / 7 * 0.005
    cost_left, cost_right = 45 * 0.005, 15 * 0.005
    assert workload(s, "slice")["cost_per_1m_output_tokens"] == pytest.approx(cost_slice / 90_000 * 1e6)
    assert workload(s, "slice")["cost_per_1k_requests"] == pytest.approx(cost_slice / 300 * 1e3)
    assert workload(s, "left")["cost_per_1m_output_tokens"] == pytest.approx(cost_left / 200_000 * 1e6)
    assert workload(s, "right")["cost_per_1k_requests"] == pytest.approx(cost_right / 50 * 1e3)


def test_report_unit_costs_on_both_bases_and_their_trend(tmp_path):
    # one inference pod on GPU-a, two days (the previous window and this one), one sample and
    # one serving record a minute. Day 1: util 50%, 10 requests a minute; day 2: util 25%,
    # 4 requests a minute (cost per request up 2.5×: an anomaly at the 1.5 factor).
    day = 1440
    records = [node(), devices(gpu("GPU-a"), gpu("GPU-b", index=1)),
               pods(pod("p1", "GPU-a", owner=("Deployment", "chat"), labels={"app.kubernetes.io/component": "predictor"}))]
    for m in range(2 * day):
        util, requests = (50, 10) if m < day else (25, 4)
        records.append(sample("GPU-a", 60 * (m + 1), util, interval=60))
        records.append(serving("p1", 60 * (m + 1), requests=requests, outputs=requests * 100, interval=60))
    result = run(tmp_path, records)
    rows = ensure_categorical(rows_of(result))
    minute = rows["minute"].to_numpy()
    current, previous = rows[minute >= day * 60], rows[minute < day * 60]
    [u] = unit_costs(current, previous, anomaly_factor=1.5)
    cost = day * 60 * 0.005  # a day of one GPU at 0.005/s = 432
    assert (u["namespace"], u["workload_name"], u["requests"], u["output_tokens"]) == ("research", "chat", 4 * day, 400 * day)
    assert u["cost_allocation"] == pytest.approx(cost)
    assert u["cost_usage"] == pytest.approx(cost * 0.25)  # the used quarter
    assert u["cost_per_1k_requests_allocation"] == pytest.approx(cost / (4 * day) * 1e3)
    assert u["cost_per_1k_requests_usage"] == pytest.approx(cost * 0.25 / (4 * day) * 1e3)
    assert u["cost_per_1m_output_tokens_allocation"] == pytest.approx(cost / (400 * day) * 1e6)
    before = cost / (10 * day) * 1e3
    assert u["previous_cost_per_1k_requests_allocation"] == pytest.approx(before)
    assert u["change_pct"] == pytest.approx(10 / 4 - 1) and u["anomaly"] is True
    assert [d["requests"] for d in u["daily"]] == [4 * day]
    # the allocation costs reconcile with the spend
    assert u["cost_allocation"] == pytest.approx(float(current["cost"].sum()))


# --------------------------------------------------------------------------- the agent's meter


def test_the_meter_places_serving_counts_as_replay_does(tmp_path):
    records = [node(), devices(gpu("GPU-a")), pods(pod("p1", "GPU-a"))]
    records += [sample("GPU-a", t, 40, interval=1) for t in range(1, 121)]
    records += [serving("p1", t, requests=t, outputs=2 * t, interval=15) for t in range(15, 121, 15)]
    result = run(tmp_path, records)
    expected = rows_of(result).groupby("minute")[["requests", "output_tokens"]].sum()
    rates = tmp_path / "rates2.yaml"
    rates.write_text("currency: USD\nnodes:\n  - match: {node.kubernetes.io/instance-type: p4d.24xlarge}\n"
                     "    hourly: 36.0\ndefault_gpu_hourly: 3.6\n")
    meter = Meter(RateCardPricer(load_rate_card(rates)), Config())
    recs = [from_json(r) for r in records]
    got: dict[int, list[float]] = {}
    rng = np.random.default_rng(1)
    i = 0
    while i < len(recs):  # random cycle sizes
        n = int(rng.integers(1, 9))
        cycle = meter.process(recs[i:i + n], 1.0)
        i += n
        for row in cycle.rows:
            if not math.isnan(row.counts[0]):
                acc = got.setdefault(row.key.minute, [0.0, 0.0])
                acc[0] += row.counts[0]
                acc[1] += row.counts[2]
        assert cycle.dropped_serving == 0
    assert {m: tuple(v) for m, v in got.items()} == {
        int(m): (float(r["requests"]), float(r["output_tokens"])) for m, r in expected.iterrows() if r["requests"] > 0}
