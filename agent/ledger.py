"""The ledger: allocations summed to one row per (minute, node, device, pod or unallocated).

The ledger is the history every later step reads (the weekly report, the
recommenders), so its columns are a contract: ``docs/ledger.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from agent.attribution import Allocations
from agent.timeline import Timeline
from collectors.atomicfile import atomic_path

if TYPE_CHECKING:
    import pyarrow as pa

LEDGER_VERSION = "1.2"  # 1.1 added util_peak, 1.2 the serving counts; readers take 1 too (docs/ledger.md)


@dataclass
class Ledger:
    """Minute rows in columns. ``holder`` -1 marks unallocated capacity."""

    minute: np.ndarray
    slot: np.ndarray  # the row's latest slot (its device's price and labels)
    holder: np.ndarray
    allocated: np.ndarray
    unallocated: np.ndarray
    used: np.ndarray
    util_unknown: np.ndarray
    active: np.ndarray
    cost: np.ndarray
    idle_cost: np.ndarray
    unallocated_cost: np.ndarray
    mem_max: np.ndarray
    util_peak: np.ndarray  # the highest sample utilisation of the row, 0-1 (NaN where unknown)
    samples: np.ndarray
    # what the pod's model server counted in the minute (NaN where nothing was counted)
    requests: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.minute)


SUMMED = ("allocated", "unallocated", "used", "util_unknown", "active", "cost", "idle_cost",
          "unallocated_cost", "samples")
MAXED = ("mem_max", "util_peak")  # the row's highest sample value, NaN when no sample had one
COUNTED = ("requests", "input_tokens", "output_tokens")  # summed where known, NaN when nothing was counted
INTEGER = ("minute", "slot", "holder", "samples")


def rollup(allocs: Allocations, timeline: Timeline) -> Ledger:
    """Sum allocations per (minute, device, holder); memory is the minute's maximum."""
    allocated = allocs.holder >= 0
    seconds = allocs.gpu_seconds
    with np.errstate(invalid="ignore", divide="ignore"):
        idle_share = np.where(seconds > 0, (seconds - allocs.used - allocs.util_unknown) / seconds, 0.0)
    rows = Ledger(
        minute=allocs.minute, slot=allocs.slot, holder=allocs.holder,
        allocated=np.where(allocated, seconds, 0.0),
        unallocated=np.where(allocated, 0.0, seconds),
        used=allocs.used, util_unknown=allocs.util_unknown, active=allocs.active,
        cost=np.where(allocated, allocs.cost, 0.0),
        idle_cost=np.where(allocated, allocs.cost * idle_share, 0.0),
        unallocated_cost=np.where(allocated, 0.0, allocs.cost),
        mem_max=allocs.mem, util_peak=allocs.util / 100.0, samples=np.ones(len(allocs), np.int64),
        **{k: np.full(len(allocs), np.nan) for k in COUNTED},
    )
    return _reduce(rows, timeline)


def serving_rows(minute: np.ndarray, slot: np.ndarray, holder: np.ndarray, counts: dict[str, np.ndarray],
                 timeline: Timeline) -> Ledger:
    """Ledger rows holding serving counts and nothing else (no GPU-seconds, no cost, no sample),
    so that merged with the GPU rows they add their counts to the pod's row of the minute."""
    n = len(minute)
    zeros = np.zeros(n)
    return _reduce(Ledger(
        minute=minute, slot=slot, holder=holder, allocated=zeros, unallocated=zeros, used=zeros,
        util_unknown=zeros, active=zeros, cost=zeros, idle_cost=zeros, unallocated_cost=zeros,
        mem_max=np.full(n, np.nan), util_peak=np.full(n, np.nan), samples=np.zeros(n, np.int64),
        **{k: counts[k] for k in COUNTED},
    ), timeline)


def merge(parts: list[Ledger], timeline: Timeline) -> Ledger:
    """One ledger from the ledgers of several batches (a minute may span batches)."""
    if not parts:
        return _reduce(Ledger(**{k: np.empty(0, np.int64 if k in INTEGER else np.float64)
                                 for k in Ledger.__dataclass_fields__}), timeline)
    if len(parts) == 1:
        return parts[0]
    joined = Ledger(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in Ledger.__dataclass_fields__})
    return _reduce(joined, timeline)


def _reduce(rows: Ledger, timeline: Timeline) -> Ledger:
    """Group rows by (minute, device, holder): sums add up, memory and slot take the max."""
    n = len(rows)
    if n == 0:
        return rows
    n_holders = len(timeline.pods) + 1
    n_pairs = (int(timeline.device_id.max()) + 1) * n_holders
    pair = timeline.device_id[rows.slot] * n_holders + (rows.holder + 1)
    key = (rows.minute - int(rows.minute.min())) // 60 * n_pairs + pair
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    first = order[starts]
    # fmax: NaN only where all are NaN
    maxima = {k: np.fmax.reduceat(getattr(rows, k)[order], starts) for k in MAXED}
    out = {k: np.add.reduceat(getattr(rows, k)[order], starts) for k in SUMMED}
    for k in COUNTED:
        values = getattr(rows, k)[order]
        known = np.add.reduceat((~np.isnan(values)).astype(np.int64), starts) > 0
        out[k] = np.where(known, np.add.reduceat(np.nan_to_num(values), starts), np.nan)
    return Ledger(
        minute=rows.minute[first], slot=np.maximum.reduceat(rows.slot[order], starts),
        holder=rows.holder[first], **maxima, **out,
    )


def ledger_table(ledger: Ledger, timeline: Timeline) -> "pa.Table":
    """The ledger as an Arrow table with the documented columns, sorted by minute.

    Arrow is imported here, not at the top: the agent sums ledger rows on every node
    and writes them without Arrow (agent/rollups.py), so it never pays for loading it.
    """
    import pyarrow as pa

    order = np.lexsort((ledger.holder, timeline.device_id[ledger.slot], ledger.minute))
    slot = ledger.slot[order]
    holder = ledger.holder[order]
    slots = timeline.slots
    pods = timeline.pods

    def from_slot(attr: str) -> list:
        values = [getattr(s, attr) for s in slots]
        return [values[i] for i in slot]

    def from_pod(attr: str) -> list:
        values = [getattr(p, attr) for p in pods]
        return [values[h] if h >= 0 else None for h in holder]

    def col(values: np.ndarray) -> np.ndarray:
        return values[order]

    mem = col(ledger.mem_max)
    peak = col(ledger.util_peak)
    columns = {
        "minute": pa.array(col(ledger.minute), pa.timestamp("s", tz="UTC")),
        "node": pa.array(from_slot("node"), pa.string()),
        "device_uuid": pa.array(from_slot("uuid"), pa.string()),
        "parent_uuid": pa.array(from_slot("parent_uuid"), pa.string()),
        "mig_profile": pa.array(from_slot("mig_profile"), pa.string()),
        "gpu_model": pa.array(from_slot("model"), pa.string()),
        "gpu_memory_total_bytes": pa.array(from_slot("memory_total_bytes"), pa.float64()),
        "pod_uid": pa.array(from_pod("uid"), pa.string()),
        "namespace": pa.array(from_pod("namespace"), pa.string()),
        "pod": pa.array(from_pod("name"), pa.string()),
        "team": pa.array(from_pod("team"), pa.string()),
        "workload_class": pa.array(from_pod("workload_class"), pa.string()),
        "workload_kind": pa.array(from_pod("workload_kind"), pa.string()),
        "workload_name": pa.array(from_pod("workload_name"), pa.string()),
        "instance_type": pa.array(from_slot("instance_type"), pa.string()),
        "region": pa.array(from_slot("region"), pa.string()),
        "zone": pa.array(from_slot("zone"), pa.string()),
        "capacity_type": pa.array(from_slot("capacity_type"), pa.string()),
        "price_source": pa.array(from_slot("price_source"), pa.string()),
        "gpu_hourly_price": pa.array(from_slot("gpu_hourly_price"), pa.float64()),
        "allocated_gpu_seconds": pa.array(col(ledger.allocated)),
        "unallocated_gpu_seconds": pa.array(col(ledger.unallocated)),
        "used_gpu_seconds": pa.array(col(ledger.used)),
        "util_unknown_gpu_seconds": pa.array(col(ledger.util_unknown)),
        "active_gpu_seconds": pa.array(col(ledger.active)),
        "memory_used_max_bytes": pa.array(mem, pa.float64(), mask=np.isnan(mem)),
        "util_peak": pa.array(peak, pa.float64(), mask=np.isnan(peak)),
        "cost": pa.array(col(ledger.cost)),
        "idle_cost": pa.array(col(ledger.idle_cost)),
        "unallocated_cost": pa.array(col(ledger.unallocated_cost)),
        "samples": pa.array(col(ledger.samples), pa.int64()),
        **{k: _nullable(col(getattr(ledger, k))) for k in COUNTED},
    }
    metadata = {"gpuledger.ledger_version": LEDGER_VERSION, "gpuledger.currency": timeline.currency}
    return pa.table(columns).replace_schema_metadata(metadata)


def _nullable(values: np.ndarray) -> "pa.Array":
    import pyarrow as pa

    return pa.array(values, pa.float64(), mask=np.isnan(values))


def write_parquet(table: "pa.Table", path: str | Path) -> None:
    """Write atomically: a reader sees the old file or the whole new one, never a part."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
