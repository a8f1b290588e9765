"""Weekly report from a gathered dataset (date=YYYY-MM-DD partitions, one file per node-hour), read with DuckDB.

    PYTHONPATH=. python benchmarks/report_dataset_bench.py [--source simulator|synthetic] [--gpus 1024]
                                                           [--days 7] [--repeat 3] [--dataset DIR]
                                                           [--layout node-day|node-hour]

Generates the fleet-shaped ledger of ``report_bench.py`` (~10 M rows for the defaults),
splits it into the gatherer's layout (``tests/ledgerdataset.py``), then runs ``gpuledger
report --ledger DIR`` ``--repeat`` times, each in a child process, alternating with a
baseline child in which DuckDB merely scans the same columns of the same window
(``recommenders.queries.scan``), and reports median wall time, peak resident memory and
the ratios. Target (issue 14): 10 M rows in 5 s and 1 GB.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import run_child

HERE = Path(__file__).resolve().parent

SCAN = """
import sys
from recommenders import queries
from recommenders.dataset import dataset_end, engine
from recommenders.history import COLUMNS
with engine(sys.argv[1]) as e:
    first, end = dataset_end(e)
    present = e.window(min(end - 14 * 86400, end - 30 * 86400), end)
    print(e.query(queries.scan([c for c in COLUMNS if c in present])).num_rows)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=1024)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--source", choices=("simulator", "synthetic"), default="simulator")
    parser.add_argument("--dataset", type=Path, help="use this dataset instead of generating one")
    parser.add_argument("--layout", choices=("node-day", "node-hour"), default="node-day",
                        help="node-day: one file per node and date, as the gatherer keeps them (default); node-hour: "
                        "one file per node and hour, as the first gatherer wrote them")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gpuledger-dataset-bench-"))
    dataset = args.dataset
    if dataset is None:
        ledger, dataset = work / "ledger.parquet", work / "dataset"
        started = time.perf_counter()
        rows = subprocess.run([sys.executable, str(HERE / "report_bench.py"), "--gpus", str(args.gpus), "--days",
                               str(args.days), "--source", args.source, "--generate-to", str(ledger)], check=True,
                              capture_output=True, text=True).stdout.strip()
        writer = "write_dataset" if args.layout == "node-hour" else "write_day_dataset"  # node-day
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from tests.ledgerdataset import "
                        f"{writer}; {writer}(Path(sys.argv[1]), Path(sys.argv[2]))", str(ledger),
                        str(dataset)], check=True)
        files = sum(1 for _ in dataset.rglob("*.parquet"))
        print(f"generated {rows} {args.source} ledger rows as {files:,} {args.layout} files in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
    report = [sys.executable, "-m", "agent.cmd_report", "--ledger", str(dataset), "--out", str(work / "report")]
    scan = [sys.executable, "-c", SCAN, str(dataset)]
    walls, rss, base_walls, base_rss = [], [], [], []
    for i in range(args.repeat):
        b, bm = run_child(scan)
        t, m = run_child(report)
        base_walls.append(b)
        base_rss.append(bm)
        walls.append(t)
        rss.append(m)
        print(f"run {i + 1}: report {t:.1f} s, peak RSS {m:,.0f} MB; DuckDB scan {b:.1f} s, {bm:,.0f} MB", flush=True)
    print(f"median: report {statistics.median(walls):.1f} s wall, {statistics.median(rss):,.0f} MB peak RSS "
          f"(target: 5 s, 1,000 MB); DuckDB scan alone {statistics.median(base_walls):.1f} s, "
          f"{statistics.median(base_rss):,.0f} MB; ratios report / scan: time "
          f"{statistics.median(t / b for t, b in zip(walls, base_walls)):.2f}, memory "
          f"{statistics.median(m / b for m, b in zip(rss, base_rss)):.2f}")


if __name__ == "__main__":
    main()
