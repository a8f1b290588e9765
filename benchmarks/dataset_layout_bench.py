"""A week of a fleet's gathered ledger, scanned by DuckDB: one file per node-hour, per node-day, or one file.

    python benchmarks/dataset_layout_bench.py [--nodes 172] [--days 7] [--gpus 8] [--repeat 3]

Writes one node's day of real rollups with the agent's own code (``gather_bench.one_node_day``),
reads it with gather's reader, and lays the same rows out for ``--nodes`` nodes over ``--days``
dates three ways: ``date=*/<node>-<HH>.parquet`` (the node-hour files of the gatherer before
compaction), ``date=*/<node>.parquet`` (what ``gpuledger gather`` writes now) and one file.
Then, in a child process each time, DuckDB sums the cost and GPU-hours by team over every
file of the layout (``read_parquet('DIR/date=*/*.parquet', hive_partitioning = true)``),
``--repeat`` times, alternating layouts; prints the median seconds and the files of each.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

QUERY = """
import sys, time, duckdb
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
t0 = time.perf_counter()
rows = con.sql(f"SELECT team, sum(cost), sum(allocated_gpu_seconds) / 3600, count(*) FROM "
                  f"read_parquet('{sys.argv[1]}', hive_partitioning = true) GROUP BY ALL").fetchall()
print(time.perf_counter() - t0, sum(r[3] for r in rows))
"""


def main() -> int:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from agent.rollup_table import rollup_tables
    from gather_bench import one_node_day

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=172)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="layout-bench-") as tmp:
        tmp_path = Path(tmp)
        one_node_day(tmp_path / "one", args.gpus, 24)
        paths = sorted((tmp_path / "one").rglob("*.jsonl.gz"))
        day = pa.concat_tables(rollup_tables([(p.read_bytes(), str(p)) for p in paths]))
        minute = day.column("minute")
        hours = [day.filter(pc.equal(pc.hour(minute), h)) for h in range(24)]
        layouts = {"node-hour": tmp_path / "hour", "node-day": tmp_path / "day", "one file": tmp_path / "one-file"}
        began = time.perf_counter()
        everything = []
        for d in range(args.days):
            date = time.strftime("%Y-%m-%d", time.gmtime(d * 86400))
            shift = pa.scalar(d * 86400, pa.int64())
            for n in range(args.nodes):
                node = f"gpu-node-{n:04d}"
                moved = day.set_column(1, "node", pa.array([node] * day.num_rows)).set_column(
                    0, day.schema.field("minute"),
                    pc.add(minute.cast(pa.int64()), shift).cast(pa.timestamp("s", tz="UTC")))
                folder = layouts["node-day"] / f"date={date}"
                folder.mkdir(parents=True, exist_ok=True)
                pq.write_table(moved, folder / f"{node}.parquet", compression="zstd")
                everything.append(moved)
                folder = layouts["node-hour"] / f"date={date}"
                folder.mkdir(parents=True, exist_ok=True)
                at = 0
                for h, piece in enumerate(hours):
                    pq.write_table(moved.slice(at, piece.num_rows), folder / f"{node}-{h:02d}.parquet",
                                   compression="zstd")
                    at += piece.num_rows
        (layouts["one file"] / "date=all").mkdir(parents=True)
        pq.write_table(pa.concat_tables(everything), layouts["one file"] / "date=all" / "ledger.parquet",
                       compression="zstd", row_group_size=1 << 20)
        print(f"wrote {args.nodes} nodes x {args.days} days ({sum(t.num_rows for t in everything):,} rows) "
              f"three ways in {time.perf_counter() - began:.0f} s", flush=True)
        times: dict[str, list[float]] = {name: [] for name in layouts}
        counts: dict[str, int] = {}
        for _ in range(args.repeat):
            for name, folder in layouts.items():
                done = subprocess.run([sys.executable, "-c", QUERY, str(folder / "date=*" / "*.parquet")],
                                      capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"DuckDB failed on {name}: {done.stderr.strip()[-500:]}")
                seconds, rows = done.stdout.split()[-2:]
                times[name].append(float(seconds))
                counts[name] = int(rows)
        assert len(set(counts.values())) == 1, counts  # the same rows, whatever the layout
        for name, folder in layouts.items():
            files = len(list(folder.glob("date=*/*.parquet")))
            print(f"{name:>10}: {files:>6} files, DuckDB scan {statistics.median(times[name]):.2f} s "
                  f"(median of {args.repeat}: {', '.join(f'{t:.2f}' for t in times[name])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
