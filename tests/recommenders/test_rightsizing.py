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
from tests.recommenders.test_report_rows import GIB, T0, frame, gpu_minutes

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


@pytest.mark.slow
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


# --------------------------------------------------------------------------- replicas


def _fleet(n_pods: int, utils_of_hour, hours: int = 10, **kw) -> list[list[dict]]:
    """n pods of one Deployment, each on a GPU of its own, every pod at utils_of_hour(h) in hour h."""
    minutes = range(hours * 60)
    utils = [utils_of_hour(m // 60) for m in minutes]
    return [gpu_minutes(pod=f"p{i}", device=f"GPU-{i}", minutes=minutes, util=utils, mem_gib=30.0, **kw)
            for i in range(n_pods)]


def test_replicas_cover_the_p95_of_demand_at_the_target():
    # 4 pods each at 0.05 × (h + 1) in hour h: demand 0.2, 0.4, ..., 2.0 GPUs, 60 minutes each.
    # p95 of the 600 minutes: position 0.95 × 599 = 569.05, in the last hour's block → 2.0;
    # needed = ⌈2.0 / 0.8⌉ = 3 of 4; saving = cost × (1 − 3/4).
    rows = frame(*_fleet(4, lambda h: 0.05 * (h + 1)))
    r = only(recommend(rows, HOURS, "USD", types=["replicas"]), "replicas")
    cost = 4 * 600 * 60 * 2.7447 / 3600
    assert (r.target_replicas, r.replicas) == (3.0, 4.0)
    assert r.freed_share == pytest.approx(0.25)
    assert r.monthly_savings == pytest.approx(round(cost * 0.25 * 730 / HOURS, 2))
    # by hour: ⌈0.2(h+1)/0.8⌉ = 1, 1, 1, 1, 2, 2, 2, 2, 3, 3 → autoscale between 1 and 3
    assert (r.autoscale_min_replicas, r.autoscale_max_replicas) == (1, 3)
    assert "minReplicas: 1, maxReplicas: 3" in r.evidence
    # at 3 replicas nothing ran above 2.4 GPUs of work (80% of 3) or above 3
    assert r.saturated_minutes == 0 and "0 of 600 minutes (0.0%) would have run above 80%" in r.evidence
    assert r.target_memory_bytes == r.gpu_memory_bytes >= r.observed_max_memory_bytes  # each keeps its GPU


def test_replicas_at_another_percentile_counts_the_minutes_over():
    # p50: position 299.5 between 1.0 (hour 4) and 1.2 (hour 5) → 1.1; ⌈1.1 / 0.8⌉ = 2.
    # At 2 replicas, hours 8 and 9 (1.8 and 2.0 GPUs) ran above 1.6: 120 minutes; none above 2.0.
    rows = frame(*_fleet(4, lambda h: 0.05 * (h + 1)))
    r = only(recommend(rows, HOURS, "USD", Settings(demand_percentile=0.5), types=["replicas"]), "replicas")
    assert r.target_replicas == 2.0 and r.freed_share == pytest.approx(0.5)
    assert "120 of 600 minutes (20.0%) would have run above 80% and 0 (0.0%) above their capacity" in r.evidence


def test_replicas_size_on_peaks_not_means():
    # the same fleet, but every minute of pod p0 peaked at 1.0 in the last hour: demand there is
    # 1.0 + 3 × 0.5 = 2.5 → p95 = 2.5 → ⌈2.5 / 0.8⌉ = 4 = the fleet: nothing to give back
    pods = _fleet(4, lambda h: 0.05 * (h + 1))
    for row in pods[0]:
        row["util_peak"] = 1.0 if row["minute"] >= T0 + 540 * 60 else row["used_gpu_seconds"] / 60
    assert not recommend(frame(*pods), HOURS, "USD", types=["replicas"])


def test_no_replicas_for_one_pod_shared_gpus_or_mig():
    assert not recommend(frame(*_fleet(1, lambda h: 0.1)), HOURS, "USD", types=["replicas"])
    shared = [gpu_minutes(pod=f"p{i}", device="GPU-shared", minutes=MINUTES, util=0.1, mem_gib=5.0) for i in range(4)]
    for group in shared:  # four pods time-slicing one GPU: each holds a quarter of it
        for row in group:
            for k in ("allocated_gpu_seconds", "used_gpu_seconds", "active_gpu_seconds", "cost", "idle_cost"):
                row[k] /= 4
    assert not recommend(frame(*shared), HOURS, "USD", types=["replicas"])
    mig_ = [gpu_minutes(pod=f"p{i}", device=f"MIG-{i}", minutes=MINUTES, mig_profile="1g.5gb", parent="GPU-0",
                        mem_gib=2.0) for i in range(4)]
    assert not recommend(frame(*mig_), HOURS, "USD", types=["replicas"])


# --------------------------------------------------------------------------- schedule

WEEK_MINUTES = range(14 * 24 * 60)  # two weeks from T0, a Tuesday at 00:00 UTC


def _office(tz_shift_h: int = 0, blips: bool = True) -> list[dict]:
    """Busy (60%) Monday to Friday 09:00–17:00 (in a zone tz_shift_h hours ahead of UTC), idle
    otherwise but for a 3% blip in the first minute of every idle hour (a kernel polling)."""
    utils = []
    for m in WEEK_MINUTES:
        local_h = (m // 60 + tz_shift_h) % 24
        weekday = ((m // 60 + tz_shift_h) // 24 + 1) % 7  # T0 is a Tuesday: day 0 → 1 (Mon = 0)
        busy = weekday < 5 and 9 <= local_h < 17
        utils.append(0.6 if busy else (0.03 if blips and m % 60 == 0 else 0.0))
    return gpu_minutes(pod="nb-0", minutes=WEEK_MINUTES, util=utils, mem_gib=12.0, kind="Notebook", name="nb",
                       workload_class="interactive", namespace="notebooks")


def test_schedule_stops_the_hours_no_week_used():
    hours = 14 * 24.0
    r = only(recommend(frame(_office()), hours, "USD", types=["schedule"]), "schedule", "nb")
    # 40 busy hours of the 168; the 128 others, blips and all (1 minute in 60 < 5%), are stopped
    assert r.stop_hours == "Mon 00:00–09:00, Mon–Thu 17:00–09:00, Fri 17:00–24:00, Sat–Sun all day"
    assert r.freed_share == pytest.approx(128 / 168)
    cost = 14 * 24 * 2.7447
    assert r.monthly_savings == pytest.approx(round(cost * 128 / 168 * 730 / hours, 2))
    assert r.risk == "low" and "(UTC)" in r.evidence  # interactive


def test_schedule_reads_the_week_in_the_declared_time_zone():
    # office hours 09–17 in Berlin (UTC+1 in November and December) are 08–16 UTC
    rows = frame(_office(tz_shift_h=1))
    r = only(recommend(rows, 14 * 24.0, "USD", Settings(time_zone="Europe/Berlin"), types=["schedule"]),
             "schedule", "nb")
    assert r.stop_hours == "Mon 00:00–09:00, Mon–Thu 17:00–09:00, Fri 17:00–24:00, Sat–Sun all day"
    utc = only(recommend(rows, 14 * 24.0, "USD", types=["schedule"]), "schedule", "nb")
    assert utc.stop_hours == "Mon 00:00–08:00, Mon–Thu 16:00–08:00, Fri 16:00–24:00, Sat–Sun all day"


def test_schedule_needs_a_week_and_blocks_of_three_hours():
    six_days = [r for r in _office() if r["minute"] < T0 + 6 * 86400]
    assert not recommend(frame(six_days), 6 * 24.0, "USD", types=["schedule"])
    # a two-hour lunch break (12–14) in the office hours is not proposed: blocks are three hours or more
    rows = _office()
    for r in rows:
        h = (r["minute"] - T0) // 3600 % 24
        if 12 <= h < 14 and r["used_gpu_seconds"] > 30:
            r.update(used_gpu_seconds=0.0, active_gpu_seconds=0.0, idle_cost=r["cost"])
    r = only(recommend(frame(rows), 14 * 24.0, "USD", types=["schedule"]), "schedule", "nb")
    assert "12:00" not in r.stop_hours


# --------------------------------------------------------------------------- nothing hidden


def test_idle_pods_of_a_busy_workload_are_named():
    busy = [gpu_minutes(pod=f"web-{i}", device=f"GPU-{i}", minutes=MINUTES, util=0.5, mem_gib=20.0) for i in range(2)]
    idle_pod = gpu_minutes(pod="web-idle", device="GPU-9", minutes=MINUTES, util=0.0, mem_gib=18.0)
    r = only(recommend(frame(*busy, idle_pod), HOURS, "USD", types=["idle-pods"]), "idle-pods")
    assert r.pod_names == "web-idle" and "web-idle (idle 100%, 18.0 GiB)" in r.evidence
    assert r.freed_share == pytest.approx(1 / 3) and r.risk == "medium"  # it holds 18 GiB


def test_the_known_share_cutoff_is_a_setting_and_unjudged_workloads_are_listed():
    from recommenders.rightsizing import not_judged
    from recommenders.workloads import workload_stats

    # idle, but utilisation reported for only 80% of the time (every fifth minute unknown)
    unknown = [m % 5 == 0 for m in MINUTES]
    rows = frame(gpu_minutes(pod="p", minutes=MINUTES, util=0.0, mem_gib=0.0, unknown=unknown))
    assert only(recommend(rows, HOURS, "USD"), "idle").type == "idle"  # default 0.5: judged
    strict = Settings(min_util_known_share=0.9)
    assert recommend(rows, HOURS, "USD", strict) == []
    [listed] = not_judged(workload_stats(rows, HOURS, strict), [], strict)
    assert listed["workload_name"] == "app" and listed["reason"].startswith("utilisation unknown for 20%")
    # too little history is listed too, with the figures
    short = frame(gpu_minutes(pod="p", minutes=range(120), util=0.2, mem_gib=5.0))
    [listed] = not_judged(workload_stats(short, HOURS, Settings()), [], Settings())
    assert listed["reason"] == "too little history: 2.0 GPU-hours in the window (needs 6)"


# --------------------------------------------------------------------------- peaks and prices


def test_a_spiky_workload_is_judged_on_its_peaks():
    # mean 30% every minute (L4 would fit: 0.30 × 312/121 = 0.77), but every minute peaked at 95%
    spiky = frame(gpu_minutes(pod="p", minutes=MINUTES, util=0.30, mem_gib=10.0, peak=0.95))
    recs = recommend(spiky, HOURS, "USD", types=["downsize-model", "mig"])
    assert recs == []  # 0.95 × 312/121 = 2.45 on an L4; 0.95 × 7/g > 0.8 for every slice
    assert workload_stats(spiky, HOURS, Settings())["util_p95"].iloc[0] == pytest.approx(0.95)


def test_peaks_that_would_saturate_the_target_make_a_downsize_high_risk():
    # 588 minutes peak at 30%, 12 (2%) at 50%: p95 of peaks 30% → L4 (0.30 × 312/121 = 0.774);
    # 0.5 × 312/121 = 1.29 > 100% of an L4 in 12 of 600 minutes, above saturation_share (1%)
    peaks = [0.5 if m % 50 == 0 else 0.3 for m in MINUTES]
    rows = frame(gpu_minutes(pod="p", minutes=MINUTES, util=0.3, mem_gib=10.0, peak=peaks))
    r = only(recommend(rows, HOURS, "USD", types=["downsize-model"]), "downsize-model")
    assert r.target_gpu_model == "NVIDIA L4" and r.saturated_minutes == 12 and r.risk == "high"
    assert "saturate the NVIDIA L4 in 12 of 600 GPU-minutes (2.0%)" in r.evidence
    relaxed = only(recommend(rows, HOURS, "USD", Settings(saturation_share=0.05), types=["downsize-model"]),
                   "downsize-model")
    assert relaxed.risk != "high" and relaxed.saturated_minutes == 12


def test_a_default_price_is_low_confidence_and_never_a_reason_to_change_model():
    from recommenders.rightsizing import not_judged
    from recommenders.workloads import workload_stats

    # L20 has no catalog price: its current price is the ledger's, here the default 2.00
    l20 = dict(model="NVIDIA L20", mem_total_gib=44.7, price=2.0, price_source="default")
    rows = frame(*[gpu_minutes(pod=f"p{i}", device=f"GPU-{i}", minutes=MINUTES, util=0.1, mem_gib=10.0, **l20)
                   for i in range(4)])
    recs = recommend(rows, HOURS, "USD")
    assert recs and not [r for r in recs if r.type == "downsize-model"]
    for r in recs:
        assert r.confidence == "low" and r.current_price_source == "default"
        assert r.evidence.startswith("priced at the default 2.00/GPU-h (no rate card or snapshot price for NVIDIA L20)")
    # a lone L20 pod that uses its GPU fully: nothing to recommend, listed as priced at the default
    busy = frame(gpu_minutes(pod="q", minutes=MINUTES, util=0.9, mem_gib=40.0, **l20))
    stats = workload_stats(busy, HOURS, Settings())
    assert recommend(busy, HOURS, "USD") == []
    [listed] = not_judged(stats, [], Settings())
    assert "priced at the default 2.00/GPU-h" in listed["reason"]


def test_a_model_change_names_the_sources_of_both_prices():
    rows = frame(gpu_minutes(pod="p", minutes=MINUTES, util=0.30, mem_gib=10.0))
    r = only(recommend(rows, HOURS, "USD", types=["downsize-model"]), "downsize-model")
    assert (r.current_price_source, r.current_hourly_price) == ("gpu-catalog", 2.7447)
    assert (r.target_price_source, r.target_hourly_price) == ("gpu-catalog", 0.8048)


def test_replicas_also_carry_the_requests_when_servers_count_them():
    # 4 pods at 30%: 1.2 GPUs of work → ⌈1.2 / 0.8⌉ = 2 replicas by GPU. Their servers answer
    # 8 requests/s each (32 in all), and once one pod answered 12/s at 30% (its capacity at or
    # under the 80% target): ⌈32 / 12⌉ = 3 replicas by throughput; the larger, 3, stands.
    pods = _fleet(4, lambda h: 0.3)
    for i, rows in enumerate(pods):
        for row in rows:
            row["requests"] = 8 * 60.0
    pods[0][100]["requests"] = 12 * 60.0
    r = only(recommend(frame(*pods), HOURS, "USD", types=["replicas"]), "replicas")
    assert r.target_replicas == 3.0 and r.freed_share == pytest.approx(1 - 3 / 4)
    assert "By throughput: p95 32.00 requests/s, one replica carried up to 12.00/s at or under 80%, so 3" in r.evidence
    # without the counts, the GPU demand alone: 2
    assert only(recommend(frame(*_fleet(4, lambda h: 0.3)), HOURS, "USD", types=["replicas"]),
                "replicas").target_replicas == 2.0
