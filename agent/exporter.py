"""The agent's Prometheus metrics (``docs/metrics.md``), served from plain dictionaries.

The sample job adds each cycle's rows here; a scrape reads a consistent copy. Holding
the values ourselves (instead of prometheus_client's Counter objects) keeps the update
a dictionary addition per row and lets a label set appear at 0 one cycle before its
first increment: ``increase()`` and ``rate()`` ignore a series' first value, so a new
workload's first second would otherwise never be counted.
"""

from __future__ import annotations

import math
import threading
from typing import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.ledger import COUNTED
from agent.metering import SUMS, Cycle, Reading
from collectors.faults import FaultCounter

WORKLOAD_LABELS = ["node", "gpu_model", "namespace", "team", "workload_class", "workload"]
NODE_LABELS = ["node", "gpu_model"]
DEVICE_LABELS = ["node", "gpu_model", "uuid", "namespace", "pod"]
PRICE_LABELS = ["node", "gpu_model", "instance_type", "region", "capacity_type", "source", "currency"]

# (metric name without _total, help, index into Row.sums) for the per-workload counters
_WORKLOAD_COUNTERS = (
    ("gpuledger_gpu_allocated_seconds", "Physical-GPU seconds held by the workload's pods.",
     SUMS.index("allocated_gpu_seconds")),
    ("gpuledger_gpu_used_seconds", "Allocated physical-GPU seconds times utilisation.",
     SUMS.index("used_gpu_seconds")),
    ("gpuledger_gpu_util_unknown_seconds",
     "Allocated physical-GPU seconds whose utilisation NVML does not report (MIG).",
     SUMS.index("util_unknown_gpu_seconds")),
    ("gpuledger_gpu_cost", "Cost of the allocated GPU seconds, in the rate card's currency.",
     SUMS.index("cost")),
    ("gpuledger_gpu_idle_cost", "Part of the cost for allocated seconds neither used nor of unknown use.",
     SUMS.index("idle_cost")),
)
_UNALLOCATED = (SUMS.index("unallocated_gpu_seconds"), SUMS.index("unallocated_cost"))
# (metric name without _total, help) for the serving counters, in COUNTED order
_SERVING_COUNTERS = (
    ("gpuledger_serving_requests", "Requests the workload's model servers answered (docs/unit-economics.md)."),
    ("gpuledger_serving_input_tokens", "Input (prompt) tokens the workload's model servers processed."),
    ("gpuledger_serving_output_tokens", "Output (generated) tokens the workload's model servers produced."),
)
POD_INFO_LABELS = ["node", "namespace", "pod", "team", "workload_class", "workload"]
_READING_MAX_AGE_S = 300.0  # a device not sampled for this long is gone from the gauges


class AgentMetrics(Collector):
    """Every gpuledger_* metric; ``collect`` is what prometheus_client calls on a scrape."""

    def __init__(self, currency: str, mode: str, version: str, faults: FaultCounter,
                 price_age: Callable[[], float | None] = lambda: None,
                 price_faults: Callable[[], Mapping[str, int]] = dict,
                 serving_status: Callable[[], tuple[int, int] | None] = lambda: None) -> None:
        self.currency = currency
        self.serving_status = serving_status  # (endpoints in the last round, rounds), None when not reading
        self.mode = mode
        self.version = version
        self.faults = faults
        self.price_age = price_age
        self.price_faults = price_faults  # failed price API fetches by source (the price cache counts them)
        self.ledger_writes = 0
        self.ledger_through: float | None = None
        self._lock = threading.Lock()
        self._workloads: dict[tuple[str, ...], list[float]] = {}
        self._unallocated: dict[tuple[str, ...], list[float]] = {}
        self._pending_workloads: dict[tuple[str, ...], list[float]] = {}
        self._pending_unallocated: dict[tuple[str, ...], list[float]] = {}
        self._serving: dict[tuple[str, ...], list[float]] = {}
        self._pending_serving: dict[tuple[str, ...], list[float]] = {}
        self._pods: dict[tuple[str, ...], float] = {}  # pod info labels -> newest row time
        self._readings: dict[tuple[str, str], Reading] = {}
        self.samples = 0
        self.last_sample_ts: float | None = None

    # ------------------------------------------------------------------ updates

    def add_cycle(self, cycle: Cycle) -> None:
        """Count a cycle's rows and keep its device readings."""
        with self._lock:
            _apply(self._workloads, self._pending_workloads)
            _apply(self._unallocated, self._pending_unallocated)
            _apply(self._serving, self._pending_serving)
            for row in cycle.rows:
                pod, slot = row.key.pod, row.slot
                if pod is not None:
                    workload = f"{pod.workload_kind}/{pod.workload_name}"
                    key = (slot.node, slot.model, pod.namespace, pod.team, pod.workload_class, workload)
                    _add(self._workloads, self._pending_workloads, key,
                         [row.sums[i] for _, _, i in _WORKLOAD_COUNTERS])
                    if any(not math.isnan(c) for c in row.counts):
                        _add(self._serving, self._pending_serving, key,
                             [0.0 if math.isnan(c) else c for c in row.counts])
                    info = (slot.node, pod.namespace, pod.name, pod.team, pod.workload_class, workload)
                    self._pods[info] = max(self._pods.get(info, -math.inf), row.key.minute + 60.0)
                else:
                    _add(self._unallocated, self._pending_unallocated, (slot.node, slot.model),
                         [row.sums[i] for i in _UNALLOCATED])
            for reading in cycle.readings:
                self._readings[(reading.slot.node, reading.slot.uuid)] = reading
            if cycle.newest_ts is not None:
                self.last_sample_ts = cycle.newest_ts
                for key in [k for k, r in self._readings.items() if r.ts < cycle.newest_ts - _READING_MAX_AGE_S]:
                    del self._readings[key]
                for key in [k for k, t in self._pods.items() if t < cycle.newest_ts - _READING_MAX_AGE_S]:
                    del self._pods[key]
            self.samples += cycle.samples

    @property
    def showing(self) -> bool:
        """Whether /metrics shows attributed figures: a label set seen for the first time
        is exported at 0 and gets its increment a cycle later (so that rate() sees it)."""
        with self._lock:
            return (any(k not in self._pending_workloads for k in self._workloads)
                    or any(k not in self._pending_unallocated for k in self._unallocated))

    def settle(self) -> None:
        """Apply the increments held back for new label sets (at shutdown, in tests)."""
        with self._lock:
            _apply(self._workloads, self._pending_workloads)
            _apply(self._unallocated, self._pending_unallocated)
            _apply(self._serving, self._pending_serving)

    def totals(self) -> dict[str, float]:
        """Sums over every label set, increments held back included (for checks)."""
        with self._lock:
            out = {}
            for j, (name, _, _) in enumerate(_WORKLOAD_COUNTERS):
                out[name] = sum(v[j] for d in (self._workloads, self._pending_workloads) for v in d.values())
            for j, name in enumerate(("gpuledger_gpu_unallocated_seconds", "gpuledger_gpu_unallocated_cost")):
                out[name] = sum(v[j] for d in (self._unallocated, self._pending_unallocated) for v in d.values())
            for j, (name, _) in enumerate(_SERVING_COUNTERS):
                out[name] = sum(v[j] for d in (self._serving, self._pending_serving) for v in d.values())
            return out

    # ------------------------------------------------------------------ scrape

    def collect(self) -> Iterator:
        with self._lock:
            workloads = {k: list(v) for k, v in self._workloads.items()}
            unallocated = {k: list(v) for k, v in self._unallocated.items()}
            serving = {k: list(v) for k, v in self._serving.items()}
            pods = sorted(self._pods)
            readings = list(self._readings.values())
            samples, last_ts = self.samples, self.last_sample_ts
        for j, (name, help_text, _) in enumerate(_WORKLOAD_COUNTERS):
            family = CounterMetricFamily(name, help_text, labels=WORKLOAD_LABELS)
            for key, values in workloads.items():
                family.add_metric(key, values[j])
            yield family
        for j, (name, help_text) in enumerate((
            ("gpuledger_gpu_unallocated_seconds", "Physical-GPU seconds no pod held."),
            ("gpuledger_gpu_unallocated_cost", "Cost of the GPU seconds no pod held."),
        )):
            family = CounterMetricFamily(name, help_text, labels=NODE_LABELS)
            for key, values in unallocated.items():
                family.add_metric(key, values[j])
            yield family
        for j, (name, help_text) in enumerate(_SERVING_COUNTERS):
            family = CounterMetricFamily(name, help_text, labels=WORKLOAD_LABELS)
            for key, values in serving.items():
                family.add_metric(key, values[j])
            yield family
        info = GaugeMetricFamily("gpuledger_pod_info", "1 for each pod holding GPUs on the node in the last five "
                                 "minutes: joins a pod's own metrics (its model server's counters) to its team and "
                                 "workload.", labels=POD_INFO_LABELS)
        for labels in pods:
            info.add_metric(list(labels), 1.0)
        yield info
        yield from _device_families(readings, self.currency)
        yield _counter("gpuledger_samples", "Device samples attributed.", samples)
        errors = CounterMetricFamily("gpuledger_collector_errors",
                                     "Faults survived, by collector and reason (each kind is logged once).",
                                     labels=["collector", "reason"])
        counts = dict(self.faults.counts())
        for source, count in self.price_faults().items():
            counts[("pricing", f"{source}_failed")] = count
        for (collector, reason), count in sorted(counts.items()):
            errors.add_metric([collector, reason], count)
        yield errors
        if last_ts is not None:
            yield _gauge("gpuledger_last_sample_timestamp_seconds",
                         "Unix time of the newest sample attributed (trace time in dry-run).", last_ts)
        age = self.price_age()
        if age is not None:
            yield _gauge("gpuledger_price_age_seconds", "Seconds since the prices in use were last refreshed.", age)
        yield _counter("gpuledger_ledger_writes", "Ledger rollup files written (each rewrite of an hour's file).",
                       self.ledger_writes)
        if self.ledger_through is not None:
            yield _gauge("gpuledger_ledger_written_through_timestamp_seconds",
                         "End of the newest closed minute on disk (Unix seconds; trace time in dry-run).",
                         self.ledger_through)
        status = self.serving_status()
        if status is not None:
            yield _gauge("gpuledger_serving_endpoints", "Model server endpoints read in the last round.", status[0])
            yield _counter("gpuledger_serving_rounds", "Rounds of reading the model servers' counters.", status[1])
        info = GaugeMetricFamily("gpuledger_build_info", "The agent's version and mode (live or dry-run).",
                                 labels=["version", "mode"])
        info.add_metric([self.version, self.mode], 1.0)
        yield info


def _device_families(readings: list[Reading], currency: str) -> Iterator:
    util = GaugeMetricFamily("gpuledger_gpu_utilization_ratio",
                             "Utilisation of the device in its newest sample (0-1).", labels=DEVICE_LABELS)
    used = GaugeMetricFamily("gpuledger_gpu_memory_used_bytes", "Device memory used in the newest sample.",
                             labels=DEVICE_LABELS)
    total = GaugeMetricFamily("gpuledger_gpu_memory_total_bytes", "Device memory.", labels=["node", "gpu_model", "uuid"])
    price = GaugeMetricFamily("gpuledger_gpu_hourly_price", "Price of one physical GPU per hour.",
                              labels=PRICE_LABELS)
    prices: dict[tuple[str, ...], float] = {}
    for r in sorted(readings, key=lambda r: (r.slot.node, r.slot.uuid)):
        s = r.slot
        holder = [r.holder.namespace, r.holder.name] if r.holder is not None else ["", ""]
        labels = [s.node, s.model, s.uuid] + holder
        if r.util is not None:
            util.add_metric(labels, r.util / 100.0)
        if r.mem_used_bytes is not None:
            used.add_metric(labels, r.mem_used_bytes)
        if s.memory_total_bytes is not None:
            total.add_metric([s.node, s.model, s.uuid], s.memory_total_bytes)
        prices[(s.node, s.model, s.instance_type or "", s.region or "", s.capacity_type or "", s.price_source,
                currency)] = s.gpu_hourly_price
    for key, value in prices.items():
        price.add_metric(list(key), value)
    return iter((util, used, total, price))


def _add(values: dict, pending: dict, key: tuple, amounts: list[float]) -> None:
    found = values.get(key)
    if found is not None and key not in pending:
        for j, a in enumerate(amounts):
            found[j] += a
        return
    if found is None:
        values[key] = [0.0] * len(amounts)  # seen at 0 first; the increment waits one cycle
    held = pending.setdefault(key, [0.0] * len(amounts))
    for j, a in enumerate(amounts):
        held[j] += a


def _apply(values: dict, pending: dict) -> None:
    for key, amounts in pending.items():
        found = values[key]
        for j, a in enumerate(amounts):
            found[j] += a
    pending.clear()


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value if math.isfinite(value) else float("nan"))
