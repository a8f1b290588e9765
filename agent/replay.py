"""Replay: the agent's accounting fed from trace files, as a stream in bounded memory.

Trace files are read block by block (:class:`~collectors.tracefile.TraceStream`, several
files merged by time) and fed to the one :class:`~agent.accounting.engine.Engine` the live agent
uses. Replay's policy is strict: any record it cannot account is an input error naming
its file and line, raised before a ledger or summary is in place.

Memory does not grow with the trace's length. Replay accounts up to a *watermark*: the
time every file has reached, less the declared lateness (:data:`LATENESS_S`); a minute
closes once no sample still to come can count in it, and closed minutes go to the sinks
(a Parquet file and the summary) and leave memory. What is held is the records of the
last block or so of each file, and the minutes still open.

A record more than the lateness older than records before it in its file may arrive after
replay has accounted its time: it is refused as an input error (``docs/trace-format.md``,
"Order"), never silently left out. Within that, input order does not matter: samples are
accounted in order of (ts, file, line), so any batching gives the same ledger, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from agent.accounting.attribution import MINUTE, serving_error
from agent.config import Config
from agent.accounting.engine import Engine
from agent.accounting.ledger import Rows, concat, reduce
from agent.sinks import LedgerSink, TableSink, ledger_order
from agent.accounting.summary import SummaryBook
from collectors.errors import InputError
from collectors.pricing.ratecard import Pricer, RateCard, RateCardPricer
from collectors.records import LATENESS_S
from collectors.samples import Coverage, SampleColumns, ServingColumns, Span
from collectors.tracefile import BLOCK_BYTES, Progress, TraceBlock, TraceStream

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass
class ReplayResult:
    files: list[str]
    summary: dict[str, Any]
    table: "pa.Table | None" = None  # the ledger, when no sink was given


def replay(
    paths: Iterable[str | Path],
    prices: RateCard | Pricer,
    config: Config,
    progress: Progress | None = None,
    sink: LedgerSink | None = None,
    lateness_s: float = LATENESS_S,
    block_bytes: Callable[[], int] = lambda: BLOCK_BYTES,
) -> ReplayResult:
    """Replay trace files into ``sink`` (default: a table returned in the result);
    raises InputError on bad input.

    ``prices`` is a rate card (priced by it alone) or any :class:`Pricer`.
    ``block_bytes()``: the size of each next block read (tests vary it).
    """
    pricer = RateCardPricer(prices) if isinstance(prices, RateCard) else prices
    stream = TraceStream(paths, progress=progress, block_bytes=block_bytes)
    table = TableSink(pricer.currency) if sink is None else None
    run = Replay(stream, pricer, config, table or sink, lateness_s)  # type: ignore[arg-type]
    for block, low_water in stream.read_ahead():
        run.feed(block)
        run.advance(low_water - lateness_s)
    run.advance(math.inf)
    summary = run.finish()
    return ReplayResult(stream.files, summary, table.table() if table else None)


class Replay:
    """One replay's state between blocks: what is read and not yet accounted, the minutes
    still open, and the summary so far."""

    def __init__(self, stream: TraceStream, pricer: Pricer, config: Config, sink: LedgerSink,
                 lateness_s: float) -> None:
        self.stream = stream
        self.engine = Engine(pricer, config, stream.interners, stream.where)
        self.currency = pricer.currency
        self.sink = sink
        self.summary = SummaryBook()
        self.lateness_s = lateness_s
        self.accounted = -math.inf  # every record at or before this has been accounted
        self.closed = -math.inf  # minutes before this are in the sinks
        self.longest = 0.0  # the longest interval seen: how far back a sample to come can reach
        self._samples: list[SampleColumns] = []
        self._serving: list[ServingColumns] = []
        # row parts of the minutes still open: of samples, and of serving records, apart, so
        # that each row's parts add up in one order however the input was batched
        self._open: tuple[list[Rows], list[Rows]] = ([], [])
        self._coverage = Coverage()
        self.window = (math.inf, -math.inf)
        self.sampled = 0

    # ------------------------------------------------------------------ input

    def feed(self, block: TraceBlock) -> None:
        """Take a block's records; InputError for one at or before what is accounted."""
        for order, record in block.states:
            if record.ts <= self.accounted:
                self._late(self.stream.where(order), record.ts, "ts")
            self.engine.add_state(order, record)
        for cols in (block.samples, block.serving):
            if cols is None or not len(cols):
                continue
            late = np.flatnonzero(cols.ts <= self.accounted)
            if len(late):
                i = int(late[0])
                self._late((self.stream.files[int(cols.file[i])], int(cols.line[i])), float(cols.ts[i]), "ts")
            self.longest = max(self.longest, float(cols.interval.max()))
        if len(block.samples):
            self._samples.append(block.samples)
        if block.serving is not None and len(block.serving):
            self._serving.append(block.serving)

    def _late(self, where: tuple[str, int], ts: float, field: str) -> None:
        raise InputError(
            f"record of ts {ts:.3f} comes after replay accounted everything up to {self.accounted:.3f}: a record "
            f"may be at most {self.lateness_s:g} s older than the records before it in its file (sort the trace, "
            "or give a larger --lateness; docs/trace-format.md, \"Order\")",
            file=where[0], line=where[1], field=field)

    # ------------------------------------------------------------------ accounting

    def advance(self, watermark: float) -> None:
        """Account every record at or before ``watermark`` and hand over the minutes that
        closed: no sample after the watermark can count in them."""
        if watermark <= self.accounted:
            return
        if math.isfinite(self.accounted):
            self.engine.forget_before(self.accounted)  # what comes next is all after it
        samples, self._samples = _split(self._samples, watermark, SampleColumns)
        serving, self._serving = _split(self._serving, watermark, ServingColumns)
        if samples is not None:
            self._account(samples)
        if serving is not None:
            self._place(serving)
        self.accounted = watermark
        if math.isinf(watermark):
            self._close(math.inf)
        else:
            self._close(math.floor((watermark - self.longest / 2) / MINUTE) * MINUTE)

    def _account(self, samples: SampleColumns) -> None:
        samples = _in_order(samples)
        self._refuse_overlap(samples)
        rows = self.engine.attribute(samples, lambda i: (self.stream.files[int(samples.file[i])], int(samples.line[i])))
        self._refuse_reopened(rows.minute, samples)
        self._open[0].append(rows)
        self.sampled += len(samples)
        self.window = (min(self.window[0], float(np.min(samples.ts - samples.interval))),
                       max(self.window[1], float(np.max(samples.ts))))

    def _place(self, serving: ServingColumns) -> None:
        serving = _in_order(serving)
        rows, ok = self.engine.place(serving)
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            names = self.stream.interners
            raise serving_error(names.pods.names[int(serving.pod[i])], names.nodes.names[int(serving.node[i])],
                                self.stream.files[int(serving.file[i])], int(serving.line[i]))
        self._refuse_reopened(rows.minute, serving.take(ok))
        self._open[1].append(rows)

    def _close(self, before: float) -> None:
        """Reduce the open minutes before ``before`` to rows and hand them to the sinks."""
        if before <= self.closed or not (self._open[0] or self._open[1]):
            return
        self.closed = before
        due = []
        for parts in self._open:
            joined = concat(parts)
            done = joined.minute < before
            due.append(joined.take(done))
            parts[:] = [joined.take(~done)] if not done.all() else []
        if not len(due[0]) and not len(due[1]):
            return
        rows = reduce(concat(due))
        rows = rows.take(ledger_order(rows, self.engine.names))
        self.sink.add(rows, self.engine.names)
        self.summary.add(rows, self.engine.names)

    def finish(self) -> dict[str, Any]:
        """The summary; InputError when the trace held no sample at all."""
        if not self.sampled:
            raise InputError("holds no sample records: nothing to attribute (a trace recorded where NVML saw no "
                             "GPU? `gpuledger record` says why)", file=", ".join(self.stream.files), field="kind")
        return self.summary.summary(self.engine.names, self.currency, self.window, self.engine.prices)

    # ------------------------------------------------------------------ input errors

    def _refuse_overlap(self, samples: SampleColumns) -> None:
        pair = self._coverage.check(samples)
        if pair is None:
            return
        earlier, later = pair
        e_file, l_file = self.stream.files[earlier.file], self.stream.files[later.file]
        twice = " (the same trace given twice?)" if earlier.line == later.line and Path(e_file) == Path(l_file) else ""
        raise InputError(
            f"sample of {self.stream.interners.uuids.names[later.uuid]!r} ({_span(later)}) overlaps the "
            f"sample at {e_file}:{earlier.line} ({_span(earlier)}): a device's samples may not cover the same "
            f"time twice{twice}", file=l_file, line=later.line, field="ts")

    def _refuse_reopened(self, minute: np.ndarray, cols: SampleColumns | ServingColumns) -> None:
        """A sample whose interval is longer than any before can reach back into a minute
        already handed over; refused rather than left out."""
        if not len(minute) or minute.min() >= self.closed:
            return
        i = int(np.flatnonzero(minute < self.closed)[0])
        raise InputError(
            f"interval_s {float(cols.interval[i]):g} reaches back into a minute replay has already written (the "
            f"intervals before it were at most {self.longest:g} s): give a larger --lateness",
            file=self.stream.files[int(cols.file[i])], line=int(cols.line[i]), field="interval_s")


def _span(span: Span) -> str:
    return f"{span.start:.3f} to {span.end:.3f}"


def _split(parts: list, watermark: float, kind: Any) -> tuple[Any, list]:
    """(the records at or before ``watermark``, as one batch or None; the rest, as batches)."""
    if not parts:
        return None, parts
    joined = kind.concat(parts)
    due = joined.ts <= watermark
    if not due.any():
        return None, [joined]
    if due.all():
        return joined, []
    return joined.take(due), [joined.take(~due)]


def _in_order(cols: Any) -> Any:
    """Records in order of (ts, file, line): the order replay accounts in, whatever the batches."""
    ts = cols.ts
    if len(ts) < 2 or (np.all(ts[1:] > ts[:-1])):
        return cols
    if np.all(ts[1:] >= ts[:-1]) and np.all(cols.file == cols.file[0]) and np.all(cols.line[1:] > cols.line[:-1]):
        return cols
    return cols.take(np.lexsort((cols.line, cols.file, ts)))
