"""The agent's accounting core: each cycle's records in, attributed GPU-seconds out.

Replay attributes a whole trace at once. The agent receives a handful of records a
second, so :class:`Meter` keeps just enough of the past (the state records that can
still matter) to attribute each cycle's samples with the very functions replay uses:
:func:`~agent.timeline.build_timeline`, :func:`~agent.attribution.attribute` and
:func:`~agent.ledger.rollup`. Nothing here does I/O; the daemon feeds it and hands its
output to the exporter and the minute ledger.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from agent.attribution import MINUTE, attribute, locate_slots, place_serving
from agent.config import Config
from agent.ledger import COUNTED, rollup, serving_rows
from agent.timeline import PodInfo, SlotInfo, Timeline, build_timeline
from collectors.pricing.ratecard import Pricer
from collectors.records import Meta, Record, Sample, ServingRecord
from collectors.samples import OVERLAP_TOLERANCE_S, Interners, SampleColumns, ServingColumns

# Sums of a ledger row, in this order (the ledger's names, docs/ledger.md).
SUMS = ("allocated_gpu_seconds", "unallocated_gpu_seconds", "used_gpu_seconds",
        "util_unknown_gpu_seconds", "active_gpu_seconds", "cost", "idle_cost", "unallocated_cost")
_LEDGER_SUMS = ("allocated", "unallocated", "used", "util_unknown", "active", "cost", "idle_cost",
                "unallocated_cost")


@dataclass(frozen=True)
class RowKey:
    """A ledger row's identity: one minute of one device for one pod version (or nobody)."""

    minute: int
    node: str
    uuid: str
    pod: PodInfo | None


@dataclass
class Row:
    """One cycle's contribution to a ledger row."""

    key: RowKey
    slot: SlotInfo
    sums: tuple[float, ...]  # in the order of SUMS
    mem_max: float  # NaN when unknown
    util_peak: float  # 0-1, NaN when unknown
    samples: int
    counts: tuple[float, ...] = (math.nan,) * len(COUNTED)  # serving counts in COUNTED order, NaN: none


@dataclass(frozen=True)
class Reading:
    """The newest sample of a device, with who held it: what the device gauges show."""

    slot: SlotInfo
    ts: float
    util: float | None  # percent
    mem_used_bytes: float | None
    holder: PodInfo | None  # the only holder; None when unallocated or shared


@dataclass(frozen=True)
class Resume:
    """What a node's ledger files already hold (after a restart): every minute up to
    ``minutes_through``, and every sample up to ``samples_through`` (set when the agent
    stopped mid-minute and wrote that minute's part)."""

    minutes_through: int | None
    samples_through: float | None = None

    def holds(self, minute: int, ts: float) -> bool:
        return ((self.minutes_through is not None and minute <= self.minutes_through)
                or (self.samples_through is not None and ts <= self.samples_through))


@dataclass
class Cycle:
    """What one cycle attributed."""

    rows: list[Row] = field(default_factory=list)
    readings: list[Reading] = field(default_factory=list)
    samples: int = 0
    dropped_resumed: int = 0  # already in the ledger before a restart
    dropped_undescribed: int = 0  # no devices record (yet) lists the sample's device
    dropped_late: int = 0  # older than what the meter still remembers
    dropped_overlap: int = 0  # covers time an earlier sample of its device already covered
    serving: int = 0  # serving records placed on ledger rows
    dropped_serving: int = 0  # serving records of a pod the node's pods record does not list (yet)
    newest_ts: float | None = None


class Meter:
    """Attributes records cycle by cycle, exactly as replay would attribute them at once.

    ``horizon_s``: how far behind the newest sample a sample may arrive and still be
    attributed with the state records in effect at its time; older ones are dropped and
    counted. ``resume``: node -> what its ledger files already hold (after a restart);
    those samples are skipped so none is counted twice.
    """

    def __init__(self, pricer: Pricer, config: Config, horizon_s: float = 300.0,
                 resume: Mapping[str, Resume] | None = None) -> None:
        self.pricer = pricer
        self.config = config
        self.horizon_s = horizon_s
        self.resume = dict(resume or {})
        self.interners = Interners()
        self._states: dict[tuple[str, str], list[tuple[float, int, Record]]] = {}
        self._seq = 0
        self._timeline: Timeline | None = None
        self._newest = -math.inf
        # per (node, uuid): the (end, start) of the samples attributed within the horizon, by end
        self._covered: dict[tuple[str, str], list[tuple[float, float]]] = {}

    @property
    def timeline(self) -> Timeline | None:
        return self._timeline

    def invalidate_prices(self) -> None:
        """Rebuild the timeline on the next cycle, so refreshed prices are used."""
        self._timeline = None

    def process(self, records: Iterable[Record], default_interval: float) -> Cycle:
        """Take one cycle's records: remember the state records, attribute the samples and
        place the serving counts."""
        samples: list[Sample] = []
        serving: list[ServingRecord] = []
        for record in records:
            if isinstance(record, Sample):
                samples.append(record)
            elif isinstance(record, ServingRecord):
                serving.append(record)
            else:
                self._remember(record)
        cycle = Cycle()
        limit = self._newest - self.horizon_s  # behind what was seen before this cycle
        if samples:
            self._newest = max(self._newest, max(s.ts for s in samples))
            cycle.newest_ts = self._newest
            self._attribute(samples, default_interval, cycle, limit)
        if serving:
            self._place(serving, default_interval, cycle, limit)
        return cycle

    def _attribute(self, samples: list[Sample], default_interval: float, cycle: Cycle, limit: float) -> None:
        samples = self._drop_known(samples, default_interval, cycle, limit)
        if not samples:
            return
        self._forget_before(min(limit, min(s.ts for s in samples)))
        timeline = self._current_timeline()
        columns = SampleColumns.from_samples(samples, self.interners, default_interval)
        slot, ok = locate_slots(columns, timeline)
        cycle.dropped_undescribed = int((~ok).sum())
        keep = self._cover(samples, ok, default_interval, limit)
        cycle.dropped_overlap = int(ok.sum() - keep.sum())
        if not keep.all():
            samples = [s for s, k in zip(samples, keep) if k]
            columns = SampleColumns.from_samples(samples, self.interners, default_interval)
            slot = slot[keep]
        if not samples:
            return
        cycle.samples = len(samples)
        cycle.rows = _rows(rollup(attribute(columns, timeline), timeline), timeline)
        cycle.readings = _readings(samples, slot, timeline)

    def _place(self, serving: list[ServingRecord], default_interval: float, cycle: Cycle, limit: float) -> None:
        """Serving counts on the rows of their pods, as replay places them; a record the ledger
        already holds (a restart) or older than the horizon is skipped, one whose pod the
        node does not list is dropped and counted."""
        kept = [r for r in serving if r.ts >= limit
                and not ((done := self.resume.get(r.node)) is not None and done.holds(minute_of(r, default_interval), r.ts))]
        cycle.dropped_late += sum(1 for r in serving if r.ts < limit)
        if not kept:
            return
        timeline = self._current_timeline()
        placed, ok = place_serving(ServingColumns.from_records(kept, self.interners, default_interval), timeline)
        cycle.dropped_serving = int((~ok).sum())
        cycle.serving = int(ok.sum())
        if len(placed):
            cycle.rows += _rows(serving_rows(placed.minute, placed.slot, placed.holder, placed.counts, timeline),
                                timeline)

    # ------------------------------------------------------------------ overlaps

    def _cover(self, samples: list[Sample], ok: np.ndarray, default_interval: float, limit: float) -> np.ndarray:
        """Which samples to attribute: those ``ok`` that cover no time an earlier sample of
        their device covered (replay refuses such input; the agent drops and counts it)."""
        keep = ok.copy()
        for i, s in enumerate(samples):
            if not ok[i]:
                continue
            start = s.ts - (default_interval if s.interval_s is None else s.interval_s)
            covered = self._covered.setdefault((s.node, s.uuid), [])
            j = bisect.bisect_right(covered, (start + OVERLAP_TOLERANCE_S, math.inf))
            if j < len(covered) and covered[j][1] < s.ts - OVERLAP_TOLERANCE_S:
                keep[i] = False  # the first interval ending after this one starts also starts before it ends
                continue
            covered.insert(j, (s.ts, start))
        horizon = limit - self.horizon_s  # an interval ending before this cannot meet a sample still accepted
        for key in [k for k, c in self._covered.items() if c and c[-1][0] < horizon]:
            del self._covered[key]
        for covered in self._covered.values():
            if covered and covered[0][0] < horizon:
                del covered[:bisect.bisect_left(covered, (horizon, -math.inf))]
        return keep

    # ------------------------------------------------------------------ state records

    def _remember(self, record: Record) -> None:
        if isinstance(record, Meta):
            return
        key = (record.node, type(record).__name__)
        history = self._states.setdefault(key, [])
        history.append((record.ts, self._seq, record))
        self._seq += 1
        if len(history) > 1 and history[-2][0] > record.ts:
            history.sort(key=lambda e: (e[0], e[1]))
        self._timeline = None

    def _forget_before(self, horizon: float) -> None:
        """Keep, per node and kind, the records after ``horizon`` and the one in effect at it."""
        for key, history in self._states.items():
            first_kept = 0
            for i, (ts, _, _) in enumerate(history):
                if ts <= horizon:
                    first_kept = i
            if first_kept:
                del history[:first_kept]
                self._timeline = None

    def _current_timeline(self) -> Timeline:
        if self._timeline is None:
            states = [((0, seq), record) for history in self._states.values() for _, seq, record in history]
            self._timeline = build_timeline(states, self.interners, self.pricer, self.config,
                                            lambda where: ("agent", where[1]))
        return self._timeline

    def _drop_known(self, samples: list[Sample], default_interval: float, cycle: Cycle,
                    limit: float) -> list[Sample]:
        """Drop samples already in the ledger (a restart) or older than ``limit``."""
        kept = []
        for s in samples:
            if s.ts < limit:
                cycle.dropped_late += 1
                continue
            done = self.resume.get(s.node)
            if done is not None and done.holds(minute_of(s, default_interval), s.ts):
                cycle.dropped_resumed += 1
                continue
            kept.append(s)
        return kept


def minute_of(sample: Sample | ServingRecord, default_interval: float) -> int:
    """The minute a sample counts in: the one holding its interval's midpoint (as replay)."""
    interval = default_interval if sample.interval_s is None else sample.interval_s
    return int(math.floor((sample.ts - interval / 2) / MINUTE) * MINUTE)


def _rows(ledger, timeline: Timeline) -> list[Row]:
    sums = np.column_stack([getattr(ledger, k) for k in _LEDGER_SUMS]) if len(ledger) else None
    rows = []
    for i in range(len(ledger)):
        slot = timeline.slots[int(ledger.slot[i])]
        holder = int(ledger.holder[i])
        pod = timeline.pods[holder] if holder >= 0 else None
        rows.append(Row(
            key=RowKey(int(ledger.minute[i]), slot.node, slot.uuid, pod), slot=slot,
            sums=tuple(float(v) for v in sums[i]), mem_max=float(ledger.mem_max[i]),
            util_peak=float(ledger.util_peak[i]), samples=int(ledger.samples[i]),
            counts=tuple(float(getattr(ledger, k)[i]) for k in COUNTED),
        ))
    return rows


def _readings(samples: list[Sample], slot: np.ndarray, timeline: Timeline) -> list[Reading]:
    newest: dict[tuple[str, str], int] = {}
    for i, s in enumerate(samples):
        key = (s.node, s.uuid)
        j = newest.get(key)
        if j is None or samples[j].ts <= s.ts:
            newest[key] = i
    out = []
    for i in newest.values():
        s = samples[i]
        k = int(slot[i])
        holder = int(timeline.holder[k]) if timeline.n_holders[k] == 1 else -1
        out.append(Reading(timeline.slots[k], s.ts, s.util, s.mem_used_bytes,
                           timeline.pods[holder] if holder >= 0 else None))
    return out
