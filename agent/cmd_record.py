"""``gpuledger record``: sample this node's GPUs through NVML into a trace file.

Kept out of ``agent/cli.py`` so the command owns its flags; the CLI adds it with
``register(subparsers)``. Durations are written the way people say them (``500ms``,
``1s``, ``10m``, ``2h``, ``1h30m``); a bad one is a usage error (exit 2) before
anything is sampled or written.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import time
from pathlib import Path

from agent.durations import parse_duration
from collectors.errors import Unavailable
from collectors.kubelet.resources import DEFAULT_SOCKET

def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _interval(text: str) -> float:
    seconds = _duration(text)
    if seconds < 0.1:
        raise argparse.ArgumentTypeError(f"expected an interval of at least 100ms, got {text!r}")
    return seconds


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``record`` command to ``subparsers`` (from ``add_subparsers``)."""
    p = subparsers.add_parser(
        "record",
        help="sample this node's GPUs through NVML into a trace file",
        description="Sample every GPU and MIG device on this node through NVML (utilisation, "
        "memory, power, per-process use with the pod of each process) and write a trace "
        "that `gpuledger replay` reads. Stops after --duration, or on Ctrl-C/SIGTERM, and "
        "always leaves a whole file. See docs/nvml.md.",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="trace file to write (.jsonl or .jsonl.gz)")
    p.add_argument("--interval", type=_interval, default=1.0, metavar="DURATION",
                   help="time between samples, e.g. 500ms, 1s, 10s (default 1s)")
    p.add_argument("--duration", type=_duration, default=None, metavar="DURATION",
                   help="stop after this long, e.g. 10m or 2h (default: until interrupted)")
    p.add_argument("--node", default=None,
                   help="node name for the records (default: $NODE_NAME, else the host name)")
    p.add_argument("--proc-root", default="/proc", metavar="DIR",
                   help="where to read /proc/<pid>/cgroup to find each process's pod (default /proc)")
    p.add_argument("--kubernetes", choices=("auto", "on", "off"), default="auto",
                   help="also record node and pods records from the kubelet and the API server: "
                   "auto (default) does when the kubelet's pod-resources socket exists")
    p.add_argument("--kubelet-socket", default=DEFAULT_SOCKET, metavar="PATH",
                   help=f"the kubelet pod-resources socket (default {DEFAULT_SOCKET})")
    p.add_argument("--kubeconfig", default=None, metavar="FILE",
                   help="kubeconfig for the API server (default: the in-cluster service account, "
                   "else ~/.kube/config)")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Record until the duration ends or a signal arrives; print one closing line."""
    from agent.live import nvml_collector, wants_kubernetes, with_placement
    from agent.recorder import record
    from collectors.atomicfile import check_file_target

    out = Path(args.out)
    check_file_target(out)
    if not logging.getLogger().handlers:
        from agent import logs

        logs.setup("warning")  # ISO 8601 times, as the agent's
    node = args.node or os.environ.get("NODE_NAME") or socket.gethostname()
    collector = nvml_collector(node, args.proc_root)
    problem = collector.unavailable(time.time())
    if problem is not None:
        collector.close()
        raise Unavailable(f"cannot record: {problem}")
    source = collector
    if wants_kubernetes(args.kubernetes, args.kubelet_socket):
        source = with_placement(collector, node, args.kubelet_socket, args.kubeconfig)
    stats = record(out, [source], args.interval, args.duration)
    print(f"wrote {stats.path}: {stats.samples:,} samples in {stats.polls} polls over "
          f"{stats.seconds:.1f} s (stopped by {stats.stopped_by})")
    return 0
