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

A commitment binds for years, so it must know how sure it is: the look-back is whole
hours (:func:`lookback`: no partial first or last hour counted as low usage), each pool
says how many days of history back it, and a term is recommended only with the days of
history its caller asks for (``min_history_days``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
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
    eligible: bool = True  # the pool has the history this term needs


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
    history_days: float = 0.0  # from the pool's first hour with capacity to the end of the look-back
    reason: str | None = None  # why no term is recommended although one would save (not enough history)
    assumes: tuple[str, ...] = ()  # the recommendations the after-right-sizing figure assumes applied

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


def lookback(first_minute: float, end: float, days: float) -> tuple[float, float]:
    """The look-back ``[start, end)`` in whole hours: ending at the last complete hour of the
    ledger (``end`` is one minute past its last minute), starting ``days`` earlier or at the
    ledger's first complete hour, whichever is later. A partial hour at either edge would
    read as low usage and lower the optimum commitment."""
    last = math.floor(end / 3600) * 3600
    first = math.ceil(first_minute / 3600) * 3600
    return float(max(last - days * 86400, first)), float(last)


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


@dataclass(frozen=True)
class NodeGpus:
    """The physical GPUs of each node (MIG slices count as their parent), by node code."""

    node: np.ndarray  # per row, its node's code (int32)
    per_node: np.ndarray  # per node code, its physical GPUs

    def of(self, rows: np.ndarray) -> np.ndarray:
        return self.per_node[self.node[rows]]


def gpus_per_node(rows: pd.DataFrame) -> NodeGpus:
    """Per node, the physical GPUs seen on it (MIG slices count as their parent)."""
    node, _ = column_codes(rows["node"])
    dev, dev_values = column_codes(rows["device_uuid"])
    par, par_values = column_codes(rows["parent_uuid"])
    names = pd.Index(pd.unique(np.concatenate([dev_values[1:], par_values[1:]]).astype(object)))
    dev_map = np.concatenate([[-1], names.get_indexer(dev_values[1:])])
    par_map = np.concatenate([[-1], names.get_indexer(par_values[1:])])
    size = len(names) + 1
    n_nodes = int(node.max()) + 1
    pairs = np.zeros(n_nodes * size, bool)
    for lo in range(0, len(node), CHUNK):  # in chunks: a few full-length int64 temporaries would be 100s of MB
        hi = lo + CHUNK
        physical = np.where(par[lo:hi] > 0, par_map[par[lo:hi]], dev_map[dev[lo:hi]]) + 1
        pairs[node[lo:hi].astype(np.int64) * size + physical] = True
    per_node = pairs.reshape(n_nodes, size).sum(axis=1).astype(np.float64)
    return NodeGpus(node, per_node)


CHUNK = 1 << 21  # rows per pass where a computation over the ledger would otherwise copy whole columns


def hourly_usage(rows: pd.DataFrame, mask: np.ndarray, kind: str, start_hour: int, hours: int,
                 n_gpus: NodeGpus, freed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(capacity units per hour, needed units per hour, on-demand price per unit-hour) of the masked rows.

    Node units are node-equivalents (a node present for half an hour counts 0.5); GPU
    units are physical GPUs. ``freed`` is, per row, the share of its allocated seconds
    right-sizing would give back. The rows are read in chunks, so a pool of ten million
    rows costs a few chunk-sized temporaries, not copies of whole columns.
    """
    columns = {c: rows[c].to_numpy(np.float64) for c in ("allocated_gpu_seconds", "unallocated_gpu_seconds",
                                                          "gpu_hourly_price")}
    minute = rows["minute"].to_numpy(np.int64)
    usage = np.zeros(hours)
    needed = np.zeros(hours)
    priced = cap_total = 0.0
    for lo in range(0, len(mask), CHUNK):
        idx = lo + np.flatnonzero(mask[lo:lo + CHUNK])
        if not len(idx):
            continue
        alloc = columns["allocated_gpu_seconds"][idx]
        cap = alloc + columns["unallocated_gpu_seconds"][idx]
        if freed is not None:
            alloc = alloc * (1.0 - freed[idx])
        gpus = n_gpus.of(idx) if kind == "node" else 1.0
        hour = minute[idx] // 3600 - start_hour
        keep = (hour >= 0) & (hour < hours)
        usage += np.bincount(hour[keep], weights=(cap / (3600.0 * gpus))[keep] if kind == "node"
                             else cap[keep] / 3600.0, minlength=hours)[:hours]
        needed += np.bincount(hour[keep], weights=(alloc / (3600.0 * gpus))[keep] if kind == "node"
                              else alloc[keep] / 3600.0, minlength=hours)[:hours]
        priced += float(np.dot(columns["gpu_hourly_price"][idx] * gpus, cap))
        cap_total += float(cap.sum())
    p = priced / cap_total if cap_total > 0 else 0.0
    return usage, needed, p


def commitment_plan(
    rows: pd.DataFrame, prices: Sequence[PoolPrices], start: float, end: float,
    freed: np.ndarray | None = None, spot_hourly: Mapping[tuple, float] | None = None,
    min_history_days: Mapping[int, float] | None = None, freed_by: np.ndarray | None = None,
    freed_labels: Sequence[str] = (),
) -> list[PoolResult]:
    """One result per pool in the ledger rows of the look-back ``[start, end)`` (whole hours).

    Pools are node pools (instance type × region) for every on-demand instance type in
    the ledger, and GPU pools (GPU model × region) for every ``gpu`` entry of
    ``prices``. Node pools with no commitment price are listed with their usage only.
    ``spot_hourly`` maps (instance_type, region) to a known spot price per node-hour
    (region None: any region); spot rows in the ledger give one too.
    ``min_history_days`` maps a term in years to the days of pool history it needs
    (missing: none); ``freed_by`` gives, per row, the index into ``freed_labels`` of the
    recommendation that frees it (-1: none), so a pool names what its after-right-sizing
    figure assumes.
    """
    start_hour = int(math.ceil(start / 3600))  # whole hours only (see lookback)
    hours = int(end // 3600) - start_hour
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

    need_days = dict(min_history_days or {})

    def pool(kind: str, mask: np.ndarray, options: tuple[Option, ...], itype, model, region) -> PoolResult:
        usage, needed, p = hourly_usage(rows, mask, kind, start_hour, hours, n_gpus, freed)
        present = np.flatnonzero(usage > 0)
        history = (hours - int(present[0])) / 24.0 if len(present) else 0.0
        evaluated = tuple(sorted(
            (replace(r, eligible=history >= need_days.get(o.term_years, 0.0) - 1e-9)
             for o in options for r in (evaluate(usage, o, p),)),
            key=lambda r: (-r.eligible, -r.monthly_savings)))
        saving = [r for r in evaluated if r.monthly_savings > 0]
        best = next((r for r in saving if r.eligible), None)
        reason = None
        if best is None and saving:
            wanted = min(need_days.get(r.option.term_years, 0.0) for r in saving)
            reason = (f"not enough history ({history:.1f} days; the options that would save need "
                      f"{wanted:g} days or more)")
        runner_up = [r for r in evaluated if r is not best and r.eligible]
        beats = (runner_up[0].option.label if runner_up else "on-demand only") if best else ""
        after = evaluate(needed, best.option, p) if best is not None else None
        assumes: tuple[str, ...] = ()
        if freed_by is not None and after is not None:
            ids = np.unique(freed_by[mask & (freed > 0)])
            assumes = tuple(freed_labels[i] for i in ids if i >= 0)
        alloc = alloc_all[mask]
        share = float(alloc[training[mask]].sum() / alloc.sum()) if alloc.sum() > 0 else 0.0
        spot = spot_prices.get((itype, region), spot_prices.get((itype, None))) if kind == "node" else None
        note = None
        if spot is not None and share >= 0.5 and spot < p:
            scale = HOURS_PER_MONTH / hours
            spot_month = spot * float(needed.sum()) * scale
            on_demand = p * float(needed.sum()) * scale
            committed = after.monthly_after if after and after.k > 0 else None
            if spot_month < min(on_demand, committed if committed is not None else math.inf):
                against = f"on demand {on_demand:,.0f}/month"
                if committed is not None:
                    against += f", with the best commitment ({best.option.label}, k={after.k}) {committed:,.0f}/month"
                note = (f"mostly training ({share:.0%}): on spot at {spot:.2f}/h the capacity still needed after "
                        f"right-sizing would cost {spot_month:,.0f}/month, against {against}; spot needs "
                        f"checkpointing and tolerance of interruptions")
        return PoolResult(
            kind=kind, instance_type=itype, gpu_model=model, region=region, hours=hours, on_demand_hourly=p,
            usage_mean=float(usage.mean()), usage_min=float(usage.min()), usage_max=float(usage.max()),
            needed_mean=float(needed.mean()), options=evaluated, best=best, beats=beats, after_rightsizing=after,
            training_share=share, spot_hourly=spot, spot_note=note, usage=tuple(float(x) for x in usage),
            history_days=history, reason=reason, assumes=assumes,
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
