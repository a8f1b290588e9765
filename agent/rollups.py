"""Ledger rollups on the node's disk, written minute by minute so a restart loses nothing.

The agent keeps the rows of the minutes in progress in memory and, once a minute has
closed, writes it into its node's file for that hour:
``DIR/<node>/<YYYY-MM-DD>/<HH>.jsonl.gz``. A file is always rewritten whole (a temporary
file, fsync, rename), so it holds every closed minute of its hour or is the previous
version: a kill at any moment leaves whole minutes. On shutdown the minute in progress is
written too, and the header says up to which sample time it holds. On start,
:meth:`RollupBook.restore` reads the newest files back and reports, per node, what is
already on disk; the meter skips those samples, so none is counted twice, and rows of a
minute finished after the restart are added to the rows written before it.

The format is JSON Lines, not Parquet, so the agent never loads Arrow or pandas (its
memory matters on every GPU node): a header line, then one object per ledger row with
exactly the columns of ``docs/ledger.md`` (``minute`` in Unix seconds). The weekly
report reads these files as it reads ``ledger.parquet``.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from agent.accounting.ledger import POD_ATTR, SLOT_ATTR
from agent.metering import Resume, Row, RowKey
from agent.accounting.timeline import SlotInfo
from collectors.atomicfile import write_bytes
from collectors.errors import InputError
from collectors.faults import FAULTS, FaultCounter
from collectors.records import TS_MAX
from recommenders.ledger_schema import (COUNTED, DEVICE, HOUR, NAMES, POD, ROW_KEY, ROLLUP_HEADER, ROLLUP_SUFFIX,
                                        MEASURED, SUMS, VERSION, node_dirname, rollup_path)

SUFFIX = ROLLUP_SUFFIX
HEADER_KEY = ROLLUP_HEADER
DAMAGED = ".damaged"  # a damaged rollup found at start is renamed <name>.damaged
COLLECTOR = "agent"


@dataclass
class _Acc:
    slot: SlotInfo
    sums: list[float]
    mem_max: float
    util_peak: float
    samples: int
    counts: list[float]  # serving counts in COUNTED order, NaN: none


@dataclass
class _Hour:
    """One node's hour: rows read back from disk, rows accumulated, minutes written."""

    restored: list[dict[str, Any]] = field(default_factory=list)
    rows: dict[RowKey, _Acc] = field(default_factory=dict)
    written: set[int] = field(default_factory=set)
    dirty: bool = False


class RollupBook:
    """Accumulates ledger rows and writes closed minutes to hourly files.

    ``keep_s``: how long after an hour ends its rows stay in memory, so a late sample
    (the meter accepts samples up to its horizon behind) still lands in the file.
    """

    def __init__(self, directory: str | Path, currency: str, keep_s: float = 600.0,
                 trace: dict[str, Any] | None = None, faults: FaultCounter = FAULTS) -> None:
        self.directory = Path(directory)
        self.faults = faults
        self.damaged: list[Path] = []  # files set aside by restore()
        self.currency = currency
        self.keep_s = keep_s
        self.trace = trace  # what the rows come from: a dry-run's trace (trace_identity), None when live
        self.made_for_this_run = False  # a dry-run's own directory, removed if the run stops before writing
        self._hours: dict[tuple[str, int], _Hour] = {}
        self.minutes_written = 0
        self.files_written = 0
        self._released_before = -math.inf  # hours before this were written and let go
        self._watermark = -math.inf  # minutes ending by this are closed
        self.written_through: float | None = None  # end of the newest closed minute on disk

    # ------------------------------------------------------------------ restart

    def restore(self) -> dict[str, Resume]:
        """Read each node's newest hour files back; node -> what they already hold.

        A damaged file among them (empty, truncated, not a rollup) is set aside as
        ``<name>.damaged`` (counted as ``ledger_damaged``, logged once) and the next older
        one is read instead: the agent starts, and in dry-run counts that hour again.
        InputError (nothing written) when they hold the ledger of another source: another
        trace, or a dry-run's ledger for a live agent and the other way round.
        """
        found: dict[str, Resume] = {}
        if not self.directory.is_dir():
            return found
        for node_dir in sorted(p for p in self.directory.iterdir() if p.is_dir()):
            minutes: list[int] = []
            samples: list[float] = []
            node = node_dir.name  # the header's name, when a file has one
            kept = 0
            for path in sorted(node_dir.glob(f"*/*{SUFFIX}"), reverse=True):
                if kept == 2:  # the newest two: late rows may go to either
                    break
                try:
                    header, rows = read_rollup(path)
                    hour, restored = checked_rows(header, rows)
                except (OSError, EOFError, ValueError, RecursionError, OverflowError, zlib.error) as err:
                    self._set_aside(path, err)
                    continue
                self._check_source(path, header)
                kept += 1
                node = str(header.get("node") or node)
                entry = self._hours.setdefault((node, hour), _Hour())
                entry.restored = restored
                entry.written = {int(r["minute"]) for r in restored}
                if header.get("minutes_through") is not None:
                    minutes.append(int(header["minutes_through"]))
                if header.get("samples_through") is not None:
                    samples.append(float(header["samples_through"]))
            if minutes or samples:
                found[node] = Resume(max(minutes, default=None), max(samples, default=None))
        return found

    def _check_source(self, path: Path, header: dict[str, Any]) -> None:
        theirs = header.get("trace") or None
        ours = self.trace
        if (theirs or {}).get("sha256") == (ours or {}).get("sha256"):
            return
        if ours is not None and theirs is not None:
            same_name = theirs.get("name") == ours["name"]
            held = (f"the ledger of another trace named {ours['name']} (sha256 {str(theirs.get('sha256'))[:12]}, "
                    f"this one's {ours['sha256'][:12]})" if same_name
                    else f"the ledger of the trace {theirs.get('name')}, not of {ours['name']}")
        elif ours is not None:
            held = (f"a ledger that names no trace (a live agent's, or one written before ledgers named their "
                    f"trace), not of {ours['name']}")
        else:
            held = f"the ledger of a dry-run of {theirs.get('name')}, not of this live agent"  # type: ignore[union-attr]
        raise InputError(f"holds {held} ({path.relative_to(self.directory)}): give another --ledger-dir, or add "
                         "--fresh-ledger to delete that ledger and start afresh",
                         file=str(self.directory), field="--ledger-dir")

    def clear(self) -> int:
        """Delete the rollup files in the directory (and the folders they leave empty), to
        start afresh; returns how many were deleted. Other files are left alone."""
        deleted = 0
        if not self.directory.is_dir():
            return deleted
        for path in sorted(self.directory.glob(f"*/*/*{SUFFIX}")):
            try:
                read_rollup(path)
            except (OSError, ValueError, EOFError, RecursionError, OverflowError, zlib.error):
                continue  # not a rollup: not ours to delete
            path.unlink()
            deleted += 1
        for folder in sorted(self.directory.glob("*/*"), reverse=True) + sorted(self.directory.glob("*")):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        return deleted

    def prune(self, keep_s: float) -> int:
        """Delete the rollups of hours that ended more than ``keep_s`` before the newest minute
        written (the ledger's clock, so a dry-run of an old trace keeps its own hours), and the
        date folders they leave empty; returns how many were deleted. Hours still in memory
        and files that are not rollup names are left alone."""
        if self.written_through is None:
            return 0
        from agent.ledgerserve import hour_of

        cutoff = self.written_through - keep_s
        held = {hour for _, hour in self._hours}
        deleted = 0
        for path in sorted(self.directory.glob(f"*/*/*{SUFFIX}")):
            hour = hour_of(path.parent.name, path.name)
            if hour is None or hour + HOUR > cutoff or hour in held or path.is_symlink():
                continue
            path.unlink()
            deleted += 1
            try:
                path.parent.rmdir()  # only when empty
            except OSError:
                pass
        return deleted

    def _set_aside(self, path: Path, err: Exception) -> None:
        aside = path.with_name(path.name + DAMAGED)
        n = 1
        while aside.exists():
            aside = path.with_name(f"{path.name}{DAMAGED}.{n}")
            n += 1
        try:
            path.rename(aside)
            where = f"moved to {aside.name}"
        except OSError as move_err:
            where = f"left in place ({move_err.strerror})"
        self.damaged.append(path)
        self.faults.record(COLLECTOR, "ledger_damaged",
                           f"{path}: not a readable ledger rollup ({_reason(err)}); {where}, its hour is counted again")

    # ------------------------------------------------------------------ accumulating

    def add(self, rows: list[Row]) -> int:
        """Add a cycle's rows; returns how many fell in hours already let go (dropped)."""
        dropped = 0
        for row in rows:
            key = row.key
            hour = key.minute - key.minute % HOUR
            entry = self._hours.get((key.node, hour))
            if entry is None:
                if self._let_go(hour):
                    dropped += 1
                    continue
                entry = self._hours[(key.node, hour)] = _Hour()
            acc = entry.rows.get(key)
            if acc is None:
                entry.rows[key] = _Acc(row.slot, list(row.sums), row.mem_max, row.util_peak, row.samples,
                                       list(row.counts))
            else:
                acc.slot = row.slot
                acc.sums = [a + b for a, b in zip(acc.sums, row.sums)]
                acc.mem_max = _fmax(acc.mem_max, row.mem_max)
                acc.util_peak = _fmax(acc.util_peak, row.util_peak)
                acc.samples += row.samples
                acc.counts = [_nan_add(a, b) for a, b in zip(acc.counts, row.counts)]
            if key.minute in entry.written:
                entry.dirty = True  # a late row for a minute already on disk
        return dropped

    def _let_go(self, hour: int) -> bool:
        return hour < self._released_before

    # ------------------------------------------------------------------ writing

    def flush(self, watermark: float) -> int:
        """Write every hour with minutes that closed (minute end <= ``watermark``) and
        are not on disk yet, or with late rows; returns the minutes newly written."""
        self._watermark = max(self._watermark, watermark)
        return self._flush(watermark, None)

    def flush_all(self, samples_through: float) -> int:
        """Write everything, the minute in progress too: on shutdown, it is all we saw.
        ``samples_through``: the newest sample time attributed, recorded in the headers."""
        return self._flush(math.inf, samples_through)

    def _flush(self, watermark: float, samples_through: float | None) -> int:
        new_minutes = 0
        for (node, hour), entry in sorted(self._hours.items()):
            closed = {k.minute for k in entry.rows if k.minute + 60 <= watermark}
            fresh = closed - entry.written
            if not fresh and not entry.dirty:
                continue
            done = closed | entry.written
            through = max((m for m in done if m + 60 <= self._watermark), default=None)
            self._write(node, hour, entry, done, through, samples_through)
            if through is not None:
                self.written_through = max(self.written_through or through + 60, through + 60)
            new_minutes += len(fresh)
            entry.written = done
            entry.dirty = False
        self.minutes_written += new_minutes
        self._release(self._watermark)
        return new_minutes

    def _release(self, watermark: float) -> None:
        """Forget hours that ended more than ``keep_s`` before the watermark."""
        for key in [k for k in self._hours if k[1] + HOUR + self.keep_s <= watermark]:
            entry = self._hours[key]
            if any(m not in entry.written for m in {r.minute for r in entry.rows}):
                continue  # not all on disk yet
            del self._hours[key]
            self._released_before = max(self._released_before, key[1] + HOUR)

    def _write(self, node: str, hour: int, entry: _Hour, minutes: set[int], minutes_through: int | None,
               samples_through: float | None) -> None:
        new = [row_dict(k, a) for k, a in entry.rows.items() if k.minute in minutes]
        rows = _merged(entry.restored, new)
        rows.sort(key=_order)
        header = {HEADER_KEY: VERSION, "currency": self.currency, "node": node, "hour": hour,
                  "minutes_through": minutes_through, "samples_through": samples_through}
        if self.trace is not None:
            header["trace"] = self.trace
        lines = [json.dumps(header)] + [json.dumps(r, allow_nan=False) for r in rows]
        data = gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)
        write_bytes(rollup_path(self.directory, node, hour), data, durable=True)
        self.files_written += 1


def row_dict(key: RowKey, acc: _Acc) -> dict[str, Any]:
    """A ledger row with the columns of docs/ledger.md, in their order (NaN becomes null)."""
    s, p = acc.slot, key.pod
    row: dict[str, Any] = {"minute": key.minute, "node": key.node, "device_uuid": key.uuid}
    row.update((name, getattr(s, SLOT_ATTR[name])) for name in DEVICE)
    row.update((name, getattr(p, POD_ATTR[name]) if p else None) for name in POD)
    row.update(zip(SUMS, acc.sums))
    row["memory_used_max_bytes"] = acc.mem_max
    row["util_peak"] = acc.util_peak
    row["samples"] = acc.samples
    row.update(zip(COUNTED, acc.counts))
    return {name: None if isinstance(row[name], float) and math.isnan(row[name]) else row[name] for name in NAMES}


def read_rollup(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and rows of one rollup file; ValueError when it is not one."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return parse_rollup(f, str(path))


def parse_rollup(lines: Iterable[str], name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and rows of a rollup's text (``name`` says where it came from in errors);
    ``gather`` parses the bytes an agent served without writing them to disk first."""
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise ValueError(f"{name}: empty, expected a gpuledger ledger rollup")
    header = json.loads(lines[0])
    if not isinstance(header, dict) or HEADER_KEY not in header:
        raise ValueError(f"{name}: line 1: expected a header with {HEADER_KEY!r}")
    return header, [json.loads(line) for line in lines[1:]]


def checked_rows(header: dict[str, Any], rows: list[Any]) -> tuple[int, list[dict[str, Any]]]:
    """The hour of a rollup read back and its rows; ValueError when they are not what the
    agent writes (so that merging them later cannot fail)."""
    hour = header.get("hour")
    if isinstance(hour, bool) or not isinstance(hour, int) or hour % HOUR or not -366 * 86400 <= hour < TS_MAX:
        raise ValueError(f"header: expected the hour in Unix seconds, got {str(hour)[:40]!r}")
    for key in ("minutes_through", "samples_through"):
        value = header.get(key)
        if value is not None and not _finite(value):
            raise ValueError(f"header: expected a number for {key}, got {str(value)[:40]!r}")
    for i, row in enumerate(rows, 2):
        if not isinstance(row, dict):
            raise ValueError(f"line {i}: expected an object")
        minute = row.get("minute")
        if isinstance(minute, bool) or not isinstance(minute, int) or not hour <= minute < hour + HOUR:
            raise ValueError(f"line {i}: expected a minute of the file's hour, got {minute!r:.40}")
        for key in ROW_KEY[1:]:
            if key not in row or not (row[key] is None or isinstance(row[key], str)):
                raise ValueError(f"line {i}: expected a string or null for {key}")
        for key in SUMS + ("samples",):
            value = row.get(key)
            if not _finite(value) and not (key in MEASURED and value is None):
                raise ValueError(f"line {i}: expected a number for {key}, got {str(value)[:40]!r}")
        for key in ("memory_used_max_bytes", "util_peak", *COUNTED):
            value = row.get(key)
            if value is not None and not _finite(value):
                raise ValueError(f"line {i}: expected a number or null for {key}")
    return hour, rows


def _finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer of hundreds of digits
        return False


def _reason(err: Exception) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:200]



def _merged(restored: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows written before a restart plus the rows since; a minute the agent stopped in
    has rows on both sides, which add up (they hold different samples)."""
    if not restored:
        return new
    by_identity = {tuple(r[k] for k in ROW_KEY): r for r in new}
    out = list(new)
    for old in restored:
        row = by_identity.get(tuple(old[k] for k in ROW_KEY))
        if row is None:
            out.append(old)
            continue
        for k in SUMS + ("samples",):
            row[k] = None if row[k] is None or old.get(k, 0) is None else row[k] + old.get(k, 0)
        for k in ("memory_used_max_bytes", "util_peak"):
            highest = [m for m in (row[k], old.get(k)) if m is not None]
            row[k] = max(highest) if highest else None
        for k in COUNTED:
            counted = [c for c in (row.get(k), old.get(k)) if c is not None]
            row[k] = sum(counted) if counted else None
    return out


def _order(row: dict[str, Any]) -> tuple:
    return (row["minute"], row["device_uuid"], row["pod_uid"] or "", row["namespace"] or "",
            row["pod"] or "", row["team"] or "", row["workload_class"] or "")


def _nan_add(a: float, b: float) -> float:
    """a + b where NaN is 'not counted': NaN only when both are."""
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return a + b


def _fmax(a: float, b: float) -> float:
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return max(a, b)
