"""A real Prometheus scrapes `gpuledger agent --dry-run` playing a trace at 600x; what
Prometheus then holds — `increase()` over the run, per team — is replay's summary.json."""

from __future__ import annotations

import math

import pytest

from tests.agentrun import free_port, reference, small_trace, start_agent, stop, wait_for
from tests.promserver import prometheus

pytestmark = pytest.mark.slow  # drives real processes or servers; see README "Fast loop"

__all__ = ["prometheus", "reference", "small_trace"]  # fixtures

LAST_SAMPLE = 1764046800 + 90 * 60  # the small trace's last sample


def _config(port: int) -> str:
    return (
        "global:\n  scrape_interval: 100ms\n  scrape_timeout: 100ms\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: gpuledger\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    )


def test_prometheus_holds_replays_costs(prometheus, small_trace, reference, tmp_path):
    port = free_port()
    server = prometheus(_config(port), tmp_path / "prometheus")
    # Prometheus applies its first targets a few seconds after start: see it try the agent's
    # address (down) before the agent starts, so the very first counter values are scraped.
    server.wait_for('up{job="gpuledger"} == 0', timeout=30)
    agent, _ = start_agent(small_trace, tmp_path / "ledger", "--speed", "600", "--interval", "200ms", port=port)
    try:
        wait_for(lambda: server.value("gpuledger_last_sample_timestamp_seconds") == LAST_SAMPLE, 60,
                 "Prometheus to scrape the end of the trace", agent)
        done_at = server.value("timestamp(gpuledger_last_sample_timestamp_seconds)")
        wait_for(lambda: server.value("timestamp(gpuledger_build_info)") > done_at + 1, 10, "more scrapes", agent)
        at = server.value("timestamp(gpuledger_build_info)")  # the newest scrape: no extrapolation past it
        summary = reference["summary"]

        def by(expr: str, label: str) -> dict[str, float]:
            return {r["metric"].get(label, ""): float(r["value"][1]) for r in server.query(expr, at)}

        want = {t["team"]: t["cost"] for t in summary["teams"]}
        # the stored counters are replay's figures to float precision, team by team
        teams = by("sum by (team) (gpuledger_gpu_cost_total)", "team")
        assert teams.keys() == want.keys()
        for team, cost in want.items():
            assert math.isclose(teams[team], cost, rel_tol=1e-9), (team, teams[team], cost)
        # increase() starts a series at the first value Prometheus scraped, so a team whose
        # first cycle came between two scrapes loses that cycle's cost (1.25% seen on CI)
        increases = by("sum by (team) (increase(gpuledger_gpu_cost_total[10m]))", "team")
        for team, cost in want.items():
            assert math.isclose(increases[team], cost, rel_tol=0.05), (team, increases[team], cost)
        for metric, column in (("gpuledger_gpu_cost_total", "cost"),
                               ("gpuledger_gpu_allocated_seconds_total", "allocated_gpu_seconds"),
                               ("gpuledger_gpu_used_seconds_total", "used_gpu_seconds"),
                               ("gpuledger_gpu_idle_cost_total", "idle_cost"),
                               ("gpuledger_gpu_unallocated_cost_total", "unallocated_cost")):
            held = server.value(f"sum(increase({metric}[10m]))", at)
            assert math.isclose(held, summary["totals"][column], rel_tol=0.05), (metric, held)  # see above
            # the counters' last values, as stored, are replay's figures to float precision
            assert math.isclose(server.value(f"sum({metric})", at), summary["totals"][column], rel_tol=1e-9), metric
        classes = by("sum by (workload_class) (increase(gpuledger_gpu_cost_total[10m]))", "workload_class")
        for team in summary["teams"]:
            for cls, figures in team["by_class"].items():
                assert cls in classes and figures["cost"] > 0
        [target] = server.targets()
        assert target["health"] == "up" and target["labels"]["job"] == "gpuledger"
    finally:
        assert stop(agent) == 0
