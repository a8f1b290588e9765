"""`gpuledger record`: durations, the record loop, and recorded traces that replay exactly."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.cmd_record import register
from agent.durations import parse_duration
from agent.config import Config
from agent.recorder import record
from agent.replay import replay
from collectors.errors import InputError
from collectors.faults import FaultCounter
from collectors.nvml import NvmlCollector
from collectors.pricing.ratecard import load_rate_card
from collectors.procfs import PodResolver
from collectors.records import Container, Device, DevicesRecord, Pod, PodsRecord, Sample
from collectors.tracefile import iter_records
from tests.fakenvml import (  # noqa: F401  (fake_nvml is a fixture)
    DRIVER_NOT_LOADED, MIB, NO_PERMISSION, FakeNvml, FakeProc, fake_nvml, h100, h100_mig, h200_mig, l40s,
)

ROOT = Path(__file__).resolve().parents[2]
RATES = """\
currency: USD
gpus:
  "NVIDIA H100 80GB HBM3": 2.50
  "NVIDIA L40S": 1.00
  "NVIDIA H200": 3.00
default_gpu_hourly: 9.00
"""
POD_A = "aaaaaaaa-0000-4000-8000-000000000001"
POD_B = "bbbbbbbb-0000-4000-8000-000000000002"
POD_C = "cccccccc-0000-4000-8000-000000000003"
POD_D = "dddddddd-0000-4000-8000-000000000004"

# `gpuledger record` as the CLI runs it
RECORD = "import sys\nfrom agent.cli import main\nsys.exit(main(sys.argv[1:]))\n"


# --------------------------------------------------------------------- durations


@pytest.mark.parametrize("text, seconds", [
    ("500ms", 0.5), ("1s", 1.0), ("10m", 600.0), ("2h", 7200.0), ("1h30m", 5400.0), ("1.5s", 1.5),
    ("2", 2.0), ("0.25", 0.25), (" 10S ", 10.0), (".5s", 0.5),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "0", "0s", "5x", "s", "1 s", "-1s", "1s2", "10mm", "ms"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpuledger")
    register(parser.add_subparsers())
    return parser


@pytest.mark.parametrize("argv", [
    ["record"], ["record", "--out", "x.jsonl", "--duration", "ten minutes"],
    ["record", "--out", "x.jsonl", "--interval", "0"], ["record", "--out", "x.jsonl", "--interval", "10ms"],
])
def test_bad_flags_exit_2(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(argv)
    assert exit_.value.code == 2
    assert "gpuledger record: error:" in capsys.readouterr().err


def test_flags() -> None:
    args = _parser().parse_args(["record", "--out", "t.jsonl.gz", "--interval", "500ms", "--duration", "10m"])
    assert (args.out, args.interval, args.duration, args.proc_root) == ("t.jsonl.gz", 0.5, 600.0, "/proc")


# --------------------------------------------------------------------- the loop


class Ticker:
    """A RecordSource that returns a devices record first and a sample per poll."""

    def __init__(self, fail_every: int = 0) -> None:
        self.polls: list[float] = []
        self.closed = False
        self.fail_every = fail_every

    def poll(self, now: float) -> list:
        self.polls.append(now)
        if self.fail_every and len(self.polls) % self.fail_every == 0:
            raise RuntimeError("boom")
        out = [] if len(self.polls) > 1 else [DevicesRecord(now, "n", (Device("GPU-1", "NVIDIA L40S"),))]
        if len(self.polls) > 1:
            out.append(Sample(now, "n", "GPU-1", 50.0))
        return out

    def close(self) -> None:
        self.closed = True


class PodsOnce:
    """A RecordSource standing in for the Kubernetes collectors: one pods snapshot."""

    def __init__(self, pods: tuple[Pod, ...]) -> None:
        self.pods, self.sent = pods, False

    def poll(self, now: float) -> list:
        if self.sent:
            return []
        self.sent = True
        return [PodsRecord(now, "gpu-a", self.pods)]

    def close(self) -> None:
        pass


def test_loop_polls_on_a_grid_for_the_duration_and_closes(tmp_path: Path) -> None:
    source = Ticker()
    stats = record(tmp_path / "t.jsonl", [source], 0.05, 0.3, handle_signals=False)
    assert source.closed
    assert 6 <= stats.polls <= 8 and stats.stopped_by == "duration"
    lines = list(iter_records(tmp_path / "t.jsonl"))
    assert lines[0][1].interval_s == 0.05 and lines[0][1].source == "nvml"
    assert stats.lines == len(lines) and stats.samples == stats.polls - 1


def test_state_records_are_written_before_samples_of_the_same_poll(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    record(out, [Ticker(), PodsOnce(())], 0.05, 0.12, handle_signals=False)
    kinds = [r.__class__.__name__ for _, r in iter_records(out)]
    assert kinds[:3] == ["Meta", "DevicesRecord", "PodsRecord"]


def test_a_source_that_raises_is_counted_and_the_loop_goes_on(tmp_path: Path, caplog) -> None:
    faults = FaultCounter()
    source = Ticker(fail_every=2)
    stats = record(tmp_path / "t.jsonl", [source], 0.02, 0.2, faults=faults, handle_signals=False)
    assert faults.count("record", "source_failed") == stats.polls // 2 >= 4
    assert sum("source_failed" in r.getMessage() for r in caplog.records if r.levelname == "WARNING") == 1


def test_stop_event_ends_the_loop_with_a_last_poll(tmp_path: Path) -> None:
    stop = threading.Event()
    source = Ticker()
    threading.Timer(0.15, stop.set).start()
    stats = record(tmp_path / "t.jsonl", [source], 10.0, None, stop=stop, handle_signals=False)
    assert stats.polls == 2 and stats.seconds < 5  # the first poll, and one when stopped
    assert (tmp_path / "t.jsonl").exists()


# --------------------------------------------------------------------- record -> replay


def _cgroup(root: Path, pid: int, uid: str) -> None:
    (root / str(pid)).mkdir(parents=True, exist_ok=True)
    (root / str(pid) / "cgroup").write_text(f"0::/kubepods/burstable/pod{uid}/0123abcd\n")


def _pod(uid: str, team: str, *devices: str) -> Pod:
    return Pod(uid=uid, namespace=team, name=f"{team}-0", labels={"team": team},
               containers=(Container("main", tuple(devices)),))


def _seconds(trace: Path) -> dict[str, float]:
    """Observed seconds per device, read from the trace's sample lines (no gpuledger code)."""
    out: dict[str, float] = {}
    for line in trace.read_text().splitlines():
        obj = json.loads(line)
        if obj["kind"] == "sample":
            out[obj["uuid"]] = out.get(obj["uuid"], 0.0) + obj["interval_s"]
    return out


@pytest.mark.slow
def test_a_recorded_trace_replays_to_what_the_fake_was_told(fake_nvml: FakeNvml, tmp_path: Path, rates) -> None:
    """Record 1.2 s at 0.2 s through pynvml + the fake, with a pods source; replay; compare.

    Told: H100 at 60 % held by pod A; an L40S at 40 % shared by pods B (30 % SM) and
    C (10 % SM); an H100 in MIG mode whose 3g.40gb slice pod D holds.
    """
    proc = tmp_path / "proc"
    for pid, uid in [(101, POD_A), (201, POD_B), (202, POD_C), (301, POD_D)]:
        _cgroup(proc, pid, uid)
    train = h100(0, util=60, procs=[FakeProc(101, 40_000 * MIB, 60)])
    shared = l40s(1, util=40, procs=[FakeProc(201, 500 * MIB, 30), FakeProc(202, 700 * MIB, 10)])
    mig = h100_mig(2)
    mig.mig[0].procs = [FakeProc(301, 9_000 * MIB)]
    fake_nvml.set([train, shared, mig])  # real clock: synthetic samples every 1/6 s
    pods = (_pod(POD_A, "train", train.uuid), _pod(POD_B, "serve", shared.uuid),
            _pod(POD_C, "notebooks", shared.uuid), _pod(POD_D, "research", mig.mig[0].uuid))
    collector = NvmlCollector("gpu-a", resolver=PodResolver(str(proc)), faults=FaultCounter())
    out = tmp_path / "rec.jsonl.gz"
    stats = record(out, [collector, PodsOnce(pods)], 0.2, 1.2, handle_signals=False)
    assert stats.polls >= 6

    plain = tmp_path / "rec.jsonl"
    plain.write_bytes(gzip.decompress(out.read_bytes()))
    secs = _seconds(plain)
    lines = [json.loads(x) for x in plain.read_text().splitlines()]
    utils = {(o["uuid"], o.get("util")) for o in lines if o["kind"] == "sample"}
    assert {u for uuid, u in utils if uuid == train.uuid} == {60.0}  # exactly what it was told
    assert {u for uuid, u in utils if uuid == shared.uuid} == {40.0}
    assert {u for uuid, u in utils if uuid in {m.uuid for m in mig.mig}} == {None}

    result = replay([out], load_rate_card(rates(RATES)), Config())
    teams = {t["team"]: t for t in result.summary["teams"]}
    h100_s, l40s_s = 2.50 / 3600, 1.00 / 3600
    d_train, d_shared, d_slice = secs[train.uuid], secs[shared.uuid], secs[mig.mig[0].uuid] * 3 / 7
    expect = {
        "train": (d_train, d_train * 0.60, d_train * h100_s),
        "serve": (d_shared * 0.75, d_shared * 0.75 * 0.40, d_shared * 0.75 * l40s_s),
        "notebooks": (d_shared * 0.25, d_shared * 0.25 * 0.40, d_shared * 0.25 * l40s_s),
        "research": (d_slice, 0.0, d_slice * h100_s),
    }
    for team, (allocated, used, cost) in expect.items():
        got = teams[team]
        assert got["allocated_gpu_seconds"] == pytest.approx(allocated, rel=1e-9), team
        assert got["used_gpu_seconds"] == pytest.approx(used, rel=1e-9, abs=1e-12), team
        assert got["cost"] == pytest.approx(cost, rel=1e-9), team
    assert teams["research"]["util_unknown_gpu_seconds"] == pytest.approx(d_slice, rel=1e-9)
    others = sum(secs[m.uuid] * int(m.name.split()[-1][0]) / 7 for m in mig.mig[1:])
    assert result.summary["totals"]["unallocated_gpu_seconds"] == pytest.approx(others, rel=1e-9)
    assert d_train == pytest.approx(1.2, abs=0.1)


def test_h200_with_compute_instances_replays(fake_nvml: FakeNvml, tmp_path: Path, rates) -> None:
    """The H200 MIG capture splits one 3g instance into 1c + 2c compute instances: with
    slices 1c, 2c, 2g, 1g, 1g the GPU is fully instantiated (1+2+2+1+1 = 7 of 7), so the
    capacity of each poll is exactly one GPU's interval."""
    from collectors.records import Sample
    from collectors.tracefile import iter_records

    fake_nvml.set([h200_mig(0)])
    out = tmp_path / "t.jsonl"
    record(out, [NvmlCollector("gpu-a", faults=FaultCounter())], 0.2, 0.4, handle_signals=False)
    result = replay([out], load_rate_card(rates(RATES)), Config())
    samples = [r for _, r in iter_records(out) if isinstance(r, Sample)]
    parent = h200_mig(0).uuid
    expected = sum(s.interval_s for s in samples if s.uuid == parent)
    assert expected > 0
    assert result.summary["totals"]["gpu_seconds"] == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------------- the command


def _run(fake: FakeNvml, tmp_path: Path, *args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RECORD, "record", *args], cwd=ROOT, capture_output=True,
                          text=True, env=env or fake.env(), timeout=60, **kw)


@pytest.mark.slow
def test_the_command_records_through_ld_library_path_and_the_trace_replays(fake_nvml, tmp_path, rates) -> None:
    fake_nvml.set([h100(0, util=25), l40s(1, util=80)])
    out = tmp_path / "node.jsonl"
    done = _run(fake_nvml, tmp_path, "--out", str(out), "--interval", "200ms", "--duration", "1s", "--node", "gpu-x")
    assert done.returncode == 0, done.stderr
    assert "samples in" in done.stdout and "stopped by duration" in done.stdout
    secs = _seconds(out)
    totals = replay([out], load_rate_card(rates(RATES)), Config()).summary["totals"]
    assert totals["gpu_seconds"] == pytest.approx(sum(secs.values()), rel=1e-9)
    assert totals["unallocated_cost"] == pytest.approx(sum(secs.values()) / 2 * (2.5 + 1.0) / 3600, rel=1e-9)
    assert sum(secs.values()) == pytest.approx(2.0, abs=0.2)
    assert json.loads(out.read_text().splitlines()[1])["node"] == "gpu-x"


@pytest.mark.slow
def test_sigterm_stops_the_command_and_leaves_a_whole_trace(fake_nvml, tmp_path, rates) -> None:
    fake_nvml.set([h100(0, util=50)])
    out = tmp_path / "node.jsonl.gz"
    child = subprocess.Popen([sys.executable, "-c", RECORD, "record", "--out", str(out), "--interval", "200ms"],
                             cwd=ROOT, env=fake_nvml.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not list(tmp_path.glob(".node.jsonl.gz.*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.8)
        child.send_signal(signal.SIGTERM)
        stdout, stderr = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, stderr
    assert "stopped by SIGTERM" in stdout
    assert not list(tmp_path.glob("*.tmp"))
    summary = replay([out], load_rate_card(rates(RATES)), Config()).summary
    assert summary["totals"]["gpu_seconds"] > 0.5


@pytest.mark.parametrize("case, cause", [
    ("no library", "no NVIDIA driver: NVML (libnvidia-ml.so.1) is not installed or not on the library path"),
    ("driver not loaded", "the NVIDIA driver is not loaded"),
    ("no permission", "no permission to use the GPUs: run as a user that can open /dev/nvidia*"),
    ("no GPU", "NVML found no NVIDIA GPU on this machine"),
])
def test_record_without_a_gpu_exits_1_saying_why_and_writes_nothing(fake_nvml, tmp_path, case, cause) -> None:
    env = fake_nvml.env()
    if case == "no library":
        env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    elif case == "driver not loaded":
        fake_nvml.set([h100(0)], init_fail=(DRIVER_NOT_LOADED, -1))
    elif case == "no permission":
        fake_nvml.set([h100(0)], init_fail=(NO_PERMISSION, -1))
    else:
        fake_nvml.set([])
    out = tmp_path / "t.jsonl"
    done = _run(fake_nvml, tmp_path, "--out", str(out), "--interval", "100ms", "--duration", "1100ms", env=env)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"gpuledger: error: cannot record: {cause}"), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout == "" and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_replay_refuses_a_trace_without_samples(tmp_path) -> None:
    """What `record` wrote before it said why (a meta line, a devices record): nothing to
    attribute, said in one line, rather than a 1970 window priced from nothing."""
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"kind":"meta","format":"gpuledger-trace","version":1,"interval_s":1.0}\n'
                     '{"kind":"devices","ts":1764046800,"node":"n","devices":[]}\n')
    done = subprocess.run([sys.executable, "-c", RECORD, "replay", str(trace), "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == (f"gpuledger: error: {trace}: field 'kind': holds no sample records: nothing to attribute "
                           "(a trace recorded where NVML saw no GPU? `gpuledger record` says why)\n")
    assert done.stdout == "" and not (tmp_path / "out").exists()


def test_out_is_a_directory_exits_2(fake_nvml, tmp_path) -> None:
    done = _run(fake_nvml, tmp_path, "--out", str(tmp_path), "--duration", "1s")
    assert done.returncode == 2
    assert "expected a file for --out" in done.stderr


# --------------------------------------------------------------------- memory


def test_the_recorder_does_not_load_arrow() -> None:
    """Its resident memory on every GPU node: pyarrow and numpy alone are ~90 MB."""
    code = ("import sys, agent.cli, agent.cmd_record, agent.recorder, collectors.nvml, collectors.procfs, pynvml\n"
            "agent.cli.build_parser()\n"
            "print(sorted(m for m in ('pyarrow', 'numpy', 'pandas') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
