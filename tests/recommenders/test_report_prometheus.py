"""``gpuledger report --prometheus``: the report from a real Prometheus's history against the ledger's.

The history is made without waiting a week: the project's simulator and replay give a
9-day ledger; the test turns it into what a Prometheus scraping the agents would hold
(OpenMetrics with timestamps: the agent's counters cumulated minute by minute and scraped
every two minutes, the device and price gauges, labels as in docs/metrics.md, one agent
restart, workloads' series that end when they finish), backfills it with ``promtool``
and starts a real ``prometheus`` on it. The report read back with range queries is then
compared with the report of the ledger itself and with replay's ``summary.json``.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.promserver import PrometheusServer, backfill, free_port

pytestmark = pytest.mark.slow  # drives real processes or servers; see README "Fast loop"

ROOT = Path(__file__).resolve().parents[2]
HOURS = 216  # 9 days: a full 7-day window and 2 days before it
SCRAPE_S = 120  # the counters are cumulated every minute and scraped every two
RESTART_AFTER_S = 100 * 3600 + 1800  # one agent restarts half-way through an hour: its counters reset
RESTART_NODE = "gpu-node-0002"
THIN_S = 1800  # the gauges that do not change (memory total, price) every 30 minutes only: a smaller file
COUNTERS = {"allocated_gpu_seconds": "gpuledger_gpu_allocated_seconds", "used_gpu_seconds": "gpuledger_gpu_used_seconds",
            "util_unknown_gpu_seconds": "gpuledger_gpu_util_unknown_seconds", "cost": "gpuledger_gpu_cost",
            "idle_cost": "gpuledger_gpu_idle_cost"}
UNALLOCATED = {"unallocated_gpu_seconds": "gpuledger_gpu_unallocated_seconds",
               "unallocated_cost": "gpuledger_gpu_unallocated_cost"}
LABELS = ["node", "gpu_model", "namespace", "team", "workload_class", "workload"]
SERVING = {"requests": "gpuledger_serving_requests", "input_tokens": "gpuledger_serving_input_tokens",
           "output_tokens": "gpuledger_serving_output_tokens"}
# the pods of this namespace get no agent serving counters: Prometheus scrapes their vLLM's own, which the
# report joins to their workload through gpuledger_pod_info (docs/unit-economics.md)
SERVER_NAMESPACE = "genai-serving"
VLLM = {"requests": "vllm:request_success", "input_tokens": "vllm:prompt_tokens", "output_tokens": "vllm:generation_tokens"}
SOURCES = {"rate-card": "ratecard", "default": "default"}  # the metric's `source` for the ledger's price_source


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, cwd=ROOT)


# --------------------------------------------------------------------------- the history Prometheus holds


def _labels(values: dict) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in values.items()) + "}"


def _lines(out: list[str], name: str, labels: dict, ts, values) -> None:
    prefix = name + _labels(labels) + " "
    out.extend(f"{prefix}{v!r} {t}" for t, v in zip(list(ts), np.asarray(values, dtype=np.float64).tolist()))


def _agent_labels(node: str) -> dict:
    return {"job": "gpuledger", "instance": f"{node}:9400"}


def _counter_series(out: dict, columns: dict, labels: dict, minutes: np.ndarray, values: np.ndarray,
                    end: int, restart: int | None) -> None:
    """One label set's counters: 0 at the start of its first minute, then the running sums at each scrape.

    The series ends at the first scrape after its last increment (the agent forgets a
    finished workload); an agent restart resets it to 0 right after a scrape.
    """
    m0, m_last = int(minutes.min()), int(minutes.max())
    grid = np.arange(m0, m_last + 60, 60)
    x = np.zeros((len(grid), values.shape[1]))
    x[(minutes - m0) // 60] = values
    cum = np.cumsum(x, axis=0)
    ts = grid + 60  # the running sum after each minute
    stop = min(-(-(m_last + 60) // SCRAPE_S) * SCRAPE_S, end)
    keep = ts % SCRAPE_S == 0
    times = [m0] + [int(t) for t in ts[keep]]
    rows = [np.zeros(values.shape[1])] + list(cum[keep])
    if times[-1] < stop:
        times.append(stop)
        rows.append(cum[-1])
    if restart is not None and times[0] < restart < times[-1]:
        at = cum[(restart - m0) // 60 - 1]  # the value the last scrape before the restart saw
        i = times.index(restart)
        times = times[:i + 1] + [f"{restart}.001"] + times[i + 1:]
        rows = rows[:i + 1] + [np.zeros(values.shape[1])] + [r - at for r in rows[i + 1:]]
    table = np.array(rows)
    for j, (column, name) in enumerate(columns.items()):
        _lines(out.setdefault(name, []), name + "_total", labels, times, table[:, j])


def openmetrics(ledger: pd.DataFrame, currency: str) -> str:
    """What Prometheus would hold after scraping the agents that produced ``ledger`` (docs/metrics.md)."""
    d = ledger.copy()
    d["minute"] = d["minute"].astype("datetime64[s, UTC]").astype("int64")
    end = int(d["minute"].max()) + 60
    restart = int(d["minute"].min()) + RESTART_AFTER_S
    fams: dict[str, list[str]] = {}

    alloc = d[d["pod_uid"].notna()].copy()
    alloc["workload"] = (alloc["workload_kind"].astype(str) + "/" + alloc["workload_name"].astype(str)).astype("category")
    per = alloc.groupby([*LABELS, "minute"], observed=True)[list(COUNTERS)].sum().reset_index()
    for key, part in per.groupby(LABELS, sort=True, observed=True):
        labels = {**dict(zip(LABELS, key)), **_agent_labels(key[0])}
        _counter_series(fams, COUNTERS, labels, part["minute"].to_numpy(), part[list(COUNTERS)].to_numpy(), end,
                        restart if key[0] == RESTART_NODE else None)
    served = alloc[alloc["requests"].notna()].copy()
    for c in SERVING:
        served[c] = served[c].fillna(0.0)
    by_agent = served[served["namespace"] != SERVER_NAMESPACE]
    per = by_agent.groupby([*LABELS, "minute"], observed=True)[list(SERVING)].sum().reset_index()
    for key, part in per.groupby(LABELS, sort=True, observed=True):
        labels = {**dict(zip(LABELS, key)), **_agent_labels(key[0])}
        _counter_series(fams, SERVING, labels, part["minute"].to_numpy(), part[list(SERVING)].to_numpy(), end,
                        restart if key[0] == RESTART_NODE else None)
    by_server = served[served["namespace"] == SERVER_NAMESPACE]
    per = by_server.groupby(["node", "namespace", "pod", "minute"], observed=True)[list(SERVING)].sum().reset_index()
    for (node, ns, pod), part in per.groupby(["node", "namespace", "pod"], sort=True, observed=True):
        labels = {"namespace": ns, "pod": pod, "model_name": "sdxl", "job": "vllm", "instance": f"{pod}:8000"}
        _counter_series(fams, VLLM, labels, part["minute"].to_numpy(), part[list(SERVING)].to_numpy(), end, None)
    held_pods = alloc[alloc["allocated_gpu_seconds"] > 0].groupby(
        ["node", "namespace", "pod", "team", "workload_class", "workload"], observed=True)["minute"].agg(["min", "max"])
    for (node, ns, pod, team, cls, wl), (first, last) in held_pods.iterrows():
        times = np.arange(-(-(first + 60) // SCRAPE_S) * SCRAPE_S, min(last + 60 + 300, end) + 1, SCRAPE_S)
        labels = {"node": node, "namespace": ns, "pod": pod, "team": team, "workload_class": cls, "workload": wl,
                  **_agent_labels(node)}
        _lines(fams.setdefault("gpuledger_pod_info", []), "gpuledger_pod_info", labels, times, np.ones(len(times)))
    spare = d[d["pod_uid"].isna()].groupby(["node", "gpu_model", "minute"], observed=True)[list(UNALLOCATED)].sum()
    for key, part in spare.reset_index().groupby(["node", "gpu_model"], sort=True, observed=True):
        labels = {"node": key[0], "gpu_model": key[1], **_agent_labels(key[0])}
        minutes = part["minute"].to_numpy()
        _counter_series(fams, UNALLOCATED, labels, minutes, part[list(UNALLOCATED)].to_numpy(), end,
                        restart if key[0] == RESTART_NODE else None)

    # device gauges at each scrape: the latest minute of each device (its peak memory in that minute)
    on_grid = d[(d["minute"] + 60) % SCRAPE_S == 0]
    held = on_grid[on_grid["pod_uid"].notna() & (on_grid["allocated_gpu_seconds"] > 0)]
    held = held.groupby(["node", "gpu_model", "device_uuid", "minute"], observed=True).agg(
        pods=("pod", "nunique"), namespace=("namespace", "first"), pod=("pod", "first"),
        memory=("memory_used_max_bytes", "sum"), used=("used_gpu_seconds", "sum"),
        alloc=("allocated_gpu_seconds", "sum"))
    free = on_grid.groupby(["node", "gpu_model", "device_uuid", "minute"], observed=True).agg(
        memory=("memory_used_max_bytes", "max"), total=("gpu_memory_total_bytes", "max"))
    dev = free.reset_index().merge(held.reset_index(), how="left", on=["node", "gpu_model", "device_uuid", "minute"],
                                   suffixes=("", "_held"))
    for c in ("namespace", "pod"):
        dev[c] = dev[c].astype(object)
    mine = dev["pods"] == 1  # the holder is named only when exactly one pod holds the device
    dev["namespace"] = np.where(mine, dev["namespace"], "")
    dev["pod"] = np.where(mine, dev["pod"], "")
    dev["memory"] = np.where(dev["pods"] > 0, dev["memory_held"], dev["memory"])
    no_util = set(d["parent_uuid"].dropna()) | {u for u in d["device_uuid"].cat.categories if u.startswith("MIG-")}
    dev["util"] = np.where(dev["pods"] > 0, dev["used"] / dev["alloc"], 0.0)
    dev["ts"] = dev["minute"] + 60
    for key, part in dev.groupby(["node", "gpu_model", "device_uuid"], sort=True, observed=True):
        node_labels = {"node": key[0], "gpu_model": key[1], "uuid": key[2], **_agent_labels(key[0])}
        constant = part[part["ts"] % THIN_S == 0]
        _lines(fams.setdefault("gpuledger_gpu_memory_total_bytes", []), "gpuledger_gpu_memory_total_bytes",
               node_labels, constant["ts"], constant["total"])
        for (ns, pod), held_part in part.groupby(["namespace", "pod"], sort=True):
            labels = {**node_labels, "namespace": ns, "pod": pod}
            _lines(fams.setdefault("gpuledger_gpu_memory_used_bytes", []), "gpuledger_gpu_memory_used_bytes",
                   labels, held_part["ts"], held_part["memory"])
            if key[2] not in no_util:
                _lines(fams.setdefault("gpuledger_gpu_utilization_ratio", []), "gpuledger_gpu_utilization_ratio",
                       labels, held_part["ts"], held_part["util"])
    price = on_grid[(on_grid["minute"] + 60) % THIN_S == 0].groupby(["node", "gpu_model", "minute"], observed=True).agg(
        price=("gpu_hourly_price", "first"), instance_type=("instance_type", "first"),
        capacity_type=("capacity_type", "first"), source=("price_source", "first")).reset_index()
    for key, part in price.groupby(["node", "gpu_model", "instance_type", "capacity_type", "source"], sort=True,
                                   observed=True):
        source = SOURCES.get(key[4], key[4].split(":")[0])
        labels = {"node": key[0], "gpu_model": key[1], "instance_type": key[2], "capacity_type": key[3],
                  "source": source, "currency": currency, **_agent_labels(key[0])}
        _lines(fams.setdefault("gpuledger_gpu_hourly_price", []), "gpuledger_gpu_hourly_price", labels,
               part["minute"] + 60, part["price"])

    text = []
    for name, lines in fams.items():
        counters = {*COUNTERS.values(), *UNALLOCATED.values(), *SERVING.values(), *VLLM.values()}
        text.append(f"# TYPE {name} {'counter' if name in counters else 'gauge'}")
        text.extend(lines)
    text.append("# EOF")
    return "\n".join(text) + "\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """simulate → replay: a 9-day ledger and its summary.json, at one-minute samples."""
    work = tmp_path_factory.mktemp("promdemo")
    for args in (["simulate", "--hours", str(HOURS), "--interval", "60", "--out", str(work / "t.jsonl.gz")],
                 ["replay", str(work / "t.jsonl.gz"), "--out", str(work / "out")]):
        done = cli(*args)
        assert done.returncode == 0, done.stderr
    return work / "out"


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory):
    """A real Prometheus holding the demo's history (backfilled), stopped after the module."""
    import pyarrow.parquet as pq

    table = pq.read_table(demo / "ledger.parquet")
    currency = (table.schema.metadata or {}).get(b"gpuledger.currency", b"USD").decode()
    text = openmetrics(table.to_pandas(strings_to_categorical=True), currency)
    data = tmp_path_factory.mktemp("prom") / "data"
    backfill(text, data)
    with PrometheusServer() as prom:
        prom.start(data_dir=data)
        yield prom


def end_of(demo: Path) -> int:
    summary = json.loads((demo / "summary.json").read_text())
    return int(pd.Timestamp(summary["window"]["end"]).timestamp())


@pytest.fixture(scope="module")
def reports(demo, server, tmp_path_factory) -> dict[str, Path]:
    """The CLI's two reports of the same 7 days: from the ledger file, and from Prometheus."""
    out = tmp_path_factory.mktemp("reports")
    runs = {"ledger": ["--ledger", str(demo / "ledger.parquet")],
            "prometheus": ["--prometheus", server.url, "--until", str(end_of(demo)), "--region", "us-east-1"]}
    for name, args in runs.items():
        done = cli("report", *args, "--since", "7d", "--top", "100", "--out", str(out / name))
        assert done.returncode == 0, done.stderr
        assert "7.0 days to 2025-12-04 05:00 UTC" in done.stdout, done.stdout
    return {name: out / name for name in runs}


def build(**overrides):
    """The report model as `gpuledger report` builds it (no files), for exact comparisons."""
    import argparse

    from agent.cmd_report import build as build_report, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["report", "--out", "unused", "--top", "100", *overrides.pop("argv")])
    return build_report(args)


@pytest.fixture(scope="module")
def models(demo, server):
    """(from the ledger, from Prometheus) report models."""
    # nine days of history: a 1-year term needs 14 by default, so lower the bar to compare the chosen terms
    enough = ["--commitment-min-days-1y", "7"]
    ledger = build(argv=["--ledger", str(demo / "ledger.parquet"), *enough])
    prom = build(argv=["--prometheus", server.url, "--until", str(end_of(demo)), "--region", "us-east-1", *enough])
    return ledger, prom


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


MONEY_RTOL = 1e-3  # measured: 1e-4 at most (a workload's series ending between two scrapes, once)
DAY_RTOL = 2e-3  # measured 8e-4: a day holds all of a series end's extrapolation, a week spreads it


def test_the_command_writes_every_file_and_says_where_the_figures_come_from(reports):
    names = sorted(p.name for p in reports["prometheus"].iterdir())
    assert names == sorted(p.name for p in reports["ledger"].iterdir()) == sorted(
        ["report.md", "report.html", "recommendations.json", "recommendations.csv", "focus.csv"])
    md = (reports["prometheus"] / "report.md").read_text()
    assert "> Built from Prometheus, hour by hour" in md and "coarser than a ledger's minutes" in md
    # what the metrics cannot say is said in the report, not printed as figures
    assert "> The metrics do not name MIG profiles" in md
    assert ("> 3 workload(s) ran where the device gauges name no single pod (time-shared GPUs: platform/lang-detect, "
            "platform/ner-tagger, search-prod/spellcheck)") in md
    assert "carry no region" not in md  # --region was given
    assert "Built from Prometheus" not in (reports["ledger"] / "report.md").read_text()


def test_showback_matches_the_ledger(models):
    ledger, prom = models
    assert prom.currency == ledger.currency == "USD"
    assert (prom.window, prom.previous) == (ledger.window, ledger.previous)
    for key in ("total_cost", "cost", "idle_cost", "unallocated_cost", "capacity_gpu_hours", "allocated_gpu_hours",
                "used_gpu_hours", "unallocated_gpu_hours", "utilization"):
        assert rel(prom.totals[key], ledger.totals[key]) < MONEY_RTOL, key
        assert rel(prom.previous_totals[key], ledger.previous_totals[key]) < MONEY_RTOL, key
    teams = {t["team"]: t for t in ledger.teams}
    assert [t["team"] for t in prom.teams] == [t["team"] for t in ledger.teams]  # the same teams, the same order
    for t in prom.teams:
        for key in ("cost", "idle_cost", "gpu_hours", "previous_cost", "change"):
            assert rel(t[key], teams[t["team"]][key]) < MONEY_RTOL, (t["team"], key)
    classes = {c["workload_class"]: c for c in ledger.classes}
    assert [c["workload_class"] for c in prom.classes] == list(classes)
    for c in prom.classes:
        for key in ("cost", "idle_cost", "gpu_hours"):
            assert rel(c[key], classes[c["workload_class"]][key]) < MONEY_RTOL, (c["workload_class"], key)


def _by(rows, *keys):
    out = defaultdict(float)
    for r in rows:
        out[tuple(r[k] for k in keys)] += r["cost"]
    return out


def test_cost_by_gpu_model_day_and_workload_matches_the_ledger(models, reports):
    ledger, prom = models
    for keys in (("gpu_model",), ("team", "gpu_model"), ("day", "team"),
                 ("team", "namespace", "workload_kind", "workload_name")):
        want, got = _by(ledger.focus_rows, *keys), _by(prom.focus_rows, *keys)
        assert set(got) == set(want), keys
        tolerance = DAY_RTOL if "day" in keys else MONEY_RTOL
        for key, cost in want.items():
            assert rel(got[key], cost) < tolerance, (keys, key, got[key], cost)
    assert prom.daily_cost["days"] == ledger.daily_cost["days"]
    for team, days in ledger.daily_cost["teams"].items():
        assert np.allclose(prom.daily_cost["teams"][team], days, rtol=DAY_RTOL, atol=0.01), team
    assert [(a.scope, a.name, a.day) for a in prom.anomalies] == [(a.scope, a.name, a.day) for a in ledger.anomalies]
    # the files say the same: FOCUS rows per day, team, workload and GPU model
    def billed(path):
        with open(path / "focus.csv", newline="") as f:
            return sum(float(r["BilledCost"]) for r in csv.DictReader(f))
    assert rel(billed(reports["prometheus"]), billed(reports["ledger"])) < MONEY_RTOL


def test_prometheus_figures_match_replays_summary(models, demo):
    """An independent path: replay's summary.json covers both windows (9 days) of the same trace."""
    _, prom = models
    summary = json.loads((demo / "summary.json").read_text())
    both = {t["team"]: (t["cost"] or 0.0) + (t["previous_cost"] or 0.0) for t in prom.teams}
    assert rel(both.pop("(unallocated)"), summary["totals"]["unallocated_cost"]) < MONEY_RTOL
    assert set(both) == {t["team"] for t in summary["teams"]}
    for t in summary["teams"]:
        assert rel(both[t["team"]], t["cost"]) < MONEY_RTOL, t["team"]
    totals = prom.totals["total_cost"] + prom.previous_totals["total_cost"]
    assert rel(totals, summary["totals"]["cost"] + summary["totals"]["unallocated_cost"]) < MONEY_RTOL
    hours = prom.totals["capacity_gpu_hours"] + prom.previous_totals["capacity_gpu_hours"]
    assert rel(hours, summary["totals"]["gpu_seconds"] / 3600) < MONEY_RTOL
    idle = prom.totals["idle_cost"] + prom.previous_totals["idle_cost"]
    assert rel(idle, summary["totals"]["idle_cost"]) < MONEY_RTOL


def _key(w) -> tuple:
    return (w["team"], w["namespace"], w["workload_kind"], w["workload_name"])


def time_shared(ledger_path: Path) -> set[tuple]:
    """Workloads that held a GPU together with another pod in some minute (the gauges name no pod then)."""
    d = pd.read_parquet(ledger_path)
    d = d[d["pod_uid"].notna() & (d["allocated_gpu_seconds"] > 0)]
    pods = d.groupby(["minute", "device_uuid"], observed=True)["pod_uid"].transform("nunique")
    together = d[pods > 1]
    return {tuple(k) for k in together[["team", "namespace", "workload_kind", "workload_name"]].drop_duplicates()
            .itertuples(index=False)}


def test_the_same_workloads_and_recommendations(models, demo):
    from recommenders.rightsizing import is_safe

    ledger, prom = models
    want = {_key(w): w for w in ledger.top_by_cost}
    got = {_key(w): w for w in prom.top_by_cost}
    assert set(got) == set(want)
    shared = time_shared(demo / "ledger.parquet")
    assert len(shared) == 3
    for key, w in want.items():
        assert got[key]["pods"] == w["pods"], key
        assert rel(got[key]["cost"], w["cost"]) < MONEY_RTOL, key
        if w["util_p95"] is not None:  # hourly quantiles of the gauge stand in for the minutes
            assert abs(got[key]["util_p95"] - w["util_p95"]) < 0.03, (key, got[key]["util_p95"], w["util_p95"])
        if key in shared:  # time-shared: the gauge shows the whole GPU's memory, never less than the pod's
            assert got[key]["memory_max_bytes"] >= w["memory_max_bytes"], key
        elif w["memory_max_bytes"] is not None:
            assert got[key]["memory_max_bytes"] == pytest.approx(w["memory_max_bytes"]), key
    recs = {(r.type, r.namespace, r.workload_name): r for r in prom.recommendations}
    assert set(recs) == {(r.type, r.namespace, r.workload_name) for r in ledger.recommendations}
    for r in ledger.recommendations:
        mine = recs[(r.type, r.namespace, r.workload_name)]
        assert rel(mine.monthly_savings, r.monthly_savings) < MONEY_RTOL
        assert (mine.target_gpu_model, mine.current_gpus_per_pod, mine.replicas, mine.confidence, mine.risk) == \
            (r.target_gpu_model, r.current_gpus_per_pod, r.replicas, r.confidence, r.risk)
        if (r.team, r.namespace, r.workload_kind, r.workload_name) not in shared:
            assert rel(mine.hours_observed, r.hours_observed) < 0.01, r.workload_name
        assert is_safe(mine)
    assert rel(prom.potential_monthly_savings, ledger.potential_monthly_savings) < MONEY_RTOL


def test_commitments_match_the_ledger(models):
    ledger, prom = models
    assert [p.label for p in prom.commitments] == [p.label for p in ledger.commitments]
    for p, q in zip(prom.commitments, ledger.commitments):
        assert p.hours == q.hours and rel(p.on_demand_hourly, q.on_demand_hourly) < 1e-6, p.label
        assert rel(p.usage_mean, q.usage_mean) < MONEY_RTOL and rel(p.needed_mean, q.needed_mean) < MONEY_RTOL
        assert (p.best and p.best.option, p.best and p.best.k) == (q.best and q.best.option, q.best and q.best.k)
        assert (p.after_rightsizing and p.after_rightsizing.k) == (q.after_rightsizing and q.after_rightsizing.k)
    assert any(p.best is not None for p in prom.commitments)  # the snapshot prices us-east-1 pools


def test_without_a_region_the_report_says_so(demo, server, models):
    prom = build(argv=["--prometheus", server.url, "--until", str(end_of(demo))])
    assert any("carry no region" in n and "--region" in n for n in prom.notes)
    assert not any("carry no region" in n for n in models[1].notes)
    assert {p.label for p in prom.commitments} == {f"{p.instance_type} (any region)" for p in models[1].commitments}


# --------------------------------------------------------------------------- alignment and queries


def test_each_hour_is_counted_once(server, demo):
    """Hour rows from increase()[1h] at whole hours against the ledger's minutes summed by hour."""
    from collectors.promhistory import DETAIL, fetch, hour_rows, spread_minutes

    end = end_of(demo)
    answers = fetch(server.url, end - HOURS * 3600, end, detail_from=end - 7 * 86400)
    for name in DETAIL:  # the right-sizing evidence is read for the report window only
        assert min(float(v[0]) for s in answers.results[name] for v in s["values"]) == end - 7 * 86400 + 3600
    rows = hour_rows(answers.results)
    got = pd.DataFrame({"hour": rows.columns["minute"], "alloc": rows.columns["allocated_gpu_seconds"],
                        "spare": rows.columns["unallocated_gpu_seconds"], "cost": rows.columns["cost"]})
    got = got.groupby("hour").sum()
    d = pd.read_parquet(demo / "ledger.parquet", columns=["minute", "allocated_gpu_seconds",
                                                           "unallocated_gpu_seconds", "cost"])
    d["hour"] = d["minute"].astype("datetime64[s, UTC]").astype("int64") // 3600 * 3600
    want = d.groupby("hour")[["allocated_gpu_seconds", "unallocated_gpu_seconds", "cost"]].sum()
    assert list(got.index) == list(want.index) and len(got) == HOURS  # every hour, and no hour twice
    assert np.allclose(want["allocated_gpu_seconds"] + want["unallocated_gpu_seconds"], 24 * 3600, rtol=1e-12)
    # Exact (an agent restart included) but in the hours where a workload's series ended
    # between two whole hours: increase() extrapolates its last scrape by half a scrape
    # interval, so such an hour gains at most a scrape interval per GPU the workload held.
    d = d.join(pd.read_parquet(demo / "ledger.parquet", columns=["node", "workload_name", "device_uuid"]))
    held = d[d["allocated_gpu_seconds"] > 0]
    last = held.groupby(["node", "workload_name"], observed=True)["hour"].idxmax()
    allowance = defaultdict(float)
    for (node, name), i in last.items():
        stop = -(-(held.loc[i, "minute"].timestamp() + 60) // SCRAPE_S) * SCRAPE_S  # the series' last scrape
        if stop % 3600 and stop < end:
            ending = held[(held["node"] == node) & (held["workload_name"] == name)
                          & (held["minute"] == held.loc[i, "minute"])]
            allowance[int(stop // 3600 * 3600)] += SCRAPE_S * ending["device_uuid"].nunique()
    extra = got["alloc"] + got["spare"] - 24 * 3600
    for hour, seconds in extra.items():
        assert -1e-6 <= seconds <= allowance.get(hour, 0.0) + 1e-6, (hour, seconds, allowance.get(hour))
    assert 3 <= (extra > 1e-6).sum() <= len(allowance)  # the PyTorchJob, the CronJob's run, the debug pod at least
    off = np.abs(got["cost"] / want["cost"] - 1)
    assert set(off[off > 1e-9].index) <= set(allowance) and off.max() < 1e-2
    assert rel(got["cost"].sum(), want["cost"].sum()) < 1e-4
    # spreading the report window's hours over their minutes keeps every sum
    spread = spread_minutes(rows, spread_from=end - 7 * 86400)
    for column in ("allocated_gpu_seconds", "used_gpu_seconds", "util_unknown_gpu_seconds", "cost", "idle_cost",
                   "unallocated_cost"):
        assert rel(float(np.sum(spread[column])), float(np.sum(rows.columns[column]))) < 1e-12, column
    minutes = np.asarray(spread["minute"])
    assert (minutes[minutes >= end - 7 * 86400] % 60 == 0).all() and len(set(minutes.tolist())) == 7 * 24 * 60 + 48


def test_long_windows_are_split_into_several_range_queries(server, demo):
    import urllib.request

    from collectors.promhistory import MAX_POINTS, QUERIES, chunks, fetch, hour_rows

    assert chunks(0, (MAX_POINTS - 1) * 3600, 3600, MAX_POINTS) == [(0, (MAX_POINTS - 1) * 3600)]
    assert chunks(0, MAX_POINTS * 3600, 3600, MAX_POINTS) == [(0, (MAX_POINTS - 1) * 3600),
                                                                (MAX_POINTS * 3600, MAX_POINTS * 3600)]
    with pytest.raises(ValueError):
        chunks(0, 3600, 3600, MAX_POINTS + 1)
    requests = []

    def counting(request, timeout):
        requests.append(request.full_url)
        return urllib.request.urlopen(request, timeout=timeout)

    end = end_of(demo)
    whole = fetch(server.url, end - HOURS * 3600, end)
    split = fetch(server.url, end - HOURS * 3600, end, points=50, opener=counting)
    assert len(requests) == len(QUERIES) * -(-HOURS // 50)
    assert hour_rows(split.results).columns == hour_rows(whole.results).columns


@pytest.mark.parametrize("make_url, words", [
    (lambda url: f"http://127.0.0.1:{free_port()}", "cannot reach Prometheus at"),
    (lambda url: url + "/not-prometheus", "answered HTTP 404"),
    (lambda url: "prometheus:9090", "expected the Prometheus base URL"),
])
def test_prometheus_errors_exit_2_and_write_nothing(tmp_path, server, make_url, words):
    done = cli("report", "--prometheus", make_url(server.url), "--out", str(tmp_path / "r"))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpuledger: error: field '--prometheus': ") and words in lines[0], lines
    assert not (tmp_path / "r").exists()


def test_a_prometheus_without_gpuledger_series_is_an_error(tmp_path, demo):
    with PrometheusServer() as empty:
        empty.start(data_dir=tmp_path / "empty")
        done = cli("report", "--prometheus", empty.url, "--until", str(end_of(demo)), "--out", str(tmp_path / "r"))
    assert done.returncode == 2
    assert "holds no gpuledger counters between 2025-11-04T05:00Z and 2025-12-04T05:00Z" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, words", [
    (["--ledger", "x.parquet", "--prometheus", "http://127.0.0.1:9"], "not allowed with argument"),
    (["--ledger", "x.parquet", "--region", "us-east-1"], "field '--region': applies to --prometheus only"),
    (["--prometheus", "http://127.0.0.1:9", "--until", "yesterday"], "field '--until': expected a time"),
])
def test_flag_mistakes_exit_2(tmp_path, args, words):
    done = cli("report", *args, "--out", str(tmp_path / "r"))
    assert done.returncode == 2 and words in done.stderr, done.stderr
    assert not (tmp_path / "r").exists()


def test_until_ends_a_ledger_report_too(demo):
    end = end_of(demo)
    report = build(argv=["--ledger", str(demo / "ledger.parquet"), "--since", "2d",
                         "--until", pd.Timestamp(end - 86400 - 90, unit="s").strftime("%Y-%m-%dT%H:%M:%SZ")])
    assert (report.window.start, report.window.end) == (end - 3 * 86400 - 120, end - 86400 - 120)


def test_owner_and_workload_labels():
    from collectors.promhistory import owner_of, split_workload

    assert split_workload("PyTorchJob/llama-ft") == ("PyTorchJob", "llama-ft")
    assert split_workload("Pod/debug") == ("Pod", "debug") and split_workload(None) == (None, None)
    names = ["chat", "chat-v2", "train"]
    assert owner_of("chat-v2-7d9f8-x2k4q", names) == "chat-v2"  # the longest name the pod's name starts with
    assert owner_of("chat-7d9f8-x2k4q", names) == "chat"
    assert owner_of("train-worker-0", names) == "train"
    assert owner_of("other-0", names) is None and owner_of("other-0", ["only"]) == "only"


def _series(labels: dict, value: float, at: int = 7200) -> list[dict]:
    return [{"metric": labels, "values": [[at, repr(value)]]}]


def test_hour_rows_by_hand():
    """One hour of one node: a workload whose pod the gauges name on one GPU for the whole hour and
    on none for the rest of its GPU-time (a time-shared GPU), and capacity nobody held."""
    from collectors.promhistory import PrometheusError, hour_rows, spread_minutes

    node = {"node": "n1", "gpu_model": "NVIDIA A10G"}
    wl = {**node, "namespace": "web", "team": "search", "workload_class": "inference", "workload": "Deployment/chat"}
    dev_a = {**node, "uuid": "GPU-a", "namespace": "web", "pod": "chat-5d9f-x2k4q", "job": "gpuledger"}
    dev_b = {**node, "uuid": "GPU-b", "namespace": "", "pod": ""}
    price = {**node, "instance_type": "g5.12xlarge", "capacity_type": "on-demand", "source": "ratecard", "currency": "EUR"}
    answers = {
        "allocated_gpu_seconds": _series(wl, 5400.0), "used_gpu_seconds": _series(wl, 2700.0),
        "cost": _series(wl, 3.0), "idle_cost": _series(wl, 1.5),
        "unallocated_gpu_seconds": _series(node, 1800.0), "unallocated_cost": _series(node, 1.0),
        "price": _series(price, 2.5),
        "memory_total": _series({**node, "uuid": "GPU-a"}, 24e9) + _series({**node, "uuid": "GPU-b"}, 24e9),
        "presence": _series(dev_a, 30.0) + _series(dev_b, 30.0),
        "memory_max": _series(dev_a, 5e9) + _series(dev_b, 9e9),
        "util_mean": _series(dev_a, 0.5) + _series(dev_b, 0.4),
        "util_active": _series(dev_a, 0.5) + _series(dev_b, 1.0),
        **{f"util_q{q:g}": _series(dev_a, 0.0 if q <= 0.5 else 1.0) for q in (0, .1, .2, .3, .4, .5, .6, .7, .8, .9, .95, 1)},
    }
    rows = hour_rows(answers)
    cols = rows.columns
    assert rows.currency == "EUR" and rows.first_hour == 3600
    table = sorted(zip(cols["device_uuid"], cols["pod_uid"], *(np.round(cols[c], 9) for c in (
        "allocated_gpu_seconds", "unallocated_gpu_seconds", "cost", "unallocated_cost", "memory_used_max_bytes"))),
        key=lambda r: (r[0], r[2]))
    assert table == [
        ("GPU-a", "web/chat-5d9f-x2k4q", 3600.0, 0.0, 2.0, 0.0, 5e9),  # named all hour: at most an hour
        ("GPU-b", None, 0.0, 1800.0, 0.0, 1.0, 9e9),  # capacity nobody held, on the device no pod is named on
        ("GPU-b", "web/chat-5d9f-x2k4q", 1800.0, 0.0, 1.0, 0.0, 9e9),  # the rest: the time-shared GPU's memory
    ]
    assert set(cols["gpu_hourly_price"]) == {2.0}  # (3 + 1) EUR for 2 GPU-hours: the counters' price
    assert set(cols["instance_type"]) == {"g5.12xlarge"} and set(cols["workload_kind"]) - {None} == {"Deployment"}
    assert sum(cols["used_gpu_seconds"]) == 2700.0 and sum(cols["idle_cost"]) == pytest.approx(1.5)
    # spread over the minutes: GPU-a was busy half the samples, at 100 %: 30 idle minutes, 30 full ones
    spread = spread_minutes(rows, spread_from=0)
    a = [i for i, code in enumerate(spread["device_uuid"].codes)
         if spread["device_uuid"].categories[code] == "GPU-a"]
    used = sorted(spread["used_gpu_seconds"][i] for i in a)
    assert len(a) == 60 and used == [0.0] * 30 + [60.0] * 30
    assert sorted(spread["active_gpu_seconds"][i] for i in a) == [0.0] * 30 + [60.0] * 30
    assert sum(spread["cost"][i] for i in a) == pytest.approx(2.0)
    answers["price"] = answers["price"] + _series({**price, "node": "n2", "currency": "USD"}, 1.0)
    with pytest.raises(PrometheusError, match="several currencies"):
        hour_rows(answers)


def test_unit_costs_match_the_ledger(models):
    """Cost per 1,000 requests and per million output tokens from Prometheus: the agent's serving
    counters for most workloads, the vLLM pods' own counters joined through gpuledger_pod_info for
    one namespace; within 1% of the ledger's for every inference workload."""
    ledger, prom = models
    mine = {(u["namespace"], u["workload_name"]): u for u in prom.unit_costs}
    theirs = {(u["namespace"], u["workload_name"]): u for u in ledger.unit_costs if u["requests"]}
    assert theirs and any(ns == SERVER_NAMESPACE for ns, _ in theirs)
    for key, u in theirs.items():
        got = mine[key]
        assert rel(got["requests"], u["requests"]) < 0.01, key
        assert rel(got["output_tokens"], u["output_tokens"]) < 0.01, key
        assert rel(got["cost_per_1k_requests_allocation"], u["cost_per_1k_requests_allocation"]) < 0.01, key
        assert rel(got["cost_per_1m_output_tokens_usage"], u["cost_per_1m_output_tokens_usage"]) < 0.01, key
