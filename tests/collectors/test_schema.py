"""The published JSON Schema of the trace format agrees with the reader."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from collectors.errors import InputError
from collectors.records import from_json
from tests.collectors.test_trace_reader import DEV, smp

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "trace-format.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

GOOD = [
    {"kind": "meta", "format": "gpuledger-trace", "version": 1, "interval_s": 1.0, "source": "nvml", "future": True},
    {"kind": "node", "ts": 1, "node": "n", "labels": {"a": "b"}},
    DEV,
    {"kind": "pods", "ts": 1, "node": "n", "pods": [{"uid": "u", "namespace": "ns", "name": "p",
     "owner": {"kind": "Job", "name": "j"}, "containers": [{"name": "c", "devices": ["GPU-1"]}]}]},
    smp(), smp(util=None), smp(processes=[{"pid": 1, "pod_uid": "u", "util": 5.5, "mem_used_bytes": 3}]),
    {"kind": "meta", "format": "gpuledger-trace", "version": 1.1, "interval_s": 1.0},
    {"kind": "serving", "ts": 1, "node": "n", "pod_uid": "u", "requests": 12, "output_tokens": 3400.5,
     "input_tokens": None, "interval_s": 15},
    {"kind": "serving", "ts": 1, "node": "n", "pod_uid": "u"},
]
BAD = [
    {"kind": "meta", "format": "gpuledger-trace", "version": 2, "interval_s": 1.0},
    {"kind": "meta", "format": "gpuledger-trace", "version": 1, "interval_s": 0},
    {"kind": "node", "ts": "1", "node": "n"},
    {"kind": "devices", "ts": 1, "node": "n", "devices": [{"uuid": "x"}]},
    {"kind": "devices", "ts": 1, "node": "n", "devices": [{"uuid": "x", "model": "m", "parent_uuid": "y"}]},
    {"kind": "pods", "ts": 1, "node": "n", "pods": [{"uid": "u", "namespace": "ns"}]},
    smp(util=101), smp(util="5"), smp(mem_used_bytes=-1), smp(processes=[{"util": 1}]), smp(interval_s=0),
    {k: v for k, v in smp().items() if k != "ts"},
    {"kind": "other"},
    {"kind": "serving", "ts": 1, "node": "n"},
    {"kind": "serving", "ts": 1, "node": "n", "pod_uid": ""},
    {"kind": "serving", "ts": 1, "node": "n", "pod_uid": "u", "requests": -1},
    {"kind": "serving", "ts": 1, "node": "n", "pod_uid": "u", "output_tokens": "7"},
    {"kind": "serving", "ts": 1, "node": "n", "pod_uid": "u", "errors": 2e15},
]


@pytest.mark.parametrize("obj", GOOD)
def test_schema_and_reader_accept(obj):
    VALIDATOR.validate(obj)
    from_json(obj)


@pytest.mark.parametrize("obj", BAD)
def test_schema_and_reader_reject(obj):
    assert not VALIDATOR.is_valid(obj)
    with pytest.raises(InputError):
        from_json(obj)
