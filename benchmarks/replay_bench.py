"""Replay speed and memory against the time Arrow takes merely to parse the same file.

    python benchmarks/replay_bench.py [--case 1s|week192|week1024] [--repeat 3]
                                      [--trace FILE] [--compare DIR] [--no-baseline]

Generates a demo-cluster trace with ``gpuledger simulate`` (the simulator's fleet: training,
bursty inference with serving records, MIG slices, time-sliced GPUs, pods coming and going),
shaped by ``--case``:

* ``1s``: 16 nodes sampled every second, about 5,000,000 samples;
* ``week192``: 32 nodes (192 GPUs) sampled every 60 s for 7 days (2.18M samples), where
  the ledger has about one row per sample;
* ``week1024``: 171 nodes (1,026 GPUs) sampled every 60 s for 7 days (about 11.6M samples;
  a 3.6 GB file), to show that memory does not grow with the fleet's history.

Then it alternates, ``--repeat`` times, child processes on the same file:

* baseline: ``pyarrow.json.read_json(FILE)`` with default options (parse only; left out
  with ``--no-baseline``, as a week of 1,024 GPUs needs some 10 GB to parse at once);
* replay:   ``gpuledger replay FILE --out DIR`` (parse, attribute, roll up, write);
* with ``--compare DIR``: the same replay from another checkout (a git worktree of an
  earlier commit), run by this Python.

Each child's wall time and peak resident memory (``wait4``'s ``ru_maxrss``) are taken;
the report gives medians, the ratio replay/baseline (median of per-run ratios), samples
per second and peak RSS. Targets (issue 13): 1 s samples at least 1,000,000 samples/s and
within 1.5x of parsing; the week of 192 GPUs at least 500,000 samples/s, within 1.5x of
parsing and under 500 MB; the week of 1,024 GPUs under 600 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from measure import run_child  # noqa: E402  (benchmarks/ is on the path when run as a script)

CASES = {  # nodes, hours, interval_s (None: as many hours as 5M samples take)
    "1s": (16, None, 1.0),
    "week192": (32, 168.0, 60.0),
    "week1024": (171, 168.0, 60.0),
}


def count_samples(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for line in handle if b'"kind":"sample"' in line)


def generate(case: str, work: Path) -> tuple[Path, int]:
    from collectors.simulator import simulate

    nodes, hours, interval = CASES[case]
    started = time.perf_counter()
    if hours is None:
        probe = simulate(work / "probe.jsonl", nodes=nodes, hours=0.1, interval_s=interval)
        hours = 5_000_000 / (probe.samples / 0.1) * 1.01
    stats = simulate(work / "trace.jsonl", nodes=nodes, hours=hours, interval_s=interval)
    print(f"generated {stats.samples:,} samples and {stats.serving:,} serving records ({nodes} nodes, {stats.gpus} "
          f"GPUs, {hours:.2f} h every {interval:g} s) in {time.perf_counter() - started:.1f} s: "
          f"{stats.path.stat().st_size / 1e9:.2f} GB", flush=True)
    return stats.path, stats.samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), default="1s", help="the trace to generate (default 1s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each child (default 3)")
    parser.add_argument("--trace", type=Path, help="use this trace instead of generating one")
    parser.add_argument("--compare", type=Path, metavar="DIR", help="also replay with the checkout in DIR")
    parser.add_argument("--no-baseline", action="store_true", help="do not time pyarrow.json.read_json")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gpuledger-bench-"))
    if args.trace is None:
        trace, samples = generate(args.case, work)
    else:
        trace, samples = args.trace, count_samples(args.trace)

    python = sys.executable
    runs = {"replay": [python, "-m", "agent.cli", "replay", str(trace), "--out", str(work / "out")]}
    if not args.no_baseline:
        runs["parse"] = [python, "-c", "import sys, pyarrow.json as j; j.read_json(sys.argv[1])", str(trace)]
    if args.compare:
        runs["compare"] = [python, "-c", "import sys; sys.path.insert(0, sys.argv.pop(1)); import runpy; "
                           "sys.argv = ['gpuledger'] + sys.argv[1:]; runpy.run_module('agent.cli', run_name='__main__')",
                           str(args.compare.resolve()), "replay", str(trace), "--out", str(work / "out-compare")]
    walls: dict[str, list[float]] = {k: [] for k in runs}
    peaks: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(args.repeat):
        parts = []
        for name, argv in runs.items():
            t, m = run_child(argv)
            walls[name].append(t)
            peaks[name].append(m)
            parts.append(f"{name} {t:.2f} s, {m:,.0f} MB")
        print(f"run {i + 1}: " + "; ".join(parts), flush=True)

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(walls[a], walls[b]))

    result = {
        "case": args.case if args.trace is None else str(trace),
        "samples": samples,
        "trace_bytes": trace.stat().st_size,
        "repeat": args.repeat,
        "cpu_count": os.cpu_count(),
        **{f"{k}_s_median": statistics.median(v) for k, v in walls.items()},
        **{f"{k}_peak_rss_mb_max": max(v) for k, v in peaks.items()},
        "replay_samples_per_s": samples / statistics.median(walls["replay"]),
    }
    if "parse" in runs:
        result["ratio_replay_to_parse"] = ratio("replay", "parse")
    if "compare" in runs:
        result["compare"] = str(args.compare)
        result["compare_samples_per_s"] = samples / statistics.median(walls["compare"])
        result["ratio_replay_to_compare"] = ratio("replay", "compare")
        if "parse" in runs:
            result["ratio_compare_to_parse"] = ratio("compare", "parse")
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
