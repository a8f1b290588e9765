"""The gathered dataset stays one file per node-day while hours arrive, a gatherer is killed at
random moments, hours are pulled again, and a reader reads it all the while.

Real parts: a dry-run agent closing the hours of a simulated trace as it goes, serving them
over HTTP; ``gpuledger gather`` as a process, SIGKILLed; a reader that lists and reads the
dataset the way the report does (every ``date=*/*.parquet``), on a disk and on S3 (moto's
server). The reference is replay's ledger of the same trace, per node and hour: its rows and
its cost, computed without gather.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from agent.config import Config
from agent.replay import replay
from collectors.pricing.ratecard import RateCardPricer, load_snapshot
from collectors.simulator import simulate
from tests.agent.test_gather import dataset_rows, gather, listing
from tests.s3server import s3_server
from tests.agentrun import ROOT, assert_same_ledger, keyed, start_agent, stop, wait_for

START = 1764100800 - 3 * 3600  # 2025-11-25T17:00Z: the trace crosses midnight
HOURS = 9
NODES = 4
BUCKET = "killed-gatherers"  # moto keeps its buckets for the whole process: not the other S3 tests' bucket


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> dict:
    """A trace from 17:00 to 02:00 (two dates) and replay's ledger of it, by node and hour."""
    path = tmp_path_factory.mktemp("night") / "night.jsonl.gz"
    simulate(path, nodes=NODES, hours=HOURS, start=START, interval_s=30.0)
    rows = replay([path], RateCardPricer(load_snapshot()), Config()).table.to_pylist()
    for row in rows:
        row["minute"] = int(row["minute"].timestamp())
    by_hour: dict[tuple[str, int], list] = defaultdict(lambda: [0, 0.0])
    for row in rows:
        cell = by_hour[(row["node"], row["minute"] // 3600 * 3600)]
        cell[0] += 1
        cell[1] += row["cost"]
    return {"trace": path, "rows": keyed(rows), "by_hour": dict(by_hour)}


class Reader(threading.Thread):
    """Reads the whole dataset again and again, as the report does: list the Parquet files of every
    date, read each. Checks every read: each (node, hour) in one file only, whole (replay's rows
    and cost), and none that an earlier read saw missing."""

    def __init__(self, list_files, read_file, by_hour) -> None:
        super().__init__(daemon=True)
        self.list_files, self.read_file, self.by_hour = list_files, read_file, by_hour
        self.stop = threading.Event()
        self.reads = 0
        self.most = 0
        self.failure: str | None = None

    def run(self) -> None:
        seen: set = set()
        while not self.stop.is_set() and self.failure is None:
            try:
                self.failure = self.check(seen)
            except Exception as err:  # noqa: BLE001 - a read that fails is a failure too
                self.failure = f"read failed: {type(err).__name__}: {err}"

    def check(self, seen: set) -> str | None:
        where: dict[tuple[str, int], str] = {}
        for name in self.list_files():
            table = self.read_file(name)
            minute = table.column("minute").cast(pa.timestamp("s", tz="UTC")).cast(pa.int64()).to_pylist()
            cells: dict[tuple[str, int], list] = defaultdict(lambda: [0, 0.0])
            for node, m, cost in zip(table.column("node").to_pylist(), minute, table.column("cost").to_pylist()):
                cell = cells[(node, m // 3600 * 3600)]
                cell[0] += 1
                cell[1] += cost
            for key, (count, cost) in cells.items():
                if key in where:
                    return f"{key} in two files: {where[key]} and {name}"
                where[key] = name
                want = self.by_hour[key]
                if count != want[0] or not math.isclose(cost, want[1], rel_tol=1e-9, abs_tol=1e-12):
                    return f"{key} in {name}: {count} rows costing {cost}, replay has {want}"
        if not seen <= set(where):
            return f"hours seen before are gone: {sorted(seen - set(where))[:3]}"
        seen |= set(where)
        self.reads += 1
        self.most = max(self.most, len(where))
        return None


def local_store(out: Path):
    def read_file(name: str) -> pa.Table:
        # Opened once, as DuckDB opens a file: the version it opened, whatever is renamed over it
        # meanwhile. (pq.read_table(name) opens it again after reading the footer: docs/fleet.md.)
        with pa.OSFile(name) as f:
            return pq.read_table(f)

    return lambda: sorted(str(p) for p in out.glob("date=*/*.parquet")), read_file


@pytest.fixture
def moto_s3():
    with s3_server(BUCKET) as endpoint:
        yield endpoint


def s3_store(endpoint: str):
    fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", access_key="testing", secret_key="testing",
                           region="us-east-1")

    def list_files() -> list[str]:
        infos = fs.get_file_info(pafs.FileSelector(f"{BUCKET}/fleet", recursive=True, allow_not_found=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")
                      and "/date=" in i.path)

    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")

    def read_file(name: str) -> pa.Table:
        # One GET of the whole object (no HEAD first): S3 answers with one version of it, whole. A
        # reader that asks for its size, then for ranges of it, can straddle its replacement: see
        # docs/fleet.md.
        bucket, key = name.split("/", 1)
        return pq.read_table(pa.BufferReader(client.get_object(Bucket=bucket, Key=key)["Body"].read()))

    return list_files, read_file, fs


def _gather_command(out: str, port: int, endpoint: str | None) -> tuple[list[str], dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = [sys.executable, "-m", "agent.cli", "gather", "--out", out, "--agents", f"http://127.0.0.1:{port}"]
    if endpoint:
        args += ["--s3-endpoint", endpoint]
        env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1")
    return args, env


@pytest.mark.slow
@pytest.mark.parametrize("store", ["disk", "s3"])
def test_killed_gatherers_and_a_reader_during_hours_arriving(night, tmp_path, store, request):
    endpoint = request.getfixturevalue("moto_s3") if store == "s3" else None
    if endpoint:
        list_files, read_file, fs = s3_store(endpoint)
        out = f"s3://{BUCKET}/fleet"

        def versions() -> dict:
            infos = fs.get_file_info(pafs.FileSelector(f"{BUCKET}/fleet", recursive=True, allow_not_found=True))
            return {i.path: (i.size, i.mtime_ns) for i in infos if i.path.endswith(".parquet")}
    else:
        out = str(tmp_path / "dataset")
        list_files, read_file = local_store(tmp_path / "dataset")

        def versions() -> dict:
            found = {str(p): p.stat().st_mtime_ns for p in (tmp_path / "dataset").glob("date=*/*.parquet")}
            found["writing"] = bool(list((tmp_path / "dataset").glob("date=*/.*.tmp")))
            return found
    reader = Reader(list_files, read_file, night["by_hour"])
    reader.start()
    hours = NODES * HOURS
    rng = random.Random(11)
    killed, finished, kills = 0, 0, defaultdict(int)
    # slow enough that the hours close one by one while gatherers come and go
    proc, port = start_agent(night["trace"], tmp_path / "ledger", "--speed", "2500", "--interval", "100ms")
    try:
        wait_for(lambda: len(listing(port)) >= NODES, 60, "the first hour to close", proc)
        command, env = _gather_command(out, port, endpoint)
        first = ["after a write", "mid-write", "any moment", "after a write"]  # then at random
        while True:
            done_before = len(listing(port)) == hours
            run = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            when = "never" if done_before else first.pop(0) if first else rng.choice(
                ["never", "any moment", "mid-write", "after a write"])
            if when == "any moment":
                time.sleep(rng.uniform(0.3, 1.6))  # from the imports to the last write
                run.kill()
            elif when != "never":  # the moments that matter: a file being written, one written before the checkpoint
                before = versions()
                before.pop("writing", None)
                while run.poll() is None:
                    now = versions()
                    writing = now.pop("writing", False)
                    if (when == "mid-write" and writing) or (when == "after a write" and now != before):
                        run.kill()
                        break
                    time.sleep(0.001)
            code = run.wait(timeout=120)
            if code == -9:
                killed += 1
                kills[when] += 1
            else:
                assert code == 0, run.stderr.read().decode()
                finished += 1
            assert reader.failure is None, reader.failure
            if done_before and code == 0:
                break
        assert proc.poll() is None
    finally:
        stop(proc)
        reader.stop.set()
        reader.join(30)
    assert reader.failure is None, reader.failure
    assert killed >= 3 and finished >= 1 and reader.reads >= 5, (killed, finished, reader.reads)
    assert kills["after a write"] >= 1, dict(kills)  # a file replaced, its checkpoint not written: pulled again
    assert reader.most == hours  # the reader saw every node-hour at the end
    # the dataset: one file per node and date, every row of replay's ledger once
    names = list_files()
    dates = {time.strftime("%Y-%m-%d", time.gmtime(h)) for _, h in night["by_hour"]}
    assert len(names) == NODES * len(dates) == NODES * 2
    rows = pa.concat_tables([read_file(n) for n in names]).to_pylist()
    for row in rows:
        row["minute"] = int(row["minute"].timestamp())
    assert_same_ledger(keyed(rows), night["rows"])


@pytest.mark.slow
def test_hours_pulled_again_replace_their_rows(night, tmp_path):
    """The checkpoint lost (every hour pulled again), an hour the agent rewrote (its sha256 changed),
    and what a gatherer killed mid-write leaves on a disk (a temporary file): every row once."""
    ledger, out = tmp_path / "ledger", tmp_path / "dataset"
    proc, port = start_agent(night["trace"], ledger, "--speed", "20000", "--interval", "100ms")
    try:
        wait_for(lambda: len(listing(port)) == NODES * HOURS, 90, "every hour to close", proc)
        url = f"http://127.0.0.1:{port}"
        assert gather(out, "--agents", url).returncode == 0
        files = sorted(out.glob("date=*/*.parquet"))
        assert len(files) == NODES * 2
        assert_same_ledger(dataset_rows(out), night["rows"])

        (out / "_gather_checkpoint.json").unlink()
        leftover = files[0].parent / f".{files[0].name}.0123456789abcdef.tmp"
        leftover.write_bytes(files[0].read_bytes()[:100])  # half a file, as a SIGKILL leaves it
        os.utime(leftover, (time.time() - 7200, time.time() - 7200))
        young = files[1].parent / f".{files[1].name}.fedcba9876543210.tmp"  # maybe another gatherer's
        young.write_bytes(b"x")
        again = gather(out, "--agents", url)
        assert again.returncode == 0 and again.stdout.startswith(f"gathered {NODES * HOURS} node-hours"), again.stdout
        assert sorted(out.glob("date=*/*.parquet")) == files
        assert not leftover.exists() and young.exists()  # the stale one swept, the young one left
        assert_same_ledger(dataset_rows(out), night["rows"])

        # the agent rewrites a node's newest hour (one row fewer): the gatherer takes the new version
        newest = max(listing(port), key=lambda e: (e["hour"], e["node_dir"]))
        rollup = ledger / newest["node_dir"] / time.strftime("%Y-%m-%d", time.gmtime(newest["hour"])) / \
            f"{time.gmtime(newest['hour']).tm_hour:02d}.jsonl.gz"
        lines = gzip.decompress(rollup.read_bytes()).decode().splitlines()
        dropped = json.loads(lines[-1])
        rollup.write_bytes(gzip.compress(("\n".join(lines[:-1]) + "\n").encode(), mtime=0))
        third = gather(out, "--agents", url)
        assert third.returncode == 0 and third.stdout.startswith("gathered 1 node-hours"), third.stdout
        want = dict(night["rows"])
        del want[(dropped["minute"], dropped["device_uuid"], dropped["pod_uid"] or "")]
        assert_same_ledger(dataset_rows(out), want)
    finally:
        stop(proc)
