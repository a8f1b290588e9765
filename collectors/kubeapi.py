"""Watching this node's pods and this node itself through the API server, into a cache.

An :class:`Informer` lists a resource with a field selector, then watches it from the
list's ``resourceVersion``, applying each event to a local cache of slimmed objects.
It resumes a dropped watch from the last ``resourceVersion`` it saw (bookmarks keep that
fresh), relists when the server answers ``410 Gone``, and backs off exponentially on
errors. While the API server is unreachable the cache keeps the last known state, so
the agent goes on attributing GPUs to the pods it knew. Faults are counted by kind and
each kind is logged once.

It talks to the API server through :mod:`collectors.kubehttp`, a small client of our
own, and reads responses as JSON itself: the ``kubernetes`` package's model classes cost
more per pod than all the rest of an update, and importing them costs more memory than
the rest of the agent.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from collectors.faults import FAULTS, FaultCounter
from collectors.kubehttp import SERVICE_ACCOUNT_DIR, ConfigError, KubeClient, KubeError, iter_lines, release

COLLECTOR = "kubeapi"

GONE = 410


# --------------------------------------------------------------------------- slimming


def slim_pod(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a pod the placement needs, and nothing else (memory stays small)."""
    meta = obj.get("metadata") or {}
    return {
        "metadata": {
            "uid": meta.get("uid", ""),
            "name": meta.get("name", ""),
            "namespace": meta.get("namespace", ""),
            "labels": dict(meta.get("labels") or {}),
            "ownerReferences": [
                {"apiVersion": r.get("apiVersion", ""), "kind": r.get("kind", ""),
                 "name": r.get("name", ""), "controller": bool(r.get("controller", False))}
                for r in meta.get("ownerReferences") or ()
            ],
            "resourceVersion": meta.get("resourceVersion", ""),
            "creationTimestamp": meta.get("creationTimestamp") or "",
        },
        "nodeName": (obj.get("spec") or {}).get("nodeName", ""),
        "phase": (obj.get("status") or {}).get("phase", ""),
        # where its model server answers, for the serving counters (collectors/serving.py)
        "podIP": (obj.get("status") or {}).get("podIP", ""),
        "annotations": {k: str(v) for k, v in (meta.get("annotations") or {}).items()
                        if k.startswith("prometheus.io/")},
        "ports": [{"name": p.get("name", ""), "containerPort": p.get("containerPort")}
                  for c in (obj.get("spec") or {}).get("containers") or () for p in c.get("ports") or ()
                  if p.get("containerPort")],
    }


def slim_node(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A node's name, uid and labels."""
    meta = obj.get("metadata") or {}
    return {
        "metadata": {
            "uid": meta.get("uid", ""),
            "name": meta.get("name", ""),
            "namespace": "",
            "labels": dict(meta.get("labels") or {}),
            "resourceVersion": meta.get("resourceVersion", ""),
        }
    }


# --------------------------------------------------------------------------- informer


@dataclass(frozen=True)
class WatchSettings:
    """Timing of list and watch. The defaults suit a node agent; tests shorten them."""

    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    watch_timeout_s: int = 300
    connect_timeout_s: float = 5.0
    #: A watch with no bytes for this long is dead (the server sends bookmarks well within it).
    read_timeout_s: float = 360.0


class _Gone(Exception):
    """The server no longer has the resourceVersion we asked for: relist."""


class _WatchError(Exception):
    """The server sent an ERROR event other than 410."""


class Informer:
    """List, then watch, one kind of object matching a field selector, into a cache.

    ``client`` GETs ``path``, a collection such as ``/api/v1/pods`` (None: an informer
    that is only fed through :meth:`handle_line`). The cache maps UID to the slimmed object;
    ``by_name`` maps (namespace, name) to UID; ``version`` goes up on every change, so a
    reader can tell cheaply whether anything moved. Start it with :meth:`start`.
    """

    def __init__(
        self,
        what: str,
        client: KubeClient | None,
        path: str,
        slim: Callable[[Mapping[str, Any]], dict[str, Any]],
        field_selector: str = "",
        label_selector: str = "",
        faults: FaultCounter | None = None,
        settings: WatchSettings = WatchSettings(),
    ) -> None:
        self.what = what
        self._client = client
        self.path = path
        self._slim = slim
        self._selectors = {k: v for k, v in (("fieldSelector", field_selector),
                                              ("labelSelector", label_selector)) if v}
        self.faults = faults or FAULTS
        self.settings = settings
        self.cache: dict[str, dict[str, Any]] = {}
        self.by_name: dict[tuple[str, str], str] = {}
        self.version = 0
        self.resource_version: str | None = None
        self.synced = threading.Event()
        self.lists = 0
        self.watches = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resp: Any = None

    # ------------------------------------------------------------------ the cache

    def apply(self, event_type: str, obj: Mapping[str, Any]) -> bool:
        """Apply one watch event; True when the cache changed. Cheap: this runs per event."""
        if event_type == "BOOKMARK":
            self.resource_version = (obj.get("metadata") or {}).get("resourceVersion") or self.resource_version
            return False
        slim = self._slim(obj)
        meta = slim["metadata"]
        uid = meta["uid"]
        if meta["resourceVersion"]:
            self.resource_version = meta["resourceVersion"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            if event_type == "DELETED":
                if self.cache.pop(uid, None) is None:
                    return False
                if self.by_name.get(key) == uid:
                    del self.by_name[key]
            else:
                old = self.cache.get(uid)
                if old is not None and _same(old, slim):
                    return False
                self.cache[uid] = slim
                self.by_name[key] = uid
            self.version += 1
        return True

    def replace(self, items: list[Mapping[str, Any]], resource_version: str | None) -> None:
        """Replace the whole cache with a list's items (after a start or a 410)."""
        slims = [self._slim(item) for item in items]
        cache = {s["metadata"]["uid"]: s for s in slims}
        by_name = {(s["metadata"]["namespace"], s["metadata"]["name"]): s["metadata"]["uid"] for s in slims}
        with self._lock:
            changed = cache.keys() != self.cache.keys() or any(
                not _same(self.cache[uid], s) for uid, s in cache.items()
            )
            self.cache, self.by_name = cache, by_name
            if changed:
                self.version += 1
        self.resource_version = resource_version

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            uid = self.by_name.get((namespace, name))
            return self.cache.get(uid) if uid is not None else None

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.cache.values())

    # ------------------------------------------------------------------ the loop

    def start(self) -> "Informer":
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.what}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        _shutdown(self._resp)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        delay = self.settings.backoff_initial_s
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self._list()
                self._watch()
                delay = self.settings.backoff_initial_s
                continue
            except _Gone:
                self.faults.record(COLLECTOR, f"{self.what}_watch_gone", "410 Gone: the resourceVersion expired; relisting")
                self.resource_version = None
                continue
            except Exception as err:  # noqa: BLE001 - every fault is counted; the loop never dies
                if self._stop.is_set():
                    break
                self.faults.record(COLLECTOR, f"{self.what}_{_fault_kind(err)}", _describe(err))
            self._stop.wait(delay)
            delay = min(delay * 2, self.settings.backoff_max_s)

    def _timeouts(self) -> tuple[float, float]:
        return (self.settings.connect_timeout_s, self.settings.read_timeout_s)

    def _list(self) -> None:
        assert self._client is not None, "an informer without a client cannot list"
        body = json.loads(self._client.get(self.path, self._selectors, timeout=self._timeouts()).data)
        self.lists += 1
        self.replace(body.get("items") or [], (body.get("metadata") or {}).get("resourceVersion"))
        self.synced.set()

    def _watch(self) -> None:
        assert self._client is not None, "an informer without a client cannot watch"
        query = dict(self._selectors, watch=True, resourceVersion=self.resource_version,
                     allowWatchBookmarks=True, timeoutSeconds=self.settings.watch_timeout_s)
        try:
            resp = self._client.get(self.path, query, stream=True, timeout=self._timeouts())
        except KubeError as err:
            if err.status == GONE:  # said as an HTTP status rather than an ERROR event
                raise _Gone() from None
            raise
        self._resp = resp
        self.watches += 1
        try:
            if self._stop.is_set():
                return
            for line in iter_lines(resp):
                if self._stop.is_set():
                    return
                self.handle_line(line)
        finally:
            self._resp = None
            release(resp)

    def handle_line(self, line: str | bytes) -> bool:
        """Decode one watch line and apply it; raises _Gone on a 410 ERROR event."""
        event = json.loads(line)
        event_type = event.get("type")
        obj = event.get("object") or {}
        if event_type == "ERROR":
            if obj.get("code") == GONE:
                raise _Gone()
            raise _WatchError(f"{obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
        return self.apply(event_type, obj)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal but for resourceVersion (a status-only update changes nothing we keep)."""
    ma, mb = a["metadata"], b["metadata"]
    return (
        ma["labels"] == mb["labels"] and ma.get("ownerReferences") == mb.get("ownerReferences")
        and ma["name"] == mb["name"] and a.get("phase") == b.get("phase")
        and a.get("nodeName") == b.get("nodeName")
    )


def _fault_kind(err: BaseException) -> str:
    """A short, stable name for a fault, for counting and logging once."""
    status = getattr(err, "status", None)
    if isinstance(status, int) and status:
        return f"http_{status}"
    if isinstance(err, _WatchError):
        return "watch_error_event"
    if isinstance(err, json.JSONDecodeError):
        return "bad_response"
    name = type(err).__name__
    if name in ("MaxRetryError", "NewConnectionError", "ConnectionRefusedError") or isinstance(err, ConnectionRefusedError):
        return "unreachable"
    if name in ("ProtocolError", "IncompleteRead", "InvalidChunkLength", "ConnectionResetError"):
        return "watch_dropped"
    if name in ("ReadTimeoutError", "TimeoutError", "ConnectTimeoutError"):
        return "timeout"
    if name in ("SSLError", "SSLCertVerificationError"):
        return "tls_error"
    if isinstance(err, KubeError):
        return "api_error"
    return "error"


def _describe(err: BaseException) -> str:
    """One line about a fault: for an HTTP error its status, reason and the server's message."""
    if isinstance(err, KubeError):
        return str(err).splitlines()[0]
    return f"{type(err).__name__}: {err}".splitlines()[0]


def _shutdown(resp: Any) -> None:
    """Unblock a thread reading a watch response, so stop() returns promptly."""
    if resp is None:
        return
    try:
        sock = getattr(getattr(resp, "connection", None), "sock", None)
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# --------------------------------------------------------------------------- wiring


def api_client_from_environment(kubeconfig: str | None = None,
                                service_account_dir: str = SERVICE_ACCOUNT_DIR) -> KubeClient:
    """The API client: ``kubeconfig`` when given, else the pod's service account, else
    the default kubeconfig (``$KUBECONFIG``, ``~/.kube/config``).

    In a pod this never imports the ``kubernetes`` package (:mod:`collectors.kubehttp`
    says why). ConfigError, naming what was tried, when nothing works.
    """
    if kubeconfig:
        return KubeClient.from_kubeconfig(kubeconfig)
    try:
        return KubeClient.in_cluster(service_account_dir)
    except ConfigError as in_cluster:
        try:
            return KubeClient.from_kubeconfig(None)
        except ConfigError as from_file:
            raise ConfigError(f"{in_cluster}; and {from_file}") from None


def pod_informer(client: KubeClient, node: str, faults: FaultCounter | None = None,
                 settings: WatchSettings = WatchSettings()) -> Informer:
    """An informer of the pods bound to ``node`` (``fieldSelector=spec.nodeName=NODE``)."""
    return Informer("pods", client, "/api/v1/pods", slim_pod,
                    field_selector=f"spec.nodeName={node}", faults=faults, settings=settings)


def node_informer(client: KubeClient, node: str, faults: FaultCounter | None = None,
                  settings: WatchSettings = WatchSettings()) -> Informer:
    """An informer of this node alone (``fieldSelector=metadata.name=NODE``)."""
    return Informer("node", client, "/api/v1/nodes", slim_node,
                    field_selector=f"metadata.name={node}", faults=faults, settings=settings)
