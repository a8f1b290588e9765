"""Build and drive the fake ``libnvidia-ml.so.1`` that the NVML tests load with the real pynvml.

``build(dir)`` compiles ``fakenvml.c`` with gcc (soname ``libnvidia-ml.so.1``).
:class:`FakeNvml` writes the state the library serves and makes the library reachable:

* in a subprocess, through ``LD_LIBRARY_PATH`` (``env()``), exactly as on a GPU node;
* in this process, by loading it by path before pynvml's first ``CDLL("libnvidia-ml.so.1")``
  (``load_in_process()``): the dynamic loader then resolves that name to the object
  already loaded under the same soname, since ``LD_LIBRARY_PATH`` is read only when a
  process starts.

The state file has one command a line (``#`` starts a comment)::

    init_fail <nvml error code> <times>        nvmlInit fails <times> times (-1: always)
    clock <unix µs>                            freeze the library's clock (0: real time)
    gpu <g> uuid=… mem_total=… mem_used=… power_mw=… util=… mig_capable=0|1 mig=0|1 lost=0|1 proc_util=0|1 name=<rest of line>
    mig <g>.<m> uuid=… mem_total=… mem_used=… name=<rest of line>
    sample <g> <ts µs> <util %>                explicit utilisation samples (else synthetic ones at `util`)
    proc <g>[.<m>] <pid> <bytes> <sm %> <exited>  sm < 0: no utilisation samples; exited 1: not running
    err <g>[.<m>] <nvml function> <code> [times]

The device figures below come from the real ``nvidia-smi`` captures in
``shared/data/nvidia-smi-captures/`` (driver 590.48.01; L40S on 595.80), copied here as
constants so these tests run without that folder.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SOURCE = Path(__file__).with_name("fakenvml.c")
MIB = 1 << 20

# NVML error codes (nvml.h)
NOT_SUPPORTED = 3
NOT_FOUND = 6
NO_PERMISSION = 4
DRIVER_NOT_LOADED = 9
GPU_IS_LOST = 15
UNKNOWN = 999


@dataclass
class FakeProc:
    pid: int
    mem_bytes: int
    sm: int = -1  # -1: NVML has no utilisation samples for it
    exited: bool = False  # gone from the running list, still in the utilisation samples


@dataclass
class FakeMig:
    uuid: str
    name: str
    mem_total: int
    mem_used: int = 0
    procs: list[FakeProc] = field(default_factory=list)


@dataclass
class FakeGpu:
    uuid: str
    name: str
    mem_total: int
    mem_used: int = 0
    power_w: float | None = 0.0  # None: NOT_SUPPORTED
    util: int | None = 0  # None: NOT_SUPPORTED
    mig_capable: bool = False
    mig: list[FakeMig] | None = None  # not None: MIG mode on, with these devices
    procs: list[FakeProc] = field(default_factory=list)
    samples: list[tuple[int, int]] = field(default_factory=list)  # (ts µs, util %)
    lost: bool = False
    proc_util: bool = True


@dataclass
class FakeError:
    ref: str  # "<g>" or "<g>.<m>"
    function: str
    code: int
    times: int = -1


def build(dest: Path) -> Path:
    """Compile the fake library into ``dest`` and return the library's path."""
    from tests.systemtools import require_tool

    gcc = require_tool("gcc", "gcc", "cc")
    dest.mkdir(parents=True, exist_ok=True)
    lib = dest / "libnvidia-ml.so.1"
    subprocess.run(
        [gcc, "-O2", "-Wall", "-shared", "-fPIC", "-Wl,-soname,libnvidia-ml.so.1", "-o", str(lib), str(SOURCE)],
        check=True, capture_output=True, text=True,
    )
    return lib


def render(gpus: list[FakeGpu | None], errors: list[FakeError] = (), init_fail: tuple[int, int] | None = None,
           clock_us: int | None = None) -> str:
    """The state file for these devices."""
    lines = []
    if init_fail:
        lines.append(f"init_fail {init_fail[0]} {init_fail[1]}")
    if clock_us:
        lines.append(f"clock {clock_us}")
    for g, gpu in enumerate(gpus):
        if gpu is None:  # an empty slot: a device that is gone
            continue
        power = -1 if gpu.power_w is None else round(gpu.power_w * 1000)
        util = -1 if gpu.util is None else gpu.util
        lines.append(
            f"gpu {g} uuid={gpu.uuid} mem_total={gpu.mem_total} mem_used={gpu.mem_used} power_mw={power} "
            f"util={util} mig_capable={int(gpu.mig_capable or gpu.mig is not None)} mig={int(gpu.mig is not None)} "
            f"lost={int(gpu.lost)} proc_util={int(gpu.proc_util)} name={gpu.name}"
        )
        lines += [f"sample {g} {ts} {value}" for ts, value in gpu.samples]
        lines += [f"proc {g} {p.pid} {p.mem_bytes} {p.sm} {int(p.exited)}" for p in gpu.procs]
        for m, mig in enumerate(gpu.mig or ()):
            lines.append(f"mig {g}.{m} uuid={mig.uuid} mem_total={mig.mem_total} mem_used={mig.mem_used} name={mig.name}")
            lines += [f"proc {g}.{m} {p.pid} {p.mem_bytes} {p.sm} {int(p.exited)}" for p in mig.procs]
    lines += [f"err {e.ref} {e.function} {e.code} {e.times}" for e in errors]
    return "\n".join(lines) + "\n"


class FakeNvml:
    """One built library plus the state file it serves."""

    def __init__(self, lib: Path, state: Path) -> None:
        self.lib = lib
        self.state = state
        self._cdll: ctypes.CDLL | None = None
        self.set([])

    def set(self, gpus: list[FakeGpu | None], errors: list[FakeError] = (), init_fail: tuple[int, int] | None = None,
            clock_us: int | None = None) -> None:
        """Serve this state from now on (in this process at once, in others within 100 ms)."""
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(render(gpus, list(errors), init_fail, clock_us))
        os.replace(tmp, self.state)
        if self._cdll is not None:
            self._cdll.fakenvml_reload()

    def clock(self, us: int) -> None:
        """Freeze the library's clock at ``us`` (Unix µs) without touching the rest of its state."""
        assert self._cdll is not None
        self._cdll.fakenvml_set_clock(ctypes.c_longlong(us))

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a subprocess that loads the fake through LD_LIBRARY_PATH."""
        env = dict(os.environ if base is None else base)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(self.lib.parent), env.get("LD_LIBRARY_PATH")]))
        env["FAKE_NVML_STATE"] = str(self.state)
        return env

    def load_in_process(self) -> None:
        """Make pynvml in this process use the fake (see the module docstring)."""
        os.environ["FAKE_NVML_STATE"] = str(self.state)
        self._cdll = ctypes.CDLL(str(self.lib), mode=ctypes.RTLD_GLOBAL)
        self._cdll.fakenvml_set_state_path(str(self.state).encode())
        self._cdll.fakenvml_calls.restype = ctypes.c_ulonglong

    def calls(self) -> int:
        """NVML calls the library has served in this process (for the benchmark)."""
        assert self._cdll is not None
        return int(self._cdll.fakenvml_calls())


# ------------------------------------------------------------------ real GPUs


def _uuid(prefix: str, n: int) -> str:
    return f"{prefix}-{n:08x}-1111-2222-3333-{n:012x}"


def h100(n: int = 0, **kw) -> FakeGpu:
    """H100 80GB HBM3 under gpu-burn + 2 memhogs (capture h100-80gb-hbm3, "load"):
    memory.total 81559 MiB, used 19818 MiB, 588.39 W instantaneous, dmon sm 100 %,
    compute apps 2566 + 1542 + 15690 MiB."""
    base = dict(uuid=_uuid("GPU", n), name="NVIDIA H100 80GB HBM3", mem_total=81559 * MIB,
                mem_used=19818 * MIB, power_w=588.39, util=100, mig_capable=True)
    return FakeGpu(**(base | kw))


def h100_mig(n: int = 0, **kw) -> FakeGpu:
    """H100 in MIG mode (capture h100-mig): 3g.40gb (40448 MiB), 2g.20gb (20096 MiB),
    1g.10gb x2 (9984 MiB); board 444.72 W under load, 11125 MiB used."""
    migs = [("3g.40gb", 40448), ("2g.20gb", 20096), ("1g.10gb", 9984), ("1g.10gb", 9984)]
    base = dict(uuid=_uuid("GPU", n), name="NVIDIA H100 80GB HBM3", mem_total=81559 * MIB,
                mem_used=11125 * MIB, power_w=444.72, util=None, mig_capable=True,
                mig=[FakeMig(_uuid("MIG", n * 16 + i), f"NVIDIA H100 80GB HBM3 MIG {p}", mib * MIB)
                     for i, (p, mib) in enumerate(migs)])
    return FakeGpu(**(base | kw))


def h200(n: int = 0, **kw) -> FakeGpu:
    """H200 under load (capture h200): 143771 MiB total, 32362 MiB used, 625.24 W."""
    base = dict(uuid=_uuid("GPU", n), name="NVIDIA H200", mem_total=143771 * MIB,
                mem_used=32362 * MIB, power_w=625.24, util=100, mig_capable=True)
    return FakeGpu(**(base | kw))


def h200_mig(n: int = 0, **kw) -> FakeGpu:
    """H200 in MIG mode (capture h200-mig): GI 2 split into compute instances 1c.3g.71gb
    and 2c.3g.71gb (71424 MiB shared), 2g.35gb (33280), 1g.18gb x2 (16384); 292.14 W."""
    migs = [("1c.3g.71gb", 71424), ("2c.3g.71gb", 71424), ("2g.35gb", 33280), ("1g.18gb", 16384), ("1g.18gb", 16384)]
    base = dict(uuid=_uuid("GPU", n), name="NVIDIA H200", mem_total=143771 * MIB,
                mem_used=16959 * MIB, power_w=292.14, util=None, mig_capable=True,
                mig=[FakeMig(_uuid("MIG", n * 16 + i), f"NVIDIA H200 MIG {p}", mib * MIB)
                     for i, (p, mib) in enumerate(migs)])
    return FakeGpu(**(base | kw))


def l40s(n: int = 0, **kw) -> FakeGpu:
    """L40S encoding with NVENC (capture l40s, "load"): 46068 MiB total, 1235 MiB used,
    110.01 W; ffmpeg processes of 538 and 681 MiB at 2 % and 6 % SM (pmon). No MIG."""
    base = dict(uuid=_uuid("GPU", n), name="NVIDIA L40S", mem_total=46068 * MIB,
                mem_used=1235 * MIB, power_w=110.01, util=8, mig_capable=False)
    return FakeGpu(**(base | kw))


# ------------------------------------------------------------------ fixture


_LOADED: FakeNvml | None = None


@pytest.fixture(scope="session")
def fake_nvml(tmp_path_factory: pytest.TempPathFactory) -> FakeNvml:
    """The fake library, built once per test run and loaded into this process.

    Each test module imports this fixture, which pytest treats as a fixture per module;
    the module-level cache keeps it to one library, since pynvml binds to the first
    ``libnvidia-ml.so.1`` this process loads.
    """
    global _LOADED
    if _LOADED is None:
        lib = build(tmp_path_factory.mktemp("fakenvml"))
        _LOADED = FakeNvml(lib, lib.parent / "state")
        _LOADED.load_in_process()
    return _LOADED
