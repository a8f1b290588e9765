"""The agent's ledger directory against hostile node names and damaged files (issue 15, items 12 and 14)."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import pytest

from agent.config import Config
from agent.metering import Meter, Resume
from agent.rollups import RollupBook, node_dirname, read_rollup
from collectors.faults import FaultCounter
from collectors.pricing.ratecard import RateCardPricer, load_snapshot
from collectors.records import Device, DevicesRecord, Sample
from recommenders.history import load_history, ledger_end
from tests.agentrun import assert_same_ledger, keyed, reference, rollup_rows, run_agent, small_trace
from tests.conftest import write_jsonl

__all__ = ["reference", "small_trace"]  # fixtures
FAST = ("--speed", "5000", "--interval", "100ms")

PRICER = RateCardPricer(load_snapshot())
GPU = "GPU-1"


def _minutes(book: RollupBook, node: str, until: int) -> None:
    """Two minutes of one unallocated GPU of ``node``, written to the book."""
    meter = Meter(PRICER, Config())
    records = [DevicesRecord(0.0, node, (Device(GPU, "NVIDIA L4", 24e9),))]
    records += [Sample(float(t), node, GPU, 50.0, interval_s=1.0) for t in range(1, until + 1)]
    book.add(meter.process(records, 1.0).rows)
    book.flush(float(until - 2))  # minute 0 closes
    book.flush_all(float(until))


HOSTILE = ["../escape", "../../etc/cron.d", "/abs/path", "..", ".", "a/b", "-rf", ".hidden", "a\\b",
           "x" * 300, "nul\x00byte", "ünïcode", "%2E%2E", "sp ace", "~tilde"]


@pytest.mark.parametrize("node", HOSTILE)
def test_node_names_stay_inside_the_ledger_dir(tmp_path, node):
    ledger = tmp_path / "deep" / "ledger"
    book = RollupBook(ledger, "USD")
    _minutes(book, node, 90)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(ledger in p.parents for p in written), written
    (path,) = written
    assert path.relative_to(ledger).parts[0] == node_dirname(node)
    header, rows = read_rollup(path)
    assert header["node"] == node and {r["node"] for r in rows} == {node}
    # read back by the agent after a restart, under its real name
    assert RollupBook(ledger, "USD").restore() == {node: Resume(0, 90.0)}
    # and by the report
    first, end = ledger_end([ledger])
    assert set(load_history([ledger], first, end).rows["node"]) == {node}


def test_ordinary_node_names_are_the_directory_names():
    for node in ("gpu-a", "ip-10-0-1-23.ec2.internal", "gke-pool-1-abc", "n1", "A_b"):
        assert node_dirname(node) == node


def test_directory_names_of_different_nodes_differ():
    names = ["..", ".", "%2E", "%2E%2E", "a/b", "a%2Fb", "a_b", "x" * 300, "x" * 301, "-rf", "%2Drf"]
    dirnames = [node_dirname(n) for n in names]
    assert len(set(dirnames)) == len(names)
    for d in dirnames:
        assert "/" not in d and "\\" not in d and "\x00" not in d
        assert d not in (".", "..") and not d.startswith((".", "-"))
        assert len(d.encode()) <= 255


# --------------------------------------------------------------------------- item 14: damaged rollups


def _two_hours(ledger: Path) -> list[Path]:
    """A node's ledger of two hours (the agent stopped in the second); its two files."""
    book = RollupBook(ledger, "USD")
    meter = Meter(PRICER, Config())
    records = [DevicesRecord(0.0, "n1", (Device(GPU, "NVIDIA L4", 24e9),))]
    records += [Sample(float(t), "n1", GPU, 50.0, interval_s=1.0) for t in range(1, 5401)]
    book.add(meter.process(records, 1.0).rows)
    book.flush(5398.0)
    book.flush_all(5400.0)
    return sorted(ledger.rglob("*.jsonl.gz"))


def _gz(text: bytes) -> bytes:
    return gzip.compress(text, mtime=0)


DAMAGE = {
    "empty": lambda data: b"",
    "truncated": lambda data: data[: len(data) // 2],
    "not gzip": lambda data: b"hello\n",
    "bad header": lambda data: _gz(b'{"something": "else"}\n{"minute": 3600}\n'),
    "header not JSON": lambda data: _gz(b"{oops\n"),
    "no hour": lambda data: _gz(b'{"gpuledger_ledger": "1", "currency": "USD", "node": "n1"}\n'),
    "bad row": lambda data: _gz(gzip.decompress(data) + b'{"minute": "soon"}\n'),
    "row not JSON": lambda data: _gz(gzip.decompress(data) + b"[[[[\n"),
    "deep JSON": lambda data: _gz(b"[" * 100000 + b"]" * 100000 + b"\n"),
    "bad UTF-8": lambda data: _gz(b'{"gpuledger_ledger": "1", "node": "\xff"}\n'),
    "corrupt body": lambda data: data[:20] + bytes(b ^ 0x5A for b in data[20:60]) + data[60:],
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_newest_rollup_is_set_aside_counted_and_logged(tmp_path, caplog, damage):
    older, newest = _two_hours(tmp_path)
    intact = RollupBook(tmp_path, "USD").restore()
    newest.write_bytes(DAMAGE[damage](newest.read_bytes()))
    faults = FaultCounter()
    book = RollupBook(tmp_path, "USD", faults=faults)
    with caplog.at_level(logging.WARNING):
        resume = book.restore()
        RollupBook(tmp_path, "USD", faults=faults).restore()  # a second start finds nothing more to set aside
    assert faults.count("agent", "ledger_damaged") == 1
    assert book.damaged == [newest]
    assert not newest.exists() and newest.with_name(newest.name + ".damaged").exists()
    # the older hour is what the ledger holds now: a dry-run counts the damaged hour again
    assert resume == {"n1": Resume(3540, None)} != intact
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "ledger_damaged" in warnings[0].getMessage()
    assert str(newest) in warnings[0].getMessage() and "\n" not in warnings[0].getMessage()
    # the report reads the rest, not the file set aside
    first, end = ledger_end([tmp_path])
    assert end == 3600.0 and len(load_history([tmp_path], first, end).rows) == 60


def test_both_newest_damaged_and_a_name_already_taken(tmp_path):
    older, newest = _two_hours(tmp_path)
    older.with_name(older.name + ".damaged").write_bytes(b"an earlier casualty")
    older.write_bytes(b"")
    newest.write_bytes(b"")
    faults = FaultCounter()
    assert RollupBook(tmp_path, "USD", faults=faults).restore() == {}
    assert faults.count("agent", "ledger_damaged") == 2
    assert older.with_name(older.name + ".damaged").read_bytes() == b"an earlier casualty"
    assert older.with_name(older.name + ".damaged.1").exists()


# --------------------------------------------------------------------------- the agent process


@pytest.mark.slow
def test_the_agent_starts_on_a_damaged_ledger_and_ends_with_replays(small_trace, reference, tmp_path):
    ledger = tmp_path / "ledger"
    done = run_agent(small_trace, ledger, *FAST, "--exit-at-end")
    assert done.returncode == 0, done.stderr
    files = sorted(ledger.rglob("*.jsonl.gz"))
    newest = files[-1]
    newest.write_bytes(newest.read_bytes()[:40])  # truncated, as by a full disk or a crash of the node
    files[1].write_bytes(b"")  # empty: another node's newest hour
    done = run_agent(small_trace, ledger, *FAST, "--exit-at-end")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    said = [line for line in done.stderr.splitlines() if "ledger_damaged" in line]
    assert len(said) == 1 and (str(newest) in said[0] or str(files[1]) in said[0]), done.stderr
    assert sorted(p.name for p in ledger.rglob("*.damaged")) == [files[1].name + ".damaged", newest.name + ".damaged"]
    # the damaged hours were counted again: the ledger is replay's, every row once
    assert_same_ledger(keyed(rollup_rows(ledger)), reference["rows"])


@pytest.mark.slow
def test_a_dry_run_of_a_trace_with_a_hostile_node_name_writes_inside_its_ledger_dir(tmp_path):
    node = "../../outside"
    trace = write_jsonl(tmp_path / "t.jsonl", [
        {"kind": "devices", "ts": 0, "node": node, "devices": [{"uuid": GPU, "model": "NVIDIA L4"}]},
        *({"kind": "sample", "ts": t, "node": node, "uuid": GPU, "util": 50} for t in range(1, 200))])
    ledger = tmp_path / "a" / "b" / "ledger"
    done = run_agent(trace, ledger, *FAST, "--exit-at-end")
    assert done.returncode == 0, done.stderr
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file() and p != trace)
    assert written and all(ledger in p.parents for p in written), written
    assert {r["node"] for r in rollup_rows(ledger)} == {node}
