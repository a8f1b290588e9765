"""The agent's Prometheus metrics (``docs/metrics.md``), served from plain dictionaries.

Every family is built from its declaration in ``collectors/metricfamilies.py`` (name,
type, labels, help); this module only gives the values.

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

from agent.accounting.ledger import COUNTED
from agent.metering import Cycle, Reading
from recommenders.ledger_schema import SUMS
from collectors.faults import FaultCounter
from collectors.metricfamilies import (
    COUNTER, GPU_HOURLY_PRICE, GPU_MEMORY_TOTAL, GPU_MEMORY_USED, GPU_UTILIZATION, POD_INFO, SERVING_COUNTERS,
    UNALLOCATED_COUNTERS, WORKLOAD_COUNTERS, Metric, declared,
)

# where each declared counter's amount is in a row (collectors/metricfamilies.py names the column)
_WORKLOAD_SUMS = tuple(SUMS.index(m.column) for m in WORKLOAD_COUNTERS)
_UNALLOCATED = tuple(SUMS.index(m.column) for m in UNALLOCATED_COUNTERS)
_SERVING_COUNTS = tuple(COUNTED.index(m.column) for m in SERVING_COUNTERS)
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
                         [row.sums[i] for i in _WORKLOAD_SUMS])
                    if any(not math.isnan(c) for c in row.counts):
                        _add(self._serving, self._pending_serving, key,
                             [0.0 if math.isnan(c) else c for c in (row.counts[i] for i in _SERVING_COUNTS)])
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
            for j, m in enumerate(WORKLOAD_COUNTERS):
                out[m.name] = sum(v[j] for d in (self._workloads, self._pending_workloads) for v in d.values()
                                  if not math.isnan(v[j]))
            for j, m in enumerate(UNALLOCATED_COUNTERS):
                out[m.name] = sum(v[j] for d in (self._unallocated, self._pending_unallocated) for v in d.values()
                                  if not math.isnan(v[j]))
            for j, m in enumerate(SERVING_COUNTERS):
                out[m.name] = sum(v[j] for d in (self._serving, self._pending_serving) for v in d.values())
            return out

    # ------------------------------------------------------------------ scrape

    def collect(self) -> Iterator:
        """prometheus_client's families, built from :meth:`snapshot`."""
        for m, samples in self.snapshot():
            family = _build(m)
            for labels, value in samples:
                family.add_metric(labels, value)
            yield family

    def snapshot(self) -> list[tuple[Metric, list[tuple[tuple[str, ...], float]]]]:
        """What a scrape shows: each family shown, in exposition order, with its samples as
        (label values in the declared order, value). :meth:`collect` makes prometheus_client's
        families of it; ``agent/exposition.py`` renders it as text directly."""
        with self._lock:
            workloads = {k: list(v) for k, v in self._workloads.items()}
            unallocated = {k: list(v) for k, v in self._unallocated.items()}
            serving = {k: list(v) for k, v in self._serving.items()}
            pods = sorted(self._pods)
            readings = list(self._readings.values())
            samples, last_ts = self.samples, self.last_sample_ts
        out: list[tuple[Metric, list[tuple[tuple[str, ...], float]]]] = []
        for declared_counters, values_by_key in ((WORKLOAD_COUNTERS, workloads), (UNALLOCATED_COUNTERS, unallocated),
                                                 (SERVING_COUNTERS, serving)):
            for j, m in enumerate(declared_counters):
                # NaN: energy never measured for the label set
                out.append((m, [(key, values[j]) for key, values in values_by_key.items()
                                if not math.isnan(values[j])]))
        out.append((POD_INFO, [(labels, 1.0) for labels in pods]))
        out += _device_families(readings, self.currency)
        out.append(_one("gpuledger_samples", samples))
        counts = dict(self.faults.counts())
        for source, count in self.price_faults().items():
            counts[("pricing", f"{source}_failed")] = count
        out.append((declared("gpuledger_collector_errors"),
                    [((collector, reason), count) for (collector, reason), count in sorted(counts.items())]))
        if last_ts is not None:
            out.append(_one("gpuledger_last_sample_timestamp_seconds", last_ts))
        age = self.price_age()
        if age is not None:
            out.append(_one("gpuledger_price_age_seconds", age))
        out.append(_one("gpuledger_ledger_writes", self.ledger_writes))
        if self.ledger_through is not None:
            out.append(_one("gpuledger_ledger_written_through_timestamp_seconds", self.ledger_through))
        status = self.serving_status()
        if status is not None:
            out.append(_one("gpuledger_serving_endpoints", status[0]))
            out.append(_one("gpuledger_serving_rounds", status[1]))
        out.append((declared("gpuledger_build_info"), [((self.version, self.mode), 1.0)]))
        return out


def _device_families(readings: list[Reading], currency: str) -> list[tuple[Metric, list]]:
    util: list = []
    used: list = []
    total: list = []
    prices: dict[tuple[str, ...], float] = {}
    for r in sorted(readings, key=lambda r: (r.slot.node, r.slot.uuid)):
        s = r.slot
        holder = (r.holder.namespace, r.holder.name) if r.holder is not None else ("", "")
        labels = (s.node, s.model, s.uuid) + holder
        if r.util is not None:
            util.append((labels, r.util / 100.0))
        if r.mem_used_bytes is not None:
            used.append((labels, r.mem_used_bytes))
        if s.memory_total_bytes is not None:
            total.append(((s.node, s.model, s.uuid), s.memory_total_bytes))
        prices[(s.node, s.model, s.instance_type or "", s.region or "", s.capacity_type or "", s.price_source,
                currency)] = s.gpu_hourly_price
    return [(GPU_UTILIZATION, util), (GPU_MEMORY_USED, used), (GPU_MEMORY_TOTAL, total),
            (GPU_HOURLY_PRICE, list(prices.items()))]


def _add(values: dict, pending: dict, key: tuple, amounts: list[float]) -> None:
    """Add a row's amounts to a label set's counters. NaN (energy not measured) adds
    nothing, and a counter nothing measured was ever added to stays NaN: not shown."""
    found = values.get(key)
    if found is not None and key not in pending:
        for j, a in enumerate(amounts):
            found[j] = _plus(found[j], a)
        return
    if found is None:  # seen at 0 first; the increment waits one cycle
        values[key] = [math.nan if math.isnan(a) else 0.0 for a in amounts]
    held = pending.setdefault(key, [math.nan] * len(amounts))
    for j, a in enumerate(amounts):
        held[j] = _plus(held[j], a)


def _plus(total: float, amount: float) -> float:
    if math.isnan(amount):
        return total
    return amount if math.isnan(total) else total + amount


def _apply(values: dict, pending: dict) -> None:
    for key, amounts in pending.items():
        found = values[key]
        for j, a in enumerate(amounts):
            found[j] = _plus(found[j], a)
    pending.clear()


def _build(m: Metric) -> CounterMetricFamily | GaugeMetricFamily:
    """An empty family as collectors/metricfamilies.py declares it."""
    kind = CounterMetricFamily if m.type == COUNTER else GaugeMetricFamily
    return kind(m.name, m.help, labels=m.labels)


def _one(name: str, value: float) -> tuple[Metric, list[tuple[tuple[str, ...], float]]]:
    """An unlabelled family's one sample; a gauge that is not finite shows NaN."""
    m = declared(name)
    if m.type != COUNTER and not math.isfinite(value):
        value = math.nan
    return m, [((), value)]
