"""``gpuledger gather --every DURATION``: the gather as a long-running loop, with /metrics.

Every DURATION (start to start; a gather that takes longer is followed by the next one at
once) it runs the same gather as a single ``gpuledger gather``. Nothing ends the loop but
SIGTERM or SIGINT (after the gather in progress): an agent that fails is counted and
retried next time, and so is a gather that failed as a whole (the API server or the
dataset's store unreachable, a checkpoint damaged meanwhile). Each agent's failure is
logged once when it starts failing, with its reason, and once when it answers again, so a
node that is down for a day writes two lines, not one per run.

``/metrics`` (prometheus-client's text format) on ``--listen``, and ``/healthz``:

==========================================  =====================================================
``gpuledger_gather_runs_total``             gathers done (counter)
``gpuledger_gather_run_failures_total``     gathers that failed as a whole (counter)
``gpuledger_gather_node_hours_total``       node-hours gathered (counter)
``gpuledger_gather_rows_total``             ledger rows gathered (counter)
``gpuledger_gather_files_written_total``    node-day files written (counter)
``gpuledger_gather_agent_failures_total``   agent pulls that failed (counter)
``gpuledger_gather_agents``                 agents found by the last gather (gauge)
``gpuledger_gather_agents_failing``         agents that failed in the last gather (gauge)
``gpuledger_gather_last_run_seconds``       how long the last gather took (gauge)
``gpuledger_gather_last_success_timestamp_seconds``  when the last gather that was not a failure ended
==========================================  =====================================================
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable

from collectors.errors import InputError, Unavailable

log = logging.getLogger("gpuledger.gather")

COUNTERS = {
    "runs": "Gathers done.",
    "run_failures": "Gathers that failed as a whole (API server or dataset store unreachable, damaged checkpoint).",
    "node_hours": "Node-hours of ledger rollups gathered.",
    "rows": "Ledger rows gathered.",
    "files_written": "Node-day Parquet files written (each replaced whole).",
    "agent_failures": "Agent pulls that failed (unreachable, an HTTP error, a damaged rollup); retried next gather.",
}
GAUGES = {
    "agents": "Agents found by the last gather.",
    "agents_failing": "Agents that failed in the last gather.",
    "last_run_seconds": "How long the last gather took, in seconds.",
    "last_success_timestamp_seconds": "When the last gather that did not fail as a whole ended (Unix seconds).",
}


class GatherMetrics:
    """The loop's numbers, as prometheus-client calls for them on a scrape."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values = {name: 0.0 for name in (*COUNTERS, *GAUGES)}

    def record(self, added: dict[str, float], values: dict[str, float]) -> None:
        """One gather's numbers, at once (a scrape never sees half of them)."""
        with self.lock:
            for name, amount in added.items():
                self.values[name] += amount
            self.values.update(values)

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self.lock:
            values = dict(self.values)
        for name, text in COUNTERS.items():
            yield CounterMetricFamily(f"gpuledger_gather_{name}", text, value=values[name])
        for name, text in GAUGES.items():
            yield GaugeMetricFamily(f"gpuledger_gather_{name}", text, value=values[name])


def serve_metrics(metrics: GatherMetrics, host: str, port: int):
    """``/metrics`` and ``/healthz`` on the agent's bounded HTTP server (OSError when the address is taken)."""
    from prometheus_client import CollectorRegistry, ProcessCollector
    from prometheus_client.exposition import choose_encoder

    from agent.httpserver import READ_TIMEOUT_S, BoundedHTTPServer

    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    ProcessCollector(registry=registry)

    class Handler(BaseHTTPRequestHandler):
        timeout = READ_TIMEOUT_S

        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, kind = choose_encoder(self.headers.get("Accept", ""))
                code, body = 200, encoder(registry)
            elif path == "/healthz":
                code, body, kind = 200, b"ok\n", "text/plain; charset=utf-8"
            else:
                code, body, kind = 404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8"
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("http: " + format, *args)

    server = BoundedHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def run_every(args: argparse.Namespace, gather: Callable[[], Any], stop: threading.Event | None = None) -> int:
    """Gather every ``args.every`` seconds until SIGTERM/SIGINT (or ``stop``); 0 when ended so."""
    from agent import logs

    logs.setup("info")
    stop = stop or threading.Event()
    metrics = GatherMetrics()
    try:
        server = serve_metrics(metrics, *args.listen)
    except OSError as err:
        raise InputError(f"cannot listen on {args.listen[0]}:{args.listen[1]}: {err.strerror or err}",
                         field="--listen") from None
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    failing: dict[str, str] = {}  # agent -> the reason logged
    log.info("gathering into %s every %gs; /metrics on %s:%d", args.out, args.every, *server.server_address[:2])
    try:
        while not stop.is_set():
            began = time.monotonic()
            try:
                done = gather()
            except Exception as err:  # noqa: BLE001 - the loop outlives any one gather
                metrics.record({"runs": 1, "run_failures": 1}, {"last_run_seconds": time.monotonic() - began})
                expected = isinstance(err, (Unavailable, InputError, OSError))
                log.warning("gather failed, retried in %gs: %s", args.every,
                            (str(err).splitlines() or [type(err).__name__])[0][:300], exc_info=not expected)
            else:
                down = {r.agent: r.failed for r in done.down}
                metrics.record(
                    {"runs": 1, "agent_failures": len(down), "node_hours": sum(r.hours for r in done.results),
                     "rows": sum(r.rows for r in done.results), "files_written": sum(r.files for r in done.results)},
                    {"agents": done.agents, "agents_failing": len(down), "last_run_seconds": time.monotonic() - began,
                     "last_success_timestamp_seconds": time.time()})
                for agent, why in sorted(down.items()):
                    if agent not in failing:
                        log.warning("agent %s failed, retried every %gs (logged again when it answers): %s",
                                    agent, args.every, why)
                present = {r.agent for r in done.results}
                for agent in sorted(set(failing) - set(down)):
                    log.info("agent %s %s", agent, "answers again" if agent in present else "is no longer listed")
                failing = down
                log.info("%s", done.line(args.out))
            stop.wait(max(0.0, args.every - (time.monotonic() - began)))
    finally:
        server.shutdown()
        server.server_close()
    log.info("gather loop stopped")
    return 0
