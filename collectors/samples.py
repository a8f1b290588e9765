"""Samples in columns: the compact form replay and the agent attribute in bulk.

A trace of millions of samples cannot live as Python objects, so samples are held
as NumPy arrays, with node names, device UUIDs and pod UIDs interned to small
integer codes. Processes are flattened: sample ``i`` owns processes
``proc_offsets[i]:proc_offsets[i+1]``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from collectors.records import Sample, ServingRecord

CODE = np.int32  # interned names, file indices and line numbers: 4 bytes a sample each


class Interner:
    """Strings to dense integer codes, shared by every batch of a run.

    Replay's reading thread and its accounting both add names, so a new name is added
    under a lock (a name already known, nearly every call, takes none)."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.names: list[str] = []
        self._lock = threading.Lock()

    def code(self, name: str) -> int:
        found = self.codes.get(name)
        if found is None:
            with self._lock:
                found = self.codes.get(name)
                if found is None:
                    found = len(self.names)
                    self.names.append(name)
                    self.codes[name] = found
        return found

    def codes_of(self, names: Iterable[str | None]) -> np.ndarray:
        """Codes for many names; None becomes -1."""
        return np.fromiter(
            (-1 if n is None else self.code(n) for n in names), dtype=CODE
        )

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class Interners:
    """The three vocabularies samples refer to."""

    nodes: Interner = field(default_factory=Interner)
    uuids: Interner = field(default_factory=Interner)
    pods: Interner = field(default_factory=Interner)


@dataclass
class SampleColumns:
    """Many samples, one array per field. NaN marks an absent number."""

    ts: np.ndarray  # float64, end of the interval
    interval: np.ndarray  # float64, seconds (the file default already applied)
    node: np.ndarray  # int32 node code
    uuid: np.ndarray  # int32 device code
    util: np.ndarray  # float64 percent, NaN = not reported
    mem: np.ndarray  # float64 bytes, NaN = not reported
    power: np.ndarray  # float64 watts of board power, NaN = not reported (MIG slices never are)
    proc_offsets: np.ndarray  # int64, len(ts) + 1
    proc_pod: np.ndarray  # int32 pod-uid code, -1 = unknown
    proc_util: np.ndarray  # float64, NaN = not reported
    proc_mem: np.ndarray  # float64, NaN = not reported
    file: np.ndarray  # int32 index of the source file (for error messages)
    line: np.ndarray  # int32 line in that file, 1-based

    def __len__(self) -> int:
        return len(self.ts)

    @staticmethod
    def empty() -> "SampleColumns":
        f, i = np.empty(0, np.float64), np.empty(0, CODE)
        return SampleColumns(f, f, i, i, f, f, f, np.zeros(1, np.int64), i, f, f, i, i)

    @staticmethod
    def from_samples(
        samples: Sequence[Sample],
        interners: Interners,
        default_interval: float,
        file: int = 0,
        lines: Sequence[int] | None = None,
    ) -> "SampleColumns":
        """Columns from record objects (the agent's batches and the careful reader)."""
        n = len(samples)
        counts = [len(s.processes) if s.processes else 0 for s in samples]
        procs = [p for s in samples if s.processes for p in s.processes]
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        nan = float("nan")
        return SampleColumns(
            ts=np.array([s.ts for s in samples], np.float64),
            interval=np.array(
                [default_interval if s.interval_s is None else s.interval_s for s in samples],
                np.float64,
            ),
            node=interners.nodes.codes_of(s.node for s in samples),
            uuid=interners.uuids.codes_of(s.uuid for s in samples),
            util=np.array([nan if s.util is None else s.util for s in samples], np.float64),
            mem=np.array(
                [nan if s.mem_used_bytes is None else s.mem_used_bytes for s in samples], np.float64
            ),
            power=np.array([nan if s.power_w is None else s.power_w for s in samples], np.float64),
            proc_offsets=offsets,
            proc_pod=interners.pods.codes_of(p.pod_uid for p in procs),
            proc_util=np.array([nan if p.util is None else p.util for p in procs], np.float64),
            proc_mem=np.array(
                [nan if p.mem_used_bytes is None else p.mem_used_bytes for p in procs], np.float64
            ),
            file=np.full(n, file, CODE),
            line=np.asarray(lines if lines is not None else np.zeros(n), CODE),
        )

    def slice(self, start: int, stop: int) -> "SampleColumns":
        """Samples ``start:stop`` as views (no copy), with their processes."""
        lo, hi = int(self.proc_offsets[start]), int(self.proc_offsets[stop])
        return SampleColumns(
            ts=self.ts[start:stop], interval=self.interval[start:stop], node=self.node[start:stop],
            uuid=self.uuid[start:stop], util=self.util[start:stop], mem=self.mem[start:stop],
            power=self.power[start:stop],
            proc_offsets=self.proc_offsets[start:stop + 1] - lo, proc_pod=self.proc_pod[lo:hi],
            proc_util=self.proc_util[lo:hi], proc_mem=self.proc_mem[lo:hi],
            file=self.file[start:stop], line=self.line[start:stop],
        )

    def take(self, index: np.ndarray) -> "SampleColumns":
        """The samples at ``index`` (positions or a mask), with their processes."""
        rows = np.flatnonzero(index) if index.dtype == bool else np.asarray(index, np.int64)
        lo = self.proc_offsets[rows]
        counts = self.proc_offsets[rows + 1] - lo
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        procs = np.arange(int(offsets[-1]), dtype=np.int64) - np.repeat(offsets[:-1] - lo, counts)
        return SampleColumns(
            ts=self.ts[rows], interval=self.interval[rows], node=self.node[rows], uuid=self.uuid[rows],
            util=self.util[rows], mem=self.mem[rows], power=self.power[rows], proc_offsets=offsets, proc_pod=self.proc_pod[procs],
            proc_util=self.proc_util[procs], proc_mem=self.proc_mem[procs], file=self.file[rows],
            line=self.line[rows],
        )

    @staticmethod
    def concat(parts: list["SampleColumns"]) -> "SampleColumns":
        """One batch from many."""
        if not parts:
            return SampleColumns.empty()
        if len(parts) == 1:
            return parts[0]
        shift = np.cumsum([0] + [int(p.proc_offsets[-1]) for p in parts[:-1]])
        out = {
            name: np.concatenate([getattr(p, name) for p in parts])
            for name in SampleColumns.__dataclass_fields__ if name != "proc_offsets"
        }
        out["proc_offsets"] = np.concatenate(
            [parts[0].proc_offsets[:1]] + [p.proc_offsets[1:] + s for p, s in zip(parts, shift)]
        )
        return SampleColumns(**out)


@dataclass
class ServingColumns:
    """Many ``serving`` records, one array per field. NaN marks a count the server did not keep."""

    ts: np.ndarray  # float64, end of the interval
    interval: np.ndarray  # float64, seconds (the file default already applied)
    node: np.ndarray  # int32 node code
    pod: np.ndarray  # int32 pod-uid code
    requests: np.ndarray  # float64, NaN = not counted
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    file: np.ndarray  # int32 index of the source file (for error messages)
    line: np.ndarray  # int32 line in that file, 1-based

    def __len__(self) -> int:
        return len(self.ts)

    @staticmethod
    def from_records(records: Sequence[ServingRecord], interners: Interners, default_interval: float,
                     file: int = 0, lines: Sequence[int] | None = None) -> "ServingColumns":
        """Columns from record objects (the agent's cycles and the careful reader)."""
        n = len(records)
        nan = float("nan")

        def count(name: str) -> np.ndarray:
            return np.array([nan if getattr(r, name) is None else getattr(r, name) for r in records], np.float64)

        return ServingColumns(
            ts=np.array([r.ts for r in records], np.float64),
            interval=np.array([default_interval if r.interval_s is None else r.interval_s for r in records],
                              np.float64),
            node=interners.nodes.codes_of(r.node for r in records),
            pod=interners.pods.codes_of(r.pod_uid for r in records),
            requests=count("requests"), input_tokens=count("input_tokens"), output_tokens=count("output_tokens"),
            file=np.full(n, file, CODE), line=np.asarray(lines if lines is not None else np.zeros(n), CODE),
        )

    def take(self, index: np.ndarray) -> "ServingColumns":
        """The records at ``index`` (positions or a mask)."""
        return ServingColumns(**{name: getattr(self, name)[index] for name in ServingColumns.__dataclass_fields__})

    @staticmethod
    def concat(parts: Sequence["ServingColumns"]) -> "ServingColumns":
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return ServingColumns.from_records([], Interners(), 1.0)
        return ServingColumns(**{name: np.concatenate([getattr(p, name) for p in parts])
                                 for name in ServingColumns.__dataclass_fields__})


OVERLAP_TOLERANCE_S = 0.001
"""How far one sample of a device may reach into the next one's interval: recorded times
are rounded to the millisecond (NVML recording, importers), so intervals that meet can
disagree by that much. Anything more is the same device counted twice."""


@dataclass(frozen=True)
class Span:
    """Where a sample is and what it covers, for an overlap's error message."""

    file: int
    line: int
    uuid: int
    start: float
    end: float


class Coverage:
    """The newest interval each device's samples covered, to check each new batch against.

    A sample covers ``(ts - interval, ts]``; two samples of one device (node and uuid)
    overlap when one starts more than :data:`OVERLAP_TOLERANCE_S` before the other ends.
    Batches must come in time order (every sample of a batch ends after those of earlier
    batches, as replay's stream gives them), so the newest end of each device is all the
    past that matters, and memory stays one entry per device.
    """

    def __init__(self) -> None:
        self._device = np.empty(0, np.int64)  # sorted
        self._span = np.empty((0, 5), np.float64)  # file, line, uuid, start, end per device

    def check(self, batch: SampleColumns) -> tuple[Span, Span] | None:
        """The first overlapping pair involving the batch, as (the sample earlier in the
        input, the later one), or None; then the batch's newest intervals are remembered.
        "First" is by input order (file, then line) of the later one of the pair."""
        n = len(batch)
        if n == 0:
            return None
        device = batch.node.astype(np.int64) << 32 | batch.uuid.astype(np.int64)
        span = np.column_stack([batch.file, batch.line, batch.uuid, batch.ts - batch.interval, batch.ts])
        known = np.isin(self._device, device)
        all_device = np.concatenate([self._device[known], device])
        all_span = np.concatenate([self._span[known], span])
        order = np.lexsort((all_span[:, 4], all_device))  # by device, then by end
        d, s = all_device[order], all_span[order]
        bad = np.flatnonzero((d[1:] == d[:-1]) & (s[1:, 3] < s[:-1, 4] - OVERLAP_TOLERANCE_S))
        found = None
        if len(bad):
            a, b = s[bad], s[bad + 1]
            a_later = (a[:, 0] > b[:, 0]) | ((a[:, 0] == b[:, 0]) & (a[:, 1] > b[:, 1]))
            later = np.where(a_later[:, None], a, b)
            earlier = np.where(a_later[:, None], b, a)
            k = int(np.lexsort((later[:, 1], later[:, 0]))[0])
            found = _span(earlier[k]), _span(later[k])
        last = np.flatnonzero(np.r_[d[1:] != d[:-1], True])  # each device's newest
        keep = ~np.isin(self._device, d[last])
        self._device = np.concatenate([self._device[keep], d[last]])
        self._span = np.concatenate([self._span[keep], s[last]])
        order = np.argsort(self._device, kind="stable")
        self._device, self._span = self._device[order], self._span[order]
        return found


def _span(row: np.ndarray) -> Span:
    return Span(int(row[0]), int(row[1]), int(row[2]), float(row[3]), float(row[4]))
