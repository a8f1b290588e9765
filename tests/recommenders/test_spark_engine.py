"""The Spark engine (real Spark, local[2]) gives what the DuckDB engine gives: every query of
recommenders.queries over the same window, row for row to 1e-9, and the same report; it reads
only the window's partitions, and its errors are one line (LedgerError, exit 2).

One SparkSession for the module (a JVM takes seconds to start); each engine works in a new
session of it."""

from __future__ import annotations

import inspect
import json
import math
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recommenders import queries
from recommenders.dataset import engine as duckdb_engine
from recommenders.engines import open_engine
from recommenders.history import LedgerError
from recommenders.ledger_schema import NAMES
from tests.ledgerdataset import write_dataset, write_day_dataset
from tests.recommenders.test_report_dataset import close, report_cmd, write_ledger
from tests.recommenders.test_report_rows import T0, gpu_minutes
from tests.systemtools import missing, require_tool

DAY_MIN = 1440
DAYS = 4
# a window that starts and ends inside a day: the first and the last day's partitions are
# read in part, the day before the window not at all
START, END = T0 + 86400 + 5 * 3600 + 7 * 60, T0 + 3 * 86400 + 22 * 3600

#: arguments for the query functions that need some (the rest run with their defaults);
#: a new query function that needs arguments fails test_every_query_is_covered until it is here
ARGS = {
    "rows": (list(NAMES),),
    "scan": (list(NAMES),),
    "first_bad_row": ("allocated_gpu_seconds >= 0", "allocated_gpu_seconds"),
}
#: public functions of recommenders.queries that are not queries: parts of queries, and the checks' list
NOT_QUERIES: set[str] = {"local_seconds", "hour_of_day", "hour_of_week", "value_checks", "counted_quantiles"}
#: the tables the evidence's queries read, kept by the engine in this order (workload_evidence's)
TABLES = (("held_keys", "held_keys_table"), ("workloads", "workload_table"), ("pods", "pod_table"),
          ("devices", "device_table"), ("held_ids", "held_ids_table"), ("held", "held_table"),
          ("pod_minutes", "pod_minutes_table"), ("workload_minutes", "workload_minutes_table"))


def query_functions() -> list[str]:
    return sorted(name for name, fn in inspect.getmembers(queries, inspect.isfunction)
                  if not name.startswith("_") and fn.__module__ == queries.__name__ and name not in NOT_QUERIES)


def sql_of(name: str) -> str:
    fn = getattr(queries, name)
    args = ARGS.get(name, ())
    try:
        inspect.signature(fn).bind(*args)
    except TypeError as err:
        pytest.fail(f"queries.{name} needs arguments ({err}): give them in ARGS of {__name__}", pytrace=False)
    text = fn(*args)
    assert isinstance(text, str), f"queries.{name} returned {type(text).__name__}, not SQL: list it in NOT_QUERIES"
    return text


def dataset_rows() -> list[dict]:
    """Four days: a workload with varying utilisation, peaks, memory and unknown minutes, a
    second team on another node, a MIG slice (utilisation unknown), an idle GPU."""
    import numpy as np

    rng = np.random.default_rng(11)
    n = DAYS * DAY_MIN
    steps = range(0, n, 13)
    a = gpu_minutes(pod="a", minutes=steps, util=[float(x) for x in rng.random(len(steps)).round(4)],
                    peak=[float(x) for x in rng.random(len(steps)).round(4)], name="train",
                    unknown=[bool(x) for x in rng.random(len(steps)) < 0.1])
    for r in a:
        r["memory_used_max_bytes"] = float(rng.integers(1, 40)) * (1 << 30)
    b = gpu_minutes(pod="b", device="GPU-b", node="node-2", minutes=range(DAY_MIN // 2, n, 17), util=0.35,
                    team="team-b", name="serve", mem_gib=None, kind="StatefulSet")
    m = gpu_minutes(pod="m", device="MIG-m", parent="GPU-p", mig_profile="3g.20gb", minutes=range(0, n, 29),
                    team="team-b", name="notebook", workload_class="interactive", price=1.1)
    x = gpu_minutes(pod="x", device="GPU-x", node="node-2", minutes=range(0, n, 31), allocated=False)
    # a second pod on b's GPU some minutes (a shared device), a pod of two GPUs, servers that count requests
    shared = gpu_minutes(pod="b2", device="GPU-b", node="node-2", minutes=range(DAY_MIN // 2, n, 34), util=0.2,
                         team="team-b", name="serve", kind="StatefulSet")
    pair = [r for d in ("GPU-c0", "GPU-c1") for r in gpu_minutes(pod="c", device=d, node="node-3",
                                                                 minutes=range(0, n, 23), util=0.6, name="big")]
    for i, r in enumerate(b + shared):
        r["requests"] = float(i % 97)
    return a + b + m + x + shared + pair


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("spark")
    ledger = write_ledger(dataset_rows(), work / "ledger.parquet")
    write_day_dataset(ledger, work / "ds")
    return ledger, work / "ds"


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    """One local[2] session for the module."""
    require_tool("java", "default-jre-headless")
    try:
        import pyspark  # noqa: F401
    except ImportError:
        missing("pyspark is not installed: pip install -e '.[dev]'")
    from recommenders.spark_engine import start_session

    session = start_session("local[2]", tmp_path_factory.mktemp("spark-log"))
    yield session
    session.stop()


def spark_engine(root: Path, session):
    from recommenders.spark_engine import SparkEngine

    return SparkEngine(root, session=session)


def prepare(engine) -> None:
    """The evidence's tables, kept as workload_evidence keeps them."""
    for table, name in TABLES:
        engine.materialize(table, getattr(queries, name)())


def run_both(names: list[str], root: Path, session, start=START, end=END) -> dict[str, tuple[pa.Table, pa.Table]]:
    """Each query's result on DuckDB and on Spark, over the same window (the evidence's
    tables kept once per engine)."""
    texts = {name: sql_of(name) for name in names}
    with duckdb_engine(root) as d:
        d.window(start, end)
        prepare(d)
        want = {name: d.query(text) for name, text in texts.items()}
    s = spark_engine(root, session)
    try:
        s.window(start, end)
        prepare(s)
        got = {name: s.query(text) for name, text in texts.items()}
    finally:
        s.close()
    return {name: (want[name], got[name]) for name in names}


def both(name: str, root: Path, session, start=START, end=END) -> tuple[pa.Table, pa.Table]:
    return run_both([name], root, session, start, end)[name]


@pytest.fixture(scope="module")
def every_query(dataset, spark) -> dict[str, tuple[pa.Table, pa.Table]]:
    return run_both(query_functions(), dataset[1], spark)


def sorted_rows(table: pa.Table) -> list[tuple]:
    """Rows sorted by their non-float columns (the keys), then by their floats rounded to 9 digits."""
    floats = [pa.types.is_floating(f.type) for f in table.schema]

    def key(row):
        keys = [(v is None, v if v is not None else "") for v, f in zip(row, floats) if not f]
        rest = [(v is None, float(f"{v:.9g}") if v is not None else 0.0) for v, f in zip(row, floats) if f]
        return keys + rest

    return sorted((tuple(r.values()) for r in table.to_pylist()), key=key)


def differences(want: pa.Table, got: pa.Table) -> list[str]:
    if want.num_columns != got.num_columns:
        return [f"columns {want.column_names} != {got.column_names}"]
    out = [f"column {i}: name {a!r} != {b!r}" for i, (a, b) in enumerate(zip(want.column_names, got.column_names))
           if a.isidentifier() and a != b]  # a column the query names (not COUNT(*)'s made-up name)
    for i, (a, b) in enumerate(zip(want.schema.types, got.schema.types)):
        if a != b:
            out.append(f"column {want.column_names[i]}: type {a} != {b}")
    if want.num_rows != got.num_rows:
        return out + [f"{want.num_rows} rows != {got.num_rows}"]
    for n, (ra, rb) in enumerate(zip(sorted_rows(want), sorted_rows(got))):
        for name, a, b in zip(want.column_names, ra, rb):
            if isinstance(a, float) and isinstance(b, float):
                if not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
                    out.append(f"row {n} {name}: {a!r} != {b!r}")
            elif a != b:
                out.append(f"row {n} {name}: {a!r} != {b!r}")
        if len(out) > 20:
            break
    return out


def test_every_query_is_covered():
    """Each public function of recommenders.queries is a query this module runs on both engines."""
    names = query_functions()
    assert {"bounds", "rows", "hour_rows", "workload_sums", "held_table"} <= set(names)
    tables = {table for table, _ in TABLES}
    for name in names:
        text = sql_of(name)
        assert "ledger" in text or any(t in text for t in tables), name
    assert set(ARGS) <= set(names), set(ARGS) - set(names)


@pytest.mark.slow
@pytest.mark.parametrize("name", query_functions())
def test_query_gives_duckdbs_figures(name, every_query):
    want, got = every_query[name]
    assert want.num_rows > 0, f"queries.{name} gives no row on the test dataset: it checks nothing"
    assert differences(want, got) == []


@pytest.mark.slow
def test_the_view_is_the_windows_rows(dataset, spark):
    """minute as BIGINT Unix seconds, start <= minute < end, the ledger's columns."""
    s = spark_engine(dataset[1], spark)
    try:
        present = s.window(START, END)
        assert present == list(NAMES) and s.currency == "USD"
        first, last, count = s.query(queries.bounds()).to_pylist()[0].values()
        assert START <= first < START + 60 * 31 and END - 60 * 31 <= last < END
        assert s.query("SELECT minute FROM ledger LIMIT 1").schema.field("minute").type == pa.int64()
        assert s.files(START, END) and all("date=2025-11-25" not in str(f) for f in s.files(START, END))
        assert len(s.sql(queries.rows(["minute", "team", "cost"]))) == count
        with duckdb_engine(dataset[1]) as d:
            assert s.bounds(T0, T0 + 86400) == d.bounds(T0, T0 + 86400)
        assert s.bounds(T0, T0 + 86400)[0] == T0  # the first day, whole: every pod's minute 0
    finally:
        s.close()


def damaged_copy(ds: Path, tmp: Path, date: str, which: int) -> tuple[Path, Path]:
    """A copy of the dataset with the ``which``-th file of ``date`` overwritten by garbage."""
    copy = tmp / "ds"
    shutil.copytree(ds, copy)
    victim = sorted((copy / f"date={date}").glob("*.parquet"))[which]
    victim.write_bytes(b"PAR1 this is not a parquet file PAR1")
    return copy, victim


@pytest.mark.slow
def test_a_damaged_file_outside_the_window_is_not_read_and_inside_is_one_line(dataset, spark, tmp_path):
    copy, victim = damaged_copy(dataset[1], tmp_path, "2025-11-25", 1)  # the day before the window
    want, got = both("hour_rows", copy, spark)
    assert differences(want, got) == []
    s = spark_engine(copy, spark)
    try:
        s.window(T0, T0 + 2 * 86400)  # its footer is not the first's or last's: Spark itself meets it
        with pytest.raises(LedgerError) as err:
            s.query(queries.bad_rows())
    finally:
        s.close()
    message = err.value.message
    assert message.startswith("cannot read the dataset: ") and "\n" not in message and len(message) <= 650
    assert victim.name in message and "at org.apache" not in message, message
    assert err.value.file == str(copy)


@pytest.mark.slow
def test_a_missing_column_is_refused_naming_it(dataset, spark, tmp_path):
    ledger = pq.read_table(dataset[0])
    write_dataset_without = tmp_path / "ledger.parquet"
    pq.write_table(ledger.drop_columns(["cost"]), write_dataset_without)
    write_dataset(write_dataset_without, tmp_path / "ds")
    s = spark_engine(tmp_path / "ds", spark)
    try:
        with pytest.raises(LedgerError) as err:
            s.window(START, END)
    finally:
        s.close()
    assert err.value.field == "cost" and "column missing" in err.value.message


def test_no_java_and_no_pyspark_are_one_line_errors(tmp_path, monkeypatch):
    from recommenders.spark_engine import start_session

    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LedgerError) as err:
        start_session("local[1]", tmp_path)
    assert err.value.field == "--engine" and "needs Java 17" in err.value.message
    assert "default-jre-headless" in err.value.message
    monkeypatch.setitem(sys.modules, "pyspark", None)
    with pytest.raises(LedgerError) as err:
        start_session("local[1]", tmp_path)
    assert "needs pyspark" in err.value.message and "gpuledger[spark]" in err.value.message


def test_engine_names_and_master_are_checked(tmp_path):
    with pytest.raises(LedgerError) as err:
        with open_engine("trino", tmp_path):
            pass
    assert err.value.field == "--engine"
    with pytest.raises(LedgerError) as err:
        with open_engine("duckdb", tmp_path, "local[2]"):
            pass
    assert err.value.field == "--spark-master"


@pytest.mark.slow
def test_engine_flags_apply_to_a_dataset_only(dataset, tmp_path):
    done = report_cmd("--ledger", str(dataset[0]), "--engine", "spark", "--out", str(tmp_path / "r"))
    assert done.returncode == 2 and "field '--engine': applies to a gathered dataset only" in done.stderr
    done = report_cmd("--ledger", str(dataset[1]), "--spark-master", "local[2]", "--out", str(tmp_path / "r"))
    assert done.returncode == 2 and "field '--spark-master': applies to --engine spark only" in done.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_report_with_spark_equals_report_with_duckdb(dataset, tmp_path):
    require_tool("java", "default-jre-headless")
    a, b = tmp_path / "duckdb", tmp_path / "spark"
    said = []
    for kind, out in (("duckdb", a), ("spark", b)):
        done = report_cmd("--ledger", str(dataset[1]), "--engine", kind, "--out", str(out), "--since", "1d",
                          "--until", "2025-11-28T22:00Z")
        assert done.returncode == 0, done.stderr
        assert done.stderr == "", done.stderr  # the JVM's console output goes to its log
        said.append(done.stdout.splitlines()[0])  # days, spend, recommendations, savings
    assert said[0] == said[1] and "spend 0.00" not in said[0], said
    ja, jb = (json.loads((o / "recommendations.json").read_text()) for o in (a, b))
    assert close(ja, jb) == []
    # report.md is not compared as text: a change that sums to about 1e-16 either way (the
    # rows come in another order) prints as ±0.00 or −0.00
    for name in ("focus.csv", "recommendations.csv"):
        assert (a / name).read_text() == (b / name).read_text(), name


@pytest.mark.slow
def test_report_without_java_exits_2_in_one_line(dataset, tmp_path):
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(tmp_path)  # no java
    done = subprocess.run([sys.executable, "-m", "agent.cmd_report", "--ledger", str(dataset[1]), "--engine",
                           "spark", "--out", str(tmp_path / "r")], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpuledger: error: ") and "needs Java 17" in lines[0], lines
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_files_that_differ_in_columns_are_read_by_name(dataset, spark, tmp_path):
    """A gatherer upgraded within the window: the first day's files lack util_peak (a 1.0
    ledger), the later ones have it; both engines read it as null there, the same figures."""
    copy = tmp_path / "ds"
    shutil.copytree(dataset[1], copy)
    for path in (copy / "date=2025-11-26").glob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(["util_peak"]), path)
    for name in ("workload_sums", "rows"):
        want, got = both(name, copy, spark)
        assert differences(want, got) == [], name
    nulls = want.filter(pa.compute.less(want.column("minute"), T0 + 2 * 86400)).column("util_peak").null_count
    assert nulls > 0
