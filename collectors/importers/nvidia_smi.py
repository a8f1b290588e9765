"""Import a CSV log of ``nvidia-smi --query-gpu=FIELDS --format=csv [-l N]``.

Many people already log ``nvidia-smi`` to a file; this turns such a log into a trace
that ``gpuledger replay`` prices. nvidia-smi sees GPUs, not pods, so the trace has no
``pods`` records: every GPU-second is unallocated capacity, priced by GPU model.

The parser is deliberately tolerant of what real logs hold: fields in any order and
hundreds of extra fields, a header repeated wherever a new ``nvidia-smi`` run was
appended, ``noheader``/``nounits`` variants, ``[N/A]``-style non-values, and units in
the values. It is strict about the rest: a value it cannot read is an
:class:`InputError` naming the file, line and field.
"""

from __future__ import annotations

import argparse
import calendar
import csv
import math
import re
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from collectors.errors import InputError, describe
from collectors.records import Device, DevicesRecord, Meta, NodeRecord, Record, Sample
from collectors.tracewriter import TraceWriter

NAME = "nvidia-smi"
HELP = "a CSV log of `nvidia-smi --query-gpu=... --format=csv [-l N]`"
DESCRIPTION = (
    "Convert the CSV that `nvidia-smi --query-gpu=FIELDS --format=csv [-l N]` prints into a "
    "trace. FIELDS must include timestamp, uuid (or index), name, memory.total, memory.used "
    "and utilization.gpu; power.draw and hostname are used when present and any other field "
    "is ignored. Timestamps are read as local time of the logging host shifted by "
    "--utc-offset (default 0: the log is in UTC). nvidia-smi knows nothing of pods, so every "
    "GPU is unallocated in the trace and priced by its model."
)

DEFAULT_NODE = "nvidia-smi"
MIB = 1 << 20

# Canonical field -> the names nvidia-smi accepts for it, preferred first. A header may
# carry any of them; power falls back to the newer instant/average fields.
ALIASES: dict[str, tuple[str, ...]] = {
    "timestamp": ("timestamp",),
    "name": ("name", "gpu_name"),
    "uuid": ("uuid", "gpu_uuid"),
    "index": ("index",),
    "memory.total": ("memory.total",),
    "memory.used": ("memory.used",),
    "utilization.gpu": ("utilization.gpu",),
    "power.draw": ("power.draw", "power.draw.instant", "gpu.power.draw.instant",
                   "power.draw.average", "gpu.power.draw.average"),
    "hostname": ("hostname",),
}
REQUIRED = ("timestamp", "name", "memory.total", "memory.used", "utilization.gpu")
_HEADER_WORDS = frozenset(name for names in ALIASES.values() for name in names)

# Multipliers to bytes for the memory units nvidia-smi prints (it prints MiB).
_MEMORY_UNITS = {"b": 1, "kib": 1 << 10, "mib": MIB, "gib": 1 << 30}
_NUMBER = re.compile(r"^([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z%]*)$")
# nvidia-smi prints "2026/07/14 08:12:38.123"; ISO dashes and a "T" are accepted too.
_TIMESTAMP = re.compile(r"^(\d{4})[/-](\d{2})[/-](\d{2})[ T](\d{2}):(\d{2}):\d{2}(?:\.\d{1,9})?$")
_UNIT_SUFFIX = re.compile(r"^(.*?)\s*\[([^\]]*)\]$")


# --------------------------------------------------------------------------- values


def is_missing(text: str) -> bool:
    """nvidia-smi's non-values: ``[N/A]``, ``[Not Supported]``, ``[Unknown Error]``, ``N/A``, empty."""
    return not text or text == "N/A" or (text.startswith("[") and text.endswith("]"))


def split_header_cell(cell: str) -> tuple[str, str | None]:
    """``'memory.used [MiB]'`` -> ``('memory.used', 'MiB')``; a cell without units -> ``(cell, None)``."""
    cell = cell.strip()
    match = _UNIT_SUFFIX.match(cell)
    if match:
        return match.group(1).strip(), match.group(2).strip()
    return cell, None


def parse_number(text: str, unit: str | None) -> tuple[float, str | None]:
    """A number and the unit printed after it (``'70.12 W'`` -> ``(70.12, 'W')``).

    The unit is the value's own, else the header's; ValueError when it is not a
    finite number. Plain numbers and ``'N UNIT'`` take a fast path: a long log has
    millions of values.
    """
    number, space, found = text.rpartition(" ")
    if not space:
        number, found = text, ""
    try:
        value = float(number)
    except ValueError:
        match = _NUMBER.match(text)
        if not match:
            raise ValueError(text) from None
        value, found = float(match.group(1)), match.group(2)
    if not math.isfinite(value):
        raise ValueError(text)
    return value, found or unit


def to_bytes(text: str, unit: str | None) -> float:
    """Memory as nvidia-smi prints it (MiB) in bytes."""
    value, found = parse_number(text, unit)
    factor = _MEMORY_UNITS.get((found or "MiB").lower())
    if factor is None or value < 0:
        raise ValueError("a size in MiB of at least 0")
    return value * factor


def to_percent(text: str, unit: str | None) -> float:
    value, found = parse_number(text, unit)
    if found not in (None, "%") or not 0 <= value <= 100:
        raise ValueError("a percentage from 0 to 100")
    return value


def to_watts(text: str, unit: str | None) -> float:
    value, found = parse_number(text, unit)
    if found not in (None, "W") or value < 0:
        raise ValueError("watts of at least 0")
    return value


def to_index(text: str, unit: str | None) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError("a whole number of at least 0")
    return value


def parse_offset(text: str) -> float:
    """A UTC offset in seconds from ``'2'``, ``'-5.5'``, ``'+05:30'`` or ``'-08:00'`` (hours)."""
    text = text.strip()
    match = re.fullmatch(r"([-+]?)(\d{1,2}):(\d{2})", text)
    try:
        if match:
            hours = int(match.group(2)) + int(match.group(3)) / 60
            value = -hours if match.group(1) == "-" else hours
        else:
            value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or abs(value) > 18:
        raise argparse.ArgumentTypeError(
            f"expected hours east of UTC such as 0, 2, -5 or +05:30, got {text!r}"
        )
    return value * 3600.0


class _Clock:
    """Turns nvidia-smi timestamps (local time) into Unix milliseconds.

    Whole milliseconds keep gaps exact (``1.001``, not ``1.0009999``). Consecutive
    rows share their minute, so ``YYYY/MM/DD HH:MM`` is parsed once per minute and
    only the seconds are read per row.
    """

    def __init__(self, utc_offset_s: float) -> None:
        self.offset_ms = round(utc_offset_s * 1000)
        self.head = ""
        self.head_ms = 0

    def ms(self, text: str) -> int:
        head, tail = text[:16], text[16:]
        if head != self.head:
            self.head_ms = self._minute(text)
            self.head = head
        if len(tail) < 3 or tail[0] != ":" or not tail[1:3].isdigit():
            raise ValueError(text)
        seconds = int(tail[1:3])
        frac = tail[4:]
        if seconds > 60 or (len(tail) > 3 and (tail[3] != "." or not frac.isdigit() or len(frac) > 9)):
            raise ValueError(text)
        if not frac:
            millis = 0
        elif len(frac) <= 3:
            millis = int(frac.ljust(3, "0"))
        else:
            millis = round(int(frac) / 10 ** (len(frac) - 3))
        return self.head_ms + seconds * 1000 + millis

    def _minute(self, text: str) -> int:
        match = _TIMESTAMP.match(text)
        if not match:
            raise ValueError(text)
        y, mo, d, h, mi = (int(g) for g in match.groups()[:5])
        if h > 23 or mi > 59:
            raise ValueError(text)
        datetime(y, mo, d)  # ValueError for 2026/02/30
        return (calendar.timegm((y, mo, d, h, mi, 0)) * 1000) - self.offset_ms


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Columns:
    """Where the fields we read sit in a header, and the units the header names."""

    line: int
    width: int
    index: dict[str, int]
    units: dict[str, str | None]
    cache: dict[str, dict[str, object]] = field(default_factory=lambda: {name: {} for name in ALIASES})


@dataclass
class Gpu:
    """What the first row of one GPU said about it."""

    node: str
    uuid: str
    model: str
    memory_total_bytes: float | None
    index: int | None
    first_ms: int
    line: int


@dataclass(frozen=True, slots=True)
class Row:
    """One GPU's reading, as read; ``gpu`` indexes :attr:`Log.gpus`."""

    ms: int
    line: int
    gpu: int
    util: float | None
    mem_used_bytes: float | None
    power_w: float | None


@dataclass
class Log:
    file: str
    gpus: list[Gpu] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)


def looks_like_header(cells: Sequence[str], cols: Columns | None = None) -> bool:
    """A header row names fields; no data row has a cell that is exactly a field name.

    With a header in force, a row of its width whose timestamp cell reads as a time
    is data: one regex instead of scanning ~300 cells of every row.
    """
    if cols is not None and len(cells) == cols.width:
        if _TIMESTAMP.match(cells[cols.index["timestamp"]].strip()):
            return False
    return any(split_header_cell(c)[0] in _HEADER_WORDS for c in cells)


def header_columns(cells: Sequence[str], file: str, line: int) -> Columns:
    """Map the fields we read to their positions; a missing required field is an error."""
    names = [split_header_cell(c) for c in cells]
    position = {}
    for i, (name, _) in enumerate(names):
        position.setdefault(name, i)
    index: dict[str, int] = {}
    units: dict[str, str | None] = {}
    for canonical, aliases in ALIASES.items():
        for alias in aliases:
            if alias in position:
                index[canonical] = position[alias]
                units[canonical] = names[position[alias]][1]
                break
    for required in REQUIRED:
        if required not in index:
            raise InputError(
                f"the header has no {required!r} column; add {required} to --query-gpu "
                f"(needed: timestamp, uuid or index, name, memory.total, memory.used, utilization.gpu)",
                file=file, line=line, field=required,
            )
    if "uuid" not in index and "index" not in index:
        raise InputError(
            "the header has neither a 'uuid' nor an 'index' column; add uuid to --query-gpu",
            file=file, line=line, field="uuid",
        )
    return Columns(line=line, width=len(cells), index=index, units=units)


def fields_columns(fields: str) -> Columns:
    """Columns for a ``noheader`` log from the ``--query-gpu`` list the user logged with."""
    cells = [c.strip() for c in fields.split(",") if c.strip()]
    return header_columns(cells, "--fields", 0)


# How each field we read is converted, and what a bad value should have been.
_CONVERT = {
    "memory.total": to_bytes,
    "memory.used": to_bytes,
    "utilization.gpu": to_percent,
    "power.draw": to_watts,
    "index": to_index,
}
_TIME_EXAMPLE = "a time such as '2026/07/14 08:12:38.123'"
_MISS = object()
_CACHE_LIMIT = 1 << 16  # distinct strings remembered per field and header


class _RowReader:
    """Reads data rows against the current header, converting only the fields we use."""

    def __init__(self, file: str, node: str | None, clock: _Clock) -> None:
        self.file = file
        self.node = node
        self.clock = clock
        self.log = Log(file)
        self.gpu_of: dict[tuple[str, str], int] = {}

    def value(self, cells: Sequence[str], cols: Columns, name: str, line: int):
        """The converted value of field ``name``; None when absent or a non-value like [N/A].

        Logs repeat the same few strings ("0 %", "81559 MiB") millions of times, so each
        distinct string is converted once per header.
        """
        at = cols.index.get(name)
        if at is None:
            return None
        raw = cells[at]
        cache = cols.cache[name]
        found = cache.get(raw, _MISS)
        if found is not _MISS:
            return found
        text = raw.strip()
        if is_missing(text):
            value = None
        else:
            try:
                value = _CONVERT[name](text, cols.units[name])
            except ValueError as err:
                expected = err.args[0] if err.args and err.args[0] != text else "a number"
                raise InputError(f"expected {expected}, got {describe(text)}",
                                 file=self.file, line=line, field=name) from None
        if len(cache) < _CACHE_LIMIT:
            cache[raw] = value
        return value

    def text(self, cells: Sequence[str], cols: Columns, name: str) -> str | None:
        at = cols.index.get(name)
        if at is None:
            return None
        value = cells[at].strip()
        return None if is_missing(value) else value

    def row(self, cells: Sequence[str], cols: Columns, line: int) -> None:
        if len(cells) != cols.width:
            where = f"the header on line {cols.line}" if cols.line else "--fields"
            raise InputError(
                f"expected {cols.width} comma-separated values as in {where}, got {len(cells)}",
                file=self.file, line=line,
            )
        stamp = cells[cols.index["timestamp"]].strip()
        try:
            ms = self.clock.ms(stamp)
        except ValueError:
            raise InputError(f"expected {_TIME_EXAMPLE}, got {describe(stamp)}",
                             file=self.file, line=line, field="timestamp") from None
        self.log.rows.append(Row(
            ms=ms, line=line, gpu=self.gpu(cells, cols, line, ms),
            util=self.value(cells, cols, "utilization.gpu", line),
            mem_used_bytes=self.value(cells, cols, "memory.used", line),
            power_w=self.value(cells, cols, "power.draw", line),
        ))

    def gpu(self, cells: Sequence[str], cols: Columns, line: int, ms: int) -> int:
        """The GPU a row is about, registering it on first sight."""
        node = self.node or self.text(cells, cols, "hostname") or DEFAULT_NODE
        uuid = self.text(cells, cols, "uuid")
        index = self.value(cells, cols, "index", line)
        if uuid is None:
            if index is None:
                raise InputError("expected the GPU's uuid (or its index), got neither",
                                 file=self.file, line=line, field="uuid")
            uuid = f"GPU-index-{index}"
        key = (node, uuid)
        found = self.gpu_of.get(key)
        if found is not None:
            known = self.log.gpus[found]
            if index is not None and known.index is not None and index != known.index:
                raise InputError(
                    f"uuid {uuid!r} was GPU index {known.index} (line {known.line}) and is now index "
                    f"{index}; uuids must differ between GPUs (for a log with masked uuids, drop the "
                    f"uuid column so the index names each GPU)",
                    file=self.file, line=line, field="uuid",
                )
            return found
        model = self.text(cells, cols, "name")
        if model is None:
            raise InputError(f"expected the GPU's product name, got {describe(cells[cols.index['name']].strip())}",
                             file=self.file, line=line, field="name")
        self.log.gpus.append(Gpu(
            node=node, uuid=uuid, model=model,
            memory_total_bytes=self.value(cells, cols, "memory.total", line),
            index=index, first_ms=ms, line=line,
        ))
        self.gpu_of[key] = len(self.log.gpus) - 1
        return self.gpu_of[key]


def parse_log(
    lines: Iterable[str],
    file: str,
    *,
    node: str | None = None,
    fields: str | None = None,
    utc_offset_s: float = 0.0,
) -> Log:
    """Every GPU row of a log, in file order; headers may repeat and change fields.

    ``fields`` (the ``--query-gpu`` list) reads a ``noheader`` log; a header in the
    file takes precedence from where it appears.
    """
    reader = _RowReader(file, node, _Clock(utc_offset_s))
    cols = fields_columns(fields) if fields else None
    table = csv.reader(lines, skipinitialspace=True)
    for cells in table:
        line = table.line_num
        if not cells or (len(cells) == 1 and not cells[0].strip()) or cells[0].lstrip().startswith("#"):
            continue
        if looks_like_header(cells, cols):
            cols = header_columns(cells, file, line)
            continue
        if cols is None:
            raise InputError(
                "expected a header row naming the fields (as `--format=csv` prints); "
                "for a `noheader` log pass --fields with the --query-gpu list",
                file=file, line=line,
            )
        reader.row(cells, cols, line)
    if not reader.log.rows:
        raise InputError("holds no GPU rows", file=file)
    return reader.log


# --------------------------------------------------------------------------- records


def time_order(log: Log) -> Sequence[int]:
    """Row positions in time order (file order among equal times).

    A log is nearly always in time order already; checking is cheaper than sorting.
    """
    rows = log.rows
    if all(a.ms <= b.ms for a, b in zip(rows, rows[1:])):
        return range(len(rows))
    return sorted(range(len(rows)), key=lambda i: (rows[i].ms, i))


def row_gaps(log: Log, order: Sequence[int]) -> list[int | None]:
    """For every row (by position), milliseconds since its GPU's previous row.

    Rows of one GPU are taken in time order; two rows of one GPU at the same time
    cannot both be right, so that is an error naming both lines.
    """
    last: dict[int, Row] = {}
    gaps: list[int | None] = [None] * len(log.rows)
    for pos in order:
        row = log.rows[pos]
        prev = last.get(row.gpu)
        if prev is not None:
            if prev.ms == row.ms:
                raise InputError(
                    f"GPU {log.gpus[row.gpu].uuid} already has a row at this time (line {prev.line})",
                    file=log.file, line=row.line, field="timestamp",
                )
            gaps[pos] = row.ms - prev.ms
        last[row.gpu] = row
    return gaps


def infer_interval(gaps: Iterable[int | None]) -> float:
    """The median gap between consecutive rows of one GPU: the ``-l N`` of the log.

    1.0 s when no GPU has two rows (a single ``nvidia-smi`` call).
    """
    known = [g for g in gaps if g is not None]
    return statistics.median(known) / 1000.0 if known else 1.0


def build_records(
    log: Log,
    interval_s: float | None = None,
    max_gap_s: float | None = None,
) -> tuple[Meta, Iterator[Record]]:
    """Meta and the time-ordered records of a parsed log (pure; records are generated lazily).

    A GPU's sample covers the gap since its previous row; a gap above ``max_gap_s``
    (default ten intervals) means the log was not running, so that row counts only
    the default interval rather than claiming the unobserved time.
    """
    order = time_order(log)
    gaps = row_gaps(log, order)
    interval = interval_s if interval_s is not None else infer_interval(gaps)
    max_gap_ms = 1000.0 * (max_gap_s if max_gap_s is not None else 10 * interval)
    return Meta(interval_s=interval, source=NAME), _records(log, order, gaps, interval, max_gap_ms)


def _records(log: Log, order: Sequence[int], gaps: list[int | None], interval: float,
             max_gap_ms: float) -> Iterator[Record]:
    states = iter(_state_records(log, interval))
    pending = next(states, None)
    for pos in order:
        row = log.rows[pos]
        while pending is not None and pending[0] <= row.ms:
            yield pending[1]
            pending = next(states, None)
        gap = gaps[pos]
        seconds = interval if gap is None or gap > max_gap_ms else gap / 1000.0
        gpu = log.gpus[row.gpu]
        yield Sample(
            ts=row.ms / 1000.0, node=gpu.node, uuid=gpu.uuid, util=row.util,
            mem_used_bytes=row.mem_used_bytes, power_w=row.power_w, interval_s=seconds,
        )
    while pending is not None:
        yield pending[1]
        pending = next(states, None)


def _state_records(log: Log, interval: float) -> list[tuple[int, NodeRecord | DevicesRecord]]:
    """(ms, record): a node record per node, and a devices record wherever its inventory grows."""
    records: list[tuple[int, NodeRecord | DevicesRecord]] = []
    listed: dict[str, list[Gpu]] = {}
    for node, ms, gpus in inventory_changes(log.gpus, interval):
        if node not in listed:
            records.append((ms, NodeRecord(ts=ms / 1000.0, node=node)))
        listed.setdefault(node, []).extend(gpus)
        records.append((ms, DevicesRecord(ts=ms / 1000.0, node=node, devices=tuple(
            Device(uuid=g.uuid, model=g.model, memory_total_bytes=g.memory_total_bytes, index=g.index)
            for g in listed[node]
        ))))
    return records


def inventory_changes(gpus: Iterable[Gpu], interval_s: float) -> list[tuple[str, int, list[Gpu]]]:
    """(node, ms, GPUs new to it) for each devices record a node needs, in time order.

    The GPUs of one ``-l`` pass are logged a few milliseconds apart; GPUs first seen
    within one interval of the batch's first are listed together, so an 8-GPU log
    starts with one devices record, not eight. A GPU seen later gets a new record.
    """
    window = interval_s * 1000.0
    batches: list[tuple[int, str, list[Gpu]]] = []
    open_batch: dict[str, tuple[int, list[Gpu]]] = {}
    for gpu in sorted(gpus, key=lambda g: g.first_ms):
        current = open_batch.get(gpu.node)
        if current is not None and gpu.first_ms < current[0] + window:
            current[1].append(gpu)
            continue
        open_batch[gpu.node] = (gpu.first_ms, [gpu])
        batches.append((gpu.first_ms, gpu.node, open_batch[gpu.node][1]))
    return [
        (node, ms, sorted(batch, key=lambda g: (g.index if g.index is not None else 1 << 30, g.uuid)))
        for ms, node, batch in batches
    ]


# --------------------------------------------------------------------------- CLI


def positive_seconds(text: str) -> float:
    """argparse type: a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds above 0, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The source positional and this importer's options (the CLI adds --out)."""
    parser.add_argument("source", metavar="CSV", help="the file nvidia-smi's output was logged to")
    parser.add_argument("--node", metavar="NAME", default=None,
                        help=f"node name for every GPU (default: the hostname column, else {DEFAULT_NODE!r})")
    parser.add_argument("--interval", metavar="SECONDS", type=positive_seconds, default=None,
                        help="sampling interval (-l N); default: the median gap between rows of one GPU, "
                             "1 when each GPU has one row")
    parser.add_argument("--utc-offset", metavar="HOURS", type=parse_offset, default=0.0,
                        help="hours east of UTC of the logging host's clock, e.g. 2 or -05:00 "
                             "(default 0: timestamps are UTC)")
    parser.add_argument("--max-gap", metavar="SECONDS", type=positive_seconds, default=None,
                        help="a row this long after its GPU's previous one counts only the interval, "
                             "not the gap (default: 10 intervals)")
    parser.add_argument("--fields", metavar="LIST", default=None,
                        help="the --query-gpu list, for a log written with --format=csv,noheader")


def run(args: argparse.Namespace, out: Path) -> str:
    """Read ``args.source``, write the trace to ``out``, return a one-line summary."""
    source = str(args.source)
    try:
        with open(source, encoding=sniff_encoding(source), newline="") as handle:
            log = parse_log(handle, source, node=args.node, fields=args.fields,
                            utc_offset_s=args.utc_offset)
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror}", file=source) from None
    except UnicodeDecodeError as err:
        raise InputError(f"expected UTF-8 text, got byte {err.object[err.start]:#04x}", file=source) from None
    meta, records = build_records(log, args.interval, args.max_gap)
    with TraceWriter(out, meta) as writer:
        for record in records:
            writer.write(record)
    nodes = sorted({g.node for g in log.gpus})
    first = min(r.ms for r in log.rows) / 1000.0
    last = max(r.ms for r in log.rows) / 1000.0
    return (
        f"wrote {len(log.rows):,} samples of {len(log.gpus)} GPU(s) on {', '.join(nodes)} "
        f"from {_iso(first)} to {_iso(last)} (interval {meta.interval_s:g} s) to {out}"
    )


def sniff_encoding(path: str) -> str:
    """UTF-16 when the file starts with its byte-order mark (PowerShell's `>` writes that), else UTF-8."""
    with open(path, "rb") as raw:
        head = raw.read(2)
    return "utf-16" if head in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
