"""Running ``gpuledger agent`` as a real process in tests, and what to compare it with.

The reference is replay: the agent must write the ledger replay computes from the same
trace and count the costs replay's summary reports.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

from agent.config import Config
from agent.replay import replay
from agent.rollups import read_rollup
from collectors.pricing.ratecard import RateCardPricer, load_snapshot
from collectors.simulator import simulate

ROOT = Path(__file__).resolve().parent.parent
SUMS = ("allocated_gpu_seconds", "unallocated_gpu_seconds", "used_gpu_seconds", "util_unknown_gpu_seconds",
        "active_gpu_seconds", "cost", "idle_cost", "unallocated_cost", "energy_joules", "energy_cost", "carbon_grams")


@pytest.fixture(scope="session")
def small_trace(tmp_path_factory) -> Path:
    """Four simulated nodes (MIG, time-slicing, pods coming and going) for 90 minutes."""
    path = tmp_path_factory.mktemp("agent-trace") / "cluster.jsonl.gz"
    simulate(path, hours=1.5, interval_s=10.0)
    return path


@pytest.fixture(scope="session")
def reference(small_trace: Path) -> dict[str, Any]:
    """Replay's ledger rows (keyed) and summary for the small trace."""
    result = replay([small_trace], RateCardPricer(load_snapshot()), Config())
    rows = result.table.to_pylist()
    for row in rows:
        row["minute"] = int(row["minute"].timestamp())
    return {"rows": keyed(rows), "summary": result.summary}


def keyed(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    out: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = (int(row["minute"]), row["device_uuid"], row["pod_uid"] or "")
        assert key not in out, f"two ledger rows for {key}"
        out[key] = row
    return out


def rollup_rows(directory: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted(directory.rglob("*.jsonl.gz")):
        _, found = read_rollup(path)
        rows += found
    return rows


def assert_same_ledger(got: dict[tuple, dict[str, Any]], want: dict[tuple, dict[str, Any]]) -> None:
    """Every row of replay's ledger, once, with the same values (sums to 1e-9 relative)."""
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, f"{len(missing)} rows missing (first {missing[:2]}), {len(extra)} extra"
    for key, w in want.items():
        g = got[key]
        for column, value in w.items():
            if column in SUMS and value is None:  # energy not measured
                assert g[column] is None, (key, column, g[column])
            elif column in SUMS:
                assert math.isclose(g[column], value, rel_tol=1e-9, abs_tol=1e-9), (key, column, g[column], value)
            elif column == "memory_used_max_bytes" and value is not None:
                assert math.isclose(g[column], value), (key, column)
            else:
                assert g[column] == value, (key, column, g[column], value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agent_command(trace: Path, ledger: Path | None, port: int, *extra: str) -> list[str]:
    """The dry-run command line; ``ledger`` None leaves --ledger-dir out. A later
    ``--log-level`` in ``extra`` wins over the ``warning`` given here."""
    return [sys.executable, "-m", "agent.cli", "agent", "--dry-run", "--trace", str(trace),
            *(["--ledger-dir", str(ledger)] if ledger is not None else []),
            "--listen", f"127.0.0.1:{port}", "--log-level", "warning", *extra]


def start_agent(trace: Path, ledger: Path | None, *extra: str, port: int | None = None,
                env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    port = port or free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    proc = subprocess.Popen(agent_command(trace, ledger, port, *extra), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, port


def run_agent(trace: Path, ledger: Path | None, *extra: str, timeout: float = 60,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(agent_command(trace, ledger, free_port(), *extra), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_for(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the agent exited ({proc.returncode}) while waiting for {what}: {proc.stderr.read()}")
        try:
            if check():
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout=timeout)
