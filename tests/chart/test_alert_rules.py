"""The chart's Prometheus rules, checked and run by promtool (Debian package `prometheus`).

The PrometheusRule is rendered by the pinned helm with budgets from values; its
spec.groups become a plain rules file for `promtool check rules` and `promtool test
rules`. The input series of the unit tests are computed here from the budget arithmetic
(a team burning at p% of its monthly budget adds p × budget / (86400 × days in the
month) per second), and so are the alerts expected at each time, from a model of
rate() over a counter that starts at 0: which alerts fire is checked independently of
the rules' own expressions.

Decided (docs/helm.md): a team whose forecast is at 85% of its budget fires the 80%
alert only; at 110% it fires both the 80% (warning) and the 100% (critical) alert; at
50% none.
"""

from __future__ import annotations

import calendar
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from collectors.metricfamilies import FAMILIES, sample_names
from tests.helmtool import CHART, REPO, pinned_helm, render
from tests.systemtools import require_tool


@pytest.fixture(scope="session")
def helm() -> Path:
    """helm 3.17.2, pinned by checksum (tests/helmtool.py)."""
    return pinned_helm()


BUDGETS = {"ml-research": 50000, "inference": 20000, "search": 10000}
BURN = {"ml-research": 0.85, "inference": 1.10, "search": 0.50}  # forecast / budget
THRESHOLDS = [(80, "warning"), (100, "critical")]
WINDOW_H = 6
BUDGET_FOR_MIN = 30
AGENT_FOR_MIN = 10
STALE_AFTER_S = 300
JOB = "gpuledger"  # the Service's name for release "gpuledger"
# promtool evaluates from Unix time 0: January 1970
DAYS_IN_MONTH = calendar.monthrange(1970, 1)[1]


def promtool() -> str:
    return require_tool("promtool", "prometheus")


@pytest.fixture(scope="module")
def groups(helm, tmp_path_factory) -> list[dict[str, Any]]:
    values = {"prometheusRule": {"enabled": True, "budgets": BUDGETS, "burnRateWindow": f"{WINDOW_H}h",
                                 "budgetFor": f"{BUDGET_FOR_MIN}m",
                                 "agentAlerts": {"for": f"{AGENT_FOR_MIN}m", "staleAfterSeconds": STALE_AFTER_S}}}
    objs = render(helm, values, tmp_path_factory.mktemp("values"))
    (rule,) = [o for o in objs if o["kind"] == "PrometheusRule"]
    return rule["spec"]["groups"]


@pytest.fixture(scope="module")
def rules_file(groups, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "gpuledger-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120)


def test_promtool_check_rules(rules_file):
    proc = run_promtool("check", "rules", str(rules_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # 6 recording rules (burn rate, forecast, cost per 1k requests and per 1M output tokens,
    # energy and carbon by team) + one budget series per team, 2 alerts per team, 3 agent alerts
    expected = 6 + len(BUDGETS) + len(BUDGETS) * len(THRESHOLDS) + 3
    assert f"SUCCESS: {expected} rules found" in proc.stdout, proc.stdout


def test_promtool_check_rules_fails_on_a_broken_rule(groups, tmp_path):
    """promtool does catch a broken expression (so a clean check means something)."""
    broken = json.loads(json.dumps(groups))
    broken[0]["rules"][0]["expr"] = "sum by (team) (rate(gpuledger_gpu_cost_total[6h])"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump({"groups": broken}))
    assert run_promtool("check", "rules", str(path)).returncode != 0


# --- the budget arithmetic, and a model of what fires when ---------------------------

def per_minute_cost(team: str) -> float:
    """Cost added per minute by a team whose month would cost BURN × budget."""
    return BURN[team] * BUDGETS[team] / (86400 * DAYS_IN_MONTH) * 60


def forecast_at(team: str, minute: int) -> float:
    """What the recording rule should give: rate() over a counter that starts at 0 at time 0
    sees only min(t, window) of it (no extrapolation below zero), so the forecast grows
    linearly until the window is full."""
    return BURN[team] * BUDGETS[team] * min(minute, WINDOW_H * 60) / (WINDOW_H * 60)


def firing_budget_alerts(minute: int) -> list[tuple[str, int, str]]:
    """(team, threshold, severity) of the budget alerts firing at ``minute`` (rules run every minute)."""
    out = []
    for team in BUDGETS:
        for pct, severity in THRESHOLDS:
            active = [m for m in range(minute + 1) if forecast_at(team, m) >= BUDGETS[team] * pct / 100]
            if active and minute - active[0] >= BUDGET_FOR_MIN:
                out.append((team, pct, severity))
    return out


def humanize(v: float) -> str:
    """Prometheus's `humanize` template function, for values of at least 1."""
    prefix = ""
    for p in ("k", "M", "G", "T"):
        if abs(v) < 1000:
            break
        prefix, v = p, v / 1000
    return f"{v:.4g}{prefix}"


def humanize_duration(v: float) -> str:
    """Prometheus's `humanizeDuration`, for durations of a minute to a day."""
    seconds, minutes, hours = int(v) % 60, int(v) // 60 % 60, int(v) // 3600 % 24
    return f"{hours}h {minutes}m {seconds}s" if hours else f"{minutes}m {seconds}s"


def test_the_model_says_what_the_docs_say():
    """The decided behaviour, read off the model: 85% → 80% alert only; 110% → both; 50% → none."""
    late = WINDOW_H * 60 + 2 * BUDGET_FOR_MIN
    assert sorted(firing_budget_alerts(late)) == [("inference", 80, "warning"), ("inference", 100, "critical"),
                                                   ("ml-research", 80, "warning")]
    assert firing_budget_alerts(30) == []


def series(labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"gpuledger_gpu_cost_total{{{inner}}}", "values": values}


def budget_tests(minutes: int) -> dict[str, Any]:
    input_series = []
    for team in BUDGETS:
        # the team's cost comes from two nodes (60% and 40%): the rules sum by team
        for node, share in (("gpu-node-0001", 0.6), ("gpu-node-0002", 0.4)):
            labels = {"node": node, "gpu_model": "NVIDIA H100 80GB HBM3", "namespace": team, "team": team,
                      "workload_class": "training", "workload": f"PyTorchJob/{team}-train"}
            input_series.append(series(labels, f"0+{per_minute_cost(team) * share!r}x{minutes}"))
    # cost without a budget: no alert for it
    input_series.append(series({"node": "gpu-node-0003", "gpu_model": "NVIDIA L4", "namespace": "misc",
                                "team": "misc", "workload_class": "other", "workload": "Pod/x"},
                               f"0+1000x{minutes}"))
    alert_tests = []
    for minute in (30, WINDOW_H * 60, WINDOW_H * 60 + 2 * BUDGET_FOR_MIN):
        exp = []
        for team, pct, severity in firing_budget_alerts(minute):
            value = forecast_at(team, minute)
            exp.append({
                "exp_labels": {"team": team, "severity": severity, "threshold": str(pct)},
                "exp_annotations": {
                    "summary": f"Team {team} is on course to spend {pct}% of its monthly GPU budget",
                    "description": f"At the cost rate of the last {WINDOW_H}h, team {team} spends "
                                   f"{humanize(value)} on GPUs in a whole month: at least {pct}% of its "
                                   f"budget of {BUDGETS[team]}.",
                },
            })
        alert_tests.append({"eval_time": f"{minute}m", "alertname": "GpuledgerTeamBudgetForecast",
                            "exp_alerts": exp})
    late = f"{WINDOW_H * 60 + 2 * BUDGET_FOR_MIN}m"
    expr_tests = [
        {"expr": "round(team:gpuledger_gpu_cost:monthly_forecast)", "eval_time": late,
         "exp_samples": [{"labels": f'{{team="{team}"}}', "value": round(BURN[team] * BUDGETS[team])}
                         for team in BUDGETS] + [{"labels": '{team="misc"}',
                                                  "value": round(1000 / 60 * 86400 * DAYS_IN_MONTH)}]},
        {"expr": "team:gpuledger_gpu_budget:monthly", "eval_time": late,
         "exp_samples": [{"labels": f'team:gpuledger_gpu_budget:monthly{{team="{team}"}}', "value": budget}
                         for team, budget in BUDGETS.items()]},
    ]
    return {"interval": "1m", "input_series": input_series, "alert_rule_test": alert_tests,
            "promql_expr_test": expr_tests}


def up(instance: str, node: str, values: str, job: str = JOB) -> dict[str, str]:
    return {"series": f'up{{job="{job}",instance="{instance}",node="{node}"}}', "values": values}


def agent_tests() -> list[dict[str, Any]]:
    down_from, stuck_at, at = 11, 5, 25  # minutes
    stale_for = at * 60 - stuck_at * 60
    running = {
        "interval": "1m",
        "input_series": [
            up("10.0.0.1:9400", "gpu-node-0001", f"1x{down_from - 1} 0x30"),          # goes down at 11m
            up("10.0.0.2:9400", "gpu-node-0002", "1x40"),                              # healthy
            {"series": f'gpuledger_last_sample_timestamp_seconds{{job="{JOB}",instance="10.0.0.2:9400"}}',
             "values": "0+60x40"},                                                     # sampling now
            up("10.0.0.3:9400", "gpu-node-0003", "1x40"),                              # up, but stuck
            {"series": f'gpuledger_last_sample_timestamp_seconds{{job="{JOB}",instance="10.0.0.3:9400"}}',
             "values": f"0+60x{stuck_at} {stuck_at * 60}x35"},
            up("10.0.0.9:9100", "gpu-node-0001", "0x40", job="node-exporter"),        # another job: ignored
        ],
        "alert_rule_test": [
            {"eval_time": f"{down_from + AGENT_FOR_MIN - 2}m", "alertname": "GpuledgerAgentDown", "exp_alerts": []},
            {"eval_time": f"{at}m", "alertname": "GpuledgerAgentDown", "exp_alerts": [{
                "exp_labels": {"job": JOB, "instance": "10.0.0.1:9400", "node": "gpu-node-0001", "severity": "warning"},
                "exp_annotations": {
                    "summary": "gpuledger agent 10.0.0.1:9400 is down",
                    "description": "Prometheus cannot scrape the gpuledger agent 10.0.0.1:9400 (node gpu-node-0001): "
                                   "the GPU cost of its node is not being recorded."}}]},
            {"eval_time": f"{at}m", "alertname": "GpuledgerAgentStale", "exp_alerts": [{
                "exp_labels": {"job": JOB, "instance": "10.0.0.3:9400", "severity": "warning"},
                "exp_annotations": {
                    "summary": "gpuledger agent 10.0.0.3:9400 has stopped sampling",
                    "description": f"The newest GPU sample of 10.0.0.3:9400 is {humanize_duration(stale_for)} old: "
                                   "NVML or the kubelet is not answering (see gpuledger_collector_errors_total and "
                                   "the agent's log)."}}]},
            {"eval_time": f"{at}m", "alertname": "GpuledgerAgentAbsent", "exp_alerts": []},
        ],
    }
    absent = {
        "interval": "1m",
        "input_series": [up("10.0.0.9:9100", "gpu-node-0001", "1x30", job="node-exporter")],
        "alert_rule_test": [
            {"eval_time": f"{AGENT_FOR_MIN - 2}m", "alertname": "GpuledgerAgentAbsent", "exp_alerts": []},
            {"eval_time": f"{AGENT_FOR_MIN + 5}m", "alertname": "GpuledgerAgentAbsent", "exp_alerts": [{
                "exp_labels": {"job": JOB, "severity": "warning"},
                "exp_annotations": {
                    "summary": "No gpuledger agent is scraped",
                    "description": f"Prometheus has no target with job={JOB}: no GPU cost is being recorded. "
                                   "Check the agent's pods and the ServiceMonitor (or scrape config)."}}]},
        ],
    }
    return [running, absent]


def write_tests(rules_file: Path, tests: list[dict[str, Any]], tmp_path: Path) -> Path:
    shutil.copy(rules_file, tmp_path / rules_file.name)
    path = tmp_path / "gpuledger-rules.test.yaml"
    groups = [g["name"] for g in yaml.safe_load(rules_file.read_text())["groups"]]
    # recording rules first at each step (promtool's order is random otherwise; Prometheus
    # runs groups independently, so an alert may see a recorded value one interval old)
    path.write_text(yaml.safe_dump({"rule_files": [rules_file.name], "evaluation_interval": "1m",
                                    "group_eval_order": groups, "tests": tests}, sort_keys=False))
    return path


def unit_cost_tests() -> dict[str, Any]:
    """Cost per 1,000 requests and per million output tokens, worked out by hand: a workload
    costing 0.5 a minute on each of two nodes answers 64 requests (and 4,096 output tokens) a
    minute on one of them; another costs but counts nothing (no series: no figure). Binary
    fractions, so the expected values are exact."""
    labels = 'namespace="chat",team="genai",workload="Deployment/llm",workload_class="inference"'
    series = [
        {"series": f'gpuledger_gpu_cost_total{{node="a",gpu_model="H100",{labels}}}', "values": "0+0.5x120"},
        {"series": f'gpuledger_gpu_cost_total{{node="b",gpu_model="H100",{labels}}}', "values": "0+0.5x120"},
        {"series": f'gpuledger_serving_requests_total{{node="a",gpu_model="H100",{labels}}}', "values": "0+64x120"},
        {"series": f'gpuledger_serving_output_tokens_total{{node="a",gpu_model="H100",{labels}}}',
         "values": "0+4096x120"},
        {"series": 'gpuledger_gpu_cost_total{node="a",gpu_model="H100",namespace="ml",team="r",workload="Job/x",'
                   'workload_class="training"}', "values": "0+1x120"},
    ]
    # over an hour: cost 2 × 60 × 0.5 = 60; requests 3,840; output tokens 245,760
    return {"interval": "1m", "input_series": series, "promql_expr_test": [
        {"expr": "workload:gpuledger_cost_per_1k_requests:rate1h", "eval_time": "90m",
         "exp_samples": [{"labels": 'workload:gpuledger_cost_per_1k_requests:rate1h{namespace="chat",team="genai",'
                                    'workload="Deployment/llm"}', "value": 15.625}]},  # 60 / 3,840 × 1,000
        {"expr": "workload:gpuledger_cost_per_1m_output_tokens:rate1h", "eval_time": "90m",
         "exp_samples": [{"labels": 'workload:gpuledger_cost_per_1m_output_tokens:rate1h{namespace="chat",'
                                    'team="genai",workload="Deployment/llm"}', "value": 244.140625}]},  # 60 / 245,760 × 1e6
    ]}


def energy_tests() -> dict[str, Any]:
    """Energy and carbon by team, worked out by hand: team a's workload draws 600 W on each
    of two nodes (36,000 J a minute each) and emits 4 g a minute on one; team b's GPUs
    report no power, so it has no energy series and no recorded figure (not 0)."""
    def labels(node: str, team: str, workload: str) -> str:
        return (f'node="{node}",gpu_model="H100",namespace="ml",team="{team}",workload="{workload}",'
                'workload_class="training"')
    series = [
        {"series": f'gpuledger_gpu_energy_joules_total{{{labels("a", "a", "Job/x")}}}', "values": "0+36000x120"},
        {"series": f'gpuledger_gpu_energy_joules_total{{{labels("b", "a", "Job/x")}}}', "values": "0+36000x120"},
        {"series": f'gpuledger_gpu_carbon_grams_total{{{labels("a", "a", "Job/x")}}}', "values": "0+4x120"},
        {"series": f'gpuledger_gpu_cost_total{{{labels("a", "b", "Job/y")}}}', "values": "0+1x120"},
    ]
    return {"interval": "1m", "input_series": series, "promql_expr_test": [
        {"expr": "team:gpuledger_gpu_energy_joules:rate1h", "eval_time": "90m",  # 2 × 36,000 J / 60 s
         "exp_samples": [{"labels": 'team:gpuledger_gpu_energy_joules:rate1h{team="a"}', "value": 1200.0}]},
        {"expr": "team:gpuledger_gpu_carbon_grams:rate1h", "eval_time": "90m",  # 4 g / 60 s
         "exp_samples": [{"labels": 'team:gpuledger_gpu_carbon_grams:rate1h{team="a"}', "value": 4 / 60}]},
    ]}


@pytest.mark.slow
def test_promtool_test_rules(rules_file, tmp_path):
    tests = ([budget_tests(WINDOW_H * 60 + 2 * BUDGET_FOR_MIN + 10)] + agent_tests() + [unit_cost_tests()]
             + [energy_tests()])
    proc = run_promtool("test", "rules", str(write_tests(rules_file, tests, tmp_path)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@pytest.mark.slow
def test_promtool_test_rules_fails_on_wrong_expectations(rules_file, tmp_path):
    """Swapping the 85% and 110% teams' expectations fails: promtool compares what fires."""
    tests = [budget_tests(WINDOW_H * 60 + 2 * BUDGET_FOR_MIN + 10)]
    for case in tests[0]["alert_rule_test"]:
        for alert in case["exp_alerts"]:
            team = alert["exp_labels"]["team"]
            alert["exp_labels"]["team"] = {"inference": "ml-research", "ml-research": "inference"}[team]
    tests[0]["promql_expr_test"] = []
    proc = run_promtool("test", "rules", str(write_tests(rules_file, tests, tmp_path)))
    assert proc.returncode != 0, proc.stdout


# --- every metric the rules and the dashboard read exists ----------------------------

def declared_metrics() -> set[str]:
    """The sample names the agent declares (collectors/metricfamilies.py); docs/metrics.md's
    tables are generated from the same declarations (tests/collectors/test_metric_families.py)."""
    return set(sample_names())


def used_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression (recording-rule names, which hold colons, aside)."""
    return {m for m in re.findall(r"(?<![:\w])(gpuledger_[a-z_]+)(?![:\w])", expr)}


def dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads((CHART / "dashboards" / "gpuledger.json").read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((f"{panel['title']} / {target['refId']}", target["expr"]))
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"]
            metric = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query)
            assert metric, query
            out.append((f"variable {var['name']}", metric.group(1)))
    return out


def test_rules_read_only_documented_metrics(groups):
    known = declared_metrics()
    assert "gpuledger_gpu_cost_total" in known and "gpuledger_last_sample_timestamp_seconds" in known
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    for group in groups:
        for rule in group["rules"]:
            assert used_metrics(rule["expr"]) <= known, rule["expr"]
            names = set(re.findall(r"\b(\w+:\w+:\w+)\b", rule["expr"]))
            assert names <= recorded, rule["expr"]


def test_dashboard_queries_are_valid_promql_on_documented_metrics(groups, tmp_path):
    """Every dashboard query parses (promtool, with Grafana's variables filled in) and reads
    only documented metrics or the chart's recording rules."""
    known = declared_metrics()
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    rules = []
    for i, (where, expr) in enumerate(dashboard_exprs()):
        assert used_metrics(expr) <= known, f"{where}: {expr}"
        assert set(re.findall(r"\b(\w+:\w+:\w+)\b", expr)) <= recorded, f"{where}: {expr}"
        filled = (expr.replace("$__rate_interval", "5m").replace("$__range", "7d").replace("$team", ".*"))
        assert "$" not in filled, f"{where}: unknown variable in {expr}"
        rules.append({"record": f"dashboard:query_{i}:check", "expr": filled})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run_promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


TARGET_LABELS = {"job", "instance"}  # what Prometheus adds to every scraped series


def read_labels(expr: str) -> set[str]:
    """Label names an expression groups, joins or matches by."""
    clauses = re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr)
    matched = re.findall(r"[{,]\s*([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", expr)
    return {n.strip() for c in clauses for n in c.split(",") if n.strip()} | set(matched)


def test_rules_and_dashboard_read_declared_labels(groups):
    """Queries on the agent's metrics alone (no recording rule, no ``up``) group and match only
    by labels those metrics are declared with, or by the scrape's own; so do the dashboard's
    variables."""
    labels = {m.sample: set(m.labels) for m in FAMILIES}
    exprs = [r["expr"] for g in groups for r in g["rules"]] + [e for _, e in dashboard_exprs()]
    checked = 0
    for expr in exprs:
        if re.search(r"\w+:\w+:\w+", expr) or re.search(r"\bup\b", expr) or not used_metrics(expr):
            continue
        carried = set().union(*(labels[m] for m in used_metrics(expr))) | TARGET_LABELS
        assert read_labels(expr) <= carried, (expr, read_labels(expr) - carried)
        checked += 1
    assert checked >= 10
    dashboard = json.loads((CHART / "dashboards" / "gpuledger.json").read_text())
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"]["query"]).groups()
            assert label in labels[metric], var["query"]["query"]


def test_the_chart_names_only_declared_metrics():
    """Every gpuledger_* metric the chart mentions (rules, dashboard, NOTES, values' comments) is declared."""
    for path in sorted(CHART.rglob("*")):
        if path.is_file() and path.suffix in (".yaml", ".json", ".txt", ".tpl", ".md"):
            named = used_metrics(path.read_text())
            assert named <= declared_metrics(), (path.relative_to(CHART), named - declared_metrics())


def test_forecast_window_follows_values(helm, tmp_path):
    objs = render(helm, {"prometheusRule": {"enabled": True, "burnRateWindow": "24h"}}, tmp_path)
    (rule,) = [o for o in objs if o["kind"] == "PrometheusRule"]
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert "sum by (team) (rate(gpuledger_gpu_cost_total[24h]))" in exprs


# --- the examples in docs/helm.md work ------------------------------------------------

def doc_blocks(lang: str) -> list[str]:
    text = (REPO / "docs" / "helm.md").read_text()
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)


def test_docs_promql_examples_are_valid(groups, tmp_path):
    known = declared_metrics()
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    exprs = [block.strip() for block in doc_blocks("promql")]
    assert len(exprs) >= 5
    for expr in exprs:
        assert used_metrics(expr) <= known, expr
        assert set(re.findall(r"\b(\w+:\w+:\w+)\b", expr)) <= recorded, expr
    path = tmp_path / "doc-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "docs", "rules": [
        {"record": f"docs:query_{i}:check", "expr": e} for i, e in enumerate(exprs)]}]}))
    proc = run_promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_docs_scrape_config_is_valid(tmp_path):
    (block,) = [b for b in doc_blocks("yaml") if "scrape_configs:" in b]
    config = yaml.safe_load(block)
    (job,) = config["scrape_configs"]
    assert job["honor_labels"] is True
    # Debian's Prometheus is built without Kubernetes service discovery, so its promtool
    # refuses kubernetes_sd_configs whatever they hold: check their shape here and let
    # promtool check the rest (honor_labels, the relabelling rules and their regexes)
    # with a static target in their place.
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod", "namespaces": {"names": ["gpuledger"]}}]
    job["static_configs"] = [{"targets": ["127.0.0.1:9400"]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    proc = run_promtool("check", "config", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_docs_rules_extraction_command(helm, tmp_path):
    """The documented pipeline that turns the chart's rules into a plain rules file works."""
    (block,) = [b for b in doc_blocks("sh") if "templates/prometheusrule.yaml" in b]
    command = block.replace("\\\n", " ").strip()
    command, redirect, target = command.rpartition(" > ")
    assert redirect and target == "gpuledger-rules.yml"
    assert command.startswith("helm template ")
    command = command.replace("helm template ", f"{helm} template ", 1).replace("python3 -c", f"{sys.executable} -c")
    out = tmp_path / target
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {command} > {out}"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    check = run_promtool("check", "rules", str(out))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "GpuledgerTeamBudgetForecast" in out.read_text()
