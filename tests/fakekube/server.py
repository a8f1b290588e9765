"""A local HTTP server that speaks enough of the Kubernetes API for the collectors' tests.

It serves list and watch of pods (all namespaces or one) and nodes, with label and field
selectors, ``resourceVersion`` (lists return it, watches resume from it), bookmarks,
``410 Gone`` for compacted history, and GET of owner objects under ``/apis/...``. Tests
inject faults: the next N requests answer 500, the whole server answers 500 (down),
open watches are dropped mid-stream (the socket shut without the last chunk).

Watches are streamed with chunked transfer encoding, as the real server does, one event
a chunk (or, with ``chunk_size``, cut into chunks of that many bytes wherever the cut
falls), so the agent's client reads them exactly as it reads a cluster's. With ``tls``
it serves HTTPS (and reads a client certificate when one is offered); with ``tokens``
it answers ``401`` to a request without one of those bearer tokens. Every request's
Authorization header and client certificate are kept in ``calls``.
"""

from __future__ import annotations

import copy
import json
import socket
import ssl
import threading
import time
import uuid as uuidlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.fakekube.selectors import field_matcher, label_matcher
from tests.fakekube.tls import TlsFiles

_LIST_KINDS = {"pods": "PodList", "nodes": "NodeList"}


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


@dataclass(frozen=True)
class Call:
    """One request as the server saw it."""

    path: str
    query: dict[str, list[str]]
    authorization: str | None
    client_cn: str | None  # the client certificate's common name, when one was presented


class FakeKube:
    """The fake API server's state and controls. Use as a context manager."""

    def __init__(self, tls: TlsFiles | None = None, tokens: set[str] | None = None) -> None:
        self.rv = 1000
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {"pods": {}, "nodes": {}}
        self.history: dict[str, list[tuple[int, str, dict[str, Any]]]] = {"pods": [], "nodes": []}
        self.compacted = 0
        self.owner_objects: dict[str, dict[str, Any]] = {}
        self.cond = threading.Condition()
        self.bookmarks = 0
        self.drops = 0
        self.expiries = 0
        self.down = False
        self._fail_next: list[int] = []
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        self.calls: list[Call] = []
        self.tokens = tokens
        self.chunk_size: int | None = None
        #: path -> byte strings sent as they are, one HTTP chunk each (for line-splitting tests)
        self.raw_chunks: dict[str, list[bytes]] = {}
        self.open_watches = 0
        self.stopping = False
        self.tls = tls
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # e.g. a client refusing our certificate
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.cert, tls.key)
            context.load_verify_locations(tls.ca)
            context.verify_mode = ssl.CERT_OPTIONAL  # a client certificate is read when offered
            # the handshake happens in the request's thread, not in the accepting one
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True,
                                                      do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def __enter__(self) -> "FakeKube":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def client(self, **kwargs: Any) -> Any:
        """The agent's API client (:class:`collectors.kubehttp.KubeClient`) pointed at this
        server, trusting its CA when it serves HTTPS."""
        from collectors.kubehttp import KubeClient

        if self.tls is not None:
            kwargs.setdefault("ca_file", self.tls.ca)
        return KubeClient(self.url, **kwargs)

    # ------------------------------------------------------------------ state

    def _record(self, resource: str, event: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self.cond:
            self.rv += 1
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            meta.setdefault("uid", str(uuidlib.uuid4()))
            meta["resourceVersion"] = str(self.rv)
            key = (meta.get("namespace", ""), meta["name"])
            if event == "DELETED":
                self.objects[resource].pop(key, None)
            else:
                self.objects[resource][key] = obj
            self.history[resource].append((self.rv, event, obj))
            self.cond.notify_all()
            return obj

    def add(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self._record(resource, "ADDED", obj)

    def update(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self._record(resource, "MODIFIED", obj)

    def delete(self, resource: str, namespace: str, name: str) -> None:
        with self.cond:
            obj = self.objects[resource][(namespace, name)]
        self._record(resource, "DELETED", obj)

    def add_owner(self, api_version: str, plural: str, obj: dict[str, Any]) -> None:
        """Serve ``obj`` at ``GET /apis/<api_version>/namespaces/<ns>/<plural>/<name>``."""
        meta = obj["metadata"]
        self.owner_objects[f"/apis/{api_version}/namespaces/{meta['namespace']}/{plural}/{meta['name']}"] = obj

    def compact(self) -> None:
        """Forget all history, as etcd compaction does: open watches get an ERROR event
        with 410 Gone, and so does any watch from a resourceVersion up to now."""
        with self.cond:
            self.compacted = self.rv
            self.history = {k: [] for k in self.history}
            self.expiries += 1
            self.cond.notify_all()

    def bookmark(self) -> None:
        """Send a BOOKMARK with the current resourceVersion to watches that asked for them."""
        with self.cond:
            self.bookmarks += 1
            self.cond.notify_all()

    def drop_watches(self) -> None:
        """Cut every open watch mid-stream (no final chunk), like a dead load balancer."""
        with self.cond:
            self.drops += 1
            self.cond.notify_all()

    def fail_next(self, count: int, code: int = 500) -> None:
        with self.cond:
            self._fail_next.extend([code] * count)

    def set_down(self, down: bool) -> None:
        with self.cond:
            self.down = down
            if down:
                self.drops += 1
            self.cond.notify_all()

    def _take_failure(self) -> int | None:
        with self.cond:
            if self.down:
                return 500
            return self._fail_next.pop(0) if self._fail_next else None

    def count(self, path: str, watch: bool | None = None) -> int:
        """How many requests were made to ``path`` (lists, watches or both)."""
        return sum(
            1 for p, q in self.requests
            if p == path and (watch is None or _flag(q, "watch") == watch)
        )

    def wait_for(self, predicate, timeout_s: float = 10.0) -> None:
        """Wait until ``predicate()`` holds, polling briefly; AssertionError on timeout."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            time.sleep(0.005)


def _handler(kube: FakeKube):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _json(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            url = urlparse(self.path)
            query = parse_qs(url.query)
            authorization = self.headers.get("Authorization")
            kube.requests.append((url.path, query))
            kube.calls.append(Call(url.path, query, authorization, self._client_cn()))
            if kube.tokens is not None and authorization not in {f"Bearer {t}" for t in kube.tokens}:
                self._json(401, status(401, "Unauthorized", "Unauthorized"))
                return
            failure = kube._take_failure()
            if failure is not None:
                reason = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 410: "Expired"}.get(failure, "InternalError")
                self._json(failure, status(failure, reason, f"injected failure {failure}"))
                return
            if url.path in kube.raw_chunks:
                self._raw(kube.raw_chunks[url.path])
                return
            parts = url.path.strip("/").split("/")
            if parts[:2] == ["api", "v1"] and len(parts) == 3 and parts[2] in _LIST_KINDS:
                self._collection(parts[2], "", query)
            elif parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 5 and parts[4] == "pods":
                self._collection("pods", parts[3], query)
            elif parts[:3] == ["api", "v1", "nodes"] and len(parts) == 4:
                obj = kube.objects["nodes"].get(("", parts[3]))
                self._json(200, obj) if obj else self._json(404, status(404, "NotFound", "not found"))
            elif url.path in kube.owner_objects:
                self._json(200, kube.owner_objects[url.path])
            else:
                self._json(404, status(404, "NotFound", f"{url.path} not found"))

        def _client_cn(self) -> str | None:
            getpeercert = getattr(self.connection, "getpeercert", None)
            cert = getpeercert() if getpeercert else None
            for rdn in (cert or {}).get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        return value
            return None

        def _raw(self, chunks: list[bytes]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for data in chunks:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def _matcher(self, namespace: str, query: dict[str, list[str]]):
            fields = field_matcher(query.get("fieldSelector", [""])[0])
            labels = label_matcher(query.get("labelSelector", [""])[0])
            return lambda obj: (
                (not namespace or obj["metadata"].get("namespace") == namespace)
                and fields(obj) and labels(obj["metadata"].get("labels") or {})
            )

        def _collection(self, resource: str, namespace: str, query: dict[str, list[str]]) -> None:
            matches = self._matcher(namespace, query)
            if _flag(query, "watch"):
                self._watch(resource, matches, query)
                return
            with kube.cond:
                items = [o for o in kube.objects[resource].values() if matches(o)]
                rv = kube.rv
            self._json(200, {"kind": _LIST_KINDS[resource], "apiVersion": "v1",
                             "metadata": {"resourceVersion": str(rv)}, "items": items})

        def _send(self, events: list[dict[str, Any]]) -> None:
            """Events as chunks: one each, or (``chunk_size``) all of them cut every N bytes."""
            lines = [json.dumps(event).encode() + b"\n" for event in events]
            size = kube.chunk_size
            chunks = lines if not size else [b"".join(lines)[i:i + size] for i in range(0, sum(map(len, lines)), size)]
            for data in chunks:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _watch(self, resource: str, matches, query: dict[str, list[str]]) -> None:
            since_text = query.get("resourceVersion", [""])[0]
            bookmarks = _flag(query, "allowWatchBookmarks")
            timeout = float(query.get("timeoutSeconds", ["1800"])[0])
            deadline = time.monotonic() + timeout
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            with kube.cond:
                kube.open_watches += 1
                drops, marks, expiries = kube.drops, kube.bookmarks, kube.expiries
                pending: list[dict[str, Any]] = []
                if since_text in ("", "0"):
                    since = kube.rv
                    pending = [{"type": "ADDED", "object": o} for o in kube.objects[resource].values() if matches(o)]
                elif int(since_text) < kube.compacted:
                    since = -1
                    pending = [{"type": "ERROR", "object": status(410, "Expired", f"too old resource version: {since_text} ({kube.compacted})")}]
                else:
                    since = int(since_text)
            try:
                while True:
                    self._send(pending)
                    if since < 0:
                        break
                    with kube.cond:
                        while True:
                            if kube.stopping or time.monotonic() >= deadline:
                                pending = None  # type: ignore[assignment]
                                break
                            if kube.drops != drops:
                                raise _Drop()
                            if kube.expiries != expiries:
                                break
                            new = [(rv, t, o) for rv, t, o in kube.history[resource] if rv > since]
                            if new or (bookmarks and kube.bookmarks != marks):
                                break
                            kube.cond.wait(min(0.5, max(0.0, deadline - time.monotonic())))
                        if pending is None:
                            break
                        if kube.expiries != expiries:
                            since = -1
                            pending = [{"type": "ERROR", "object": status(410, "Expired", "the watch's resource version was compacted")}]
                            continue
                        pending = [{"type": t, "object": o} for rv, t, o in new if matches(o)]
                        if new:
                            since = new[-1][0]
                        if bookmarks and kube.bookmarks != marks:
                            marks = kube.bookmarks
                            pending.append({"type": "BOOKMARK", "object": {
                                "kind": "Pod" if resource == "pods" else "Node", "apiVersion": "v1",
                                "metadata": {"resourceVersion": str(kube.rv)}}})
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except _Drop:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            finally:
                with kube.cond:
                    kube.open_watches -= 1

    return Handler


def _flag(query: dict[str, list[str]], name: str) -> bool:
    """A boolean query parameter, read as Go's strconv.ParseBool reads it."""
    return query.get(name, ["false"])[0].lower() in ("true", "1", "t")


class _Drop(Exception):
    pass
