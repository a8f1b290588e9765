"""The live agent's driver of the engine: a batch of polled records in, its row parts out.

Replay (:mod:`agent.replay`) accounts a trace strictly and in time order. The agent
polls a handful of records a second and hands them here in batches (every
``--account-every``, :mod:`agent.daemon`), from collectors that can be a moment out of step
(a sample of a device before its devices record, a pods record late), so :class:`Meter`
drives the same :class:`~agent.accounting.engine.Engine` with the agent's policy: what cannot be
accounted is dropped and counted, never fatal; a sample up to ``horizon_s`` behind the
newest is still accounted with the state records in effect at its time; each batch's row
parts go out at once, to the exporter's counters and the minute ledger
(:class:`~agent.rollups.RollupBook`), which adds a late part to a minute already written.
Nothing here does I/O.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from agent.config import Config
from agent.accounting.engine import Engine, Names, minute_of as _minute_of
from agent.accounting.ledger import COUNTED, Rows, concat, reduce
from agent.accounting.timeline import PodInfo, SlotInfo, Timeline
from collectors.pricing.ratecard import Pricer
from collectors.records import Meta, Record, Sample, ServingRecord
from collectors.samples import OVERLAP_TOLERANCE_S, SampleColumns, ServingColumns
from recommenders.ledger_schema import SUMS


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
    """Accounts records cycle by cycle with the agent's policy (see the module's docstring).

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
        self.engine = Engine(pricer, config, where=lambda where: ("agent", where[1]))
        self.interners = self.engine.interners
        self._seq = 0
        self._newest = -math.inf
        # per (node, uuid): the (end, start) of the samples attributed within the horizon, by end
        self._covered: dict[tuple[str, str], list[tuple[float, float]]] = {}

    @property
    def timeline(self) -> Timeline:
        return self.engine.timeline

    def invalidate_prices(self) -> None:
        """Rebuild the timeline on the next cycle, so refreshed prices are used."""
        self.engine.invalidate_prices()

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
            elif not isinstance(record, Meta):
                self.engine.add_state((0, self._seq), record)  # type: ignore[arg-type]
                self._seq += 1
        cycle = Cycle()
        limit = self._newest - self.horizon_s  # behind what was seen before this cycle
        parts: list[Rows] = []
        if samples:
            self._newest = max(self._newest, max(s.ts for s in samples))
            cycle.newest_ts = self._newest
            parts += self._attribute(samples, default_interval, cycle, limit)
        if serving:
            parts += self._place(serving, default_interval, cycle, limit)
        if parts:
            cycle.rows = _rows(reduce(concat(parts)), self.engine.names)
        return cycle

    def _attribute(self, samples: list[Sample], default_interval: float, cycle: Cycle, limit: float) -> list[Rows]:
        samples = self._drop_known(samples, default_interval, cycle, limit)
        if not samples:
            return []
        self.engine.forget_before(min(limit, min(s.ts for s in samples)))
        columns = SampleColumns.from_samples(samples, self.interners, default_interval)
        slot, ok = self.engine.locate(columns)
        cycle.dropped_undescribed = int((~ok).sum())
        keep = self._cover(samples, ok, default_interval, limit)
        cycle.dropped_overlap = int(ok.sum() - keep.sum())
        if not keep.any():
            return []
        if not keep.all():
            samples = [s for s, k in zip(samples, keep) if k]
            columns, slot = columns.take(keep), slot[keep]
        cycle.samples = len(samples)
        cycle.readings = _readings(samples, slot, self.engine.timeline)
        return [self.engine.attribute(columns)]

    def _place(self, serving: list[ServingRecord], default_interval: float, cycle: Cycle, limit: float) -> list[Rows]:
        """Serving counts on the rows of their pods, as replay places them; a record the ledger
        already holds (a restart) or older than the horizon is skipped, one whose pod the
        node does not list is dropped and counted."""
        kept = [r for r in serving if r.ts >= limit
                and not ((done := self.resume.get(r.node)) is not None and done.holds(minute_of(r, default_interval), r.ts))]
        cycle.dropped_late += sum(1 for r in serving if r.ts < limit)
        if not kept:
            return []
        rows, ok = self.engine.place(ServingColumns.from_records(kept, self.interners, default_interval))
        cycle.dropped_serving = int((~ok).sum())
        cycle.serving = int(ok.sum())
        return [rows] if len(rows) else []

    # ------------------------------------------------------------------ overlaps

    def _cover(self, samples: list[Sample], ok: np.ndarray, default_interval: float, limit: float) -> np.ndarray:
        """Which samples to attribute: those ``ok`` that cover no time an earlier sample of
        their device covered (replay refuses such input; the agent drops and counts it).
        Samples may arrive out of order here, so each device keeps every interval within
        the horizon, not only its newest (as replay's :class:`~collectors.samples.Coverage`)."""
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
    return _minute_of(sample.ts, default_interval if sample.interval_s is None else sample.interval_s)


def _rows(rows: Rows, names: Names) -> list[Row]:
    """Rows as objects, for the exporter's counters and the minute ledger (a cycle has a few)."""
    sums = np.column_stack([rows.values[k] for k in SUMS]).tolist() if len(rows) else []
    counts = np.column_stack([rows.values[k] for k in COUNTED]).tolist() if len(rows) else []
    devices, slots, pods = names.devices.values, names.slots.values, names.pods.values
    out = []
    for i in range(len(rows)):
        node, uuid = devices[int(rows.device[i])]
        holder = int(rows.holder[i])
        out.append(Row(
            key=RowKey(int(rows.minute[i]), node, uuid, pods[holder] if holder >= 0 else None),
            slot=slots[int(rows.slot[i])], sums=tuple(sums[i]),
            mem_max=float(rows.values["memory_used_max_bytes"][i]), util_peak=float(rows.values["util_peak"][i]),
            samples=int(rows.values["samples"][i]), counts=tuple(counts[i]),
        ))
    return out


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
