"""Whose ledger a dry-run continues: its own directory by default, the same trace only,
afresh when asked; and what the agent logs about it (ISO times, nothing from the
scheduler that a user cannot act on)."""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from agent.config import Config
from agent.replay import replay
from agent.rollups import read_rollup
from collectors.pricing.ratecard import RateCardPricer, load_snapshot
from collectors.simulator import simulate
from tests.agentrun import (
    assert_same_ledger, get, keyed, reference, rollup_rows, run_agent, small_trace, start_agent, stop, wait_for,
)

pytestmark = pytest.mark.slow  # drives real processes or servers; see README "Fast loop"

__all__ = ["reference", "small_trace"]  # fixtures

FAST = ("--speed", "5000", "--interval", "100ms")


@pytest.fixture(scope="module")
def other_trace(tmp_path_factory) -> Path:
    """Another cluster (seed 2, one hour) over the same node names and start time as small_trace."""
    path = tmp_path_factory.mktemp("other-trace") / "other.jsonl.gz"
    simulate(path, seed=2, hours=1.0, interval_s=10.0)
    return path


@pytest.fixture(scope="module")
def other_reference(other_trace) -> dict:
    result = replay([other_trace], RateCardPricer(load_snapshot()), Config())
    rows = result.table.to_pylist()
    for row in rows:
        row["minute"] = int(row["minute"].timestamp())
    return {"rows": keyed(rows), "summary": result.summary}


def _cost_by_team(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(get(port, "/metrics")[1]):
        for sample in family.samples:
            if sample.name == "gpuledger_gpu_cost_total":
                out[sample.labels["team"]] += sample.value
    return dict(out)


def _serve_to_the_end(trace: Path, env: dict[str, str]) -> tuple[dict[str, float], str]:
    """Run a dry-run without --ledger-dir until its trace ends; its cost by team, its log."""
    proc, port = start_agent(trace, None, *FAST, "--log-level", "info", env=env)
    try:
        wait_for(lambda: get(port, "/readyz")[1].startswith("the trace has ended"), 60, "the end of the trace", proc)
        costs = _cost_by_team(port)
    finally:
        assert stop(proc) == 0
    return costs, proc.stderr.read()


def test_two_dry_runs_of_different_traces_each_serve_their_own_figures(
        small_trace, reference, other_trace, other_reference, tmp_path):
    """Without --ledger-dir, each dry-run keeps its ledger in a directory of its own: the
    second does not resume after the first's ledger (which served zeros)."""
    env = {"TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    for trace, ref in ((small_trace, reference), (other_trace, other_reference)):
        costs, log = _serve_to_the_end(trace, env)
        want = {t["team"]: t["cost"] for t in ref["summary"]["teams"]}
        assert costs.keys() == want.keys(), log
        for team, cost in want.items():
            assert math.isclose(costs[team], cost, rel_tol=1e-9), (trace.name, team)
    ledgers = sorted((tmp_path / "tmp").iterdir())
    assert len(ledgers) == 2 and all(p.name.startswith("gpuledger-dry-run-") for p in ledgers)
    got = [keyed(rollup_rows(p)) for p in ledgers]
    want_rows = [reference["rows"], other_reference["rows"]]
    # which directory is whose: the headers name the trace
    names = [read_rollup(next(p.rglob("*.jsonl.gz")))[0]["trace"]["name"] for p in ledgers]
    for rows, name in zip(got, names):
        assert_same_ledger(rows, want_rows[0] if name == small_trace.name else want_rows[1])


def test_another_trace_on_the_same_ledger_dir_is_refused_unless_asked_to_start_afresh(
        small_trace, other_trace, other_reference, tmp_path):
    ledger = tmp_path / "ledger"
    assert run_agent(small_trace, ledger, *FAST, "--exit-at-end").returncode == 0
    headers = [read_rollup(p)[0] for p in sorted(ledger.rglob("*.jsonl.gz"))]
    assert {h["trace"]["name"] for h in headers} == {small_trace.name}
    assert all(len(h["trace"]["sha256"]) == 64 for h in headers)
    before = {p: p.read_bytes() for p in ledger.rglob("*") if p.is_file()}

    done = run_agent(other_trace, ledger, *FAST, "--exit-at-end")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"gpuledger: error: {ledger}: field '--ledger-dir': holds the ledger of the trace "
                           f"{small_trace.name}, not of {other_trace.name}")
    assert "--fresh-ledger" in line
    assert {p: p.read_bytes() for p in ledger.rglob("*") if p.is_file()} == before, "nothing written"

    done = run_agent(other_trace, ledger, *FAST, "--exit-at-end", "--fresh-ledger")
    assert done.returncode == 0, done.stderr
    assert_same_ledger(keyed(rollup_rows(ledger)), other_reference["rows"])


def test_a_live_agent_refuses_a_dry_runs_ledger(small_trace, tmp_path):
    import subprocess
    import sys

    ledger = tmp_path / "ledger"
    assert run_agent(small_trace, ledger, *FAST, "--exit-at-end").returncode == 0
    done = subprocess.run([sys.executable, "-m", "agent.cli", "agent", "--ledger-dir", str(ledger),
                           "--kubernetes", "off", "--listen", "127.0.0.1:0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"holds the ledger of a dry-run of {small_trace.name}, not of this live agent" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_same_trace_under_another_name_resumes(small_trace, reference, tmp_path):
    """The trace is known by its bytes: a copy continues the ledger (and finishes it exactly)."""
    ledger = tmp_path / "ledger"
    proc, _ = start_agent(small_trace, ledger, "--speed", "600", "--interval", "100ms")
    wait_for(lambda: any(read_rollup(p)[0]["minutes_through"] for p in ledger.rglob("*.jsonl.gz")),
             30, "a flushed minute", proc)
    assert stop(proc) == 0
    copy = tmp_path / "renamed.jsonl.gz"
    copy.write_bytes(small_trace.read_bytes())
    done = run_agent(copy, ledger, *FAST, "--exit-at-end")
    assert done.returncode == 0, done.stderr
    assert_same_ledger(keyed(rollup_rows(ledger)), reference["rows"])


def test_a_restart_logs_what_the_ledger_holds_in_iso_times_and_no_scheduler_warnings(small_trace, tmp_path):
    ledger = tmp_path / "ledger"
    proc, _ = start_agent(small_trace, ledger, "--speed", "600", "--interval", "100ms")
    wait_for(lambda: any((read_rollup(p)[0]["minutes_through"] or 0) >= 1764046800 + 30 * 60
                         for p in ledger.rglob("*.jsonl.gz")), 30, "30 minutes in the ledger", proc)
    assert stop(proc) == 0
    # the catch-up of the first cycle takes longer than the 50 ms interval
    done = run_agent(small_trace, ledger, "--speed", "5000", "--interval", "50ms", "--exit-at-end",
                     "--log-level", "info")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z"
    # On a loaded machine every 50 ms cycle can run long; the agent's own "behind" warning is
    # then the right output. APScheduler's per-run warnings never are.
    ours = [line for line in lines if "the agent is behind" not in line]
    assert all(re.match(iso + " gpuledger: INFO: ", line) for line in ours), lines
    assert all(re.match(iso + " gpuledger: WARNING: the agent is behind: ", line)
               for line in lines if line not in ours), lines
    (resumed,) = [line for line in lines if "continuing the ledger" in line]
    assert re.search(r"gpu-node-0001, gpu-node-0002, gpu-node-0003, gpu-node-0004 through " + iso, resumed), resumed
    assert not any(re.search(r"\b1\d{9}\b", line) for line in lines), "no Unix seconds in the log"
    assert not any("maximum number of running instances" in line or "apscheduler" in line.lower()
                   for line in lines), lines


class _SlowSource:
    """A source whose every poll takes longer than the agent's interval."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def poll(self, now: float) -> list:
        time.sleep(self.seconds)
        return []

    def close(self) -> None:
        pass


@pytest.mark.parametrize("mode, action", [("live", "raise --interval"),
                                          ("dry-run", "lower --speed or raise --interval")])
def test_sampling_that_cannot_keep_up_is_one_actionable_warning(tmp_path, caplog, mode, action):
    """A real APScheduler skips runs while the one worker is busy: the agent says so once,
    with the interval, the cycle time and what to change."""
    import argparse

    from agent import agent_settings
    from agent.daemon import Agent, http_server
    from agent.rollups import RollupBook
    from collectors.faults import FaultCounter
    from collectors.pricing.chain import PriceChain

    settings = agent_settings.resolve(argparse.Namespace(**{s.name: None for s in agent_settings.SETTINGS}), {
        "GPULEDGER_LEDGER_DIR": str(tmp_path / "ledger"), "GPULEDGER_INTERVAL": "50ms",
        "GPULEDGER_SPEED": "900"})
    chain = PriceChain()
    agent = Agent(settings, Config(), chain, _SlowSource(0.3), 0.05, FaultCounter(), mode, "test",
                  RollupBook(tmp_path / "ledger", chain.currency), {})
    server = http_server(agent, "127.0.0.1", 0)
    threading.Timer(2.0, agent.stop.set).start()
    with caplog.at_level(logging.WARNING, logger="gpuledger.agent"):
        agent.run(server)
    assert not [r for r in caplog.records if r.name.startswith("apscheduler")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # at most one a minute
    assert warnings[0].startswith("the agent is behind: ")
    assert re.search(r"scheduled runs skipped and \d+ taken since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", warnings[0]), warnings[0]
    assert "the interval is 0.05 s" in warnings[0] and warnings[0].endswith(action)
