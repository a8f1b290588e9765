"""Ledger history from Prometheus: hourly range queries over the agent's metrics, turned into rows.

The agent's counters (``docs/metrics.md``) hold every node's cost history in the
cluster's Prometheus; ``gpuledger report --prometheus`` reads them back hour by hour
instead of reading ledger files. Two halves, kept apart:

* I/O: :func:`query_range` (one ``/api/v1/query_range`` request, ``urllib`` only) and
  :func:`fetch` (every query of :data:`QUERIES` over a window, split into several
  range queries so no answer comes near Prometheus's 11,000 points per series).
* Pure conversion: :func:`hour_rows` turns the answers (the ``data.result`` matrices)
  into hour rows shaped like ledger rows (``docs/ledger.md``): one per hour, node,
  device and pod where the device gauges name the pod, one per hour, node and workload
  where they do not (time-shared GPUs), one per hour, node and device for unallocated
  capacity; :func:`spread_minutes` spreads the report window's hours over their minutes,
  which is what the recommenders count in.

Alignment: a range query evaluated at ``t`` with ``increase(x[1h])`` covers the hour
``[t − 1h, t]`` (Prometheus 2.x includes both ends; 3.x leaves the start out). Steps are
whole hours, so each row's hour starts at ``t − 1h`` and the hours tile the window:
``increase()`` takes the difference between the last and the first sample of the hour
and scales it to the whole hour when the samples do not reach the edges, so a counter
scraped on the hour is counted exactly once, and one scraped off the hour is
extrapolated at each edge by less than one scrape interval; the extrapolation of one
hour and of the next cancel for a steady rate. See docs/report.md ("From Prometheus").
"""

from __future__ import annotations

import json
import math
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from collectors.metricfamilies import (
    GPU_HOURLY_PRICE, GPU_MEMORY_TOTAL, GPU_MEMORY_USED, GPU_UTILIZATION, POD_INFO, counters_of, labels_of,
)

HOUR = 3600
MAX_POINTS = 11_000  # Prometheus refuses a range query with more points per series than this
POINTS_PER_QUERY = 24 * 7  # a week of hours per request keeps each answer small
TIMEOUT_S = 60.0

# the agent's metrics as collectors/metricfamilies.py declares them: ledger column -> counter
_WORKLOAD = counters_of("workload")
_UNALLOCATED = counters_of("unallocated")
_SERVED = counters_of("serving")
# the ledger columns hour_rows reads from counters, in the order it unpacks them
COUNTERS = ("allocated_gpu_seconds", "used_gpu_seconds", "util_unknown_gpu_seconds", "cost", "idle_cost")
UNALLOCATED = ("unallocated_gpu_seconds", "unallocated_cost")
SERVING = ("requests", "input_tokens", "output_tokens")

COUNTER_LABELS = _WORKLOAD["allocated_gpu_seconds"].labels
NODE_LABELS = _UNALLOCATED["unallocated_gpu_seconds"].labels
DEVICE_LABELS = GPU_UTILIZATION.labels
# the order _node_prices unpacks; zone is read if an agent adds it (the agent declares none)
PRICE_LABELS = (*labels_of(GPU_HOURLY_PRICE, "node", "gpu_model", "instance_type", "capacity_type", "source",
                           "currency", "region"), "zone")

# a gauge's hour: 1 ms short of an hour, so that a sample exactly on the hour belongs to one hour only
GAUGE_RANGE = "3599999ms"


def _by(labels: Sequence[str]) -> str:
    return ", ".join(labels)


def _increase(metric: str, labels: Sequence[str]) -> str:
    return f"sum by ({_by(labels)}) (increase({metric}[1h]))"


def _gauge(fn: str, metric: str, labels: Sequence[str]) -> str:
    return f"max by ({_by(labels)}) ({fn}({metric}[{GAUGE_RANGE}]))"


# name -> PromQL, evaluated at every whole hour of the window
QUERIES: dict[str, str] = {
    **{c: _increase(_WORKLOAD[c].sample, COUNTER_LABELS) for c in COUNTERS},
    **{c: _increase(_UNALLOCATED[c].sample, NODE_LABELS) for c in UNALLOCATED},
    # region is on the price gauge (docs/metrics.md); zone is read if an agent adds it
    "price": _gauge("last_over_time", GPU_HOURLY_PRICE.sample, PRICE_LABELS),
    "memory_total": _gauge("max_over_time", GPU_MEMORY_TOTAL.sample, GPU_MEMORY_TOTAL.labels),
    "memory_max": _gauge("max_over_time", GPU_MEMORY_USED.sample, DEVICE_LABELS),
    "presence": _gauge("count_over_time", GPU_MEMORY_USED.sample, DEVICE_LABELS),
    "util_mean": _gauge("avg_over_time", GPU_UTILIZATION.sample, DEVICE_LABELS),
    # the share of the hour's minutes in which the device did any work (the ledger's active seconds)
    "util_active": (f"max by ({_by(DEVICE_LABELS)}) (avg_over_time(({GPU_UTILIZATION.sample} > bool 0)"
                    f"[{GAUGE_RANGE}:1m]))"),
}
# serving counts (docs/unit-economics.md): the agent's own counters per workload, and the model
# servers' counters as Prometheus scraped them from the pods, joined to their workloads through
# the agent's gpuledger_pod_info gauge (for workloads whose agents did not read them)
SERVER_LABELS = tuple(n for n in POD_INFO.labels if n != "pod")  # the pod info's labels but the pod's name
for _name in SERVING:
    QUERIES[_name] = _increase(_SERVED[_name].sample, COUNTER_LABELS)


def _server_metric_names(field: str) -> str:
    """A regex of every known server's counter names for ``field`` (with and without _total)."""
    from collectors.serving import SERVERS

    names = set()
    for metrics in SERVERS.values():
        for name in metrics.get(field, ()):
            names |= {name, name[:-6] if name.endswith("_total") else name + "_total"}
    return "|".join(sorted(names))


for _name in SERVING:
    QUERIES[f"server_{_name}"] = (
        f"sum by ({_by(SERVER_LABELS)}) (increase({{__name__=~\"{_server_metric_names(_name)}\"}}[1h]) "
        f"* on (namespace, pod) group_left ({_by(SERVER_LABELS[0:1] + SERVER_LABELS[2:])}) "
        f"max by (namespace, pod, {_by(SERVER_LABELS[0:1] + SERVER_LABELS[2:])}) "
        f"(max_over_time({POD_INFO.sample}[{GAUGE_RANGE}])))")
# the shape of each device-hour's utilisation, for spreading the hour over its minutes (spread_minutes)
UTIL_QUANTILES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
for _q in UTIL_QUANTILES:
    QUERIES[f"util_q{_q:g}"] = (f"max by ({_by(DEVICE_LABELS)}) (quantile_over_time({_q:g}, "
                                f"{GPU_UTILIZATION.sample}[{GAUGE_RANGE}]))")
# needed for the report window only (the right-sizing evidence); the rest for the whole look-back
DETAIL = ("memory_max", "util_mean", "util_active", *(f"util_q{q:g}" for q in UTIL_QUANTILES))


class PrometheusError(Exception):
    """Prometheus could not be reached, refused a query, or holds no gpuledger history (one line)."""


# --------------------------------------------------------------------------- I/O


Opener = Callable[..., Any]


def query_range(url: str, expr: str, start: float, end: float, step: float, timeout: float = TIMEOUT_S,
                opener: Opener = urllib.request.urlopen) -> list[dict]:
    """The ``data.result`` matrix of one range query; :class:`PrometheusError` otherwise."""
    base = check_url(url)
    params = urllib.parse.urlencode({"query": expr, "start": _num(start), "end": _num(end), "step": _num(step),
                                     "timeout": f"{max(int(timeout), 1)}s"}).encode()
    request = urllib.request.Request(base + "/api/v1/query_range", data=params, method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded",
                                              "Accept": "application/json"})
    try:
        with opener(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as err:
        detail = _api_error(err.read()) or err.reason
        raise PrometheusError(f"Prometheus at {url} answered HTTP {err.code} to a range query: {detail}") from None
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise PrometheusError(f"Prometheus at {url} did not answer within {timeout:g} s") from None
        text = getattr(reason, "strerror", None) or str(reason)
        raise PrometheusError(f"cannot reach Prometheus at {url}: {text}") from None
    except (socket.timeout, TimeoutError):
        raise PrometheusError(f"Prometheus at {url} did not answer within {timeout:g} s") from None
    except OSError as err:
        raise PrometheusError(f"cannot reach Prometheus at {url}: {err.strerror or err}") from None
    try:
        doc = json.loads(body)
    except ValueError:
        raise PrometheusError(f"{url} did not answer like the Prometheus HTTP API (not JSON): "
                              "is it the Prometheus base URL?") from None
    if not isinstance(doc, dict) or doc.get("status") != "success":
        detail = doc.get("error") if isinstance(doc, dict) else None
        raise PrometheusError(f"Prometheus at {url} failed a range query: {detail or 'no status'}")
    data = doc.get("data") or {}
    if data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
        raise PrometheusError(f"{url} answered a range query without a matrix: is it the Prometheus base URL?")
    return data["result"]


def check_url(url: str) -> str:
    """The URL without a trailing slash; :class:`PrometheusError` unless http(s) with a host."""
    parts = urllib.parse.urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PrometheusError(f"expected the Prometheus base URL, such as http://prometheus:9090, got {url!r}")
    return url.rstrip("/")


def _api_error(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc.get("error") if isinstance(doc, dict) else None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def chunks(start: float, end: float, step: float, points: int = POINTS_PER_QUERY) -> list[tuple[float, float]]:
    """``[start, end]`` at ``step`` as consecutive (first, last) evaluation times of at most ``points`` each."""
    if points < 1 or points > MAX_POINTS:
        raise ValueError(f"points per query must be 1 to {MAX_POINTS}, got {points}")
    if end < start:
        return []
    n = int(math.floor((end - start) / step + 1e-9)) + 1
    out = []
    for first in range(0, n, points):
        last = min(first + points, n) - 1
        out.append((start + first * step, start + last * step))
    return out


def merge(parts: Iterable[list[dict]]) -> list[dict]:
    """Matrices of consecutive chunks as one: the values of a label set concatenated in time order.

    Series come out sorted by their labels, so the rows (and their floating-point sums)
    do not depend on the order Prometheus answered in, nor on how the window was split.
    """
    series: dict[tuple, dict] = {}
    for part in parts:
        for s in part:
            key = tuple(sorted(s.get("metric", {}).items()))
            if key in series:
                series[key]["values"].extend(s.get("values", []))
            else:
                series[key] = {"metric": dict(s.get("metric", {})), "values": list(s.get("values", []))}
    return [series[k] for k in sorted(series)]


@dataclass(frozen=True)
class Answers:
    """Every query's matrix over the hours ending at ``first_end`` … ``last_end`` (inclusive)."""

    url: str
    first_end: float
    last_end: float
    results: Mapping[str, list[dict]]


def fetch(url: str, start: float, end: float, timeout: float = TIMEOUT_S, points: int = POINTS_PER_QUERY,
          opener: Opener = urllib.request.urlopen, queries: Mapping[str, str] | None = None,
          detail_from: float | None = None) -> Answers:
    """Run every query for the whole hours in ``[start, end)`` (both rounded to the hour).

    The :data:`DETAIL` queries (the right-sizing evidence, the heaviest answers) run from
    ``detail_from`` on only, when given: the report window. Raises
    :class:`PrometheusError` when Prometheus cannot be reached, refuses a query, or holds
    no gpuledger counter in the window.
    """
    check_url(url)
    first_end = (math.floor(start / HOUR) + 1) * HOUR
    last_end = math.floor(end / HOUR) * HOUR
    if last_end < first_end:
        raise PrometheusError("the window holds no whole hour")
    detail_end = max(first_end, (math.floor(detail_from / HOUR) + 1) * HOUR) if detail_from is not None else first_end
    results = {}
    for name, expr in (queries or QUERIES).items():
        lo = detail_end if name in DETAIL else first_end
        results[name] = merge(query_range(url, expr, a, b, HOUR, timeout, opener)
                              for a, b in chunks(lo, last_end, HOUR, points))
    if not any(results.get(n) for n in (*COUNTERS, *UNALLOCATED)):
        raise PrometheusError(
            f"Prometheus at {url} holds no gpuledger counters between {_iso(first_end - HOUR)} and {_iso(last_end)}: "
            "is it scraping the agent (docs/metrics.md), and is --until right?")
    return Answers(url, first_end, last_end, results)


def _iso(ts: float) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


# --------------------------------------------------------------------------- pure conversion


COLUMNS = ("minute", "node", "device_uuid", "parent_uuid", "mig_profile", "gpu_model", "gpu_memory_total_bytes",
           "pod_uid", "namespace", "pod", "team", "workload_class", "workload_kind", "workload_name",
           "instance_type", "region", "zone", "capacity_type", "price_source", "gpu_hourly_price",
           "allocated_gpu_seconds", "unallocated_gpu_seconds", "used_gpu_seconds", "util_unknown_gpu_seconds",
           "active_gpu_seconds", "memory_used_max_bytes", "cost", "idle_cost", "unallocated_cost", "minutes",
           "util_quantiles", *SERVING)


@dataclass
class HourRows:
    """Ledger-shaped rows, one hour each (``minute`` is the hour's start), as columns of lists.

    Two columns are not the ledger's: ``minutes`` says over how many minutes of its hour a
    pod's row was held (from the device gauges' sample counts; 60 where unknown), and
    ``util_quantiles`` holds the device's utilisation quantiles in that hour
    (:data:`UTIL_QUANTILES`; None where the gauge has none), so that
    :func:`spread_minutes` can spread the hour over its minutes.
    """

    columns: dict[str, list]
    currency: str
    first_hour: float | None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.columns["minute"])


def _label(metric: Mapping[str, str], name: str) -> str | None:
    value = metric.get(name)
    return value if value else None  # Prometheus drops empty labels: empty and absent are one


def per_hour(matrix: Iterable[dict], labels: Sequence[str]) -> dict[int, dict[tuple, float]]:
    """hour start -> {label values: value}, from a matrix evaluated at hour ends; NaN skipped, duplicates summed."""
    out: dict[int, dict[tuple, float]] = {}
    for s in matrix:
        metric = s.get("metric", {})
        key = tuple(_label(metric, n) for n in labels)
        for ts, value in s.get("values", []):
            v = float(value)
            if math.isnan(v):
                continue
            hour = int(round(float(ts))) - HOUR
            slot = out.setdefault(hour, {})
            slot[key] = slot.get(key, 0.0) + v
    return out


def split_workload(workload: str | None) -> tuple[str | None, str | None]:
    """``'Kind/name'`` -> (kind, name); a label without a slash is a name of no known kind."""
    if not workload:
        return None, None
    kind, sep, name = workload.partition("/")
    return (kind, name) if sep else (None, workload)


def owner_of(pod: str, names: Sequence[str]) -> str | None:
    """The workload name among ``names`` that ``pod`` belongs to, or None.

    A pod is named after its top owner (``chat-7d9f8-x2k4q`` of Deployment ``chat``,
    ``train-worker-0`` of PyTorchJob ``train``, a bare pod after itself): the longest name
    that the pod's name equals or starts with followed by ``-``. With no such name and a
    single candidate, that one.
    """
    best = None
    for name in names:
        if (pod == name or pod.startswith(name + "-")) and (best is None or len(name) > len(best)):
            best = name
    if best is None and len(set(names)) == 1:
        best = names[0]
    return best


def _is_mig(uuid: str | None) -> bool:
    return bool(uuid) and uuid.startswith("MIG-")


def mig_parents(memory_total: Mapping[int, Mapping[tuple, float]], util_devices: set[tuple]) -> dict[tuple, str]:
    """(node, gpu_model) -> the physical GPU its MIG slices are counted on.

    The gauges do not say which GPU a slice belongs to; only the node's count of physical
    GPUs depends on it. A GPU in MIG mode reports no utilisation, so the first such GPU
    of the node and model is taken, else the first GPU.
    """
    gpus: dict[tuple, set[str]] = {}
    for slot in memory_total.values():
        for node, model, uuid in slot:
            if uuid and not _is_mig(uuid):
                gpus.setdefault((node, model), set()).add(uuid)
    out = {}
    for key, uuids in gpus.items():
        quiet = sorted(u for u in uuids if (key[0], key[1], u) not in util_devices)
        out[key] = quiet[0] if quiet else sorted(uuids)[0]
    return out


def hour_rows(answers: Mapping[str, list[dict]], default_region: str | None = None) -> HourRows:
    """The answers of :data:`QUERIES` as ledger-shaped hour rows (see the module docstring)."""
    counters = {n: per_hour(answers.get(n, []), COUNTER_LABELS) for n in COUNTERS}
    unalloc = {n: per_hour(answers.get(n, []), NODE_LABELS) for n in UNALLOCATED}
    prices = per_hour(answers.get("price", []), PRICE_LABELS)
    mem_total = per_hour(answers.get("memory_total", []), GPU_MEMORY_TOTAL.labels)
    mem_max = per_hour(answers.get("memory_max", []), DEVICE_LABELS)
    presence = per_hour(answers.get("presence", []), DEVICE_LABELS)
    util_mean = per_hour(answers.get("util_mean", []), DEVICE_LABELS)
    util_active = per_hour(answers.get("util_active", []), DEVICE_LABELS)
    util_q = [per_hour(answers.get(f"util_q{q:g}", []), DEVICE_LABELS) for q in UTIL_QUANTILES]
    served = {n: per_hour(answers.get(n, []), COUNTER_LABELS) for n in SERVING}
    server_served = {n: per_hour(answers.get(f"server_{n}", []), SERVER_LABELS) for n in SERVING}

    total_bytes: dict[tuple, float] = {}
    for slot in mem_total.values():
        for (node, model, uuid), v in slot.items():
            total_bytes[(node, model, uuid)] = max(v, total_bytes.get((node, model, uuid), 0.0))
    util_devices = {(k[0], k[1], k[2]) for slot in util_mean.values() for k in slot}
    parents = mig_parents(mem_total, util_devices)
    currencies = {k[5] for slot in prices.values() for k in slot if k[5]}
    if len(currencies) > 1:
        raise PrometheusError(f"{GPU_HOURLY_PRICE.sample} carries several currencies "
                              f"({', '.join(sorted(currencies))}); a report is in one")
    notes = []
    if not prices:
        notes.append(f"No {GPU_HOURLY_PRICE.sample} series: instance types, capacity types and the currency are "
                     "unknown (USD assumed), so commitments cannot be priced.")
    if not presence:
        notes.append(f"No device gauges ({GPU_MEMORY_USED.sample}): pods, GPUs per pod and memory peaks are "
                     "unknown, so right-sizing that needs memory is skipped and each workload counts as one pod per node.")

    cols: dict[str, list] = {c: [] for c in COLUMNS}
    named: dict[tuple, set[str]] = {}  # (node, namespace, kind, name) -> pods the gauges named
    unnamed: list[int] = []  # rows of workloads the gauges did not name that hour
    shared: set[tuple] = set()  # workloads with such rows
    hours = sorted(set().union(*(counters[n].keys() for n in COUNTERS), *(unalloc[n].keys() for n in UNALLOCATED)))
    first_hour = None
    for hour in hours:
        workloads: dict[tuple, list[float]] = {}
        for i, name in enumerate(COUNTERS):
            for key, v in counters[name].get(hour, {}).items():
                workloads.setdefault(key, [0.0] * len(COUNTERS))[i] += v
        workloads = {k: v for k, v in workloads.items() if any(x != 0 for x in v)}
        spare: dict[tuple, list[float]] = {}
        for i, name in enumerate(UNALLOCATED):
            for key, v in unalloc[name].get(hour, {}).items():
                spare.setdefault(key, [0.0, 0.0])[i] += v
        spare = {k: v for k, v in spare.items() if any(x != 0 for x in v)}
        if not workloads and not spare:
            continue
        first_hour = hour if first_hour is None else min(first_hour, hour)
        hour_ctx = _Hour(hour, presence.get(hour, {}), mem_max.get(hour, {}), util_mean.get(hour, {}),
                         util_active.get(hour, {}), [q.get(hour, {}) for q in util_q], total_bytes, parents)
        price = _node_prices(prices.get(hour, {}), workloads, spare)

        def emit(node, model, values: dict) -> None:
            p = price.get((node, model), {})
            for c in COLUMNS:
                if c in values:
                    cols[c].append(values[c])
                elif c in ("instance_type", "capacity_type", "price_source", "zone"):
                    cols[c].append(p.get(c))
                elif c == "region":
                    cols[c].append(p.get("region") or default_region)
                elif c == "gpu_hourly_price":
                    cols[c].append(p.get("hourly", float("nan")))
                else:
                    cols[c].append(None)

        candidates: dict[tuple, list[str]] = {}
        for node, model, ns, team, cls, wl in workloads:
            if ns:
                kind, name = split_workload(wl)
                if name:
                    candidates.setdefault((node, model, ns), []).append(name)
        owned: dict[tuple, list[tuple]] = {}  # (node, model, namespace, workload name) -> its pods' devices
        for dev in hour_ctx.presence:
            node, model, uuid, ns, pod = dev
            if pod and ns:
                owner = owner_of(pod, candidates.get((node, model, ns), []))
                if owner is not None:
                    owned.setdefault((node, model, ns, owner), []).append(dev)

        counts = _serving_counts(hour, served, server_served)
        for (node, model, ns, team, cls, wl), values in sorted(workloads.items(), key=_sort_key):
            kind, name = split_workload(wl)
            base = {"minute": hour, "node": node, "gpu_model": model, "namespace": ns, "team": team,
                    "workload_class": cls, "workload_kind": kind, "workload_name": name}
            # the workload's counts that hour on that node go on its first row (as the ledger puts a
            # pod's on its first GPU's row): the agent's per GPU model, the servers' on the first model
            base.update(counts.pop((node, model, ns, team, cls, wl), None) or
                        counts.pop((node, None, ns, team, cls, wl), None) or {})
            for row in hour_ctx.split(owned.get((node, model, ns, name), []), values, node, model, ns, kind, name):
                if row["pod"] is None:
                    unnamed.append(len(cols["minute"]))
                    shared.add((ns, kind, name))
                else:
                    named.setdefault((node, ns, kind, name), set()).add(row["pod_uid"])
                emit(node, model, {**base, **row})
                for c in SERVING:
                    base.pop(c, None)  # on the first row only
        for (node, model), (seconds, money) in sorted(spare.items(), key=_sort_key):
            for row in hour_ctx.spare(node, model, seconds, money):
                emit(node, model, {"minute": hour, "node": node, "gpu_model": model, **row})
    for i in unnamed:  # a workload named in other hours by its only pod on the node: that pod
        pods = named.get((cols["node"][i], cols["namespace"][i], cols["workload_kind"][i], cols["workload_name"][i]))
        if pods and len(pods) == 1:
            cols["pod_uid"][i] = next(iter(pods))
            cols["pod"][i] = cols["pod_uid"][i].split("/", 1)[1]
    if any(_is_mig(u) for u in cols["device_uuid"]):
        notes.append("The metrics do not name MIG profiles: MIG slices show as their GPU model, without the profile.")
    if shared and presence:
        names = sorted(f"{ns}/{name}" for ns, kind, name in shared)
        notes.append(f"{len(names)} workload(s) ran where the device gauges name no single pod (time-shared GPUs: "
                     f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''}): their memory is the whole GPU's "
                     "(a safe overestimate) and each counts as one pod per node.")
    currency = next(iter(currencies)) if currencies else "USD"
    return HourRows(cols, currency, first_hour, notes)


def _serving_counts(hour: int, served: Mapping[str, Mapping[int, Mapping[tuple, float]]],
                    server_served: Mapping[str, Mapping[int, Mapping[tuple, float]]]) -> dict[tuple, dict]:
    """The hour's serving counts by (node, gpu_model, namespace, team, class, workload): the
    agent's counters where it read the servers; the servers' own (joined through the pod info
    gauge, gpu_model None) for the workloads it did not."""
    out: dict[tuple, dict] = {}
    for name in SERVING:
        for key, v in served[name].get(hour, {}).items():
            out.setdefault(key, {})[name] = out.get(key, {}).get(name, 0.0) + v
    by_agent = {(k[0], *k[2:]) for k in out}
    for name in SERVING:
        for (node, ns, team, cls, wl), v in server_served[name].get(hour, {}).items():
            if (node, ns, team, cls, wl) in by_agent:
                continue
            key = (node, None, ns, team, cls, wl)
            out.setdefault(key, {})[name] = out.get(key, {}).get(name, 0.0) + v
    return out


def _sort_key(item) -> tuple:
    return tuple("" if x is None else str(x) for x in item[0])


def _node_prices(slot: Mapping[tuple, float], workloads: Mapping[tuple, list[float]],
                 spare: Mapping[tuple, list[float]]) -> dict[tuple, dict]:
    """(node, gpu_model) -> price labels and the hour's price per GPU-hour.

    The price is what the counters charged per GPU-hour that hour (cost over seconds, the
    ledger's price averaged over the hour); the gauge's value where nothing was counted.
    Of several label sets in one hour (the price changed), the higher price's labels win.
    """
    out: dict[tuple, dict] = {}
    for key, v in slot.items():
        node, model, itype, cap, source, currency, region, zone = key
        if (node, model) not in out or v > out[(node, model)]["hourly"]:
            out[(node, model)] = {"instance_type": itype, "capacity_type": cap, "price_source": source,
                                  "region": region, "zone": zone, "hourly": v}
    seconds: dict[tuple, float] = {}
    money: dict[tuple, float] = {}
    for (node, model, *_), values in workloads.items():
        seconds[(node, model)] = seconds.get((node, model), 0.0) + values[0]
        money[(node, model)] = money.get((node, model), 0.0) + values[3]
    for (node, model), (s, m) in spare.items():
        seconds[(node, model)] = seconds.get((node, model), 0.0) + s
        money[(node, model)] = money.get((node, model), 0.0) + m
    for key, s in seconds.items():
        if s > 0:
            out.setdefault(key, {})["hourly"] = money[key] / s * HOUR
    return out


@dataclass
class _Hour:
    """One hour's device gauges, and how a workload's or a node's counters spread over its devices."""

    hour: int
    presence: Mapping[tuple, float]
    mem_max: Mapping[tuple, float]
    util_mean: Mapping[tuple, float]
    util_active: Mapping[tuple, float]
    util_q: Sequence[Mapping[tuple, float]]
    total_bytes: Mapping[tuple, float]
    parents: Mapping[tuple, str]

    def __post_init__(self) -> None:
        self.full = max(self.presence.values(), default=0.0)  # samples of a device present all hour
        self.free: dict[tuple, list[tuple]] = {}  # (node, model) -> devices the gauges name no pod on
        for dev in self.presence:
            if not dev[4]:
                self.free.setdefault((dev[0], dev[1]), []).append(dev)
        self.known: dict[tuple, list[str]] = {}  # (node, model) -> every device uuid seen in the window
        for node, model, uuid in self.total_bytes:
            self.known.setdefault((node, model), []).append(uuid)
        for uuids in self.known.values():
            uuids.sort()

    def _device(self, node, model, uuid) -> dict:
        return {"device_uuid": uuid, "parent_uuid": self.parents.get((node, model)) if _is_mig(uuid) else None,
                "gpu_memory_total_bytes": self.total_bytes.get((node, model, uuid), float("nan"))}

    def _quantiles(self, dev: tuple | None) -> tuple | None:
        values = tuple(q.get(dev) for q in self.util_q) if dev is not None else ()
        return values if values and all(v is not None for v in values) else None

    def _minutes(self, dev: tuple) -> int:
        if self.full <= 0:
            return 60
        return int(min(60, max(1, round(60 * self.presence.get(dev, 0.0) / self.full))))

    def _active(self, dev: tuple, alloc: float, used: float) -> float:
        share = self.util_active.get(dev)
        if share is None:  # no utilisation gauge: active when the counters saw any use
            return alloc if used > 0 else 0.0
        return alloc * min(max(share, 0.0), 1.0)

    def split(self, devices: list[tuple], values: list[float], node, model, ns, kind, name) -> list[dict]:
        """A workload's counters on one node as rows: one per device its pods held, one for the rest.

        The devices the gauges name the workload's pods on can hold at most the time
        they were named (their samples' share of the hour); GPU-time beyond that was
        spent where no single pod was named (a time-shared GPU) and becomes a row of
        its own (:meth:`_shared`), each counter in proportion.
        """
        if not devices:
            return [self._shared(values, node, model, ns, kind, name)]
        devices = sorted(devices)
        if self.full <= 0:
            return self._named(devices, values, node, model)
        scrape = HOUR / self.full
        room = scrape * sum(self.presence.get(d, 0.0) for d in devices)
        # beyond the jitter of sampling and of increase()'s extrapolation at a series' end
        slack = 0.01 * values[0] + 2 * scrape * len(devices)
        rest = 1.0 - room / values[0] if values[0] > room + slack else 0.0
        if rest <= 0:
            return self._named(devices, values, node, model)
        extra = self._shared([v * rest for v in values], node, model, ns, kind, name)
        rows = self._named(devices, [v * (1.0 - rest) for v in values], node, model)
        for row in rows:  # the shared GPU is one the gauges named a pod on for part of the hour: one row
            if row["device_uuid"] == extra["device_uuid"]:
                for c in ("allocated_gpu_seconds", "used_gpu_seconds", "util_unknown_gpu_seconds",
                          "active_gpu_seconds", "cost", "idle_cost"):
                    row[c] += extra[c]
                row["memory_used_max_bytes"] = _fmax(row["memory_used_max_bytes"], extra["memory_used_max_bytes"])
                row["minutes"] = 60
                return rows
        return rows + [extra]

    def _named(self, devices: list[tuple], values: list[float], node, model) -> list[dict]:
        alloc, used, unknown, cost, idle = values
        w = [max(self.presence.get(d, 0.0), 1e-9) for d in devices]
        share = _normalise(w)
        with_util = [d in self.util_mean for d in devices]
        unknown_w = _normalise([wi if not u else 0.0 for wi, u in zip(w, with_util)]) or share
        used_w = _normalise([wi * max(self.util_mean.get(d, 0.0), 0.0) for wi, d in zip(w, devices)]) \
            or _normalise([wi if u else 0.0 for wi, u in zip(w, with_util)]) or share
        rows = []
        for i, dev in enumerate(devices):
            a, u_, k = alloc * share[i], used * used_w[i], unknown * unknown_w[i]
            rows.append({**self._device(node, model, dev[2]), "pod_uid": f"{dev[3]}/{dev[4]}", "pod": dev[4],
                         "allocated_gpu_seconds": a, "unallocated_gpu_seconds": 0.0, "used_gpu_seconds": u_,
                         "util_unknown_gpu_seconds": k, "active_gpu_seconds": self._active(dev, a, u_),
                         "memory_used_max_bytes": self.mem_max.get(dev, float("nan")), "cost": cost * share[i],
                         "unallocated_cost": 0.0, "minutes": self._minutes(dev), "util_quantiles": self._quantiles(dev),
                         "_idle": max(a - u_ - k, 0.0)})
        idle_w = _normalise([r.pop("_idle") for r in rows]) or share
        for r, wi in zip(rows, idle_w):
            r["idle_cost"] = idle * wi
        return rows

    def _shared(self, values: list[float], node, model, ns, kind, name) -> dict:
        """A workload whose pods the gauges do not name (a time-shared GPU): one row on the likeliest device."""
        alloc, used, unknown, cost, idle = values
        free = self.free.get((node, model))
        dev = max(free, key=lambda d: (self.util_mean.get(d, -1.0), d[2])) if free else None
        if dev is None:
            known = self.known.get((node, model))
            uuid = known[0] if known else f"{node}/{model}"
            memory, active = float("nan"), (alloc if used > 0 else 0.0)
        else:
            uuid = dev[2]
            memory, active = self.mem_max.get(dev, float("nan")), self._active(dev, alloc, used)
        return {**self._device(node, model, uuid), "pod_uid": f"{ns}/{kind}/{name}@{node}", "pod": None,
                "allocated_gpu_seconds": alloc, "unallocated_gpu_seconds": 0.0, "used_gpu_seconds": used,
                "util_unknown_gpu_seconds": unknown, "active_gpu_seconds": active, "memory_used_max_bytes": memory,
                "cost": cost, "idle_cost": idle, "unallocated_cost": 0.0, "minutes": 60,
                "util_quantiles": self._quantiles(dev)}

    def spare(self, node, model, seconds: float, money: float) -> list[dict]:
        """A node's unallocated capacity as rows on the devices no single pod held (by their samples)."""
        free = sorted(self.free.get((node, model), []))
        if free:
            uuids = [d[2] for d in free]
            share = _normalise([max(self.presence[d], 1e-9) for d in free])
            memory = [self.mem_max.get(d, float("nan")) for d in free]
        else:
            known = self.known.get((node, model))
            uuids, share, memory = [known[0] if known else f"{node}/{model}"], [1.0], [float("nan")]
        return [{**self._device(node, model, u), "pod_uid": None, "pod": None, "namespace": None, "team": None,
                 "workload_class": None, "workload_kind": None, "workload_name": None,
                 "allocated_gpu_seconds": 0.0, "unallocated_gpu_seconds": seconds * s, "used_gpu_seconds": 0.0,
                 "util_unknown_gpu_seconds": 0.0, "active_gpu_seconds": 0.0, "memory_used_max_bytes": mem,
                 "cost": 0.0, "idle_cost": 0.0, "unallocated_cost": money * s, "minutes": 60, "util_quantiles": None}
                for u, s, mem in zip(uuids, share, memory)]


def _fmax(a: float, b: float) -> float:
    """The larger of two figures, where NaN (unknown) loses to any number."""
    return b if math.isnan(a) else a if math.isnan(b) else max(a, b)


def _normalise(weights: Sequence[float]) -> list[float] | None:
    total = float(sum(weights))
    return [w / total for w in weights] if total > 0 else None


# --------------------------------------------------------------------------- hours into minutes

EVEN = ("allocated_gpu_seconds", "unallocated_gpu_seconds", "util_unknown_gpu_seconds", "cost", "idle_cost",
        "unallocated_cost", *SERVING)
SAME = ("gpu_memory_total_bytes", "gpu_hourly_price", "memory_used_max_bytes")


def spread_minutes(rows: HourRows, spread_from: float) -> dict[str, Any]:
    """The hour rows with the pods' rows from ``spread_from`` on spread over their minutes, as columns.

    The right-sizing evidence counts GPU-minutes (hours observed, pods at once, idle
    minutes, utilisation percentiles), so a pod's hour becomes its ``minutes`` minute
    rows. Seconds and money are spread evenly, so every sum stays what the hour's
    counters hold. Used seconds follow the device's utilisation in that hour: the hour's
    share of idle gauge samples becomes idle minutes (no activity, no use), and the
    other minutes take the shape of the gauge's quantiles, each between its two
    neighbouring quantiles, placed so that they add up to the used seconds the counters
    counted. Where the quantiles cannot hold that mean the scrapes missed something:
    missed dips are taken from the lowest minutes, missed peaks scale every minute up
    (none above 100 %). Without quantiles the
    active minutes share the use evenly; rows of unknown utilisation (MIG) are even.
    Older rows and unallocated capacity stay hourly: what reads them (daily cost,
    anomalies, commitments) sums by hour or day.

    Returns the ledger's columns (minute in Unix seconds): numbers as numpy arrays,
    strings as :class:`Coded` (so ten million minute rows need no ten million strings).
    """
    import numpy as np

    cols = rows.columns
    minute = np.asarray(cols["minute"], dtype=np.int64)
    num = {c: np.asarray(cols[c], dtype=np.float64) for c in (*EVEN, *SAME, "used_gpu_seconds", "active_gpu_seconds")}
    alloc = num["allocated_gpu_seconds"]
    pod = np.array([v is not None for v in cols["pod_uid"]], dtype=bool)
    spread = pod & (minute >= int(spread_from)) & (alloc > 0)
    keep, rows_i = np.flatnonzero(~spread), np.flatnonzero(spread)
    n = np.clip(np.asarray(cols["minutes"], dtype=np.int64)[rows_i], 1, 60)
    r = np.repeat(np.arange(len(rows_i)), n)  # the spread row of each minute
    j = np.arange(len(r)) - np.repeat(np.cumsum(n) - n, n)  # its place among the row's minutes
    src = rows_i[r]
    nf = n[r].astype(np.float64)

    a = alloc[rows_i]
    used, active, unknown = (num[c][rows_i] for c in ("used_gpu_seconds", "active_gpu_seconds",
                                                      "util_unknown_gpu_seconds"))
    mean = np.clip(np.divide(used, a, out=np.zeros(len(a)), where=a > 0), 0.0, 1.0)
    share = np.clip(np.divide(active, a, out=np.zeros(len(a)), where=a > 0), 0.0, 1.0)
    k = np.minimum(np.maximum(np.rint(share * n), np.ceil(mean * n - 1e-9)), n).astype(np.int64)  # active minutes
    zero = j < (n - k)[r]  # the idle minutes come first, as in a sorted sample
    grid = np.asarray(UTIL_QUANTILES)
    q = np.array([v if v is not None else (np.nan,) * len(grid) for v in
                  (cols["util_quantiles"][i] for i in rows_i)], dtype=np.float64).reshape(len(rows_i), len(grid))
    # minute j of n sits at p = (j + ½) / n of the hour's sorted sample, between two known quantiles
    p = (j + 0.5) / nf
    at = np.clip(np.searchsorted(grid, p, side="right") - 1, 0, len(grid) - 2)
    low, high = q[r, at], q[r, at + 1]
    bad = np.isnan(low) | np.isnan(high)
    low, high = np.where(bad, 0.0, np.maximum(low, 0.0)), np.where(bad, 0.0, np.maximum(high, 0.0))
    low[zero], high[zero] = 0.0, 0.0
    # one λ per row places every minute at low + λ·(high − low), between its two quantiles, so that
    # the minutes hold the hour's mean: a bimodal hour stays bimodal and no minute exceeds the next quantile
    base, rise = (np.bincount(r, weights=x, minlength=len(rows_i)) for x in (low, high - low))
    lam = np.clip(np.divide(mean * n - base, rise, out=np.zeros(len(a)), where=rise > 0), 0.0, 1.0)
    shape = low + lam[r] * (high - low)
    total = np.bincount(r, weights=shape, minlength=len(rows_i))
    flat = (total <= 0)[r] & ~zero  # no usable shape: the active minutes share evenly
    shape[flat] = 1.0
    total = np.bincount(r, weights=shape, minlength=len(rows_i))
    # Less use than even the lowest placement holds: the scrapes missed dips, so the lowest
    # minutes give it up (the upper quantiles stay as sampled). More use than the highest
    # placement holds: the scrapes missed peaks, so every minute is scaled up (capped below).
    target = mean * n
    deficit = np.maximum(total - target, 0.0)
    below = np.cumsum(shape) - np.repeat(np.cumsum(np.bincount(r, weights=shape, minlength=len(rows_i)))
                                         - np.bincount(r, weights=shape, minlength=len(rows_i)), n)
    take = np.clip(deficit[r] - (below - shape), 0.0, shape)  # from the bottom up, within each row
    shape = np.where((total > target)[r], shape - take, shape)
    total = np.bincount(r, weights=shape, minlength=len(rows_i))
    util = shape * np.divide(target, total, out=np.zeros(len(a)), where=total > 0)[r]
    over = np.maximum(util - 1.0, 0.0)  # none above 100 %: the excess goes to the minutes with room
    util = np.minimum(util, 1.0)
    room = np.where(zero, 0.0, 1.0 - util)
    excess, space = (np.bincount(r, weights=x, minlength=len(rows_i)) for x in (over, room))
    util += room * np.divide(excess, space, out=np.zeros(len(a)), where=space > 0)[r]
    per = a[r] / nf
    even = (unknown > 0)[r]
    used_m = np.where(even, used[r] / nf, util * per)
    used_m *= np.divide(used, np.bincount(r, weights=used_m, minlength=len(rows_i)),
                        out=np.ones(len(a)), where=used > 0)[r]  # exactly the hour's used seconds
    active_m = np.where(even, active[r] / nf, np.where(zero, 0.0, per))

    index = np.concatenate([keep, src])
    out: dict[str, Any] = {"minute": np.concatenate([minute[keep], minute[src] + 60 * j])}
    for c in EVEN:
        out[c] = np.concatenate([num[c][keep], num[c][src] / nf])
    for c in SAME:
        out[c] = num[c][index]
    out["used_gpu_seconds"] = np.concatenate([num["used_gpu_seconds"][keep], used_m])
    out["active_gpu_seconds"] = np.concatenate([num["active_gpu_seconds"][keep], active_m])
    for c in COLUMNS:
        if c not in out and c not in ("minutes", "util_quantiles"):
            codes, values = _codes(cols[c])
            out[c] = Coded(codes[index], values)
    return out


@dataclass(frozen=True)
class Coded:
    """A string column as integer codes into ``categories`` (-1: none), like a pandas Categorical's."""

    codes: Any
    categories: list


def _codes(values: Sequence[str | None]) -> tuple[Any, list]:
    import numpy as np

    index: dict[str, int] = {}
    codes = np.fromiter((-1 if v is None else index.setdefault(v, len(index)) for v in values),
                        dtype=np.int32, count=len(values))
    return codes, list(index)
