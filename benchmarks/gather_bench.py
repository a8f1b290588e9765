"""``gpuledger gather`` against a fleet of agents, each serving a day of hourly rollups.

    python benchmarks/gather_bench.py [--agents 200] [--gpus 8] [--hours 24] [--repeat 3] [--json FILE]

Writes one node's day of real rollups with the agent's own code (``RollupBook``: 8 GPUs,
10-second samples, one pod per GPU, so two rows per GPU-minute at most), then serves a
hard-linked copy of them as ``--agents`` nodes, each from its own agent HTTP server
(``BoundedHTTPServer`` with the agent's ``/ledger`` endpoint, ``agent/ledgerserve.py``) in
this process. Each of ``--repeat`` rounds runs, as child processes: the baseline (listing
every agent and downloading every rollup with as many agents at a time as gather, the bytes
thrown away), then ``gpuledger gather`` into a fresh directory twice (the first run pulls
every node-hour, the second finds nothing new), then the hourly run at the end of a day
(into another fresh directory: a gather while the agents serve all but their last hour,
then, timed, the gather that adds the last hour to every node-day's file). Prints the medians: wall time, node-hours
and rows per second, the dataset's files and bytes per row, and the agents' CPU (this
process's, which serves them) per rollup served; ``--json FILE`` writes them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import Config  # noqa: E402
from agent.httpserver import BoundedHTTPServer  # noqa: E402
from agent.ledgerserve import LedgerEndpoint  # noqa: E402
from agent.metering import Meter  # noqa: E402
from agent.rollups import RollupBook  # noqa: E402
from collectors.pricing.ratecard import RateCardPricer, load_snapshot  # noqa: E402
from collectors.records import Container, Device, DevicesRecord, Pod, PodsRecord, Sample  # noqa: E402


def one_node_day(directory: Path, gpus: int, hours: int) -> int:
    """A node's rollups of ``hours`` hours (one pod per GPU); the rows written."""
    book = RollupBook(directory, "USD")
    meter = Meter(RateCardPricer(load_snapshot()), Config())
    node = "bench-node"
    uuids = [f"GPU-{i:04d}" for i in range(gpus)]
    state = [DevicesRecord(0.0, node, tuple(Device(u, "NVIDIA H100 80GB HBM3", 80e9) for u in uuids))]
    pods = tuple(Pod(f"uid-{i}", "ml", f"train-{i}", {"team": f"team-{i % 3}"},
                     containers=(Container("main", (u,)),)) for i, u in enumerate(uuids))
    state.append(PodsRecord(0.0, node, pods))
    end = hours * 3600
    step = 3600
    for start in range(0, end, step):
        records = list(state) if start == 0 else []
        records += [Sample(float(t), node, u, 20.0 + (t // 60 + i) % 70, interval_s=10.0)
                    for t in range(start + 10, start + step + 1, 10) for i, u in enumerate(uuids)]
        book.add(meter.process(records, 10.0).rows)
        book.flush(float(start + step - 20))
    book.flush_all(float(end))
    return sum(1 for _ in directory.rglob("*.jsonl.gz"))


CLOSED = {"before": math.inf}  # hours that end at or before this are served: the last hour held back, then not


def serve(directory: Path) -> BoundedHTTPServer:
    endpoint = LedgerEndpoint(directory, lambda: CLOSED["before"])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            code, body, kind = endpoint.answer(self.path, self.headers)
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = BoundedHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


DOWNLOAD = """
import json, sys
from concurrent.futures import ThreadPoolExecutor
from agent.cmd_gather import WORKERS, _get
agents = sys.argv[1].split(",")
def pull(agent):
    listing = json.loads(_get(agent + "/ledger", None, 30))
    return sum(len(_get(agent + e["path"], None, 30)) for e in listing)
with ThreadPoolExecutor(min(WORKERS, len(agents))) as pool:
    print(sum(pool.map(pull, agents)))
"""


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, float, subprocess.CompletedProcess]:
    """Wall seconds of a child, its CPU seconds, and this process's CPU seconds meanwhile (the
    agents serving it)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0, t0 = time.process_time(), time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime, cpu, done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gather-bench-") as tmp:
        tmp_path = Path(tmp)
        began = time.perf_counter()
        files = one_node_day(tmp_path / "one", args.gpus, args.hours)
        (source,) = [p for p in (tmp_path / "one").iterdir()]
        made = time.perf_counter() - began
        servers = []
        for i in range(args.agents):
            node = tmp_path / "agents" / f"a{i:03d}" / f"gpu-node-{i:04d}"
            for path in source.rglob("*.jsonl.gz"):
                target = node / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, target)
            servers.append(serve(node.parent))
        urls = ",".join(f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        rounds = []
        for r in range(args.repeat):
            out = tmp_path / f"dataset-{r}"
            base_s, base_cpu, _, base = timed([sys.executable, "-c", DOWNLOAD, urls], env)
            if base.returncode != 0:
                print(base.stderr, file=sys.stderr)
                return 1
            runs = []
            for _ in range(2):
                wall, own, cpu, done = timed([sys.executable, "-m", "agent.cli", "gather", "--agents", urls,
                                              "--out", str(out)], env)
                runs.append((wall, cpu, done.stdout.strip() or done.stderr.strip(), own))
                if done.returncode != 0:
                    print(done.stderr, file=sys.stderr)
                    return 1
            # the hourly run at the end of a day: each node-day's file holds 23 hours, the 24th arrives
            hourly = tmp_path / f"hourly-{r}"
            CLOSED["before"] = (args.hours - 1) * 3600
            gather_cmd = [sys.executable, "-m", "agent.cli", "gather", "--agents", urls, "--out", str(hourly)]
            primed = timed(gather_cmd, env)[3]
            CLOSED["before"] = math.inf
            last_s, last_cpu, _, last = timed(gather_cmd, env)
            if primed.returncode or last.returncode:
                print(primed.stderr, last.stderr, file=sys.stderr)
                return 1
            rounds.append({"baseline_s": base_s, "baseline_cpu_s": base_cpu, "downloaded_bytes": int(base.stdout),
                           "first_run_s": runs[0][0], "gather_cpu_s": runs[0][3], "agents_cpu_s": runs[0][1],
                           "second_run_s": runs[1][0], "second_run": runs[1][2], "last_hour_s": last_s,
                           "last_hour_cpu_s": last_cpu, "last_hour": last.stdout.strip()})
            print(f"round {r + 1}: download {base_s:.2f} s (CPU {base_cpu:.2f} s), gather {runs[0][0]:.2f} s (CPU "
                  f"{runs[0][3]:.2f} s, agents' CPU {runs[0][1]:.2f} s), again {runs[1][0]:.2f} s, the day's last "
                  f"hour {last_s:.2f} s (CPU {last_cpu:.2f} s)", flush=True)
        for s in servers:
            s.shutdown()
            s.server_close()
        import pyarrow.parquet as pq

        parquet = sorted(out.glob("date=*/*.parquet"))
        rows = sum(pq.read_metadata(p).num_rows for p in parquet)
        size = sum(p.stat().st_size for p in parquet)
        rollup_bytes = sum(p.stat().st_size for p in source.rglob("*.jsonl.gz")) * args.agents
        node_hours = files * args.agents
        first = statistics.median(r["first_run_s"] for r in rounds)
        cpu = statistics.median(r["agents_cpu_s"] for r in rounds)
        figures = {
            "agents": args.agents, "gpus_per_node": args.gpus, "hours": args.hours, "repeat": args.repeat,
            "node_hours": node_hours, "rows": rows, "rollup_bytes": rollup_bytes,
            "downloaded_bytes": rounds[0]["downloaded_bytes"], "dataset_files": len(parquet),
            "dataset_bytes": size, "bytes_per_row": round(size / rows, 1),
            "baseline_download_s": round(statistics.median(r["baseline_s"] for r in rounds), 2),
            "baseline_cpu_s": round(statistics.median(r["baseline_cpu_s"] for r in rounds), 2),
            "gather_cpu_s": round(statistics.median(r["gather_cpu_s"] for r in rounds), 2),
            "first_run_s": round(first, 2), "first_runs_s": [round(r["first_run_s"], 2) for r in rounds],
            "node_hours_per_s": round(node_hours / first, 1), "rows_per_s": round(rows / first),
            "agent_cpu_ms_per_rollup": round(1000 * cpu / node_hours, 2),
            "second_run_s": round(statistics.median(r["second_run_s"] for r in rounds), 2),
            "second_run": rounds[-1]["second_run"],
            "last_hour_s": round(statistics.median(r["last_hour_s"] for r in rounds), 2),
            "last_hour_cpu_s": round(statistics.median(r["last_hour_cpu_s"] for r in rounds), 2),
            "last_hour": rounds[-1]["last_hour"], "setup_s": round(made, 1), "files_per_node": files,
            "load_average_1m_end": round(os.getloadavg()[0], 1),
        }
    for k, v in figures.items():
        print(f"{k:>18}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
