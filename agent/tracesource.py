"""A recorded trace played back as if it were the live collectors (the agent's dry-run).

The agent polls its sources on a schedule; this source answers each poll with the
trace's records whose time the playback clock has reached. The clock runs ``speed``
times faster than the wall clock, from the trace's first record (or from where the
ledger left off after a restart, so a restarted dry-run does not wait through what is
already counted).
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Callable, Iterator

from collectors.errors import InputError
from collectors.records import Meta, Record
from collectors.tracefile import iter_records


class TraceSource:
    """A :class:`~collectors.sources.RecordSource` over a trace file.

    Records are handed out in file order; a record waits until the playback clock
    passes its ``ts`` (a trace written by ``gpuledger record`` or ``simulate`` is in
    time order).
    """

    def __init__(self, path: str | Path, speed: float = 1.0, start_at: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = str(path)
        self.speed = speed
        self.clock = clock
        self._records: Iterator[tuple[int, Record]] = iter_records(path)
        first = next(self._records, None)
        if first is None or not isinstance(first[1], Meta):
            raise InputError("expected a meta record first", file=self.path, line=1, field="kind")
        self.meta: Meta = first[1]
        self._next = next(self._records, None)
        trace_start = self._next[1].ts if self._next is not None else 0.0  # type: ignore[union-attr]
        self.start = trace_start if start_at is None else max(trace_start, start_at)
        self._wall0: float | None = None
        self.records = 0

    def skip_to(self, start_at: float | None) -> None:
        """Start the playback clock at ``start_at`` (where a restarted dry-run's ledger
        stops) instead of the trace's first record; before the first poll only."""
        if start_at is not None and self._wall0 is None:
            self.start = max(self.start, start_at)

    @property
    def interval(self) -> float:
        """The trace's sampling interval (its meta record's)."""
        return self.meta.interval_s or 1.0

    @property
    def exhausted(self) -> bool:
        return self._next is None

    def now(self) -> float:
        """The playback clock: trace time now."""
        if self._wall0 is None:
            return self.start
        return self.start + (self.clock() - self._wall0) * self.speed

    def poll(self, now: float = math.nan) -> list[Record]:
        """The records up to the playback clock (``now``, the wall time, is not used)."""
        if self._wall0 is None:
            self._wall0 = self.clock()
        until = self.now()
        out: list[Record] = []
        while self._next is not None and self._next[1].ts <= until:  # type: ignore[union-attr]
            out.append(self._next[1])
            self._next = next(self._records, None)
        self.records += len(out)
        return out

    def close(self) -> None:
        close = getattr(self._records, "close", None)
        if close is not None:
            close()


def trace_identity(path: str | Path) -> dict[str, str]:
    """What a dry-run's ledger records of its trace: the file's name and the SHA-256 of
    its bytes, so a resume continues only the same trace (under any name)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"name": Path(path).name, "sha256": digest.hexdigest()}
