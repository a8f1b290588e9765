"""Request and token counters of the model servers in GPU pods: what one answer costs.

A model server (vLLM, SGLang, Hugging Face TGI, NVIDIA Triton, or any server the config
maps) counts requests and tokens in Prometheus counters on its own ``/metrics``. This
module reads them, turns cumulative counters into counts per interval (``serving``
trace records), and knows nothing of cost: the accounting joins those counts with the
GPU-seconds of the same pod.

* :func:`read_counters` parses an exposition with prometheus_client's own text parser
  and sums each field's metrics over their label sets (a vLLM serving two models
  reports both);
* :class:`CounterTracker` turns successive readings of one pod into increments: the
  first reading is a baseline, a value below the previous one is a counter reset (the
  server restarted inside the pod: the new value is all that was counted since), and a
  new pod UID is a new series;
* :class:`ServingScraper` reads the endpoints of the node's GPU pods concurrently, each
  within its timeout, on a thread of its own, so a slow or dead endpoint never holds up
  GPU sampling; failures are counted per kind.

``docs/unit-economics.md`` lists the metric names understood and how to map another
server.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Mapping, Sequence

from collectors.faults import FaultCounter

log = logging.getLogger(__name__)

COLLECTOR = "serving"
FIELDS = ("requests", "input_tokens", "output_tokens", "errors")

# Each server's counters, per field; a field's value is the sum of its metrics' samples
# over every label set. Names are the sample names in the text exposition.
SERVERS: dict[str, dict[str, tuple[str, ...]]] = {
    "vllm": {
        "requests": ("vllm:request_success_total",),
        "input_tokens": ("vllm:prompt_tokens_total",),
        "output_tokens": ("vllm:generation_tokens_total",),
    },
    "sglang": {
        "requests": ("sglang:num_requests_total",),
        "input_tokens": ("sglang:prompt_tokens_total",),
        "output_tokens": ("sglang:generation_tokens_total",),
        "errors": ("sglang:num_aborted_requests_total",),
    },
    "tgi": {
        "requests": ("tgi_request_success",),
        "input_tokens": ("tgi_request_input_length_sum",),
        "output_tokens": ("tgi_request_generated_tokens_sum",),
        "errors": ("tgi_request_failure",),
    },
    "triton": {
        "requests": ("nv_inference_request_success",),
        "errors": ("nv_inference_request_failure",),
    },
}


@dataclass(frozen=True)
class Counters:
    """Cumulative values of one endpoint at one time (None: the server does not count it)."""

    server: str
    requests: float | None = None
    input_tokens: float | None = None
    output_tokens: float | None = None
    errors: float | None = None

    def get(self, name: str) -> float | None:
        return getattr(self, name)


class ExpositionError(ValueError):
    """A body that is not a Prometheus text exposition, or holds no counter gpuledger knows."""


def read_counters(text: str, servers: Mapping[str, Mapping[str, Sequence[str]]] = SERVERS) -> Counters:
    """The known counters in one exposition; the server is the first whose requests metric appears.

    Only the lines of the counters named in ``servers`` (and their ``# TYPE``/``# HELP``
    lines) reach prometheus_client's parser: a model server's exposition is hundreds of
    lines of histograms, and parsing them all would cost the agent milliseconds a read.
    Raises :class:`ExpositionError` when the text does not parse or no server matches.
    """
    from prometheus_client.parser import text_string_to_metric_families

    wanted = _wanted(tuple((name, tuple((f, tuple(n)) for f, n in metrics.items()))
                           for name, metrics in servers.items()))
    kept = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[2] in wanted:
                kept.append(line)
        elif line.strip():
            end = len(line)
            for sep in ("{", " ", "\t"):
                at = line.find(sep)
                if 0 <= at < end:
                    end = at
            if line[:end] in wanted:
                kept.append(line)
    totals: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families("\n".join(kept) + "\n"):
            for sample in family.samples:
                if math.isfinite(sample.value):
                    totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    except (ValueError, TypeError, IndexError) as err:
        raise ExpositionError(f"not a Prometheus text exposition: {err}") from None
    if not kept and text.strip() and not _looks_like_exposition(text):
        raise ExpositionError("not a Prometheus text exposition")

    def value(name: str) -> float | None:
        # the parser names a counter's samples `<family>_total` even where the server wrote
        # no suffix (TGI, Triton): a configured name matches with or without it
        for candidate in (name, name + "_total", name[:-6] if name.endswith("_total") else None):
            if candidate is not None and candidate in totals:
                return totals[candidate]
        return None

    for server, metrics in servers.items():
        if all(value(n) is None for n in metrics.get("requests", ())):
            continue
        values = {}
        for name in FIELDS:
            found = [v for v in (value(n) for n in metrics.get(name, ())) if v is not None]
            values[name] = sum(found) if found else None
        return Counters(server, **values)
    raise ExpositionError("no request counter of a known server (vLLM, SGLang, TGI, Triton, or the config's "
                          "serving mappings)")


@lru_cache(maxsize=16)
def _wanted(servers: tuple) -> frozenset[str]:
    """Every metric and sample name the servers' fields may appear under (with and without _total);
    ``servers`` as nested tuples, so that it can be cached."""
    names = set()
    for _, metrics in servers:
        for _, field_names in metrics:
            for name in field_names:
                names |= {name, name + "_total", name[:-6] if name.endswith("_total") else name}
    return frozenset(names)


def _looks_like_exposition(text: str) -> bool:
    """A body of metric lines (``name{labels} value`` or ``name value``) and comments."""
    for line in text.splitlines()[:20]:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        head = line.split("{", 1)[0].split(None, 1)[0]
        if not head.replace(":", "_").replace("_", "a").isalnum():
            return False
    return True


@dataclass(frozen=True)
class Increment:
    """What one pod's server counted between two readings: the ``interval_s`` ending at ``ts``."""

    ts: float
    interval_s: float
    server: str
    requests: float | None
    input_tokens: float | None
    output_tokens: float | None
    errors: float | None
    reset: bool = False  # the counters went down: the server restarted inside the pod


@dataclass
class CounterTracker:
    """Successive readings of each pod, turned into increments."""

    _last: dict[str, tuple[float, Counters]] = field(default_factory=dict)

    def update(self, pod_uid: str, ts: float, counters: Counters) -> Increment | None:
        """The increment since the pod's previous reading (None for the first, a baseline)."""
        previous = self._last.get(pod_uid)
        self._last[pod_uid] = (ts, counters)
        if previous is None or ts <= previous[0]:
            return None
        before_ts, before = previous
        reset = any(counters.get(n) is not None and before.get(n) is not None and counters.get(n) < before.get(n)
                    for n in FIELDS)
        values = {}
        for name in FIELDS:
            now, then = counters.get(name), before.get(name)
            if now is None:
                values[name] = None
            elif reset or then is None or counters.server != before.server:
                values[name] = now  # counted from zero since the restart
            else:
                values[name] = now - then
        return Increment(ts, ts - before_ts, counters.server, reset=reset, **values)

    def forget(self, keep: Iterable[str]) -> None:
        """Drop pods no longer on the node (their series ended)."""
        wanted = set(keep)
        for uid in [u for u in self._last if u not in wanted]:
            del self._last[uid]


@dataclass(frozen=True)
class Endpoint:
    """Where one GPU pod's server answers."""

    pod_uid: str
    node: str
    url: str


def endpoints_of(pod: Mapping, node: str, ports: Sequence[str | int] = ()) -> list[Endpoint]:
    """The metrics URLs of a pod object (slimmed by :func:`collectors.kubeapi.slim_pod`).

    The ``prometheus.io/scrape: "true"`` annotation with ``prometheus.io/port`` (default
    the first container port) and ``prometheus.io/path`` (default ``/metrics``), or else
    each container port whose name or number is in ``ports``.
    """
    meta = pod.get("metadata") or {}
    ip = pod.get("podIP") or ""
    uid = meta.get("uid") or ""
    if not ip or not uid:
        return []
    notes = pod.get("annotations") or {}
    declared = pod.get("ports") or []
    host = f"[{ip}]" if ":" in ip else ip
    if str(notes.get("prometheus.io/scrape", "")).lower() == "true":
        port = notes.get("prometheus.io/port") or (declared[0].get("containerPort") if declared else None)
        if not port:
            return []
        path = notes.get("prometheus.io/path") or "/metrics"
        path = path if path.startswith("/") else "/" + path
        return [Endpoint(uid, node, f"http://{host}:{port}{path}")]
    wanted = {str(p) for p in ports}
    out = []
    for p in declared:
        if str(p.get("name", "")) in wanted or str(p.get("containerPort", "")) in wanted:
            out.append(Endpoint(uid, node, f"http://{host}:{p.get('containerPort')}/metrics"))
    return out[:1]


class ServingScraper:
    """Reads the serving endpoints of the node's GPU pods every ``interval_s``, off the sampling path.

    ``targets()`` returns the endpoints to read (the placement's GPU pods); the scraper
    keeps the increments it has found until :meth:`drain` takes them. Each read costs at
    most ``timeout_s``; reads run on up to ``workers`` threads, and a round that is still
    running when the next is due is skipped (counted), so the scraper never piles up.
    """

    def __init__(self, targets: Callable[[], Sequence[Endpoint]], interval_s: float = 15.0,
                 timeout_s: float = 2.0, workers: int = 8, faults: FaultCounter | None = None,
                 servers: Mapping[str, Mapping[str, Sequence[str]]] = SERVERS,
                 fetch: Callable[[str, float], str] | None = None) -> None:
        self.targets = targets
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.faults = faults or FaultCounter()
        self.servers = servers
        self.fetch = fetch or http_get
        self.tracker = CounterTracker()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="serving")
        self._found: list[tuple[Endpoint, Increment]] = []
        self._lock = threading.Lock()
        self._busy = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0
        self.endpoints = 0

    def start(self) -> "ServingScraper":
        self._thread = threading.Thread(target=self._run, name="serving-scraper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 1.0)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.scrape_once()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def scrape_once(self) -> int:
        """One round over every endpoint; returns how many gave an increment."""
        if not self._busy.acquire(blocking=False):
            self.faults.record(COLLECTOR, "round_skipped")
            return 0
        try:
            targets = list(self.targets())
            self.endpoints = len(targets)
            self.tracker.forget(t.pod_uid for t in targets)
            results = list(self._pool.map(self._read, targets))
            found = [(t, inc) for t, inc in zip(targets, results) if inc is not None]
            with self._lock:
                self._found.extend(found)
            self.rounds += 1
            return len(found)
        finally:
            self._busy.release()

    def _read(self, endpoint: Endpoint) -> Increment | None:
        try:
            text = self.fetch(endpoint.url, self.timeout_s)
            counters = read_counters(text, self.servers)
        except TimeoutError:
            self.faults.record(COLLECTOR, "timeout")
            return None
        except ExpositionError:
            self.faults.record(COLLECTOR, "not_a_server")
            return None
        except OSError:
            self.faults.record(COLLECTOR, "unreachable")
            return None
        increment = self.tracker.update(endpoint.pod_uid, time.time(), counters)
        if increment is not None and increment.reset:
            self.faults.record(COLLECTOR, "counter_reset")
        return increment

    def drain(self) -> list[tuple[Endpoint, Increment]]:
        """The increments found since the last call."""
        with self._lock:
            found, self._found = self._found, []
        return found


def http_get(url: str, timeout_s: float) -> str:
    """The body of a GET within ``timeout_s`` in all; TimeoutError or OSError otherwise.

    Connections are kept open between reads (model servers speak HTTP/1.1), one per
    endpoint: a new TCP connection and its handshake every 15 s would be most of the
    cost of a read.
    """
    import http.client
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise OSError(f"not an http:// URL: {url!r}")
    key = (parts.hostname, parts.port or 80)
    conn = _CONNECTIONS.pop(key, None) or http.client.HTTPConnection(key[0], key[1], timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    try:
        conn.timeout = timeout_s
        if conn.sock is not None:
            conn.sock.settimeout(timeout_s)
        conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                     headers={"Accept": "text/plain", "User-Agent": "gpuledger"})
        resp = conn.getresponse()
        chunks, size = [], 0
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: no whole answer within {timeout_s:g} s")
            chunk = resp.read(1 << 16)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_BODY:
                raise ExpositionError(f"the exposition is larger than {MAX_BODY} bytes")
            chunks.append(chunk)
        if resp.status != 200:
            raise OSError(f"HTTP {resp.status}")
        if not resp.will_close:
            _CONNECTIONS[key] = conn  # whole answer read: reusable
        else:
            conn.close()
        return b"".join(chunks).decode("utf-8", errors="replace")
    except TimeoutError as err:  # socket.timeout is TimeoutError
        conn.close()
        raise TimeoutError(f"{url}: {err}") from None
    except http.client.HTTPException as err:  # a broken answer: not an OSError of its own
        conn.close()
        raise OSError(f"{url}: {err!r}") from None
    except BaseException:
        conn.close()
        raise


MAX_BODY = 8 << 20  # a model server's exposition is tens of kilobytes; this bounds a broken one
_CONNECTIONS: dict[tuple[str, int], object] = {}  # idle kept-alive connections, by endpoint
class ServingSource:
    """A RecordSource that adds the scraper's increments, as ``serving`` records, to another's records.

    The scraper runs on its own thread; a poll only drains what it has found, so reading
    model servers never delays the GPU sample it rides along with.
    """

    def __init__(self, inner, scraper: ServingScraper) -> None:
        self.inner = inner
        self.scraper = scraper

    def poll(self, now: float) -> list:
        records = self.inner.poll(now)
        return records + [serving_record(endpoint, inc) for endpoint, inc in self.scraper.drain()]

    @property
    def problem(self) -> str | None:
        return getattr(self.inner, "problem", None)

    def close(self) -> None:
        try:
            self.scraper.stop()
        finally:
            self.inner.close()


def serving_record(endpoint: Endpoint, inc: Increment):
    """The trace record of one increment (trace format 1.1)."""
    from collectors.records import ServingRecord

    return ServingRecord(ts=inc.ts, node=endpoint.node, pod_uid=endpoint.pod_uid, interval_s=inc.interval_s,
                         requests=inc.requests, input_tokens=inc.input_tokens, output_tokens=inc.output_tokens,
                         errors=inc.errors)
