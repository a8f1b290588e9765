"""The record loop: poll live sources on a fixed cadence and write what they return.

Recording is nothing more than writing the collectors' records to a trace file (see
``docs/trace-format.md``), so a recorded trace replays to what the live agent would
have computed. The loop is the imperative shell around the sources: it keeps time,
writes ``meta`` and then every record, and stops after ``duration_s`` or on SIGINT or
SIGTERM, closing the sources and the file so the trace is whole (it is renamed into
place only then).

Any number of :class:`collectors.sources.RecordSource` can be polled together: NVML, and
with ``--kubernetes`` the placement (kubelet and API server) for ``node``/``pods`` records.
Their state records are written before the samples of the same poll, because records
with equal ``ts`` apply in file order.

The recorder runs on every GPU node, so its memory matters: it writes through
:class:`collectors.tracewriter.TraceWriter`, which imports neither Arrow nor NumPy
(the trace reader's Arrow/NumPy imports cost about 90 MB of RSS).
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from collectors.faults import FAULTS, FaultCounter
from collectors.records import Meta, Sample
from collectors.sources import RecordSource
from collectors.tracewriter import TraceWriter


@dataclass(frozen=True)
class RecordStats:
    """What a recording wrote, for the closing line of ``gpuledger record``."""

    path: Path
    polls: int
    lines: int  # meta included
    samples: int
    seconds: float
    stopped_by: str  # "duration" or the signal's name


def record(
    out: str | Path,
    sources: Sequence[RecordSource],
    interval_s: float,
    duration_s: float | None = None,
    *,
    source_name: str = "nvml",
    stop: threading.Event | None = None,
    faults: FaultCounter = FAULTS,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    handle_signals: bool = True,
) -> RecordStats:
    """Poll ``sources`` every ``interval_s`` seconds into the trace ``out``.

    Polls happen on a fixed grid (a slow poll does not shift the following ones);
    when a poll overruns whole intervals, the missed ticks are skipped rather than
    run back to back. The last poll is at the end of ``duration_s``, or right after
    ``stop`` is set (from another thread, or by SIGINT/SIGTERM when
    ``handle_signals`` and in the main thread), so the final interval is covered.
    """
    stop = stop or threading.Event()
    stopped_by = ["duration"]
    restore = _install_signals(stop, stopped_by) if handle_signals else {}
    meta = Meta(interval_s=interval_s, source=source_name,
                created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    polls = records = samples = 0
    start = monotonic()
    deadline = start + duration_s if duration_s is not None else float("inf")
    try:
        with TraceWriter(out, meta) as writer:
            tick = start
            while True:
                batch = _poll_all(sources, clock(), faults)
                for rec in batch:
                    writer.write(rec)
                polls += 1
                records += len(batch)
                samples += sum(isinstance(r, Sample) for r in batch)
                now = monotonic()
                if stop.is_set() or now >= deadline:
                    break
                tick += interval_s
                if tick <= now:  # overran: skip to the next tick on the grid
                    tick += ((now - tick) // interval_s + 1) * interval_s
                # woken early by a signal: one last poll covers the partial interval
                stop.wait(min(tick, deadline) - now)
    finally:
        for source in sources:
            try:
                source.close()
            except Exception as err:  # a close failure must not lose the trace
                faults.record("record", "close_failed", f"{type(source).__name__}: {err}")
        for sig, handler in restore.items():
            signal.signal(sig, handler)
    return RecordStats(Path(out), polls, records + 1, samples, monotonic() - start, stopped_by[0])


def _poll_all(sources: Sequence[RecordSource], now: float, faults: FaultCounter) -> list:
    """Every source's records for ``now``: state records first, then samples."""
    state, samples = [], []
    for source in sources:
        try:
            got = source.poll(now)
        except Exception as err:  # the protocol says sources do not raise; survive one that does
            faults.record("record", "source_failed", f"{type(source).__name__}: {err!r}")
            continue
        for rec in got:
            (samples if isinstance(rec, Sample) else state).append(rec)
    return state + samples


def _install_signals(stop: threading.Event, stopped_by: list[str]) -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, _frame) -> None:
        stopped_by[0] = signal.Signals(signum).name
        stop.set()

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
