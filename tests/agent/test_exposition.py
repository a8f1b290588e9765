"""/metrics renders the agent's families itself (agent/exposition.py): byte for byte what
prometheus_client's encoders write for the same figures, for every Accept header a scraper
sends, scrape after scrape as label sets come and go; any other format is prometheus_client's."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from agent.config import Config
from agent.exporter import AgentMetrics
from agent.exposition import OPENMETRICS, TEXT, Exposition, _form
from agent.metering import Meter
from collectors.faults import FaultCounter
from collectors.metricfamilies import BY_NAME, POD_INFO
from collectors.pricing.energy import EnergyRates
from collectors.pricing.ratecard import RateCardPricer, load_snapshot
from collectors.simulator import simulate
from collectors.tracefile import iter_records

# what scrapers send: curl and browsers, Prometheus 2, Prometheus 3 (UTF-8 names), explicit versions
ACCEPTS = {
    "": TEXT,
    "*/*": TEXT,
    "text/plain": TEXT,
    "text/plain; version=0.0.4": TEXT,
    "text/plain;version=1.0.0;escaping=allow-utf-8": TEXT,
    "text/plain;version=1.0.0;escaping=underscores": TEXT,
    "application/openmetrics-text; version=1.0.0": OPENMETRICS,
    "application/openmetrics-text": OPENMETRICS,
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1": OPENMETRICS,
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;"
    "version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,"
    "*/*;q=0.2": OPENMETRICS,
    # prometheus_client's own encoder over everything
    "application/openmetrics-text;version=1.0.0;escaping=dots": None,
    "application/openmetrics-text;version=2.0.0": None,
    "text/plain;version=1.0.0;escaping=values": None,
}


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("exposition") / "cluster.jsonl.gz"
    simulate(path, hours=0.25, interval_s=10.0)
    return path


def _metrics(trace: Path, cycles: slice = slice(None)) -> tuple[AgentMetrics, list]:
    records = [r for _, r in iter_records(trace)]
    meta, records = records[0], records[1:]
    faults = FaultCounter()
    faults.record("nvml", "device_lost", "a test fault")
    metrics = AgentMetrics("USD", "dry-run", "test", faults, price_age=lambda: 12.5,
                           price_faults=lambda: {"aws-api": 2}, serving_status=lambda: (3, 5))
    card = dataclasses.replace(load_snapshot(), energy=EnergyRates(kwh_price=0.1, pue=1.2))
    meter = Meter(RateCardPricer(card), Config())
    chunks = [records[i:i + 200] for i in range(0, len(records), 200)]
    return metrics, [lambda c=c: metrics.add_cycle(meter.process(c, meta.interval_s)) for c in chunks][cycles]


def _authority(metrics: AgentMetrics, accept: str) -> str:
    """prometheus_client's encoding of the agent's families alone (no OpenMetrics # EOF)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    encoder, _ = choose_encoder(accept)
    return encoder(registry).decode("utf-8").removesuffix("# EOF\n")


def test_every_accept_header_gets_prometheus_clients_format():
    for accept, form in ACCEPTS.items():
        assert _form(choose_encoder(accept)[0]) == form, accept


@pytest.mark.slow
def test_the_rendered_families_are_prometheus_clients_text_scrape_after_scrape(trace: Path):
    """Label sets appear and go (pods, devices), values move; each scrape equals the authority."""
    metrics, steps = _metrics(trace)
    exposition = Exposition(metrics)
    scraped = 0
    for i, step in enumerate(steps):
        step()
        if i % 10 and i != len(steps) - 1:
            continue
        for accept, form in ACCEPTS.items():
            if form is not None:
                assert exposition.render(form) == _authority(metrics, accept), (i, accept)
        scraped += 1
    assert scraped >= 3 and "gpuledger_gpu_energy_joules_total{" in exposition.render(TEXT)


def test_the_answer_is_prometheus_clients_with_its_own_collectors(trace: Path):
    metrics, steps = _metrics(trace, slice(0, 3))
    for step in steps:
        step()
    exposition = Exposition(metrics)
    for accept, form in ACCEPTS.items():
        body, content_type = exposition.answer(accept)
        encoder, want_type = choose_encoder(accept)
        assert content_type == want_type, accept
        text = body.decode("utf-8")
        ours = _authority(metrics, accept)
        assert text.startswith(ours), accept
        rest = text[len(ours):]  # process_* and python_* (their values move between two calls)
        assert rest.startswith("# HELP process_") or rest.startswith("# HELP python_"), accept
        assert text.endswith("# EOF\n") == (encoder(CollectorRegistry()).decode() == "# EOF\n"), accept


class _Odd(AgentMetrics):
    """Label values and numbers to escape and format: quotes, backslashes, newlines,
    UTF-8, empty values; NaN, infinities, large, small, negative and integer values."""

    def snapshot(self):
        values = [math.nan, math.inf, -math.inf, 1e22, 123456789.0, 1234567.5, 0.1, -2.5, 0.0, 7, 1e-9, 5e-324]
        odd = ['a"b', "back\\slash", "new\nline", "ünï©ødé", "", '\\"\n', "x" * 300, "{},=", "0"]
        out = []
        for m in BY_NAME.values():
            samples = []
            for i, value in enumerate(values):
                labels = tuple(odd[(i + j) % len(odd)] for j in range(len(m.labels)))
                samples.append((labels, value))
                if not m.labels:
                    break
            out.append((m, samples))
        out.append((POD_INFO, []))  # a family with nothing to show
        return out


def test_odd_label_values_and_numbers_are_written_as_prometheus_client_writes_them():
    metrics = _Odd("USD", "live", "test", FaultCounter())
    exposition = Exposition(metrics)
    for _ in range(2):  # the second from the label sets kept
        for accept, form in ACCEPTS.items():
            if form is not None:
                assert exposition.render(form) == _authority(metrics, accept), accept
