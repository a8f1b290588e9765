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
import time
import tracemalloc
import uuid

from collectors.faults import FaultCounter
from collectors.kubeapi import Informer, slim_pod
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


def fresh_informer() -> tuple[Informer, list[dict]]:
    informer = Informer("pods", lambda **kw: None, slim_pod, faults=FaultCounter())
    seed = [make_pod(i, 1) for i in range(PODS)]
    informer.replace(seed, "5000000")
    return informer, seed


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    timing = timing_pass(args.events)
    snapshot = snapshot_pass(timing.pop("informer"))
    memory = memory_pass(args.events)
    print(f"pods on the node:          {PODS}")
    print(f"watch events applied:      {timing['events']:,}")
    print(f"per event (decode+slim+apply): median {timing['median_us']:.1f} µs, "
          f"p99 {timing['p99_us']:.1f} µs, max {timing['max_us']:.0f} µs")
    print(f"CPU at 50 events/s:        {50 * timing['median_us'] / 1e4:.3f} % of one core (median)")
    print(f"pods snapshot (110 pods):  median {snapshot['snapshot_median_us']:.0f} µs per poll")
    print(f"RSS after {WARMUP:,} events:     {timing['rss_warm_mib']:.1f} MiB; at the end {timing['rss_end_mib']:.1f} MiB")
    print(f"tracemalloc after {WARMUP:,}: {memory['traced_warm_kib']:.0f} KiB; at the end "
          f"{memory['traced_end_kib']:.0f} KiB (peak {memory['traced_peak_kib']:.0f} KiB)")


if __name__ == "__main__":
    main()
