"""Commitments: the exact optimum against brute force, hand-worked pools, and the rate card section."""

from __future__ import annotations

import numpy as np
import pytest

from collectors.errors import InputError
from collectors.pricing.ratecard import load_rate_card, load_snapshot
from recommenders.commitments import Option, PoolPrices, commitment_plan, evaluate, optimal_k
from tests.recommenders.test_report_rows import T0, frame, gpu_minutes


def brute_force(usage, c, p):
    """Every k from 0 to max(usage) + 2, cost summed hour by hour."""
    best = None
    for k in range(int(np.ceil(max(usage))) + 3):
        cost = sum(k * c + max(0.0, u - k) * p for u in usage)
        if best is None or cost < best[1] - 1e-9:
            best = (k, cost)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_optimal_k_equals_brute_force_on_random_series(seed):
    rng = np.random.default_rng(seed)
    hours = int(rng.integers(1, 200))
    if seed % 2:
        usage = rng.integers(0, 12, hours).astype(float)  # whole nodes
    else:
        usage = rng.random(hours) * rng.uniform(0.5, 9)  # nodes present part of an hour
    p = float(rng.uniform(1, 50))
    c = p * float(rng.uniform(0.2, 1.1))
    k, cost = optimal_k(usage, c, p)
    bk, bcost = brute_force(list(usage), c, p)
    assert cost == pytest.approx(bcost, rel=1e-12, abs=1e-9)
    assert k == bk


def test_hand_worked_optimum():
    # 10 hours: 3 nodes for 6 hours, 1 node for 4. p = 10, c = 6 (break-even 60 %).
    # k=0: 22 node-hours × 10 = 220. k=1: 10×6 + 12×10 = 180. k=2: 20×6... 120 + 6×10 = 180? no:
    # above k=2 is 6 hours × 1 node = 60 → 180. k=3: 180 + 0 = 180. Ties go to the smallest k.
    usage = [3] * 6 + [1] * 4
    k, cost = optimal_k(usage, 6.0, 10.0)
    assert (k, cost) == (1, 180.0)
    # cheaper commitment (c = 5): k=1: 50 + 120 = 170, k=2: 100 + 60 = 160, k=3: 150 → 3
    assert optimal_k(usage, 5.0, 10.0) == (3, 150.0)
    # dearer than on demand: never commit
    assert optimal_k(usage, 11.0, 10.0) == (0, 220.0)


def test_evaluate_reports_the_documented_figures():
    usage = [3] * 6 + [1] * 4
    r = evaluate(np.array(usage, float), Option("reserved-instance", 1, "no-upfront", 5.0), 10.0)
    assert r.k == 3 and r.hourly_commitment == 15.0
    scale = 730 / 10
    assert r.monthly_before == pytest.approx(220 * scale)
    assert r.monthly_after == pytest.approx(150 * scale)
    assert r.savings_pct == pytest.approx(70 / 220)
    assert r.utilization == pytest.approx(22 / 30)  # 22 node-hours used of 30 committed
    assert r.coverage == pytest.approx(1.0)
    assert r.break_even == pytest.approx(0.5)


def _node(node, hours, *, util=0.9, itype="p4d.24xlarge", cls="training", capacity="on-demand", gpus=8):
    rows = []
    for g in range(gpus):
        rows += gpu_minutes(pod=f"{node}-p{g}", device=f"{node}-gpu{g}", node=node, minutes=range(hours * 60),
                            util=util, instance_type=itype, workload_class=cls, capacity_type=capacity,
                            name=f"{node}-job", price=21.957642 / 8)
    return rows


@pytest.mark.slow
def test_pool_usage_counts_nodes_present_and_picks_the_best_option():
    # node-1 is up 10 hours, node-2 the first 4: usage 2,2,2,2,1,...,1 (10 hours)
    rows = frame(_node("node-1", 10), _node("node-2", 4))
    p = 21.957642
    prices = [PoolPrices("node", {"instance_type": "p4d.24xlarge"}, (
        Option("reserved-instance", 1, "no-upfront", 0.7 * p), Option("savings-plan", 3, "no-upfront", 0.45 * p)))]
    [pool] = commitment_plan(rows, prices, T0, T0 + 10 * 3600)
    assert pool.usage == pytest.approx((2, 2, 2, 2, 1, 1, 1, 1, 1, 1))
    assert pool.on_demand_hourly == pytest.approx(p)
    # 1y at 70 %: the second node is used 40 % of hours < 70 % → k=1; 3y at 45 %: 40 % < 45 % → k=1
    assert pool.best.option.term_years == 3 and pool.best.k == 1
    assert pool.beats == "1y reserved-instance no-upfront"
    before = 14 * p
    after = 10 * 0.45 * p + 4 * p
    assert pool.best.monthly_savings == pytest.approx((before - after) * 730 / 10)


def test_after_rightsizing_commits_to_what_is_needed():
    from recommenders.report import freed_shares
    from recommenders.rightsizing import recommend

    busy = _node("node-1", 10)
    idle = _node("node-2", 10, util=0.0, cls="inference")
    for r in idle:
        r["memory_used_max_bytes"] = 0.0
    rows = frame(busy, idle)
    recs = recommend(rows, 10.0, "USD", types=["idle"])
    assert [(r.type, r.workload_name) for r in recs] == [("idle", "node-2-job")]
    freed = freed_shares(rows, recs)
    prices = [PoolPrices("node", {"instance_type": "p4d.24xlarge"}, (Option("reserved-instance", 1, "no-upfront", 10.0),))]
    [pool] = commitment_plan(rows, prices, T0, T0 + 10 * 3600, freed=freed)
    assert pool.best.k == 2  # today both nodes are up every hour
    assert pool.after_rightsizing.k == 1  # the idle node's pods would be released
    assert pool.needed_mean == pytest.approx(1.0)


def test_spot_note_for_training_pools():
    rows = frame(_node("node-1", 10), _node("spot-1", 10, capacity="spot"))
    df = rows.copy()
    spot_mask = df["node"].astype(str) == "spot-1"
    df.loc[spot_mask, "gpu_hourly_price"] = 1.0  # spot at 8/h per node vs 21.96 on demand
    prices = [PoolPrices("node", {"instance_type": "p4d.24xlarge"}, (Option("reserved-instance", 1, "no-upfront", 15.0),))]
    [pool] = commitment_plan(df, prices, T0, T0 + 10 * 3600)
    assert pool.spot_hourly == pytest.approx(8.0)
    assert pool.usage == pytest.approx((1,) * 10)  # spot capacity is not committable
    assert pool.spot_note and "training" in pool.spot_note


def test_gpu_pools_use_gpus_as_units():
    rows = frame(*[gpu_minutes(pod=f"p{i}", device=f"g{i}", minutes=range(600 if i < 2 else 300),
                               model="NVIDIA L4", price=0.56, instance_type="g2-standard-24", region="us-central1")
                   for i in range(3)])
    prices = [PoolPrices("gpu", {"gpu_model": "NVIDIA L4"}, (Option("committed-use", 1, "no-upfront", 0.35),))]
    pools = commitment_plan(rows, prices, T0, T0 + 10 * 3600)
    gpu = [p for p in pools if p.kind == "gpu"][0]
    assert gpu.usage == pytest.approx((3,) * 5 + (2,) * 5)
    assert gpu.best.k == 2  # the third GPU is there half the time: 50 % < 0.35/0.56 = 62.5 %


def test_rate_card_commitments_parse(rates):
    card = load_rate_card(rates("""
currency: USD
default_gpu_hourly: 2
commitments:
  - match: {node.kubernetes.io/instance-type: p4d.24xlarge, topology.kubernetes.io/region: us-east-1}
    options:
      - {kind: reserved-instance, term_years: 1, payment: no-upfront, hourly: 14.5}
      - {kind: savings-plan, term_years: 3, payment: all-upfront, hourly: 9.1}
  - gpu_model: NVIDIA L4
    options: [{kind: committed-use, term_years: 3, payment: no-upfront, hourly: 0.25}]
"""))
    first, second = card.commitments
    assert first.match["node.kubernetes.io/instance-type"] == "p4d.24xlarge" and first.gpu_model is None
    assert [(o.kind, o.term_years, o.payment, o.hourly) for o in first.options] == [
        ("reserved-instance", 1, "no-upfront", 14.5), ("savings-plan", 3, "all-upfront", 9.1)]
    assert second.gpu_model == "NVIDIA L4" and second.match is None and second.options[0].source == "rate-card"


@pytest.mark.parametrize("body, words", [
    ("  - gpu_model: X\n    options: [{kind: reserved-instance, term_years: 2, payment: no-upfront, hourly: 1}]",
     "rates.yaml:5: field 'commitments[0].options[0].term_years': expected 1 or 3, got 2"),
    ("  - gpu_model: X\n    options: [{kind: lease, term_years: 1, payment: no-upfront, hourly: 1}]",
     "field 'commitments[0].options[0].kind'"),
    ("  - gpu_model: X\n    match: {a: b}\n    options: []", "exactly one of match"),
    ("  - gpu_model: X\n    options: [{kind: savings-plan, term_years: 1, payment: no-upfront, hourly: -1}]",
     "field 'commitments[0].options[0].hourly': expected a number of at least 0, got -1"),
])
def test_rate_card_commitment_errors_name_the_field(rates, body, words):
    with pytest.raises(InputError) as err:
        load_rate_card(rates("currency: USD\ndefault_gpu_hourly: 2\ncommitments:\n" + body + "\n"))
    assert words in str(err.value)


def test_snapshot_commitments_are_sourced_and_below_on_demand():
    load_snapshot.cache_clear()
    card = load_snapshot()
    assert card.commitments
    on_demand = {tuple(sorted(r.match.items())): r.hourly for r in card.nodes}
    for c in card.commitments:
        assert c.match is not None and c.options
        od = on_demand[tuple(sorted(c.match.items()))]
        by_payment = {}
        for o in c.options:
            assert o.source == card.name and 0 < o.hourly < od
            by_payment.setdefault(o.payment, {})[o.term_years] = o.hourly
        for terms in by_payment.values():
            if 1 in terms and 3 in terms:
                assert terms[3] < terms[1]


# --------------------------------------------------------------------------- how sure: look-back and history


def brute_force_hours(first_minute: int, end: int, days: float) -> list[int]:
    """The look-back by its definition: the last days × 24 whole hours [h, h + 1h) that lie
    entirely inside the ledger's minutes [first_minute, end)."""
    whole = [h for h in range(first_minute // 3600 * 3600, end + 1, 3600) if h >= first_minute and h + 3600 <= end]
    return whole[-int(days * 24):] if whole else []


@pytest.mark.parametrize("seed", range(30))
def test_lookback_is_whole_hours_against_brute_force(seed):
    from recommenders.commitments import lookback

    rng = np.random.default_rng(seed)
    first = T0 + int(rng.integers(0, 200)) * 60  # may start mid-hour
    end = first + int(rng.integers(1, 60 * 24 * 5)) * 60  # may end mid-hour; one minute past the last minute
    days = float(rng.choice([0.5, 1, 2, 30]))
    start, stop = lookback(first, end, days)
    hours = brute_force_hours(first, end, days)
    if hours:
        assert (start, stop) == (hours[0], hours[-1] + 3600)
    else:
        assert stop <= start


def test_usage_has_no_phantom_or_partial_hours():
    # a node up from 00:30 to 05:30 (the ledger's edges): hours 01–04 are whole, 00 and 05 are not
    from recommenders.commitments import lookback

    rows = frame(_node("node-1", 0)[:0] + [r for r in _node("node-1", 6) if 30 <= (r["minute"] - T0) // 60 < 330])
    first = T0 + 30 * 60
    end = T0 + 330 * 60
    start, stop = lookback(first, end, 30)
    assert (start, stop) == (T0 + 3600, T0 + 5 * 3600)
    p = 21.957642
    prices = [PoolPrices("node", {"instance_type": "p4d.24xlarge"}, (Option("reserved-instance", 1, "no-upfront", 0.5 * p),))]
    [pool] = commitment_plan(rows, prices, start, stop)
    assert pool.usage == pytest.approx((1, 1, 1, 1)) and pool.hours == 4
    # the old edges (a started and a finished hour) would have read 0.5 usage twice and moved k
    [ragged] = commitment_plan(rows, prices, T0, T0 + 6 * 3600)
    assert ragged.hours == 6 and ragged.usage == pytest.approx((0.5, 1, 1, 1, 1, 0.5))


def test_a_term_needs_its_days_of_history():
    rows = frame(_node("node-1", 10))
    p = 21.957642
    options = (Option("reserved-instance", 1, "no-upfront", 0.7 * p), Option("savings-plan", 3, "no-upfront", 0.45 * p))
    prices = [PoolPrices("node", {"instance_type": "p4d.24xlarge"}, options)]
    [pool] = commitment_plan(rows, prices, T0, T0 + 10 * 3600, min_history_days={1: 14, 3: 30})
    assert pool.best is None and pool.history_days == pytest.approx(10 / 24)
    assert pool.reason == "not enough history (0.4 days; the options that would save need 14 days or more)"
    assert [o.eligible for o in pool.options] == [False, False] and pool.options[0].monthly_savings > 0
    # enough for the 1-year term only: that one is recommended although the 3-year one would save more
    [pool] = commitment_plan(rows, prices, T0, T0 + 10 * 3600, min_history_days={1: 0.4, 3: 30})
    assert pool.best.option.term_years == 1 and pool.beats == "on-demand only"


def test_after_rightsizing_names_what_it_assumes_and_spot_is_compared_with_both():
    from recommenders.report import freed_by_recommendation
    from recommenders.rightsizing import recommend

    busy = _node("node-1", 10)
    idle = _node("node-2", 10, util=0.0, cls="inference")
    for r in idle:
        r["memory_used_max_bytes"] = 0.0
    spot = _node("spot-1", 10, capacity="spot")
    rows = frame(busy, idle, spot)
    rows.loc[rows["node"].astype(str) == "spot-1", "gpu_hourly_price"] = 1.0  # 8/h per node
    recs = recommend(rows, 10.0, "USD", types=["idle"])
    freed = freed_by_recommendation(rows, recs)
    assert freed.labels == ("idle ns/node-2-job",)
    prices = [PoolPrices("node", {"instance_type": "p4d.24xlarge"}, (Option("reserved-instance", 1, "no-upfront", 15.0),))]
    [pool] = commitment_plan(rows, prices, T0, T0 + 10 * 3600, freed=freed.share, freed_by=freed.by,
                             freed_labels=freed.labels)
    assert pool.assumes == ("idle ns/node-2-job",)
    # needed after right-sizing: node-1 for the 10 hours, × 730/10 for a month: on spot at 8/h 5,840;
    # on demand at 21.957642/h 16,029; with the 1-year commitment (k=1 at 15/h) 10,950
    note = pool.spot_note
    assert "on spot at 8.00/h the capacity still needed after right-sizing would cost 5,840/month" in note
    assert ("against on demand 16,029/month, with the best commitment (1y reserved-instance no-upfront, k=1) "
            "10,950/month") in note
