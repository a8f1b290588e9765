"""The ledger: allocations summed to one row per (minute, node, device, pod or unallocated).

The ledger is the history every later step reads (the weekly report, the
recommenders), so its columns are a contract: ``docs/ledger.md``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from agent.attribution import Allocations
from agent.timeline import Timeline

LEDGER_VERSION = "1"


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
    samples: np.ndarray

    def __len__(self) -> int:
        return len(self.minute)


def rollup(allocs: Allocations, timeline: Timeline) -> Ledger:
    """Sum allocations per (minute, device, holder); memory is the minute's maximum."""
    n_holders = len(timeline.pods) + 1
    device = timeline.device_id[allocs.slot]
    pair = device * n_holders + (allocs.holder + 1)
    n_pairs = (int(timeline.device_id.max()) + 1 if len(timeline.device_id) else 1) * n_holders
    if len(allocs):
        base = int(allocs.minute.min())
        key = (allocs.minute - base) // 60 * n_pairs + pair
    else:
        key = np.empty(0, np.int64)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]]) if len(key) else np.empty(0, np.int64)

    def total(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values[order], starts) if len(starts) else np.empty(0)

    allocated = allocs.holder >= 0
    seconds = allocs.gpu_seconds
    with np.errstate(invalid="ignore", divide="ignore"):
        idle_share = np.where(seconds > 0, (seconds - allocs.used - allocs.util_unknown) / seconds, 0.0)
    mem = np.where(np.isnan(allocs.mem), -1.0, allocs.mem)
    mem_max = np.maximum.reduceat(mem[order], starts) if len(starts) else np.empty(0)
    first = order[starts] if len(starts) else np.empty(0, np.int64)
    return Ledger(
        minute=allocs.minute[first],
        slot=np.maximum.reduceat(allocs.slot[order], starts) if len(starts) else np.empty(0, np.int64),
        holder=allocs.holder[first],
        allocated=total(np.where(allocated, seconds, 0.0)),
        unallocated=total(np.where(allocated, 0.0, seconds)),
        used=total(allocs.used),
        util_unknown=total(allocs.util_unknown),
        active=total(allocs.active),
        cost=total(np.where(allocated, allocs.cost, 0.0)),
        idle_cost=total(np.where(allocated, allocs.cost * idle_share, 0.0)),
        unallocated_cost=total(np.where(allocated, 0.0, allocs.cost)),
        mem_max=np.where(mem_max < 0, np.nan, mem_max),
        samples=np.diff(np.append(starts, len(key))) if len(starts) else np.empty(0, np.int64),
    )


def ledger_table(ledger: Ledger, timeline: Timeline) -> pa.Table:
    """The ledger as an Arrow table with the documented columns, sorted by minute."""
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
        "cost": pa.array(col(ledger.cost)),
        "idle_cost": pa.array(col(ledger.idle_cost)),
        "unallocated_cost": pa.array(col(ledger.unallocated_cost)),
        "samples": pa.array(col(ledger.samples), pa.int64()),
    }
    metadata = {"gpuledger.ledger_version": LEDGER_VERSION, "gpuledger.currency": timeline.currency}
    return pa.table(columns).replace_schema_metadata(metadata)


def write_parquet(table: pa.Table, path: str | Path) -> None:
    """Write atomically: a reader sees the old file or the whole new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
