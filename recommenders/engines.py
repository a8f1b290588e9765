"""The history engines a gathered dataset can be read with, by name: ``duckdb`` (embedded,
the default) and ``spark`` (a local or cluster Spark session).

Both define the same view ``ledger`` over the window's partitions and run the same SQL
(:mod:`recommenders.queries`), so the report is the same whichever reads it.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ENGINES = ("duckdb", "spark")
DEFAULT = "duckdb"
#: DuckDB's own memory; beyond it, sorts, joins, groupings and the percentiles spill to a
#: temporary directory. With Python, pandas and Arrow loaded beside it, a week of 1,024 GPUs
#: (12.6M rows) peaks under 0.9 GB at this limit, about 6% slower than at 1GB
#: (benchmarks/README.md, report_dataset_bench.py).
MEMORY_LIMIT = "600MB"


@contextmanager
def open_engine(kind: str, root: str | Path, master: str | None = None, s3_endpoint: str | None = None,
                memory_limit: str = MEMORY_LIMIT) -> Iterator:
    """An engine over the dataset at ``root``, closed afterwards: DuckDB's
    (:func:`recommenders.dataset.engine`) or Spark's (:class:`recommenders.spark_engine.SparkEngine`
    on ``master``, default ``local[2]``). ``master`` applies to Spark only.

    This module imports nothing heavy (the CLI reads :data:`ENGINES` for its flag)."""
    from recommenders.history import LedgerError

    if kind == "duckdb":
        if master is not None:
            raise LedgerError("applies to --engine spark only", file="", field="--spark-master")
        from recommenders.dataset import engine

        with engine(root, memory_limit=memory_limit, s3_endpoint=s3_endpoint) as e:
            yield e
    elif kind == "spark":
        from recommenders.spark_engine import MASTER, SparkEngine

        if s3_endpoint is not None or "://" in str(root):
            raise LedgerError("the Spark engine reads a dataset on a file system its executors share; an object "
                              "store is read with --engine duckdb", file=str(root), field="--engine")
        e = SparkEngine(root, master or MASTER)
        try:
            yield e
        finally:
            e.close()
    else:
        raise LedgerError(f"expected one of {', '.join(ENGINES)}, got {kind!r}", file="", field="--engine")
