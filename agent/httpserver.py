"""The agent's HTTP server: bounded threads whatever the clients do.

``http.server.ThreadingHTTPServer`` listens with a backlog of 5 (a burst of scrapes waits
out TCP's SYN retries: seconds), starts a thread per connection and waits for its request
without a time-out (1,500 silent connections hold 1,500 threads). This server:

* listens with a backlog of :data:`BACKLOG`;
* keeps accepted connections in a selector, one thread for all of them, until their
  first bytes arrive: a silent connection costs a file descriptor, not a thread, and is
  closed after :data:`IDLE_TIMEOUT_S` (at most :data:`MAX_WAITING` wait; past that the
  longest waiting is closed);
* hands a connection with data to a fixed pool of :data:`WORKERS` threads; the handler's
  reads and writes time out after its ``timeout`` (``READ_TIMEOUT_S``);
* logs a client that went away (reset, broken pipe, time-out) as one DEBUG line, and
  any other failure of a request as one WARNING line, never a traceback.

Requests are HTTP/1.0, one per connection, as Prometheus scrapes are.
"""

from __future__ import annotations

import logging
import queue
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import HTTPServer
from typing import Any

log = logging.getLogger("gpuledger.agent")

BACKLOG = 1024
WORKERS = 8
IDLE_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 10.0
MAX_WAITING = 4096


class BoundedHTTPServer(HTTPServer):
    """An HTTPServer whose threads are bounded: one accepting, one watching idle
    connections, :data:`WORKERS` answering."""

    request_queue_size = BACKLOG
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any, workers: int = WORKERS,
                 idle_timeout_s: float = IDLE_TIMEOUT_S, max_waiting: int = MAX_WAITING) -> None:
        self._watcher: threading.Thread | None = None
        super().__init__(address, handler)  # binds; on failure calls server_close() and raises
        self.idle_timeout_s = idle_timeout_s
        self.max_waiting = max_waiting
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="http")
        self._arrived: queue.SimpleQueue[tuple[socket.socket, Any]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._closing = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="http-idle", daemon=True)
        self._watcher.start()

    # ------------------------------------------------------------------ accepted connections

    def process_request(self, request: socket.socket, client_address: Any) -> None:  # type: ignore[override]
        """Called by serve_forever for each accepted connection: park it until it speaks."""
        self._arrived.put((request, client_address))
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake, or closing

    def _watch(self) -> None:
        """One thread for every connection that has not sent its request yet."""
        waiting = selectors.DefaultSelector()
        waiting.register(self._wake_r, selectors.EVENT_READ, None)
        deadlines: dict[socket.socket, float] = {}  # in arrival order
        try:
            while not self._closing.is_set():
                now = time.monotonic()
                timeout = max(0.0, min(deadlines.values(), default=now + 1.0) - now)
                for key, _ in waiting.select(timeout=min(timeout, 1.0)):
                    if key.data is None:
                        self._drain_wake()
                        continue
                    sock = key.fileobj
                    waiting.unregister(sock)
                    del deadlines[sock]  # type: ignore[arg-type]
                    self._submit(sock, key.data)  # type: ignore[arg-type]
                while True:
                    try:
                        sock, address = self._arrived.get_nowait()
                    except queue.Empty:
                        break
                    if len(deadlines) >= self.max_waiting:  # the longest waiting goes
                        oldest = next(iter(deadlines))
                        waiting.unregister(oldest)
                        del deadlines[oldest]
                        self.shutdown_request(oldest)
                    deadlines[sock] = time.monotonic() + self.idle_timeout_s
                    waiting.register(sock, selectors.EVENT_READ, address)
                now = time.monotonic()
                for sock in [s for s, d in deadlines.items() if d <= now]:
                    waiting.unregister(sock)
                    del deadlines[sock]
                    self.shutdown_request(sock)  # silent for too long
        finally:
            for sock in list(deadlines):
                self.shutdown_request(sock)
            while True:
                try:
                    self.shutdown_request(self._arrived.get_nowait()[0])
                except queue.Empty:
                    break
            waiting.close()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _submit(self, sock: socket.socket, address: Any) -> None:
        try:
            self._pool.submit(self._answer, sock, address)
        except RuntimeError:  # the pool is shut down: the server is closing
            self.shutdown_request(sock)

    def _answer(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - one line, never a traceback
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    # ------------------------------------------------------------------ errors and closing

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        err = sys.exc_info()[1]
        who = client_address[0] if isinstance(client_address, tuple) and client_address else "a client"
        if isinstance(err, (ConnectionError, TimeoutError)):
            log.debug("http: %s went away: %s", who, type(err).__name__)
        else:
            log.warning("http: a request from %s failed: %s: %s", who, type(err).__name__, str(err)[:200])

    def server_close(self) -> None:
        super().server_close()
        if self._watcher is None:  # the address could not be bound: nothing else started
            return
        self._closing.set()
        self._wake()
        self._watcher.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._wake_r.close()
        self._wake_w.close()
