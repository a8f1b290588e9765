"""The NVML collector against the real pynvml over the fake libnvidia-ml.so.1.

Every poll's time is the fake library's frozen clock, so utilisation samples and
per-process samples are exact. Device figures come from the real nvidia-smi captures
(see tests/fakenvml/__init__.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from collectors.faults import FaultCounter
from collectors.nvml import NvmlCollector, mig_profile_from_name
from collectors.procfs import PodResolver
from collectors.records import DevicesRecord, Sample, from_json, to_json
from tests.fakenvml import (  # noqa: F401  (fake_nvml is a fixture)
    DRIVER_NOT_LOADED, GPU_IS_LOST, MIB, NOT_SUPPORTED, UNKNOWN, FakeError, FakeMig, FakeNvml, FakeProc,
    fake_nvml, h100, h100_mig, h200, h200_mig, l40s,
)

T0 = 1_763_632_800_000_000  # µs; every test starts its clock here
SEC = 1_000_000
POD_A = "8d3f0c1e-5b2a-4c7d-9e1f-0a1b2c3d4e5f"
POD_B = "11111111-2222-3333-4444-555555555555"


@pytest.fixture
def faults() -> FaultCounter:
    return FaultCounter()


@pytest.fixture
def proc_root(tmp_path: Path) -> Path:
    """A fake /proc with two pods' processes (systemd + cgroup v2 spelling)."""
    root = tmp_path / "proc"
    for pid, uid in [(11345, POD_A), (11327, POD_A), (20037, POD_B), (20038, POD_B), (501, POD_B)]:
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cgroup").write_text(
            f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid.replace('-', '_')}.slice/"
            "cri-containerd-abc.scope\n"
        )
    return root


@pytest.fixture
def collect(fake_nvml: FakeNvml, faults: FaultCounter, proc_root: Path):
    """Make collectors for a test and close them after it."""
    made: list[NvmlCollector] = []

    def make(**kw) -> NvmlCollector:
        kw.setdefault("resolver", PodResolver(str(proc_root)))
        kw.setdefault("faults", faults)
        kw.setdefault("rescan_s", 30.0)
        collector = NvmlCollector("gpu-a", **kw)
        made.append(collector)
        return collector

    yield make
    for collector in made:
        collector.close()


def at(fake: FakeNvml, collector: NvmlCollector, t_us: int) -> list:
    fake.clock(t_us)
    records = collector.poll(t_us / SEC)
    for record in records:  # everything emitted is a valid trace record
        assert from_json(to_json(record)) == record
    return records


def samples(records) -> dict[str, Sample]:
    return {r.uuid: r for r in records if isinstance(r, Sample)}


def devices(records) -> list[DevicesRecord]:
    return [r for r in records if isinstance(r, DevicesRecord)]


def warnings(caplog, reason: str) -> int:
    return sum(1 for r in caplog.records if r.levelno == logging.WARNING and f": {reason}" in r.getMessage())


# --------------------------------------------------------------------- inventory


def test_inventory_matches_the_captured_gpus(fake_nvml, collect) -> None:
    fake_nvml.set([h100(0), h100_mig(1), h200(2), h200_mig(3), l40s(4)], clock_us=T0)
    [record] = devices(at(fake_nvml, collect(), T0))
    by = {d.uuid: d for d in record.devices}
    gpus = [d for d in record.devices if d.parent_uuid is None]
    assert [(d.index, d.model, d.memory_total_bytes) for d in gpus] == [
        (0, "NVIDIA H100 80GB HBM3", 81559 * MIB),
        (1, "NVIDIA H100 80GB HBM3", 81559 * MIB),
        (2, "NVIDIA H200", 143771 * MIB),
        (3, "NVIDIA H200", 143771 * MIB),
        (4, "NVIDIA L40S", 46068 * MIB),
    ]
    def slices(parent: str) -> list[tuple[str, float]]:
        return [(d.mig_profile, d.memory_total_bytes / MIB) for d in record.devices if d.parent_uuid == parent]
    assert slices(gpus[1].uuid) == [("3g.40gb", 40448), ("2g.20gb", 20096), ("1g.10gb", 9984), ("1g.10gb", 9984)]
    assert slices(gpus[3].uuid) == [("1c.3g.71gb", 71424), ("2c.3g.71gb", 71424), ("2g.35gb", 33280),
                                    ("1g.18gb", 16384), ("1g.18gb", 16384)]
    assert all(by[d.parent_uuid].model == d.model for d in record.devices if d.parent_uuid)
    assert all(d.index is None for d in record.devices if d.parent_uuid)


@pytest.mark.parametrize("name, profile", [
    ("NVIDIA H100 80GB HBM3 MIG 3g.40gb", "3g.40gb"),
    ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", "1g.5gb"),
    ("NVIDIA H200 MIG 1c.3g.71gb", "1c.3g.71gb"),
    ("NVIDIA H100 80GB HBM3 MIG 1g.10gb+me", "1g.10gb+me"),
    ("NVIDIA H100 80GB HBM3", None),
    ("MIG-GPU weird", None),
])
def test_mig_profile_from_the_nvml_name(name: str, profile: str | None) -> None:
    assert mig_profile_from_name(name) == profile


def test_devices_are_emitted_only_when_the_inventory_changes(fake_nvml, collect) -> None:
    gpu = h100_mig(0)
    fake_nvml.set([gpu], clock_us=T0)
    collector = collect(rescan_s=0.0)
    assert len(devices(at(fake_nvml, collector, T0))) == 1
    assert devices(at(fake_nvml, collector, T0 + SEC)) == []
    # an operator re-partitions the GPU: one 7g.80gb instead of four slices
    gpu.mig = [FakeMig("MIG-77777777-1111-2222-3333-000000000077", "NVIDIA H100 80GB HBM3 MIG 7g.80gb", 81559 * MIB)]
    fake_nvml.set([gpu], clock_us=T0 + 2 * SEC)
    records = at(fake_nvml, collector, T0 + 2 * SEC)
    [record] = devices(records)
    assert [d.mig_profile for d in record.devices] == [None, "7g.80gb"]
    assert records.index(record) == 0  # the inventory comes before the samples it describes
    assert set(samples(records)) == {d.uuid for d in record.devices}


def test_inventory_is_reread_on_schedule(fake_nvml, collect) -> None:
    fake_nvml.set([h100(0)], clock_us=T0)
    collector = collect(rescan_s=10.0)
    at(fake_nvml, collector, T0)
    fake_nvml.set([h100(0), l40s(1)], clock_us=T0 + SEC)
    assert devices(at(fake_nvml, collector, T0 + SEC)) == []  # not yet due
    [record] = devices(at(fake_nvml, collector, T0 + 10 * SEC))
    assert len(record.devices) == 2


# --------------------------------------------------------------------- sampling


def test_utilisation_is_the_mean_of_the_samples_since_the_last_poll(fake_nvml, collect, faults) -> None:
    gpu = h100(0, samples=[(T0 - 500_000, 100), (T0 + 100_000, 20), (T0 + 300_000, 40), (T0 + 600_000, 90)])
    fake_nvml.set([gpu], clock_us=T0)
    collector = collect()
    assert samples(at(fake_nvml, collector, T0)) == {}  # the first poll only takes the inventory
    [s] = samples(at(fake_nvml, collector, T0 + SEC)).values()
    assert s.util == pytest.approx(50.0)  # (20 + 40 + 90) / 3; the sample before T0 is not in this interval
    assert s.interval_s == 1.0 and s.ts == (T0 + SEC) / SEC
    gpu.samples.append((T0 + 1_200_000, 10))
    fake_nvml.set([gpu], clock_us=T0 + 2 * SEC)
    assert samples(at(fake_nvml, collector, T0 + 2 * SEC))[gpu.uuid].util == 10.0  # only the new one
    # no new samples: nvmlDeviceGetUtilizationRates (the latest value) fills in, no fault
    assert samples(at(fake_nvml, collector, T0 + 3 * SEC))[gpu.uuid].util == 10.0
    assert faults.counts() == {}


def test_samples_not_supported_falls_back_to_utilization_rates_and_is_asked_once(fake_nvml, collect, faults, caplog) -> None:
    gpu = h100(0, util=37)
    fake_nvml.set([gpu], [FakeError("0", "nvmlDeviceGetSamples", NOT_SUPPORTED)], clock_us=T0)
    collector = collect()
    for k in range(6):
        got = samples(at(fake_nvml, collector, T0 + k * SEC))
        if k:
            assert got[gpu.uuid].util == 37.0
    assert faults.count("nvml", "not_supported") == 1
    assert warnings(caplog, "not_supported") == 1


def test_memory_power_and_processes_with_their_pods(fake_nvml, collect) -> None:
    gpu = h100(0, procs=[FakeProc(11345, 15690 * MIB, 99), FakeProc(11327, 2566 * MIB), FakeProc(11328, 1542 * MIB)])
    board = l40s(1, procs=[FakeProc(20037, 538 * MIB, 2), FakeProc(20038, 681 * MIB, 6)])
    fake_nvml.set([gpu, board], clock_us=T0)
    collector = collect()
    at(fake_nvml, collector, T0)
    got = samples(at(fake_nvml, collector, T0 + SEC))
    h, l = got[gpu.uuid], got[board.uuid]
    assert (h.util, h.mem_used_bytes, h.power_w) == (100.0, 19818 * MIB, 588.39)
    assert (l.util, l.mem_used_bytes, l.power_w) == (8.0, 1235 * MIB, 110.01)
    assert [(p.pid, p.pod_uid, p.util, p.mem_used_bytes) for p in h.processes] == [
        (11345, POD_A, 99.0, 15690 * MIB),
        (11327, POD_A, 0.0, 2566 * MIB),  # in the running list, ran no kernels in the interval
        (11328, None, 0.0, 1542 * MIB),  # no /proc entry: not in a pod we can see
    ]
    assert [(p.pid, p.pod_uid, p.util) for p in l.processes] == [(20037, POD_B, 2.0), (20038, POD_B, 6.0)]


def test_mig_devices_report_no_utilisation_and_hold_their_own_processes(fake_nvml, collect) -> None:
    gpu = h100_mig(0)
    gpu.mig[0].procs = [FakeProc(11345, 11091 * MIB, 99)]
    gpu.mig[0].mem_used = 11091 * MIB
    fake_nvml.set([gpu], clock_us=T0)
    collector = collect()
    at(fake_nvml, collector, T0)
    got = samples(at(fake_nvml, collector, T0 + SEC))
    parent, slice0, slice1 = got[gpu.uuid], got[gpu.mig[0].uuid], got[gpu.mig[1].uuid]
    assert parent.util is None and parent.processes is None  # its slices list the processes
    assert parent.power_w == 444.72 and parent.mem_used_bytes == 11125 * MIB
    assert slice0.util is None and slice0.power_w is None
    assert slice0.mem_used_bytes == 11091 * MIB
    assert [(p.pid, p.pod_uid, p.util, p.mem_used_bytes) for p in slice0.processes] == [
        (11345, POD_A, None, 11091 * MIB)]
    assert slice1.processes == ()


def test_a_process_that_exits_between_calls(fake_nvml, collect, faults, caplog) -> None:
    gpu = h100(0, procs=[FakeProc(11345, 15690 * MIB, 80),
                         FakeProc(777, 0, 15, exited=True),  # sampled, then gone from the running list
                         FakeProc(778, 100 * MIB, 5)])  # running, but its /proc entry is gone
    fake_nvml.set([gpu], clock_us=T0)
    collector = collect()
    at(fake_nvml, collector, T0)
    for k in (1, 2, 3):
        s = samples(at(fake_nvml, collector, T0 + k * SEC))[gpu.uuid]
        assert [(p.pid, p.pod_uid, p.util, p.mem_used_bytes) for p in s.processes] == [
            (11345, POD_A, 80.0, 15690 * MIB), (778, None, 5.0, 100 * MIB), (777, None, 15.0, None)]
    assert faults.count("nvml", "process_gone") == 6
    assert warnings(caplog, "process_gone") == 1


def test_per_process_utilisation_not_supported(fake_nvml, collect, faults) -> None:
    gpu = h100(0, proc_util=False, procs=[FakeProc(11345, 15690 * MIB, 99)])
    fake_nvml.set([gpu], clock_us=T0)
    collector = collect()
    for k in range(4):
        got = samples(at(fake_nvml, collector, T0 + k * SEC))
    assert [(p.pid, p.util) for p in got[gpu.uuid].processes] == [(11345, None)]  # unknown, not 0
    assert faults.count("nvml", "not_supported") == 1


# --------------------------------------------------------------------- faults


def test_a_lost_gpu_is_dropped_and_the_others_keep_being_sampled(fake_nvml, collect, faults, caplog) -> None:
    gpus = [h100(0), h200(1), l40s(2)]
    fake_nvml.set(gpus, clock_us=T0)
    collector = collect(rescan_s=5.0)
    at(fake_nvml, collector, T0)
    gpus[1].lost = True
    fake_nvml.set(gpus, clock_us=T0 + SEC)
    seen = []
    for k in range(1, 8):
        records = at(fake_nvml, collector, T0 + k * SEC)
        seen.append((set(samples(records)), devices(records)))
    # the poll that meets the loss samples the others and drops it ...
    assert seen[0][0] == {gpus[0].uuid, gpus[2].uuid}
    # ... the next one re-reads the inventory without it
    assert [d.uuid for d in seen[1][1][0].devices] == [gpus[0].uuid, gpus[2].uuid]
    assert all(s == {gpus[0].uuid, gpus[2].uuid} for s, _ in seen)
    assert all(not d for _, d in seen[2:])  # no crash loop: no more rescans or faults
    # the sample, the inventory read right after, the scheduled re-read 5 s later
    assert faults.count("nvml", "gpu_is_lost") == 3
    assert warnings(caplog, "gpu_is_lost") == 1
    # it comes back (after a reset): the scheduled rescan finds it again
    gpus[1].lost = False
    fake_nvml.set(gpus, clock_us=T0 + 8 * SEC)
    assert devices(at(fake_nvml, collector, T0 + 8 * SEC)) == []
    [back] = devices(at(fake_nvml, collector, T0 + 12 * SEC))
    assert len(back.devices) == 3


def test_a_device_that_disappears(fake_nvml, collect, faults) -> None:
    gpus = [h100(0), h100(1), h100(2)]
    fake_nvml.set(gpus, clock_us=T0)
    collector = collect()
    at(fake_nvml, collector, T0)
    fake_nvml.set([gpus[0], None, gpus[2]], clock_us=T0 + SEC)  # index 1 is gone
    first = at(fake_nvml, collector, T0 + SEC)
    assert set(samples(first)) == {gpus[0].uuid, gpus[2].uuid}
    [record] = devices(at(fake_nvml, collector, T0 + 2 * SEC))
    assert [d.uuid for d in record.devices] == [gpus[0].uuid, gpus[2].uuid]
    assert faults.count("nvml", "not_found") == 1


def test_an_unknown_error_every_poll_is_counted_each_time_and_logged_once(fake_nvml, collect, faults, caplog) -> None:
    gpus = [h100(0), l40s(1)]
    fake_nvml.set(gpus, [FakeError("0", "nvmlDeviceGetPowerUsage", UNKNOWN)], clock_us=T0)
    collector = collect()
    for k in range(11):
        got = samples(at(fake_nvml, collector, T0 + k * SEC))
        if k:
            assert got[gpus[0].uuid].power_w is None and got[gpus[0].uuid].util == 100.0
            assert got[gpus[1].uuid].power_w == 110.01
    assert faults.count("nvml", "unknown") == 10
    assert warnings(caplog, "unknown") == 1


def test_power_not_supported_is_null_and_not_asked_again(fake_nvml, collect, faults, caplog) -> None:
    gpu = l40s(0, power_w=None)
    fake_nvml.set([gpu], clock_us=T0)
    collector = collect()
    for k in range(5):
        got = samples(at(fake_nvml, collector, T0 + k * SEC))
    assert got[gpu.uuid].power_w is None
    assert faults.counts() == {("nvml", "not_supported"): 1}
    assert warnings(caplog, "not_supported") == 1


def test_driver_not_loaded_at_start_is_retried_with_back_off(fake_nvml, collect, faults, caplog) -> None:
    fake_nvml.set([h100(0)], init_fail=(DRIVER_NOT_LOADED, 3), clock_us=T0)
    collector = collect(backoff_s=(1.0, 60.0))
    tried = []
    for t in (0.0, 0.5, 1.0, 2.0, 2.9, 3.0, 5.0, 6.9, 7.0):
        before = faults.count("nvml", "driver_not_loaded")
        records = at(fake_nvml, collector, T0 + round(t * SEC))
        tried.append((t, faults.count("nvml", "driver_not_loaded") - before, bool(records)))
    # attempts at 0, 1 (+1 s), 3 (+2 s); the fourth, at 7 (+4 s), succeeds
    assert tried == [(0.0, 1, False), (0.5, 0, False), (1.0, 1, False), (2.0, 0, False), (2.9, 0, False),
                     (3.0, 1, False), (5.0, 0, False), (6.9, 0, False), (7.0, 0, True)]
    assert warnings(caplog, "driver_not_loaded") == 1


def test_back_off_is_capped(fake_nvml, collect, faults) -> None:
    fake_nvml.set([h100(0)], init_fail=(DRIVER_NOT_LOADED, -1), clock_us=T0)
    collector = collect(backoff_s=(1.0, 8.0))
    for t in range(0, 200):
        at(fake_nvml, collector, T0 + t * SEC)
    # 0, 1, 3, 7, 15, then every 8 s: 15 + 8k < 200 -> 24 more
    assert faults.count("nvml", "driver_not_loaded") == 5 + 23


FUNCTIONS = [
    "nvmlDeviceGetSamples", "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetProcessUtilization", "nvmlDeviceGetMigMode",
    "nvmlDeviceGetName", "nvmlDeviceGetUUID", "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetMaxMigDeviceCount",
    "nvmlDeviceGetMigDeviceHandleByIndex",
]


@pytest.mark.parametrize("code", [UNKNOWN, GPU_IS_LOST, NOT_SUPPORTED], ids=["unknown", "gpu_is_lost", "not_supported"])
@pytest.mark.parametrize("function", FUNCTIONS)
def test_no_failing_call_stops_the_other_devices(fake_nvml, collect, faults, function: str, code: int) -> None:
    gpus = [h100_mig(0, procs=[]), h100(1, procs=[FakeProc(11345, MIB, 50)]), l40s(2)]
    for ref in ("0", "0.0", "1"):  # on a MIG parent, one of its slices and a plain GPU
        fake_nvml.set(gpus, [FakeError(ref, function, code)], clock_us=T0)
        collector = collect(rescan_s=0.0)
        for k in range(4):
            got = samples(at(fake_nvml, collector, T0 + k * SEC))
            if k:
                assert gpus[2].uuid in got and got[gpus[2].uuid].util == 8.0
        collector.close()


def test_nvml_uninitialised_under_the_collector_is_initialised_again(fake_nvml, collect, faults) -> None:
    gpus = [h100(0), l40s(1)]
    fake_nvml.set(gpus, [FakeError("0", "nvmlDeviceGetPowerUsage", 1, 1)], clock_us=T0)  # 1: UNINITIALIZED, once
    collector = collect()
    at(fake_nvml, collector, T0)
    at(fake_nvml, collector, T0 + SEC)
    assert faults.count("nvml", "uninitialized") == 1
    again = at(fake_nvml, collector, T0 + 2 * SEC)  # initialised again: inventory, no samples yet
    assert len(devices(again)) == 1 and not samples(again)
    assert set(samples(at(fake_nvml, collector, T0 + 3 * SEC))) == {gpus[0].uuid, gpus[1].uuid}
