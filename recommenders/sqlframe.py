"""The view ``ledger`` that the report's SQL reads, over rows in memory or over Parquet files.

Every engine shows the queries of :mod:`recommenders.queries` the same ``ledger``: each
column of the ledger contract (:mod:`recommenders.ledger_schema`) under its name,
``minute`` as Unix seconds (BIGINT), the readings the report holds as float32 in memory
(:data:`recommenders.history.READINGS`) as FLOAT, and a column the source lacks (an
older ledger, a hand-built frame) as NULL. So a figure does not depend on where the
rows came from: a ledger file loaded into pandas, a gathered dataset, a Spark table.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import pandas as pd

from recommenders import ledger_schema as schema
from recommenders.history import READINGS

SQL_TYPES = {"string": "VARCHAR", "float": "DOUBLE", "int": "BIGINT", "minute": "BIGINT"}


def view_columns(present: Iterable[str], minute: str = "minute") -> list[str]:
    """The select list of the view ``ledger``: every contract column, from ``present`` where
    the source has it (``minute`` as the expression given), else NULL of its type."""
    present = set(present)
    out = []
    for c in schema.COLUMNS:
        if c.name == "minute":
            out.append(f"{minute} AS minute")
        elif c.name not in present:
            out.append(f"CAST(NULL AS {'FLOAT' if c.name in READINGS else SQL_TYPES[c.kind]}) AS {c.name}")
        elif c.name in READINGS:
            out.append(f"CAST({c.name} AS FLOAT) AS {c.name}")
        else:
            out.append(c.name)
    return out


@contextmanager
def frame_sql(rows: pd.DataFrame) -> Iterator[Callable[[str], pd.DataFrame]]:
    """A function running a query over ``rows`` (a ledger DataFrame, ``minute`` in Unix
    seconds) as the view ``ledger``, with embedded DuckDB reading the frame in place."""
    import duckdb

    db = duckdb.connect(config={"preserve_insertion_order": False})
    try:
        db.register("ledger_frame", rows)
        db.execute(f"CREATE VIEW ledger AS SELECT {', '.join(view_columns(rows.columns, 'CAST(minute AS BIGINT)'))} "
                   "FROM ledger_frame")
        yield lambda text: db.sql(text).df()
    finally:
        db.close()
