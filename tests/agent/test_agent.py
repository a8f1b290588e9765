"""`gpuledger agent --dry-run` as a real process: its ledger, its restarts, its endpoints.

The reference for every figure is replay of the same trace (itself checked by hand and
against a second implementation in test_cost_model / test_reference_model).
"""

from __future__ import annotations

import math
import signal
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.rollups import read_rollup
from tests.systemtools import require_tool
from tests.agentrun import (
    agent_command, assert_same_ledger, get, keyed, reference, rollup_rows, run_agent, small_trace, start_agent, stop,
    wait_for,
)

pytestmark = pytest.mark.slow  # drives real processes or servers; see README "Fast loop"

__all__ = ["reference", "small_trace"]  # fixtures

FAST = ("--speed", "5000", "--interval", "100ms")


def _headers(ledger: Path) -> list[dict]:
    return [read_rollup(p)[0] for p in sorted(ledger.rglob("*.jsonl.gz"))]


@pytest.fixture(scope="module")
def agent_ledger(small_trace, tmp_path_factory) -> Path:
    """The ledger directory of one whole dry-run of the small trace."""
    ledger = tmp_path_factory.mktemp("agent") / "ledger"
    done = run_agent(small_trace, ledger, *FAST, "--exit-at-end")
    assert done.returncode == 0, done.stderr
    return ledger


def test_dry_run_writes_replays_ledger(agent_ledger, reference):
    rows = rollup_rows(agent_ledger)
    assert_same_ledger(keyed(rows), reference["rows"])
    # one file per node and hour, named for them
    files = sorted(p.relative_to(agent_ledger).as_posix() for p in agent_ledger.rglob("*.gz"))
    assert files == [f"gpu-node-000{n}/2025-11-25/{h}.jsonl.gz" for n in range(1, 5) for h in ("05", "06")]
    totals = reference["summary"]["totals"]
    for column in ("allocated_gpu_seconds", "unallocated_gpu_seconds", "cost", "unallocated_cost"):
        assert math.isclose(sum(r[column] for r in rows), totals[column], rel_tol=1e-9)


def test_sigkill_then_restart_loses_no_minute_and_counts_none_twice(small_trace, reference, tmp_path):
    ledger = tmp_path / "ledger"
    proc, _ = start_agent(small_trace, ledger, "--speed", "600", "--interval", "100ms")
    start = 1764046800  # the simulated trace's first minute
    try:
        wait_for(lambda: any((h["minutes_through"] or 0) >= start + 40 * 60 for h in _headers(ledger)),
                 30, "40 minutes in the ledger", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    before = rollup_rows(ledger)
    assert before and len(before) < len(reference["rows"]), "killed mid-run: part of the ledger written"
    assert all(h["samples_through"] is None for h in _headers(ledger)), "a kill writes no partial minute"
    done = run_agent(small_trace, ledger, *FAST, "--exit-at-end")
    assert done.returncode == 0, done.stderr
    assert_same_ledger(keyed(rollup_rows(ledger)), reference["rows"])


def test_sigterm_writes_the_minute_in_progress_and_a_restart_completes_it(small_trace, reference, tmp_path):
    ledger = tmp_path / "ledger"
    proc, _ = start_agent(small_trace, ledger, "--speed", "600", "--interval", "100ms")
    wait_for(lambda: any(h["minutes_through"] for h in _headers(ledger)), 30, "a flushed minute", proc)
    assert stop(proc, signal.SIGTERM, timeout=5) == 0
    headers = _headers(ledger)
    through = [h["samples_through"] for h in headers if h["samples_through"] is not None]
    assert through, "SIGTERM records up to which sample the files hold"
    partial = max(through)
    rows = rollup_rows(ledger)
    # The minute in progress is written, with fewer samples than it will have in the end.
    minute = int(partial // 60 * 60) if partial % 60 >= 5 else int(partial // 60 * 60) - 60
    got = sum(r["samples"] for r in rows if r["minute"] == minute)
    want = sum(r["samples"] for r in reference["rows"].values() if r["minute"] == minute)
    assert 0 < got <= want
    done = run_agent(small_trace, ledger, *FAST, "--exit-at-end")
    assert done.returncode == 0, done.stderr
    assert_same_ledger(keyed(rollup_rows(ledger)), reference["rows"])


def _families(text: str) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name].append(sample)
    return out


def test_metrics_health_and_readiness(small_trace, reference, tmp_path):
    proc, port = start_agent(small_trace, tmp_path / "ledger", *FAST)
    try:
        wait_for(lambda: get(port, "/healthz")[0] == 200, 20, "/healthz", proc)
        last = 1764046800 + 90 * 60  # the trace's last sample

        def finished() -> bool:
            metrics = _families(get(port, "/metrics")[1])
            return bool(metrics["gpuledger_last_sample_timestamp_seconds"]) and \
                metrics["gpuledger_last_sample_timestamp_seconds"][0].value == last

        wait_for(finished, 30, "the end of the trace", proc)
        assert get(port, "/readyz")[0] == 200
        assert get(port, "/nope")[0] == 404
        status, text = get(port, "/metrics")
        assert status == 200
        metrics = _families(text)
        summary = reference["summary"]
        cost = metrics["gpuledger_gpu_cost_total"]
        assert math.isclose(sum(s.value for s in cost), summary["totals"]["cost"], rel_tol=1e-9)
        by_team: dict[str, float] = defaultdict(float)
        for s in cost:
            by_team[s.labels["team"]] += s.value
        assert {t["team"]: t["cost"] for t in summary["teams"]}.keys() == by_team.keys()
        for team in summary["teams"]:
            assert math.isclose(by_team[team["team"]], team["cost"], rel_tol=1e-9), team["team"]
        for name, column in (("gpuledger_gpu_allocated_seconds_total", "allocated_gpu_seconds"),
                             ("gpuledger_gpu_used_seconds_total", "used_gpu_seconds"),
                             ("gpuledger_gpu_idle_cost_total", "idle_cost"),
                             ("gpuledger_gpu_unallocated_seconds_total", "unallocated_gpu_seconds"),
                             ("gpuledger_gpu_unallocated_cost_total", "unallocated_cost")):
            assert math.isclose(sum(s.value for s in metrics[name]), summary["totals"][column], rel_tol=1e-9), name
        for name, samples in metrics.items():
            if name.endswith("_total") and name.startswith("gpuledger_gpu_"):
                assert all("pod" not in s.labels and "uuid" not in s.labels for s in samples), name
        workloads = {s.labels["workload"] for s in cost}
        assert all("/" in w for w in workloads)
        prices = metrics["gpuledger_gpu_hourly_price"]
        assert {s.labels["currency"] for s in prices} == {"USD"}
        assert {s.labels["node"] for s in prices} == {f"gpu-node-000{n}" for n in range(1, 5)}
        assert {s.labels["region"] for s in prices} == {"us-east-1"}  # the simulated nodes' region label
        samples_in_trace = _samples_in(small_trace)
        assert metrics["gpuledger_samples_total"][0].value == samples_in_trace
        util = metrics["gpuledger_gpu_utilization_ratio"]
        assert util and all(0 <= s.value <= 1 for s in util)
        assert metrics["gpuledger_build_info"][0].labels["mode"] == "dry-run"
        promtool = require_tool("promtool", "prometheus")
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        assert stop(proc, timeout=10) == 0


def _samples_in(trace: Path) -> int:
    from collectors.records import Sample
    from collectors.tracefile import iter_records

    return sum(1 for _, r in iter_records(trace) if isinstance(r, Sample))


@pytest.mark.parametrize("args, env, config, message", [
    (["--dry-run"], {}, None, "field '--trace': --dry-run needs --trace FILE"),
    (["--trace", "x.jsonl"], {}, None, "field '--trace': --trace is for --dry-run"),
    (["--interval", "soon"], {}, None, "field '--interval': "),
    ([], {"GPULEDGER_INTERVAL": "10ms"}, None, "field 'GPULEDGER_INTERVAL': expected at least 0.05 s"),
    (["--account-every", "5m"], {}, None, "field '--account-every': expected at most 120 s, got '5m'"),
    ([], {"GPULEDGER_LISTEN": "9400"}, None, "field 'GPULEDGER_LISTEN': expected HOST:PORT"),
    ([], {}, "agent:\n  speed: -2\n", "config.yaml:2: field 'agent.speed': expected a speed above 0"),
    ([], {}, "team_labels: [team]\nagent:\n  sped: 2\n", "config.yaml:3: field 'agent.sped': unknown agent setting"),
    ([], {}, "agent:\n  report_schedule: every monday\n", "expected a cron expression"),
    ([], {}, "agent:\n  report_timezone: Mars/Olympus\n", "expected an IANA time zone"),
])
def test_bad_settings_exit_2_naming_where(tmp_path, args, env, config, message):
    import os
    import sys

    command = [sys.executable, "-m", "agent.cli", "agent", "--ledger-dir", str(tmp_path / "ledger"), *args]
    if config is not None:
        (tmp_path / "config.yaml").write_text(config)
        command += ["--config", str(tmp_path / "config.yaml")]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GPULEDGER_")}
    done = subprocess.run(command, capture_output=True, text=True, env={**environ, **env}, timeout=30,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ledger").exists()


def test_a_taken_port_is_a_clear_error(small_trace, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = subprocess.run(
            agent_command(small_trace, tmp_path / "l", port),
            capture_output=True, text=True, timeout=30, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2
    assert f"field '--listen': cannot listen on 127.0.0.1:{port}" in done.stderr


def test_weekly_report_from_the_agents_ledger_is_replays(agent_ledger, small_trace, tmp_path):
    """`report --ledger DIR` on the agent's rollups gives the report of replay's ledger.parquet."""
    import sys

    root = Path(__file__).resolve().parents[2]

    def cli(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True,
                              timeout=120, cwd=root)
        assert done.returncode == 0, done.stderr

    cli("replay", str(small_trace), "--out", str(tmp_path / "replay"))
    cli("report", "--ledger", str(agent_ledger), "--out", str(tmp_path / "from-agent"))
    cli("report", "--ledger", str(tmp_path / "replay" / "ledger.parquet"), "--out", str(tmp_path / "from-replay"))
    for name in ("report.md", "recommendations.json", "report.html"):
        assert (tmp_path / "from-agent" / name).read_text() == (tmp_path / "from-replay" / name).read_text(), name
    focus = [sorted((tmp_path / d / "focus.csv").read_text().splitlines()) for d in ("from-agent", "from-replay")]
    assert focus[0] == focus[1] and len(focus[0]) > 1


def test_the_report_job_writes_the_weekly_report_from_the_ledger(agent_ledger, small_trace, tmp_path):
    """The scheduled job, run once by hand: the child process writes the five files."""
    import argparse

    from agent import agent_settings
    from agent.cmd_agent import build
    from agent.config import Config

    args = argparse.Namespace(**{s.name: None for s in agent_settings.SETTINGS})
    settings = agent_settings.resolve(args, {
        "GPULEDGER_DRY_RUN": "true", "GPULEDGER_TRACE": str(small_trace),
        "GPULEDGER_LEDGER_DIR": str(agent_ledger), "GPULEDGER_REPORT_OUT": str(tmp_path / "reports")})
    agent = build(settings, Config())
    try:
        agent.report()
    finally:
        agent.source.close()
    (day,) = list((tmp_path / "reports").iterdir())
    assert sorted(p.name for p in day.iterdir()) == sorted(
        ["report.md", "report.html", "recommendations.json", "recommendations.csv", "focus.csv"])
    assert not agent.faults.count("agent", "report_failed")



def test_an_unreachable_price_api_is_counted_and_the_snapshot_prices(small_trace, tmp_path):
    """The AWS Price List API down (connection refused): the agent keeps attributing with
    the snapshot's prices and counts the failures in gpuledger_collector_errors_total."""
    import argparse

    import boto3
    from botocore.config import Config as BotoConfig
    from prometheus_client import CollectorRegistry, generate_latest

    from agent import agent_settings
    from agent.config import Config
    from agent.daemon import Agent
    from agent.rollups import RollupBook
    from agent.tracesource import TraceSource
    from collectors.faults import FaultCounter
    from collectors.pricing.aws import AwsPrices
    from collectors.pricing.chain import PriceChain

    down = boto3.client("pricing", region_name="us-east-1", endpoint_url="http://127.0.0.1:9",
                        aws_access_key_id="x", aws_secret_access_key="x",
                        config=BotoConfig(retries={"max_attempts": 1}, connect_timeout=1))
    chain = PriceChain(apis={"aws": AwsPrices(pricing=down)})
    settings = agent_settings.resolve(argparse.Namespace(**{s.name: None for s in agent_settings.SETTINGS}),
                                      {"GPULEDGER_LEDGER_DIR": str(tmp_path / "ledger")})
    source = TraceSource(small_trace, speed=1e6)
    book = RollupBook(settings.ledger_dir, chain.currency)
    agent = Agent(settings, Config(), chain, source, source.interval, FaultCounter(), "dry-run", "test",
                  book, book.restore(), refresh_prices=chain.cache.refresh_expired, price_faults=lambda: chain.cache.faults)
    agent.sample()
    agent.refresh_prices()
    agent.sample()
    agent.shutdown()
    registry = CollectorRegistry()
    registry.register(agent.metrics)
    text = generate_latest(registry).decode()
    failed = [line for line in text.splitlines()
              if line.startswith('gpuledger_collector_errors_total{collector="pricing",reason="aws-api_failed"}')]
    assert failed and float(failed[0].split()[-1]) >= 1
    prices = [line for line in text.splitlines() if line.startswith("gpuledger_gpu_hourly_price{")]
    assert prices and all('source="snapshot:' in line for line in prices if "p5.48xlarge" in line)
    assert agent.metrics.totals()["gpuledger_gpu_cost"] > 0


def _dry_run_agent(trace: Path, ledger: Path, account_every: str, clock):
    """An in-process dry-run agent over ``trace``, its playback clock ``clock``."""
    import argparse

    from agent import agent_settings
    from agent.config import Config
    from agent.daemon import Agent
    from agent.rollups import RollupBook
    from agent.tracesource import TraceSource
    from collectors.faults import FaultCounter
    from collectors.pricing.ratecard import RateCardPricer, load_snapshot

    settings = agent_settings.resolve(argparse.Namespace(**{s.name: None for s in agent_settings.SETTINGS}),
                                      {"GPULEDGER_LEDGER_DIR": str(ledger), "GPULEDGER_DRY_RUN": "true", "GPULEDGER_TRACE": str(trace),
                                       "GPULEDGER_ACCOUNT_EVERY": account_every})
    source = TraceSource(trace, speed=1.0, clock=clock)
    pricer = RateCardPricer(load_snapshot())
    book = RollupBook(settings.ledger_dir, pricer.currency)
    return Agent(settings, Config(), pricer, source, source.interval, FaultCounter(), "dry-run", "test",
                 book, book.restore())


def test_accounting_every_n_seconds_holds_back_the_counters_but_loses_and_changes_nothing(
        small_trace, reference, tmp_path):
    """--account-every 2m: after the first cycle the polled samples wait (the counters stand
    still) until a flush accounts them; the ledger at the end is replay's, row for row."""
    from collectors.records import Sample

    now = [0.0]
    agent = _dry_run_agent(small_trace, tmp_path / "ledger", "2m", lambda: now[0])
    polled = 0
    original_poll = agent.source.poll

    def counting_poll(t):
        nonlocal polled
        records = original_poll(t)
        polled += sum(isinstance(r, Sample) for r in records)
        return records

    agent.source.poll = counting_poll
    while agent.health.last_cycle is None:  # until /readyz could answer 200, each cycle is accounted
        now[0] += agent.source.interval
        agent.sample()
        assert agent.metrics.samples == polled
    first = agent.metrics.samples
    assert first > 0
    for _ in range(12):  # two minutes of trace, in 10 s steps: well within 2 m of wall time
        now[0] += agent.source.interval
        agent.sample()
    assert polled > first and agent.metrics.samples == first  # polled, not yet accounted
    agent.flush()
    assert agent.metrics.samples == polled
    while not agent.source.exhausted:
        now[0] += 600.0
        agent.sample()
    assert agent.ledger_final and agent.metrics.samples == polled
    assert_same_ledger(keyed(rollup_rows(tmp_path / "ledger")), reference["rows"])
