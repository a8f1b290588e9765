"""Reserved capacity: how many nodes (or GPUs) to commit to, per pool, and what it saves.

A commitment of ``k`` units at effective hourly rate ``c`` is paid every hour whether
used or not; usage above ``k`` is paid on demand at ``p``. Over hourly usage ``u_h`` the
cost is ``Σ_h [k·c + max(0, u_h − k)·p]``, a convex function of ``k``; :func:`optimal_k`
evaluates it at every integer from 0 to ``ceil(max u)`` in one pass over the sorted
usage (prefix sums), so the answer is the exact optimum, not a quantile heuristic.

Usage is capacity, not allocation: a committed node costs the same whether pods use it
or not, so ``u_h`` counts the nodes (node-equivalents, for nodes present part of an
hour) or GPUs present each hour. Spot and already-reserved capacity are left out: a
commitment would not cover them. The *needed* usage, after right-sizing, counts only
the GPU-time pods would still hold once the recommendations are applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from recommenders.grouping import column_codes, dense_ids, group_ids
from recommenders.rightsizing import HOURS_PER_MONTH

EXCLUDED_CAPACITY = ("spot", "reserved")
MATCH_COLUMNS = ("instance_type", "region", "zone", "capacity_type", "gpu_model", "node")


@dataclass(frozen=True)
class Option:
    """A commitment option as plain data (the rate card's ``CommitmentOption``)."""

    kind: str
    term_years: int
    payment: str
    hourly: float
    source: str = ""

    @property
    def label(self) -> str:
        return f"{self.term_years}y {self.kind} {self.payment}"


@dataclass(frozen=True)
class PoolPrices:
    """Commitment options for the nodes (``kind='node'``) or GPUs (``kind='gpu'``) matching ``match``.

    ``match`` maps ledger columns (``instance_type``, ``region``, ``gpu_model``, ...) to values.
    """

    kind: str
    match: Mapping[str, str]
    options: tuple[Option, ...]


@dataclass(frozen=True)
class OptionResult:
    option: Option
    k: int
    hourly_commitment: float
    monthly_before: float
    monthly_after: float
    monthly_savings: float
    savings_pct: float
    utilization: float  # of the committed units, the share of hours they were used
    coverage: float  # of the usage, the share the commitment covered
    break_even: float  # c / p: the utilisation above which one committed unit pays


@dataclass(frozen=True)
class PoolResult:
    kind: str  # node | gpu
    instance_type: str | None
    gpu_model: str | None
    region: str | None
    hours: int
    on_demand_hourly: float
    usage_mean: float
    usage_min: float
    usage_max: float
    needed_mean: float
    options: tuple[OptionResult, ...]
    best: OptionResult | None
    beats: str
    after_rightsizing: OptionResult | None
    training_share: float
    spot_hourly: float | None
    spot_note: str | None
    usage: tuple[float, ...] = field(repr=False, default=())

    @property
    def label(self) -> str:
        what = self.instance_type if self.kind == "node" else self.gpu_model
        return f"{what} ({self.region or 'any region'})"


# --------------------------------------------------------------------------- the optimum


def commitment_costs(usage: np.ndarray, c: float, p: float) -> np.ndarray:
    """Total cost for every integer k from 0 to ceil(max usage): ``k·c·H + p·Σ max(0, u−k)``."""
    u = np.sort(np.asarray(usage, dtype=np.float64))
    hours = len(u)
    top = int(math.ceil(u[-1])) if hours else 0
    ks = np.arange(top + 1, dtype=np.float64)
    prefix = np.concatenate(([0.0], np.cumsum(u)))
    idx = np.searchsorted(u, ks, side="right")
    above_n = hours - idx
    above_sum = prefix[-1] - prefix[idx]
    return ks * c * hours + p * (above_sum - ks * above_n)


def optimal_k(usage: np.ndarray, c: float, p: float) -> tuple[int, float]:
    """The integer commitment with the least total cost (the smallest such k), and that cost.

    The cost is linear in ``k`` between two usages, so the least cost over all integers
    from 0 to ceil(max usage) is found among 0 and the integers next to each usage: at
    most two per hour are evaluated, however large the usage.
    """
    u = np.sort(np.asarray(usage, dtype=np.float64))
    hours = len(u)
    ks = np.unique(np.concatenate(([0.0], np.floor(u), np.ceil(u))))
    ks = ks[ks >= 0]
    prefix = np.concatenate(([0.0], np.cumsum(u)))
    idx = np.searchsorted(u, ks, side="right")
    costs = ks * c * hours + p * (prefix[-1] - prefix[idx] - ks * (hours - idx))
    i = int(np.argmin(costs))
    return int(ks[i]), float(costs[i])


def evaluate(usage: np.ndarray, option: Option, p: float) -> OptionResult:
    """The optimal commitment for one option, with the figures the report shows."""
    u = np.asarray(usage, dtype=np.float64)
    hours = len(u)
    k, after = optimal_k(u, option.hourly, p)
    before = p * float(u.sum())
    scale = HOURS_PER_MONTH / hours if hours else 0.0
    covered = float(np.minimum(u, k).sum())
    return OptionResult(
        option=option, k=k, hourly_commitment=k * option.hourly,
        monthly_before=before * scale, monthly_after=after * scale,
        monthly_savings=(before - after) * scale,
        savings_pct=(before - after) / before if before > 0 else 0.0,
        utilization=covered / (k * hours) if k and hours else 0.0,
        coverage=covered / float(u.sum()) if u.sum() > 0 else 0.0,
        break_even=option.hourly / p if p > 0 else math.inf,
    )


# --------------------------------------------------------------------------- pools


def equals(rows: pd.DataFrame, column: str, value) -> np.ndarray:
    """Rows whose categorical ``column`` equals ``value`` (None: is missing), on codes."""
    codes, values = column_codes(rows[column])
    hits = np.array([v == value if value is not None else v is None for v in values], dtype=bool)
    return hits[codes]


def gpus_per_node(rows: pd.DataFrame) -> np.ndarray:
    """Per row, the physical GPUs of its node (MIG slices count as their parent)."""
    node, _ = column_codes(rows["node"])
    dev, dev_values = column_codes(rows["device_uuid"])
    par, par_values = column_codes(rows["parent_uuid"])
    names = pd.Index(pd.unique(np.concatenate([dev_values[1:], par_values[1:]]).astype(object)))
    dev_map = np.concatenate([[-1], names.get_indexer(dev_values[1:])])
    par_map = np.concatenate([[-1], names.get_indexer(par_values[1:])])
    physical = np.where(par > 0, par_map[par], dev_map[dev])
    size = int(physical.max()) + 2
    ids, keys = dense_ids(node * size + physical + 1, (int(node.max()) + 1) * size)
    count = np.bincount(keys // size, minlength=int(node.max()) + 1)
    return count[node].astype(np.float64)


def hourly_usage(rows: pd.DataFrame, mask: np.ndarray, kind: str, start_hour: int, hours: int,
                 n_gpus: np.ndarray, freed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(capacity units per hour, needed units per hour, on-demand price per unit-hour) of the masked rows.

    Node units are node-equivalents (a node present for half an hour counts 0.5); GPU
    units are physical GPUs. ``freed`` is, per row, the share of its allocated seconds
    right-sizing would give back.
    """
    alloc = rows["allocated_gpu_seconds"].to_numpy(np.float64)[mask]
    cap = alloc + rows["unallocated_gpu_seconds"].to_numpy(np.float64)[mask]
    if freed is not None:
        alloc = alloc * (1.0 - freed[mask])
    hour = rows["minute"].to_numpy(np.int64)[mask] // 3600 - start_hour
    keep = (hour >= 0) & (hour < hours)
    gpus = n_gpus[mask] if kind == "node" else np.ones(len(cap))
    weight = 1.0 / (3600.0 * gpus)
    usage = np.bincount(hour[keep], weights=(cap * weight)[keep], minlength=hours)[:hours]
    needed = np.bincount(hour[keep], weights=(alloc * weight)[keep], minlength=hours)[:hours]
    price_unit = rows["gpu_hourly_price"].to_numpy(np.float64)[mask] * gpus
    p = float(np.average(price_unit, weights=cap)) if cap.sum() > 0 else 0.0
    return usage, needed, p


def commitment_plan(
    rows: pd.DataFrame, prices: Sequence[PoolPrices], start: float, end: float,
    freed: np.ndarray | None = None, spot_hourly: Mapping[tuple, float] | None = None,
) -> list[PoolResult]:
    """One result per pool in the ledger rows of the look-back ``[start, end)``.

    Pools are node pools (instance type × region) for every on-demand instance type in
    the ledger, and GPU pools (GPU model × region) for every ``gpu`` entry of
    ``prices``. Node pools with no commitment price are listed with their usage only.
    ``spot_hourly`` maps (instance_type, region) to a known spot price per node-hour
    (region None: any region); spot rows in the ledger give one too.
    """
    start_hour = int(start // 3600)
    hours = int(math.ceil(end / 3600)) - start_hour
    if len(rows) == 0 or hours <= 0:
        return []
    if freed is None:
        freed = np.zeros(len(rows))
    n_gpus = gpus_per_node(rows)
    cap_codes, cap_values = column_codes(rows["capacity_type"])
    excluded = np.array([v in EXCLUDED_CAPACITY for v in cap_values])[cap_codes]
    is_spot = np.array([v == "spot" for v in cap_values])[cap_codes]
    committable = ~excluded
    training = equals(rows, "workload_class", "training")
    alloc_all = rows["allocated_gpu_seconds"].to_numpy(np.float64)
    spot_prices = dict(spot_hourly or {})
    if is_spot.any():
        ids, keys = group_ids(rows, ["instance_type", "region"], is_spot)
        where = np.flatnonzero(is_spot)
        for j, (itype, region) in enumerate(zip(keys["instance_type"], keys["region"])):
            mask = np.zeros(len(rows), bool)
            mask[where[ids == j]] = True
            _, _, p_spot = hourly_usage(rows, mask, "node", start_hour, hours, n_gpus)
            spot_prices.setdefault((itype, region), p_spot)

    def pool(kind: str, mask: np.ndarray, options: tuple[Option, ...], itype, model, region) -> PoolResult:
        usage, needed, p = hourly_usage(rows, mask, kind, start_hour, hours, n_gpus, freed)
        evaluated = tuple(sorted((evaluate(usage, o, p) for o in options), key=lambda r: -r.monthly_savings))
        best = evaluated[0] if evaluated and evaluated[0].monthly_savings > 0 else None
        beats = (evaluated[1].option.label if len(evaluated) > 1 else "on-demand only") if best else ""
        after = evaluate(needed, best.option, p) if best is not None else None
        alloc = alloc_all[mask]
        share = float(alloc[training[mask]].sum() / alloc.sum()) if alloc.sum() > 0 else 0.0
        spot = spot_prices.get((itype, region), spot_prices.get((itype, None))) if kind == "node" else None
        note = None
        if spot is not None and share >= 0.5 and spot < p:
            spot_month = spot * float(needed.sum()) * HOURS_PER_MONTH / hours
            committed = after.monthly_after if after else p * float(needed.sum()) * HOURS_PER_MONTH / hours
            if spot_month < committed:
                note = (f"mostly training ({share:.0%}): on spot at {spot:.2f}/h the needed capacity would cost "
                        f"{spot_month:,.0f}/month against {committed:,.0f} committed; checkpoint and tolerate interruptions")
        return PoolResult(
            kind=kind, instance_type=itype, gpu_model=model, region=region, hours=hours, on_demand_hourly=p,
            usage_mean=float(usage.mean()), usage_min=float(usage.min()), usage_max=float(usage.max()),
            needed_mean=float(needed.mean()), options=evaluated, best=best, beats=beats, after_rightsizing=after,
            training_share=share, spot_hourly=spot, spot_note=note, usage=tuple(float(x) for x in usage),
        )

    results: list[PoolResult] = []
    with_type = committable & ~equals(rows, "instance_type", None)
    if with_type.any():
        ids, keys = group_ids(rows, ["instance_type", "region"], with_type)
        where = np.flatnonzero(with_type)
        for j, (itype, region) in enumerate(zip(keys["instance_type"], keys["region"])):
            mask = np.zeros(len(rows), bool)
            mask[where[ids == j]] = True
            # the first entry that matches wins, as with the rate card's `nodes`: a
            # region-specific entry before a region-less one for the same type
            options = next((pp.options for pp in prices if pp.kind == "node"
                            and _matches(pp.match, instance_type=itype, region=region)), ())
            results.append(pool("node", mask, options, itype, None, region))
    for pp in prices:
        if pp.kind != "gpu":
            continue
        selected = committable.copy()
        for column, value in pp.match.items():
            selected &= equals(rows, column, value)
        if not selected.any():
            continue
        ids, keys = group_ids(rows, ["region"], selected)
        where = np.flatnonzero(selected)
        for j, region in enumerate(keys["region"]):
            mask = np.zeros(len(rows), bool)
            mask[where[ids == j]] = True
            results.append(pool("gpu", mask, pp.options, None, pp.match.get("gpu_model"), region))
    results.sort(key=lambda r: (-(r.best.monthly_savings if r.best else 0.0), r.label))
    return results


def _matches(match: Mapping[str, str], **values) -> bool:
    """A node pool matches when every match key it can be judged on agrees."""
    for column, value in match.items():
        if column in values and values[column] != value:
            return False
    return True
