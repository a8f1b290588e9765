"""The cost model: every observed GPU-second goes to exactly one pod or to nobody.

For each sample of device ``d`` covering ``dt`` seconds (``docs/cost-model.md``):

* its capacity is ``dt x weight`` physical-GPU seconds (a MIG slice weighs ``g/G``,
  a MIG parent only its uninstantiated remainder);
* no holder: all of it is unallocated; one holder: all of it is that pod's, and
  ``util/100`` of it is used; several holders (time-slicing, MPS): pod ``i`` gets the
  share ``u_i / sum(u)`` of its processes' utilisation, or ``1/n`` without it;
* cost is those seconds times the physical GPU's price per second;
* energy is the sample's board power times its interval, split like its seconds (a MIG
  parent's board energy by the slices' compute slices, its remainder unallocated), and
  energy cost and carbon are that energy times the node's PUE and its price or grams per
  kWh (``docs/energy.md``); unknown power makes them NaN, never 0.

The function is pure and vectorised: it takes samples in columns and a
:class:`~agent.accounting.timeline.Timeline`, and returns allocations in columns. Replay calls it
once on millions of samples; the agent calls it on each cycle's handful.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from agent.accounting.timeline import POD_KEY, Timeline
from collectors.errors import InputError
from collectors.pricing.energy import JOULES_PER_KWH
from collectors.samples import SampleColumns, ServingColumns

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
    util: np.ndarray  # the sample's utilisation, percent (NaN where unknown or unallocated)
    energy: np.ndarray  # joules of board energy (NaN where the power was not reported)
    energy_cost: np.ndarray  # energy x PUE x price per kWh (NaN: no power or no price)
    carbon: np.ndarray  # grams CO2e: energy x PUE x grams per kWh (NaN: no power or no intensity)
    samples: np.ndarray  # int64: 1 for a sample's part, 0 for a MIG parent's energy given to a slice

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
    joules, cost_per_j, carbon_per_j = _energy(samples, timeline, slot)
    own = timeline.energy_weight[slot]
    energy = np.where(own > 0, joules * own, 0.0)  # a slice's energy comes from its parent's sample
    to_cost = timeline.energy_to_cost[slot]

    is_shared = timeline.n_holders[slot] > 1
    single = np.flatnonzero(~is_shared)
    holder = timeline.holder[slot[single]]
    allocated = holder >= 0
    s_dt, s_util, s_known = dt[single], util[single], known[single]
    used = np.where(allocated & s_known, s_dt * np.where(s_known, s_util, 0.0) / 100.0, 0.0)
    s_energy = energy[single]
    s_energy_cost = s_energy * cost_per_j[single]
    parts = [Allocations(
        minute=minute[single], slot=slot[single], holder=holder, gpu_seconds=s_dt, used=used,
        util_unknown=np.where(allocated & ~s_known, s_dt, 0.0),
        active=np.where(allocated & s_known & (np.nan_to_num(s_util) > 0), s_dt, 0.0),
        cost=_with_energy(s_dt * price[single], s_energy_cost, to_cost[single]), mem=samples.mem[single],
        util=np.where(allocated & s_known, s_util, np.nan),
        energy=s_energy, energy_cost=s_energy_cost, carbon=s_energy * carbon_per_j[single],
        samples=np.ones(len(single), np.int64),
    )]
    shared = np.flatnonzero(is_shared)
    origin = single  # the sample of each part
    if len(shared):
        parts.append(_split_shared(shared, samples, timeline, slot, dt, price, minute, energy, cost_per_j,
                                   carbon_per_j, to_cost))
        # in the samples' order, so that a ledger row's parts always add up in the same order
        origin = np.concatenate([single, np.repeat(shared, timeline.n_holders[slot[shared]])])
        order = np.argsort(origin, kind="stable")
        origin = origin[order]
        joined = _concat(parts)
        parts = [Allocations(**{k: getattr(joined, k)[order] for k in Allocations.__dataclass_fields__})]
    if len(timeline.child_slots):
        parents = np.flatnonzero(timeline.child_offsets[slot + 1] > timeline.child_offsets[slot])
        if len(parents):
            energy_parts, parent_of = _slices_energy(parents, timeline, slot, minute, joules, cost_per_j,
                                                     carbon_per_j)
            return _after_their_samples(parts[0], origin, energy_parts, parent_of)
    return parts[0]


def _after_their_samples(base: Allocations, origin: np.ndarray, extra: Allocations,
                         extra_origin: np.ndarray) -> Allocations:
    """``base`` (parts in the order of their samples, ``origin``) with ``extra`` parts each
    placed after the parts of its own sample: the order depends on the samples alone, not
    on how they were batched, so a row's parts add up to the same bits either way (NumPy
    adds more than eight numbers pairwise, so the order of even zeros matters)."""
    at_base = np.arange(len(origin)) + np.searchsorted(extra_origin, origin, side="left")
    at_extra = np.arange(len(extra_origin)) + np.searchsorted(origin, extra_origin, side="right")
    out = {}
    for k in Allocations.__dataclass_fields__:
        a, b = getattr(base, k), getattr(extra, k)
        joined = np.empty(len(a) + len(b), a.dtype)
        joined[at_base] = a
        joined[at_extra] = b
        out[k] = joined
    return Allocations(**out)


def _energy(samples: SampleColumns, timeline: Timeline, slot: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per sample: its board energy in joules (NaN: power not reported), and what a joule
    of it costs and emits on its node (PUE x price, or grams, per kWh; NaN: unknown).
    The kWh price is the one of the UTC hour holding the sample's midpoint."""
    joules = samples.power * samples.interval
    hour = (np.floor((samples.ts - samples.interval / 2) / 3600.0) % 24).astype(np.int64)
    facility = timeline.pue[slot] / JOULES_PER_KWH
    return joules, timeline.tariffs[timeline.tariff[slot], hour] * facility, timeline.g_per_kwh[slot] * facility


def _with_energy(cost: np.ndarray, energy_cost: np.ndarray, to_cost: np.ndarray) -> np.ndarray:
    """Cost, plus the energy cost where the rate card adds it (``add_to_cost``) and it is known."""
    if not to_cost.any():
        return cost
    return cost + np.where(to_cost, np.nan_to_num(energy_cost), 0.0)


def _slices_energy(parents, timeline: Timeline, slot, minute, joules, cost_per_j,
                   carbon_per_j) -> tuple[Allocations, np.ndarray]:
    """(energy-only parts, the sample of each): each MIG parent sample's board energy for
    its slices, ``g/G`` to each slice, on the slice's holder (split evenly among several;
    unallocated when none). No seconds, no capacity cost, no sample: the slice's own
    samples bring those."""
    p_slots = slot[parents]
    n_children = timeline.child_offsets[p_slots + 1] - timeline.child_offsets[p_slots]
    pair_sample = np.repeat(parents, n_children)
    child = timeline.child_slots[_ranges(timeline.child_offsets[p_slots], n_children)]
    holders = timeline.n_holders[child]
    n_parts = np.maximum(holders, 1)
    part_sample = np.repeat(pair_sample, n_parts)
    part_child = np.repeat(child, n_parts)
    held = np.repeat(holders, n_parts) > 0
    starts = np.repeat(timeline.holder_offsets[child], n_parts)
    within = np.arange(len(part_child)) - np.repeat(np.cumsum(n_parts) - n_parts, n_parts)
    pod = np.where(held, timeline.holder_pods[np.minimum(starts + within, max(len(timeline.holder_pods) - 1, 0))]
                   if len(timeline.holder_pods) else -1, -1)
    energy = joules[part_sample] * timeline.weight[part_child] / np.repeat(n_parts, n_parts)
    energy_cost = energy * cost_per_j[part_sample]
    n = len(part_sample)
    zeros = np.zeros(n)
    return Allocations(
        minute=minute[part_sample], slot=part_child, holder=pod, gpu_seconds=zeros, used=zeros,
        util_unknown=zeros, active=zeros,
        cost=_with_energy(zeros, energy_cost, timeline.energy_to_cost[part_child]), mem=np.full(n, np.nan),
        util=np.full(n, np.nan), energy=energy, energy_cost=energy_cost, carbon=energy * carbon_per_j[part_sample],
        samples=np.zeros(n, np.int64),
    ), part_sample


def _slots(samples: SampleColumns, timeline: Timeline, where: Locate) -> np.ndarray:
    """The timeline slot of every sample; InputError naming the first that has none."""
    slot, described, found = _find_slots(samples, timeline)
    for ok, message, field in (
        (described, "sample comes before any devices record of its node (a devices record with ts "
                    "at or before the sample's must list the device)", "node"),
        (found, "sample's device is not in the devices record of its node in effect at the sample's ts", "uuid"),
    ):
        if not ok.all():
            file, line = where(int(np.flatnonzero(~ok)[0]))
            raise InputError(message, file=file, line=line, field=field)
    return slot


def locate_slots(samples: SampleColumns, timeline: Timeline) -> tuple[np.ndarray, np.ndarray]:
    """(slot, ok) per sample, without raising: the live agent drops (and counts) the
    samples that have no slot, since a device can be sampled a moment before its
    devices record arrives. ``slot`` is meaningless where ``ok`` is False."""
    slot, _, found = _find_slots(samples, timeline)
    return slot, found


def _find_slots(samples: SampleColumns, timeline: Timeline) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(slot, described, found) per sample: its node's epoch at ``ts``, then its device.
    ``described``: the epoch lists devices; ``found``: this device among them."""
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
    keys = epoch * timeline.n_uuids + samples.uuid
    pos = np.minimum(np.searchsorted(timeline.slot_keys, keys), max(len(timeline.slot_keys) - 1, 0))
    found = (timeline.slot_keys[pos] == keys) if len(timeline.slot_keys) else np.zeros(n, bool)
    found &= described
    found &= samples.uuid < timeline.n_uuids  # a device named after the timeline was built is in none of its epochs
    slot = timeline.slot_of_key[pos] if len(timeline.slot_keys) else np.zeros(n, np.int64)
    return slot, described, found


def _split_shared(rows, samples, timeline, slot, dt, price, minute, energy, cost_per_j, carbon_per_j,
                  to_cost) -> Allocations:
    """Rows for samples of devices held by several pods, split by process utilisation.

    Each (sample, holder) pair gets the share ``u_i / sum(u)``, where ``u_i`` sums the
    utilisation of the holder's processes in that sample, or ``1/n`` when the sample
    has no utilisation for any holder's process.
    """
    slots = slot[rows]
    counts = timeline.n_holders[slots]
    pair_row = np.repeat(np.arange(len(rows)), counts)  # index into rows, per pair
    pair_pod = timeline.holder_pods[_ranges(timeline.holder_offsets[slots], counts)]
    pair_uid = timeline.pod_uid_code[pair_pod]
    pair_sample = rows[pair_row]

    # Sum the processes' utilisation and memory per (sample, pod uid).
    lo = samples.proc_offsets[rows]
    n_procs = samples.proc_offsets[rows + 1] - lo
    procs = _ranges(lo, n_procs)
    proc_row = np.repeat(np.arange(len(rows)), n_procs)
    proc_pod = samples.proc_pod[procs].astype(np.int64)
    width = int(max(pair_uid.max(initial=-1), proc_pod.max(initial=-1))) + 2
    keys, inverse = np.unique(proc_row * width + proc_pod + 1, return_inverse=True)
    util_sum = np.bincount(inverse, weights=np.nan_to_num(samples.proc_util[procs]), minlength=len(keys))
    mem = samples.proc_mem[procs]
    mem_sum = np.bincount(inverse, weights=np.nan_to_num(mem), minlength=len(keys))
    mem_seen = np.bincount(inverse, weights=~np.isnan(mem), minlength=len(keys))

    pair_key = pair_row * width + pair_uid + 1
    pos = np.minimum(np.searchsorted(keys, pair_key), max(len(keys) - 1, 0))
    hit = (keys[pos] == pair_key) if len(keys) else np.zeros(len(pair_key), bool)
    u = np.where(hit, util_sum[pos] if len(keys) else 0.0, 0.0)
    u_total = np.bincount(pair_row, weights=u, minlength=len(rows))[pair_row]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(u_total > 0, u / u_total, 1.0 / counts[pair_row])

    seconds = dt[pair_sample] * share
    util = samples.util[pair_sample]
    known = ~np.isnan(util)
    pod_mem = np.where(hit & (mem_seen[pos] > 0), mem_sum[pos], samples.mem[pair_sample]) if len(keys) else samples.mem[pair_sample]
    pair_energy = energy[pair_sample] * share
    energy_cost = pair_energy * cost_per_j[pair_sample]
    return Allocations(
        minute=minute[pair_sample], slot=slots[pair_row], holder=pair_pod, gpu_seconds=seconds,
        used=np.where(known, seconds * np.nan_to_num(util) / 100.0, 0.0),
        util_unknown=np.where(known, 0.0, seconds),
        active=np.where(known & (np.nan_to_num(util) > 0), seconds, 0.0),
        cost=_with_energy(seconds * price[pair_sample], energy_cost, to_cost[pair_sample]), mem=pod_mem,
        util=np.where(known, util, np.nan), energy=pair_energy, energy_cost=energy_cost,
        carbon=pair_energy * carbon_per_j[pair_sample], samples=np.ones(len(pair_sample), np.int64),
    )


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + c)`` for each start and count, without a loop."""
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, np.int64)
    first = np.cumsum(counts) - counts
    return np.arange(total, dtype=np.int64) - np.repeat(first - starts, counts)


def _concat(parts: list[Allocations]) -> Allocations:
    if len(parts) == 1:
        return parts[0]
    return Allocations(**{
        k: np.concatenate([getattr(p, k) for p in parts]) for k in Allocations.__dataclass_fields__
    })


# --------------------------------------------------------------------------- serving counts


@dataclass
class ServingCounts:
    """Serving records placed on ledger rows: the minute holding the midpoint of each
    record's interval, the pod version listed at its ``ts``, and the slot of that pod's
    first device (``docs/unit-economics.md``, "The ledger")."""

    minute: np.ndarray
    slot: np.ndarray
    holder: np.ndarray
    counts: dict[str, np.ndarray]  # requests, input_tokens, output_tokens (NaN: not counted)

    def __len__(self) -> int:
        return len(self.minute)


COUNTS = ("requests", "input_tokens", "output_tokens")


def place_serving(cols: ServingColumns, timeline: Timeline) -> tuple[ServingCounts, np.ndarray]:
    """(the records that could be placed, a mask of which could): a record is placed when the
    pods record in effect on its node at its ``ts`` lists its pod on a listed device."""
    n = len(cols)
    epoch = np.full(n, -1, np.int64)
    for node in np.unique(cols.node):
        rows = np.flatnonzero(cols.node == node)
        starts = timeline.epoch_starts.get(int(node))
        if starts is None:
            continue
        pos = np.searchsorted(starts, cols.ts[rows], side="right") - 1
        epoch[rows] = np.where(pos >= 0, timeline.epoch_base[int(node)] + pos, -1)
    keys = timeline.pod_slot_keys
    key = epoch * POD_KEY + cols.pod.astype(np.int64)
    pos = np.minimum(np.searchsorted(keys, key), max(len(keys) - 1, 0))
    ok = (epoch >= 0) & (keys[pos] == key) if len(keys) else np.zeros(n, bool)
    minute = (np.floor((cols.ts - cols.interval / 2) / MINUTE) * MINUTE).astype(np.int64)
    return ServingCounts(minute[ok], timeline.pod_slot_slot[pos[ok]], timeline.pod_slot_holder[pos[ok]],
                         {k: getattr(cols, k)[ok] for k in COUNTS}), ok


def serving_error(pod_uid: str, node: str, file: str, line: int) -> InputError:
    """The input error of a serving record that names a pod its node does not list at its time."""
    return InputError(f"serving record of pod {pod_uid!r}, which no pods record of node {node!r} in effect at "
                      f"the record's ts lists on a device of the node's devices record",
                      file=file, line=line, field="pod_uid")
