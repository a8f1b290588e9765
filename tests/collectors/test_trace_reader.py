"""Reading traces: both reader paths agree, every input mistake names file, line and field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from agent.config import Config
from agent.replay import replay
from collectors import tracefile
from collectors.errors import InputError
from collectors.pricing.ratecard import RateCard
from collectors.records import Device, DevicesRecord, Meta, Sample, Process, from_json, to_json
from collectors.tracefile import read_traces
from collectors.tracewriter import write_trace
from tests.conftest import META, write_jsonl

CARD = RateCard(currency="USD", default_gpu_hourly=3.6)
DEV = {"kind": "devices", "ts": 0, "node": "n", "devices": [
    {"uuid": "GPU-1", "index": 0, "model": "NVIDIA A100-SXM4-40GB"},
    {"uuid": "MIG-1", "parent_uuid": "GPU-1", "mig_profile": "1g.5gb", "model": "NVIDIA A100-SXM4-40GB"}]}


def smp(ts=1.0, **kw):
    return {"kind": "sample", "ts": ts, "node": "n", "uuid": "GPU-1", "util": 10} | kw


def error_of(tmp_path: Path, lines, meta=META, name="t.jsonl") -> InputError:
    path = write_jsonl(tmp_path / name, lines, meta=meta)
    with pytest.raises(InputError) as info:
        replay([path], CARD, Config())
    return info.value


@pytest.mark.parametrize("line, field, words", [
    ("{not json", None, "not valid JSON"),
    ('{"kind":"sample","ts":1} {"kind":"sample","ts":2}', None, "not valid JSON"),
    ("[1, 2]", None, "expected a JSON object"),
    (json.dumps(smp() | {"kind": "smaple"}), "kind", "expected one of meta, node, devices, pods, sample"),
    (json.dumps({k: v for k, v in smp().items() if k != "uuid"}), "uuid", "is required"),
    (json.dumps(smp(ts="soon")), "ts", "expected a number"),
    (json.dumps(smp(util=150)), "util", "from 0 to 100"),
    (json.dumps(smp(util="N/A")), "util", "expected a number"),
    (json.dumps(smp(mem_used_bytes=-1)), "mem_used_bytes", "at least 0"),
    (json.dumps(smp(interval_s=0)), "interval_s", "above 0"),
    (json.dumps(smp(node="")), "node", "non-empty string"),
    ('{"kind":"sample","ts":NaN,"node":"n","uuid":"GPU-1","util":1}', "ts", "expected a number"),
    (json.dumps(smp(processes=[{"util": 5}])), "processes[0].pid", "is required"),
    (json.dumps(smp(processes=[{"pid": 1.5}])), "processes[0].pid", "whole number"),
    (json.dumps(smp(processes=[{"pid": 1, "util": 101}])), "processes[0].util", "from 0 to 100"),
    (json.dumps(smp(processes="x")), "processes", "expected a list"),
    (json.dumps(META), "kind", "first line only"),
    (json.dumps({"kind": "pods", "ts": 0, "node": "n", "pods": [{"uid": "u", "namespace": "x"}]}), "pods[0].name", "is required"),
    (json.dumps({"kind": "node", "ts": 0, "node": "n", "labels": {"a": 1}}), "labels", "string values"),
    (json.dumps({"kind": "serving", "ts": 1, "node": "n"}), "pod_uid", "is required"),
    (json.dumps({"kind": "serving", "ts": 1, "node": "n", "pod_uid": "u", "requests": -3}), "requests", "from 0 to"),
    (json.dumps({"kind": "serving", "ts": 1, "node": "n", "pod_uid": "u", "output_tokens": "9"}), "output_tokens",
     "expected a number"),
    (json.dumps({"kind": "serving", "ts": 1, "node": "n", "pod_uid": "u", "interval_s": -1}), "interval_s", "above 0"),
])
@pytest.mark.parametrize("reader", ["fast", "careful"])
def test_bad_line_names_file_line_and_field(tmp_path, monkeypatch, reader, line, field, words):
    if reader == "careful":
        _careful_only(monkeypatch)
    err = error_of(tmp_path, [DEV, smp(), "", line, smp(2.0)])
    assert err.file.endswith("t.jsonl")
    assert err.line == 5  # meta, devices, sample, blank, the bad line
    assert err.field == field
    assert words in err.message
    assert f"t.jsonl:5: " in str(err)


@pytest.mark.parametrize("meta, field, words", [
    ({"kind": "meta", "format": "gpuledger-trace", "version": 2, "interval_s": 1}, "version", "trace format v1"),
    ({"kind": "meta", "format": "other", "version": 1, "interval_s": 1}, "format", "gpuledger-trace"),
    ({"kind": "meta", "format": "gpuledger-trace", "version": 1}, "interval_s", "is required"),
    ({"kind": "meta", "format": "gpuledger-trace", "version": 1, "interval_s": -1}, "interval_s", "above 0"),
    (smp(), "kind", "meta record on the first line"),
])
def test_bad_meta(tmp_path, meta, field, words):
    err = error_of(tmp_path, [DEV], meta=meta)
    assert (err.line, err.field) == (1, field)
    assert words in err.message


def test_sample_before_its_devices_record(tmp_path):
    err = error_of(tmp_path, [smp(ts=0.5), {**DEV, "ts": 1}])
    assert (err.line, err.field) == (2, "node")
    assert "before any devices record" in err.message


def test_sample_of_a_device_not_in_the_record(tmp_path):
    err = error_of(tmp_path, [DEV, smp(), smp(uuid="GPU-9")])
    assert (err.line, err.field) == (4, "uuid")


def test_sample_of_a_device_removed_by_a_later_record(tmp_path):
    later = {**DEV, "ts": 5, "devices": [{"uuid": "GPU-2", "model": "x"}]}
    err = error_of(tmp_path, [DEV, smp(ts=4), later, smp(ts=6)])
    assert (err.line, err.field) == (5, "uuid")


@pytest.mark.parametrize("devs, field, words", [
    ([{"uuid": "GPU-1", "model": "m"}, {"uuid": "GPU-1", "model": "m"}], "devices[1].uuid", "duplicate"),
    ([{"uuid": "MIG-1", "parent_uuid": "GPU-0", "mig_profile": "1g.5gb", "model": "m"}], "devices[0].parent_uuid", "not a device"),
    ([{"uuid": "GPU-1", "model": "m"}, {"uuid": "MIG-1", "parent_uuid": "GPU-1", "model": "m"}], "devices[1].mig_profile", "is required"),
    ([{"uuid": "GPU-1", "model": "Tesla T4"}, {"uuid": "MIG-1", "parent_uuid": "GPU-1", "mig_profile": "1g.5gb", "model": "Tesla T4"}], "devices[1].parent_uuid", "not a MIG-capable model"),
    ([{"uuid": "GPU-1", "model": "NVIDIA A100-SXM4-40GB"}, {"uuid": "MIG-1", "parent_uuid": "GPU-1", "mig_profile": "big", "model": "x"}], "devices[1].mig_profile", "MIG profile"),
    ([{"uuid": "GPU-1", "model": "NVIDIA A100-SXM4-40GB"}] + [{"uuid": f"MIG-{i}", "parent_uuid": "GPU-1", "mig_profile": "4g.20gb", "model": "x"} for i in range(2)], "devices", "add up to 8"),
])
def test_bad_devices_record(tmp_path, devs, field, words):
    err = error_of(tmp_path, [{"kind": "devices", "ts": 0, "node": "n", "devices": devs}])
    assert (err.line, err.field) == (2, field)
    assert words in err.message


def test_errors_in_later_blocks_keep_their_line_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(tracefile, "BLOCK_BYTES", 256)
    lines = [DEV] + [smp(float(i)) for i in range(1, 200)]
    lines[150] = smp(150.0, util=-5)
    err = error_of(tmp_path, lines)
    assert (err.line, err.field) == (152, "util")


def test_empty_missing_and_corrupt_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="is empty"):
        read_traces([empty])
    with pytest.raises(InputError, match="cannot read trace"):
        read_traces([tmp_path / "missing.jsonl"])
    data = gzip.compress(("\n".join(json.dumps(x) for x in [META, DEV] + [smp(float(i)) for i in range(1, 500)])).encode())
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        read_traces([broken])
    assert info.value.file == str(broken)


def _careful_only(monkeypatch):
    """Make Arrow reject every block, so the reader takes its careful path throughout."""
    import pyarrow as pa

    def reject(*args, **kwargs):
        raise pa.ArrowInvalid("forced by the test")

    monkeypatch.setattr(tracefile.pajson, "read_json", reject)


def test_fast_and_careful_readers_agree(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    lines = [DEV]
    for i in range(1, 400):
        s = smp(float(i), util=None if i % 7 == 0 else float(rng.integers(0, 101)),
                mem_used_bytes=int(rng.integers(0, 1 << 34)), power_w=float(rng.uniform(50, 400)))
        if i % 3 == 0:
            s["processes"] = [{"pid": 10 + j, "pod_uid": f"u{j}", "util": float(j), "mem_used_bytes": 5} for j in range(i % 4)]
        if i % 5 == 0:
            s["interval_s"] = 2.5
        if i % 11 == 0:
            s["uuid"] = "MIG-1"
        lines.append(s)
        if i % 50 == 0:
            lines.append("")
        if i % 4 == 0:  # serving records (v1.1) between the samples, some counts unknown
            lines.append({"kind": "serving", "ts": float(i), "node": "n", "pod_uid": f"u{i % 3}",
                          "requests": float(rng.integers(0, 500)), "output_tokens": None if i % 8 else 77.5,
                          **({"interval_s": 4.0} if i % 12 == 0 else {})})
    path = write_jsonl(tmp_path / "t.jsonl", lines)
    fast = read_traces([path])
    _careful_only(monkeypatch)
    careful = read_traces([path])
    from collectors.samples import ServingColumns

    fs, cs = ServingColumns.concat(fast.serving), ServingColumns.concat(careful.serving)
    assert len(fs) == 99
    for name in fs.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(fs, name), getattr(cs, name), err_msg=name)
    for name in fast.samples.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(fast.samples, name), getattr(careful.samples, name), err_msg=name)
    assert fast.interners.uuids.names == careful.interners.uuids.names
    assert fast.interners.pods.names == careful.interners.pods.names
    assert [r for _, r in fast.states] == [r for _, r in careful.states]


def test_crlf_blank_lines_unknown_fields_are_accepted(tmp_path):
    text = "\r\n".join([json.dumps(META | {"future": 1}), json.dumps(DEV | {"extra": {"a": [1]}}), "",
                        "   ", json.dumps(smp(1.0) | {"new_field": "x"})]) + "\r\n"
    path = tmp_path / "t.jsonl"
    path.write_text(text)
    trace = read_traces([path])
    assert len(trace.samples) == 1
    assert trace.samples.line.tolist() == [5]


def test_records_round_trip_through_json():
    records = [
        Meta(interval_s=2.0, source="nvml", created="2026-11-20T10:00:00Z"),
        DevicesRecord(3.0, "n", (Device("GPU-1", "m", 1024.0, 0), Device("MIG-1", "m", None, None, "GPU-1", "1g.5gb"))),
        Sample(4.0, "n", "GPU-1", None, 5.0, 60.5, 2.0, (Process(1, "u", 10.0, 3.0),)),
        Sample(4.0, "n", "GPU-1", 55.5),
    ]
    for record in records:
        assert from_json(json.loads(json.dumps(to_json(record)))) == record


def test_gzip_multi_file_replay_equals_one_merged_file(tmp_path):
    def node(name, uuid, t0):
        return [{"kind": "devices", "ts": 0, "node": name, "devices": [{"uuid": uuid, "model": "Tesla T4"}]},
                {"kind": "pods", "ts": 0, "node": name, "pods": [
                    {"uid": f"p-{name}", "namespace": name, "name": "x", "containers": [{"devices": [uuid]}]}]}] + [
            {"kind": "sample", "ts": t0 + i, "node": name, "uuid": uuid, "util": float(i % 100)} for i in range(1, 300)]

    a, b = node("a", "GPU-a", 0.5), node("b", "GPU-b", 0.0)
    fa = write_jsonl(tmp_path / "a.jsonl.gz", a)
    fb = write_jsonl(tmp_path / "b.jsonl.gz", b)
    merged = sorted(a + b, key=lambda r: r["ts"])
    fm = write_jsonl(tmp_path / "m.jsonl", merged)
    two = replay([fa, fb], CARD, Config()).summary
    one = replay([fm], CARD, Config()).summary
    assert two == one
    assert two["totals"]["gpu_seconds"] == pytest.approx(2 * 299)
    assert {t["team"]: t["used_gpu_seconds"] for t in two["teams"]} == pytest.approx(
        {"a": sum(i % 100 for i in range(1, 300)) / 100, "b": sum(i % 100 for i in range(1, 300)) / 100})


def test_writer_leaves_nothing_when_interrupted(tmp_path):
    out = tmp_path / "t.jsonl.gz"
    with pytest.raises(RuntimeError):
        def records():
            yield DevicesRecord(0.0, "n", (Device("GPU-1", "m"),))
            raise RuntimeError("boom")
        write_trace(out, Meta(interval_s=1.0), records())
    assert list(tmp_path.iterdir()) == []
    write_trace(out, Meta(interval_s=1.0), [DevicesRecord(0.0, "n", (Device("GPU-1", "m"),)), Sample(1.0, "n", "GPU-1", 5.0)])
    assert len(read_traces([out]).samples) == 1


def test_written_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    out = tmp_path / "t.jsonl"
    write_trace(out, Meta(interval_s=1.0), [])
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask
