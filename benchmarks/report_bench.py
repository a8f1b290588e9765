"""Weekly report speed and memory on a week of 1,024 GPUs at one-minute resolution.

    python benchmarks/report_bench.py [--source simulator|synthetic] [--gpus 1024] [--days 7]
                                      [--repeat 3] [--ledger FILE] [--compare DIR] [--profile]

The ledger (``docs/ledger.md`` columns, ~10 M rows for the defaults) is, by default,
**fleet-shaped**: the demo cluster (``gpuledger simulate``: MIG slices, time-shared GPUs,
notebooks, replicated inference, training jobs, pods coming and going, one-minute
samples) replayed for ``--days`` and tiled, with every node, device, pod and workload
renamed per copy, until it holds ``--gpus`` GPUs. ``--source synthetic`` instead draws
uniform rows with numpy (128 eight-GPU nodes, about 90 % held, utilisation and memory
drawn per minute): fewer distinct workloads and no ragged edges, which flatters the code.

Then runs ``gpuledger report`` on it ``--repeat`` times, each in a child process,
alternating with a baseline child that merely loads the ledger with
``pandas.read_parquet``, and reports median wall time and peak resident memory
(``wait4``'s ``ru_maxrss``) and the ratio. ``--compare DIR`` also runs the report of
another checkout (e.g. a ``git worktree`` of an earlier commit, with the same venv) on
the same ledger in the same loop. With ``--profile`` one more child runs under cProfile
and the top functions by cumulative time are printed. Target (issue 11): under 10 s and
2 GB on the 2-core machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

T0 = 1_764_028_800  # 2025-11-25T00:00:00Z
GIB = float(1 << 30)
NODE_TYPES = (  # instance type, GPU model, memory GiB, price per GPU-hour, capacity type
    ("p5.48xlarge", "NVIDIA H100 80GB HBM3", 79.6, 6.88, "on-demand"),
    ("p4d.24xlarge", "NVIDIA A100-SXM4-40GB", 40.0, 2.7447, "on-demand"),
    ("g5.48xlarge", "NVIDIA A10G", 22.5, 2.036, "on-demand"),
    ("g6e.48xlarge", "NVIDIA L40S", 45.0, 3.7664, "spot"),
)
TEAMS = ("ml-research", "search", "recsys", "platform", "genai")
# kind, class, GPUs per pod, mean util, util spread, memory fraction
SHAPES = (("PyTorchJob", "training", 8, 0.85, 0.08, 0.85), ("JobSet", "training", 4, 0.75, 0.1, 0.7),
          ("Deployment", "inference", 1, 0.2, 0.15, 0.4), ("Deployment", "inference", 1, 0.05, 0.05, 0.15),
          ("Notebook", "interactive", 1, 0.01, 0.02, 0.3), ("Deployment", "inference", 1, 0.0, 0.0, 0.0))


from measure import run_child  # noqa: E402  (benchmarks/ is on the path when run as a script)


def dict_column(codes: np.ndarray, values: list) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(values, pa.string()))


def generate(path: Path, gpus: int, days: float, seed: int = 1) -> int:
    """Write a synthetic ledger; returns its row count."""
    rng = np.random.default_rng(seed)
    minutes = int(days * 1440)
    nodes = gpus // 8
    node_type = np.arange(nodes) % len(NODE_TYPES)
    gpu_node = np.arange(gpus) // 8
    gtype = node_type[gpu_node]
    # assign pods: walk GPUs node by node, draw a shape, leave ~10 % unallocated
    pod_of_gpu = np.full(gpus, -1)
    pods = []  # (team, shape, workload id)
    g = 0
    while g < gpus:
        if rng.random() < 0.1:
            g += 1
            continue
        shape = int(rng.integers(len(SHAPES)))
        n = min(SHAPES[shape][2], 8 - g % 8)
        team = int(rng.integers(len(TEAMS)))
        workload = len(pods) // 3  # about three pods per workload (replicas)
        pods.append((team, shape, workload))
        pod_of_gpu[g:g + n] = len(pods) - 1
        g += n
    n_rows = gpus * minutes
    gpu = np.tile(np.arange(gpus), minutes)
    minute = np.repeat(np.arange(minutes, dtype=np.int64) * 60 + T0, gpus)
    pod = pod_of_gpu[gpu]
    allocated = pod >= 0
    shape = np.array([SHAPES[s] for _, s, _ in pods], dtype=object)
    mean = np.array([s[3] for s in shape], float)[np.maximum(pod, 0)]
    spread = np.array([s[4] for s in shape], float)[np.maximum(pod, 0)]
    memfrac = np.array([s[5] for s in shape], float)[np.maximum(pod, 0)]
    util = np.clip(mean + spread * rng.standard_normal(n_rows, dtype=np.float32), 0, 1).round(2)
    util = np.where(allocated, util, 0.0)
    mem_total = np.array([t[2] for t in NODE_TYPES])[gtype[gpu]] * GIB
    mem = np.where(allocated, mem_total * memfrac * (0.9 + 0.1 * rng.random(n_rows, dtype=np.float32)), 0.0)
    price = np.array([t[3] for t in NODE_TYPES])[gtype[gpu]]
    cost_row = 60.0 * price / 3600.0
    alloc_s = np.where(allocated, 60.0, 0.0)
    used = alloc_s * util
    pod_codes = np.maximum(pod, 0)
    team_codes = np.array([t for t, _, _ in pods])[pod_codes]
    shape_codes = np.array([s for _, s, _ in pods])[pod_codes]
    workload_codes = np.array([w for _, _, w in pods])[pod_codes]
    mask = pa.array(~allocated)

    def masked(codes, values):
        return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32), mask=~allocated),
                                              pa.array(values, pa.string()))

    n_work = max(w for _, _, w in pods) + 1
    table = pa.table({
        "minute": pa.array(minute, pa.timestamp("s", tz="UTC")),
        "node": dict_column(gpu_node[gpu], [f"gpu-node-{i:04d}" for i in range(nodes)]),
        "device_uuid": dict_column(gpu, [f"GPU-{i:08x}-0000-0000-0000-000000000000" for i in range(gpus)]),
        "parent_uuid": pa.nulls(n_rows, pa.string()),
        "mig_profile": pa.nulls(n_rows, pa.string()),
        "gpu_model": dict_column(gtype[gpu], [t[1] for t in NODE_TYPES]),
        "gpu_memory_total_bytes": pa.array(mem_total),
        "pod_uid": masked(pod_codes, [f"uid-{i:06d}" for i in range(len(pods))]),
        "namespace": masked(team_codes, list(TEAMS)),
        "pod": masked(pod_codes, [f"pod-{i:06d}" for i in range(len(pods))]),
        "team": masked(team_codes, list(TEAMS)),
        "workload_class": masked(shape_codes, [s[1] for s in SHAPES]),
        "workload_kind": masked(shape_codes, [s[0] for s in SHAPES]),
        "workload_name": masked(workload_codes, [f"workload-{i:05d}" for i in range(n_work)]),
        "instance_type": dict_column(gtype[gpu], [t[0] for t in NODE_TYPES]),
        "region": dict_column(np.zeros(n_rows, np.int32), ["us-east-1"]),
        "zone": dict_column(gpu_node[gpu] % 3, ["us-east-1a", "us-east-1b", "us-east-1c"]),
        "capacity_type": dict_column(gtype[gpu], [t[4] for t in NODE_TYPES]),
        "price_source": dict_column(np.zeros(n_rows, np.int32), ["snapshot:2026-11-23"]),
        "gpu_hourly_price": pa.array(price),
        "allocated_gpu_seconds": pa.array(alloc_s),
        "unallocated_gpu_seconds": pa.array(60.0 - alloc_s),
        "used_gpu_seconds": pa.array(used),
        "util_unknown_gpu_seconds": pa.array(np.zeros(n_rows)),
        "active_gpu_seconds": pa.array(np.where(util > 0, alloc_s, 0.0)),
        "memory_used_max_bytes": pa.array(mem, mask=~allocated),
        "cost": pa.array(np.where(allocated, cost_row, 0.0)),
        "idle_cost": pa.array(np.where(allocated, cost_row * (1 - util), 0.0)),
        "unallocated_cost": pa.array(np.where(allocated, 0.0, cost_row)),
        "samples": pa.array(np.ones(n_rows, np.int64)),
    }).replace_schema_metadata({"gpuledger.ledger_version": "1", "gpuledger.currency": "USD"})
    del mask
    pq.write_table(table, path, compression="zstd", row_group_size=1 << 20)
    return n_rows


TILED = ("node", "device_uuid", "parent_uuid", "pod_uid", "pod", "workload_name")  # renamed per copy


def simulate_fleet(path: Path, gpus: int, days: float) -> int:
    """Write the demo cluster's ledger for ``days``, tiled to ``gpus`` GPUs; returns its row count."""
    import pyarrow.compute as pc

    work = path.parent / "sim"
    work.mkdir(exist_ok=True)
    trace = work / "trace.jsonl.gz"
    for args in (["simulate", "--hours", str(days * 24), "--interval", "60", "--out", str(trace)],
                 ["replay", str(trace), "--out", str(work / "out")]):
        subprocess.run([sys.executable, "-m", "agent.cli", *args], check=True, capture_output=True)
    strings = [f.name for f in pq.read_schema(work / "out" / "ledger.parquet") if pa.types.is_string(f.type)]
    one = pq.read_table(work / "out" / "ledger.parquet", read_dictionary=strings)
    physical = pc.coalesce(one.column("parent_uuid").cast(pa.string()), one.column("device_uuid").cast(pa.string()))
    per_copy = len(pc.unique(physical))
    copies = -(-gpus // per_copy)
    tables = []
    for i in range(copies):
        table = one
        for name in TILED:
            column = table.column(name).combine_chunks()
            renamed = pa.DictionaryArray.from_arrays(
                column.indices, pc.binary_join_element_wise(column.dictionary, pa.scalar(f"t{i:03d}"), "-"))
            table = table.set_column(table.schema.get_field_index(name), name, renamed)
        tables.append(table)
    table = pa.concat_tables(tables, promote_options="permissive").sort_by("minute")
    pq.write_table(table, path, compression="zstd", row_group_size=1 << 20)
    return table.num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=1024)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--source", choices=("simulator", "synthetic"), default="simulator",
                        help="fleet-shaped (the demo cluster tiled, default) or uniform synthetic rows")
    parser.add_argument("--ledger", type=Path, help="use this ledger instead of generating one")
    parser.add_argument("--compare", type=Path, metavar="DIR",
                        help="also run the report of the checkout in DIR (an earlier commit) on the same ledger")
    parser.add_argument("--profile", action="store_true", help="also profile one run and print the top functions")
    parser.add_argument("--generate-to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate_to:
        make = simulate_fleet if args.source == "simulator" else generate
        print(f"{make(args.generate_to, args.gpus, args.days):,}")
        return
    work = Path(tempfile.mkdtemp(prefix="gpuledger-report-bench-"))
    ledger = args.ledger
    if ledger is None:
        ledger = work / "ledger.parquet"
        started = time.perf_counter()
        # generated in a child: a parent holding gigabytes of arrays would show up in the
        # children's ru_maxrss (fork counts the parent's resident pages before exec)
        rows = int(subprocess.run([sys.executable, __file__, "--gpus", str(args.gpus), "--days", str(args.days),
                                   "--source", args.source, "--generate-to", str(ledger)], check=True,
                                  capture_output=True, text=True).stdout.strip().replace(",", ""))
        print(f"generated {rows:,} {args.source} ledger rows ({args.gpus} GPUs, {args.days:g} days) in "
              f"{time.perf_counter() - started:.1f} s: {ledger.stat().st_size / 1e6:.0f} MB", flush=True)
    argv = [sys.executable, "-m", "agent.cmd_report", "--ledger", str(ledger), "--out", str(work / "report")]
    # the baseline: merely loading the same ledger into a pandas DataFrame
    baseline = [sys.executable, "-c", "import sys, pandas as pd; pd.read_parquet(sys.argv[1])", str(ledger)]
    other = None
    if args.compare:
        other = [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv.pop(1)); import runpy; "
                 "sys.argv = ['gpuledger'] + sys.argv[1:]; runpy.run_module('agent.cmd_report', run_name='__main__')",
                 str(args.compare.resolve()), "--ledger", str(ledger), "--out", str(work / "report-compare")]
    walls, rss, base_walls, base_rss, cmp_walls, cmp_rss = [], [], [], [], [], []
    for i in range(args.repeat):
        b, bm = run_child(baseline)
        base_walls.append(b)
        base_rss.append(bm)
        t, m = run_child(argv)
        walls.append(t)
        rss.append(m)
        line = f"run {i + 1}: report {t:.1f} s, peak RSS {m:,.0f} MB; read_parquet {b:.1f} s, {bm:,.0f} MB"
        if other:
            c, cm = run_child(other)
            cmp_walls.append(c)
            cmp_rss.append(cm)
            line += f"; {args.compare.name} {c:.1f} s, {cm:,.0f} MB"
        print(line, flush=True)
    ratio = statistics.median(t / b for t, b in zip(walls, base_walls))
    print(f"median: report {statistics.median(walls):.1f} s wall, {statistics.median(rss):,.0f} MB peak RSS "
          f"(target: 10 s, 2,000 MB); read_parquet alone {statistics.median(base_walls):.1f} s, "
          f"{statistics.median(base_rss):,.0f} MB; ratio report / read {ratio:.2f}")
    if other:
        print(f"median: {args.compare.name} {statistics.median(cmp_walls):.1f} s, {statistics.median(cmp_rss):,.0f} MB; "
              f"ratio report / {args.compare.name} {statistics.median(t / c for t, c in zip(walls, cmp_walls)):.2f}")
    if args.profile:
        prof = work / "report.prof"
        run_child([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "agent.cmd_report", "--ledger",
                   str(ledger), "--out", str(work / "report-prof")])
        import pstats

        stats = pstats.Stats(str(prof))
        stats.sort_stats("cumulative").print_stats(r"recommenders|agent/cmd_report|history", 25)


if __name__ == "__main__":
    main()
