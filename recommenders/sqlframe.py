"""The view ``ledger`` that the report's SQL reads, over rows in memory or over Parquet files.

Every engine shows the queries of :mod:`recommenders.queries` the same ``ledger``: each
column of the ledger contract (:mod:`recommenders.ledger_schema`) under its name,
``minute`` as Unix seconds (BIGINT), the readings the report holds as float32 in memory
(:data:`recommenders.history.READINGS`) as FLOAT, and a column the source lacks (an
older ledger, a hand-built frame) as NULL. So a figure does not depend on where the
rows came from: a ledger file loaded into pandas, a gathered dataset, a Spark table.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence

import pandas as pd
import pyarrow as pa

from recommenders import ledger_schema as schema
from recommenders.engines import MEMORY_LIMIT  # DuckDB's own buffers beside the rows in memory
from recommenders.history import READINGS

SQL_TYPES = {"string": "VARCHAR", "float": "DOUBLE", "int": "BIGINT", "minute": "BIGINT"}


def view_columns(present: Iterable[str], minute: str = "minute", string_type: str = "VARCHAR") -> list[str]:
    """The select list of the view ``ledger``: every contract column, from ``present`` where
    the source has it (``minute`` as the expression given), else NULL of its type (strings
    as ``string_type``: Spark's is STRING)."""
    present = set(present)
    types = dict(SQL_TYPES, string=string_type)
    out = []
    for c in schema.COLUMNS:
        if c.name == "minute":
            out.append(f"{minute} AS minute")
        elif c.name not in present:
            out.append(f"CAST(NULL AS {'FLOAT' if c.name in READINGS else types[c.kind]}) AS {c.name}")
        elif c.name in READINGS:
            out.append(f"CAST({c.name} AS FLOAT) AS {c.name}")
        else:
            out.append(c.name)
    return out


def to_frame(table: pa.Table, categorical: Sequence[str] = ()) -> pd.DataFrame:
    """An engine's Arrow result as a DataFrame, the string columns named in ``categorical``
    as pandas categoricals (categories in name order, as ``astype("category")`` makes
    them), encoded in Arrow so no Python string per row is ever made: a fleet's hour
    rows are millions of rows of a few thousand names."""
    import pyarrow.compute as pc

    for name in categorical:
        i = table.schema.get_field_index(name)
        kind = table.schema.field(i).type if i >= 0 else None
        if kind is not None and (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            table = table.set_column(i, name, pc.dictionary_encode(table.column(i)))
    out = table.to_pandas()
    for name in categorical:
        if name in out and isinstance(out[name].dtype, pd.CategoricalDtype):
            out[name] = out[name].cat.reorder_categories(sorted(out[name].cat.categories))
        elif name in out:
            out[name] = out[name].astype("category")
    return out


class FrameLedger:
    """Ledger rows in memory (a DataFrame, ``minute`` in Unix seconds) as the view ``ledger``,
    read in place by embedded DuckDB; :meth:`window` narrows the view to a time range, as
    a dataset engine's does."""

    def __init__(self, rows: pd.DataFrame, memory_limit: str = MEMORY_LIMIT) -> None:
        import duckdb

        # the tables the evidence keeps are copies beside the rows: under the limit they spill
        # to a temporary directory instead of doubling the report's memory
        self._tmp = tempfile.TemporaryDirectory(prefix="gpuledger-duckdb-")
        self.db = duckdb.connect(config={"preserve_insertion_order": False, "memory_limit": memory_limit,
                                         "temp_directory": self._tmp.name})
        self.db.register("ledger_frame", rows)
        self._columns = ", ".join(view_columns(rows.columns, "CAST(minute AS BIGINT)"))
        self.db.execute(f"CREATE VIEW ledger_all AS SELECT {self._columns} FROM ledger_frame")
        self.db.execute("CREATE VIEW ledger AS SELECT * FROM ledger_all")

    def window(self, start: float, end: float, allow_empty: bool = True) -> None:
        """The view ``ledger`` is the rows with ``start <= minute < end`` from now on (none is fine)."""
        self.db.execute(f"CREATE OR REPLACE VIEW ledger AS SELECT * FROM ledger_all "
                        f"WHERE minute >= {int(start)} AND minute < {int(end)}")

    def sql(self, text: str, categorical: Sequence[str] = ()) -> pd.DataFrame:
        """A query's (small) result; the columns named in ``categorical`` as categoricals (:func:`to_frame`)."""
        if categorical:
            return to_frame(self.db.sql(text).to_arrow_table(), categorical)
        return self.db.sql(text).df()

    def materialize(self, name: str, text: str) -> None:
        """Keep a query's result as the table ``name`` for the queries that follow."""
        self.db.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {text}")

    def forget(self, name: str) -> None:
        """Drop a table kept by :meth:`materialize` (none of that name is fine)."""
        self.db.execute(f"DROP TABLE IF EXISTS {name}")

    def close(self) -> None:
        try:
            self.db.close()
        finally:
            self._tmp.cleanup()

    def __enter__(self) -> "FrameLedger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def frame_sql(rows: pd.DataFrame) -> Iterator[Callable[[str], pd.DataFrame]]:
    """A function running a query over ``rows`` as the view ``ledger`` (:class:`FrameLedger`)."""
    with FrameLedger(rows) as ledger:
        yield ledger.sql
