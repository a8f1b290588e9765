"""Right-sizing: every recommendation type against figures worked out by hand, and the safety rule."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recommenders.catalog import load_catalog
from recommenders.history import ledger_end, load_history
from recommenders.quantiles import group_quantiles
from recommenders.rightsizing import HOURS_PER_MONTH, is_safe, recommend
from recommenders.settings import Settings
from recommenders.workloads import workload_stats
from tests.conftest import shared_data
from tests.test_report_rows import GIB, frame, gpu_minutes

HOURS = 10.0
MINUTES = range(int(HOURS * 60))


def only(recs, kind, name="app"):
    found = [r for r in recs if r.type == kind and r.workload_name == name]
    assert len(found) == 1, [(r.type, r.workload_name) for r in recs]
    return found[0]


def test_idle_workload_saves_its_whole_cost():
    rows = frame(gpu_minutes(pod="p", minutes=MINUTES, util=0.0, mem_gib=0.0))
    recs = recommend(rows, HOURS, "USD")
    assert [r.type for r in recs] == ["idle"]  # idle is exclusive: nothing else for that workload
    r = recs[0]
    cost = 600 * 60 * 2.7447 / 3600  # 600 GPU-minutes at 2.7447/h
    assert r.cost == pytest.approx(cost)
    assert r.monthly_savings == pytest.approx(round(cost * 730 / HOURS, 2))
    assert (r.risk, r.confidence, r.target_gpus_per_pod) == ("low", "high", 0.0)


def test_idle_but_holding_memory_is_medium_risk():
    rows = frame(gpu_minutes(pod="p", minutes=MINUTES, util=0.0, mem_gib=18.0))
    r = only(recommend(rows, HOURS, "USD"), "idle")
    assert r.risk == "medium" and "18.0 GiB" in r.evidence


def test_mostly_idle_below_the_threshold_is_not_idle():
    utils = [0.5 if m % 10 == 0 else 0.0 for m in MINUTES]  # active 10% of the time
    rows = frame(gpu_minutes(pod="p", minutes=MINUTES, util=utils, mem_gib=0.5))
    assert not [r for r in recommend(rows, HOURS, "USD") if r.type == "idle"]


def test_reduce_count_when_some_gpus_of_a_pod_stay_idle():
    busy = [gpu_minutes(pod="p", device=f"GPU-{i}", minutes=MINUTES, util=0.9, mem_gib=30.0) for i in range(2)]
    spare = [gpu_minutes(pod="p", device=f"GPU-{i}", minutes=MINUTES, util=0.0, mem_gib=0.0) for i in (2, 3)]
    rows = frame(*busy, *spare)
    r = only(recommend(rows, HOURS, "USD", types=["reduce-count"]), "reduce-count")
    assert (r.current_gpus_per_pod, r.target_gpus_per_pod) == (4.0, 2.0)
    cost = 4 * 600 * 60 * 2.7447 / 3600
    assert r.monthly_savings == pytest.approx(round(cost / 2 * 730 / HOURS, 2))


def test_downsize_picks_the_cheapest_model_that_fits_memory_and_compute():
    # 10 GiB peak → needs 12 GiB. T4 (15 GiB) fits memory but 0.30 × 312/65 = 1.44 > 0.8;
    # L4 (22.35 GiB): 0.30 × 312/121 = 0.774 ≤ 0.8 → L4, typical price 0.8048 vs 2.7447.
    rows = frame(gpu_minutes(pod="p", minutes=MINUTES, util=0.30, mem_gib=10.0))
    r = only(recommend(rows, HOURS, "USD", types=["downsize-model"]), "downsize-model")
    assert r.target_gpu_model == "NVIDIA L4"
    cost = 600 * 60 * 2.7447 / 3600
    assert r.monthly_savings == pytest.approx(round(cost * (1 - 0.8048 / 2.7447) * 730 / HOURS, 2))
    assert r.target_memory_bytes >= r.observed_max_memory_bytes * 1.2


def test_downsize_never_goes_below_observed_memory_plus_headroom():
    # 20 GiB peak → 24 GiB needed: L4 (22.35) and A10G (22.49) are out; L40S (45 GiB) is the answer.
    rows = frame(gpu_minutes(pod="p", minutes=MINUTES, util=0.30, mem_gib=20.0))
    r = only(recommend(rows, HOURS, "USD", types=["downsize-model"]), "downsize-model")
    assert r.target_gpu_model == "NVIDIA L40S"


def test_mig_picks_the_smallest_profile_that_fits():
    # H100, p95 20 %, peak 8 GiB (needs 9.6): 1g.10gb and 1g.20gb give 1/7 of compute: 0.2×7 = 1.4 > 0.8;
    # 2g.20gb: 0.2 × 7/2 = 0.7 ≤ 0.8 and 19.6 GiB ≥ 9.6 → 2g.20gb, saving 5/7 of the cost.
    rows = frame(gpu_minutes(pod="p", minutes=MINUTES, util=0.20, mem_gib=8.0, model="NVIDIA H100 80GB HBM3",
                             mem_total_gib=79.6, price=6.88))
    r = only(recommend(rows, HOURS, "USD", types=["mig"]), "mig")
    assert r.target_mig_profile == "2g.20gb"
    cost = 600 * 60 * 6.88 / 3600
    assert r.monthly_savings == pytest.approx(round(cost * 5 / 7 * 730 / HOURS, 2))


def test_share_packs_replicas_by_memory_and_compute():
    # 4 replicas on A10G (22.49 GiB), p95 10 %, peak 4 GiB → 4.8 GiB each: 4 fit by memory, 8 by compute
    # → one GPU instead of four: saves 3/4.
    rows = frame(*[gpu_minutes(pod=f"p{i}", minutes=MINUTES, util=0.10, mem_gib=4.0, model="NVIDIA A10G",
                               mem_total_gib=23028 / 1024, price=1.418) for i in range(4)])
    r = only(recommend(rows, HOURS, "USD", types=["share"]), "share")
    assert r.replicas == 4 and r.target_gpus_per_pod == pytest.approx(0.25)
    cost = 4 * 600 * 60 * 1.418 / 3600
    assert r.monthly_savings == pytest.approx(round(cost * 0.75 * 730 / HOURS, 2))
    assert r.target_memory_bytes >= r.observed_max_memory_bytes


def test_short_or_unknown_history_gets_nothing_or_low_confidence():
    short = frame(gpu_minutes(pod="p", minutes=range(60), util=0.0, mem_gib=0.0))
    assert recommend(short, HOURS, "USD") == []  # 1 GPU-hour < min_hours
    low = frame(gpu_minutes(pod="p", minutes=range(400), util=0.0, mem_gib=0.0))
    assert only(recommend(low, 100.0, "USD"), "idle").confidence == "low"  # seen 6.7 h of 100


def test_memory_never_reported_gets_no_model_change():
    rows = frame(gpu_minutes(pod="p", minutes=MINUTES, util=0.05, mem_gib=None))
    assert [r for r in recommend(rows, HOURS, "USD") if r.type in ("downsize-model", "mig", "share")] == []


def test_workload_percentiles_match_pandas():
    rng = np.random.default_rng(3)
    utils = list(rng.random(600).round(3))
    rows = frame(gpu_minutes(pod="p", minutes=MINUTES, util=utils, mem_gib=5.0),
                 gpu_minutes(pod="q", name="other", minutes=MINUTES, util=0.5, mem_gib=7.0))
    stats = workload_stats(rows, HOURS, GIB).set_index("workload_name")
    series = pd.Series(utils)
    assert stats.loc["app", "util_p50"] == pytest.approx(series.quantile(0.5))
    assert stats.loc["app", "util_p95"] == pytest.approx(series.quantile(0.95))
    assert stats.loc["other", "memory_max_bytes"] == 7 * GIB
    assert stats.loc["app", "gpu_hours"] == pytest.approx(10.0)


def test_group_quantiles_match_numpy_on_random_groups():
    rng = np.random.default_rng(0)
    g, v = rng.integers(0, 40, 5000), rng.random(5000)
    v[rng.random(5000) < 0.1] = np.nan
    got = group_quantiles(g, v, (0.5, 0.95, 0.99, 1.0), 41)
    for k in range(40):
        vals = v[(g == k) & ~np.isnan(v)]
        assert got[k] == pytest.approx(np.quantile(vals, (0.5, 0.95, 0.99, 1.0)))
    assert np.isnan(got[40]).all()


@pytest.mark.parametrize("seed", range(8))
def test_safety_rule_on_random_workloads(seed):
    rng = np.random.default_rng(seed)
    groups = []
    for i in range(12):
        model = rng.choice(["NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3", "NVIDIA A10G", "NVIDIA L40S"])
        total = {"NVIDIA A100-SXM4-40GB": 40, "NVIDIA H100 80GB HBM3": 79.6, "NVIDIA A10G": 22.5, "NVIDIA L40S": 45}[model]
        mem = float(rng.uniform(0, total))
        utils = list(np.clip(rng.normal(rng.uniform(0, 0.6), 0.1, 600), 0, 1))
        for r in range(int(rng.integers(1, 4))):
            groups.append(gpu_minutes(pod=f"w{i}-{r}", name=f"w{i}", minutes=MINUTES, util=utils, mem_gib=mem,
                                      model=str(model), mem_total_gib=total))
    for rec in recommend(frame(*groups), HOURS, "USD"):
        assert is_safe(rec)
        if rec.type in ("reduce-count", "replicas", "idle-pods", "schedule"):
            # these keep each remaining pod on the very GPU it has: all of its memory, no headroom needed
            assert rec.target_memory_bytes == rec.gpu_memory_bytes >= rec.observed_max_memory_bytes
        elif rec.type != "idle":
            assert rec.target_memory_bytes >= rec.observed_max_memory_bytes * (1 + Settings().headroom) - 1


def test_genai_pods_are_never_moved_to_a_smaller_gpu(tmp_path):
    data = shared_data()
    if data is None or not (data / "alibaba-genai-2026").is_dir():
        pytest.skip("shared/data/alibaba-genai-2026 (GenTD26) is not beside the checkout")
    trace, out = tmp_path / "g.jsonl.gz", tmp_path / "out"
    for args in (["import", "alibaba-genai", str(data / "alibaba-genai-2026"), "--out", str(trace)],
                 ["replay", str(trace), "--out", str(out)]):
        done = subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    first, end = ledger_end([out / "ledger.parquet"])
    history = load_history([out / "ledger.parquet"], first, end)
    rows = history.rows
    assert set(rows["gpu_model"].dropna().unique()) == {"NVIDIA L20"}
    peak = rows["memory_used_max_bytes"].max()
    assert peak > 40 * GIB  # the memory-bound pods the data is known for
    hours = (end - first) / 3600
    stats = workload_stats(rows, hours, GIB).iloc[0]
    # compute alone would fit an L4 (24 GB): only the memory rule stands in the way
    assert stats["util_p95"] * 119.5 / 121 <= Settings().target_utilization
    assert stats["util_known_share"] >= 0.9
    recs = recommend(rows, hours, history.currency)
    catalog = load_catalog()
    for rec in recs:
        assert is_safe(rec), rec
        assert rec.type != "downsize-model" or catalog.get(rec.target_gpu_model).memory_bytes >= peak
        if rec.target_gpu_model and rec.type != "idle":
            assert catalog.get(rec.target_gpu_model).memory_bytes >= 40 * GIB  # never a 24 GB card
        if rec.type == "mig":
            raise AssertionError("L20 has no MIG")
