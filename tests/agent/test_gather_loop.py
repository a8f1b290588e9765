"""``gpuledger gather --every``: a real dry-run agent and one that is down, the loop's /metrics
against the reference (replay's ledger of the same trace), a failure logged once, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.agent.test_gather import FAST, dataset_rows, finished, gather
from tests.agentrun import ROOT, assert_same_ledger, free_port, get, reference, small_trace, start_agent, stop, wait_for

__all__ = ["reference", "small_trace"]  # fixtures


def metrics(port: int) -> dict[str, float]:
    code, text = get(port, "/metrics")
    assert code == 200
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name.startswith("gpuledger_gather_")}


@pytest.mark.slow
def test_the_loop_gathers_counts_and_survives_an_agent_that_is_down(small_trace, reference, tmp_path):
    proc, port = start_agent(small_trace, tmp_path / "ledger", *FAST)
    out, listen, dead = tmp_path / "dataset", free_port(), f"http://127.0.0.1:{free_port()}"
    try:
        wait_for(lambda: finished(port, 8), 60, "the trace's 8 node-hours to close", proc)
        loop = subprocess.Popen([sys.executable, "-m", "agent.cli", "gather", "--out", str(out), "--agents",
                                 f"http://127.0.0.1:{port},{dead}", "--every", "1s", "--listen", f"127.0.0.1:{listen}"],
                                cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: metrics(listen)["gpuledger_gather_runs_total"] >= 3, 60, "three gathers", loop)
            seen = metrics(listen)
            assert get(listen, "/healthz") == (200, "ok\n")
        finally:
            code = stop(loop, signal.SIGTERM, timeout=30)
        log = loop.stderr.read()
        assert code == 0, log
        runs = seen["gpuledger_gather_runs_total"]
        # everything in the first gather, nothing new after it; the dead agent failed every time
        assert seen["gpuledger_gather_rows_total"] == len(reference["rows"])
        assert seen["gpuledger_gather_node_hours_total"] == 8
        assert seen["gpuledger_gather_files_written_total"] == 4  # 4 nodes, one date
        assert seen["gpuledger_gather_agent_failures_total"] == runs
        assert seen["gpuledger_gather_run_failures_total"] == 0
        assert seen["gpuledger_gather_agents"] == 2 and seen["gpuledger_gather_agents_failing"] == 1
        assert seen["gpuledger_gather_last_success_timestamp_seconds"] > 0
        assert log.count(f"agent {dead} failed") == 1, log  # logged once, not once a gather
        assert "gather loop stopped" in log
        assert_same_ledger(dataset_rows(out), reference["rows"])
        # the same dataset, gathered once more by hand: nothing new
        again = gather(out, "--agents", f"http://127.0.0.1:{port}")
        assert again.returncode == 0 and again.stdout.startswith("gathered 0 node-hours"), again.stdout
    finally:
        stop(proc)


@pytest.mark.slow
def test_every_and_listen_flags_are_checked_before_the_loop(tmp_path):
    for args, says in ((("--every", "soon"), "--every"), (("--every", "0.5s"), "at least 1s"),
                       (("--every", "1m", "--listen", "nowhere"), "--listen")):
        done = gather(tmp_path / "out", "--agents", "http://127.0.0.1:1", *args)
        assert done.returncode == 2 and says in done.stderr, done.stderr
    help_text = subprocess.run([sys.executable, "-m", "agent.cli", "gather", "--help"], cwd=ROOT, capture_output=True,
                               text=True, env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout
    assert "--every DURATION" in help_text and "/metrics" in help_text
