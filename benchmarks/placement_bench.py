"""Placement cache: cost per watch event and memory over a long event stream.

Issue 5's target: with 110 pods on the node and a watch stream of 50 events/s, the
placement cache update costs well under 1 ms per event, and memory stays flat over
100,000 events.

What is timed per event is what the informer thread does with one line of a watch
stream: decode the JSON, slim the pod, apply it to the cache (``Informer.handle_line``).
The events are realistic whole pod objects (the eight kinds of tests/fakekube/objects.py)
with churn: most are MODIFIED (a label or the status changes), one in ten replaces a pod
(DELETED, then ADDED under a new UID), so the cache keeps 110 pods. Also timed: building
the ``pods`` snapshot for the 110 pods, as each poll does.

Memory: RSS (``/proc/self/statm``) and tracemalloc's traced bytes after a warm-up of
1,000 events and at the end; tracemalloc runs in a second pass so it does not slow the
timing pass.

Then the same events through the wire, as in a pod: a child process (this script with
``--serve``) serves them as one chunked HTTPS watch stream, and the informer reads them
through the agent's client (:mod:`collectors.kubehttp`) built as in a pod, from a
service account directory with a token and the CA; timed is this process's CPU per
event (TLS, chunk reading, line splitting, decode, slim, apply), not the server's.
Printed first: the RSS of this process after importing the placement stack and
building that client, and whether any ``kubernetes`` module was imported.

    PYTHONPATH=. .venv/bin/python benchmarks/placement_bench.py [--events 100000]
"""

from __future__ import annotations

import argparse
import itertools
from array import array
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

from collectors.faults import FaultCounter
from collectors.kubeapi import Informer, WatchSettings, slim_pod
from collectors.kubehttp import KubeClient
from collectors.kubelet.resources import ContainerAssignment, PodAssignment
from collectors.placement import placement
from tests.fakekube import objects as k8s

PODS = 110
WARMUP = 1_000
KINDS = list(k8s.ALL_PODS.values())


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_pod(i: int, generation: int) -> dict:
    pod = KINDS[i % len(KINDS)]()
    meta = pod["metadata"]
    meta["name"] = f"{meta['name']}-{i}"
    meta["uid"] = str(uuid.UUID(int=(generation << 32) | i))
    return pod


def events(count: int, seed_pods: list[dict]):
    """Watch lines: mostly MODIFIED with a changing label, every tenth a replacement."""
    pods = list(seed_pods)
    generation = 1
    rv = 5_000_000
    for n in range(count):
        i = n % PODS
        rv += 1
        if n % 10 == 9:
            old = pods[i]
            yield json.dumps({"type": "DELETED", "object": old})
            generation += 1
            pods[i] = make_pod(i, generation)
            pods[i]["metadata"]["resourceVersion"] = str(rv)
            yield json.dumps({"type": "ADDED", "object": pods[i]})
        else:
            pod = pods[i]
            pod["metadata"]["resourceVersion"] = str(rv)
            pod["metadata"]["labels"]["gpuledger.io/revision"] = str(n)
            pod["status"]["podIP"] = f"10.1.{n % 250}.{i}"
            yield json.dumps({"type": "MODIFIED", "object": pod})


def fresh_informer(client: KubeClient | None = None) -> tuple[Informer, list[dict]]:
    informer = Informer("pods", client, "/api/v1/pods", slim_pod, field_selector=f"spec.nodeName={k8s.NODE}",
                        faults=FaultCounter(), settings=WatchSettings(read_timeout_s=120))
    seed = [make_pod(i, 1) for i in range(PODS)]
    informer.replace(seed, "5000000")
    return informer, seed


def lines_in(count: int) -> int:
    """How many watch lines ``events(count, ...)`` yields (a replacement is two)."""
    return count + (count + 1) // 10


# --------------------------------------------------------------------------- through the wire


def serve(directory: Path, count: int) -> None:
    """The child: make certificates, serve ``count`` events as one chunked HTTPS watch."""
    import ssl
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from tests.fakekube.tls import make_tls

    tls = make_tls(directory)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            _, seed = fresh_informer()
            for line in itertools.islice(events(count, seed), lines_in(count)):
                data = line.encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            self.close_connection = True

    server = HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.handle_request()


def stream_pass(count: int) -> dict:
    """The events through the in-pod client from a child server; this process's CPU per line."""
    with tempfile.TemporaryDirectory() as tmp:
        child = subprocess.Popen([sys.executable, __file__, "--serve", tmp, "--events", str(count)],
                                 stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()))
        try:
            port = child.stdout.readline().strip()
            account = Path(tmp) / "serviceaccount"
            account.mkdir()
            (account / "token").write_text("bench-token")
            (account / "ca.crt").write_bytes((Path(tmp) / "ca.crt").read_bytes())
            client = KubeClient.in_cluster(account, environ={"KUBERNETES_SERVICE_HOST": "127.0.0.1",
                                                             "KUBERNETES_SERVICE_PORT": port})
            informer, _ = fresh_informer(client)
            gc.collect()
            rss_before = rss_mib()
            cpu, wall = time.process_time(), time.perf_counter()
            informer._watch()  # the informer thread's loop, once: returns when the stream ends
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            gc.collect()
            rss_after = rss_mib()
            client.close()
        finally:
            if child.wait(30) if sys.exc_info()[0] is None else child.kill():
                raise RuntimeError(f"the serving child failed: exit status {child.returncode}")
    assert informer.resource_version == str(5_000_000 + count), informer.resource_version
    assert PODS - 1 <= len(informer.cache) <= PODS and not informer.faults.counts()
    lines = lines_in(count)
    return {"lines": lines, "cpu_us": cpu / lines * 1e6, "wall_s": wall,
            "rss_before_mib": rss_before, "rss_after_mib": rss_after}


def timing_pass(count: int) -> dict:
    informer, seed = fresh_informer()
    costs = array("q", bytes(8 * count))  # allocated up front, so it does not grow the RSS
    rss_warm = None
    gc.collect()
    for n, line in enumerate(itertools.islice(events(count, seed), count)):
        start = time.perf_counter_ns()
        informer.handle_line(line)
        costs[n] = time.perf_counter_ns() - start
        if n == WARMUP:
            gc.collect()
            rss_warm = rss_mib()
    gc.collect()
    assert PODS - 1 <= len(informer.cache) <= PODS  # the stream may stop between a DELETED and its ADDED
    rss_end = rss_mib()
    costs = sorted(costs)
    return {
        "events": len(costs),
        "median_us": statistics.median(costs) / 1000,
        "p99_us": costs[int(len(costs) * 0.99)] / 1000,
        "max_us": costs[-1] / 1000,
        "rss_warm_mib": rss_warm,
        "rss_end_mib": rss_end,
        "informer": informer,
    }


def memory_pass(count: int) -> dict:
    informer, seed = fresh_informer()
    tracemalloc.start()
    warm = None
    for n, line in enumerate(itertools.islice(events(count, seed), count)):
        informer.handle_line(line)
        if n == WARMUP:
            gc.collect()
            warm = tracemalloc.get_traced_memory()[0]
    gc.collect()
    end, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"traced_warm_kib": warm / 1024, "traced_end_kib": end / 1024, "traced_peak_kib": peak / 1024}


def snapshot_pass(informer: Informer, repeat: int = 200) -> dict:
    assignments = tuple(
        PodAssignment(o["metadata"]["namespace"], o["metadata"]["name"],
                      (ContainerAssignment("c", (f"GPU-{i % 8:08d}-0000-4000-8000-000000000000::{i}",), ("nvidia.com/gpu.shared",)),))
        for i, o in enumerate(informer.items())
    )
    costs = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        pods, _, missing = placement(assignments, informer.get)
        costs.append(time.perf_counter_ns() - start)
    assert len(pods) == len(assignments) and not missing
    return {"snapshot_median_us": statistics.median(costs) / 1000}


def startup_rss() -> tuple[float, list[str]]:
    """RSS after importing the placement stack and building the in-pod client (no request)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "token").write_text("t")
        (Path(tmp) / "ca.crt").write_text("")
        KubeClient.in_cluster(tmp, environ={"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    gc.collect()
    return rss_mib(), sorted(m for m in sys.modules if m.split(".")[0] == "kubernetes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)  # the child of stream_pass
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve), args.events)
        return
    rss_start, kubernetes_modules = startup_rss()
    print(f"RSS, placement stack + in-pod client: {rss_start:.1f} MiB "
          f"(kubernetes modules imported: {len(kubernetes_modules)})")
    timing = timing_pass(args.events)
    snapshot = snapshot_pass(timing.pop("informer"))
    memory = memory_pass(args.events)
    stream = stream_pass(args.events)
    print(f"pods on the node:          {PODS}")
    print(f"watch events applied:      {timing['events']:,}")
    print(f"per event (decode+slim+apply): median {timing['median_us']:.1f} µs, "
          f"p99 {timing['p99_us']:.1f} µs, max {timing['max_us']:.0f} µs")
    print(f"CPU at 50 events/s:        {50 * timing['median_us'] / 1e4:.3f} % of one core (median)")
    print(f"pods snapshot (110 pods):  median {snapshot['snapshot_median_us']:.0f} µs per poll")
    print(f"RSS after {WARMUP:,} events:     {timing['rss_warm_mib']:.1f} MiB; at the end {timing['rss_end_mib']:.1f} MiB")
    print(f"tracemalloc after {WARMUP:,}: {memory['traced_warm_kib']:.0f} KiB; at the end "
          f"{memory['traced_end_kib']:.0f} KiB (peak {memory['traced_peak_kib']:.0f} KiB)")
    print(f"through HTTPS (in-pod client): {stream['lines']:,} lines in {stream['wall_s']:.1f} s; "
          f"{stream['cpu_us']:.1f} µs CPU per line (this process: TLS, chunks, lines, decode, slim, apply)")
    print(f"RSS before the stream:     {stream['rss_before_mib']:.1f} MiB; after {stream['rss_after_mib']:.1f} MiB")


if __name__ == "__main__":
    main()
