"""A gathered ledger dataset, read with embedded DuckDB: only the window's partitions, only the columns asked for.

The gatherer writes the fleet's ledger in hive layout, in a local directory or an object
store (``s3://bucket/prefix``: :mod:`collectors.objectstore`)::

    <root>/date=YYYY-MM-DD/<any name>.parquet     (columns: docs/ledger.md)

The engine here lists the ``date=`` partitions (nothing else is read to find them),
keeps the files of the dates the window touches, and defines the view ``ledger`` that
the SQL of :mod:`recommenders.queries` reads: those files, rows with ``start <= minute <
end`` (pushed down to the Parquet row groups), ``minute`` as Unix seconds. A file of a
date outside the window is never opened, so a damaged or half-written one there does
not matter. DuckDB runs out of core: under ``memory_limit`` it spills to
``temp_directory``.

The rows themselves never come back: the report's queries return small results, and
:func:`check_values` makes the checks a ledger file's rows get when loaded (bounds, parts
within wholes) where the rows lie.
"""

from __future__ import annotations

import re
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd
import pyarrow as pa

from collectors.objectstore import Location, is_url, open_location
from recommenders import ledger_schema as schema
from recommenders import queries
from recommenders.history import OPTIONAL, LedgerError, _one_line
from recommenders.engines import MEMORY_LIMIT
from recommenders.sqlframe import to_frame, view_columns

PARTITION = re.compile(r"date=(\d{4}-\d\d-\d\d)")
DAY = 86400


def is_dataset(path: str | Path) -> bool:
    """Whether ``path`` is a gathered dataset: an object-store URL (only a dataset lives
    there), or a directory holding ``date=YYYY-MM-DD`` partitions."""
    if is_url(str(path)):
        return True
    path = Path(path)
    return path.is_dir() and any(p.is_dir() and PARTITION.fullmatch(p.name) for p in path.iterdir())


def _listing(where: Location, path: str) -> list:
    """The entries directly under ``path`` (pyarrow FileInfo), by name; LedgerError when it cannot be listed."""
    import pyarrow.fs as pafs

    try:
        infos = where.fs.get_file_info(pafs.FileSelector(path, allow_not_found=False))
    except Exception as err:  # noqa: BLE001 - OSError, ArrowInvalid, FileNotFoundError from any file system
        raise LedgerError(f"cannot read the dataset: {_one_line(err)}", file=where.url(path)) from None
    return sorted(infos, key=lambda i: i.path)


def partitions(where: Location) -> dict[str, list[str]]:
    """Each partition's date (``YYYY-MM-DD``) and its Parquet files (paths in ``where.fs``), by
    date; LedgerError when there are none. Only the root and the partitions are listed."""
    import pyarrow.fs as pafs

    out: dict[str, list[str]] = {}
    for child in _listing(where, where.root):
        match = PARTITION.fullmatch(child.base_name)
        if not (match and child.type == pafs.FileType.Directory):
            continue
        try:
            datetime.strptime(match.group(1), "%Y-%m-%d")
        except ValueError:
            raise LedgerError("expected partitions named date=YYYY-MM-DD with a real date",
                              file=where.url(child.path)) from None
        files = [f.path for f in _listing(where, child.path)
                 if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")]
        if files:
            out[match.group(1)] = files
    if not out:
        raise LedgerError("no ledger files in this dataset: expected <root>/date=YYYY-MM-DD/*.parquet",
                          file=where.given)
    return out


def _day(date: str) -> int:
    return int(datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()) // DAY


def _date(day: int) -> str:
    return datetime.fromtimestamp(day * DAY, timezone.utc).strftime("%Y-%m-%d")


class Engine:
    """One DuckDB connection over a dataset's window (the view ``ledger``)."""

    def __init__(self, root: str | Path, memory_limit: str = MEMORY_LIMIT, temp_directory: str | None = None,
                 s3_endpoint: str | None = None):
        import duckdb

        try:
            self.where = open_location(str(root), s3_endpoint)
        except ValueError as err:
            raise LedgerError(str(err), file=str(root)) from None
        self.root = str(root)
        self.parts = partitions(self.where)
        config = {"memory_limit": memory_limit, "preserve_insertion_order": False}
        if temp_directory:
            config["temp_directory"] = temp_directory
        self.db = duckdb.connect(config=config)
        self._layout: dict[str, str] = {}  # a local file's columns and types, once read (_same_columns)
        # DuckDB's errors, and the reader's: a damaged file or one of another schema surfaces
        # as OSError or an Arrow error from the batches DuckDB hands over
        self._failures = (duckdb.Error, OSError, pa.ArrowException)

    def close(self) -> None:
        self.db.close()

    def files(self, start: float, end: float) -> list[str]:
        """The files of the partitions whose date overlaps ``[start, end)``."""
        lo, hi = int(start // DAY), int((end - 1) // DAY)
        return [f for date, fs in self.parts.items() if lo <= _day(date) <= hi for f in fs]

    def window(self, start: float, end: float, allow_empty: bool = False) -> list[str]:
        """Define the view ``ledger`` as the rows with ``start <= minute < end``; the columns it has.

        The columns and the currency are read from the footers of the window's first and
        last file (not every file's: a week of a fleet is tens of thousands of node-hours);
        every file is read by column name, a column it lacks as null."""
        files = self.files(start, end)
        if not files:
            if not allow_empty:
                first, last = _date(int(start // DAY)), _date(int((end - 1) // DAY))
                raise LedgerError(f"no partition in the window {first} to {last}", file=str(self.root))
            self._sql(f"CREATE OR REPLACE VIEW ledger AS SELECT {', '.join(view_columns(()))} FROM (SELECT 1) WHERE false")
            return []
        (names_a, cur_a), (names_b, cur_b) = _footer(self.where, files[0]), _footer(self.where, files[-1])
        if cur_a and cur_b and cur_a != cur_b:
            raise LedgerError(f"currency {cur_b} differs from {cur_a} in an earlier file of the window",
                              file=self.where.url(files[-1]), field="gpuledger.currency")
        present = set(names_a) | set(names_b)
        for name in schema.NAMES:
            if name not in present and name not in OPTIONAL:
                raise LedgerError("column missing: is this a gpuledger ledger (docs/ledger.md)?",
                                  file=self.where.url(files[0]), field=name)
        source = self._source(files, cur_a or cur_b or "USD")
        columns = view_columns(present, "epoch(minute)::BIGINT")
        self._sql(f"CREATE OR REPLACE VIEW ledger AS SELECT {', '.join(columns)} FROM {source} "
                  f"WHERE minute >= to_timestamp({int(start)}) AND minute < to_timestamp({int(end)})")
        self.present = [c for c in schema.NAMES if c in present]
        self.currency = cur_a or cur_b or "USD"
        return self.present

    def _source(self, files: list[str], currency: str) -> str:
        """The FROM clause of the window's files, read by column name: files of two ledger
        versions (agents upgraded one node at a time) mix anywhere in a window, and a
        column an older file lacks is null there.

        Local files are read by DuckDB's own Parquet reader; files in an object store
        through a pyarrow dataset on the store's file system, with the ledger's schema
        (:func:`recommenders.ledger_schema.arrow_schema`), which DuckDB scans with the
        columns and the minute filter pushed down (DuckDB's own S3 reader is an extension
        downloaded at run time, which a cluster without egress cannot fetch)."""
        if self.where.local:
            by_name = "false" if self._same_columns(files) else "true"
            return f"read_parquet([{_listed(files)}], union_by_name = {by_name}, hive_partitioning = false)"
        import pyarrow.dataset as ds

        try:
            source = ds.dataset(files, schema=schema.arrow_schema(currency), filesystem=self.where.fs, format="parquet")
        except Exception as err:  # noqa: BLE001 - a file gone or unreadable in the store
            raise LedgerError(f"cannot read the dataset: {_one_line(err)}", file=self.where.given) from None
        self.db.register("ledger_files", source)
        return "ledger_files"

    def _same_columns(self, files: list[str]) -> bool:
        """Whether every file has the same columns of the same types, read from the footers once
        per report.

        Then the view reads them as the first file says; otherwise by column name
        (``union_by_name``), which reads every footer again each time a query binds the view
        (several times a report) and holds them while it runs: about 54 KB a file, 0.6 GB
        for the 11,008 files of a 100M-row week, where the plain read holds one."""
        todo = [f for f in files if f not in self._layout]
        if todo:
            rows = self._sql(f"SELECT file_name, string_agg(name || ' ' || type, ',' ORDER BY name) "
                             f"FROM parquet_schema([{_listed(todo)}]) GROUP BY file_name").fetchall()
            self._layout.update(rows)
        # a file the footers did not name (a path written another way) counts as different
        return len({self._layout.get(f, f) for f in files}) <= 1

    def _sql(self, text: str):
        try:
            return self.db.execute(text)
        except self._failures as err:  # a damaged file, a column of the wrong type
            raise LedgerError(f"cannot read the dataset: {_one_line(err)}", file=str(self.root)) from None

    def materialize(self, name: str, text: str) -> None:
        """Keep a query's result as the table ``name`` for the queries that follow (spilled to
        the temporary directory beyond ``memory_limit``)."""
        self._sql(f"CREATE OR REPLACE TEMP TABLE {name} AS {text}")

    def forget(self, name: str) -> None:
        """Drop a table kept by :meth:`materialize` (none of that name is fine)."""
        self._sql(f"DROP TABLE IF EXISTS {name}")

    def sql(self, text: str, categorical: Sequence[str] = ()) -> "pd.DataFrame":
        """A query over the current window, its (small) result as a DataFrame; the columns
        named in ``categorical`` as categoricals (:func:`recommenders.sqlframe.to_frame`)."""
        return to_frame(self.query(text), categorical)

    def query(self, text: str) -> pa.Table:
        """A query of :mod:`recommenders.queries` over the current window, as an Arrow table."""
        try:
            return self.db.sql(text).to_arrow_table()
        except self._failures as err:
            raise LedgerError(f"cannot read the dataset: {_one_line(err)}", file=str(self.root)) from None

    def check(self, start: float, end: float) -> None:
        """:func:`check_values` of ``[start, end)``."""
        # DuckDB bounds a column by its Parquet statistics, which leave NaN out, and would fold
        # "x <= high" to true on a column holding NaN: the checks run without that optimizer
        self._sql("SET disabled_optimizers = 'statistics_propagation'")
        try:
            check_values(self, start, end)
        finally:
            self._sql("RESET disabled_optimizers")

    def bounds(self, start: float, end: float) -> tuple[float | None, float | None]:
        self.window(start, end)
        # fetched whole: DuckDB refuses new work on a connection while a result is open
        first, last, _ = self._sql(queries.bounds()).fetchall()[0]
        return first, last


def check_values(e, start: float, end: float) -> None:
    """LedgerError naming the column, the date, the node and the value of the first row in
    ``[start, end)`` whose values a ledger may not hold (:func:`recommenders.queries.value_checks`):
    the checks a ledger file's rows get when loaded, made where the rows lie, in one pass
    (``e``: an engine with ``window``, ``sql`` and ``where``)."""
    e.window(start, end)
    checks = queries.value_checks()
    counts = e.sql(queries.bad_rows()).iloc[0]
    for i, (column, condition, expected) in enumerate(checks):
        bad = counts[f"bad_{i}"]
        if not pd.isna(bad) and bad > 0:
            row = e.sql(queries.first_bad_row(condition, column)).iloc[0]
            value = row["value"]
            got = "null" if pd.isna(value) else f"{float(value):g}"
            when = datetime.fromtimestamp(int(row["minute"]), timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
            raise LedgerError(f"expected {expected}, got {got} (node {row['node']}, minute {when}; "
                              f"{int(bad):,} such rows)", file=e.where.url(e.where.path(f"date={when[:10]}")),
                              field=column)


def _listed(files: Sequence[str]) -> str:
    """Paths as a DuckDB list's items, each quoted."""
    return ", ".join("'" + f.replace("'", "''") + "'" for f in files)


def _footer(where: Location, path: str) -> tuple[list[str], str | None]:
    """A file's column names and currency, from its footer."""
    import pyarrow.parquet as pq

    try:
        arrow = pq.read_schema(path, filesystem=where.fs)
    except Exception as err:  # noqa: BLE001 - whatever a damaged footer makes the reader raise
        raise LedgerError(f"cannot read ledger: {_one_line(err)}", file=where.url(path)) from None
    currency = (arrow.metadata or {}).get(b"gpuledger.currency", b"").decode() or None
    return list(arrow.names), currency


@contextmanager
def engine(root: str | Path, memory_limit: str = MEMORY_LIMIT, s3_endpoint: str | None = None) -> Iterator[Engine]:
    """An :class:`Engine` with a temporary spill directory, closed afterwards."""
    with tempfile.TemporaryDirectory(prefix="gpuledger-duckdb-") as tmp:
        e = Engine(root, memory_limit, tmp, s3_endpoint)
        try:
            yield e
        finally:
            e.close()


def dataset_end(e: Engine) -> tuple[float, float]:
    """(first minute, end) of the dataset, end one minute past its last minute: read from
    the first and the last partition only."""
    dates = list(e.parts)
    day1 = _day(dates[-1])
    _, last = e.bounds(day1 * DAY, (day1 + 1) * DAY)
    if last is None:
        raise LedgerError("the last partition holds no row of its date", file=e.root)
    return first_minute(e.where, e.parts[dates[0]], _day(dates[0]) * DAY), float(last) + 60.0


def first_minute(where: Location, files: Sequence[str], midnight: float) -> float:
    """The first minute of the first partition, from its files' footers (row-group statistics;
    no data page is read). It only dates the history (``history_days``, the look-back's
    start), so a file whose footer cannot be read is passed over: the window's own files are
    read, and refused when damaged, by the queries. The partition's midnight when no footer
    says more."""
    import pyarrow.parquet as pq

    lo = None
    for path in files:
        try:
            with where.fs.open_input_file(path) as f:
                meta = pq.ParquetFile(f).metadata
            index = meta.schema.to_arrow_schema().get_field_index("minute")
            for i in range(meta.num_row_groups):
                st = meta.row_group(i).column(index).statistics
                if st is not None and st.has_min_max:
                    value = st.min
                    if hasattr(value, "timestamp"):  # a datetime: naive ones are UTC
                        value = (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
                    value = float(value)
                    lo = value if lo is None else min(lo, value)
        except Exception:  # noqa: BLE001 - outside the window, a damaged file does not matter
            continue
    return float(lo if lo is not None else midnight)
