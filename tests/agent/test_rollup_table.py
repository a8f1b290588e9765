"""gather's rollup reader (Arrow's JSON reader) against the agent's own (``rollups.parse_rollup`` and
``checked_rows``): the same table for every good rollup, the same one error for every bad one.

The rollups are the agent's own (``RollupBook`` over the ``Meter``); each bad input is one of
them changed by hand or at random, and what the agent's reader makes of it is the reference.
"""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pyarrow as pa
import pytest

from agent.config import Config
from agent.metering import Meter
from agent.rollup_table import BadRollup, _exact, _fast, rollup_table, rollup_tables
from agent.rollups import RollupBook
from collectors.pricing.ratecard import RateCardPricer, load_snapshot
from collectors.records import Container, Device, DevicesRecord, Pod, PodsRecord, Sample
from tests.agentrun import run_agent

__all__ = ["small_trace"]
from tests.agentrun import small_trace  # noqa: E402  (fixture)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[bytes]:
    """Two hours of a node: three GPUs, pods on two of them (the third's rows are unallocated,
    with null pod columns), 10-second samples."""
    directory = tmp_path_factory.mktemp("rollups")
    book = RollupBook(directory, "USD")
    meter = Meter(RateCardPricer(load_snapshot()), Config())
    node, uuids = "node-a", ["GPU-a", "GPU-b", "GPU-c"]
    records = [DevicesRecord(0.0, node, tuple(Device(u, "NVIDIA H100 80GB HBM3", 80e9) for u in uuids)),
               PodsRecord(0.0, node, tuple(Pod(f"uid-{i}", "ml", f"train-{i}", {"team": "t"},
                                               containers=(Container("main", (u,)),)) for i, u in enumerate(uuids[:2])))]
    for start in (0, 3600):
        batch = (records if start == 0 else []) + [
            Sample(float(t), node, u, 30.0 + (t // 60) % 50, interval_s=10.0)
            for t in range(start + 10, start + 3601, 10) for u in uuids]
        book.add(meter.process(batch, 10.0).rows)
        book.flush(float(start + 3600 - 20))
    book.flush_all(7200.0)
    paths = sorted(directory.rglob("*.jsonl.gz"))
    assert len(paths) == 2
    return [p.read_bytes() for p in paths]


def outcome(fn, data: bytes) -> tuple[str, object]:
    try:
        return "table", fn(data, "node-a/1970-01-01/00.jsonl.gz")
    except ValueError as err:
        return "error", str(err)


def assert_same(data: bytes) -> str:
    """rollup_table reads ``data`` as the agent's reader does; returns which it was."""
    want, got = outcome(_exact, data), outcome(rollup_table, data)
    assert got[0] == want[0], (got, want)
    if want[0] == "table":
        assert got[1].equals(want[1], check_metadata=True)
        assert got[1].schema == want[1].schema
    else:
        assert got[1] == want[1]
    return want[0]


def text_of(data: bytes) -> str:
    return gzip.decompress(data).decode()


def packed(text: str) -> bytes:
    return gzip.compress(text.encode(), mtime=0)


def test_a_good_rollup_is_the_same_table_and_takes_the_fast_path(files):
    for data in files:
        assert _fast([data]) is not None  # the path that makes gather fast is the one taken
        assert assert_same(data) == "table"
        table = rollup_table(data, "x")
        assert table.num_rows == text_of(data).count("\n") - 1  # one row a line after the header
        assert table.column("team").null_count > 0  # the unallocated GPU's rows
    both = rollup_tables([(d, f"f{i}") for i, d in enumerate(files)])
    assert [t.num_rows for t in both] == [rollup_table(d, "x").num_rows for d in files]
    assert pa.concat_tables(both).equals(pa.concat_tables([_exact(d, "x") for d in files]))


def _lines(data: bytes) -> list[str]:
    return text_of(data).splitlines()


def _edit(data: bytes, line: int, old: str, new: str) -> bytes:
    lines = _lines(data)
    assert old in lines[line], (old, lines[line])
    lines[line] = lines[line].replace(old, new, 1)
    return packed("\n".join(lines) + "\n")


def _mutations(data: bytes) -> dict[str, bytes]:
    lines = _lines(data)
    second = lines[1]
    return {
        "a row without a key": _edit(data, 2, '"team": ', '"teem": '),
        "a row without a pod key, another with an extra": packed("\n".join(
            [lines[0], second.replace('"pod": ', '"p": ', 1), second.replace("}", ', "x": null}')] + lines[3:]) + "\n"),
        "an unknown key": _edit(data, 1, "{", '{"extra": 1, '),
        "a key twice": _edit(data, 1, "{", '{"team": "x", '),
        "a null line": packed("\n".join([lines[0], "null"] + lines[1:]) + "\n"),
        "a null first row": packed("\n".join([lines[0], "null"]) + "\n"),
        "an array line": packed("\n".join(lines + ["[1]"]) + "\n"),
        "blank lines": packed("\n\n".join(lines) + "\n\n"),
        "CRLF": packed("\r\n".join(lines) + "\r\n"),
        "a CR inside a line": _edit(data, 1, '"team": ', '"team":\r'),
        "two objects on a line": packed("\n".join([lines[0], lines[1] + " " + lines[2]] + lines[3:]) + "\n"),
        "spaces around a colon": _edit(data, 1, '"team": ', '"team" : '),
        "an escaped key": _edit(data, 1, '"team": ', '"te\\u0061m": '),
        "an escaped value": _edit(data, 1, '"namespace": "ml"', '"namespace": "\\u006dl"'),
        "a minute as true": _edit(data, 1, '"minute": ', '"minute": true, "x": '),
        "a minute as a float": _edit(data, 1, '"minute": 0', '"minute": 0.0'),
        "a minute of another hour": _edit(data, 1, '"minute": 0', '"minute": 7200'),
        "a null minute": _edit(data, 1, '"minute": 0', '"minute": null'),
        "a string for a sum": _edit(data, 1, '"cost": ', '"cost": "1", "y": '),
        "NaN cost": _edit(data, 1, '"cost": ', '"cost": NaN, "y": '),
        "Infinity util_peak": _edit(data, 1, '"util_peak": ', '"util_peak": Infinity, "y": '),
        "a null cost": _edit(data, 1, '"cost": ', '"cost": null, "y": '),
        "an integer too large for a double": _edit(data, 1, '"cost": ', '"cost": 99999999999999999999, "y": '),
        "a large float": _edit(data, 1, '"cost": ', '"cost": 1e300, "y": '),
        "samples as a float": _edit(data, 1, '"samples": ', '"samples": 6.0, "y": '),
        "a number for a string": _edit(data, 1, '"team": ', '"team": 5, "y": '),
        "a nested object": _edit(data, 1, '"team": ', '"team": {"a": 1}, "y": '),
        "a bad currency": _edit(data, 0, '"currency": "USD"', '"currency": "usd"'),
        "no header": packed("\n".join(lines[1:]) + "\n"),
        "a header only": packed(lines[0] + "\n"),
        "an hour not on the hour": _edit(data, 0, '"hour": 0', '"hour": 60'),
        "empty": packed(""),
        "not UTF-8": gzip.compress(gzip.decompress(data).replace(b'"ml"', b'"m\xffl"', 1), mtime=0),
        "truncated gzip": data[: len(data) // 2],
        "two gzip members": data + packed(lines[1] + "\n"),
        "not gzip": b"hello",
        "no newline at the end": packed("\n".join(lines)),
    }


def test_bad_or_odd_input_reads_as_the_agents_reader_reads_it(files):
    for what, data in _mutations(files[0]).items():
        try:
            assert_same(data)
        except AssertionError as err:
            raise AssertionError(f"{what}: {err}") from None
    # a bad one among several: the good ones before it, and its own error
    bad = _edit(files[1], 2, '"team": ', '"teem": ')
    with pytest.raises(BadRollup) as caught:
        rollup_tables([(files[0], "first"), (bad, "second"), (files[1], "third")])
    assert str(caught.value) == outcome(_exact, bad)[1].replace("node-a/1970-01-01/00.jsonl.gz", "second")
    assert len(caught.value.good) == 1 and caught.value.good[0].equals(_exact(files[0], "x"))


def test_random_damage_reads_as_the_agents_reader_reads_it(files):
    """Random edits of a short rollup (its header and 12 rows): byte changes, deletions, copies."""
    lines = _lines(files[0])
    text = ("\n".join(lines[:13]) + "\n").encode()
    rng = random.Random(7)
    alphabet = b'{}[]":, \n\r\\0123456789.eE+-naultrue'
    kinds = {"table": 0, "error": 0}
    for _ in range(250):
        damaged = bytearray(text)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(damaged))
            action = rng.random()
            if action < 0.5:
                damaged[at] = rng.choice(alphabet)
            elif action < 0.8:
                del damaged[at: at + rng.randint(1, 8)]
            else:
                damaged[at:at] = damaged[rng.randrange(len(damaged)):][:rng.randint(1, 30)]
        kinds[assert_same(gzip.compress(bytes(damaged), mtime=0))] += 1
    assert kinds["table"] and kinds["error"]  # both outcomes were exercised


def test_damaged_compression_is_one_error_naming_the_file(files):
    flipped = bytearray(files[0])
    flipped[len(flipped) // 2] ^= 0xFF
    kind, message = outcome(rollup_table, bytes(flipped))
    assert kind == "error" and message.startswith("node-a/1970-01-01/00.jsonl.gz: ")


@pytest.mark.slow
def test_the_simulated_clusters_rollups_read_alike(small_trace, tmp_path):
    """MIG, time-slicing, pods coming and going, serving counts: a dry-run agent's real rollups."""
    ledger = tmp_path / "ledger"
    assert run_agent(small_trace, ledger, "--speed", "5000", "--interval", "100ms", "--exit-at-end").returncode == 0
    paths = sorted(Path(ledger).rglob("*.jsonl.gz"))
    assert len(paths) == 8
    for path in paths:
        data = path.read_bytes()
        assert _fast([data]) is not None
        assert assert_same(data) == "table"
