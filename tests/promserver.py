"""A real Prometheus server for tests: started on a free port, with a given config and data directory.

Uses the ``prometheus`` and ``promtool`` binaries on the PATH (Debian package
``prometheus``; ``.ci/run`` installs it). Nothing is mocked: tests talk to the server
over HTTP exactly as ``gpuledger report --prometheus`` or a dashboard would.

    server = PrometheusServer()
    url = server.start(CONFIG, tmp_path / "data")            # waits for /-/ready
    server.wait_for('up{job="gpuledger"} == 1')               # e.g. after a scrape
    server.query("sum(gpuledger_gpu_cost_total)")
    server.stop()

or the ``prometheus`` fixture (a factory; every server it starts is stopped after the
test). :func:`backfill` writes OpenMetrics text into a data directory with
``promtool tsdb create-blocks-from openmetrics``, for history that would otherwise take
days of scraping.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest

from tests.systemtools import require_tool

MINIMAL_CONFIG = "global:\n  scrape_interval: 15s\n  evaluation_interval: 15s\n"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backfill(openmetrics: str | Path, data_dir: Path, max_block_duration: str = "2000h") -> subprocess.CompletedProcess:
    """Write OpenMetrics text (or a file of it, ending in ``# EOF``) as TSDB blocks into ``data_dir``.

    ``promtool`` reads its input once per block, so a large ``max_block_duration`` (it
    picks the largest compatible range below it) keeps a long history to one or two passes.
    """
    promtool = require_tool("promtool", "prometheus")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(openmetrics, Path):
        path = openmetrics
    else:
        path = data_dir.parent / f"{data_dir.name}.om.txt"
        path.write_text(openmetrics)
    try:
        done = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics",
                               f"--max-block-duration={max_block_duration}", str(path), str(data_dir)],
                              capture_output=True, text=True, timeout=300)
    finally:
        if not isinstance(openmetrics, Path):
            path.unlink()  # the text can be hundreds of megabytes; the blocks hold it now
    if done.returncode != 0:
        raise RuntimeError(f"promtool failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


class PrometheusServer:
    """One ``prometheus`` process; :meth:`start` returns its base URL, :meth:`stop` ends it."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.url: str | None = None
        self.port: int | None = None
        self.log_path: Path | None = None

    # ---------------------------------------------------------------- life cycle

    def start(self, config_yaml: str = MINIMAL_CONFIG, data_dir: str | Path | None = None,
              extra_args: Sequence[str] = (), timeout: float = 30.0) -> str:
        """Write the config beside ``data_dir``, start Prometheus on a free port and wait until ready.

        Retention is set far beyond any test's history (backfilled blocks can be years old
        relative to the wall clock); ``extra_args`` are appended and win over the defaults.
        """
        if self.process is not None:
            raise RuntimeError("already started")
        prometheus = require_tool("prometheus", "prometheus")
        data = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="prometheus-")) / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = data.parent / f"{data.name}.prometheus.yml"
        config.write_text(config_yaml)
        self.log_path = data.parent / f"{data.name}.prometheus.log"
        for attempt in range(3):  # another process may take the free port before Prometheus binds it
            self.port = free_port()
            args = [prometheus, f"--config.file={config}", f"--storage.tsdb.path={data}",
                    f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=100y",
                    "--log.level=warn", *extra_args]
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self.url = f"http://127.0.0.1:{self.port}"
            try:
                self.wait_ready(timeout)
                return self.url
            except RuntimeError:
                bound = "address already in use" in self.log().lower()
                self.stop()
                if not bound or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll ``/-/ready`` until it answers 200; RuntimeError (with the log's tail) if Prometheus exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self.process and self.process.returncode}): {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"prometheus not ready after {timeout:g} s: {self.log()[-2000:]}")

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the process (SIGTERM, then SIGKILL) and wait for it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def __enter__(self) -> "PrometheusServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- the HTTP API

    def api(self, path: str, **params: Any) -> Any:
        """GET ``/api/v1/<path>`` and return ``data``; AssertionError with Prometheus's error otherwise."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as err:
            raise AssertionError(f"{path}: HTTP {err.code}: {err.read()[:500]!r}") from None
        assert doc.get("status") == "success", doc
        return doc["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """An instant query's result (a vector, as Prometheus returns it)."""
        return self.api("query", query=expr, time=at)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def value(self, expr: str, at: float | None = None) -> float | None:
        """The single value of an instant query (None when the result is empty)."""
        result = self.query(expr, at)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def series(self, match: str) -> list[dict]:
        return self.api("series", **{"match[]": match})

    def targets(self) -> list[dict]:
        return self.api("targets")["activeTargets"]

    def wait_for(self, expr: str, timeout: float = 30.0, interval: float = 0.25) -> list[dict]:
        """Poll an instant query until it returns something (e.g. after the first scrape)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr!r} still empty after {timeout:g} s; targets: {self.targets()}")
            time.sleep(interval)


@pytest.fixture
def prometheus() -> Iterator:
    """A factory: ``prometheus(config_yaml, data_dir, extra_args)`` -> a started :class:`PrometheusServer`."""
    servers: list[PrometheusServer] = []

    def start(config_yaml: str = MINIMAL_CONFIG, data_dir: str | Path | None = None,
              extra_args: Sequence[str] = ()) -> PrometheusServer:
        server = PrometheusServer()
        servers.append(server)
        server.start(config_yaml, data_dir, extra_args)
        return server

    yield start
    for server in servers:
        server.stop()
