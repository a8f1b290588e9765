"""``gpuledger gather``: real dry-run agents serving their rollups to a real gather process.

The reference is replay's ledger of the same trace: the gathered dataset holds every row
of it once, whatever was down, restarted or pulled twice.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from recommenders.ledger_schema import arrow_schema
from tests.agentrun import (ROOT, assert_same_ledger, free_port, keyed, reference, small_trace, start_agent, stop,
                            wait_for)
from tests.s3server import S3_ENV, s3_fs, s3_server

__all__ = ["reference", "small_trace"]  # fixtures
FAST = ("--speed", "5000", "--interval", "100ms")


def gather(out: str | Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", "gather", "--out", str(out), *args], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})), capture_output=True, text=True,
                          timeout=120)


def listing(port: int, token: str | None = None) -> list[dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/ledger", headers={"Authorization": f"Bearer {token}"} if token else {})
    resp = conn.getresponse()
    assert resp.status == 200, resp.status
    return json.loads(resp.read())


def raw_get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.putrequest("GET", path, skip_accept_encoding=True)  # the path as it is: no client normalises it
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    return resp.status, resp.read()


def ledger_schema_in_parquet(tmp: Path):
    """The ledger's schema as a Parquet file holds it (Parquet has no seconds unit: `minute` reads back in ms,
    as in replay's ledger.parquet)."""
    pq.write_table(arrow_schema("USD").empty_table(), tmp / "empty.parquet")
    return pq.read_schema(tmp / "empty.parquet")


def dataset_rows(out: Path) -> dict[tuple, dict]:
    files = sorted(out.glob("date=*/*.parquet"))
    want = ledger_schema_in_parquet(out.parent)
    for f in files:
        assert pq.read_schema(f) == want, f
    rows = ds.dataset([str(f) for f in files], format="parquet").to_table().to_pylist()
    for row in rows:
        row["minute"] = int(row["minute"].timestamp())
    return keyed(rows)


def snapshot(out: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.rglob("*"))
            if p.is_file()}


def finished(port: int, files: int, token: str | None = None) -> bool:
    return len(listing(port, token)) == files


@pytest.mark.slow
def test_gathered_dataset_is_replays_ledger_and_a_second_run_changes_nothing(small_trace, reference, tmp_path):
    ledger = tmp_path / "ledger"
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    proc, port = start_agent(small_trace, ledger, *FAST, "--ledger-token-file", str(token))
    try:
        wait_for(lambda: finished(port, 8, "t0ken"), 60, "the trace's 8 node-hours to close", proc)
        out = tmp_path / "dataset"
        # without the token: refused, counted, nothing written
        refused = gather(out, "--agents", f"http://127.0.0.1:{port}")
        assert refused.returncode == 1 and "HTTP 401" in refused.stdout and "0 of 1 agents" in refused.stdout
        assert not list(out.glob("date=*/*.parquet"))
        for path in ("/ledger/../../etc/passwd", "/ledger/%2e%2e/%2e%2e/etc/passwd",
                     "/ledger/..%2F..%2Fetc%2Fpasswd/a/b", "/ledger/%2Fetc%2Fpasswd/1970-01-01/00.jsonl.gz"):
            code, body = raw_get(port, path, {"Authorization": "Bearer t0ken"})
            assert code in (400, 404) and b"root:" not in body, (path, code)
        assert raw_get(port, "/ledger", {"Authorization": "Bearer nope"})[0] == 401

        done = gather(out, "--agents", f"http://127.0.0.1:{port}", "--token-file", str(token))
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("gathered 8 node-hours") and "from 1 of 1 agents" in done.stdout
        nodes = sorted({r["node"] for r in reference["rows"].values()})
        # one file per node-day: the trace's 4 nodes, each 2 hours of one date
        assert sorted(str(p.relative_to(out)) for p in out.glob("date=*/*.parquet")) == [
            f"date=2025-11-25/{n}.parquet" for n in nodes]
        assert_same_ledger(dataset_rows(out), reference["rows"])
        checkpoint = json.loads((out / "_gather_checkpoint.json").read_text())
        assert sorted(checkpoint["nodes"]) == sorted({r["node"] for r in reference["rows"].values()})

        before = snapshot(out)
        again = gather(out, "--agents", f"http://127.0.0.1:{port}", "--token-file", str(token))
        assert again.returncode == 0 and again.stdout.startswith("gathered 0 node-hours"), again.stdout
        assert snapshot(out) == before
    finally:
        stop(proc)


@pytest.mark.slow
def test_an_agent_down_or_restarted_is_retried_with_nothing_lost_or_doubled(small_trace, reference, tmp_path):
    out = tmp_path / "dataset"
    ledger = tmp_path / "ledger"
    port = free_port()
    down = gather(out, "--agents", f"http://127.0.0.1:{port}")
    assert down.returncode == 1 and "0 of 1 agents" in down.stdout and "1 failed, retried next run" in down.stdout
    # slow enough that the first hour closes well before the trace ends
    proc, port = start_agent(small_trace, ledger, "--speed", "400", "--interval", "100ms", port=port)
    try:
        wait_for(lambda: len(listing(port)) >= 4, 60, "the first hour to close", proc)
        first = gather(out, "--agents", f"http://127.0.0.1:{port}")
        assert first.returncode == 0, first.stderr
        assert len(list(out.glob("date=*/*.parquet"))) == 4  # the 4 nodes' first hours, one file each
    finally:
        stop(proc, signal.SIGKILL)  # no goodbye: the ledger on disk is all there is
    # the same ledger directory: the agent continues it, and the gatherer the dataset
    proc, port = start_agent(small_trace, ledger, *FAST, port=port)
    try:
        wait_for(lambda: finished(port, 8), 60, "the trace's 8 node-hours to close", proc)
        with_dead = gather(out, "--agents", f"http://127.0.0.1:{port},http://127.0.0.1:{free_port()}")
        assert with_dead.returncode == 0 and "from 1 of 2 agents" in with_dead.stdout, with_dead.stdout
        assert_same_ledger(dataset_rows(out), reference["rows"])
    finally:
        stop(proc)


@pytest.mark.slow
def test_bad_flags_are_one_line_and_exit_2(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").write_text(" \n")
    for args, says in (((), "--agents"),
                       (("--agents", "http://a:9400", "--token-file", str(tmp_path / "empty")),
                        "field '--token-file': empty, expected a bearer token"),
                       (("--agents", "node-a:9400"), "expected agent URLs"),
                       (("--agents", "http://a:9400", "--port", "0"), "--port"),
                       (("--agents", "http://a:9400", "--token-file", str(tmp_path / "none")), "--token-file")):
        done = gather(tmp_path / "out", *args)
        assert done.returncode == 2 and says in done.stderr and done.stderr.count("\n") == 1, done.stderr
    done = gather(tmp_path / "file", "--agents", "http://a:9400")
    assert done.returncode == 2 and "expected a directory" in done.stderr
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "_gather_checkpoint.json").write_text("{oops")
    done = gather(tmp_path / "ds", "--agents", "http://127.0.0.1:1")
    assert done.returncode == 2 and "not a gather checkpoint" in done.stderr
    # the agent checks its token file the same way, before any work
    for token, says in (("none", "cannot read the bearer token"), ("empty", "empty, expected a bearer token")):
        done = subprocess.run([sys.executable, "-m", "agent.cli", "agent", "--dry-run", "--trace", str(tmp_path / "file"),
                               "--ledger-token-file", str(tmp_path / token)], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2 and says in done.stderr and "--ledger-token-file" in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr


@pytest.mark.slow
def test_an_s3_dataset_through_motos_server(small_trace, reference, tmp_path):
    import pyarrow.fs as pafs

    proc, port = start_agent(small_trace, tmp_path / "ledger", *FAST)
    try:
        with s3_server("ledger") as endpoint:
            wait_for(lambda: finished(port, 8), 60, "the trace's 8 node-hours to close", proc)
            done = gather("s3://ledger/fleet", "--agents", f"http://127.0.0.1:{port}", "--s3-endpoint", endpoint,
                          env=S3_ENV)
            assert done.returncode == 0 and done.stdout.startswith("gathered 8 node-hours"), done.stderr
            again = gather("s3://ledger/fleet", "--agents", f"http://127.0.0.1:{port}", env=dict(
                S3_ENV, AWS_ENDPOINT_URL=endpoint))  # the endpoint from the environment
            assert again.returncode == 0 and again.stdout.startswith("gathered 0 node-hours"), again.stderr
            fs = s3_fs(endpoint)
            files = fs.get_file_info(pafs.FileSelector("ledger/fleet", recursive=True))
            names = sorted(f.path for f in files if f.type == pafs.FileType.File)
            assert "ledger/fleet/_gather_checkpoint.json" in names
            parquet = [n for n in names if n.endswith(".parquet")]
            assert len(parquet) == 4 and all(n.startswith("ledger/fleet/date=2025-11-25/") for n in parquet)
            rows = ds.dataset(parquet, filesystem=fs, format="parquet").to_table().to_pylist()
        for row in rows:
            row["minute"] = int(row["minute"].timestamp())
        assert_same_ledger(keyed(rows), reference["rows"])
    finally:
        stop(proc)


def _agent_pod(name: str, ip: str | None, labels: dict[str, str], phase: str = "Running") -> dict:
    status = {"phase": phase, **({"podIP": ip, "podIPs": [{"ip": ip}]} if ip else {})}
    return {"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": "gpuledger", "uid": f"uid-{name}", "labels": labels,
                         "resourceVersion": "1"},
            "spec": {"nodeName": f"node-{name}", "containers": [{"name": "agent", "image": "gpuledger"}]},
            "status": status}


@pytest.mark.slow
def test_kubernetes_discovery_lists_the_running_agent_pods_by_label(small_trace, reference, tmp_path):
    from tests.agent.test_record_kubernetes import kubeconfig
    from tests.fakekube.server import FakeKube

    agent = {"app.kubernetes.io/name": "gpuledger", "app.kubernetes.io/component": "agent"}
    proc, port = start_agent(small_trace, tmp_path / "ledger", *FAST)
    try:
        with FakeKube(tokens={"test"}) as kube:
            kube.add("pods", _agent_pod("a", "127.0.0.1", agent))
            kube.add("pods", _agent_pod("gone", "127.0.0.2", agent))  # running, but nothing answers there
            kube.add("pods", _agent_pod("starting", None, agent, phase="Pending"))
            kube.add("pods", _agent_pod("other", "127.0.0.3", {"app.kubernetes.io/name": "vllm"}))
            wait_for(lambda: finished(port, 8), 60, "the trace's 8 node-hours to close", proc)
            config = kubeconfig(tmp_path / "kubeconfig", kube.url)
            done = gather(tmp_path / "out", "--kubernetes", "--kubeconfig", str(config), "--port", str(port),
                          "--namespace", "gpuledger", "--timeout", "3s")
            assert done.returncode == 0, done.stderr
            assert "from 1 of 2 agents" in done.stdout and f"http://127.0.0.2:{port}" in done.stdout, done.stdout
            assert any("labelSelector" in q and q["labelSelector"] == ["app.kubernetes.io/name=gpuledger"]
                       for _, q in kube.requests)
        assert_same_ledger(dataset_rows(tmp_path / "out"), reference["rows"])
        # an API server that cannot be reached: one line, exit 1
        down = gather(tmp_path / "out", "--kubernetes", "--kubeconfig", str(config))
        assert down.returncode == 1 and down.stderr.count("\n") == 1 and "API server" in down.stderr, down.stderr
    finally:
        stop(proc)


@pytest.mark.slow
def test_a_connection_lost_mid_pull_is_retried_with_nothing_lost_or_doubled(small_trace, reference, tmp_path):
    """The agent's endpoint over the agent's HTTP server, the connection dropped on one file
    in the middle of a node's hours: that node's checkpoint stops before it."""
    import math
    import threading
    from http.server import BaseHTTPRequestHandler

    from agent.httpserver import BoundedHTTPServer
    from agent.ledgerserve import LedgerEndpoint
    from tests.agentrun import run_agent

    ledger = tmp_path / "ledger"
    assert run_agent(small_trace, ledger, *FAST, "--exit-at-end").returncode == 0
    endpoint = LedgerEndpoint(ledger, lambda: math.inf)
    dropped: list[str] = []
    victim: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            code, body, kind = endpoint.answer(self.path, self.headers)
            if self.path == victim.get("path") and not dropped:
                dropped.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])  # half the file, then the connection is gone
                return
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = BoundedHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        entries = [e for e in json.loads(endpoint.answer("/ledger", {})[1]) if e["node_dir"] == "gpu-node-0002"]
        assert len(entries) == 2
        victim["path"] = entries[1]["path"]  # the node's second hour
        out = tmp_path / "dataset"
        first = gather(out, "--agents", url)
        assert first.returncode == 1 and "1 failed" in first.stdout, first.stdout
        checkpoint = json.loads((out / "_gather_checkpoint.json").read_text())["nodes"]
        # what was written before the loss is recorded; the lost hour is not
        assert checkpoint.get("gpu-node-0002", {}).get("hour", entries[0]["hour"]) <= entries[0]["hour"]
        second = gather(out, "--agents", url)
        assert second.returncode == 0 and "from 1 of 1 agents" in second.stdout, second.stdout
        assert dropped == [victim["path"]]
        assert len(list(out.glob("date=*/*.parquet"))) == 4
        assert_same_ledger(dataset_rows(out), reference["rows"])
    finally:
        server.shutdown()
        server.server_close()
