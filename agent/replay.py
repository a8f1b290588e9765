"""Dry-run: a recorded trace in, the ledger and the summary out.

This is the whole pipeline the agent runs, fed from files instead of live collectors:
read records, build the timeline, attribute, roll up. It is I/O at the edges around
the pure steps in :mod:`agent.timeline`, :mod:`agent.attribution` and :mod:`agent.ledger`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from agent.attribution import attribute, place_serving, serving_error
from agent.config import Config
from agent.ledger import Ledger, merge, rollup, serving_rows
from agent.summary import summarize
from agent.timeline import Timeline, build_timeline
from collectors.errors import InputError
from collectors.pricing.ratecard import Pricer, RateCard, RateCardPricer
from collectors.samples import ServingColumns
from collectors.tracefile import Progress, Trace, read_traces, refuse_overlaps


@dataclass
class ReplayResult:
    trace: Trace
    timeline: Timeline
    ledger: Ledger
    summary: dict[str, Any]


def replay(
    paths: Iterable[str | Path],
    prices: RateCard | Pricer,
    config: Config,
    progress: Progress | None = None,
) -> ReplayResult:
    """Replay trace files; raises InputError on bad input before anything is written.

    ``prices`` is a rate card (priced by it alone) or any :class:`Pricer`.
    """
    pricer = RateCardPricer(prices) if isinstance(prices, RateCard) else prices
    trace = read_traces(paths, progress=progress)
    refuse_overlaps(trace)

    def where_record(order: tuple[int, int]) -> tuple[str, int]:
        return trace.files[order[0]], order[1]

    timeline = build_timeline(trace.states, trace.interners, pricer, config, where_record)
    if not any(len(batch.ts) for batch in trace.batches):
        raise InputError("holds no sample records: nothing to attribute (a trace recorded where NVML saw no "
                         "GPU? `gpuledger record` says why)", file=", ".join(trace.files), field="kind")
    parts = []
    start, end = np.inf, -np.inf
    for batch in trace.batches:
        allocations = attribute(batch, timeline, lambda i, batch=batch: trace.where(batch, i))
        parts.append(rollup(allocations, timeline))
        start = min(start, float(np.min(batch.ts - batch.interval)))
        end = max(end, float(np.max(batch.ts)))
    if trace.serving:
        parts.append(_serving(trace, timeline))
    ledger = merge(parts, timeline)
    window = (start, end) if parts else (0.0, 0.0)
    return ReplayResult(trace, timeline, ledger, summarize(ledger, timeline, window))


def _serving(trace: Trace, timeline: Timeline) -> Ledger:
    """The trace's serving counts as ledger rows; InputError for a record whose pod its node does not list."""
    cols = ServingColumns.concat(trace.serving)
    placed, ok = place_serving(cols, timeline)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        names = trace.interners
        raise serving_error(names.pods.names[int(cols.pod[i])], names.nodes.names[int(cols.node[i])],
                            trace.files[int(cols.file[i])], int(cols.line[i]))
    return serving_rows(placed.minute, placed.slot, placed.holder, placed.counts, timeline)
