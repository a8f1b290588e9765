"""The README's commands, run as a reader pastes them."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.rollups import read_rollup
from tests.systemtools import require_tool

pytestmark = pytest.mark.slow  # drives real processes or servers; see README "Fast loop"

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def code_block(after_heading: str) -> str:
    """The first ```sh block after a heading of the README, exactly as written."""
    text = README.read_text()
    section = text[text.index(after_heading):]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, f"no sh block after {after_heading!r}"
    return match.group(1)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the agent's server does (TIME_WAIT is fine)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_the_agent_snippet_works_pasted_as_one_block(tmp_path):
    """The snippet of 'The agent, without a GPU', pasted whole into a shell: it waits for
    /readyz, the first scrape has costs, SIGTERM writes the ledger before the report
    reads it. Run by bash from a folder with `.venv/bin/gpuledger` (this checkout) and
    the README's demo trace, as after the README's first command."""
    require_tool("curl", "curl")
    snippet = code_block("## The agent, without a GPU")
    assert "--listen 127.0.0.1:9400" in snippet
    if not _port_free(9400):
        pytest.fail("port 9400 is in use on 127.0.0.1; the README snippet listens there", pytrace=False)
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    launcher = venv_bin / "gpuledger"
    launcher.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m agent.cli \"$@\"\n")
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    made = subprocess.run([str(launcher), "simulate", "--out", "demo/trace.jsonl.gz"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr

    done = subprocess.run(["bash", "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if not k.startswith("GPULEDGER_")})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "error" not in done.stderr.lower(), done.stderr
    assert done.stdout.startswith("ok\n"), done.stdout  # /readyz answered before anything else ran
    costs = [float(line.rsplit(" ", 1)[1]) for line in done.stdout.splitlines()
             if line.startswith("gpuledger_gpu_cost_total{")]
    assert costs and sum(costs) > 0, done.stdout  # the first scrape already has costs
    headers = [read_rollup(p)[0] for p in (tmp_path / "demo" / "ledger").rglob("*.jsonl.gz")]
    assert headers and any(h["samples_through"] is not None for h in headers), "SIGTERM wrote the minute in progress"
    assert "wrote demo/agent-report/report.md" in done.stdout
    assert (tmp_path / "demo" / "agent-report" / "report.html").is_file()
