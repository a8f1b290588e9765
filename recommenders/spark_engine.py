"""A gathered ledger dataset read with Apache Spark: the same view ``ledger``, the same SQL.

:class:`SparkEngine` offers what :class:`recommenders.dataset.Engine` (DuckDB) offers
(``window``, ``query``, ``sql``, ``materialize``, ``check``, ``bounds``, ``close``, ``files``, ``root``,
``parts``, ``present``, ``currency``), so :func:`recommenders.dataset.dataset_end` and
:func:`recommenders.report.report_from` and the SQL of :mod:`recommenders.queries` run
on either. The view has the same meaning: the Parquet files of the ``date=`` partitions
the window touches (listed by :func:`recommenders.dataset.partitions`, so a file of
another date is never opened), read by column name with the ledger's declared types
(a column a file lacks reads as null, like DuckDB's ``union_by_name``), rows with
``start <= minute < end`` (pushed down to the Parquet row groups), ``minute`` as BIGINT
Unix seconds.

The session runs on ``master``: ``local[N]`` in one process, or a cluster URL
(``spark://host:7077``, ``yarn``, ``k8s://...``) whose executors must read the dataset
at the same path (a shared file system). Spark needs Java; its absence, a missing
pyspark, a damaged file or a missing column raise :class:`LedgerError`, one line, like
the DuckDB engine's.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pyarrow as pa

from recommenders import ledger_schema as schema
from recommenders import queries
from collectors.objectstore import Location, open_location
from recommenders.dataset import DAY, _date, _day, _footer, check_values, partitions
from recommenders.history import OPTIONAL, LedgerError, _one_line
from recommenders.sqlframe import to_frame, view_columns

MASTER = "local[2]"
APP_NAME = "gpuledger-report"
#: Spark's type of each ledger column kind (ledger_schema.Column.kind)
SPARK_TYPES = {"minute": "TIMESTAMP", "string": "STRING", "float": "DOUBLE", "int": "BIGINT"}
_GLOB = "\\{}[]*?"  # characters Hadoop reads as a glob in a path
_MAX_MESSAGE = 600


def settings(master: str) -> dict[str, str]:
    """The session's configuration: UTC, no UI or progress bar, plain Arrow strings; on a
    local master few shuffle partitions (the default 200 is for clusters)."""
    conf = {
        "spark.app.name": APP_NAME,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.useLargeVarTypes": "false",
    }
    if master.startswith("local"):
        conf["spark.sql.shuffle.partitions"] = "4"
    return conf


def _java() -> str | None:
    """The ``java`` Spark will run: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home:
        path = Path(home) / "bin" / "java"
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which("java")


def _unavailable(message: str, field: str = "--engine") -> LedgerError:
    return LedgerError(message, file="", field=field)


def start_session(master: str, log_dir: str | Path):
    """A new SparkSession on ``master``; the JVM's console output goes to ``log_dir/spark.log``
    (its last line is quoted when the JVM does not start). LedgerError when pyspark or Java
    is missing or Spark does not start."""
    try:
        from pyspark import SparkConf, SparkContext
        from pyspark.java_gateway import launch_gateway
        from pyspark.sql import SparkSession
    except ImportError:
        raise _unavailable("the Spark engine needs pyspark: pip install 'gpuledger[spark]'") from None
    if _java() is None:
        where = "JAVA_HOME/bin/java" if os.environ.get("JAVA_HOME") else "`java` on PATH (nor JAVA_HOME)"
        raise _unavailable(f"the Spark engine needs Java 17 or newer, and there is no {where}: install one "
                           "(Debian: apt-get install default-jre-headless)")
    conf = SparkConf().setMaster(master).setAll(settings(master).items())
    log_path = Path(log_dir) / "spark.log"
    try:
        with open(log_path, "ab") as log, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # pyspark's notes on newer pandas
            gateway = launch_gateway(conf, popen_kwargs={"stdout": log, "stderr": log})
            context = SparkContext(conf=conf, gateway=gateway)
        context.setLogLevel("ERROR")
        return SparkSession(context)
    except Exception as err:  # noqa: BLE001 - a JVM that exits, a master URL Spark refuses
        raise _unavailable(f"cannot start Spark on {master}: {_spark_message(err)}{_last_line(log_path)}",
                           field="--spark-master") from None


def _last_line(path: Path) -> str:
    """`` (JVM: <its last line of output>)``, or nothing."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f" (JVM: {_one_line(Exception(lines[-1]))})" if lines else ""


_WRAPPERS = ("Exception thrown in awaitResult", "Job aborted due to stage failure")


def _spark_message(err: Exception) -> str:
    """A Spark error in one line: the messages of the Java exception's causes (what failed,
    then why: ``[FAILED_READ_FILE.NO_HINT] ... file:///.../x.parquet: corrupted file: ...``),
    without the stack traces, the wrappers around them and the SQL states."""
    said: list[str] = []
    java = getattr(err, "java_exception", None)  # py4j's Py4JJavaError: the JVM's exception
    while java is not None and len(said) < 8:
        text = java.getMessage()
        if text and not text.startswith(_WRAPPERS):
            said.append(text)
        java = java.getCause()
    if not said:  # pyspark's own errors (an AnalysisException, a gateway that exited)
        said = [str(err).split("JVM stacktrace:", 1)[0]]
    text = ": ".join(re.sub(r"\s*SQLSTATE: \w+\s*$", "", " ".join(t.split())).rstrip(". ") for t in said)
    return text[:_MAX_MESSAGE] or type(err).__name__


def _path(file: Path) -> str:
    """A local file as a URL Spark reads literally (not as a glob, not on a cluster's default file system)."""
    uri = "file://" + file.resolve().as_posix()  # Hadoop's Path takes it unencoded (not Path.as_uri's %3D)
    return "".join("\\" + ch if ch in _GLOB else ch for ch in uri)


@dataclass(frozen=True)
class Plan:
    """What the view ``ledger`` of a window reads: the files, the columns present in them
    (in the ledger's order), whether the files differ in columns, the currency."""

    files: list[str]
    present: list[str]
    by_name: bool
    currency: str


def plan_window(where: Location, parts: dict[str, list[str]], start: float, end: float) -> Plan:
    """The window's files (the partitions whose date overlaps ``[start, end)``), and the
    columns and currency from the footers of its first and last file, checked as the DuckDB
    engine checks them: LedgerError for no partition, a currency that changes, a column missing."""
    lo, hi = int(start // DAY), int((end - 1) // DAY)
    files = [f for date, fs in parts.items() if lo <= _day(date) <= hi for f in fs]
    if not files:
        raise LedgerError(f"no partition in the window {_date(lo)} to {_date(hi)}", file=where.given)
    (names_a, cur_a), (names_b, cur_b) = _footer(where, files[0]), _footer(where, files[-1])
    if cur_a and cur_b and cur_a != cur_b:
        raise LedgerError(f"currency {cur_b} differs from {cur_a} in an earlier file of the window", file=str(files[-1]),
                          field="gpuledger.currency")
    found = set(names_a) | set(names_b)
    for name in schema.NAMES:
        if name not in found and name not in OPTIONAL:
            raise LedgerError("column missing: is this a gpuledger ledger (docs/ledger.md)?", file=str(files[0]),
                              field=name)
    present = [c for c in schema.NAMES if c in found]
    return Plan(files, present, set(names_a) != set(names_b), cur_a or cur_b or "USD")


class SparkEngine:
    """The view ``ledger`` of a dataset's window in a Spark session.

    With ``session`` given (a test's, or an application's) the engine works in a new
    session of it (its own temporary views and settings, the same SparkContext) and leaves
    it running on :meth:`close`; otherwise it starts one on ``master`` and stops it."""

    def __init__(self, root: str | Path, master: str = MASTER, session=None, log_dir: str | Path | None = None):
        try:
            self.where = open_location(str(root))
        except ValueError as err:
            raise LedgerError(str(err), file=str(root)) from None
        self.root = str(root)
        self.parts = partitions(self.where)
        self._cached: set[str] = set()
        self.present: list[str] = []
        self.currency = "USD"
        self._own = session is None
        self._tmp = None
        if session is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="gpuledger-spark-")
            try:
                self.spark = start_session(master, log_dir or self._tmp.name)
            except BaseException:
                self._tmp.cleanup()
                raise
        else:
            self.spark = session.newSession()
            for key, value in settings(session.sparkContext.master).items():
                if key.startswith("spark.sql."):  # the settings a session has of its own
                    self.spark.conf.set(key, value)

    def close(self) -> None:
        try:
            if self._own:
                self.spark.stop()
            else:
                for name in self._cached:
                    self.spark.catalog.uncacheTable(name)
                self.spark.catalog.dropTempView("ledger")
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    def files(self, start: float, end: float) -> list[str]:
        """The files of the partitions whose date overlaps ``[start, end)``."""
        lo, hi = int(start // DAY), int((end - 1) // DAY)
        return [f for date, fs in self.parts.items() if lo <= _day(date) <= hi for f in fs]

    def window(self, start: float, end: float, allow_empty: bool = False) -> list[str]:
        """Define the view ``ledger`` as the rows with ``start <= minute < end``; the columns it has
        (none, with ``allow_empty``, where no partition overlaps the window)."""
        from pyspark.sql import functions as F

        if allow_empty and not self.files(start, end):
            self.spark.sql(f"CREATE OR REPLACE TEMPORARY VIEW ledger AS SELECT "
                           f"{', '.join(view_columns((), string_type='STRING'))} FROM (SELECT 1) t WHERE false")
            return []
        plan = plan_window(self.where, self.parts, start, end)
        ddl = ", ".join(f"{c} {SPARK_TYPES[schema.BY_NAME[c].kind]}" for c in plan.present)
        try:
            # an explicit schema: no footer is read to infer one, and every file is read by
            # column name (a column a file lacks is null), whether or not the files differ
            frame = self.spark.read.schema(ddl).parquet(*(_path(Path(f)) for f in plan.files))
            minute = F.col("minute")
            frame = frame.where((minute >= F.timestamp_seconds(F.lit(int(start))))
                                & (minute < F.timestamp_seconds(F.lit(int(end)))))
            frame = frame.select(*(F.unix_seconds(minute).alias("minute") if c == "minute" else F.col(c)
                                   for c in plan.present))
            frame.createOrReplaceTempView("ledger_files")
            self.spark.sql(f"CREATE OR REPLACE TEMPORARY VIEW ledger AS SELECT "
                           f"{', '.join(view_columns(plan.present, string_type='STRING'))} FROM ledger_files")
        except Exception as err:  # noqa: BLE001 - Spark's analysis errors, a path it cannot list
            raise self._error(err) from None
        self.present, self.currency = plan.present, plan.currency
        return self.present

    def _error(self, err: Exception) -> LedgerError:
        return LedgerError(f"cannot read the dataset: {_spark_message(err)}", file=self.root)

    def query(self, text: str) -> pa.Table:
        """A query of :mod:`recommenders.queries` over the current window, as an Arrow table."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                table = self.spark.sql(text).toArrow()
        except Exception as err:  # noqa: BLE001 - a damaged file, a column of the wrong type
            raise self._error(err) from None
        return _plain(table)

    def sql(self, text: str, categorical: Sequence[str] = ()):
        """A query over the current window, its (small) result as a DataFrame; the columns
        named in ``categorical`` as categoricals (:func:`recommenders.sqlframe.to_frame`)."""
        return to_frame(self.query(text), categorical)

    def materialize(self, name: str, text: str) -> None:
        """Keep a query's result as the cached temporary view ``name`` for the queries that follow."""
        try:
            if name in self._cached:
                self.spark.catalog.uncacheTable(name)
            self.spark.sql(f"CREATE OR REPLACE TEMPORARY VIEW {name} AS {text}")
            self.spark.catalog.cacheTable(name)
            self._cached.add(name)
        except Exception as err:  # noqa: BLE001 - as query()
            raise self._error(err) from None

    def forget(self, name: str) -> None:
        """Uncache and drop a view kept by :meth:`materialize` (none of that name is fine)."""
        try:
            if name in self._cached:
                self.spark.catalog.uncacheTable(name)
                self._cached.discard(name)
            self.spark.catalog.dropTempView(name)
        except Exception as err:  # noqa: BLE001 - as query()
            raise self._error(err) from None

    def check(self, start: float, end: float) -> None:
        """:func:`recommenders.dataset.check_values` of ``[start, end)``."""
        check_values(self, start, end)

    def bounds(self, start: float, end: float) -> tuple[float | None, float | None]:
        self.window(start, end)
        first, last, _ = self.query(queries.bounds()).to_pylist()[0].values()
        return first, last


def _plain(table: pa.Table) -> pa.Table:
    """Large strings as plain ones, without Spark's field metadata (what DuckDB's engine hands over)."""
    fields = [pa.field(f.name, pa.string() if pa.types.is_large_string(f.type) else f.type, f.nullable)
              for f in table.schema]
    return table.cast(pa.schema(fields))
