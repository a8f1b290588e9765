"""The gpuledger command as a user runs it: exit codes, messages, files written."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import write_jsonl
from tests.agent.test_cost_model import devices, gpu, node, pod, pods, sample

ROOT = Path(__file__).resolve().parents[2]


def gpuledger(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT)


def small_trace(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "t.jsonl.gz", [
        node(), devices(gpu("GPU-a"), gpu("GPU-b", index=1)),
        pods(pod("p1", "GPU-a", labels={"team": "ml"}), pod("p2", "GPU-b", ns="serve", owner=("Deployment", "api"))),
        *[sample("GPU-a", t, 90, mem=1000 + t) for t in range(1, 181)],
        *[sample("GPU-b", t, 5 if t % 2 else 0) for t in range(1, 181)],
    ])


@pytest.mark.slow
def test_replay_prints_the_table_and_writes_reconciled_outputs(tmp_path):
    out = tmp_path / "out"
    done = gpuledger("replay", str(small_trace(tmp_path)), "--rates", str(ROOT / "examples/rates.yaml"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress line when not on a terminal
    assert re.search(r"^ml\s+training\s+0\.05\s+0\.04\s+90\.0%", done.stdout, re.M), done.stdout
    assert re.search(r"^serve\s+inference\s+0\.05", done.stdout, re.M)
    assert "prices from: rate-card (USD)" in done.stdout
    assert "kWh" not in done.stdout  # no power readings: no energy columns (docs/energy.md)
    summary = json.loads((out / "summary.json").read_text())
    ledger = pq.read_table(out / "ledger.parquet")
    t = summary["totals"]
    assert t["gpu_seconds"] == pytest.approx(360.0)
    for column, total in [("allocated_gpu_seconds", t["allocated_gpu_seconds"]), ("used_gpu_seconds", t["used_gpu_seconds"]),
                          ("cost", t["cost"]), ("unallocated_cost", t["unallocated_cost"]), ("idle_cost", t["idle_cost"])]:
        assert math.isclose(sum(ledger.column(column).to_pylist()), total, rel_tol=1e-9)
    # 1 s samples ending at ts 1..180: midpoints 0.5..179.5 fall in minutes 0, 1 and 2, per GPU
    assert ledger.num_rows == 6
    assert ledger.schema.metadata[b"gpuledger.currency"] == b"USD"
    assert max(m for m in ledger.column("memory_used_max_bytes").to_pylist() if m is not None) == 1180


@pytest.mark.slow
def test_ledger_columns_are_the_documented_ones(tmp_path):
    out = tmp_path / "out"
    assert gpuledger("replay", str(small_trace(tmp_path)), "--out", str(out)).returncode == 0
    documented = []
    for line in (ROOT / "docs/ledger.md").read_text().splitlines():
        m = re.match(r"\| (`[^|]+`) \|", line)
        if m:
            documented += re.findall(r"`([a-z_]+)`", m.group(1))
    assert pq.read_schema(out / "ledger.parquet").names == documented


@pytest.mark.slow
def test_json_output_equals_the_summary_file(tmp_path):
    out = tmp_path / "out"
    done = gpuledger("replay", str(small_trace(tmp_path)), "--json", "--out", str(out))
    assert json.loads(done.stdout) == json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("make_args, words", [
    (lambda p: ["replay", str(write_jsonl(p / "bad.jsonl", [devices(gpu("GPU-a")), '{"kind":"sample","ts":1,"node":"gpu-a","uuid":"GPU-a","util":101}']))],
     "bad.jsonl:3: field 'util': expected a number from 0 to 100, got 101"),
    (lambda p: ["replay", str(p / "missing.jsonl")], "missing.jsonl: cannot read trace"),
    (lambda p: ["replay", str(small_trace(p)), "--rates", str(p / "nope.yaml")], "nope.yaml: cannot read"),
    (lambda p: ["replay", str(small_trace(p)), "--config", str(write_jsonl(p / "c.yaml", [], meta={"team_labels": 3}))],
     "c.yaml:1: field 'team_labels'"),
])
@pytest.mark.slow
def test_user_mistakes_exit_2_with_one_line_and_write_nothing(tmp_path, make_args, words):
    out = tmp_path / "out"
    done = gpuledger(*make_args(tmp_path), "--out", str(out))
    assert done.returncode == 2
    assert words in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("command", [[], ["replay"], ["simulate"], ["import"], ["import", "nvidia-smi"], ["config"]])
def test_help_explains_every_command(command):
    done = gpuledger(*command, "--help")
    assert done.returncode == 0
    assert "usage: gpuledger" in done.stdout


@pytest.mark.slow
def test_config_check_and_docs(tmp_path):
    assert "| `team_labels` |" in gpuledger("config", "--docs").stdout
    good = tmp_path / "c.yaml"
    good.write_text("namespace_teams: {a: b}\n")
    assert gpuledger("config", str(good)).returncode == 0
    good.write_text("namespace_teams: [a]\n")
    assert gpuledger("config", str(good)).returncode == 2


@pytest.mark.slow
def test_progress_shows_on_a_terminal(tmp_path):
    import os
    import pty

    primary, secondary = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "agent.cli", "replay", str(small_trace(tmp_path))],
                              stdout=subprocess.PIPE, stderr=secondary, cwd=ROOT, text=True)
        os.close(secondary)
        shown = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(primary)
    assert done.returncode == 0
    assert b"reading traces: 100.0%" in shown


def test_version():
    from importlib.metadata import version

    done = gpuledger("--version")
    assert done.returncode == 0 and done.stdout == f"gpuledger {version('gpuledger')}\n"


@pytest.mark.parametrize("args, line", [
    (["simulate", "--hour", "2", "--out", "x.jsonl"],
     "gpuledger simulate: error: unrecognized arguments: --hour 2 (see gpuledger simulate --help)"),
    (["replay", "t.jsonl", "--jsn"], "gpuledger replay: error: unrecognized arguments: --jsn"),
    (["import", "nvidia-smi", "log.csv", "--out", "x", "--nodes", "3"],
     "gpuledger import nvidia-smi: error: unrecognized arguments: --nodes 3"),
    (["agent", "--kubernetes", "maybe"], "gpuledger agent: error: argument --kubernetes: invalid choice: 'maybe'"),
    (["record", "--out", "x", "--interval", "1ms"],
     "gpuledger record: error: argument --interval: expected an interval of at least 100ms"),
    (["report", "--ledger", "l.parquet"], "gpuledger report: error: the following arguments are required: --out"),
    (["prices"], "gpuledger prices: error: the following arguments are required: ACTION"),
    (["prices", "show", "--node-labels", "a=b", "--cach", "d"],
     "gpuledger prices show: error: unrecognized arguments: --cach d"),
    (["import"], "gpuledger import: error: the following arguments are required: FORMAT"),
    (["replay", "t.jsonl", "--rate", "r.yaml"], "gpuledger replay: error: unrecognized arguments: --rate r.yaml"),
])
def test_usage_errors_are_one_line_naming_the_command_and_the_flag(tmp_path, args, line):
    """No usage block, no top-level usage for a subcommand's flag, no prefix matching
    (--hour is not --hours, --rate not --rates), exit 2, nothing written."""
    done = gpuledger(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(line), done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [[], ["replay"], ["simulate"], ["import", "nvidia-smi"],
                                     ["import", "alibaba-genai"], ["config"], ["agent"], ["record"], ["report"],
                                     ["prices", "show"]])
def test_help_reads_cleanly(command):
    """No doubled periods, and metavars a terminal and a shell can type (ASCII)."""
    done = gpuledger(*command, "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert not re.search(r"(?<!\.)\.\.(?!\.)|\. \.", text), re.findall(r".{40}\.\..{10}", text)
    metavars = re.findall(r"--[a-z-]+ ([^\s\[\],]+)", done.stdout)
    assert all(m.isascii() for m in metavars), [m for m in metavars if not m.isascii()]
