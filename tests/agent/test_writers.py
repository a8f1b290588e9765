"""Every command that writes files, failing: nothing partial and no temporary file is
left behind, and the failure is one line (no traceback).

The failure is real: the process runs under a file-size limit (``RLIMIT_FSIZE``; Python
ignores SIGXFSZ, so an oversized write raises ``EFBIG``, "File too large", as a full
disk raises ``ENOSPC``), set smaller than what the command writes. And the output
paths a command can check before any work (an existing directory where a file goes)
are refused at once, exit 2.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collectors.simulator import simulate
from tests.agentrun import small_trace  # noqa: F401 (fixture)
from tests.fakenvml import FakeNvml, fake_nvml, h100, l40s  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"


def run(args: list[str], cwd: Path, limit: int | None = None, env: dict | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    """``gpuledger ARGS`` in ``cwd``, under a file-size limit of ``limit`` bytes."""
    def limited() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=dict(env or os.environ, PYTHONPATH=str(ROOT)), preexec_fn=limited, timeout=timeout)


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def assert_failed_cleanly(done: subprocess.CompletedProcess, folder: Path, before: list[str] | None = None) -> None:
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert "File too large" in done.stderr, done.stderr
    assert leftovers(folder) == (before or []), "left behind: " + ", ".join(leftovers(folder))


@pytest.fixture(scope="module")
def ledger_file(tmp_path_factory, small_trace) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("replayed")
    done = run(["replay", str(small_trace), "--out", str(out)], ROOT)
    assert done.returncode == 0, done.stderr
    return out / "ledger.parquet"


def test_simulate_failing_to_write(tmp_path):
    done = run(["simulate", "--hours", "1", "--out", "out/demo.jsonl.gz"], tmp_path, limit=64 << 10)
    assert_failed_cleanly(done, tmp_path)


def test_import_nvidia_smi_failing_to_write(tmp_path):
    done = run(["import", "nvidia-smi", str(FIXTURES / "nvidia_smi" / "l_log.csv"), "--out", "t.jsonl"], tmp_path,
               limit=512)
    assert_failed_cleanly(done, tmp_path)


def test_import_alibaba_genai_failing_to_write(tmp_path):
    done = run(["import", "alibaba-genai", str(FIXTURES / "alibaba_genai"), "--out", "t.jsonl"], tmp_path,
               limit=2048)
    assert_failed_cleanly(done, tmp_path)


@pytest.mark.slow
def test_record_failing_to_write(fake_nvml: FakeNvml, tmp_path):
    fake_nvml.set([h100(0, util=50), l40s(1, util=10)])
    done = run(["record", "--out", "node.jsonl", "--interval", "100ms", "--duration", "3s", "--node", "n"], tmp_path,
               limit=1024, env=fake_nvml.env())
    assert_failed_cleanly(done, tmp_path)


@pytest.mark.slow
def test_replay_failing_to_write(small_trace, tmp_path):  # noqa: F811
    """ledger.parquet and summary.json appear together or not at all, with no folder."""
    done = run(["replay", str(small_trace), "--out", "out"], tmp_path, limit=8 << 10)
    assert_failed_cleanly(done, tmp_path)


@pytest.mark.slow
def test_report_failing_to_write(ledger_file, tmp_path):
    """The five files appear together or not at all (report.html is the largest)."""
    done = run(["report", "--ledger", str(ledger_file), "--out", "report"], tmp_path, limit=16 << 10)
    assert_failed_cleanly(done, tmp_path)


@pytest.mark.slow
def test_the_agents_ledger_failing_to_write(small_trace, tmp_path):  # noqa: F811
    """The agent counts the failed writes and goes on; no temporary file stays."""
    done = run(["agent", "--dry-run", "--trace", str(small_trace), "--ledger-dir", "ledger", "--speed", "5000",
                "--interval", "100ms", "--listen", "127.0.0.1:0", "--exit-at-end", "--log-level", "warning"],
               tmp_path, limit=1024)
    assert done.returncode == 0, done.stderr
    assert "ledger_write_failed" in done.stderr and "Traceback" not in done.stderr
    assert not [p for p in leftovers(tmp_path) if p.endswith(".tmp")], leftovers(tmp_path)


def test_the_price_cache_failing_to_write(tmp_path):
    code = ("import logging; logging.basicConfig()\n"
            "from collectors.pricing.cache import PriceCache\n"
            "cache = PriceCache('cache')\n"
            "print(cache.lookup(('aws-api', 'offer', 'p5.48xlarge'), lambda: {'terms': 'x' * 100000}).status)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)))
    assert done.returncode == 0 and done.stdout.strip() == "fetched", done.stderr
    assert "cannot write the price cache" in done.stderr
    assert leftovers(tmp_path) in ([], ["cache"]), leftovers(tmp_path)


@pytest.mark.parametrize("args", [
    ["simulate", "--hours", "1", "--out", "{dir}"],
    ["import", "nvidia-smi", str(FIXTURES / "nvidia_smi" / "l_log.csv"), "--out", "{dir}"],
    ["import", "alibaba-genai", str(FIXTURES / "alibaba_genai"), "--out", "{dir}"],
    ["simulate", "--hours", "1", "--out", "{file}/t.jsonl"],
    ["replay", "{trace}", "--out", "{file}"],
    ["report", "--ledger", "{ledger}", "--out", "{file}/report"],
])
@pytest.mark.slow
def test_an_output_path_that_cannot_be_used_is_refused_before_any_work(tmp_path, small_trace, ledger_file, args):  # noqa: F811
    """An existing directory where a file goes (or a file where a directory goes): exit
    2 at once, one line naming the path and the flag; no temporary file, nothing else."""
    (tmp_path / "demo").mkdir()
    (tmp_path / "notes.txt").write_text("a file\n")
    before = leftovers(tmp_path)
    names = {"dir": "demo", "file": "notes.txt", "trace": str(small_trace), "ledger": str(ledger_file)}
    started = time.monotonic()
    done = run([a.format(**names) for a in args], tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "field '--out'" in done.stderr, done.stderr
    assert "demo" in done.stderr or "notes.txt" in done.stderr
    assert time.monotonic() - started < 20, "refused before the work, not after"
    assert leftovers(tmp_path) == before


@pytest.mark.slow
def test_replay_reads_its_input_before_making_its_out_dir(tmp_path):
    """A trace that fails to read leaves no empty --out directory."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind":"meta","format":"gpuledger-trace","version":1,"interval_s":1}\n{"kind":"oops"}\n')
    done = run(["replay", str(bad), "--out", "out/deeper"], tmp_path)
    assert done.returncode == 2 and "bad.jsonl:2" in done.stderr, done.stderr
    assert leftovers(tmp_path) == ["bad.jsonl"]


def test_sigterm_during_simulate_leaves_nothing(tmp_path):
    """A command with no SIGTERM handler of its own unwinds like Ctrl-C: the file being
    written is removed."""
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "simulate", "--hours", "400", "--out", "t.jsonl.gz"],
                            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".t.jsonl.gz.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob(".t.jsonl.gz.*.tmp")), "the simulation started writing"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    assert stderr == "gpuledger: stopped by SIGTERM; nothing written\n", stderr
    assert leftovers(tmp_path) == [], leftovers(tmp_path)


def test_a_file_not_committed_is_removed_on_the_way_out(tmp_path):
    """What the CLI does last, whatever stopped the command (a signal between two
    statements included): every temporary file not committed, and the folders made for
    it, are removed."""
    from collectors.atomicfile import AtomicFile, discard_pending

    kept = AtomicFile(tmp_path / "kept.txt")
    kept.tmp.write_text("whole")
    kept.commit()
    AtomicFile(tmp_path / "new" / "deeper" / "t.jsonl")
    assert any(p.endswith(".tmp") for p in leftovers(tmp_path))
    assert discard_pending() == 1
    assert leftovers(tmp_path) == ["kept.txt"]
