"""The weekly report: the model's figures by hand, every file it writes, and the command's errors."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recommenders.commitments import Option, PoolPrices
from recommenders.formats import FORMATS, render_all
from recommenders.report import UNALLOCATED, build_report
from recommenders.rightsizing import COLUMNS, TYPES
from recommenders.settings import Settings, settings_markdown
from tests.recommenders.test_report_rows import T0, frame, gpu_minutes
from tests.systemtools import require_tool

ROOT = Path(__file__).resolve().parents[2]
DAY_MIN = 1440


def report_cmd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cmd_report", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A 9-day demo ledger from the project's own simulator and replay."""
    work = tmp_path_factory.mktemp("demo")
    for args in (["simulate", "--hours", "216", "--interval", "120", "--out", str(work / "t.jsonl.gz")],
                 ["replay", str(work / "t.jsonl.gz"), "--out", str(work / "out")]):
        done = subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr
    return work / "out" / "ledger.parquet"


@pytest.fixture(scope="module")
def demo_report(demo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    done = report_cmd("--ledger", str(demo), "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def two_weeks():
    """team-a: 1 GPU all 14 days; from day 12 a second workload of 3 GPUs (an anomaly and a cost jump)."""
    base = gpu_minutes(pod="a", minutes=range(14 * DAY_MIN), util=0.9, mem_gib=30.0, name="steady", workload_class="training")
    jump = [r for i in range(3) for r in gpu_minutes(pod=f"j{i}", device=f"GPU-j{i}", minutes=range(12 * DAY_MIN, 14 * DAY_MIN),
                                                       util=0.9, mem_gib=30.0, name="burst", workload_class="training")]
    other = gpu_minutes(pod="b", minutes=range(7 * DAY_MIN, 14 * DAY_MIN), util=0.5, mem_gib=5.0, team="team-b",
                        name="serve", device="GPU-b")
    spare = gpu_minutes(pod="x", device="GPU-x", minutes=range(14 * DAY_MIN), allocated=False)
    return frame(base, jump, other, spare)


@pytest.mark.slow
def test_report_model_figures_by_hand():
    rows = two_weeks()
    end = T0 + 14 * 86400
    r = build_report(rows, end, 7 * 86400, "USD", T0, Settings(anomaly_days=7))
    gpu_day = 24 * 2.7447
    teams = {t["team"]: t for t in r.teams}
    assert teams["team-a"]["cost"] == pytest.approx(7 * gpu_day + 2 * 3 * gpu_day)
    assert teams["team-a"]["previous_cost"] == pytest.approx(7 * gpu_day)
    assert teams["team-a"]["change_pct"] == pytest.approx(6 / 7)
    assert teams["team-b"]["previous_cost"] is None and teams["team-b"]["change"] is None
    assert teams[UNALLOCATED]["cost"] == pytest.approx(7 * gpu_day)
    assert r.totals["total_cost"] == pytest.approx((7 + 6 + 7 + 7) * gpu_day)
    assert r.totals["utilization"] == pytest.approx((13 * 0.9 + 7 * 0.5) / 20)
    # the burst doubles team-a's day (2 GPUs → 4 GPUs ... 1 → 4): an anomaly on day 12, a team one
    days = {(a.scope, a.name, a.day) for a in r.anomalies}
    assert ("team", "team-a", "2025-12-07") in days
    assert all(a.day >= "2025-12-02" for a in r.anomalies)
    # FOCUS rows add up to the total spend; one row per day × team × workload
    assert sum(x["cost"] for x in r.focus_rows) == pytest.approx(r.totals["total_cost"])
    assert len(r.focus_rows) == 7 + 7 + 2 + 7  # steady, serve, burst (2 days), unallocated
    # class shares are of the whole spend, unallocated capacity included: 13, 7 and 7 GPU-days of 27
    classes = {c["workload_class"]: c["share"] for c in r.classes}
    assert classes["training"] == pytest.approx(13 / 27)
    assert classes[UNALLOCATED] == pytest.approx(7 / 27)
    assert sum(classes.values()) == pytest.approx(1.0)


@pytest.mark.slow
def test_commitments_in_the_report_use_thirty_days_when_there():
    rows = two_weeks()
    prices = [PoolPrices("node", {"instance_type": "p4d.24xlarge"}, (Option("reserved-instance", 1, "no-upfront", 10.0),))]
    r = build_report(rows, T0 + 14 * 86400, 7 * 86400, "USD", T0, pool_prices=prices)
    assert r.commitment_window.hours == pytest.approx(14 * 24)  # the ledger is shorter than 30 days
    assert any("14.0 days of history" in n for n in r.notes)
    [pool] = r.commitments
    assert pool.hours == 14 * 24


@pytest.mark.slow
def test_json_and_csv_have_the_documented_columns(demo_report):
    doc = json.loads((demo_report / "recommendations.json").read_text())
    assert doc["columns"] == list(COLUMNS)
    assert doc["recommendations"], "the demo cluster has waste to find"
    for rec in doc["recommendations"]:
        assert list(rec) == list(COLUMNS)
        assert rec["type"] in ("idle", "reduce-count", "downsize-model", "mig", "share")
    rows = list(csv.DictReader(io.StringIO((demo_report / "recommendations.csv").read_text())))
    assert len(rows) == len(doc["recommendations"])
    assert [float(r["monthly_savings"]) for r in rows] == sorted((float(r["monthly_savings"]) for r in rows), reverse=True)
    documented = re.findall(r"^\| `([a-z_0-9]+)` \|", (ROOT / "docs/report.md").read_text(), re.M)
    assert [c for c in documented if c in COLUMNS] == list(COLUMNS)


@pytest.mark.slow
def test_demo_report_reads_well(demo_report):
    md = (demo_report / "report.md").read_text()
    for heading in ("Showback by team", "Training, inference, interactive", "Daily cost by team",
                    "Utilisation distribution", "Top workloads by cost", "Top workloads by idle cost", "Anomalies",
                    "Right-sizing recommendations", "Reserved capacity"):
        assert f"## {heading}" in md
    assert "candidate-gen-v1" in md  # the demo's idle Deployment is found
    html = (demo_report / "report.html").read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html  # self-contained
    assert set(FORMATS) == {"md", "html", "json", "csv", "focus"}


@pytest.mark.slow
def test_report_html_renders_in_chromium(demo_report, tmp_path):
    browser = require_tool("chromium", "chromium", "chromium-browser")
    from PIL import Image  # noqa: PLC0415

    shot = tmp_path / "shot.png"
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1200,1600", f"--screenshot={shot}", str(demo_report / "report.html")],
                          capture_output=True, text=True, timeout=120)
    assert shot.exists(), done.stderr
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, tables and bars, not a blank page
    dark = sum(n for n, (r, g, b) in colours if r + g + b < 300)
    assert dark > 0.002 * image.width * image.height  # there is text on it


@pytest.mark.parametrize("make_args, words", [
    (lambda p, d: ["--ledger", str(p / "missing.parquet"), "--out", str(p / "r")], "missing.parquet: cannot read ledger"),
    (lambda p, d: ["--ledger", str(d), "--since", "soon", "--out", str(p / "r")], "field '--since'"),
    (lambda p, d: ["--ledger", str(d), "--rates", str(p / "nope.yaml"), "--out", str(p / "r")], "nope.yaml: cannot read"),
    (lambda p, d: ["--ledger", str(d), "--headroom", "-1", "--out", str(p / "r")], "field '--headroom'"),
])
@pytest.mark.slow
def test_bad_input_exits_2_and_writes_nothing(tmp_path, demo, make_args, words):
    done = report_cmd(*make_args(tmp_path, demo))
    assert done.returncode == 2, done.stderr
    assert words in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_not_a_ledger_is_an_input_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"minute": [1]}), tmp_path / "x.parquet")
    done = report_cmd("--ledger", str(tmp_path / "x.parquet"), "--out", str(tmp_path / "r"))
    assert done.returncode == 2 and "field 'node': column missing" in done.stderr


@pytest.mark.slow
def test_rates_with_commitments_fill_the_commitment_table(tmp_path, demo):
    rates = tmp_path / "rates.yaml"
    rates.write_text("""currency: USD
default_gpu_hourly: 2.0
nodes:
  - match: {node.kubernetes.io/instance-type: p4d.24xlarge}
    hourly: 21.957642
commitments:
  - match: {node.kubernetes.io/instance-type: p4d.24xlarge, topology.kubernetes.io/region: us-east-1}
    options:
      - {kind: reserved-instance, term_years: 1, payment: no-upfront, hourly: 14.0}
""")
    # the ledger was priced with the snapshot, the commitment table with the card: both in USD
    # nine days of demo ledger: a 1-year term wants 14 by default, so the table says why not ...
    done = report_cmd("--ledger", str(demo), "--rates", str(rates), "--out", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    md = (tmp_path / "r" / "report.md").read_text()
    assert re.search(r"\| p4d\.24xlarge \(us-east-1\) \| 9\.0 \| 1\.00 .*\| not enough history \(9\.0 days", md), md
    # ... and with the bar lowered to 7 days the option is recommended
    done = report_cmd("--ledger", str(demo), "--rates", str(rates), "--commitment-min-days-1y", "7",
                      "--out", str(tmp_path / "r7"))
    assert done.returncode == 0, done.stderr
    md = (tmp_path / "r7" / "report.md").read_text()
    assert re.search(r"\| p4d\.24xlarge \(us-east-1\) \| 9\.0 \| 1\.00 .*\| 1y reserved-instance no-upfront \| 1 \|", md), md


def test_settings_table_is_in_the_docs():
    assert settings_markdown() in (ROOT / "docs/recommendations.md").read_text()


def test_register_adds_the_report_command():
    import argparse

    from agent.cmd_report import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["report", "--ledger", "a.parquet", "b.parquet", "--out", "r", "--since", "36h",
                              "--target-utilization", "0.7"])
    assert args.ledger == ["a.parquet", "b.parquet"] and args.target_utilization == 0.7 and args.handler
    # registering the command must not pull pandas into every gpuledger invocation
    done = subprocess.run([sys.executable, "-c", "import argparse, sys; from agent.cmd_report import register; "
                           "register(argparse.ArgumentParser().add_subparsers()); print('pandas' in sys.modules)"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.slow
def test_render_all_is_pure():
    r = build_report(two_weeks(), T0 + 14 * 86400, 7 * 86400, "USD", T0)
    assert render_all(r) == render_all(r)


# --------------------------------------------------------------------------- what the report says, and does not claim


def _render(r) -> tuple[str, str]:
    texts = render_all(r)
    return texts["report.md"], texts["report.html"]


def test_a_first_window_says_there_is_none_before_it_and_marks_partial_days():
    # three days starting at 05:00: no previous window, the first and last days partial
    start = 5 * 60
    rows = frame(gpu_minutes(pod="a", minutes=range(start, start + 3 * DAY_MIN), util=0.5, mem_gib=5.0))
    end = T0 + (start + 3 * DAY_MIN) * 60
    r = build_report(rows, end, 7 * 86400, "USD", T0 + start * 60)
    md, html = _render(r)
    assert not r.has_previous
    assert "no previous window" in md and "0 days before" not in md and "compared with the 0" not in html
    assert r.daily_cost["partial"] == [True, False, False, True]
    assert "2025-11-25 (partial)" in md and "2025-11-28 (partial)" in md and "2025-11-26 (partial)" not in md
    # three days are not enough to call anything an anomaly, so the report does not say "no anomaly"
    assert "Not enough history to judge anomalies: the ledger holds 3.0 days" in md
    assert "No team or workload's daily cost rose" not in md


def test_empty_tables_are_sentences_and_mig_idle_is_unknown():
    # one MIG workload only: utilisation never reported, nothing idle to rank, no instance type
    rows = frame(gpu_minutes(pod="m", minutes=range(8 * 60), mig_profile="3g.20gb", parent="GPU-0", mem_gib=8.0,
                             instance_type=None, name="mig-serve"))
    r = build_report(rows, T0 + 8 * 3600, 7 * 86400, "USD", T0)
    md, html = _render(r)
    assert "No workload left GPUs idle." in md and "No workload left GPUs idle." in html
    assert "No commitment pool" in md
    top = [line for line in md.splitlines() if line.startswith("| ns/mig-serve |")]
    assert top and top[0].rstrip(" |").endswith("unknown")  # idle cost of a MIG workload: unknown, not 0
    team = [line for line in md.splitlines() if line.startswith("| team-a |")][0]
    assert "| unknown |" in team
    assert [b["bucket"] for b in r.utilization_histogram][-1] == "not reported (MIG)"
    assert r.not_judged and r.not_judged[0]["reason"].startswith("utilisation unknown for 100%")
    assert "## Not judged" in md and "(MIG slices report none)" in md
    for text in (md, html):  # no table is bare headers
        assert "| --- |\n\n" not in text and "<tr><th>workload</th></tr></table>" not in text


def test_utilisation_not_reported_off_mig_is_not_called_mig():
    unknown = [m % 2 == 0 for m in range(600)]
    rows = frame(gpu_minutes(pod="a", minutes=range(600), util=0.5, unknown=unknown))
    r = build_report(rows, T0 + 600 * 60, 7 * 86400, "USD", T0)
    labels = [b["bucket"] for b in r.utilization_histogram]
    assert labels[-1] == "not reported" and "not reported (MIG)" not in labels


def test_no_claim_of_efficiency_while_most_of_the_spend_is_idle():
    # a single GPU, 60% unallocated and the rest too short-lived to judge: nothing to recommend
    rows = frame(gpu_minutes(pod="a", minutes=range(120), util=0.9, mem_gib=5.0),
                 gpu_minutes(pod="x", device="GPU-x", minutes=range(600), allocated=False))
    r = build_report(rows, T0 + 600 * 60, 7 * 86400, "USD", T0)
    md, _ = _render(r)
    assert r.recommendations == []
    assert "uses what it holds" not in md
    # waste: 600 unallocated GPU-minutes + 10% of the 120 allocated = 612 of 720 = 85%
    assert "No recommendation, although 85% of the spend bought no work" in md


def test_twelve_teams_get_twelve_colours():
    from recommenders.formats.html import _colours

    names = [f"team-{i}" for i in range(12)] + [UNALLOCATED]
    colours = _colours(names)
    assert len({colours[n] for n in names[:12]}) == 12 and colours[UNALLOCATED] not in [colours[n] for n in names[:12]]


def test_the_headline_says_what_priced_the_spend_and_json_carries_the_plan(demo_report):
    md = (demo_report / "report.md").read_text()
    assert "priced by snapshot:2026-11-23 100%" in md
    doc = json.loads((demo_report / "recommendations.json").read_text())
    assert doc["version"] == 2
    assert doc["price_sources"] == [{"source": "snapshot:2026-11-23", "cost": pytest.approx(doc["price_sources"][0]["cost"]),
                                     "share": 1.0}]
    pools = {(p["instance_type"], p["region"]): p for p in doc["commitments"]}
    p4d = pools[("p4d.24xlarge", "us-east-1")]
    # nine days of history: every term is evaluated, none recommended, and the plan says why. The first
    # sample (every 120 s from 05:00) counts in 05:01, so the look-back's first whole hour is 06:00: 215 hours
    assert doc["commitment_window"]["hours"] == 215 and p4d["hours"] == 215
    assert p4d["recommended"] is None and p4d["reason"].startswith("not enough history (9.0 days")
    assert p4d["history_days"] == pytest.approx(215 / 24, abs=1e-6)
    assert p4d["options"] and not any(o["eligible"] for o in p4d["options"])
    assert all({"reason", "workload_name", "cost"} <= set(w) for w in doc["not_judged"])


@pytest.mark.slow
def test_ledger_directory_and_trace_mix_ups_say_what_was_expected(demo, tmp_path):
    """A directory is read by the ledgers' names (a trace beside them is left alone); one
    with no ledger, or a trace given as a ledger, is one line saying what was expected."""
    mixed = tmp_path / "demo"
    (mixed / "out").mkdir(parents=True)
    shutil.copy(demo, mixed / "out" / "ledger.parquet")
    shutil.copy(demo.parent.parent / "t.jsonl.gz", mixed / "trace.jsonl.gz")
    (mixed / "notes.jsonl.gz").write_bytes(b"not even gzip")
    done = report_cmd("--ledger", str(mixed), "--out", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted(
        ["report.md", "report.html", "recommendations.json", "recommendations.csv", "focus.csv"])

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "trace.jsonl.gz").write_bytes((mixed / "trace.jsonl.gz").read_bytes())
    for argv, line in (
            ([str(empty)], f"gpuledger: error: {empty}: field '--ledger': no ledger files in this directory: expected "
                           "the agent's ledger directory (<node>/<YYYY-MM-DD>/<HH>.jsonl.gz files) or ledger.parquet "
                           "files from `gpuledger replay --out`"),
            ([str(mixed / "trace.jsonl.gz")], f"gpuledger: error: {mixed / 'trace.jsonl.gz'}:1: field '--ledger': "
                                               "is a trace, not a ledger: replay it first")):
        done = report_cmd("--ledger", *argv, "--out", str(tmp_path / "r2"))
        assert done.returncode == 2 and done.stderr.startswith(line), done.stderr
        assert done.stderr.count("\n") == 1
        assert not (tmp_path / "r2").exists()


def test_agent_dry_run_trace_that_is_a_directory_says_so(tmp_path):
    for trace, words in ((tmp_path, "field '--trace': expected a trace file (.jsonl or .jsonl.gz"),
                         (tmp_path / "nope.jsonl", "field '--trace': no such trace file")):
        done = subprocess.run([sys.executable, "-m", "agent.cli", "agent", "--dry-run", "--trace", str(trace),
                               "--ledger-dir", str(tmp_path / "ledger")], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 2 and words in done.stderr and done.stderr.count("\n") == 1, done.stderr
        assert not (tmp_path / "ledger").exists()


def test_report_html_class_attributes_are_well_formed(demo_report):
    """Each table keeps its own class, and a row's class stays on the row (the
    (unallocated) team row is muted; the commitments table is compact)."""
    from html.parser import HTMLParser

    html = (demo_report / "report.html").read_text()
    assert "class=' class=" not in html and "class=\" class=" not in html

    class Classes(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.found: list[tuple[str, str]] = []

        def handle_starttag(self, tag, attrs):
            self.found += [(tag, v or "") for k, v in attrs if k == "class"]

    parser = Classes()
    parser.feed(html)
    bad = [found for found in parser.found if "=" in found[1] or "'" in found[1] or found[1] != found[1].strip()]
    assert not bad, bad
    assert ("table", "compact") in parser.found
    assert ("tr", "muted") in parser.found
