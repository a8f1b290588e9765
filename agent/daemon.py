"""``gpuledger agent``: the node process, live or on a recorded trace.

Four jobs on an APScheduler scheduler — sample (every ``--interval``), flush the minute
ledger (every minute), refresh prices (every ``--price-refresh``), the weekly report (a
cron schedule, when ``--report-out`` is set) — and an HTTP server for ``/metrics``,
``/healthz`` and ``/readyz``. Sampling, flushing and price refreshes run one at a time
on one worker thread, so the meter, the ledger book and the metrics never see two
writers; the report runs in its own worker, in a child process, so pandas never enters
the agent's memory.

The accounting is :class:`~agent.metering.Meter`, the same attribution replay runs;
only the source of records differs (NVML + Kubernetes, or :class:`TraceSource`).
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Callable, Mapping

from agent import logs
from agent.agent_settings import AgentSettings
from agent.config import Config
from agent.exporter import AgentMetrics
from agent.httpserver import READ_TIMEOUT_S, BoundedHTTPServer
from agent.metering import Meter, Resume
from agent.rollups import RollupBook
from collectors.faults import FaultCounter
from collectors.records import PodsRecord, Record
from collectors.sources import RecordSource

log = logging.getLogger("gpuledger.agent")
COLLECTOR = "agent"


@dataclass
class Health:
    """What /healthz and /readyz answer from."""

    started: float
    last_cycle: float | None = None  # wall time of the last cycle that attributed samples
    placement_seen: bool = False
    needs_placement: bool = False
    ready_within_s: float = 10.0
    trace_finished: bool = False  # dry-run: the final figures stay on /metrics, to be scraped
    cause: Callable[[], str | None] = lambda: None  # why the source samples no GPU (no driver, no GPU), if known

    def ready(self, now: float) -> tuple[bool, str]:
        if self.trace_finished:
            return True, "the trace has ended; serving its final figures"
        cause = self.cause()
        because = f": {cause}" if cause else ""
        if self.last_cycle is None:
            return False, "no samples attributed yet" + because
        if now - self.last_cycle > self.ready_within_s:
            return False, f"no samples attributed for {now - self.last_cycle:.0f} s" + because
        if self.needs_placement and not self.placement_seen:
            return False, "no answer from the kubelet and the API server yet"
        return True, "ok"


class Agent:
    """The agent's state and jobs; :meth:`run` wires them to a scheduler and a server."""

    def __init__(self, settings: AgentSettings, config: Config, pricer: Any, source: RecordSource,
                 default_interval: float, faults: FaultCounter, mode: str, version: str,
                 book: RollupBook, resume: Mapping[str, Resume], needs_placement: bool = False,
                 refresh_prices: Callable[[], int] | None = None,
                 price_faults: Callable[[], Mapping[str, int]] = dict) -> None:
        scraper = getattr(source, "scraper", None)  # a ServingSource's (collectors/serving.py)
        self.settings = settings
        self.source = source
        self.default_interval = default_interval
        self.faults = faults
        self.mode = mode
        self.book = book  # already read back: ``resume`` is what it holds
        if resume:
            log.info("continuing the ledger in %s, which holds %s; samples up to there are not counted again",
                     settings.ledger_dir, _held(resume))
        self.meter = Meter(pricer, config, resume=resume)
        self._refresh = refresh_prices
        self.prices_at = time.time()
        self.metrics = AgentMetrics(pricer.currency, mode, version, faults,
                                    price_age=lambda: time.time() - self.prices_at, price_faults=price_faults,
                                    serving_status=(lambda: (scraper.endpoints, scraper.rounds)) if scraper else
                                    (lambda: None))
        self.health = Health(time.time(), needs_placement=needs_placement,
                             ready_within_s=max(10.0, 5 * settings.interval) + settings.account_every,
                             cause=lambda: getattr(source, "problem", None))
        self._lock = threading.Lock()
        self._finished = False
        self.ledger_final = False  # a dry-run's trace has ended and all of its ledger is on disk
        self._pruned_hour: int | None = None
        self._pending: list[Record] = []  # polled, not yet accounted (see _account)
        self._accounted_at = -math.inf
        self.stop = threading.Event()
        self.lag = Lag(mode, settings)

    # ------------------------------------------------------------------ jobs

    def sample(self) -> None:
        """Poll the source; every ``account_every`` seconds, account what was polled."""
        with self._lock:
            began = time.monotonic()
            try:
                self._pending += self.source.poll(time.time())
            except Exception as err:  # noqa: BLE001 - a source must not raise; if one does, count it
                self.faults.record(COLLECTOR, "source_failed", f"{type(err).__name__}: {err}")
                return
            ended = self.mode == "dry-run" and getattr(self.source, "exhausted", False) and not self._finished
            if ended or self.health.last_cycle is None or began - self._accounted_at >= self.settings.account_every:
                self._account()
            if ended:
                self._finish_trace()
            self.lag.cycle_done(time.monotonic() - began)

    def _account(self) -> None:
        """Attribute, count and keep for the ledger every record polled since the last time.

        The meter takes a batch of cycles for about the cost of one (its work is numpy
        calls on a few arrays, and the rows of one minute merge), so sampling every second
        and accounting every ``account_every`` seconds costs the agent far less CPU than
        accounting each cycle, at the price of /metrics showing the GPUs that much later.
        The order of records within a batch does not matter to the meter: state records
        take effect at their own times."""
        records, self._pending = self._pending, []
        self._accounted_at = time.monotonic()
        if records:
            self._take(records)

    def _take(self, records: list[Record]) -> None:
        if any(isinstance(r, PodsRecord) for r in records):
            self.health.placement_seen = True
        try:
            cycle = self.meter.process(records, self.default_interval)
        except Exception as err:  # noqa: BLE001 - bad records from a source are counted, never fatal
            self.faults.record(COLLECTOR, "attribution_failed", str(err))
            return
        for reason, count in (("sample_undescribed", cycle.dropped_undescribed),
                              ("sample_late", cycle.dropped_late),
                              ("sample_overlap", cycle.dropped_overlap)):
            if count:
                self.faults.record(COLLECTOR, reason, _DROPPED[reason], count=count)
        if cycle.dropped_resumed:
            log.debug("skipped %d samples already in the ledger", cycle.dropped_resumed)
        dropped = self.book.add(cycle.rows)
        if dropped:
            self.faults.record(COLLECTOR, "row_too_late_for_ledger", "a row for an hour already written and let go",
                               count=dropped)
        self.metrics.add_cycle(cycle)
        if cycle.samples and self.metrics.showing:  # ready once a scrape shows figures, not only zeros
            self.health.last_cycle = time.time()

    def flush(self) -> None:
        """Write the minutes that have closed."""
        with self._lock:
            self._account()
            newest = self.metrics.last_sample_ts
            if newest is None:
                return
            self._write(lambda: self.book.flush(newest - 2 * self.default_interval))
            self._prune()

    def _prune(self) -> None:
        """Delete the rollups older than ``ledger_keep_days`` (by the ledger's clock), once an hour."""
        through = self.book.written_through
        if through is None or int(through // 3600) == self._pruned_hour:
            return
        self._pruned_hour = int(through // 3600)
        try:
            deleted = self.book.prune(self.settings.ledger_keep_days * 86400.0)
        except OSError as err:
            self.faults.record(COLLECTOR, "ledger_prune_failed", f"{err}")
            return
        if deleted:
            log.info("deleted %d ledger rollups older than %g days", deleted, self.settings.ledger_keep_days)

    def _write(self, action: Callable[[], int]) -> None:
        try:
            action()
        except OSError as err:
            self.faults.record(COLLECTOR, "ledger_write_failed", f"{err}")
        self.metrics.ledger_writes = self.book.files_written
        self.metrics.ledger_through = self.book.written_through

    def _finish_trace(self) -> None:
        self._finished = True
        self.health.trace_finished = True
        self.metrics.settle()
        if self.metrics.last_sample_ts is not None:
            self._write(lambda: self.book.flush_all(self.metrics.last_sample_ts))  # type: ignore[arg-type]
        self.ledger_final = True
        log.info("the trace has ended: %d samples attributed; %s", self.metrics.samples,
                 "stopping" if self.settings.exit_at_end else "serving the final figures until stopped")
        if self.settings.exit_at_end:
            self.stop.set()

    def refresh_prices(self) -> None:
        """Fetch expired prices again and have the next cycle use them."""
        with self._lock:
            self._account()  # what was sampled before the refresh is priced as it was
            if self._refresh is not None:
                failed = self._refresh()
                if failed:
                    log.debug("%d price lookups failed; the cached or snapshot prices stay in use", failed)
            self.prices_at = time.time()
            self.meter.invalidate_prices()

    def report(self) -> None:
        """Write the weekly report from this node's ledger, in a child process."""
        out = Path(self.settings.report_out) / datetime.now(timezone.utc).strftime("%Y-%m-%d")
        command = [sys.executable, "-m", "agent.cli", "report", "--ledger", self.settings.ledger_dir,
                   "--since", "7d", "--out", str(out)]
        if self.settings.rates:
            command += ["--rates", self.settings.rates]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            self.faults.record(COLLECTOR, "report_failed", said[-1] if said else f"exit {done.returncode}")
        else:
            log.info("weekly report written to %s", out)

    def shutdown(self) -> None:
        """Last cycle, then every row to disk, the minute in progress included."""
        with self._lock:
            if not self._finished:
                try:
                    if self.mode == "live":
                        self._pending += self.source.poll(time.time())
                except Exception as err:  # noqa: BLE001
                    self.faults.record(COLLECTOR, "source_failed", f"{type(err).__name__}: {err}")
                self._account()
                self.metrics.settle()
                if self.metrics.last_sample_ts is not None:
                    self._write(lambda: self.book.flush_all(self.metrics.last_sample_ts))  # type: ignore[arg-type]
            try:
                self.source.close()
            except Exception as err:  # noqa: BLE001
                self.faults.record(COLLECTOR, "close_failed", str(err))

    # ------------------------------------------------------------------ running

    def run(self, server: BoundedHTTPServer) -> None:
        """Start the jobs and serve until :attr:`stop` is set; then flush and return."""
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.cron import CronTrigger

        s = self.settings
        # the scheduler's warnings (runs skipped) say nothing a user can act on: Lag does
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(1), "report": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone="UTC",
        )
        flush_every = 60.0 / s.speed if self.mode == "dry-run" else 60.0
        scheduler.add_job(self.sample, "interval", seconds=s.interval, id="sample", next_run_time=datetime.now(timezone.utc))
        scheduler.add_job(self.flush, "interval", seconds=max(0.2, min(60.0, flush_every)), id="flush")
        scheduler.add_job(self.refresh_prices, "interval", seconds=s.price_refresh, id="prices")
        if s.report_out:
            scheduler.add_job(self.report, CronTrigger.from_crontab(s.report_schedule, timezone=s.report_timezone),
                              id="report", executor="report")
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED

        scheduler.add_listener(self.lag.skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
        thread.start()
        scheduler.start()
        try:
            while not self.stop.wait(0.5):
                pass
        finally:
            scheduler.shutdown(wait=True)
            self.shutdown()
            server.shutdown()
            server.server_close()


class Lag:
    """Job runs the scheduler skipped because the one worker was still busy, turned into
    a log line a user can act on (the scheduler's own warnings are not logged).

    A skipped run loses nothing (the next cycle takes what the skipped one would have),
    so a few skips (a slow first flush, a burst of pod changes) are not worth a line.
    The agent warns, at most once a minute, when within a minute at least
    ``MIN_SKIPPED`` runs were skipped and no fewer than the cycles that ran: sampling
    keeps up with half its schedule or less. The first cycle is exempt: after a restart it
    hands over the part of the trace the ledger already holds at once, by design."""

    WINDOW_S = 60.0
    MIN_SKIPPED = 10

    def __init__(self, mode: str, settings: AgentSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.mode = mode
        self.settings = settings
        self.clock = clock
        self.cycles = 0
        self.total_skipped = 0
        self._warned_at = -math.inf
        self._new_window()

    def _new_window(self) -> None:
        self.window_start = self.clock()
        self.skipped_runs = 0
        self.window_cycles = 0
        self.since: float | None = None  # wall time of the window's first skipped run
        self.slowest = 0.0

    def skipped(self, event: Any = None) -> None:
        """Scheduler listener: a run was skipped (the previous one, or another job, still going)."""
        if self.cycles == 0:
            return
        self.skipped_runs += 1
        self.total_skipped += 1
        if self.since is None:
            self.since = time.time()

    def cycle_done(self, seconds: float) -> None:
        self.cycles += 1
        if self.cycles == 1:
            self._new_window()
            return
        self.window_cycles += 1
        self.slowest = max(self.slowest, seconds)
        now = self.clock()
        behind = self.skipped_runs >= self.MIN_SKIPPED and self.skipped_runs >= self.window_cycles
        if behind and now - self._warned_at >= self.WINDOW_S:
            self._warned_at = now
            log.warning(self.message())
            self._new_window()
        elif now - self.window_start >= self.WINDOW_S:
            self._new_window()

    def message(self) -> str:
        interval = self.settings.interval
        since = logs.iso(self.since) if self.since is not None else "start"
        what = (f"the agent is behind: {self.skipped_runs} scheduled runs skipped and {self.window_cycles} taken "
                f"since {since}, as a sample cycle takes up to {self.slowest:.2f} s and the interval is "
                f"{interval:g} s; ")
        if self.mode == "dry-run":
            return what + (f"the trace plays slower than --speed {self.settings.speed:g}: lower --speed or "
                           "raise --interval")
        return what + "samples are taken less often than asked: raise --interval"


_DROPPED = {
    "sample_undescribed": "a sample of a device no devices record lists yet; dropped",
    "sample_late": "a sample older than the meter's horizon; dropped",
    "sample_overlap": "a sample covering time an earlier sample of its device covered (a repeated record); dropped",
}


def _held(resume: Mapping[str, Resume]) -> str:
    """'gpu-node-0001 and gpu-node-0002 through 2025-11-25T06:41:00Z, ...': what a ledger holds, per node."""
    by_time: dict[float, list[str]] = {}
    for node, r in sorted(resume.items()):
        ends = [t for t in (None if r.minutes_through is None else r.minutes_through + 60, r.samples_through)
                if t is not None]
        by_time.setdefault(max(ends), []).append(node)
    return "; ".join(f"{', '.join(nodes)} through {logs.iso(t)}" for t, nodes in sorted(by_time.items()))


def ledger_endpoint(agent: Agent):
    """The read-only ledger endpoint (``/ledger``, :mod:`agent.ledgerserve`) of the agent's rollups."""
    from agent.ledgerserve import LedgerEndpoint, TokenFile

    book = agent.book

    def closed_before() -> float:
        if agent.ledger_final:
            return math.inf
        through = book.written_through
        return -math.inf if through is None else through - book.keep_s

    token = TokenFile(agent.settings.ledger_token_file) if agent.settings.ledger_token_file else None
    return LedgerEndpoint(book.directory, closed_before, token)


def http_server(agent: Agent, host: str, port: int) -> BoundedHTTPServer:
    """The server for /metrics, /healthz, /readyz and /ledger, GET and HEAD (OSError when
    the address is taken); see :mod:`agent.httpserver` for how it bounds its threads."""
    from agent.exposition import Exposition

    metrics = Exposition(agent.metrics)
    ledger = ledger_endpoint(agent)

    class Handler(BaseHTTPRequestHandler):
        timeout = READ_TIMEOUT_S  # a client that stalls mid-request or mid-answer is let go

        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            self._reply(*self._answer())

        def do_HEAD(self) -> None:  # noqa: N802
            self._reply(*self._answer(), body_wanted=False)

        def _answer(self) -> tuple[int, bytes, str]:
            path = self.path.split("?", 1)[0]
            text = "text/plain; charset=utf-8"
            if path == "/metrics":
                body, content_type = metrics.answer(self.headers.get("Accept", ""))
                return 200, body, content_type
            if path == "/healthz":
                return 200, b"ok\n", text
            if path == "/readyz":
                ok, why = agent.health.ready(time.time())
                return (200 if ok else 503), (why + "\n").encode(), text
            if path == "/ledger" or path.startswith("/ledger/"):
                return ledger.answer(self.path, self.headers)
            return 404, b"not found: try /metrics, /healthz, /readyz or /ledger\n", text

        def _reply(self, code: int, body: bytes, content_type: str, body_wanted: bool = True) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body_wanted:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            log.debug("http: " + format, *args)

    return BoundedHTTPServer((host, port), Handler)
