"""Every GPU-second lands once for any input: overlapping samples of one device (issue 15, item 13).

Replay refuses them (exit 2, naming both lines), on both reader paths; the agent's meter
drops and counts them (``sample_overlap``), so a dry-run of such a trace counts each
second once.
"""

from __future__ import annotations

import math
import shutil

import pytest

from agent.cli import main
from agent.config import Config
from agent.metering import Meter
from agent.replay import replay
from collectors import tracefile
from collectors.errors import InputError
from collectors.pricing.ratecard import RateCard, RateCardPricer
from collectors.records import Device, DevicesRecord, Sample
from tests.conftest import write_jsonl

CARD = RateCard(currency="USD", default_gpu_hourly=3.6)
DEV = {"kind": "devices", "ts": 0, "node": "n", "devices": [{"uuid": "GPU-1", "model": "Tesla T4"},
                                                              {"uuid": "GPU-2", "model": "Tesla T4"}]}


def smp(ts, uuid="GPU-1", **kw):
    return {"kind": "sample", "ts": ts, "node": "n", "uuid": uuid, "util": 50} | kw


def _careful_only(monkeypatch):
    import pyarrow as pa

    def reject(*args, **kwargs):
        raise pa.ArrowInvalid("forced by the test")

    monkeypatch.setattr(tracefile.pajson, "read_json", reject)


READERS = ["fast", "careful"]


def _error(paths) -> InputError:
    with pytest.raises(InputError) as info:
        replay(paths, CARD, Config())
    return info.value


@pytest.mark.parametrize("reader", READERS)
def test_a_repeated_sample_line_names_both_lines(tmp_path, monkeypatch, reader):
    if reader == "careful":
        _careful_only(monkeypatch)
    path = write_jsonl(tmp_path / "t.jsonl", [DEV, smp(1), smp(1, "GPU-2"), smp(2), smp(3), smp(2), smp(4)])
    err = _error([path])
    assert (err.file, err.line, err.field) == (str(path), 7, "ts")  # meta, devices, then the samples
    assert f"{path}:5" in err.message and "overlaps" in err.message


@pytest.mark.parametrize("reader", READERS)
def test_the_same_trace_given_twice(tmp_path, monkeypatch, reader):
    if reader == "careful":
        _careful_only(monkeypatch)
    path = write_jsonl(tmp_path / "t.jsonl.gz", [DEV] + [smp(t) for t in range(1, 50)])
    err = _error([path, path])
    assert (err.file, err.line) == (str(path), 3)
    assert f"{path}:3" in err.message and "the same trace given twice" in err.message
    copy = tmp_path / "copy.jsonl.gz"
    shutil.copy(path, copy)
    err = _error([path, copy])
    assert (err.file, err.line) == (str(copy), 3) and f"{path}:3" in err.message


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("second, bad", [
    (smp(2.5, interval_s=1.0), True),  # 1.5-2.5 reaches into 1-2
    (smp(1.5, interval_s=0.5), True),  # 1-1.5 is inside 1-2
    (smp(10.0, interval_s=9.5), True),  # 0.5-10 covers 1-2
    (smp(3.0, interval_s=1.0), False),  # 2-3 meets 1-2 at its end
    (smp(3.0005, interval_s=1.001), False),  # reaches 0.5 ms back: rounding, accepted
    (smp(3.0, interval_s=1.002), True),  # 2 ms back: refused
    (smp(2.0, uuid="GPU-2"), False),  # another device
])
def test_partial_overlaps(tmp_path, monkeypatch, reader, second, bad):
    if reader == "careful":
        _careful_only(monkeypatch)
    path = write_jsonl(tmp_path / "t.jsonl", [DEV, smp(2.0, interval_s=1.0), second])
    if bad:
        assert _error([path]).line == 4
    else:
        replay([path], CARD, Config())


def test_an_unordered_trace_without_overlaps_is_accepted(tmp_path):
    ts = [5, 1, 4, 2, 3, 9, 7]
    path = write_jsonl(tmp_path / "t.jsonl", [DEV] + [smp(t) for t in ts])
    result = replay([path], CARD, Config())
    assert result.summary["totals"]["gpu_seconds"] == len(ts)


def test_the_cli_says_it_in_one_line_and_writes_nothing(tmp_path, capsys):
    path = write_jsonl(tmp_path / "t.jsonl", [DEV, smp(1), smp(1)])
    out = tmp_path / "out"
    assert main(["replay", str(path), str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}:4" in err and "Traceback" not in err
    assert not (out / "ledger.parquet").exists() and not (out / "summary.json").exists()


# --------------------------------------------------------------------------- the agent's meter

PRICER = RateCardPricer(CARD)


def _devices():
    return DevicesRecord(0.0, "n", (Device("GPU-1", "Tesla T4"), Device("GPU-2", "Tesla T4")))


def _seconds(cycles) -> float:
    return sum(r.sums[0] + r.sums[1] for c in cycles for r in c.rows)


def test_the_meter_drops_and_counts_repeated_samples_in_a_cycle_and_across_cycles():
    meter = Meter(PRICER, Config())
    first = meter.process([_devices()] + [Sample(float(t), "n", "GPU-1", 50.0, interval_s=1.0) for t in (1, 2, 2, 3)], 1.0)
    assert (first.samples, first.dropped_overlap) == (3, 1)
    again = meter.process([Sample(float(t), "n", "GPU-1", 50.0, interval_s=1.0) for t in (1, 2, 3, 4)], 1.0)
    assert (again.samples, again.dropped_overlap) == (1, 3)
    partial = meter.process([Sample(5.5, "n", "GPU-1", 50.0, interval_s=2.0),  # 3.5-5.5 reaches into 3-4
                             Sample(5.5, "n", "GPU-2", 50.0, interval_s=2.0),  # another device
                             Sample(4.5, "n", "GPU-1", 50.0, interval_s=0.5)], 1.0)  # 4-4.5 is free
    assert (partial.samples, partial.dropped_overlap) == (2, 1)
    assert _seconds([first, again, partial]) == 4 + 2 + 0.5
    late = meter.process([Sample(5.0, "n", "GPU-1", 50.0, interval_s=0.5)], 1.0)  # 4.5-5: free, behind the newest
    assert (late.samples, late.dropped_overlap) == (1, 0)


def test_the_meter_never_drops_what_replay_accepts(tmp_path):
    """Samples out of order, meeting end to end, 0.5 ms rounding: nothing dropped."""
    records = [_devices()] + [Sample(t + (0.0005 if i % 3 == 0 else 0.0), "n", "GPU-1", 10.0, interval_s=1.0)
                              for i, t in enumerate([3.0, 1.0, 2.0, 6.0, 4.0, 5.0, 7.0])]
    cycle = Meter(PRICER, Config()).process(records, 1.0)
    assert (cycle.samples, cycle.dropped_overlap) == (7, 0)


@pytest.mark.slow
def test_a_dry_run_of_a_doubled_trace_counts_each_second_once(tmp_path):
    from tests.agentrun import rollup_rows, run_agent

    lines = [DEV] + [smp(t) for t in range(1, 181)]
    doubled = [DEV] + [x for t in range(1, 181) for x in (smp(t), smp(t))]
    trace = write_jsonl(tmp_path / "doubled.jsonl", doubled)
    ledger = tmp_path / "ledger"
    done = run_agent(trace, ledger, "--speed", "5000", "--interval", "100ms", "--exit-at-end", "--log-level", "info")
    assert done.returncode == 0, done.stderr
    rows = rollup_rows(ledger)
    want = replay([write_jsonl(tmp_path / "once.jsonl", lines)], CARD, Config()).summary["totals"]
    got = sum(r["allocated_gpu_seconds"] + r["unallocated_gpu_seconds"] for r in rows)
    assert math.isclose(got, want["gpu_seconds"]) and got == 180.0
    said = [line for line in done.stderr.splitlines() if "sample_overlap" in line]
    assert len(said) == 1 and "Traceback" not in done.stderr
