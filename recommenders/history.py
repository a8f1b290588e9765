"""Ledger history as a DataFrame: the one place the recommenders read ledger files.

Two encodings hold the same columns (``docs/ledger.md``): ``ledger.parquet`` from
``gpuledger replay`` and the agent's hourly rollups (``<dir>/<node>/<date>/<hour>.jsonl.gz``,
a header line then one row per line). A path may be either file or a directory of them.

Reading is the only I/O here, kept beside the analysis because what to read (which
columns, from which minute) is decided by the analysis. Strings are read as categoricals
(dictionary-encoded in Parquet already), so a week of a thousand GPUs at one-minute
resolution (ten million rows) fits in a few hundred megabytes.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from recommenders import ledger_schema as schema

# What the report reads of each ledger: every column but `zone` and `samples`, which no
# analysis uses (leaving them out saves two columns on ten million rows).
COLUMNS = tuple(n for n in schema.NAMES if n not in ("zone", "samples"))
STRINGS = tuple(n for n in COLUMNS if schema.BY_NAME[n].kind == "string")
NUMBERS = tuple(n for n in COLUMNS if schema.BY_NAME[n].kind == "float")
# Held as float32 in memory: readings, not money. Memory in bytes keeps 7 significant digits
# (60 ppb: a kilobyte of 18 GB) and float32 rounding keeps order (a <= b stays so), so the
# safety rule's comparisons hold; it saves 40 MB per column per ten million rows.
READINGS = frozenset({"gpu_memory_total_bytes", "memory_used_max_bytes", "util_peak"})
OPTIONAL = schema.OPTIONAL  # columns a later ledger version added: an older ledger reads them as null

# What a ledger's values may be (docs/ledger.md, from the schema's bounds): anything else is a
# damaged or forged file, refused with its column named before it reaches a figure (an
# infinite price, NaN money, a date past 9999, seconds in the quadrillions).
MINUTE_MIN = -366 * 86400  # a trace's first sample may reach back a year before 1970
MINUTE_MAX = 253370764800  # 9999-01-01: the report's dates keep four digits
BYTES_MAX = schema.BYTES_MAX
_SLACK = 1e-6  # float rounding may leave a sum a hair below 0
NULLABLE = tuple(n for n in NUMBERS if schema.BY_NAME[n].nullable)
_BOUNDS = {n: schema.BY_NAME[n].high for n in NUMBERS if schema.BY_NAME[n].high is not None}


class LedgerError(ValueError):
    """A ledger file that cannot be read or lacks a column; the CLI turns it into exit 2."""

    def __init__(self, message: str, file: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.file, self.field = message, file, field


@dataclass(frozen=True)
class History:
    """Ledger rows from ``start`` (inclusive) to ``end`` (exclusive), Unix seconds."""

    rows: pd.DataFrame
    start: float
    end: float
    currency: str
    first_minute: float


ROLLUP_SUFFIX = schema.ROLLUP_SUFFIX
ROLLUP_HEADER = schema.ROLLUP_HEADER


def ledger_files(paths: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(Parquet files, rollup files) named by ``paths``; a directory gives all it holds."""
    parquet: list[Path] = []
    rollups: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            parquet += sorted(path.rglob("*.parquet"))
            rollups += sorted(path.rglob(f"*{ROLLUP_SUFFIX}"))
            if not parquet and not rollups:
                raise LedgerError("no ledger files (*.parquet, *.jsonl.gz) in this directory", file=str(path))
        elif path.name.endswith(ROLLUP_SUFFIX):
            rollups.append(path)
        else:
            parquet.append(path)
    return parquet, rollups


def ledger_end(paths: Sequence[str | Path]) -> tuple[float, float]:
    """(first minute, end) over the files, where end is one minute after the last minute.

    Read from the Parquet row-group statistics when present (no data pages are read).
    """
    lo, hi = np.inf, -np.inf
    parquet, rollups = ledger_files(paths)
    if rollups:
        table = _rollup_table(tuple(rollups))
        if table.num_rows:
            mm = pc.min_max(table.column("minute").cast(pa.int64()))
            lo, hi = mm["min"].as_py(), mm["max"].as_py()
            _check_minutes(np.array([lo, hi]), str(rollups[0]))
    for path in parquet:
        pf = _open(path)
        _check(pf, path, ["minute"])
        index = pf.schema_arrow.get_field_index("minute")
        stats = [pf.metadata.row_group(i).column(index).statistics for i in range(pf.metadata.num_row_groups)]
        try:
            if stats and all(st is not None and st.has_min_max for st in stats):
                lo = min(lo, min(_seconds(st.min) for st in stats))
                hi = max(hi, max(_seconds(st.max) for st in stats))
                _check_minutes(np.array([lo, hi]), str(path))
                continue
        except (OverflowError, ValueError, TypeError):  # a date past 9999 does not even convert
            raise LedgerError(f"expected minutes from {MINUTE_MIN} to before {MINUTE_MAX} (Unix seconds)",
                              file=str(path), field="minute") from None
        table = _read(path, ["minute"])
        if table.num_rows:
            mm = pc.min_max(table.column("minute"))
            lo, hi = min(lo, mm["min"].as_py()), max(hi, mm["max"].as_py())
            _check_minutes(np.array([lo, hi]), str(path))
    if hi == -np.inf:
        raise LedgerError("the ledger has no rows", file=str(paths[0]))
    return float(lo), float(hi) + 60.0


def _seconds(value) -> float:
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value)


def load_history(paths: Sequence[str | Path], start: float, end: float) -> History:
    """Rows with ``start <= minute < end`` from every file, strings as categoricals."""
    first, _ = ledger_end(paths)
    frames, currency = [], None
    parquet, rollups = ledger_files(paths)
    sources: list[tuple[str, dict, Callable[[str], pa.ChunkedArray]]] = []
    for path in parquet:
        _check(_open(path), path, [c for c in COLUMNS if c not in OPTIONAL])
        pf = _open(path, read_dictionary=[c for c in STRINGS if c not in OPTIONAL])  # checked: they are there
        present = set(pf.schema_arrow.names)
        sources.append((str(path), pf.schema_arrow.metadata or {},
                        lambda name, pf=pf, path=path, present=present: _parquet_column(pf, path, name, present)))
    if rollups:
        table = _rollup_table(tuple(rollups))
        sources.append((str(rollups[0]), table.schema.metadata or {}, table.column))
    for name, metadata, column in sources:
        cur = metadata.get(b"gpuledger.currency", b"").decode() or None
        if currency and cur and cur != currency:
            raise LedgerError(f"currency {cur} differs from {currency} in an earlier ledger file",
                              file=name, field="gpuledger.currency")
        currency = currency or cur
        frames.append(_frame(column, start, end, name))
    df = frames[0] if len(frames) == 1 else _concat(frames)
    pa.default_memory_pool().release_unused()  # give Arrow's freed read buffers back to the system
    return History(df, float(start), float(end), currency or "USD", first)


def _parquet_column(pf: pq.ParquetFile, path: Path, name: str, present: set[str]) -> pa.ChunkedArray:
    if name not in present:  # an OPTIONAL column an older ledger lacks
        return pa.chunked_array([pa.nulls(pf.metadata.num_rows, pa.float64())])
    try:
        return pf.read(columns=[name]).column(name)
    except Exception as err:  # noqa: BLE001 - a corrupt data page (only the footer was read so far)
        raise LedgerError(f"cannot read ledger: {_one_line(err)}", file=str(path), field=name) from None


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__


def _check_minutes(minute: np.ndarray, file: str) -> None:
    if len(minute) and (minute.min() < MINUTE_MIN or minute.max() >= MINUTE_MAX):
        bad = minute[(minute < MINUTE_MIN) | (minute >= MINUTE_MAX)][0]
        raise LedgerError(f"expected minutes from {MINUTE_MIN} to before {MINUTE_MAX} (Unix seconds, before "
                          f"9999-01-01), got {int(bad)}", file=file, field="minute")


def _check_numbers(name: str, values: np.ndarray, file: str) -> None:
    """LedgerError unless every value of a number column is finite and within its bounds."""
    high = _BOUNDS.get(name, BYTES_MAX)  # a column without a bound of its own: 0 to 1e18, or null
    nullable = name in NULLABLE or name not in _BOUNDS
    with np.errstate(invalid="ignore"):
        bad = ~((values >= -_SLACK) & (values <= high))  # NaN and infinities fail both
    if nullable:
        bad &= ~np.isnan(values)
    if bad.any():
        value = values[np.flatnonzero(bad)[0]]
        got = "null" if np.isnan(value) else f"{value:g}"
        raise LedgerError(f"expected a number from 0 to {high:g}{' or null' if nullable else ''}, got {got}",
                          file=file, field=name)


_PARTS = (  # (part, whole): a part of a row's seconds or money is at most the whole (rounding aside)
    (("used_gpu_seconds", "util_unknown_gpu_seconds"), "allocated_gpu_seconds"),
    (("active_gpu_seconds",), "allocated_gpu_seconds"),
    (("idle_cost",), "cost"),
)


def _check_parts(data: dict[str, object], file: str) -> None:
    """LedgerError for a row whose used (or unknown, or active) seconds exceed its allocated
    seconds, or idle cost its cost: shares computed from them would not be shares."""
    for parts, whole in _PARTS:
        totals = np.asarray(data[whole], np.float64)
        columns = [np.asarray(data[p], np.float64) for p in parts]
        for lo in range(0, len(totals), _CHUNK):  # in chunks: a few MB of temporaries on ten million rows
            total = totals[lo:lo + _CHUNK]
            part = sum(c[lo:lo + _CHUNK] for c in columns)
            bad = part > total * (1 + 1e-9) + 1e-300
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise LedgerError(f"expected {' + '.join(parts)} of at most {whole} on each row, got {part[i]:g} > "
                                  f"{total[i]:g}", file=file, field=parts[0])


_CHUNK = 1 << 20


def _frame(read: Callable[[str], pa.ChunkedArray], start: float, end: float, file: str) -> pd.DataFrame:
    """The ledger columns of one source as a DataFrame, converted one column at a time.

    Converting column by column keeps the peak at the DataFrame plus one Arrow column,
    instead of the whole Arrow table beside the whole DataFrame.
    """
    column = read("minute")
    if column.null_count:
        raise LedgerError("expected a minute on every row, got null", file=file, field="minute")
    try:
        minute = column.cast(pa.timestamp("s", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    except pa.ArrowException as err:  # e.g. minutes with fractions of a second
        raise LedgerError(f"expected whole minutes ({_one_line(err)})", file=file, field="minute") from None
    _check_minutes(minute, file)
    keep = (minute >= int(start)) & (minute < int(end))
    everything = bool(keep.all())
    data: dict[str, object] = {"minute": minute if everything else minute[keep]}
    for name in COLUMNS[1:]:
        column = read(name)
        try:
            if name in STRINGS:
                series = column.to_pandas()
                if not isinstance(series.dtype, pd.CategoricalDtype):
                    series = series.astype("category")
            else:
                values = column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
                _check_numbers(name, values, file)
                series = pd.Series(values.astype(np.float32) if name in READINGS else values)
        except LedgerError:
            raise
        except (pa.ArrowException, UnicodeDecodeError, ValueError, TypeError) as err:
            raise LedgerError(f"cannot read the column ({_one_line(err)})", file=file, field=name) from None
        del column
        data[name] = series if everything else series[keep].reset_index(drop=True)
    _check_parts(data, file)
    return pd.DataFrame(data, copy=False)


_ROLLUP_SCHEMA = pa.schema(
    [("minute", pa.int64())] + [(c, pa.string()) for c in STRINGS]
    + [(c, pa.float64()) for c in NUMBERS] + [("samples", pa.int64())]
)


@lru_cache(maxsize=4)
def _rollup_table(paths: tuple[Path, ...]) -> pa.Table:
    """Every row of the agent's rollup files as one table (minute as timestamp[s, UTC])."""
    tables, currency = [], None
    for path in paths:
        try:
            with gzip.open(path, "rb") as f:
                header_line = f.readline()
                body = f.read()
            header = json.loads(header_line)
        except (OSError, EOFError, ValueError, RecursionError, zlib.error) as err:
            raise LedgerError(f"cannot read ledger rollup: {_one_line(err)}", file=str(path)) from None
        if not isinstance(header, dict) or ROLLUP_HEADER not in header:
            raise LedgerError(f"line 1: expected a header with {ROLLUP_HEADER!r}: is this a gpuledger "
                              "ledger rollup?", file=str(path))
        cur = header.get("currency")
        if not (isinstance(cur, str) and len(cur) == 3 and cur.isascii() and cur.isalpha() and cur.isupper()):
            raise LedgerError(f"line 1: expected a three-letter currency code, got {str(cur)[:20]!r}", file=str(path),
                              field="currency")
        if currency and cur != currency:
            raise LedgerError(f"currency {cur} differs from {currency} in an earlier rollup", file=str(path),
                              field="currency")
        currency = cur
        if not body.strip():
            continue
        try:
            table = pajson.read_json(pa.BufferReader(body), parse_options=pajson.ParseOptions(
                explicit_schema=_ROLLUP_SCHEMA, unexpected_field_behavior="ignore"))
        except pa.ArrowException as err:
            raise LedgerError(f"cannot read ledger rollup: {_one_line(err)}", file=str(path)) from None
        tables.append(table.select(_ROLLUP_SCHEMA.names))
    table = pa.concat_tables(tables) if tables else _ROLLUP_SCHEMA.empty_table()
    table = table.set_column(0, "minute", table.column("minute").cast(pa.timestamp("s", tz="UTC")))
    return table.replace_schema_metadata({"gpuledger.currency": currency or "USD"})


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Frames of several files as one, with string columns categorical over the union of values."""
    out = {}
    for name in COLUMNS:
        parts = [f[name] for f in frames]
        if name in STRINGS:
            cats = pd.Index(pd.unique(np.concatenate([p.cat.categories.to_numpy(dtype=object) for p in parts])))
            parts = [p.cat.set_categories(cats) for p in parts]
            out[name] = pd.Series(pd.Categorical(pd.concat(parts, ignore_index=True), categories=cats))
        else:
            out[name] = pd.concat(parts, ignore_index=True)
    return pd.DataFrame(out)


def _open(path: str | Path, read_dictionary: Sequence[str] | None = None) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path, read_dictionary=read_dictionary)
    except FileNotFoundError:
        raise LedgerError("cannot read ledger: no such file", file=str(path)) from None
    except Exception as err:  # noqa: BLE001 - whatever a damaged footer makes the reader raise
        raise LedgerError(f"cannot read ledger: {_one_line(err)}", file=str(path)) from None


def _check(pf: pq.ParquetFile, path: str | Path, columns: list[str]) -> None:
    schema = pf.schema_arrow
    for column in columns:
        if column not in schema.names:
            raise LedgerError("column missing: is this a gpuledger ledger (docs/ledger.md)?",
                              file=str(path), field=column)
        kind = schema.field(column).type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if column == "minute":
            ok = pa.types.is_timestamp(kind) or pa.types.is_integer(kind)
            want = "a timestamp"
        elif column in STRINGS:
            ok = pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)
            want = "strings"
        else:
            ok = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind)
            want = "numbers"
        if not ok:
            raise LedgerError(f"expected {want}, got a column of {kind}", file=str(path), field=column)


def _read(path: str | Path, columns: list[str], start: float | None = None, end: float | None = None) -> pa.Table:
    """The columns of one file, minute as int64 seconds, rows with start <= minute < end."""
    pf = _open(path)
    _check(pf, path, columns)
    strings = [c for c in columns if c in STRINGS]
    filters = None
    if start is not None:
        ts = pa.timestamp("s", tz="UTC")
        filters = [("minute", ">=", pa.scalar(int(start), ts)), ("minute", "<", pa.scalar(int(end), ts))]
    try:
        table = pq.read_table(path, columns=columns, read_dictionary=strings, filters=filters)
        minute = table.column("minute").cast(pa.timestamp("s", tz="UTC")).cast(pa.int64())
    except Exception as err:  # noqa: BLE001 - a corrupt data page
        raise LedgerError(f"cannot read ledger: {_one_line(err)}", file=str(path)) from None
    table = table.set_column(table.schema.get_field_index("minute"), "minute", minute)
    return table.replace_schema_metadata(pf.schema_arrow.metadata)


def ensure_categorical(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with every string column categorical, as :func:`load_history` returns them.

    Lets callers (and tests) hand in a plain DataFrame built from dicts.
    """
    todo = [c for c in STRINGS if c in rows and not isinstance(rows[c].dtype, pd.CategoricalDtype)]
    if not todo:
        return rows
    rows = rows.copy()
    for c in todo:
        rows[c] = rows[c].astype("category")
    return rows


# --------------------------------------------------------------------------- rows from elsewhere


def history_from_columns(columns, start: float, end: float, currency: str) -> History:
    """Ledger rows given as columns (``minute`` in Unix seconds, the ledger's columns; others ignored) as a History.

    For history that does not come from ledger files: ``gpuledger report --prometheus``
    builds its rows from range queries (``collectors.promhistory.spread_minutes``).
    Strings become categoricals and numbers float64, as :func:`load_history` returns them;
    a string column may also come as integer ``codes`` (-1: missing) and ``categories``.
    """
    minute = np.asarray(columns["minute"], dtype=np.int64)
    data: dict[str, object] = {"minute": minute}
    for name in COLUMNS[1:]:
        column = columns[name] if name in columns or name not in OPTIONAL else np.full(len(minute), np.nan)
        if name in STRINGS and hasattr(column, "codes") and hasattr(column, "categories"):
            data[name] = pd.Categorical.from_codes(np.asarray(column.codes), categories=pd.Index(
                list(column.categories), dtype=object))
        elif name in STRINGS:
            data[name] = pd.Categorical(np.asarray(column, dtype=object))
        else:
            data[name] = np.asarray(column, dtype=np.float64)
    first = float(minute.min()) if len(minute) else float(start)
    return History(pd.DataFrame(data), float(start), float(end), currency, first)
