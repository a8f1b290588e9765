"""The Alibaba GenTD26 importer: a hand-made directory with exact records, and the real data.

The fixture (tests/fixtures/alibaba_genai) has four container IPs on a 10 s grid:
A is on every reading; B's duty cycle and memory each miss one reading the other has;
C starts late; D is seen at 1000 and again at 1200, a gap above the default --max-gap
(10 intervals = 100 s), so D is two pods (an IP reused).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import shutil
import tarfile
import uuid
from pathlib import Path

import pytest

from agent.config import Config
from agent.replay import replay
from collectors.errors import InputError
from collectors.importers import IMPORTERS
from collectors.importers import alibaba_genai
from collectors.pricing.ratecard import RateCard
from collectors.records import DevicesRecord, Meta, NodeRecord, PodsRecord, Sample, ServingRecord, to_json
from collectors.tracefile import iter_records
from tests.conftest import shared_data

pytestmark = pytest.mark.slow  # drives real processes or servers; see README "Fast loop"

FIXTURE = Path(__file__).parents[1] / "fixtures" / "alibaba_genai"
DUTY = "pod_gpu_duty_cycle_anon"
MEMORY = "pod_gpu_memory_used_bytes_anon"
S = 1767225600.0  # default --start: 2026-01-01T00:00:00Z; the fixture's earliest reading is 1000
A, B, C, D = ("a" * 32, "b" * 32, "c" * 32, "d" * 32)


def run_import(source: Path, out: Path, *options: str) -> tuple[str, list]:
    """Run the importer as `gpuledger import alibaba-genai SOURCE --out OUT OPTIONS` would."""
    importer = IMPORTERS["alibaba-genai"]
    parser = argparse.ArgumentParser()
    importer.add_arguments(parser)
    summary = importer.run(parser.parse_args([str(source), *options]), out)
    return summary, [record for _, record in iter_records(out)]


def pack_directory(src: Path, dst: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A GenTD26-style directory: each CSV inside its own .tar.gz, as published."""
    dst.mkdir(parents=True, exist_ok=True)
    members = {DUTY: (src / f"{DUTY}.csv").read_bytes(), MEMORY: (src / f"{MEMORY}.csv").read_bytes()}
    for stem, data in (extra or {}).items():
        members[stem] = data
    for stem, data in members.items():
        with tarfile.open(dst / f"{stem}.tar.gz", "w:gz") as archive:
            info = tarfile.TarInfo(f"{stem}.csv")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return dst


def uid(ip: str) -> str:
    return str(uuid.UUID(hex=ip))


D2_UID = str(uuid.UUID(hex=hashlib.md5(f"{D}/2".encode()).hexdigest()))


def pod_json(name: str, pod_uid: str, device: str) -> dict:
    return {
        "uid": pod_uid, "namespace": "genai", "name": name,
        "labels": {"app": "sd-inference", "team": "genai"},
        "owner": {"kind": "Deployment", "name": "sd-inference"},
        "containers": [{"name": "inference", "devices": [device]}],
    }


POD_A = pod_json("sd-inference-aaaaaaaaaa", uid(A), "GPU-genai-node-000-0")
POD_B = pod_json("sd-inference-bbbbbbbbbb", uid(B), "GPU-genai-node-000-1")
POD_C = pod_json("sd-inference-cccccccccc", uid(C), "GPU-genai-node-001-0")
POD_D1 = pod_json("sd-inference-dddddddddd", uid(D), "GPU-genai-node-001-0")
POD_D2 = pod_json("sd-inference-dddddddddd-2", D2_UID, "GPU-genai-node-000-0")


def devices_json(t: float, node: str) -> dict:
    return {"kind": "devices", "ts": t, "node": node, "devices": [
        {"uuid": f"GPU-{node}-{i}", "index": i, "model": "NVIDIA L20", "memory_total_bytes": 48 << 30}
        for i in range(2)]}


def sample_json(t: float, node: str, gpu: int, pod_uid: str, util, mem) -> dict:
    process = {"pid": 1, "pod_uid": pod_uid}
    sample = {"kind": "sample", "ts": t, "node": node, "uuid": f"GPU-{node}-{gpu}", "interval_s": 10.0}
    if util is not None:
        sample["util"] = process["util"] = util
    if mem is not None:
        sample["mem_used_bytes"] = process["mem_used_bytes"] = mem
    sample["processes"] = [process]
    return sample if util is not None else sample | {"util": None}


N0, N1 = "genai-node-000", "genai-node-001"
EXPECTED = [
    {"kind": "meta", "format": "gpuledger-trace", "version": 1, "interval_s": 10.0, "source": "alibaba-genai"},
    {"kind": "node", "ts": S, "node": N0, "labels": {}},
    devices_json(S, N0),
    {"kind": "node", "ts": S, "node": N1, "labels": {}},
    devices_json(S, N1),
    {"kind": "pods", "ts": S, "node": N0, "pods": [POD_A, POD_B]},
    {"kind": "pods", "ts": S, "node": N1, "pods": [POD_D1]},
    sample_json(S, N0, 0, uid(A), 10.0, 1000000000),
    sample_json(S, N0, 1, uid(B), 0.0, 100),
    sample_json(S, N1, 0, uid(D), 50.0, 5000),
    {"kind": "pods", "ts": S + 10, "node": N1, "pods": []},  # D's first life ended (next scrape missed it)
    sample_json(S + 10, N0, 0, uid(A), 12.5, 2000000000),
    sample_json(S + 10, N0, 1, uid(B), 1.0, 200),
    {"kind": "pods", "ts": S + 20, "node": N1, "pods": [POD_C]},  # C takes the GPU D left
    sample_json(S + 20, N0, 0, uid(A), 0.0, 3000000000),
    sample_json(S + 20, N0, 1, uid(B), 2.0, None),  # no memory reading at 1020
    sample_json(S + 20, N1, 0, uid(C), 7.0, 700),
    sample_json(S + 30, N0, 0, uid(A), 99.5, 4000000000),
    sample_json(S + 30, N0, 1, uid(B), None, 300),  # no duty-cycle reading at 1030
    sample_json(S + 30, N1, 0, uid(C), 8.0, 800),
    {"kind": "pods", "ts": S + 40, "node": N0, "pods": [POD_A]},
    {"kind": "pods", "ts": S + 40, "node": N1, "pods": []},
    sample_json(S + 40, N0, 0, uid(A), 3.0, 5000000000),
    {"kind": "pods", "ts": S + 50, "node": N0, "pods": []},
    {"kind": "pods", "ts": S + 200, "node": N0, "pods": [POD_D2]},  # D's IP again: a new pod
    sample_json(S + 200, N0, 0, D2_UID, 60.0, 6000),
]


def as_json(records) -> list[dict]:
    return [json.loads(json.dumps(to_json(r))) for r in records]


# --------------------------------------------------------------------------- hand-made data


def test_extracted_csvs_give_exact_records(tmp_path):
    summary, records = run_import(FIXTURE, tmp_path / "t.jsonl", "--gpus-per-node", "2")
    assert as_json(records) == EXPECTED
    assert "13 samples of 5 pods (4 container IPs, 1 reused after gaps over 100 s) on 2 nodes" in summary
    assert "duty cycle unknown in 1, memory in 1" in summary


def test_tar_gz_members_give_the_same_records(tmp_path):
    qps = b"timestamp_anon,value,container_ip,request_type\n1000.0,0.09,,API Requests\n"
    source = pack_directory(FIXTURE, tmp_path / "genai", extra={"qps": qps})
    _, records = run_import(source, tmp_path / "t.jsonl.gz", "--gpus-per-node", "2")
    assert as_json(records) == EXPECTED
    assert sorted(p.name for p in source.iterdir()) == [
        f"{DUTY}.tar.gz", f"{MEMORY}.tar.gz", "qps.tar.gz"]  # nothing extracted beside them


def test_every_sample_comes_after_its_devices_and_in_time_order(tmp_path):
    _, records = run_import(FIXTURE, tmp_path / "t.jsonl")  # default 8 GPUs per node: one node
    listed: set[tuple[str, str]] = set()
    last = -1.0
    for r in records[1:]:
        assert r.ts >= last
        last = r.ts
        if isinstance(r, DevicesRecord):
            listed |= {(r.node, d.uuid) for d in r.devices}
        if isinstance(r, Sample):
            assert (r.node, r.uuid) in listed
    assert {r.node for r in records if isinstance(r, NodeRecord)} == {N0}


def test_options_override_the_assumptions(tmp_path):
    _, records = run_import(
        FIXTURE, tmp_path / "t.jsonl", "--namespace", "sd", "--team", "art", "--deployment", "sdxl",
        "--gpu-model", "NVIDIA A10", "--gpu-memory-gib", "24", "--gpus-per-node", "4",
        "--instance-type", "ecs.gn7i-c32g1.32xlarge", "--start", "0", "--max-gap", "inf",
    )
    node = records[1]
    assert node == NodeRecord(ts=0.0, node=N0, labels={"node.kubernetes.io/instance-type": "ecs.gn7i-c32g1.32xlarge"})
    assert {(d.model, d.memory_total_bytes) for d in records[2].devices} == {("NVIDIA A10", 24 << 30)}
    assert len(records[2].devices) == 4
    pods = {p.uid: p for r in records if isinstance(r, PodsRecord) for p in r.pods}
    assert len(pods) == 4  # never split: D is one pod whose last sample covers the 200 s gap
    assert {(p.namespace, p.labels["team"], p.owner.name) for p in pods.values()} == {("sd", "art", "sdxl")}
    assert pods[uid(D)].name == "sdxl-dddddddddd"
    d_samples = [r for r in records if isinstance(r, Sample) and r.processes[0].pod_uid == uid(D)]
    assert [(r.ts, r.interval_s) for r in d_samples] == [(0.0, 10.0), (200.0, 200.0)]


def test_pack_is_first_fit():
    spans = [(0, 10), (0, 5), (0, 20), (5, 8), (9, 12), (20, 30)]
    assert alibaba_genai.pack(spans, 2) == [(0, 0), (0, 1), (1, 0), (0, 1), (0, 1), (0, 0)]


# --------------------------------------------------------------------------- mistakes


def error_of(source: Path, tmp_path: Path, *options: str) -> InputError:
    out = tmp_path / "out.jsonl"
    with pytest.raises(InputError) as info:
        run_import(source, out, *options)
    assert not out.exists(), "nothing may be written when the input is bad"
    return info.value


def broken(tmp_path: Path, stem: str, edit) -> Path:
    """A copy of the fixture with one file's lines edited."""
    source = tmp_path / "src"
    shutil.copytree(FIXTURE, source)
    path = source / f"{stem}.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")
    return source


@pytest.mark.parametrize("stem, edit, line, field, words", [
    (DUTY, lambda ls: ["value,timestamp,container_ip"] + ls[1:], 1, "timestamp_anon", "no 'timestamp_anon' column"),
    (MEMORY, lambda ls: ["timestamp_anon,container_ip"] + ls[1:], 1, "value", "no 'value' column"),
    (DUTY, lambda ls: ls[:3] + [f"101.0,1005.0,{A}"] + ls[3:], 4, "value", "duty cycle from 0 to 100"),
    (DUTY, lambda ls: ls[:3] + [f"abc,1005.0,{A}"] + ls[3:], 4, "value", "expected a number, got 'abc'"),
    (MEMORY, lambda ls: ls + [f"1050.0,60000000000.0,{A}"], 14, "value", "pass a larger --gpu-memory-gib"),
    (MEMORY, lambda ls: ls + [f"1050.0,-1,{A}"], 14, "value", "at least 0"),
    (MEMORY, lambda ls: ls + [f"soon,1,{A}"], 14, "timestamp_anon", "expected a number"),
    (MEMORY, lambda ls: ls + ["1050.0,1,"], 14, "container_ip", "empty"),
    (MEMORY, lambda ls: ls + [f"1000.0,5.0,{A}"], 14, "timestamp_anon", "already has a value at timestamp 1000 (line 2)"),
    (DUTY, lambda ls: ls + ["1.0,1050.0"], 14, None, "expected 3 values"),
])
def test_bad_input_names_file_line_and_field(tmp_path, stem, edit, line, field, words):
    source = broken(tmp_path, stem, edit)
    err = error_of(source, tmp_path)
    assert (err.file, err.line, err.field) == (str(source / f"{stem}.csv"), line, field)
    assert words in err.message


def test_error_inside_a_tar_member_names_the_member(tmp_path):
    source = broken(tmp_path, DUTY, lambda ls: ls + [f"250,1050.0,{A}"])
    packed = pack_directory(source, tmp_path / "packed")
    err = error_of(packed, tmp_path)
    assert (err.file, err.line, err.field) == (f"{packed / DUTY}.tar.gz/{DUTY}.csv", 14, "value")


def test_missing_file_and_missing_directory(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(FIXTURE / f"{DUTY}.csv", source)
    err = error_of(source, tmp_path)
    assert err.file == str(source) and f"{MEMORY}.tar.gz" in err.message
    err = error_of(tmp_path / "nowhere", tmp_path)
    assert "GenTD26 directory" in err.message


def test_corrupt_archive(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / f"{DUTY}.tar.gz").write_bytes(b"not a tar")
    err = error_of(source, tmp_path)
    assert err.file == str(source / f"{DUTY}.tar.gz") and "cannot read the archive" in err.message


def test_registry_entry():
    importer = IMPORTERS["alibaba-genai"]
    assert importer.run is alibaba_genai.run and "--gpus-per-node" in importer.description
    assert {"nvidia-smi", "alibaba-genai"} <= set(IMPORTERS)


def test_docs_mention_every_option():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "importers.md").read_text()
    for importer in IMPORTERS.values():
        parser = argparse.ArgumentParser()
        importer.add_arguments(parser)
        assert f"gpuledger import {importer.name}" in docs
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option in docs, f"docs/importers.md does not describe {importer.name} {option}"


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def genai() -> Path:
    data = shared_data()
    if data is None or not (data / "alibaba-genai-2026" / f"{DUTY}.tar.gz").is_file():
        pytest.skip("real GenTD26 data not found: set GPULEDGER_SHARED_DATA or check out "
                    "../shared/data beside the project (see shared/data/README.md)")
    return data / "alibaba-genai-2026"


def read_member(path: Path) -> list[dict[str, str]]:
    """A published CSV's rows, read straight from its archive with DictReader."""
    with tarfile.open(path) as archive:
        (member,) = [m for m in archive.getmembers() if m.isfile()]
        text = archive.extractfile(member).read().decode()
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def real(genai, tmp_path_factory):
    out = tmp_path_factory.mktemp("genai") / "genai.jsonl.gz"
    summary, records = run_import(genai, out)
    return out, summary, records


def test_real_data_pods_and_samples(genai, real):
    _, summary, records = real
    duty = read_member(genai / f"{DUTY}.tar.gz")
    memory = read_member(genai / f"{MEMORY}.tar.gz")
    duty_ips = {r["container_ip"] for r in duty}
    memory_ips = {r["container_ip"] for r in memory}
    assert len(duty_ips) == 143  # the published pod count
    assert len(memory_ips) == 144 and len(memory_ips - duty_ips) == 1  # one IP with a lone 0-byte reading
    pods = {p.uid: p for r in records if isinstance(r, PodsRecord) for p in r.pods}
    # 144 IPs; three go silent for 40 min to 10 h and come back: reused IPs, so new pods
    assert len(pods) == 147
    assert {p.name.split("-")[2] for p in pods.values()} == {ip[:10] for ip in memory_ips}
    keys = {(r["container_ip"], r["timestamp_anon"]) for r in duty} | {
        (r["container_ip"], r["timestamp_anon"]) for r in memory}
    got = [r for r in records if isinstance(r, Sample)]
    assert len(got) == len(keys) == 161415  # the two files joined on (pod, timestamp)
    assert sum(r.util is None for r in got) == len(keys) - len(duty)
    assert sum(r.mem_used_bytes is None for r in got) == len(keys) - len(memory)
    assert records[0] == Meta(interval_s=57.0, source="alibaba-genai", version=1.1)  # 1.1: it holds QPS
    assert "161,415 samples of 147 pods (144 container IPs, 3 reused" in summary


def test_real_data_memory_matches_the_csv(genai, real):
    _, _, records = real
    memory = read_member(genai / f"{MEMORY}.tar.gz")
    duty = read_member(genai / f"{DUTY}.tar.gz")
    earliest = min(float(r["timestamp_anon"]) for r in memory + duty)
    pod_uids: dict[str, set[str]] = {}
    for r in records:
        if isinstance(r, PodsRecord):
            for p in r.pods:
                pod_uids.setdefault(p.name.split("-")[2], set()).add(p.uid)
    found = {(r.ts, r.processes[0].pod_uid): r for r in records if isinstance(r, Sample)}
    for row in (memory[0], memory[1], memory[5000], memory[77777], memory[120000], memory[-1]):
        ts = 1767225600.0 + float(row["timestamp_anon"]) - earliest
        (sample,) = [found[(ts, u)] for u in pod_uids[row["container_ip"][:10]] if (ts, u) in found]
        assert sample.mem_used_bytes == float(row["value"])
        assert sample.processes[0].mem_used_bytes == float(row["value"])
    for row in (duty[0], duty[4242], duty[-1]):
        ts = 1767225600.0 + float(row["timestamp_anon"]) - earliest
        (sample,) = [found[(ts, u)] for u in pod_uids[row["container_ip"][:10]] if (ts, u) in found]
        assert sample.util == float(row["value"])
    peak = max(r.mem_used_bytes or 0 for r in records if isinstance(r, Sample)) / (1 << 30)
    assert 46.5 < peak < 48  # published: peak GPU memory per pod reaches ~47 GiB
    assert peak == pytest.approx(max(float(r["value"]) for r in memory) / (1 << 30))


def test_real_data_replays_fully_allocated(real):
    out, _, records = real
    result = replay([out], RateCard(currency="USD", default_gpu_hourly=1.0), Config())
    totals = result.summary["totals"]
    assert totals["unallocated_gpu_seconds"] == 0  # every sampled GPU-second is a pod's
    expected = sum(r.interval_s for r in records if isinstance(r, Sample))
    assert totals["allocated_gpu_seconds"] == pytest.approx(expected, rel=1e-12)
    assert result.summary["workloads"][0]["pods"] == 147


def test_real_data_qps_becomes_serving_records_and_cost_per_request(genai, real):
    """Each pod-level QPS reading is QPS × 57 s requests over the 57 s before it; the gateway's
    own rows (no container_ip) are left out. Computed here from the raw CSV."""
    out, summary, records = real
    qps = read_member(genai / "qps.tar.gz")
    pod_rows = [r for r in qps if r["container_ip"]]
    assert len(qps) - len(pod_rows) == 1114  # 'API Requests' rows: the gateway, not a pod
    expected = sum(float(r["value"]) * 57.0 for r in pod_rows)
    served = [r for r in records if isinstance(r, ServingRecord)]
    assert len(served) == len(pod_rows) == 23513 and all(r.interval_s == 57.0 for r in served)
    assert sum(r.requests for r in served) == pytest.approx(expected, rel=1e-12)
    assert "23,513 serving records from the QPS file (1,114 gateway rows" in summary
    result = replay([out], RateCard(currency="USD", default_gpu_hourly=1.0), Config())
    [w] = result.summary["workloads"]
    # every GPU-second at 1.00/h: cost = GPU-hours; cost per 1,000 requests from the raw files
    gpu_hours = sum(r.interval_s for r in records if isinstance(r, Sample)) / 3600
    assert w["requests"] == pytest.approx(expected, rel=1e-12)
    assert w["cost_per_1k_requests"] == pytest.approx(gpu_hours / expected * 1000, rel=1e-9)
