"""The report from a gathered dataset (date=YYYY-MM-DD partitions, read with DuckDB) equals the
report from the same rows as one ledger file; only the window's partitions are read; the SQL's
percentiles are numpy's."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recommenders import queries
from recommenders.dataset import engine, is_dataset
from recommenders.history import ensure_categorical
from recommenders.ledger_schema import NAMES, arrow_schema
from recommenders.report import UNALLOCATED, daily_cost_by_team
from recommenders.workloads import workload_stats
from tests.ledgerdataset import write_dataset, write_day_dataset
from tests.s3server import S3_ENV, s3_fs, s3_server
from tests.recommenders.test_report_rows import T0, gpu_minutes

ROOT = Path(__file__).resolve().parents[2]
DAY_MIN = 1440


def report_cmd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cmd_report", *args], capture_output=True, text=True, cwd=ROOT)


def small_rows() -> list[dict]:
    """Nine days: two workloads with varying utilisation and memory, one idle GPU."""
    rng = np.random.default_rng(7)
    n = 9 * DAY_MIN
    a = gpu_minutes(pod="a", minutes=range(0, n, 7), util=[float(x) for x in rng.random(len(range(0, n, 7))).round(3)],
                    peak=[float(x) for x in rng.random(len(range(0, n, 7))).round(3)], name="steady")
    b = gpu_minutes(pod="b", device="GPU-b", node="node-2", minutes=range(DAY_MIN, n, 5), util=0.4, team="team-b",
                    name="serve", mem_gib=3.0)
    x = gpu_minutes(pod="x", device="GPU-x", minutes=range(0, n, 11), allocated=False)
    for i, r in enumerate(a):
        r["memory_used_max_bytes"] = float(rng.integers(1, 40)) * (1 << 30)
    return a + b + x


def write_ledger(rows: list[dict], path: Path) -> Path:
    schema = arrow_schema("USD")
    columns = {}
    for name in NAMES:
        values = [r.get(name) for r in rows]
        if name == "minute":
            values = [datetime.fromtimestamp(v, timezone.utc) for v in values]
        columns[name] = pa.array(values, schema.field(name).type)
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("small")
    ledger = write_ledger(small_rows(), work / "ledger.parquet")
    write_day_dataset(ledger, work / "ds")  # as the gatherer keeps it: one file per node-day
    return ledger, work / "ds"


def close(a, b, path="") -> list[str]:
    """Where two JSON values differ by more than 1e-9 (relative, or absolute near zero)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a)} != {sorted(b)}"]
        return [d for k in a for d in close(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in close(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, (int, float)) or isinstance(b, float) and isinstance(a, (int, float)):
        return [] if math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_a_dataset_is_recognised_by_its_partitions(small, tmp_path):
    ledger, ds = small
    assert is_dataset(ds) and not is_dataset(ledger.parent) and not is_dataset(tmp_path / "missing")
    assert sorted(p.name for p in ds.iterdir())[0] == "date=2025-11-25"


@pytest.mark.slow
def test_report_from_dataset_equals_report_from_ledger(small, tmp_path):
    """The same rows as one ledger file, as node-day files (the gatherer's) and as node-hour
    files (the first gatherer's, which readers still take): the same report."""
    ledger, ds = small
    hourly = tmp_path / "hourly"
    write_dataset(ledger, hourly)
    outs = [tmp_path / name for name in ("a", "b", "c")]
    for given, out in zip((ledger, ds, hourly), outs):
        done = report_cmd("--ledger", str(given), "--out", str(out), "--since", "3d")
        assert done.returncode == 0, done.stderr
    ja, jb, jc = (json.loads((o / "recommendations.json").read_text()) for o in outs)
    assert close(ja, jb) == [] and close(ja, jc) == []
    assert (outs[0] / "focus.csv").read_text() == (outs[1] / "focus.csv").read_text() == \
        (outs[2] / "focus.csv").read_text()


def test_window_rows_equal_the_ledgers(small):
    """The view the dataset gives equals the ledger file's rows of the window, row for row."""
    from recommenders.history import load_history

    ledger, ds = small
    start, end = T0 + 2 * 86400 + 3600, T0 + 6 * 86400 + 120
    want = load_history([ledger], start, end).rows
    with engine(ds) as e:
        e.window(start, end)
        got = e.sql(queries.rows(list(want.columns)))
    want, got = (f.assign(_d=f["device_uuid"].astype(str)).sort_values(["minute", "_d"], kind="stable")
                 .drop(columns="_d").reset_index(drop=True) for f in (want, got))
    assert list(got.columns) == list(want.columns)
    for c in want.columns:
        if c in ("minute",) or want[c].dtype.kind in "fiu":
            np.testing.assert_allclose(got[c].to_numpy(float), want[c].to_numpy(float), rtol=1e-12, equal_nan=True)
        else:
            assert got[c].astype(object).tolist() == want[c].astype(object).tolist(), c


def test_counted_quantiles_are_numpys_linear_interpolation():
    """Ties, NULLs, one-value groups and a condition: each quantile equals numpy's on the values
    left after the condition, and ``n`` counts them."""
    import duckdb

    from recommenders.queries import counted_quantiles

    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(6), [1, 2, 3, 10, 101, 997])
    values = rng.random(len(groups)) * rng.choice([1.0, 1e9], len(groups))
    values[rng.random(len(groups)) < 0.3] = 0.25  # many ties
    keep = rng.random(len(groups)) < 0.9
    missing = rng.random(len(groups)) < 0.05
    qs = {"q0": 0.0, "q50": 0.5, "q95": 0.95, "q99": 0.99, "q100": 1.0}
    db = duckdb.connect()
    db.register("v", pa.table({"g": groups, "x": pa.array(values, mask=missing), "keep": keep}))
    sql = counted_quantiles("v", [("g", "g")], "x", qs, where="keep")
    got = db.sql(sql + " ORDER BY g").df()
    assert list(got["g"]) == [g for g in range(6) if (keep & ~missing)[groups == g].any()]
    for _, row in got.iterrows():
        mine = values[(groups == row["g"]) & keep & ~missing]
        assert row["n"] == len(mine)
        np.testing.assert_allclose(row[list(qs)].to_numpy(float), np.quantile(mine, list(qs.values())), rtol=1e-15)


@pytest.mark.slow
def test_counted_quantiles_spill_where_percentile_cont_runs_out_of_memory(tmp_path):
    """Four million distinct values under a 40 MB limit: PERCENTILE_CONT holds a group's values
    in memory and fails; the counted quantiles spill and give numpy's figure."""
    import duckdb

    from recommenders.queries import counted_quantiles

    db = duckdb.connect(config={"memory_limit": "40MB", "temp_directory": str(tmp_path), "threads": 2})
    db.execute("CREATE TABLE t AS SELECT i % 3 AS w, CAST(i * 7919 % 4000000 AS DOUBLE) AS x FROM range(4000000) r(i)")
    with pytest.raises(duckdb.OutOfMemoryException):
        db.sql("SELECT w, PERCENTILE_CONT(0.99) WITHIN GROUP (ORDER BY x) FROM t GROUP BY w").fetchall()
    got = db.sql(counted_quantiles("t", [("w", "w")], "x", {"p99": 0.99}) + " ORDER BY w").fetchall()
    i = np.arange(4_000_000)
    x = (i * 7919 % 4_000_000).astype(float)
    for w, n, p99 in got:
        assert n == int((i % 3 == w).sum())
        assert p99 == pytest.approx(np.quantile(x[i % 3 == w], 0.99), rel=1e-15)


def test_workload_evidence_and_daily_cost_equal_a_direct_numpy_computation(small):
    """The SQL's figures against numpy on the same rows, computed here by hand: GPU-hours,
    the p95 and max of known minute peaks (float32, as the report holds them), the p99 of
    memory peaks, and each team's cost per UTC day."""
    ledger, ds = small
    from recommenders.history import load_history

    start, end = T0, T0 + 9 * 86400
    rows = load_history([ledger], start, end).rows
    stats = workload_stats(rows, 9 * 24)
    assert len(stats) == 2
    for w in stats.to_dict("records"):
        mine = rows[(rows["workload_name"].astype(object) == w["workload_name"]) & rows["pod_uid"].notna()]
        alloc = mine["allocated_gpu_seconds"].to_numpy(float)
        known = mine["util_unknown_gpu_seconds"].to_numpy(float) <= 0
        mean = (mine["used_gpu_seconds"].to_numpy(float) / alloc).astype(np.float32)
        peak = mine["util_peak"].to_numpy(np.float32)
        peak = np.where(np.isnan(peak), mean, peak)[known].astype(float)
        assert w["gpu_hours"] == pytest.approx(alloc.sum() / 3600, rel=1e-12)
        assert w["util_p95"] == pytest.approx(np.quantile(peak, 0.95), rel=1e-12)
        assert w["util_max"] == pytest.approx(peak.max(), rel=1e-12)
        assert len(w["peaks"]) == len(peak) and w["peaks"].quantile(0.5) == pytest.approx(np.quantile(peak, 0.5))
        memory = mine["memory_used_max_bytes"].to_numpy(np.float32).astype(float)
        assert w["memory_p99_bytes"] == pytest.approx(np.quantile(memory[~np.isnan(memory)], 0.99), rel=1e-12)
    want = daily_cost_by_team(ensure_categorical(rows), start, end)
    money = (rows["cost"] + rows["unallocated_cost"]).to_numpy(float)
    day = rows["minute"].to_numpy(np.int64) // 86400
    team = np.where(rows["pod_uid"].isna(), UNALLOCATED, rows["team"].astype(object).fillna("(none)"))
    direct = pd.DataFrame({"day": day, "team": team, "cost": money}).groupby(["team", "day"])["cost"].sum()
    days = [int(datetime.strptime(d, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()) // 86400
            for d in want["days"]]
    for name, series in want["teams"].items():
        np.testing.assert_allclose([direct.get((name, d), 0.0) for d in days], series, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_only_the_windows_partitions_are_read(small, tmp_path):
    """A damaged file in a partition before the window does not matter; one inside it is an error."""
    import shutil

    _, ds = small
    copy = tmp_path / "ds"
    shutil.copytree(ds, copy)
    (copy / "date=2025-11-25" / "broken.parquet").write_bytes(b"PAR1 not a parquet file")
    ok = report_cmd("--ledger", str(copy), "--out", str(tmp_path / "ok"), "--since", "2d",
                    "--commitment-days", "3")
    assert ok.returncode == 0, ok.stderr
    (copy / "date=2025-12-03" / "broken.parquet").write_bytes(b"PAR1 not a parquet file")
    bad = report_cmd("--ledger", str(copy), "--out", str(tmp_path / "bad"), "--since", "2d",
                     "--commitment-days", "3")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "broken.parquet" in bad.stderr, bad.stderr
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["bad-date", "empty", "missing"])
def test_a_bad_dataset_path_exits_2_with_one_line(tmp_path, layout):
    root = tmp_path / "ds"
    if layout == "bad-date":
        (root / "date=2025-13-45").mkdir(parents=True)
        (root / "date=2025-13-45" / "a.parquet").write_bytes(b"x")
    elif layout == "empty":
        (root / "date=2025-11-25").mkdir(parents=True)
    done = report_cmd("--ledger", str(root), "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("gpuledger: error:") and done.stderr.count("\n") == 1, done.stderr


def test_files_of_two_ledger_versions_are_matched_by_column_name(small, tmp_path):
    """A window whose first file predates util_peak (ledger 1.0): its rows read util_peak as null."""
    import shutil

    _, ds = small
    copy = tmp_path / "ds"
    shutil.copytree(ds, copy)
    with engine(copy) as e:
        files = e.files(T0, T0 + 9 * 86400)
    old = pq.read_table(files[0])
    pq.write_table(old.drop_columns(["util_peak"]), files[0])
    with engine(copy) as e:
        e.window(T0, T0 + 9 * 86400)
        rows = e.sql(queries.rows(["minute", "node", "pod_uid", "util_peak"]))
    first = set(old.column("minute").cast(pa.timestamp("s", tz="UTC")).cast(pa.int64()).to_pylist())
    in_first = rows["minute"].isin(first) & rows["node"].astype(str).eq(old.column("node")[0].as_py())
    assert in_first.sum() == old.num_rows
    assert rows.loc[in_first, "util_peak"].isna().all()
    assert rows.loc[~in_first & rows["pod_uid"].astype(str).eq("uid-a"), "util_peak"].notna().any()


@pytest.mark.slow
def test_the_whole_report_model_from_dataset_equals_the_ledgers(small, tmp_path):
    """Every figure of the model the formats render: team and class sums, daily cost, FOCUS
    rows, commitment pools with their hourly usage, workloads, anomalies."""
    import argparse

    from agent.cmd_report import build, register
    from recommenders.report import to_plain

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    ledger, ds = small
    models = []
    for given in (ledger, ds):
        args = parser.parse_args(["report", "--ledger", str(given), "--out", str(tmp_path / "x"), "--since", "3d"])
        models.append(to_plain(build(args)))
    a, b = models
    assert a["teams"] and a["daily_cost"]["teams"] and a["focus_rows"] and a["commitments"]
    assert any(p["usage"] for p in a["commitments"])
    assert close(a, b) == []


@pytest.fixture()
def s3_endpoint():
    """A real S3 protocol endpoint (moto's server over HTTP) with an empty bucket ``ledger``."""
    with s3_server("ledger") as endpoint:
        yield endpoint


def upload(ds: Path, endpoint: str, prefix: str) -> None:
    fs = s3_fs(endpoint)
    for path in sorted(ds.rglob("*.parquet")):
        with fs.open_output_stream(f"{prefix}/{path.relative_to(ds).as_posix()}") as out:
            out.write(path.read_bytes())


@pytest.mark.slow
def test_report_from_an_s3_dataset_equals_report_from_the_directory(small, tmp_path, s3_endpoint):
    """The same dataset in a bucket (moto's S3 server) and on disk: the same report; one file of
    the bucket's window lacking util_peak (an older ledger) is read by column name."""
    import os
    import shutil

    _, ds = small
    copy = tmp_path / "ds"
    shutil.copytree(ds, copy)
    first = sorted((copy / "date=2025-11-28").glob("*.parquet"))[0]
    pq.write_table(pq.read_table(first).drop_columns(["util_peak"]), first)
    upload(copy, s3_endpoint, "ledger/fleet")
    env = dict(os.environ, **S3_ENV)
    outs = {}
    for name, given, extra in (("dir", str(copy), {}),
                               ("s3", "s3://ledger/fleet", {"AWS_ENDPOINT_URL": s3_endpoint})):  # as the gatherer
        outs[name] = tmp_path / name
        done = subprocess.run([sys.executable, "-m", "agent.cmd_report", "--ledger", given, "--out", str(outs[name]),
                               "--since", "3d"], capture_output=True, text=True, cwd=ROOT, env=dict(env, **extra))
        assert done.returncode == 0, done.stderr
    ja, jb = (json.loads((outs[n] / "recommendations.json").read_text()) for n in ("dir", "s3"))
    assert ja["recommendations"] or ja["not_judged"]
    assert close(ja, jb) == []
    assert (outs["dir"] / "focus.csv").read_text() == (outs["s3"] / "focus.csv").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["no-such-bucket", "empty-prefix", "broken-file", "no-bucket-name"])
def test_a_bad_s3_dataset_exits_2_with_one_line_naming_it(small, tmp_path, s3_endpoint, where):
    import os

    _, ds = small
    url = {"no-such-bucket": "s3://missing/fleet", "empty-prefix": "s3://ledger/nothing-here",
           "broken-file": "s3://ledger/fleet", "no-bucket-name": "s3:///fleet"}[where]
    if where == "broken-file":
        upload(ds, s3_endpoint, "ledger/fleet")
        with s3_fs(s3_endpoint).open_output_stream("ledger/fleet/date=2025-12-03/zz-broken.parquet") as out:
            out.write(b"PAR1 not a parquet file")
    done = subprocess.run([sys.executable, "-m", "agent.cmd_report", "--ledger", url, "--s3-endpoint", s3_endpoint,
                           "--out", str(tmp_path / "out"), "--since", "2d"], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, **S3_ENV))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("gpuledger: error:") and done.stderr.count("\n") == 1, done.stderr
    assert ("zz-broken.parquet" if where == "broken-file" else url) in done.stderr, done.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("column, value, says", [
    ("cost", -5.0, "expected a number from 0 to 1e+15, got -5"),
    ("used_gpu_seconds", 1e6, "expected used_gpu_seconds + util_unknown_gpu_seconds of at most allocated_gpu_seconds"),
    ("allocated_gpu_seconds", float("nan"), "expected a number from 0 to 1e+08, got null"),
])
def test_a_dataset_row_a_ledger_may_not_hold_is_refused_naming_column_date_and_node(small, tmp_path, column, value,
                                                                                      says):
    """The values a ledger file's rows are checked for when loaded, checked where a dataset's
    rows lie: one line naming the partition, the column, the node and the minute; exit 2."""
    import shutil

    _, ds = small
    copy = tmp_path / "ds"
    shutil.copytree(ds, copy)
    victim = sorted((copy / "date=2025-12-02").glob("*.parquet"))[0]
    table = pq.read_table(victim)
    values = table.column(column).to_pylist()
    values[3] = value
    table = table.set_column(table.schema.get_field_index(column), column,
                             pa.array(values, table.schema.field(column).type))
    pq.write_table(table, victim)
    done = report_cmd("--ledger", str(copy), "--out", str(tmp_path / "out"), "--since", "3d")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and says in done.stderr and "date=2025-12-02" in done.stderr, done.stderr
    assert f"field {column}" in done.stderr or column in done.stderr, done.stderr
    node = table.column("node")[3].as_py()
    assert f"node {node}" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_memory_limit_is_duckdbs_and_a_bad_one_is_one_line(small, tmp_path):
    """Under a small limit DuckDB spills and the report is the same; a size it cannot read is exit 2."""
    _, ds = small
    runs = {}
    for limit in ("1GB", "64MB"):
        out = tmp_path / limit
        done = report_cmd("--ledger", str(ds), "--out", str(out), "--since", "3d", "--memory-limit", limit)
        assert done.returncode == 0, done.stderr
        runs[limit] = json.loads((out / "recommendations.json").read_text())
    assert close(runs["1GB"], runs["64MB"]) == []
    for bad in ("lots", "0GB", "12"):
        done = report_cmd("--ledger", str(ds), "--out", str(tmp_path / "bad"), "--memory-limit", bad)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--memory-limit" in done.stderr, done.stderr


def test_a_pod_relabelled_inside_the_window_counts_in_each_workload_once():
    """A pod whose team label changed after an hour is two workloads, each with its own hour
    (the held rows are then joined on the whole workload key, not on the pod and device)."""
    from tests.recommenders.test_report_rows import frame

    rows = frame(gpu_minutes(pod="a", minutes=range(60), util=0.2, team="team-a"),
                 gpu_minutes(pod="a", minutes=range(60, 120), util=0.8, team="team-b"),
                 gpu_minutes(pod="b", minutes=range(120), util=0.5, name="other"))
    stats = workload_stats(rows, window_hours=2.0).set_index(["team", "workload_name"])
    assert stats.loc[("team-a", "app"), "gpu_hours"] == pytest.approx(1.0)
    assert stats.loc[("team-b", "app"), "gpu_hours"] == pytest.approx(1.0)
    assert stats.loc[("team-a", "other"), "gpu_hours"] == pytest.approx(2.0)
    assert stats.loc[("team-a", "app"), "util_p50"] == pytest.approx(0.2)
    assert stats.loc[("team-b", "app"), "util_p50"] == pytest.approx(0.8)
    assert list(stats["pods"]) == [1, 1, 1]


def test_a_result_with_categorical_names_equals_astype_category():
    """The hour rows' names come back as categoricals encoded in Arrow: the same categories
    (in name order), codes and nulls as pandas' own ``astype("category")``."""
    from recommenders.sqlframe import to_frame

    table = pa.table({"team": ["b", None, "a", "b", "c"], "cost": [1.0, 2.0, 3.0, 4.0, 5.0],
                      "node": pa.array(["n2", "n1", "n2", None, "n1"], pa.large_string())})
    got = to_frame(table, ["team", "node", "absent"])
    want = table.to_pandas()
    for c in ("team", "node"):
        expected = want[c].astype("category")
        assert list(got[c].cat.categories) == list(expected.cat.categories)
        assert got[c].cat.codes.tolist() == expected.cat.codes.tolist()
    assert got["cost"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
