"""Ledger rows in columns: how attributed seconds become rows, and how parts of a row add up.

A ledger row is one minute of one device for one pod version, or for nobody
(``docs/ledger.md``; the columns are declared in :mod:`recommenders.ledger_schema`). Here
rows are NumPy columns that name their device, pod version and device attributes by the
ids the engine gives them (:class:`agent.accounting.engine.Names`), so a row's parts from different
batches, or from timelines rebuilt in between, still add up to one row. The sinks turn
ids into names when they write.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from agent.accounting.attribution import Allocations, ServingCounts
from recommenders.ledger_schema import COUNTED, MAXED, SUMS

SUMMED = (*SUMS, "samples")
# where the device and pod columns of a row come from: the attribute of SlotInfo or PodInfo
SLOT_ATTR = {"parent_uuid": "parent_uuid", "mig_profile": "mig_profile", "gpu_model": "model",
             "gpu_memory_total_bytes": "memory_total_bytes", "instance_type": "instance_type", "region": "region",
             "zone": "zone", "capacity_type": "capacity_type", "price_source": "price_source",
             "gpu_hourly_price": "gpu_hourly_price"}
POD_ATTR = {"pod_uid": "uid", "namespace": "namespace", "pod": "name", "team": "team",
            "workload_class": "workload_class", "workload_kind": "workload_kind", "workload_name": "workload_name"}


@dataclass
class Rows:
    """Ledger rows (or parts of rows) in columns.

    ``device``, ``holder`` and ``slot`` are the engine's ids of the device, the pod version
    (-1: unallocated) and the device's attributes in effect (model, labels, price);
    ``since`` is when those attributes took effect: a row spanning a change takes the
    latest. ``values`` holds every summed, maxed and counted column by its ledger name.
    """

    minute: np.ndarray  # int64, start of the minute
    device: np.ndarray  # int64
    holder: np.ndarray  # int64
    slot: np.ndarray  # int64
    since: np.ndarray  # float64
    values: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.minute)

    def take(self, index: np.ndarray) -> "Rows":
        """The rows at ``index`` (positions or a mask)."""
        return Rows(self.minute[index], self.device[index], self.holder[index], self.slot[index],
                    self.since[index], {k: v[index] for k, v in self.values.items()})


@dataclass(frozen=True)
class SlotIds:
    """For each slot of a timeline, and each of its pods, the engine's ids (see :class:`Rows`)."""

    device: np.ndarray
    slot: np.ndarray
    since: np.ndarray
    pod: np.ndarray

    def holders(self, holder: np.ndarray) -> np.ndarray:
        return np.where(holder >= 0, self.pod[np.maximum(holder, 0)] if len(self.pod) else -1, -1)


def allocation_rows(allocs: Allocations, ids: SlotIds) -> Rows:
    """One row part per allocation: its seconds split into allocated or unallocated, its
    cost into used, idle and unallocated money (``docs/cost-model.md``); its energy, energy
    cost and carbon stay whole on the row, allocated or not (``docs/energy.md``)."""
    allocated = allocs.holder >= 0
    seconds = allocs.gpu_seconds
    with np.errstate(invalid="ignore", divide="ignore"):
        idle_share = np.where(seconds > 0, (seconds - allocs.used - allocs.util_unknown) / seconds, 0.0)
    n = len(allocs)
    values = {
        "allocated_gpu_seconds": np.where(allocated, seconds, 0.0),
        "unallocated_gpu_seconds": np.where(allocated, 0.0, seconds),
        "used_gpu_seconds": allocs.used, "util_unknown_gpu_seconds": allocs.util_unknown,
        "active_gpu_seconds": allocs.active,
        "cost": np.where(allocated, allocs.cost, 0.0),
        "idle_cost": np.where(allocated, allocs.cost * idle_share, 0.0),
        "unallocated_cost": np.where(allocated, 0.0, allocs.cost),
        "samples": allocs.samples,
        "memory_used_max_bytes": allocs.mem, "util_peak": allocs.util / 100.0,
        "energy_joules": allocs.energy, "energy_cost": allocs.energy_cost, "carbon_grams": allocs.carbon,
        **{k: np.full(n, np.nan) for k in COUNTED},
    }
    return Rows(allocs.minute, ids.device[allocs.slot], ids.holders(allocs.holder), ids.slot[allocs.slot],
                ids.since[allocs.slot], values)


def serving_rows(placed: ServingCounts, ids: SlotIds) -> Rows:
    """Row parts holding serving counts and nothing else (no GPU-seconds, no cost, no
    sample), so that they add their counts to the pod's row of the minute."""
    n = len(placed)
    zeros = np.zeros(n)
    values: dict[str, np.ndarray] = {k: zeros for k in SUMS}
    values["samples"] = np.zeros(n, np.int64)
    values.update({k: np.full(n, np.nan) for k in MAXED})
    values.update({k: placed.counts[k] for k in COUNTED})
    return Rows(placed.minute, ids.device[placed.slot], ids.holders(placed.holder), ids.slot[placed.slot],
                ids.since[placed.slot], values)


def empty() -> Rows:
    i, f = np.empty(0, np.int64), np.empty(0, np.float64)
    return Rows(i, i, i, i, f, {k: (i if k == "samples" else f) for k in (*SUMMED, *MAXED, *COUNTED)})


def concat(parts: list[Rows]) -> Rows:
    if not parts:
        return empty()
    if len(parts) == 1:
        return parts[0]
    return Rows(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("minute", "device", "holder", "slot", "since")),
                {k: np.concatenate([p.values[k] for p in parts]) for k in parts[0].values})


def reduce(rows: Rows) -> Rows:
    """One row per (minute, device, holder), in order of minute, device id and holder id.

    Sums add up in the order the parts come (a stable sort), so the same parts in the same
    order give the same bits however they were batched (energy and carbon are NaN when any
    part's is); memory and utilisation take the highest known value, serving counts add
    where known; the device attributes are those of the part whose ``since`` is latest (the
    last such part on a tie).

    The parts of samples add up among themselves, and the parts that bring no sample
    (serving counts, a MIG parent's energy for its slices) among themselves, before the
    two are added: NumPy adds more than eight numbers pairwise, so zeros among a row's
    sample parts would change the last bit of its seconds and cost, and the agent (which
    adds a cycle at a time) and replay would disagree. One sort does both: by row, then
    samples before the rest.
    """
    n = len(rows)
    if n == 0:
        return rows
    n_holders = int(rows.holder.max()) + 2
    pair = rows.device * n_holders + (rows.holder + 1)
    n_pairs = (int(rows.device.max()) + 1) * n_holders
    key = (rows.minute - int(rows.minute.min())) // 60 * n_pairs + pair
    extra = rows.values["samples"] == 0
    mixed = bool(extra.any()) and not bool(extra.all())
    order = np.lexsort((extra, key)) if mixed else np.argsort(key, kind="stable")
    sorted_key = key[order]
    new_row = np.r_[True, sorted_key[1:] != sorted_key[:-1]]
    starts = np.flatnonzero(new_row)
    first = order[starts]
    if len(starts) == n:  # one part per row (samples a minute apart): nothing to add up
        return rows.take(order)
    if mixed:  # add each kind of part apart, then each row's one or two sums
        sorted_extra = extra[order]
        segments = np.flatnonzero(new_row | np.r_[True, sorted_extra[1:] != sorted_extra[:-1]])
        partial = _add_up({k: v[order] for k, v in rows.values.items()}, segments)
        values = _add_up(partial, np.flatnonzero(new_row[segments]))
    else:
        values = _add_up({k: v[order] for k, v in rows.values.items()}, starts)
    since = rows.since[order]
    latest = np.maximum.reduceat(since, starts)
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    at_latest = np.where(since == latest[group], np.arange(n), -1)
    pick = order[np.maximum.reduceat(at_latest, starts)]
    return Rows(rows.minute[first], rows.device[first], rows.holder[first], rows.slot[pick], rows.since[pick],
                values)


def _add_up(values: dict[str, np.ndarray], starts: np.ndarray) -> dict[str, np.ndarray]:
    """Each run of ``values`` (runs begin at ``starts``) as one: sums, maxima, known counts."""
    out: dict[str, np.ndarray] = {}
    for k in SUMMED:
        out[k] = np.add.reduceat(values[k], starts)
    for k in MAXED:
        out[k] = np.fmax.reduceat(values[k], starts)  # NaN only where all are
    for k in COUNTED:
        v = values[k]
        counted = ~np.isnan(v)
        if not counted.any():  # no server counted anything in these parts (the usual case)
            out[k] = np.full(len(starts), np.nan)
            continue
        known = np.add.reduceat(counted.astype(np.int64), starts) > 0
        out[k] = np.where(known, np.add.reduceat(np.nan_to_num(v), starts), np.nan)
    return out
