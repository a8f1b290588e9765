"""Replay speed and memory against the time Arrow takes merely to parse the same file.

    python benchmarks/replay_bench.py [--samples 5000000] [--repeat 3] [--trace FILE]

Generates a demo-cluster trace with ``gpuledger simulate`` (1 s samples, enough nodes
and hours for the requested sample count), then alternates, ``--repeat`` times, two
child processes on the same file:

* baseline: ``pyarrow.json.read_json(FILE)`` with default options (parse only);
* replay:   ``gpuledger replay FILE --out DIR`` (parse, attribute, roll up, write).

Each child's wall time and peak resident memory (``wait4``'s ``ru_maxrss``) are taken;
the report gives medians, the ratio replay/baseline, samples per second and peak RSS.
Targets (issue: replay): ratio within 3x, at least 500,000 samples/s, under 1.5 GB.
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


def count_samples(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for line in handle if b'"kind":"sample"' in line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=5_000_000, help="samples to generate (default 5,000,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each child (default 3)")
    parser.add_argument("--trace", type=Path, help="use this trace instead of generating one")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gpuledger-bench-"))
    trace = args.trace
    if trace is None:
        from collectors.simulator import simulate

        nodes = 16
        started = time.perf_counter()
        probe = simulate(work / "probe.jsonl", nodes=nodes, hours=0.1, interval_s=1.0)
        per_hour = probe.samples / 0.1
        hours = args.samples / per_hour * 1.01
        stats = simulate(work / "trace.jsonl", nodes=nodes, hours=hours, interval_s=1.0)
        trace = stats.path
        print(f"generated {stats.samples:,} samples ({nodes} nodes, {hours:.2f} h) "
              f"in {time.perf_counter() - started:.1f} s: {trace.stat().st_size / 1e9:.2f} GB", flush=True)
        samples = stats.samples
    else:
        samples = count_samples(trace)

    python = sys.executable
    baseline_argv = [python, "-c", "import sys, pyarrow.json as j; j.read_json(sys.argv[1])", str(trace)]
    replay_argv = [python, "-m", "agent.cli", "replay", str(trace), "--out", str(work / "out")]
    base_t, base_m, rep_t, rep_m = [], [], [], []
    for i in range(args.repeat):
        t, m = run_child(baseline_argv)
        base_t.append(t)
        base_m.append(m)
        t, m = run_child(replay_argv)
        rep_t.append(t)
        rep_m.append(m)
        print(f"run {i + 1}: parse {base_t[-1]:.2f} s, replay {rep_t[-1]:.2f} s, replay RSS {rep_m[-1]:.0f} MB", flush=True)

    result = {
        "samples": samples,
        "trace_bytes": trace.stat().st_size,
        "repeat": args.repeat,
        "baseline_parse_s_median": statistics.median(base_t),
        "baseline_peak_rss_mb_max": max(base_m),
        "replay_s_median": statistics.median(rep_t),
        "replay_peak_rss_mb_max": max(rep_m),
        "ratio_replay_to_parse": statistics.median(r / b for r, b in zip(rep_t, base_t)),
        "replay_samples_per_s": samples / statistics.median(rep_t),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
