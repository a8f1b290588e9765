"""The metric families are declared once (collectors/metricfamilies.py); what reads or
serves a metric agrees with that declaration: the agent's /metrics (in-process and a real
dry-run agent, checked by promtool), the Prometheus history queries and docs/metrics.md.
The chart's rules and dashboard are checked against it in tests/chart/test_alert_rules.py."""

from __future__ import annotations

import dataclasses

import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from agent.config import Config
from agent.exporter import AgentMetrics
from agent.accounting.ledger import COUNTED
from agent.metering import Meter
from recommenders.ledger_schema import SUMS
from collectors.faults import FaultCounter
from collectors.metricfamilies import (
    COUNTER, FAMILIES, SECTIONS, SERVING_COUNTERS, TYPES, UNALLOCATED_COUNTERS, WORKLOAD_COUNTERS, metrics_markdown,
    sample_names,
)
from collectors.pricing.energy import EnergyRates
from collectors.pricing.ratecard import RateCardPricer, load_snapshot
from collectors.tracefile import iter_records
from tests.agentrun import ROOT, get, reference, small_trace, start_agent, stop, wait_for
from tests.systemtools import require_tool

__all__ = ["reference", "small_trace"]  # fixtures

DOC = ROOT / "docs" / "metrics.md"
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


# --------------------------------------------------------------------------- the declarations

def test_declarations_follow_the_metric_rules():
    """docs/DESIGN: gpuledger_* names, _total counters (prometheus_client adds the suffix),
    no per-pod label on counters, promtool-clean help text."""
    names = [m.name for m in FAMILIES]
    assert len(names) == len(set(names))
    assert len(sample_names()) == len(FAMILIES)
    for m in FAMILIES:
        assert re.fullmatch(r"gpuledger_[a-z0-9_]+", m.name) and not m.name.endswith("_total"), m.name
        assert m.type in TYPES and m.section in SECTIONS, m.name
        assert len(set(m.labels)) == len(m.labels), m.name
        assert all(LABEL.fullmatch(n) and not n.startswith("__") for n in m.labels), m.name
        assert m.help.endswith(".") and "\n" not in m.help, m.name
        assert m.unit and m.doc and "|" not in m.doc + m.unit, m.name
        if m.type == COUNTER:
            assert "pod" not in m.labels and "uuid" not in m.labels, m.name
    for section in SECTIONS:
        assert any(m.section == section for m in FAMILIES), section


def test_counters_add_up_the_ledgers_sums_and_counts():
    """Each per-workload and unallocated counter names a ledger sum, each serving counter a count."""
    assert WORKLOAD_COUNTERS and UNALLOCATED_COUNTERS and SERVING_COUNTERS
    for m in WORKLOAD_COUNTERS + UNALLOCATED_COUNTERS:
        assert m.column in SUMS, m.name
    assert sorted(m.column for m in SERVING_COUNTERS) == sorted(COUNTED)
    assert len({m.labels for m in WORKLOAD_COUNTERS + SERVING_COUNTERS}) == 1  # one ratio: cost per request


def test_docs_tables_are_generated_from_the_declarations():
    text = DOC.read_text()
    for section in SECTIONS:
        table = metrics_markdown(section)
        assert table in text, f"docs/metrics.md: paste the table of {SECTIONS[section]}:\n{table}"
    mentioned = set(re.findall(r"(?<![:\w])(gpuledger_[a-z_]+)(?![:\w])", text))
    assert mentioned <= sample_names(), mentioned - sample_names()


# --------------------------------------------------------------------------- what the agent serves

def assert_declared(text: str, openmetrics: str, present: set[str] | None = None) -> set[str]:
    """The gpuledger families of an exposition (text format and OpenMetrics) are declared
    families, in declaration order, with the declared type, help and labels; returns their names.
    ``present``: names that must be among them (default: every family shown on every scrape)."""
    declared = {m.name: m for m in FAMILIES}
    families = list(text_string_to_metric_families(text))
    others = {f.name for f in families if not f.name.startswith("gpuledger_")}
    assert all(n.startswith(("process_", "python_")) for n in others), others  # prometheus_client's own
    families = [f for f in families if f.name not in others]
    names = [f.name for f in families]
    assert len(names) == len(set(names)) and set(names) <= set(declared), set(names) - set(declared)
    assert names == [m.name for m in FAMILIES if m.name in names], "families out of declaration order"
    want = present if present is not None else {m.name for m in FAMILIES if not m.when}
    assert want <= set(names), want - set(names)
    for f in families:
        m = declared[f.name]
        assert (f.type, f.documentation) == (m.type, m.help), f.name
        for s in f.samples:
            assert s.name == m.sample and set(s.labels) == set(m.labels), (f.name, s)
    om = {f.name: f for f in parse_openmetrics(openmetrics) if f.name not in others}
    assert list(om) == names
    for name, f in om.items():
        assert f.type == declared[name].type and f.documentation == declared[name].help, name
        assert all(set(s.labels) == set(declared[name].labels) for s in f.samples), name
    return set(names)


def promtool_check_metrics(text: str) -> None:
    promtool = require_tool("promtool", "prometheus")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.slow
def test_the_exporter_serves_every_declared_family(small_trace):
    """In-process, with every optional part on (prices, serving reads, a ledger, faults): all
    declared families, each with samples, as declared; promtool check metrics is clean."""
    records = [r for _, r in iter_records(small_trace)]
    meta, records = records[0], records[1:]
    faults = FaultCounter()
    faults.record("nvml", "device_lost", "a test fault")
    metrics = AgentMetrics("USD", "dry-run", "test", faults, price_age=lambda: 12.5,
                           price_faults=lambda: {"aws-api": 2}, serving_status=lambda: (3, 5))
    card = dataclasses.replace(load_snapshot(), energy=EnergyRates(kwh_price=0.1, pue=1.2))  # energy priced too
    meter = Meter(RateCardPricer(card), Config())
    for i in range(0, len(records), 1000):
        metrics.add_cycle(meter.process(records[i:i + 1000], meta.interval_s))
    metrics.ledger_writes, metrics.ledger_through = 4, records[-1].ts
    metrics.settle()
    registry = CollectorRegistry()
    registry.register(metrics)
    text = generate_latest(registry).decode()
    names = assert_declared(text, generate_openmetrics(registry).decode(), present={m.name for m in FAMILIES})
    assert names == {m.name for m in FAMILIES}
    for family in text_string_to_metric_families(text):
        assert family.samples, f"{family.name}: no samples, so its labels went unchecked"
    assert set(metrics.totals()) == {m.name for m in WORKLOAD_COUNTERS + UNALLOCATED_COUNTERS + SERVING_COUNTERS}
    promtool_check_metrics(text)


def _scrape(port: int, openmetrics: bool = False) -> str:
    accept = "application/openmetrics-text; version=1.0.0" if openmetrics else "text/plain"
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


@pytest.mark.slow
def test_a_dry_run_agents_metrics_are_the_declared_families(small_trace, tmp_path: Path):
    """A real dry-run agent at the end of its trace serves the declared families with the
    declared types, help and labels (not the serving-read ones: it reads no model server),
    and promtool check metrics passes on the scrape."""
    proc, port = start_agent(small_trace, tmp_path / "ledger", "--speed", "5000", "--interval", "100ms")
    try:
        wait_for(lambda: get(port, "/healthz")[0] == 200, 20, "/healthz", proc)
        last = 1764046800 + 90 * 60  # the trace's last sample

        def finished() -> bool:
            found = re.search(r"^gpuledger_last_sample_timestamp_seconds (\S+)$", _scrape(port), re.M)
            return bool(found) and float(found.group(1)) == last

        wait_for(finished, 30, "the end of the trace", proc)
        text, openmetrics = _scrape(port), _scrape(port, openmetrics=True)
    finally:
        assert stop(proc, timeout=10) == 0
    assert openmetrics.rstrip().endswith("# EOF")
    names = assert_declared(text, openmetrics)
    reads_servers = {m.name for m in FAMILIES if m.when == "while the agent reads model servers"}
    assert reads_servers and names == {m.name for m in FAMILIES} - reads_servers
    promtool_check_metrics(text)


# --------------------------------------------------------------------------- what report --prometheus reads

def test_history_queries_read_declared_metrics_by_declared_labels():
    """Each query of collectors/promhistory.py reads declared metrics (by their sample names)
    and groups and joins only by labels those metrics carry (``zone``: read if an agent adds it)."""
    from collectors.promhistory import (
        COUNTER_LABELS, COUNTERS, DEVICE_LABELS, NODE_LABELS, PRICE_LABELS, QUERIES, SERVING, UNALLOCATED,
    )

    declared = {m.sample: m for m in FAMILIES}
    read = set()
    for key, expr in QUERIES.items():
        used = set(re.findall(r"(?<![:\w])(gpuledger_[a-z_]+)(?![:\w])", expr))
        assert used and used <= set(declared), (key, expr)
        read |= used
        carried = {n for name in used for n in declared[name].labels} | {"zone"}
        grouped = {n.strip() for clause in re.findall(r"\b(?:by|on|group_left) \(([^)]*)\)", expr)
                   for n in clause.split(",")}
        assert grouped and grouped <= carried, (key, grouped - carried)
    # the ledger columns the report reads are declared counters' (a counter it does not read may be added)
    for columns, counters in ((COUNTERS, WORKLOAD_COUNTERS), (UNALLOCATED, UNALLOCATED_COUNTERS),
                              (SERVING, SERVING_COUNTERS)):
        assert {m.sample for m in counters if m.column in columns} <= read
        assert set(columns) <= {m.column for m in counters}
    assert set(COUNTER_LABELS) == set(WORKLOAD_COUNTERS[0].labels)
    assert set(NODE_LABELS) == set(UNALLOCATED_COUNTERS[0].labels)
    assert set(DEVICE_LABELS) == set(next(m for m in FAMILIES if m.name == "gpuledger_gpu_utilization_ratio").labels)
    assert set(PRICE_LABELS) - {"zone"} == set(next(m for m in FAMILIES if m.name == "gpuledger_gpu_hourly_price").labels)

