"""Hostile input files give one line and exit 2, never a traceback (issue 15, items 15-17).

One test per input the fault review found crashing; ``tests/test_fuzz_readers.py``
looks for new ones.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from agent.config import Config
from agent.replay import replay
from collectors.pricing.ratecard import RateCard
from tests.conftest import META, write_jsonl
from tests.test_fuzz_readers import _careful_only, run_cli

DEV = {"kind": "devices", "ts": 0, "node": "n", "devices": [{"uuid": "GPU-1", "model": "Tesla T4"}]}
SMP = {"kind": "sample", "ts": 1, "node": "n", "uuid": "GPU-1", "util": 10}


def _trace(tmp_path: Path, last: bytes, name: str = "t.jsonl") -> Path:
    head = "\n".join(json.dumps(x) for x in (META, DEV, SMP)).encode() + b"\n"
    path = tmp_path / name
    path.write_bytes(head + last + b"\n")
    return path


def _one_line(tmp_path: Path, *argv: str) -> str:
    out = tmp_path / "out"
    code, _, err = run_cli(*argv, "--out", str(out))
    assert code == 2, err
    assert err.startswith("gpuledger: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists() or not any(out.iterdir())
    return err


# --------------------------------------------------------------------------- traces

HOSTILE_LINES = {
    "invalid UTF-8 in a sample string": (b'{"kind":"sample","ts":2,"node":"n\xff","uuid":"GPU-1","util":10}',
                                         "t.jsonl:4: not valid JSON"),
    "400-digit integer": (b'{"kind":"sample","ts":' + b"9" * 400 + b',"node":"n","uuid":"GPU-1"}',
                          "t.jsonl:4: field 'ts': expected a number, got an integer of 400 digits"),
    "time past year 9999": (b'{"kind":"sample","ts":1e15,"node":"n","uuid":"GPU-1"}',
                            "t.jsonl:4: field 'ts': expected Unix seconds from 0 to before year 9999"),
    "negative time": (b'{"kind":"devices","ts":-5,"node":"n","devices":[]}', "t.jsonl:4: field 'ts'"),
    "interval of 1e20 s": (b'{"kind":"sample","ts":2,"node":"n","uuid":"GPU-1","interval_s":1e20}',
                           "t.jsonl:4: field 'interval_s': expected seconds above 0 and at most 31622400"),
    "deeply nested JSON": (b"[" * 100000 + b"]" * 100000, "t.jsonl:4: not valid JSON (nested too deeply)"),
    "lone surrogate in a name": (b'{"kind":"sample","ts":2,"node":"n\\ud800","uuid":"GPU-1"}',
                                 "t.jsonl:4: field 'node': expected Unicode text, got a lone surrogate"),
    "lone surrogate in a label": (b'{"kind":"pods","ts":0,"node":"n","pods":[{"uid":"u","namespace":"x","name":"p",'
                                  b'"labels":{"team":"\\udfff"}}]}', "t.jsonl:4: field 'pods[0].labels.team'"),
    "kind of the wrong type": (b'{"kind":{"a":1},"ts":2}', "t.jsonl:4: field 'kind': expected one of"),
}


@pytest.mark.parametrize("reader", ["fast", "careful"])
@pytest.mark.parametrize("case", HOSTILE_LINES)
def test_a_hostile_trace_line_is_one_line_and_exit_2(tmp_path, monkeypatch, case, reader):
    if reader == "careful":
        _careful_only(monkeypatch)
    line, said = HOSTILE_LINES[case]
    path = _trace(tmp_path, line)
    err = _one_line(tmp_path, "replay", str(path))
    assert f"{path}:{said.split(':', 1)[1]}" in err, err


def test_a_corrupt_gzip_body_is_one_line_and_exit_2(tmp_path):
    lines = [DEV] + [SMP | {"ts": t} for t in range(1, 3000)]
    data = bytearray(gzip.compress(("\n".join(json.dumps(x) for x in [META] + lines) + "\n").encode()))
    for i in range(200, 260):
        data[i] ^= 0x55
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(bytes(data))
    err = _one_line(tmp_path, "replay", str(path))
    assert f"{path}: cannot read trace: corrupt gzip data" in err


@pytest.mark.parametrize("reader", ["fast", "careful"])
def test_deep_nesting_in_an_unknown_sample_field_is_ignored_on_both_paths(tmp_path, monkeypatch, reader):
    """Unknown fields are ignored; Python's json cannot decode 100,000 levels, Arrow can:
    both paths accept the line, so what is accepted does not depend on the path."""
    if reader == "careful":
        _careful_only(monkeypatch)
    path = _trace(tmp_path, b'{"kind":"sample","ts":2,"node":"n","uuid":"GPU-1","x":' + b"[" * 100000 + b"]" * 100000 + b"}")
    assert replay([path], RateCard("USD", 3.6), Config()).summary["totals"]["gpu_seconds"] == 2.0


def test_a_time_just_before_9999_replays_with_iso_dates(tmp_path):
    late = 253370764800 - 30
    path = write_jsonl(tmp_path / "t.jsonl", [DEV | {"ts": late - 60}, SMP | {"ts": late}])
    code, out, err = run_cli("replay", str(path), "--json")
    assert code == 0, err
    assert json.loads(out)["window"] == {"start": "9998-12-31T23:59:29Z", "end": "9998-12-31T23:59:30Z"}
