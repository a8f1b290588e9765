"""The NVML collector: every GPU and MIG device on the node, as trace records.

It is a :class:`collectors.sources.RecordSource`. Polled every interval, it returns a
``devices`` record when the inventory changed (and on the first poll) and one
``sample`` per device for the interval since the previous poll: the very records
``gpuledger replay`` reads, so a recorded trace and the live agent see the same thing.

What it reads, and why that way (``docs/nvml.md`` has the full story):

* Utilisation from ``nvmlDeviceGetSamples`` with the last-seen timestamp, averaged:
  NVML keeps a ring of short-period samples, so reading everything since the previous
  poll covers the interval without gaps. ``nvmlDeviceGetUtilizationRates`` (a single
  recent window) is the fallback when there are no new samples.
* Per process: ``nvmlDeviceGetProcessUtilization`` (SM %, same last-seen scheme) and the
  running compute processes (memory), with the pod UID from ``/proc/<pid>/cgroup``.
* MIG: NVML reports no utilisation for MIG devices nor for a GPU in MIG mode, so their
  ``util`` is ``null``, never a made-up number. A GPU in MIG mode lists no processes (its
  slices do), so nothing is attributed twice.

Faults in the world never raise out of :meth:`NvmlCollector.poll`: each is counted by
kind in a :class:`collectors.faults.FaultCounter` and logged once; a field NVML says is
not supported is not asked for again; a lost device is dropped and the inventory
re-read; a driver that is not loaded is retried with exponential back-off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from collectors.faults import FAULTS, FaultCounter
from collectors.procfs import PodResolver, ProcessGone
from collectors.records import Device, DevicesRecord, Process, Record, Sample

COLLECTOR = "nvml"

# NVML names a MIG device "<parent name> MIG <profile>", e.g.
# "NVIDIA H100 80GB HBM3 MIG 3g.40gb" or "NVIDIA H200 MIG 1c.3g.71gb".
_MIG_PROFILE = re.compile(r"\bMIG\s+((?:\d+c\.)?\d+g\.\d+gb(?:\+[a-z0-9]+)*)", re.IGNORECASE)

# Errors after which a device handle is no use: drop the device, re-read the inventory.
_GONE = frozenset({"gpu_is_lost", "not_found", "invalid_argument", "gpu_not_found", "reset_required"})


def mig_profile_from_name(name: str) -> str | None:
    """The MIG profile in an NVML MIG device name, e.g. ``3g.40gb``; None if it has none."""
    match = _MIG_PROFILE.search(name)
    return match.group(1).lower() if match else None


@dataclass
class _Tracked:
    """Sampling state of one device across polls (mutable on purpose: it is state)."""

    device: Device
    handle: Any
    is_mig: bool = False
    mig_parent: bool = False  # a GPU in MIG mode
    last_util_us: int = 0
    last_proc_us: int = 0
    unsupported: set[str] = field(default_factory=set)


class _DeviceGone(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NvmlCollector:
    """Samples every GPU through NVML (``pynvml``); see the module docstring.

    ``resolver`` maps PIDs to pod UIDs (None: leave ``pod_uid`` out). ``rescan_s`` is
    how often the inventory is re-read when nothing suggests it changed; a fault on a
    device triggers a re-read at the next poll. ``backoff_s`` is the first and the
    largest wait between attempts to initialise NVML.
    """

    def __init__(
        self,
        node: str,
        *,
        resolver: PodResolver | None = None,
        faults: FaultCounter = FAULTS,
        rescan_s: float = 30.0,
        backoff_s: tuple[float, float] = (1.0, 60.0),
    ) -> None:
        import pynvml  # imported here: replay and the other commands never need it

        self._nv = pynvml
        self._reasons = {
            getattr(pynvml, name): name[len("NVML_ERROR_"):].lower()
            for name in dir(pynvml) if name.startswith("NVML_ERROR_")
        }
        self.node = node
        self._resolver = resolver
        self._faults = faults
        self._rescan_s = rescan_s
        self._backoff = backoff_s
        self._delay = backoff_s[0]
        self._ready = False
        self._next_init = float("-inf")
        self._tracked: list[_Tracked] = []
        self._inventory: tuple[Device, ...] | None = None
        self._next_scan = float("-inf")
        self._prev_ts: float | None = None
        self._value_fields = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")
        self.problem: str | None = None  # why no GPU can be sampled now (see unavailable()), else None

    # ------------------------------------------------------------------ protocol

    def poll(self, now: float) -> list[Record]:
        """Records for the interval ending at ``now``: see :class:`RecordSource`."""
        if not self._ensure_init(now):
            return []
        ts = round(now, 3)
        now_us = round(ts * 1e6)
        records: list[Record] = []
        if now >= self._next_scan:
            inventory = self._scan(now_us)
            if inventory != self._inventory:
                self._inventory = inventory
                records.append(DevicesRecord(ts=ts, node=self.node, devices=inventory))
        if self._prev_ts is not None and ts > self._prev_ts:
            interval = round(ts - self._prev_ts, 3)
            pids: set[int] = set()
            kept = []
            for tracked in self._tracked:
                try:
                    records.append(self._sample(tracked, ts, interval, pids))
                    kept.append(tracked)
                except _DeviceGone as gone:
                    self._faults.record(COLLECTOR, gone.reason, f"{tracked.device.uuid}: dropped until it returns")
                    self._next_scan = float("-inf")
            self._tracked = kept
            if self._resolver is not None:
                self._resolver.forget_except(pids)
        if self._prev_ts is None or ts > self._prev_ts:
            self._prev_ts = ts
        return records

    def unavailable(self, now: float) -> str | None:
        """Why no GPU can be sampled here, in words a user can act on (no NVIDIA driver,
        the driver not loaded, no permission, no GPU), or None when NVML lists GPUs.
        Initialises NVML if need be; ``gpuledger record`` asks before it starts."""
        if not self._ensure_init(now, count_faults=False):
            return self.problem
        try:
            count = self._nv.nvmlDeviceGetCount()
        except self._nv.NVMLError as err:
            self.problem = _cause(self._reason(err), "nvmlDeviceGetCount", err)
            return self.problem
        self.problem = None if count else NO_GPU
        return self.problem

    def close(self) -> None:
        """Shut NVML down (once); the collector can be polled again afterwards."""
        if self._ready:
            self._ready = False
            try:
                self._nv.nvmlShutdown()
            except self._nv.NVMLError:
                pass

    # ------------------------------------------------------------------ init

    def _reason(self, err: Exception) -> str:
        return self._reasons.get(getattr(err, "value", None), "error")

    def _ensure_init(self, now: float, count_faults: bool = True) -> bool:
        if self._ready:
            return True
        if now < self._next_init:
            return False
        try:
            self._nv.nvmlInit()
        except self._nv.NVMLError as err:
            self.problem = _cause(self._reason(err), "nvmlInit", err)
            if not count_faults:  # a question asked once (unavailable()), not a fault in a running collector
                return False
            self._faults.record(COLLECTOR, self._reason(err), f"nvmlInit: {err}; retrying in {self._delay:g}s and backing off")
            self._next_init = now + self._delay
            self._delay = min(self._delay * 2, self._backoff[1])
            return False
        self._ready = True
        self._delay = self._backoff[0]
        self._prev_ts = None
        self._tracked = []
        self._inventory = None
        self._next_scan = float("-inf")
        return True

    # ------------------------------------------------------------------ inventory

    def _scan(self, now_us: int) -> tuple[Device, ...]:
        """Read the inventory; keep sampling state for devices seen before."""
        nv = self._nv
        self._next_scan = now_us / 1e6 + self._rescan_s
        previous = {t.device.uuid: t for t in self._tracked}
        start_us = round(self._prev_ts * 1e6) if self._prev_ts is not None else now_us
        try:
            count = nv.nvmlDeviceGetCount()
        except nv.NVMLError as err:
            reason = self._reason(err)
            self._faults.record(COLLECTOR, reason, f"nvmlDeviceGetCount: {err}")
            if reason == "uninitialized":
                self._ready = False
            if not self._tracked:
                self.problem = _cause(reason, "nvmlDeviceGetCount", err)
            return self._inventory or ()
        tracked: list[_Tracked] = []
        for index in range(count):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
                gpu = Device(
                    uuid=_text(nv.nvmlDeviceGetUUID(handle)),
                    model=_text(nv.nvmlDeviceGetName(handle)),
                    memory_total_bytes=float(nv.nvmlDeviceGetMemoryInfo(handle).total),
                    index=index,
                )
                mig_on = self._mig_mode(handle)
            except nv.NVMLError as err:
                self._faults.record(COLLECTOR, self._reason(err), f"GPU {index} left out of the inventory: {err}")
                continue
            tracked.append(self._keep(previous, gpu, handle, start_us, mig_parent=mig_on))
            if mig_on:
                tracked.extend(self._scan_mig(handle, gpu, previous, start_us))
        self._tracked = tracked
        self.problem = None if tracked else (NO_GPU if count == 0 else "NVML lists GPUs but none could be read "
                                             "(see gpuledger_collector_errors_total{collector=\"nvml\"})")
        return tuple(t.device for t in tracked)

    def _keep(self, previous: dict[str, _Tracked], device: Device, handle: Any, start_us: int,
              mig_parent: bool = False, is_mig: bool = False) -> _Tracked:
        old = previous.get(device.uuid)
        if old is not None and old.device == device and old.mig_parent == mig_parent:
            old.handle = handle
            return old
        return _Tracked(device, handle, is_mig=is_mig, mig_parent=mig_parent,
                        last_util_us=start_us, last_proc_us=start_us)

    def _mig_mode(self, handle: Any) -> bool:
        """Whether MIG is on; GPUs that cannot do MIG answer NOT_SUPPORTED (not a fault)."""
        try:
            current, _pending = self._nv.nvmlDeviceGetMigMode(handle)
        except self._nv.NVMLError_NotSupported:
            return False
        return bool(current)

    def _scan_mig(self, handle: Any, gpu: Device, previous: dict[str, _Tracked], start_us: int) -> list[_Tracked]:
        nv = self._nv
        out: list[_Tracked] = []
        try:
            slots = nv.nvmlDeviceGetMaxMigDeviceCount(handle)
        except nv.NVMLError as err:
            self._faults.record(COLLECTOR, self._reason(err), f"{gpu.uuid} MIG devices: {err}")
            return out
        for slot in range(slots):
            try:
                mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except nv.NVMLError_NotFound:
                continue  # an empty slot
            except nv.NVMLError as err:
                self._faults.record(COLLECTOR, self._reason(err), f"{gpu.uuid} MIG slot {slot}: {err}")
                continue
            try:
                uuid = _text(nv.nvmlDeviceGetUUID(mig))
                name = _text(nv.nvmlDeviceGetName(mig))
                total = float(nv.nvmlDeviceGetMemoryInfo(mig).total)
            except nv.NVMLError as err:
                self._faults.record(COLLECTOR, self._reason(err), f"{gpu.uuid} MIG slot {slot}: {err}")
                continue
            profile = mig_profile_from_name(name)
            if profile is None:
                self._faults.record(COLLECTOR, "mig_profile_unknown",
                                    f"{uuid}: no MIG profile in its name {name!r}; left out")
                continue
            device = Device(uuid=uuid, model=gpu.model, memory_total_bytes=total,
                            parent_uuid=gpu.uuid, mig_profile=profile)
            out.append(self._keep(previous, device, mig, start_us, is_mig=True))
        return out

    # ------------------------------------------------------------------ sampling

    def _read(self, tracked: _Tracked, what: str, fn: Any, *args: Any) -> Any:
        """``fn(*args)``, or None on a fault that leaves the device usable."""
        if what in tracked.unsupported:
            return None
        try:
            return fn(*args)
        except self._nv.NVMLError as err:
            self._fault(tracked, what, err)
            return None

    def _fault(self, tracked: _Tracked, what: str, err: Exception) -> None:
        reason = self._reason(err)
        if reason in _GONE:
            raise _DeviceGone(reason) from None
        if reason == "uninitialized":
            self._ready = False
            raise _DeviceGone(reason) from None
        if reason == "not_supported":
            tracked.unsupported.add(what)  # asked once per device and field, then left alone
        self._faults.record(COLLECTOR, reason, f"{tracked.device.uuid} {what}: {err}")

    def _sample(self, t: _Tracked, ts: float, interval: float, pids: set[int]) -> Sample:
        nv = self._nv
        memory = self._read(t, "memory", nv.nvmlDeviceGetMemoryInfo, t.handle)
        power = None if t.is_mig else self._read(t, "power", nv.nvmlDeviceGetPowerUsage, t.handle)
        return Sample(
            ts=ts,
            node=self.node,
            uuid=t.device.uuid,
            util=None if (t.is_mig or t.mig_parent) else self._utilisation(t),
            mem_used_bytes=float(memory.used) if memory is not None else None,
            power_w=power / 1000.0 if power is not None else None,
            interval_s=interval,
            processes=None if t.mig_parent else self._processes(t, pids),
        )

    def _utilisation(self, t: _Tracked) -> float | None:
        nv = self._nv
        if "samples" not in t.unsupported:
            try:
                value_type, samples = nv.nvmlDeviceGetSamples(t.handle, nv.NVML_GPU_UTILIZATION_SAMPLES, t.last_util_us)
            except nv.NVMLError_NotFound:
                samples = ()  # nothing new since the last poll
            except nv.NVMLError as err:
                self._fault(t, "samples", err)
                samples = ()
            total, n, newest = 0.0, 0, t.last_util_us
            name = self._value_fields[value_type] if samples and 0 <= value_type < len(self._value_fields) else "uiVal"
            for sample in samples:
                if sample.timeStamp > t.last_util_us:
                    total += getattr(sample.sampleValue, name)
                    n += 1
                    newest = max(newest, sample.timeStamp)
            if n:
                t.last_util_us = newest
                return _percent(total / n)
        rates = self._read(t, "utilization", nv.nvmlDeviceGetUtilizationRates, t.handle)
        return _percent(rates.gpu) if rates is not None else None

    def _process_util(self, t: _Tracked) -> dict[int, float] | None:
        """Mean SM % per PID since the last poll; None when NVML cannot tell."""
        nv = self._nv
        if t.is_mig or "process_utilization" in t.unsupported:
            return None
        try:
            samples = nv.nvmlDeviceGetProcessUtilization(t.handle, t.last_proc_us)
        except nv.NVMLError_NotFound:
            return {}  # no process ran kernels since the last poll
        except nv.NVMLError as err:
            self._fault(t, "process_utilization", err)
            return None
        sums: dict[int, list[float]] = {}
        newest = t.last_proc_us
        for s in samples:
            if s.pid and s.timeStamp > t.last_proc_us:
                acc = sums.setdefault(s.pid, [0.0, 0])
                acc[0] += s.smUtil
                acc[1] += 1
                newest = max(newest, s.timeStamp)
        t.last_proc_us = newest
        return {pid: _percent(total / n) for pid, (total, n) in sums.items()}

    def _processes(self, t: _Tracked, pids: set[int]) -> tuple[Process, ...] | None:
        running = self._read(t, "processes", self._nv.nvmlDeviceGetComputeRunningProcesses, t.handle)
        utils = self._process_util(t)
        if running is None and utils is None:
            return None
        memory = {p.pid: p.usedGpuMemory for p in running or ()}
        order = list(memory) + [pid for pid in (utils or ()) if pid not in memory]
        out = []
        for pid in order:
            pids.add(pid)
            mem = memory.get(pid)
            out.append(Process(
                pid=pid,
                pod_uid=self._pod_uid(pid),
                util=None if utils is None else utils.get(pid, 0.0),
                mem_used_bytes=float(mem) if mem is not None else None,
            ))
        return tuple(out)

    def _pod_uid(self, pid: int) -> str | None:
        if self._resolver is None:
            return None
        try:
            return self._resolver.pod_uid(pid)
        except ProcessGone:
            self._faults.record(COLLECTOR, "process_gone", f"pid {pid} exited before its cgroup was read")
        except OSError as err:
            self._faults.record(COLLECTOR, "procfs_unreadable", f"pid {pid}: {err}")
        return None


NO_GPU = "NVML found no NVIDIA GPU on this machine"
_CAUSES = {
    "library_not_found": "no NVIDIA driver: NVML (libnvidia-ml.so.1) is not installed or not on the library path "
                         "(in a container: the NVIDIA container toolkit mounts it, docs/helm.md)",
    "driver_not_loaded": "the NVIDIA driver is not loaded (nvidia-smi says the same; is the kernel module loaded?)",
    "no_permission": "no permission to use the GPUs: run as a user that can open /dev/nvidia* (or as root)",
    "function_not_found": "the NVIDIA driver is older than the NVML functions gpuledger needs",
    "lib_rm_version_mismatch": "the NVIDIA driver and its NVML library differ in version (reboot after a driver "
                               "update?)",
}


def _cause(reason: str, call: str, err: Exception) -> str:
    """A user's reading of an NVML error that keeps every GPU from being sampled."""
    return _CAUSES.get(reason, f"NVML cannot be used ({call}: {err})")


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _percent(value: float) -> float:
    """NVML percentages, kept within 0..100 (the trace format's range)."""
    return min(100.0, max(0.0, float(value)))
