"""Samples in columns: the compact form replay and the agent attribute in bulk.

A trace of millions of samples cannot live as Python objects, so samples are held
as NumPy arrays, with node names, device UUIDs and pod UIDs interned to small
integer codes. Processes are flattened: sample ``i`` owns processes
``proc_offsets[i]:proc_offsets[i+1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from collectors.records import Sample, ServingRecord

CODE = np.int32  # interned names, file indices and line numbers: 4 bytes a sample each


class Interner:
    """Strings to dense integer codes, shared by every batch of a run."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.names: list[str] = []

    def code(self, name: str) -> int:
        found = self.codes.get(name)
        if found is None:
            found = self.codes[name] = len(self.names)
            self.names.append(name)
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
        return SampleColumns(f, f, i, i, f, f, np.zeros(1, np.int64), i, f, f, i, i)

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
            proc_offsets=self.proc_offsets[start:stop + 1] - lo, proc_pod=self.proc_pod[lo:hi],
            proc_util=self.proc_util[lo:hi], proc_mem=self.proc_mem[lo:hi],
            file=self.file[start:stop], line=self.line[start:stop],
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


def first_overlap(batches: Sequence[SampleColumns]) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The first two samples of one device whose intervals overlap, as ((batch, index) of
    the one earlier in the input, (batch, index) of the later one), or None.

    A sample covers ``(ts - interval, ts]``; two samples of one device (node and uuid)
    overlap when one starts more than :data:`OVERLAP_TOLERANCE_S` before the other ends.
    "First" is by input order (file, then line) of the later one of the pair.
    """
    sizes = [len(b) for b in batches]
    if sum(sizes) < 2:
        return None
    node = np.concatenate([b.node for b in batches]).astype(np.int64)
    uuid = np.concatenate([b.uuid for b in batches]).astype(np.int64)
    end = np.concatenate([b.ts for b in batches])
    start = end - np.concatenate([b.interval for b in batches])
    order = np.lexsort((end, uuid, node))  # by device, then by end
    device = node[order] << 32 | uuid[order]
    del node, uuid
    e, s = end[order], start[order]
    bad = np.flatnonzero((device[1:] == device[:-1]) & (s[1:] < e[:-1] - OVERLAP_TOLERANCE_S))
    if not len(bad):
        return None
    a, b = order[bad], order[bad + 1]  # positions in the concatenated input
    file = np.concatenate([x.file for x in batches]).astype(np.int64)
    line = np.concatenate([x.line for x in batches]).astype(np.int64)
    later = np.where((file[a] > file[b]) | ((file[a] == file[b]) & (line[a] > line[b])), a, b)
    earlier = np.where(later == a, b, a)
    k = int(np.lexsort((line[later], file[later]))[0])
    bounds = np.cumsum([0] + sizes)

    def locate(position: int) -> tuple[int, int]:
        batch = int(np.searchsorted(bounds, position, side="right") - 1)
        return batch, position - int(bounds[batch])

    return locate(int(earlier[k])), locate(int(later[k]))
