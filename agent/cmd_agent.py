"""``gpuledger agent``: the command line of the node process (see :mod:`agent.daemon`).

Wired into ``agent/cli.py`` by ``cmd_agent.register(sub)``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from dataclasses import replace

from agent import agent_settings, logs
from agent.agent_settings import AgentSettings
from collectors.errors import InputError

log = logging.getLogger("gpuledger.agent")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``agent`` command to ``subparsers``."""
    p = subparsers.add_parser(
        "agent",
        help="run the node agent: sample GPUs, attribute cost, serve /metrics, write the ledger",
        description="The long-running node process (a DaemonSet on every GPU node): samples every GPU "
        "through NVML, learns which pod holds which GPU from the kubelet and the API server, prices and "
        "attributes every GPU-second as `gpuledger replay` does, serves per-team cost metrics on "
        "/metrics (docs/metrics.md) with /healthz and /readyz, and writes minute ledger rollups. "
        "With --dry-run --trace FILE it runs the same process on a recorded trace: no GPU, no cluster. "
        "Every flag can also be set in the environment or in the --config file's `agent:` section "
        "(docs/agent.md). SIGTERM writes the minute in progress and exits.",
    )
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML: team and workload-class rules (docs/configuration.md) and an `agent:` "
                   "section with any of the settings below. Env GPULEDGER_CONFIG.")
    agent_settings.add_flags(p)
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    import os

    from agent.config import load_config

    config_path = args.config or os.environ.get("GPULEDGER_CONFIG") or None
    settings = agent_settings.resolve(args, config_path=config_path)
    logs.setup(settings.log_level)
    config = load_config(config_path)
    agent = build(settings, config)
    host, port = settings.listen
    from agent.daemon import http_server

    try:
        server = http_server(agent, host, port)
    except OSError as err:
        agent.source.close()
        _forget_own_ledger_dir(agent.book)
        raise InputError(f"cannot listen on {host}:{port}: {err.strerror}", field="--listen") from None
    _on_signals(agent.stop)
    log.info("%s agent for %s: /metrics on %s:%d, ledger in %s", agent.mode, settings.node, host,
             server.server_address[1], agent.settings.ledger_dir)
    agent.run(server)
    log.info("stopped: %d samples attributed, %d ledger minutes written", agent.metrics.samples,
             agent.book.minutes_written)
    return 0


def build(settings: AgentSettings, config):
    """The agent with its sources and prices; InputError for anything the user must fix."""
    from agent.cli import version
    from agent.daemon import Agent
    from agent.live import agent_price_chain, sample_source
    from collectors.faults import FAULTS

    chain = agent_price_chain(settings)
    refresh = chain.cache.refresh_expired if chain.apis else None
    mode = "dry-run" if settings.dry_run else "live"
    common = dict(refresh_prices=refresh, price_faults=lambda: chain.cache.faults)
    if settings.dry_run:
        from agent.tracesource import TraceSource, trace_identity

        source = TraceSource(settings.trace, speed=settings.speed)
        try:
            settings, book = _ledger_book(settings, chain.currency, trace_identity(settings.trace))
            resume = book.restore()
        except BaseException:
            source.close()
            raise
        source.skip_to(_resume_point(resume))
        return Agent(settings, config, chain, source, source.interval, FAULTS, mode, version(), book, resume,
                     **common)
    settings, book = _ledger_book(settings, chain.currency, None)
    resume = book.restore()
    source, placement = sample_source(settings)
    return Agent(settings, config, chain, source, settings.interval, FAULTS, mode, version(), book, resume,
                 needs_placement=placement, **common)


def _ledger_book(settings: AgentSettings, currency: str, trace: dict | None):
    """The settings and the rollup book in ``--ledger-dir``; a dry-run without one gets a
    new directory of its own (a ledger left by another run must not be taken for this one's)."""
    import tempfile

    from agent.rollups import RollupBook

    own = settings.ledger_dir is None
    if own:
        settings = replace(settings, ledger_dir=tempfile.mkdtemp(prefix="gpuledger-dry-run-"))
        log.info("the ledger of this dry-run goes to %s (give --ledger-dir to keep one you can resume)",
                 settings.ledger_dir)
    book = RollupBook(settings.ledger_dir, currency, trace=trace)
    book.made_for_this_run = own
    if settings.fresh_ledger:
        deleted = book.clear()
        if deleted:
            log.info("--fresh-ledger: deleted the %d rollup files in %s", deleted, settings.ledger_dir)
    return settings, book


def _forget_own_ledger_dir(book) -> None:
    """Remove the dry-run's own ledger directory when the agent stops before writing to it."""
    if getattr(book, "made_for_this_run", False):
        try:
            book.directory.rmdir()  # only when empty
        except OSError:
            pass


def _resume_point(resume) -> float | None:
    """Where a restarted dry-run picks the trace up: the earliest point any node stopped.
    Records before it are still handed over at once (the state records are needed); the
    meter skips the samples the ledger already holds."""
    points = []
    for r in resume.values():
        through = [p for p in (r.minutes_through + 60 if r.minutes_through is not None else None,
                               r.samples_through) if p is not None]
        if through:
            points.append(max(through))
    return min(points) if points else None


def _on_signals(stop: threading.Event) -> None:
    def handler(signum, _frame) -> None:
        log.info("%s: writing the ledger and stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)

