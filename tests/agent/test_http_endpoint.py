"""The agent's HTTP endpoint under bursts and bad clients (issue 15, item 19).

The real agent process (dry-run) for what a scraper sees; the server class in-process,
with short time-outs, for what happens to silent connections.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from agent.httpserver import BoundedHTTPServer
from tests.agentrun import get, small_trace, start_agent, stop, wait_for

pytestmark = pytest.mark.slow  # drives real processes or servers; see README "Fast loop"

__all__ = ["small_trace"]  # fixture


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def _scrape(port: int, timeout: float = 10.0) -> float:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and b"gpuledger_samples_total" in resp.read()
    finally:
        conn.close()
    return time.perf_counter() - started


@pytest.fixture(scope="module")
def agent(small_trace, tmp_path_factory):
    ledger = tmp_path_factory.mktemp("http") / "ledger"
    proc, port = start_agent(small_trace, ledger, "--speed", "10", "--interval", "200ms", "--log-level", "debug")
    wait_for(lambda: get(port, "/metrics")[0] == 200, 30, "/metrics", proc)
    yield proc, port
    assert stop(proc) == 0


def test_head_is_answered_without_a_body(agent):
    _, port = agent
    for path, code in (("/metrics", 200), ("/healthz", 200), ("/nowhere", 404)):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("HEAD", path)
        resp = conn.getresponse()
        assert resp.status == code
        assert int(resp.getheader("Content-Length")) > 0 and resp.read() == b""
        conn.close()


def test_a_burst_of_concurrent_scrapes_is_answered_at_once(agent):
    _, port = agent
    n = 150
    barrier = threading.Barrier(n)
    took: list[float | str] = [""] * n

    def one(i: int) -> None:
        barrier.wait()
        try:
            took[i] = _scrape(port)
        except (OSError, AssertionError) as err:
            took[i] = repr(err)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [t for t in took if isinstance(t, str)]
    assert not failed, failed[:3]
    # a listen backlog of 5 made most wait out TCP's SYN retries (1 s, 3 s, 7 s, ...)
    assert sorted(took)[int(0.95 * n)] < 3.0, sorted(took)[-10:]


def test_idle_connections_hold_no_threads(agent):
    proc, port = agent
    before = _threads(proc.pid)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(300)]
    try:
        time.sleep(1.0)
        assert _threads(proc.pid) <= before + 2, (before, _threads(proc.pid))  # was one thread per connection
        assert _scrape(port) < 2.0  # scrapes are still answered
    finally:
        for s in idle:
            s.close()


def test_clients_that_go_away_are_one_line_each_not_a_traceback(small_trace, tmp_path):
    proc, port = start_agent(small_trace, tmp_path / "ledger", "--speed", "10", "--interval", "200ms",
                             "--log-level", "debug")
    try:
        wait_for(lambda: get(port, "/metrics")[0] == 200, 30, "/metrics", proc)
        for _ in range(30):  # ask, then reset the connection before the answer is read
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            s.close()
        half = socket.create_connection(("127.0.0.1", port), timeout=5)
        half.sendall(b"GET /metr")  # and stall
        time.sleep(1.0)
        assert _scrape(port) < 2.0
        half.close()
    finally:
        assert stop(proc) == 0
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr, stderr[-2000:]
    assert "Exception occurred during processing of request" not in stderr


# --------------------------------------------------------------------------- the server class


class _Hello(BaseHTTPRequestHandler):
    timeout = 0.5

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"hi")

    def log_message(self, *args) -> None:
        pass


def _serve(**kw) -> tuple[BoundedHTTPServer, int]:
    server = BoundedHTTPServer(("127.0.0.1", 0), _Hello, **kw)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def _closed_by_peer(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        return s.recv(1) == b""
    except socket.timeout:
        return False
    except OSError:
        return True


def test_silent_connections_are_closed_after_the_idle_time_out():
    server, port = _serve(idle_timeout_s=0.5, workers=2)
    try:
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        assert all(_closed_by_peer(s, 5.0) for s in silent)
        for s in silent:
            s.close()
        assert server.request_queue_size >= 1024
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(b"GET / HT")  # starts, then stalls: the handler's read time-out (0.5 s)
        assert _closed_by_peer(stalled, 5.0)
        stalled.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"hi"
    finally:
        server.shutdown()
        server.server_close()


def test_past_max_waiting_the_longest_waiting_connection_is_closed():
    server, port = _serve(idle_timeout_s=30.0, max_waiting=10, workers=1)
    try:
        first = socket.create_connection(("127.0.0.1", port))
        time.sleep(0.2)
        rest = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
        assert _closed_by_peer(first, 5.0)
        assert not _closed_by_peer(rest[-1], 0.3)
        for s in [first, *rest]:
            s.close()
    finally:
        server.shutdown()
        server.server_close()
