"""The cost model: every observed GPU-second goes to exactly one pod or to nobody.

For each sample of device ``d`` covering ``dt`` seconds (``docs/cost-model.md``):

* its capacity is ``dt x weight`` physical-GPU seconds (a MIG slice weighs ``g/G``,
  a MIG parent only its uninstantiated remainder);
* no holder: all of it is unallocated; one holder: all of it is that pod's, and
  ``util/100`` of it is used; several holders (time-slicing, MPS): pod ``i`` gets the
  share ``u_i / sum(u)`` of its processes' utilisation, or ``1/n`` without it;
* cost is those seconds times the physical GPU's price per second.

The function is pure and vectorised: it takes samples in columns and a
:class:`~agent.timeline.Timeline`, and returns allocations in columns. Replay calls it
once on millions of samples; the agent calls it on each cycle's handful.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from agent.timeline import Timeline
from collectors.errors import InputError
from collectors.samples import SampleColumns

MINUTE = 60.0


@dataclass
class Allocations:
    """One row per (sample, holder): the unit the ledger sums. ``holder`` -1 is unallocated."""

    minute: np.ndarray  # int64, start of the minute (Unix seconds) holding the sample's midpoint
    slot: np.ndarray  # int64 slot of the timeline
    holder: np.ndarray  # int64 pod index, -1 for unallocated capacity
    gpu_seconds: np.ndarray  # physical-GPU seconds of capacity
    used: np.ndarray  # seconds x utilisation (0 where unknown or unallocated)
    util_unknown: np.ndarray  # allocated seconds whose utilisation was not reported
    active: np.ndarray  # allocated seconds of samples with utilisation above 0
    cost: np.ndarray
    mem: np.ndarray  # bytes used (NaN where unknown)

    def __len__(self) -> int:
        return len(self.minute)


Locate = Callable[[int], tuple[str, int]]


def attribute(samples: SampleColumns, timeline: Timeline, where: Locate | None = None) -> Allocations:
    """Attribute every sample; InputError for a sample whose device was never described."""
    slot = _slots(samples, timeline, where or (lambda i: ("", int(samples.line[i]))))
    dt = samples.interval * timeline.weight[slot]
    price = timeline.price_per_s[slot]
    util = samples.util
    known = ~np.isnan(util)
    minute = (np.floor((samples.ts - samples.interval / 2) / MINUTE) * MINUTE).astype(np.int64)

    is_shared = timeline.n_holders[slot] > 1
    single = np.flatnonzero(~is_shared)
    holder = timeline.holder[slot[single]]
    allocated = holder >= 0
    s_dt, s_util, s_known = dt[single], util[single], known[single]
    used = np.where(allocated & s_known, s_dt * np.where(s_known, s_util, 0.0) / 100.0, 0.0)
    parts = [Allocations(
        minute=minute[single], slot=slot[single], holder=holder, gpu_seconds=s_dt, used=used,
        util_unknown=np.where(allocated & ~s_known, s_dt, 0.0),
        active=np.where(allocated & s_known & (np.nan_to_num(s_util) > 0), s_dt, 0.0),
        cost=s_dt * price[single], mem=samples.mem[single],
    )]
    shared = np.flatnonzero(is_shared)
    if len(shared):
        parts.append(_split_shared(shared, samples, timeline, slot, dt, price, minute))
    return _concat(parts)


def _slots(samples: SampleColumns, timeline: Timeline, where: Locate) -> np.ndarray:
    """The timeline slot of every sample: its node's epoch at ``ts``, then its device."""
    n = len(samples)
    epoch = np.full(n, -1, np.int64)
    order = np.argsort(samples.node, kind="stable")
    nodes, first = np.unique(samples.node[order], return_index=True)
    bounds = np.append(first, n)
    for k, node in enumerate(nodes):
        rows = order[bounds[k]:bounds[k + 1]]
        starts = timeline.epoch_starts.get(int(node))
        if starts is None:
            continue
        pos = np.searchsorted(starts, samples.ts[rows], side="right") - 1
        epoch[rows] = np.where(pos >= 0, timeline.epoch_base[int(node)] + pos, -1)
    described = epoch >= 0
    described[described] = timeline.epoch_has_devices[epoch[described]]
    if not described.all():
        i = int(np.flatnonzero(~described)[0])
        file, line = where(i)
        raise InputError(
            "sample comes before any devices record of its node (a devices record with ts "
            "at or before the sample's must list the device)", file=file, line=line, field="node",
        )
    keys = epoch * timeline.n_uuids + samples.uuid
    pos = np.minimum(np.searchsorted(timeline.slot_keys, keys), max(len(timeline.slot_keys) - 1, 0))
    found = (timeline.slot_keys[pos] == keys) if len(timeline.slot_keys) else np.zeros(n, bool)
    if not found.all():
        i = int(np.flatnonzero(~found)[0])
        file, line = where(i)
        raise InputError(
            "sample's device is not in the devices record of its node in effect at the "
            "sample's ts", file=file, line=line, field="uuid",
        )
    return timeline.slot_of_key[pos]


def _split_shared(rows, samples, timeline, slot, dt, price, minute) -> Allocations:
    """Rows for samples of devices held by several pods, split by process utilisation."""
    out: dict[str, list] = {k: [] for k in Allocations.__dataclass_fields__}
    offsets = samples.proc_offsets
    for i in rows:
        holders = timeline.shared[int(slot[i])]
        uids = timeline.pod_uid_code[holders]
        lo, hi = offsets[i], offsets[i + 1]
        p_pod, p_util, p_mem = samples.proc_pod[lo:hi], samples.proc_util[lo:hi], samples.proc_mem[lo:hi]
        u = np.array([np.nansum(p_util[p_pod == uid]) for uid in uids], np.float64)
        total = u.sum()
        shares = u / total if total > 0 else np.full(len(holders), 1.0 / len(holders))
        util = samples.util[i]
        seconds = dt[i] * shares
        known = not np.isnan(util)
        mem = [
            np.nansum(p_mem[p_pod == uid]) if np.any((p_pod == uid) & ~np.isnan(p_mem)) else samples.mem[i]
            for uid in uids
        ]
        out["minute"].append(np.full(len(holders), minute[i]))
        out["slot"].append(np.full(len(holders), slot[i]))
        out["holder"].append(holders)
        out["gpu_seconds"].append(seconds)
        out["used"].append(seconds * util / 100.0 if known else np.zeros(len(holders)))
        out["util_unknown"].append(np.zeros(len(holders)) if known else seconds)
        out["active"].append(seconds if known and util > 0 else np.zeros(len(holders)))
        out["cost"].append(seconds * price[i])
        out["mem"].append(np.array(mem, np.float64))
    return Allocations(**{k: np.concatenate(v) for k, v in out.items()})


def _concat(parts: list[Allocations]) -> Allocations:
    if len(parts) == 1:
        return parts[0]
    return Allocations(**{
        k: np.concatenate([getattr(p, k) for p in parts]) for k in Allocations.__dataclass_fields__
    })
