"""Ledger history as a DataFrame: the one place the recommenders read ``ledger.parquet``.

Reading is the only I/O here, kept beside the analysis because what to read (which
columns, from which minute) is decided by the analysis. Strings are read as categoricals
(dictionary-encoded in Parquet already), so a week of a thousand GPUs at one-minute
resolution (ten million rows) fits in a few hundred megabytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

STRINGS = ("node", "device_uuid", "parent_uuid", "mig_profile", "gpu_model", "pod_uid", "namespace", "team",
           "workload_class", "workload_kind", "workload_name", "instance_type", "region",
           "capacity_type")
NUMBERS = ("gpu_memory_total_bytes", "gpu_hourly_price", "allocated_gpu_seconds",
           "unallocated_gpu_seconds", "used_gpu_seconds", "util_unknown_gpu_seconds",
           "active_gpu_seconds", "memory_used_max_bytes", "cost", "idle_cost", "unallocated_cost")
COLUMNS = ("minute", *STRINGS, *NUMBERS)


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


def ledger_end(paths: Sequence[str | Path]) -> tuple[float, float]:
    """(first minute, end) over the files, where end is one minute after the last minute.

    Read from the Parquet row-group statistics when present (no data pages are read).
    """
    lo, hi = np.inf, -np.inf
    for path in paths:
        pf = _open(path)
        _check(pf, path, ["minute"])
        index = pf.schema_arrow.get_field_index("minute")
        stats = [pf.metadata.row_group(i).column(index).statistics for i in range(pf.metadata.num_row_groups)]
        if stats and all(st is not None and st.has_min_max for st in stats):
            lo = min(lo, min(_seconds(st.min) for st in stats))
            hi = max(hi, max(_seconds(st.max) for st in stats))
            continue
        table = _read(path, ["minute"])
        if table.num_rows:
            mm = pc.min_max(table.column("minute"))
            lo, hi = min(lo, mm["min"].as_py()), max(hi, mm["max"].as_py())
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
    for path in paths:
        pf = _open(path)
        _check(pf, path, list(COLUMNS))
        cur = (pf.schema_arrow.metadata or {}).get(b"gpuledger.currency", b"").decode() or None
        if currency and cur and cur != currency:
            raise LedgerError(f"currency {cur} differs from {currency} in an earlier ledger file",
                              file=str(path), field="gpuledger.currency")
        currency = currency or cur
        frames.append(_read_frame(path, start, end))
    df = frames[0] if len(frames) == 1 else _concat(frames)
    pa.default_memory_pool().release_unused()  # give Arrow's freed read buffers back to the system
    return History(df, float(start), float(end), currency or "USD", first)


def _read_frame(path: str | Path, start: float, end: float) -> pd.DataFrame:
    """The ledger columns of one file as a DataFrame, converted one column at a time.

    Converting column by column keeps the peak at the DataFrame plus one Arrow column,
    instead of the whole Arrow table beside the whole DataFrame.
    """
    minute = _read(path, ["minute"]).column("minute").to_numpy()
    keep = (minute >= int(start)) & (minute < int(end))
    everything = bool(keep.all())
    data: dict[str, object] = {"minute": minute if everything else minute[keep]}
    for name in COLUMNS[1:]:
        column = pq.read_table(path, columns=[name], read_dictionary=[name] if name in STRINGS else None).column(name)
        if name in STRINGS:
            series = column.to_pandas()
            if not isinstance(series.dtype, pd.CategoricalDtype):
                series = series.astype("category")
        else:
            series = pd.Series(column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False))
        del column
        data[name] = series if everything else series[keep].reset_index(drop=True)
    return pd.DataFrame(data, copy=False)


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


def _open(path: str | Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except FileNotFoundError:
        raise LedgerError("cannot read ledger: no such file", file=str(path)) from None
    except (OSError, pa.ArrowInvalid) as err:
        raise LedgerError(f"cannot read ledger: {err}", file=str(path)) from None


def _check(pf: pq.ParquetFile, path: str | Path, columns: list[str]) -> None:
    names = set(pf.schema_arrow.names)
    for column in columns:
        if column not in names:
            raise LedgerError("column missing: is this a gpuledger ledger (docs/ledger.md)?",
                              file=str(path), field=column)


def _read(path: str | Path, columns: list[str], start: float | None = None, end: float | None = None) -> pa.Table:
    """The columns of one file, minute as int64 seconds, rows with start <= minute < end."""
    pf = _open(path)
    _check(pf, path, columns)
    strings = [c for c in columns if c in STRINGS]
    filters = None
    if start is not None:
        ts = pa.timestamp("s", tz="UTC")
        filters = [("minute", ">=", pa.scalar(int(start), ts)), ("minute", "<", pa.scalar(int(end), ts))]
    table = pq.read_table(path, columns=columns, read_dictionary=strings, filters=filters)
    minute = table.column("minute").cast(pa.timestamp("s", tz="UTC")).cast(pa.int64())
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
