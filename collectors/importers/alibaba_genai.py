"""Import Alibaba's GenTD26 GPU traces (``cluster-trace-v2026-GenAI``) as a trace.

GenTD26 publishes, per inference pod, GPU duty cycle (%) and GPU memory used (bytes)
about every 57 s for a day, keyed by ``container_ip`` (an MD5 of the pod IP). It is
the public record of what memory-bound, compute-idle inference looks like, so it is
the natural test bed for attribution and right-sizing. The files do not say which
card the pods ran on, which node they were on, or whom they belonged to: those are
flags here (``--gpu-model``, ``--gpus-per-node``, ``--team``...), documented as
assumptions in ``docs/importers.md``.

What the data shows (and this module relies on): both files put every reading on one
shared 57 s grid of whole-second timestamps, so the two files join on the exact
``(container_ip, timestamp)`` pair; each file has readings the other lacks, and a
reading present in only one file becomes a sample with the other value unknown
(null). A few ``container_ip`` values go silent for hours and come back: pod IPs are
reused, so a gap longer than ``--max-gap`` ends one pod and starts another.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import math
import re
import statistics
import tarfile
import uuid as uuidlib
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from collectors.errors import InputError, describe
from collectors.records import (
    Container,
    Device,
    DevicesRecord,
    Meta,
    NodeRecord,
    Owner,
    Pod,
    PodsRecord,
    Process,
    Record,
    Sample,
    ServingRecord,
    SERVING_VERSION,
)
from collectors.tracewriter import TraceWriter

NAME = "alibaba-genai"
HELP = "Alibaba GenTD26 per-pod GPU duty cycle and memory (cluster-trace-v2026-GenAI)"
DESCRIPTION = (
    "Convert a directory of Alibaba's GenTD26 trace (pod_gpu_duty_cycle_anon and "
    "pod_gpu_memory_used_bytes_anon, as .tar.gz or extracted .csv; and qps, when present, as "
    "serving records: each pod's QPS × the sampling interval requests) into a trace of one-GPU "
    "inference pods. The data names neither the GPU model nor the nodes: pods are packed onto "
    "nodes of --gpus-per-node GPUs of --gpu-model, and the anonymised timestamps are shifted so "
    "the earliest lands on --start."
)

DUTY = "pod_gpu_duty_cycle_anon"
MEMORY = "pod_gpu_memory_used_bytes_anon"
QPS = "qps"
QPS_COLUMNS = ("timestamp_anon", "value", "container_ip")
COLUMNS = ("value", "timestamp_anon", "container_ip")
DEFAULT_START = 1767225600.0  # 2026-01-01T00:00:00Z
FALLBACK_INTERVAL_S = 57.0  # the published cadence, used only when no pod has two readings
GIB = 1 << 30
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")


@dataclass(frozen=True)
class Options:
    """Everything the data does not say, with the defaults the CLI documents."""

    namespace: str = "genai"
    team: str = "genai"
    deployment: str = "sd-inference"
    app: str = "sd-inference"
    gpu_model: str = "NVIDIA L20"
    gpu_memory_gib: float = 48.0
    gpus_per_node: int = 8
    instance_type: str | None = None
    start: float = DEFAULT_START
    max_gap_s: float | None = None  # None: ten intervals

    @property
    def gpu_memory_bytes(self) -> float:
        return self.gpu_memory_gib * GIB


# --------------------------------------------------------------------------- reading


@dataclass
class Readings:
    """Joined readings: ip -> raw timestamp -> [duty %, memory bytes] (None where a file lacks it)."""

    by_ip: dict[str, dict[float, list[float | None]]]
    duty_rows: int = 0
    memory_rows: int = 0
    qps: dict[str, dict[float, float]] = field(default_factory=dict)  # ip -> raw timestamp -> requests/s
    qps_rows: int = 0
    qps_gateway_rows: int = 0  # rows with no container_ip: the gateway's own, not a pod's


@contextmanager
def open_table(directory: Path, stem: str) -> Iterator[tuple[Iterable[str], str]]:
    """Lines of ``stem.csv`` in ``directory``, else of the CSV inside ``stem.tar.gz``.

    The tar member is streamed, never extracted to disk. Yields (lines, name for errors);
    a member's name reads ``ARCHIVE/MEMBER``. A file that cannot be read or decoded,
    even halfway through, is an :class:`InputError` naming it.
    """
    plain = directory / f"{stem}.csv"
    packed = directory / f"{stem}.tar.gz"
    if plain.is_file():
        try:
            with open(plain, encoding="utf-8-sig", newline="") as handle:
                yield handle, str(plain)
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"cannot read: {err}", file=str(plain)) from None
        return
    if not packed.is_file():
        raise InputError(f"expected {packed.name} or {plain.name} in this directory", file=str(directory))
    try:
        with tarfile.open(packed, "r:gz") as archive:
            member = _csv_member(archive, stem, str(packed))
            raw = archive.extractfile(member)
            assert raw is not None  # _csv_member returns regular files only
            with io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as handle:
                yield handle, f"{packed}/{member.name}"
    except (tarfile.TarError, OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        raise InputError(f"cannot read the archive: {err}", file=str(packed)) from None


def _csv_member(archive: tarfile.TarFile, stem: str, file: str) -> tarfile.TarInfo:
    members = [m for m in archive.getmembers() if m.isfile() and m.name.endswith(".csv")]
    named = [m for m in members if Path(m.name).name == f"{stem}.csv"]
    if len(named) == 1:
        return named[0]
    if len(members) == 1:
        return members[0]
    found = ", ".join(m.name for m in members) or "none"
    raise InputError(f"expected one CSV member ({stem}.csv), found {found}", file=file)


def read_metric(
    lines: Iterable[str],
    file: str,
    slot: int,
    readings: Readings,
    check: Callable[[float], str | None],
) -> int:
    """Add one metric file's values to ``readings`` at position ``slot``; returns its row count.

    Columns are found by name (the two files order them differently). ``check(value)``
    returns an error message for a value out of range, else None.
    """
    table = csv.reader(lines)
    header: list[str] | None = None
    at: dict[str, int] = {}
    rows = 0
    first_line: dict[tuple[str, float], int] = {}
    for cells in table:
        line = table.line_num
        if not cells or not any(c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip() for c in cells]
            for name in COLUMNS:
                if name not in header:
                    raise InputError(
                        f"the header has no {name!r} column (expected {', '.join(COLUMNS)} in any order)",
                        file=file, line=line, field=name,
                    )
                at[name] = header.index(name)
            continue
        if len(cells) != len(header):
            raise InputError(f"expected {len(header)} values as in the header, got {len(cells)}",
                             file=file, line=line)
        ip = cells[at["container_ip"]].strip()
        if not ip:
            raise InputError("expected a pod's container_ip hash, got an empty value",
                             file=file, line=line, field="container_ip")
        ts = _number(cells[at["timestamp_anon"]], file, line, "timestamp_anon")
        value = _number(cells[at["value"]], file, line, "value")
        problem = check(value)
        if problem:
            raise InputError(problem, file=file, line=line, field="value")
        pod = readings.by_ip.setdefault(ip, {})
        pair = pod.get(ts)
        if pair is None:
            pair = pod[ts] = [None, None]
        elif pair[slot] is not None:
            raise InputError(
                f"pod {ip} already has a value at timestamp {ts:g} (line {first_line[(ip, ts)]})",
                file=file, line=line, field="timestamp_anon",
            )
        pair[slot] = value
        first_line[(ip, ts)] = line
        rows += 1
    if header is None:
        raise InputError(f"is empty: expected a header ({', '.join(COLUMNS)}) and rows", file=file)
    return rows


def _number(text: str, file: str, line: int, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InputError(f"expected a number, got {describe(text.strip())}", file=file, line=line, field=name)
    return value


def read_directory(directory: Path, options: Options) -> Readings:
    """Read and join both metric files of a GenTD26 directory."""
    if not directory.is_dir():
        raise InputError("expected the GenTD26 directory (holding pod_gpu_*_anon.tar.gz)", file=str(directory))
    readings = Readings(by_ip={})
    limit = options.gpu_memory_bytes

    def duty_check(v: float) -> str | None:
        return None if 0 <= v <= 100 else f"expected a duty cycle from 0 to 100 (%), got {v:g}"

    def memory_check(v: float) -> str | None:
        if v < 0:
            return f"expected bytes of at least 0, got {v:g}"
        if v > limit:
            return (f"{v:g} bytes is more than the assumed GPU's {options.gpu_memory_gib:g} GiB; "
                    f"pass a larger --gpu-memory-gib")
        return None

    with open_table(directory, DUTY) as (lines, name):
        readings.duty_rows = read_metric(lines, name, 0, readings, duty_check)
    with open_table(directory, MEMORY) as (lines, name):
        readings.memory_rows = read_metric(lines, name, 1, readings, memory_check)
    if not readings.by_ip:
        raise InputError("holds no readings", file=str(directory))
    if (directory / f"{QPS}.csv").is_file() or (directory / f"{QPS}.tar.gz").is_file():
        with open_table(directory, QPS) as (lines, name):
            read_qps(lines, name, readings)
    return readings


def read_qps(lines: Iterable[str], file: str, readings: Readings) -> None:
    """Per-pod QPS readings (``timestamp_anon,value,container_ip,request_type``) into ``readings``.

    A row without a ``container_ip`` is the gateway's (``API Requests``), not a pod's: counted
    and left out. Columns are found by name.
    """
    table = csv.reader(lines)
    header: list[str] | None = None
    at: dict[str, int] = {}
    for cells in table:
        line = table.line_num
        if not cells or not any(c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip() for c in cells]
            for name in QPS_COLUMNS:
                if name not in header:
                    raise InputError(f"the header has no {name!r} column (expected {', '.join(QPS_COLUMNS)} "
                                     "in any order)", file=file, line=line, field=name)
                at[name] = header.index(name)
            continue
        if len(cells) != len(header):
            raise InputError(f"expected {len(header)} values as in the header, got {len(cells)}",
                             file=file, line=line)
        ts = _number(cells[at["timestamp_anon"]], file, line, "timestamp_anon")
        value = _number(cells[at["value"]], file, line, "value")
        if value < 0:
            raise InputError(f"expected requests per second of at least 0, got {value:g}", file=file, line=line,
                             field="value")
        ip = cells[at["container_ip"]].strip()
        if not ip:
            readings.qps_gateway_rows += 1
            continue
        pod = readings.qps.setdefault(ip, {})
        if ts in pod:
            raise InputError(f"pod {ip} already has a QPS value at timestamp {ts:g}", file=file, line=line,
                             field="timestamp_anon")
        pod[ts] = value
        readings.qps_rows += 1
    if header is None:
        raise InputError(f"is empty: expected a header ({', '.join(QPS_COLUMNS)}) and rows", file=file)


# --------------------------------------------------------------------------- pods


@dataclass(frozen=True)
class PodLife:
    """One pod: a container_ip's readings between two gaps longer than ``--max-gap``."""

    ip: str
    incarnation: int  # 1 for the first pod with this IP, 2 after the first long gap...
    ts: tuple[float, ...]  # raw (anonymised) timestamps, increasing
    duty: tuple[float | None, ...]
    memory: tuple[float | None, ...]

    @property
    def uid(self) -> str:
        """The IP hash as a UUID (it is one: 32 hex digits); later pods on a reused IP hash on."""
        if self.incarnation == 1 and _HEX32.match(self.ip):
            return str(uuidlib.UUID(hex=self.ip))
        key = self.ip if self.incarnation == 1 else f"{self.ip}/{self.incarnation}"
        return str(uuidlib.UUID(hex=hashlib.md5(key.encode()).hexdigest()))

    def name(self, deployment: str) -> str:
        suffix = "" if self.incarnation == 1 else f"-{self.incarnation}"
        return f"{deployment}-{self.ip[:10].lower()}{suffix}"


def pod_gaps(readings: Readings) -> list[float]:
    """Every gap between consecutive readings of one container_ip."""
    gaps: list[float] = []
    for pod in readings.by_ip.values():
        ts = sorted(pod)
        gaps.extend(b - a for a, b in zip(ts, ts[1:]))
    return gaps


def median_interval(gaps: Sequence[float]) -> float:
    """The sampling interval: the median gap (57 s in GenTD26)."""
    return float(statistics.median(gaps)) if gaps else FALLBACK_INTERVAL_S


def split_lives(readings: Readings, max_gap_s: float) -> list[PodLife]:
    """Each container_ip's readings cut into pods wherever a gap exceeds ``max_gap_s``.

    Sorted by first reading, then IP, so packing and output are deterministic.
    """
    lives: list[PodLife] = []
    for ip in sorted(readings.by_ip):
        pod = readings.by_ip[ip]
        ts = sorted(pod)
        start = 0
        incarnation = 1
        for i in range(1, len(ts) + 1):
            if i == len(ts) or ts[i] - ts[i - 1] > max_gap_s:
                part = ts[start:i]
                lives.append(PodLife(
                    ip=ip, incarnation=incarnation, ts=tuple(part),
                    duty=tuple(pod[t][0] for t in part), memory=tuple(pod[t][1] for t in part),
                ))
                start, incarnation = i, incarnation + 1
    lives.sort(key=lambda life: (life.ts[0], life.ip, life.incarnation))
    return lives


def pack(spans: Sequence[tuple[float, float]], gpus_per_node: int) -> list[tuple[int, int]]:
    """First-fit (node, GPU) for each ``[start, end)`` span, taken in the order given.

    A GPU is free for a span that starts at or after the end of the one before it;
    a new node is opened only when every GPU of every open node is busy.
    """
    free_at: list[list[float]] = []
    placed: list[tuple[int, int]] = []
    for start, end in spans:
        spot = next(((n, g) for n, gpus in enumerate(free_at) for g, t in enumerate(gpus) if t <= start), None)
        if spot is None:
            free_at.append([-math.inf] * gpus_per_node)
            spot = (len(free_at) - 1, 0)
        free_at[spot[0]][spot[1]] = end
        placed.append(spot)
    return placed


# --------------------------------------------------------------------------- records


def node_name(n: int) -> str:
    return f"genai-node-{n:03d}"


def gpu_uuid(n: int, g: int) -> str:
    """Synthetic and readable: the data has no GPU ids, and no real UUID should be implied."""
    return f"GPU-{node_name(n)}-{g}"


def build_records(readings: Readings, options: Options) -> tuple[Meta, Iterator[Record], dict]:
    """Meta, the time-ordered records, and figures for the summary (pure).

    A pod is on its GPU from its first reading until one interval after its last
    (when the next scrape no longer saw it); ``pods`` snapshots are emitted per node
    at every change, and samples are merged across nodes in time order, with each
    node's ``node``/``devices``/``pods`` records before its samples at the same time.
    """
    interval = median_interval(pod_gaps(readings))
    max_gap = options.max_gap_s if options.max_gap_s is not None else 10 * interval
    lives = split_lives(readings, max_gap)
    spans = [(life.ts[0], life.ts[-1] + interval) for life in lives]
    places = pack(spans, options.gpus_per_node)
    first = min(life.ts[0] for life in lives)
    last = max(life.ts[-1] for life in lives)
    shift = options.start - first

    events: list[tuple] = []  # (raw ts, rank, node, gpu, life index, reading index)
    per_node: dict[int, list[int]] = {}
    for i, (n, g) in enumerate(places):
        per_node.setdefault(n, []).append(i)
        events.extend((t, 3, n, g, i, j) for j, t in enumerate(lives[i].ts))
    # QPS readings: each on the pod (the life of its IP) whose GPU span holds it
    served = unplaced = 0
    spans_of: dict[str, list[int]] = {}
    for i, life in enumerate(lives):
        spans_of.setdefault(life.ip, []).append(i)
    for ip, values in readings.qps.items():
        for t, qps in values.items():
            i = next((k for k in spans_of.get(ip, ()) if spans[k][0] <= t < spans[k][1]), None)
            if i is None:
                unplaced += 1
                continue
            events.append((t, 4, places[i][0], places[i][1], i, qps))
            served += 1
    for n, members in per_node.items():
        born = min(spans[i][0] for i in members)
        events.append((born, 0, n, -1, -1, -1))  # node + devices
        changes = {spans[i][0] for i in members} | {spans[i][1] for i in members if spans[i][1] <= last}
        events.extend((t, 2, n, -1, -1, -1) for t in changes)
    events.sort()

    figures = {
        "interval": interval, "max_gap": max_gap, "pods": len(lives), "ips": len(readings.by_ip),
        "nodes": len(per_node), "samples": sum(len(life.ts) for life in lives),
        "util_unknown": sum(d is None for life in lives for d in life.duty),
        "memory_unknown": sum(m is None for life in lives for m in life.memory),
        "start": first + shift, "end": last + shift,
        "serving": served, "qps_unplaced": unplaced, "qps_gateway": readings.qps_gateway_rows,
    }
    meta = Meta(interval_s=interval, source=NAME, version=SERVING_VERSION if served else Meta.version)
    return meta, _records(events, lives, spans, places, per_node, shift, interval, options), figures


def _records(events, lives, spans, places, per_node, shift, interval, options) -> Iterator[Record]:
    pods = [_pod(life, places[i], options) for i, life in enumerate(lives)]
    labels = {INSTANCE_TYPE_LABEL: options.instance_type} if options.instance_type else {}
    for t, rank, n, g, i, j in events:
        ts = t + shift
        if rank == 0:
            node = node_name(n)
            yield NodeRecord(ts=ts, node=node, labels=labels)
            yield DevicesRecord(ts=ts, node=node, devices=tuple(
                Device(uuid=gpu_uuid(n, k), model=options.gpu_model,
                       memory_total_bytes=options.gpu_memory_bytes, index=k)
                for k in range(options.gpus_per_node)
            ))
        elif rank == 2:
            present = [k for k in per_node[n] if spans[k][0] <= t < spans[k][1]]
            present.sort(key=lambda k: places[k][1])
            yield PodsRecord(ts=ts, node=node_name(n), pods=tuple(pods[k] for k in present))
        elif rank == 4:  # a QPS reading: QPS × the interval requests, over the interval ending then
            yield ServingRecord(ts=ts, node=node_name(n), pod_uid=pods[i].uid, interval_s=interval,
                                requests=j * interval)
        else:
            life = lives[i]
            util, mem = life.duty[j], life.memory[j]
            yield Sample(
                ts=ts, node=node_name(n), uuid=gpu_uuid(n, g), util=util, mem_used_bytes=mem,
                interval_s=interval if j == 0 else life.ts[j] - life.ts[j - 1],
                processes=(Process(pid=1, pod_uid=pods[i].uid, util=util, mem_used_bytes=mem),),
            )


def _pod(life: PodLife, place: tuple[int, int], options: Options) -> Pod:
    return Pod(
        uid=life.uid,
        namespace=options.namespace,
        name=life.name(options.deployment),
        labels={"app": options.app, "team": options.team},
        owner=Owner(kind="Deployment", name=options.deployment),
        containers=(Container(name="inference", devices=(gpu_uuid(*place),)),),
    )


# --------------------------------------------------------------------------- CLI


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
        return value
    parse.__name__ = kind.__name__
    return parse


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The source positional and this importer's options (the CLI adds --out)."""
    d = Options()
    parser.add_argument("source", metavar="DIR",
                        help="the GenTD26 directory (pod_gpu_*_anon.tar.gz, or the extracted CSVs)")
    parser.add_argument("--namespace", default=d.namespace, help=f"pods' namespace (default {d.namespace!r})")
    parser.add_argument("--team", default=d.team, help=f"pods' 'team' label (default {d.team!r})")
    parser.add_argument("--deployment", default=d.deployment,
                        help=f"the Deployment owning the pods, and their name prefix (default {d.deployment!r})")
    parser.add_argument("--gpu-model", default=d.gpu_model, metavar="MODEL",
                        help=f"NVML name of the GPU each pod holds; the data does not say (default {d.gpu_model!r})")
    parser.add_argument("--gpu-memory-gib", type=_positive(float), default=d.gpu_memory_gib, metavar="GIB",
                        help=f"memory of that GPU (default {d.gpu_memory_gib:g})")
    parser.add_argument("--gpus-per-node", type=_positive(int), default=d.gpus_per_node, metavar="N",
                        help=f"GPUs per node that pods are packed onto (default {d.gpus_per_node})")
    parser.add_argument("--instance-type", default=None, metavar="TYPE",
                        help=f"set the nodes' {INSTANCE_TYPE_LABEL} label for pricing (default: no labels)")
    parser.add_argument("--start", type=_finite, default=d.start, metavar="UNIX_SECONDS",
                        help="where the earliest reading lands; the data's timestamps are shifted "
                             "(default 1767225600 = 2026-01-01T00:00:00Z)")
    parser.add_argument("--max-gap", type=_positive(float), default=None, metavar="SECONDS",
                        help="a container_ip silent for longer is a new pod (IPs are reused); "
                             "default 10 intervals; 'inf' never splits")


def options_from_args(args: argparse.Namespace) -> Options:
    return Options(
        namespace=args.namespace, team=args.team, deployment=args.deployment, app=Options.app,
        gpu_model=args.gpu_model, gpu_memory_gib=args.gpu_memory_gib, gpus_per_node=args.gpus_per_node,
        instance_type=args.instance_type, start=args.start, max_gap_s=args.max_gap,
    )


def run(args: argparse.Namespace, out: Path) -> str:
    """Read ``args.source``, write the trace to ``out``, return a one-line summary."""
    options = options_from_args(args)
    readings = read_directory(Path(args.source), options)
    meta, records, fig = build_records(readings, options)
    with TraceWriter(out, meta) as writer:
        for record in records:
            writer.write(record)
    split = fig["pods"] - fig["ips"]
    reused = f", {split} reused after gaps over {fig['max_gap']:g} s" if split else ""
    serving = ""
    if fig["serving"] or fig["qps_unplaced"] or fig["qps_gateway"]:
        serving = (f"; {fig['serving']:,} serving records from the QPS file ({fig['qps_gateway']:,} gateway rows "
                   f"without a pod and {fig['qps_unplaced']:,} outside any pod's GPU time left out)")
    return (
        f"wrote {fig['samples']:,} samples of {fig['pods']} pods ({fig['ips']} container IPs{reused}) "
        f"on {fig['nodes']} node{'s' if fig['nodes'] != 1 else ''} of {options.gpus_per_node} x {options.gpu_model}, "
        f"{_iso(fig['start'])} to {_iso(fig['end'])} (interval {fig['interval']:g} s; "
        f"duty cycle unknown in {fig['util_unknown']:,}, memory in {fig['memory_unknown']:,}){serving} to {out}"
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
