"""Cost of the NVML collector and of `gpuledger record` on an 8-GPU node (fake library).

    python benchmarks/nvml_bench.py [--cycles 300] [--repeat 7] [--record-seconds 600]

Builds the test suite's fake ``libnvidia-ml.so.1`` (gcc) serving 8 H100s with 3
processes each (each in a pod, through a fake /proc), then measures:

1. **One sampling cycle, CPU time**, in this process with the real pynvml: the
   collector's ``poll`` against the *raw NVML calls it makes*. The raw baseline is the
   exact list of pynvml calls one poll made (recorded by wrapping pynvml), replayed in a
   tight loop with the same arguments (last-seen timestamps moved on like the
   collector's). Both run alternately ``--repeat`` times over ``--cycles`` cycles, with
   the library's clock moved 1 s per cycle so every cycle sees a second of new samples;
   the report gives medians of CPU µs per cycle and their ratio (target: within 2x).
2. **CPU % of one core at a 1 s interval**: cycle CPU time / 1 s, and measured on a
   real ``gpuledger record --interval 1s`` child from its /proc/<pid>/stat over the
   second half of the run, so start-up is not counted (target: under 1 %; /proc counts
   CPU in 10 ms ticks, so runs shorter than a few minutes read coarsely).
3. **RSS of ``gpuledger record``** sampled from /proc every second over
   ``--record-seconds`` (default 600, the issue's 10 minutes): first, last, peak and the
   slope of the last half (target: under 80 MB, flat).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakenvml import MIB, FakeNvml, FakeProc, build, h100  # noqa: E402

GPUS = 8
PROCS = 3
RECORD = (
    "import argparse, sys\n"
    "from agent.cmd_record import register\n"
    "p = argparse.ArgumentParser(prog='gpuledger'); register(p.add_subparsers())\n"
    "a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))\n"
)


def node(work: Path) -> tuple[FakeNvml, Path, list]:
    """The fake library with 8 busy H100s, and a /proc whose processes are in pods."""
    fake = FakeNvml(build(work / "lib"), work / "state")
    proc = work / "proc"
    gpus = []
    for g in range(GPUS):
        procs = []
        for k in range(PROCS):
            pid = 10_000 + g * 10 + k
            (proc / str(pid)).mkdir(parents=True)
            (proc / str(pid) / "cgroup").write_text(
                f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{g:08d}_0000_4000_8000_{k:012d}.slice/"
                "cri-containerd-0123.scope\n")
            procs.append(FakeProc(pid, (4000 + k) * MIB, 30 - 10 * k))
        gpus.append(h100(g, util=70, procs=procs))
    return fake, proc, gpus


# --------------------------------------------------------------------- 1: one cycle


def record_calls(pynvml, poll) -> list[tuple[str, tuple]]:
    """The pynvml calls (name, args) one ``poll()`` makes."""
    calls: list[tuple[str, tuple]] = []
    names = [n for n in dir(pynvml) if n.startswith("nvmlDevice") or n == "nvmlInit"]
    saved = {n: getattr(pynvml, n) for n in names}

    def wrap(name, fn):
        def inner(*args):
            calls.append((name, args))
            return fn(*args)
        return inner

    for n, fn in saved.items():
        setattr(pynvml, n, wrap(n, fn))
    try:
        poll()
    finally:
        for n, fn in saved.items():
            setattr(pynvml, n, fn)
    return calls


def bench_cycle(fake: FakeNvml, proc: Path, gpus: list, cycles: int, repeat: int) -> dict:
    import pynvml

    from collectors.faults import FaultCounter
    from collectors.nvml import NvmlCollector
    from collectors.procfs import PodResolver

    fake.load_in_process()
    t0 = 1_763_632_800 * 1_000_000
    fake.set(gpus, clock_us=t0)
    collector = NvmlCollector("bench", resolver=PodResolver(str(proc)), faults=FaultCounter())
    clock = [t0]

    def step() -> int:
        clock[0] += 1_000_000
        fake.clock(clock[0])
        return clock[0]

    collector.poll(t0 / 1e6)  # inventory
    t = step()
    calls = record_calls(pynvml, lambda: collector.poll(t / 1e6))
    c_before = fake.calls()
    collector.poll(step() / 1e6)
    c_calls = fake.calls() - c_before
    assert not collector._faults.counts(), collector._faults.counts()
    plan = [(getattr(pynvml, name), args, name in ("nvmlDeviceGetSamples", "nvmlDeviceGetProcessUtilization"))
            for name, args in calls]

    def run_collector() -> float:
        spent = 0
        for _ in range(cycles):
            now = step() / 1e6
            start = time.thread_time_ns()
            collector.poll(now)
            spent += time.thread_time_ns() - start
        return spent / cycles / 1000

    def run_raw() -> float:
        spent = 0
        for _ in range(cycles):
            now_us = step()
            start = time.thread_time_ns()
            for fn, args, moves in plan:
                if moves:  # last-seen moves on by the interval, as in the collector
                    args = (*args[:-1], now_us - 1_000_000)
                fn(*args)
            spent += time.thread_time_ns() - start
        return spent / cycles / 1000

    runs = {"collector": [], "raw": []}
    for _ in range(repeat):
        runs["collector"].append(run_collector())
        runs["raw"].append(run_raw())
    collector.close()
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "gpus": GPUS, "processes_per_gpu": PROCS,
        "pynvml_calls_per_cycle": len(calls), "nvml_c_calls_per_cycle": c_calls,
        "collector_cpu_us_per_cycle": round(med["collector"], 1),
        "raw_nvml_cpu_us_per_cycle": round(med["raw"], 1),
        "ratio": round(med["collector"] / med["raw"], 2),
        "cpu_percent_at_1s_from_cycle": round(med["collector"] / 1e6 * 100, 4),
        "runs_us": {k: [round(x, 1) for x in v] for k, v in runs.items()},
    }


# --------------------------------------------------------------------- 2, 3: the command


def run_record(fake: FakeNvml, proc: Path, out: Path, seconds: float) -> dict:
    """Run `gpuledger record --interval 1s` for ``seconds``, reading its /proc every second.

    Returns its wall time and a series of (seconds since start, CPU seconds, RSS MB).
    """
    argv = [sys.executable, "-c", RECORD, "record", "--out", str(out), "--interval", "1s",
            "--duration", f"{seconds}s", "--proc-root", str(proc), "--node", "bench"]
    tick = os.sysconf("SC_CLK_TCK")
    started = time.monotonic()
    child = subprocess.Popen(argv, cwd=ROOT, env=fake.env(), stdout=subprocess.DEVNULL)
    series: list[tuple[float, float, float]] = []
    while child.poll() is None:
        time.sleep(1.0)
        try:
            stat = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{child.pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            break
        rss = [int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")]
        if not rss:  # exited, not yet reaped
            break
        cpu = (int(stat[11]) + int(stat[12])) / tick  # utime + stime
        series.append((time.monotonic() - started, cpu, rss[0]))
    child.wait()
    if child.returncode != 0:
        raise SystemExit(f"record failed ({child.returncode})")
    return {"wall": time.monotonic() - started, "series": series}


def bench_record(fake: FakeNvml, proc: Path, gpus: list, work: Path, seconds: float) -> dict:
    fake.set(gpus)  # real clock: the library's samples follow wall time
    run = run_record(fake, proc, work / "long.jsonl.gz", seconds)
    series = run["series"]
    # steady state: the second half of the run, so start-up (imports, first scan) is not counted
    half = [p for p in series if p[0] >= series[-1][0] / 2]
    cpu_pct = (half[-1][1] - half[0][1]) / (half[-1][0] - half[0][0]) * 100
    xs, ys = [p[0] / 60 for p in half], [p[2] for p in half]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)
    return {
        "record_seconds": round(run["wall"], 1),
        "steady_cpu_percent_of_core": round(cpu_pct, 3),
        "startup_cpu_s": round(series[0][1], 2),
        "rss_first_mb": round(series[0][2], 1),
        "rss_last_mb": round(series[-1][2], 1),
        "rss_peak_mb": round(max(p[2] for p in series), 1),
        "rss_slope_mb_per_min_second_half": round(slope, 4),
        "trace_bytes": (work / "long.jsonl.gz").stat().st_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=300, help="cycles per timed run (default 300)")
    parser.add_argument("--repeat", type=int, default=7, help="alternating runs of each side (default 7)")
    parser.add_argument("--record-seconds", type=float, default=600.0,
                        help="length of the `gpuledger record` run for CPU %% and RSS (default 600; 0 skips it)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gpuledger-nvml-bench-"))
    fake, proc, gpus = node(work)
    result = {"cycle": bench_cycle(fake, proc, gpus, args.cycles, args.repeat)}
    c = result["cycle"]
    print(f"one cycle, {GPUS} GPUs x {PROCS} processes: collector {c['collector_cpu_us_per_cycle']} µs CPU, "
          f"raw NVML calls {c['raw_nvml_cpu_us_per_cycle']} µs ({c['pynvml_calls_per_cycle']} pynvml calls, "
          f"{c['nvml_c_calls_per_cycle']} C calls): ratio {c['ratio']}x (target <= 2x)")
    print(f"  -> {c['cpu_percent_at_1s_from_cycle']} % of a core at a 1 s interval")
    if args.record_seconds > 0:
        r = result["record"] = bench_record(fake, proc, gpus, work, args.record_seconds)
        print(f"gpuledger record --interval 1s for {r['record_seconds']} s: steady CPU "
              f"{r['steady_cpu_percent_of_core']} % of a core over the second half (target < 1 %), "
              f"start-up {r['startup_cpu_s']} s CPU")
        print(f"  RSS first {r['rss_first_mb']} MB, last {r['rss_last_mb']} MB, peak {r['rss_peak_mb']} MB "
              f"(target < 80 MB), second-half slope {r['rss_slope_mb_per_min_second_half']} MB/min; "
              f"trace {r['trace_bytes']:,} bytes")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
