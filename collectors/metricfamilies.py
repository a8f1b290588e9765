"""The agent's metric families, declared once: name, type, labels, unit, help.

Everything that names a ``gpuledger_*`` metric takes it from here:

* ``agent/exporter.py`` builds every family it serves on ``/metrics`` from these
  declarations (name, type, labels, help text);
* ``collectors/promhistory.py`` (``gpuledger report --prometheus``) builds its queries'
  metric names and label tuples from them;
* ``docs/metrics.md``'s tables are :func:`metrics_markdown` of each section (a test
  checks that the doc holds them);
* the chart's tests check that the rules and the dashboard read only :func:`sample_names`.

The module is pure Python (no pandas, no prometheus_client) and lives in ``collectors/``
because the Prometheus history reader, which may not import ``agent/``, reads it.

Adding a metric
---------------
Declare a :class:`Metric` in :data:`FAMILIES` (at the place in exposition order where the
exporter yields it) and paste ``metrics_markdown(section)`` into ``docs/metrics.md``
(``tests/collectors/test_metric_families.py`` prints what to paste when the doc differs).

* A per-workload or unallocated counter of a ledger sum, or a serving counter of a
  counted field, needs nothing more: ``column`` names the sum or the count and the
  exporter adds it to every row's label set.
* Any other metric needs the line in ``AgentMetrics.snapshot`` that gives its value, and
  that line takes the family from here by name (``declared(name)`` with its samples, or
  ``_one(name, value)`` for one unlabelled value); a test fails while a declared family
  is not exposed or an exposed one is not declared.

Rules the declarations keep (tested): names start ``gpuledger_``; a counter's name is
declared without ``_total`` (prometheus_client adds it, as Prometheus's text format
wants); no counter has a ``pod`` or ``uuid`` label (cardinality: pods come and go);
help text is one sentence ending in a full stop.

Types are ``counter`` and ``gauge``. The two ``*_info`` families are gauges of value 1
whose labels carry the information, as the agent has always served them (declaring them
OpenMetrics ``info`` would change their exposition).
"""

from __future__ import annotations

from dataclasses import dataclass

COUNTER = "counter"
GAUGE = "gauge"
TYPES = (COUNTER, GAUGE)

# label sets shared by several families
WORKLOAD_LABELS = ("node", "gpu_model", "namespace", "team", "workload_class", "workload")
NODE_LABELS = ("node", "gpu_model")
DEVICE_LABELS = ("node", "gpu_model", "uuid", "namespace", "pod")

# the tables of docs/metrics.md, in the doc's order: section -> what its table shows
SECTIONS = {
    "workload": "the per-workload cost counters",
    "unallocated": "the unallocated-capacity counters",
    "serving": "the serving counters and pod info",
    "device": "the device gauges",
    "health": "the agent's own health",
}


@dataclass(frozen=True)
class Metric:
    """One metric family as the agent exposes it.

    ``name`` is the family's name as prometheus_client takes it (a counter without
    ``_total``); :attr:`sample` is the name Prometheus stores and queries read. ``help``
    is the exposition's HELP text, ``unit`` and ``doc`` are the docs table's columns
    (``doc`` says more than ``help`` where the docs need it). ``column``: the ledger sum
    (``workload`` and ``unallocated`` sections) or serving count (``serving`` counters)
    that the counter adds up per label set. ``when``: empty when every scrape shows the
    family, else when it does (said in the docs).
    """

    name: str
    type: str
    labels: tuple[str, ...]
    unit: str
    help: str
    section: str
    doc: str
    column: str | None = None
    when: str = ""

    @property
    def sample(self) -> str:
        """The name of the family's samples: what Prometheus stores, rules and queries read."""
        return self.name + "_total" if self.type == COUNTER else self.name


FAMILIES: tuple[Metric, ...] = (
    # ---- per workload: every observed GPU-second is in one of these or the unallocated ones
    Metric("gpuledger_gpu_allocated_seconds", COUNTER, WORKLOAD_LABELS, "physical-GPU seconds",
           "Physical-GPU seconds held by the workload's pods.", "workload",
           "capacity held by the workload's pods", column="allocated_gpu_seconds"),
    Metric("gpuledger_gpu_used_seconds", COUNTER, WORKLOAD_LABELS, "physical-GPU seconds",
           "Allocated physical-GPU seconds times utilisation.", "workload",
           "allocated seconds × utilisation (what the pods kept busy)", column="used_gpu_seconds"),
    Metric("gpuledger_gpu_util_unknown_seconds", COUNTER, WORKLOAD_LABELS, "physical-GPU seconds",
           "Allocated physical-GPU seconds whose utilisation NVML does not report (MIG).", "workload",
           "allocated seconds whose utilisation NVML does not report (MIG slices)",
           column="util_unknown_gpu_seconds"),
    Metric("gpuledger_gpu_cost", COUNTER, WORKLOAD_LABELS, "currency",
           "Cost of the allocated GPU seconds, in the rate card's currency.", "workload",
           "what the allocated seconds cost", column="cost"),
    Metric("gpuledger_gpu_idle_cost", COUNTER, WORKLOAD_LABELS, "currency",
           "Part of the cost for allocated seconds neither used nor of unknown use.", "workload",
           "the part of that cost that was neither used nor of unknown use", column="idle_cost"),
    # ---- energy and carbon (docs/energy.md): shown once some power was measured for the label set
    Metric("gpuledger_gpu_energy_joules", COUNTER, WORKLOAD_LABELS, "joules",
           "GPU board energy of the workload's pods, split like their GPU seconds.", "workload",
           "board energy of the allocated seconds (power × interval, measured samples only)",
           column="energy_joules", when="once power was measured"),
    Metric("gpuledger_gpu_energy_cost", COUNTER, WORKLOAD_LABELS, "currency",
           "Energy cost of the workload's pods: joules times PUE times the kWh price.", "workload",
           "that energy × PUE × the rate card's kWh price (beside the cost, not in it)",
           column="energy_cost", when="once power was measured, with a kWh price"),
    Metric("gpuledger_gpu_carbon_grams", COUNTER, WORKLOAD_LABELS, "grams CO2e",
           "Carbon of the workload's pods: joules times PUE times the grid's grams per kWh.", "workload",
           "that energy × PUE × the grid's carbon intensity", column="carbon_grams",
           when="once power was measured, in a region of known intensity"),
    # ---- unallocated capacity, per node and GPU model
    Metric("gpuledger_gpu_unallocated_seconds", COUNTER, NODE_LABELS, "physical-GPU seconds",
           "Physical-GPU seconds no pod held.", "unallocated", "capacity no pod held",
           column="unallocated_gpu_seconds"),
    Metric("gpuledger_gpu_unallocated_cost", COUNTER, NODE_LABELS, "currency",
           "Cost of the GPU seconds no pod held.", "unallocated", "what it cost", column="unallocated_cost"),
    Metric("gpuledger_gpu_unallocated_energy_joules", COUNTER, NODE_LABELS, "joules",
           "GPU board energy of the seconds no pod held (idle draw).", "unallocated", "their board energy",
           column="energy_joules", when="once power was measured"),
    Metric("gpuledger_gpu_unallocated_energy_cost", COUNTER, NODE_LABELS, "currency",
           "Energy cost of the seconds no pod held.", "unallocated", "what that energy cost",
           column="energy_cost", when="once power was measured, with a kWh price"),
    Metric("gpuledger_gpu_unallocated_carbon_grams", COUNTER, NODE_LABELS, "grams CO2e",
           "Carbon of the seconds no pod held.", "unallocated", "its carbon", column="carbon_grams",
           when="once power was measured, in a region of known intensity"),
    # ---- what the workloads' model servers counted (docs/unit-economics.md)
    Metric("gpuledger_serving_requests", COUNTER, WORKLOAD_LABELS, "requests",
           "Requests the workload's model servers answered (docs/unit-economics.md).", "serving",
           "requests answered", column="requests"),
    Metric("gpuledger_serving_input_tokens", COUNTER, WORKLOAD_LABELS, "tokens",
           "Input (prompt) tokens the workload's model servers processed.", "serving",
           "input (prompt) tokens processed", column="input_tokens"),
    Metric("gpuledger_serving_output_tokens", COUNTER, WORKLOAD_LABELS, "tokens",
           "Output (generated) tokens the workload's model servers produced.", "serving",
           "output (generated) tokens produced", column="output_tokens"),
    Metric("gpuledger_pod_info", GAUGE, ("node", "namespace", "pod", "team", "workload_class", "workload"), "1",
           "1 for each pod holding GPUs on the node in the last five minutes: joins a pod's own metrics "
           "(its model server's counters) to its team and workload.", "serving",
           "1 for each pod that held a GPU on the node in the last five minutes (the join below)"),
    # ---- the newest sample of each device (a MIG slice is a device of its own)
    Metric("gpuledger_gpu_utilization_ratio", GAUGE, DEVICE_LABELS, "0–1",
           "Utilisation of the device in its newest sample (0-1).", "device",
           "utilisation in the newest sample; absent where NVML reports none (MIG)"),
    Metric("gpuledger_gpu_memory_used_bytes", GAUGE, DEVICE_LABELS, "bytes",
           "Device memory used in the newest sample.", "device", "device memory used in the newest sample"),
    Metric("gpuledger_gpu_memory_total_bytes", GAUGE, ("node", "gpu_model", "uuid"), "bytes",
           "Device memory.", "device", "device memory"),
    Metric("gpuledger_gpu_hourly_price", GAUGE,
           ("node", "gpu_model", "instance_type", "region", "capacity_type", "source", "currency"),
           "currency per physical-GPU hour", "Price of one physical GPU per hour.", "device",
           "price of one physical GPU per hour, and where it came from"),
    # ---- the agent's own health
    Metric("gpuledger_samples", COUNTER, (), "samples", "Device samples attributed.", "health",
           "device samples attributed"),
    Metric("gpuledger_collector_errors", COUNTER, ("collector", "reason"), "faults",
           "Faults survived, by collector and reason (each kind is logged once).", "health",
           "faults survived: NVML errors, kubelet or API server unreachable, a price API failing, samples that "
           "could not be attributed (`sample_late`, `sample_undescribed`, `sample_overlap`), a damaged ledger "
           "file set aside at start (`ledger_damaged`); each kind is also logged once"),
    Metric("gpuledger_last_sample_timestamp_seconds", GAUGE, (), "Unix seconds",
           "Unix time of the newest sample attributed (trace time in dry-run).", "health",
           "Unix time of the newest sample (trace time in dry-run)", when="once a sample is attributed"),
    Metric("gpuledger_price_age_seconds", GAUGE, (), "seconds",
           "Seconds since the prices in use were last refreshed.", "health",
           "seconds since the prices in use were last refreshed"),
    Metric("gpuledger_ledger_writes", COUNTER, (), "files",
           "Ledger rollup files written (each rewrite of an hour's file).", "health",
           "ledger rollup files written to `--ledger-dir` (an hour's file is rewritten each minute)"),
    Metric("gpuledger_ledger_written_through_timestamp_seconds", GAUGE, (), "Unix seconds",
           "End of the newest closed minute on disk (Unix seconds; trace time in dry-run).", "health",
           "end of the newest closed minute on disk (trace time in dry-run)",
           when="once a minute is on disk"),
    Metric("gpuledger_serving_endpoints", GAUGE, (), "endpoints",
           "Model server endpoints read in the last round.", "health",
           "model server endpoints read in the last round", when="while the agent reads model servers"),
    Metric("gpuledger_serving_rounds", COUNTER, (), "rounds",
           "Rounds of reading the model servers' counters.", "health",
           "rounds of reading the model servers' counters", when="while the agent reads model servers"),
    Metric("gpuledger_build_info", GAUGE, ("version", "mode"), "1",
           "The agent's version and mode (live or dry-run).", "health", "`mode` is `live` or `dry-run`"),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in FAMILIES}


def declared(name: str) -> Metric:
    """The declared family ``name`` (without ``_total``); KeyError for an undeclared one."""
    return BY_NAME[name]


def in_section(section: str) -> tuple[Metric, ...]:
    """The families a section of ``docs/metrics.md`` lists, in exposition order."""
    if section not in SECTIONS:
        raise KeyError(section)
    return tuple(m for m in FAMILIES if m.section == section)


def counters_of(section: str) -> dict[str, Metric]:
    """column -> counter, for the counters of a section that add up a ledger sum or serving count."""
    return {m.column: m for m in in_section(section) if m.type == COUNTER and m.column is not None}


WORKLOAD_COUNTERS: tuple[Metric, ...] = tuple(counters_of("workload").values())
UNALLOCATED_COUNTERS: tuple[Metric, ...] = tuple(counters_of("unallocated").values())
SERVING_COUNTERS: tuple[Metric, ...] = tuple(counters_of("serving").values())

GPU_UTILIZATION = declared("gpuledger_gpu_utilization_ratio")
GPU_MEMORY_USED = declared("gpuledger_gpu_memory_used_bytes")
GPU_MEMORY_TOTAL = declared("gpuledger_gpu_memory_total_bytes")
GPU_HOURLY_PRICE = declared("gpuledger_gpu_hourly_price")
POD_INFO = declared("gpuledger_pod_info")


def labels_of(metric: Metric, *names: str) -> tuple[str, ...]:
    """``names``, each checked to be one of ``metric``'s labels (a reader's own order of them)."""
    unknown = [n for n in names if n not in metric.labels]
    if unknown:
        raise KeyError(f"{metric.name} has no label {', '.join(unknown)}")
    return names


def sample_names() -> frozenset[str]:
    """Every sample name the agent can expose: what rules, dashboards and queries may read."""
    return frozenset(m.sample for m in FAMILIES)


def metrics_markdown(section: str) -> str:
    """The table of one section of ``docs/metrics.md``, made from the declarations."""
    rows = ["| metric | type | labels | unit | what it holds |", "|---|---|---|---|---|"]
    for m in in_section(section):
        labels = f"`{', '.join(m.labels)}`" if m.labels else ""
        when = f"; only {m.when}" if m.when else ""
        rows.append(f"| `{m.sample}` | {m.type} | {labels} | {m.unit} | {m.doc}{when} |")
    return "\n".join(rows) + "\n"
