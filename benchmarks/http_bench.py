"""The agent's HTTP endpoint under bursts: concurrent scrapes and idle connections.

    python benchmarks/http_bench.py [--concurrent 200] [--rounds 3] [--idle 1500]
                                    [--timeout 30] [--root DIR] [--json FILE]

Runs the real ``gpuledger agent --dry-run`` on a small simulated trace as a child
process (the code under ``--root``, default this checkout, so an older checkout can be
measured the same way) and, once ``/metrics`` answers:

1. **A burst of concurrent scrapes**, ``--rounds`` times: ``--concurrent`` client
   threads, released together, each opening a connection and reading ``/metrics``
   (timeout ``--timeout`` s). Latency from the release to the last byte: median, p95,
   max, and the number that timed out or failed.
2. **Idle connections**: ``--idle`` TCP connections opened and left silent (no request
   line), as a port scanner or a stuck client leaves them. After 3 s, the agent's thread
   count (``/proc/<pid>/status``) and 20 scrapes made meanwhile (median, max, failures);
   then whether the agent has closed the idle connections after its read time-out.

Prints a table; ``--json FILE`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int, timeout: float, path: str = "/metrics") -> float:
    """Seconds to read one response on a fresh connection; raises on failure."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(max(0.1, timeout - (time.perf_counter() - started)))
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        head = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            head += chunk
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise OSError(f"bad answer: {head[:60]!r}")
    return time.perf_counter() - started


def burst(port: int, n: int, timeout: float) -> dict:
    barrier = threading.Barrier(n + 1)
    results: list[float | None] = [None] * n

    def one(i: int) -> None:
        barrier.wait()
        try:
            results[i] = scrape(port, timeout)
        except OSError:
            results[i] = None

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join()
    ok = sorted(r for r in results if r is not None)
    return {"n": n, "failed": n - len(ok), "median_s": statistics.median(ok) if ok else None,
            "p95_s": ok[int(0.95 * (len(ok) - 1))] if ok else None, "max_s": ok[-1] if ok else None}


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def idle(port: int, pid: int, n: int, timeout: float) -> dict:
    socks = []
    opened_failed = 0
    for _ in range(n):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
            socks.append(s)
        except OSError:
            opened_failed += 1
            s.close()
    time.sleep(3)
    threads = threads_of(pid)
    lat, failed = [], 0
    for _ in range(20):
        try:
            lat.append(scrape(port, timeout))
        except OSError:
            failed += 1
    # has the agent closed them (read time-out)? a closed peer reads as b"" at once
    deadline = time.monotonic() + 40
    closed = 0
    while time.monotonic() < deadline:
        closed = 0
        for s in socks:
            s.setblocking(False)
            try:
                closed += s.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        if closed == len(socks):
            break
        time.sleep(1)
    for s in socks:
        s.close()
    return {"n": n, "connect_failed": opened_failed, "agent_threads": threads,
            "scrape_median_s": statistics.median(lat) if lat else None, "scrape_max_s": max(lat) if lat else None,
            "scrapes_failed": failed, "closed_by_agent_within_40s": closed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrent", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=int, default=1500)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose agent to run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.idle + args.concurrent + 256)), hard))
    env = dict(os.environ, PYTHONPATH=str(args.root))
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "t.jsonl.gz"
        subprocess.run([sys.executable, "-m", "agent.cli", "simulate", "--hours", "2", "--nodes", "4", "--out",
                        str(trace)], cwd=args.root, env=env, check=True, stdout=subprocess.DEVNULL)
        port = free_port()
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "agent", "--dry-run", "--trace", str(trace), "--speed", "60",
             "--ledger-dir", str(Path(tmp) / "ledger"), "--listen", f"127.0.0.1:{port}", "--log-level", "warning"],
            cwd=args.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    scrape(port, 2)
                    break
                except OSError:
                    if time.monotonic() > deadline or agent.poll() is not None:
                        raise SystemExit("the agent did not answer")
                    time.sleep(0.2)
            time.sleep(2)
            rounds = []
            for _ in range(args.rounds):
                rounds.append(burst(port, args.concurrent, args.timeout))
                time.sleep(2)
            idle_result = idle(port, agent.pid, args.idle, args.timeout)
            threads_after = threads_of(agent.pid)
        finally:
            agent.terminate()
            try:
                _, stderr = agent.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                agent.kill()
                _, stderr = agent.communicate()
    tracebacks = stderr.count("Traceback")
    out = {"root": str(args.root), "bursts": rounds, "idle": idle_result, "threads_after": threads_after,
           "agent_stderr_tracebacks": tracebacks, "agent_stderr_lines": len(stderr.splitlines())}
    print(f"agent from {args.root}")
    print(f"{'burst':>8} {'failed':>7} {'median s':>9} {'p95 s':>8} {'max s':>8}")
    for i, r in enumerate(rounds, 1):
        fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        print(f"{i:>8} {r['failed']:>7} {fmt(r['median_s']):>9} {fmt(r['p95_s']):>8} {fmt(r['max_s']):>8}")
    i = idle_result
    print(f"{i['n']} idle connections: agent threads {i['agent_threads']}, 20 scrapes meanwhile: median "
          f"{i['scrape_median_s'] or 0:.3f} s, max {i['scrape_max_s'] or 0:.3f} s, failed {i['scrapes_failed']}; "
          f"closed by the agent within 40 s: {i['closed_by_agent_within_40s']}; threads after: {threads_after}")
    print(f"agent stderr: {out['agent_stderr_lines']} lines, {tracebacks} tracebacks")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
