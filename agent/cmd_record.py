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
from collectors.errors import InputError, Unavailable
from collectors.kubelet.resources import DEFAULT_SOCKET
from collectors.records import DevicesRecord, Record

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
    from agent.recorder import record
    from collectors.atomicfile import check_file_target
    from collectors.nvml import NvmlCollector
    from collectors.procfs import PodResolver

    out = Path(args.out)
    check_file_target(out)
    if not logging.getLogger().handlers:
        from agent import logs

        logs.setup("warning")  # ISO 8601 times, as the agent's
    node = args.node or os.environ.get("NODE_NAME") or socket.gethostname()
    collector = NvmlCollector(node, resolver=PodResolver(args.proc_root))
    problem = collector.unavailable(time.time())
    if problem is not None:
        collector.close()
        raise Unavailable(f"cannot record: {problem}")
    source = collector
    if args.kubernetes == "on" or (args.kubernetes == "auto" and Path(args.kubelet_socket).exists()):
        try:
            source = WithPlacement(collector, placement_source(node, args.kubelet_socket, args.kubeconfig))
        except InputError:
            collector.close()
            raise
    stats = record(out, [source], args.interval, args.duration)
    print(f"wrote {stats.path}: {stats.samples:,} samples in {stats.polls} polls over "
          f"{stats.seconds:.1f} s (stopped by {stats.stopped_by})")
    return 0


class WithPlacement:
    """NVML plus the Kubernetes placement collectors, as one RecordSource.

    The placement source needs the node's devices to read device ids that are not UUIDs
    (GKE's ``nvidia0/gi0``), so every ``devices`` record NVML emits is handed to it before
    it is polled.
    """

    def __init__(self, nvml, placement) -> None:
        self.nvml = nvml
        self.placement = placement

    def poll(self, now: float) -> list[Record]:
        gpus = self.nvml.poll(now)
        for record in gpus:
            if isinstance(record, DevicesRecord):
                self.placement.set_devices(record)
        return self.placement.poll(now) + gpus

    @property
    def problem(self) -> str | None:
        """Why no GPU can be sampled (see NvmlCollector.problem), or None."""
        return self.nvml.problem

    def close(self) -> None:
        try:
            self.placement.close()
        finally:
            self.nvml.close()


def placement_source(node: str, socket_path: str, kubeconfig: str | None):
    """The kubelet pod-resources client and the API-server informers for ``node``."""
    from collectors.kubeapi import api_client_from_environment, node_informer, pod_informer
    from collectors.kubehttp import ConfigError
    from collectors.kubelet.client import PodResourcesClient
    from collectors.owners import OwnerCache
    from collectors.placement import PlacementSource

    try:
        api = api_client_from_environment(kubeconfig)
    except ConfigError as err:
        raise InputError(f"cannot configure the Kubernetes API client: {err}", file=kubeconfig) from None
    return PlacementSource(
        node, PodResourcesClient(socket_path), pod_informer(api, node).start(),
        node_informer(api, node).start(), owners=OwnerCache.from_api_client(api),
    )
