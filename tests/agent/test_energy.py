"""Energy and carbon (docs/energy.md), rule by rule, on small traces worked out by hand, and
conservation of joules and grams over a simulated fleet checked against the trace itself.

Every expected figure is written from the rules, not read back from the code.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from agent.config import Config
from agent.replay import replay
from agent.sinks import ParquetSink
from collectors.errors import InputError
from collectors.pricing.energy import carbon_table
from collectors.pricing.ratecard import load_rate_card
from collectors.simulator import simulate
from tests.conftest import write_jsonl
from tests.agent.test_cli import gpuledger, small_trace
from tests.agent.test_cost_model import check_conservation, devices, gpu, mig, pod, pods, sample, team

REGION_LABEL = "topology.kubernetes.io/region"
ENERGY = """
currency: USD
nodes:
  - match: {node.kubernetes.io/instance-type: p4d.24xlarge}
    hourly: 36.0
default_gpu_hourly: 3.6
energy:
  kwh_price: 0.12
  pue: 1.5
"""
KWH = 3.6e6


def node(region="us-east-1", ts=0, name="gpu-a"):
    return {"kind": "node", "ts": ts, "node": name,
            "labels": {"node.kubernetes.io/instance-type": "p4d.24xlarge", REGION_LABEL: region}}


def powered(s, watts):
    s["power_w"] = watts
    return s


def run(tmp_path: Path, records, rates_text=ENERGY, ledger=False):
    rates = tmp_path / "rates.yaml"
    rates.write_text(rates_text)
    trace = write_jsonl(tmp_path / "t.jsonl", records)
    sink = ParquetSink(tmp_path / "ledger.parquet", "USD") if ledger else None
    result = replay([trace], load_rate_card(rates), Config(), sink=sink)
    if sink is not None:
        sink.close()
    check_conservation(result.summary)
    check_energy_conservation(result.summary)
    return result


def check_energy_conservation(summary):
    """Teams add up to the totals, classes to their team, workloads to the totals (1e-9)."""
    t = summary["totals"]
    for k in ("energy_joules", "energy_cost", "carbon_grams"):
        if t[k] is None:
            continue
        assert math.isclose(sum(x[k] for x in summary["teams"]), t[k], rel_tol=1e-9, abs_tol=1e-12), k
        assert math.isclose(sum(x[k] for x in summary["workloads"]), t[k], rel_tol=1e-9, abs_tol=1e-12), k
        for x in summary["teams"]:
            assert math.isclose(sum(c[k] for c in x["by_class"].values()), x[k], rel_tol=1e-9, abs_tol=1e-12)


def test_shared_gpu_energy_splits_like_its_seconds_and_idle_draw_stays_unallocated(tmp_path):
    # GPU-a shared by p1 and p2 (processes 30 and 10: shares 3/4 and 1/4); 4 s at 300 W = 1200 J.
    # GPU-b held by nobody: 2 s at 60 W = 120 J, unallocated.
    s = run(tmp_path, [
        node(), devices(gpu("GPU-a"), gpu("GPU-b", index=1)),
        pods(pod("p1", "GPU-a", labels={"team": "a"}), pod("p2", "GPU-a", labels={"team": "b"})),
        powered(sample("GPU-a", 10, 80, procs=[("p1", 30), ("p2", 10)], interval=4), 300.0),
        powered(sample("GPU-b", 10, 0, interval=2), 60.0),
    ]).summary
    g = 323.05  # us-east-1, the bundled table (via us-east4)
    assert team(s, "a")["energy_joules"] == pytest.approx(900.0)
    assert team(s, "b")["energy_joules"] == pytest.approx(300.0)
    assert team(s, "a")["energy_cost"] == pytest.approx(900.0 * 1.5 / KWH * 0.12)
    assert team(s, "a")["carbon_grams"] == pytest.approx(900.0 * 1.5 / KWH * g)
    assert team(s, "b")["carbon_grams"] == pytest.approx(300.0 * 1.5 / KWH * g)
    t = s["totals"]
    assert t["energy_joules"] == pytest.approx(1200.0)
    assert t["unallocated_energy_joules"] == pytest.approx(120.0)
    assert t["unallocated_carbon_grams"] == pytest.approx(120.0 * 1.5 / KWH * g)
    # energy cost is beside the cost, not in it (add_to_cost is false): 36/h over 2 GPUs = 0.005/s
    assert t["cost"] + t["unallocated_cost"] == pytest.approx(0.005 * 4 + 0.005 * 2)
    assert t["energy_cost"] == pytest.approx(1200.0 * 1.5 / KWH * 0.12)


def test_mig_parent_board_energy_splits_by_slices(tmp_path):
    # A100 (7 compute slices): 3g held by p1, 2g by nobody, remainder 2/7 unallocated.
    # The parent's 7 s sample at 350 W is 2450 J: 1050 to p1, 700 to the free 2g slice,
    # 700 to the parent's remainder. The slices' own samples have no power.
    result = run(tmp_path, [
        node(), devices(gpu("GPU-p"), mig("MIG-3", "GPU-p", "3g.20gb"), mig("MIG-2", "GPU-p", "2g.10gb")),
        pods(pod("p1", "MIG-3", labels={"team": "a"})),
        powered(sample("GPU-p", 7, None, interval=7), 350.0),
        sample("MIG-3", 7, None, interval=7), sample("MIG-2", 7, None, interval=7),
    ], ledger=True)
    s = result.summary
    assert team(s, "a")["energy_joules"] == pytest.approx(1050.0)
    assert s["totals"]["unallocated_energy_joules"] == pytest.approx(1400.0)
    assert team(s, "a")["allocated_gpu_seconds"] == pytest.approx(3.0)  # seconds unchanged by energy
    rows = pq.read_table(tmp_path / "ledger.parquet").to_pylist()
    by_device = {(r["device_uuid"], r["pod_uid"]): r for r in rows}
    assert by_device[("MIG-3", "p1")]["energy_joules"] == pytest.approx(1050.0)
    assert by_device[("MIG-3", "p1")]["samples"] == 1  # the parent's energy brings no sample
    assert by_device[("MIG-2", None)]["energy_joules"] == pytest.approx(700.0)
    assert by_device[("GPU-p", None)]["energy_joules"] == pytest.approx(700.0)
    assert sum(r["energy_joules"] for r in rows) == pytest.approx(2450.0, rel=1e-12)


def test_unknown_power_is_unknown_energy_never_zero(tmp_path):
    # p1's GPU reports power, p2's does not: p2's energy, and so the totals, are null.
    s = run(tmp_path, [
        node(), devices(gpu("GPU-a"), gpu("GPU-b", index=1)),
        pods(pod("p1", "GPU-a", labels={"team": "a"}), pod("p2", "GPU-b", labels={"team": "b"})),
        powered(sample("GPU-a", 1, 50), 200.0), sample("GPU-b", 1, 50),
    ]).summary
    assert team(s, "a")["energy_joules"] == pytest.approx(200.0)
    assert team(s, "b")["energy_joules"] is None
    assert team(s, "b")["carbon_grams"] is None and team(s, "b")["energy_cost"] is None
    assert s["totals"]["energy_joules"] is None
    json.dumps(s, allow_nan=False)  # null, not NaN


def test_no_kwh_price_leaves_energy_cost_unknown_and_an_unknown_region_leaves_carbon_unknown(tmp_path):
    rates = "currency: USD\ndefault_gpu_hourly: 3.6\n"
    s = run(tmp_path, [
        node(region="nowhere-1"), devices(gpu("GPU-a")), pods(pod("p1", "GPU-a", labels={"team": "a"})),
        powered(sample("GPU-a", 2, 50, interval=2), 250.0),
    ], rates_text=rates).summary
    assert team(s, "a")["energy_joules"] == pytest.approx(500.0)
    assert team(s, "a")["energy_cost"] is None
    assert team(s, "a")["carbon_grams"] is None


def test_hour_of_day_tariff_node_terms_carbon_override_and_add_to_cost(tmp_path):
    # Node "gpu-b" (label pool: onprem) has its own PUE 1.2, 80 g/kWh and a night tariff of
    # 0.05 from 22:00 to 06:00 UTC; gpu-a takes the section's 0.10 and PUE 1.0, and the
    # carbon override for its region, 500 g/kWh. add_to_cost puts energy cost into cost.
    rates = """
currency: USD
nodes:
  - match: {node.kubernetes.io/instance-type: p4d.24xlarge}
    hourly: 36.0
default_gpu_hourly: 3.6
energy:
  kwh_price: 0.10
  add_to_cost: true
  carbon: {us-east-1: 500}
  nodes:
    - match: {pool: onprem}
      pue: 1.2
      carbon_g_per_kwh: 80
      hours: [{from: 22, to: 6, kwh_price: 0.05}]
"""
    night = 86400 + 23 * 3600 + 30  # 23:00:30 UTC
    day = 86400 + 12 * 3600 + 30
    onprem = {"kind": "node", "ts": 0, "node": "gpu-b", "labels": {"pool": "onprem"}}
    s = run(tmp_path, [
        node(), devices(gpu("GPU-a")), pods(pod("p1", "GPU-a", labels={"team": "a"})),
        onprem, devices(gpu("GPU-b"), name="gpu-b"), pods(pod("p2", "GPU-b", labels={"team": "b"}), name="gpu-b"),
        powered(sample("GPU-a", night, 50, interval=10), 360.0),  # 3600 J
        powered(sample("GPU-b", night, 50, interval=10, name="gpu-b"), 360.0),
        powered(sample("GPU-b", day, 50, interval=10, name="gpu-b"), 360.0),
    ], rates_text=rates).summary
    a, b = team(s, "a"), team(s, "b")
    assert a["energy_cost"] == pytest.approx(3600 / KWH * 0.10)
    assert a["carbon_grams"] == pytest.approx(3600 / KWH * 500)
    assert b["energy_cost"] == pytest.approx(3600 * 1.2 / KWH * 0.05 + 3600 * 1.2 / KWH * 0.10)
    assert b["carbon_grams"] == pytest.approx(7200 * 1.2 / KWH * 80)
    # capacity: gpu-a 0.01/s (the p4d entry, one GPU), gpu-b 3.6/h = 0.001/s (the default)
    assert a["cost"] == pytest.approx(10 * 0.01 + a["energy_cost"])
    assert b["cost"] == pytest.approx(20 * 0.001 + b["energy_cost"])


@pytest.mark.parametrize("section, field", [
    ("energy: {pue: 0.5}", "energy.pue"),
    ("energy: {kwh_price: cheap}", "energy.kwh_price"),
    ("energy: {add_to_cost: yes please}", "energy.add_to_cost"),
    ("energy: {kwh: 0.1}", "energy.kwh"),
    ("energy:\n  hours: [{from: 25, to: 6, kwh_price: 0.1}]", "energy.hours[0].from"),
    ("energy:\n  nodes: [{match: {}, pue: 1.1}]", "energy.nodes[0].match"),
    ("energy:\n  carbon: {eu-west-1: -3}", "energy.carbon.eu-west-1"),
])
def test_a_bad_energy_section_names_file_line_and_field(tmp_path, section, field):
    rates = tmp_path / "rates.yaml"
    rates.write_text("currency: USD\ndefault_gpu_hourly: 1\n" + section + "\n")
    with pytest.raises(InputError) as err:
        load_rate_card(rates)
    assert str(err.value).startswith(f"{rates}:3: field '{field}'") or str(err.value).startswith(
        f"{rates}:4: field '{field}'"), str(err.value)


def test_replay_exits_2_on_a_bad_energy_section(tmp_path):
    rates = tmp_path / "rates.yaml"
    rates.write_text("currency: USD\ndefault_gpu_hourly: 1\nenergy:\n  pue: 0\n")
    out = tmp_path / "out"
    done = gpuledger("replay", str(small_trace(tmp_path)), "--rates", str(rates), "--out", str(out))
    assert done.returncode == 2
    assert "rates.yaml:4: field 'energy.pue'" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists() or not any(out.iterdir())


def test_the_bundled_carbon_table_is_dated_and_sourced():
    table = carbon_table()
    assert table.date == "2024" and table.source.startswith("https://github.com/GoogleCloudPlatform/")
    assert table.get("us-central1") == 412.72 and table.get("us-east-1") == table.get("us-east4")
    assert table.get("westeurope") == table.get("europe-west4")


def test_joules_and_grams_are_conserved_over_a_simulated_fleet(tmp_path):
    """Σ energy over the ledger = Σ power × interval over the trace's samples, read from the
    trace with json (a second, independent path); grams = joules × PUE × the region's
    intensity / 3.6e6; every GPU-second and joule lands once (1e-9)."""
    trace = tmp_path / "sim.jsonl"
    simulate(trace, seed=5, nodes=3, hours=1.0, interval_s=10.0)
    joules = 0.0
    region_of: dict[str, str] = {}
    by_region: dict[str, float] = defaultdict(float)
    meta_interval = None
    with open(trace) as f:
        for line in f:
            r = json.loads(line)
            if r["kind"] == "meta":
                meta_interval = r["interval_s"]
            elif r["kind"] == "node":
                region_of[r["node"]] = r["labels"].get(REGION_LABEL)
            elif r["kind"] == "sample" and r.get("power_w") is not None:
                e = r["power_w"] * r.get("interval_s", meta_interval)
                joules += e
                by_region[region_of[r["node"]]] += e
    assert joules > 0
    grams = sum(e * 1.3 / KWH * carbon_table().get(region) for region, e in by_region.items())
    rates = tmp_path / "rates.yaml"
    rates.write_text("currency: USD\ndefault_gpu_hourly: 2\nenergy: {kwh_price: 0.2, pue: 1.3}\n")
    sink = ParquetSink(tmp_path / "ledger.parquet", "USD")
    s = replay([trace], load_rate_card(rates), Config(), sink=sink).summary
    sink.close()
    check_energy_conservation(s)
    t = s["totals"]
    assert math.isclose(t["energy_joules"] + t["unallocated_energy_joules"], joules, rel_tol=1e-9)
    assert math.isclose(t["carbon_grams"] + t["unallocated_carbon_grams"], grams, rel_tol=1e-9)
    assert math.isclose(t["energy_cost"] + t["unallocated_energy_cost"], joules * 1.3 / KWH * 0.2, rel_tol=1e-9)
    ledger = pq.read_table(tmp_path / "ledger.parquet")
    assert math.isclose(sum(ledger.column("energy_joules").to_pylist()), joules, rel_tol=1e-9)
    assert math.isclose(sum(ledger.column("carbon_grams").to_pylist()), grams, rel_tol=1e-9)


@pytest.mark.slow
def test_the_report_shows_energy_and_carbon_by_team(tmp_path):
    """The markdown report's energy table: kWh and kg CO2e by team, from the ledger; a team
    whose GPU reported no power reads "unknown", not 0."""
    import subprocess
    import sys

    hours = 3
    records = [node(), devices(gpu("GPU-a"), gpu("GPU-b", index=1)),
               pods(pod("p1", "GPU-a", labels={"team": "a"}), pod("p2", "GPU-b", labels={"team": "b"}))]
    for i in range(1, hours * 60 + 1):  # one sample a minute: GPU-a at 600 W, GPU-b without power
        records += [powered(sample("GPU-a", 1764547200 + 60 * i, 90, interval=60), 600.0),
                    sample("GPU-b", 1764547200 + 60 * i, 50, interval=60)]
    run(tmp_path, records, ledger=True)
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "agent.cmd_report", "--ledger", str(tmp_path / "ledger.parquet"),
                           "--out", str(out)], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    text = (out / "report.md").read_text()
    section = text.split("## Energy and carbon by team", 1)[1].split("\n## ", 1)[0]
    kwh = 600.0 * 60 * hours * 60 / KWH  # 1.8 kWh
    grams = kwh * 1.5 * 323.05
    energy_cost = kwh * 1.5 * 0.12
    assert f"| a | {kwh:,.1f} | {energy_cost:,.2f} | {grams / 1e3:,.2f} |" in section
    assert "| b | unknown | unknown | unknown |" in section
    # by workload too: the measured one first, the unmeasured one after it as unknown
    by_workload = text.split("### Top workloads by energy", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in by_workload.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(lines) == 2, by_workload
    assert lines[0] == (f"| research/ft | a | training | {kwh:,.1f} | {energy_cost:,.2f} | {grams / 1e3:,.2f} |"), lines
    assert lines[1] == "| research/ft | b | training | unknown | unknown | unknown |", lines
    # report.html shows the same table, cell for cell
    html = (out / "report.html").read_text()
    section = html.split("<h2>Energy and carbon by team</h2>", 1)[1].split("<h3>", 1)[0]
    rows = {cells[0]: cells[1:] for cells in (re.findall(r"<td[^>]*>([^<]*)</td>", tr)
                                               for tr in section.split("<tr")[2:])}
    assert rows["a"] == [f"{kwh:,.1f}", f"{energy_cost:,.2f}", f"{grams / 1e3:,.2f}"]
    assert rows["b"] == ["unknown", "unknown", "unknown"]
    assert rows["(unallocated)"] == ["0.0", "0.00", "0.00"]  # no GPU went unheld: none, and known
    section = html.split("<h3>Top workloads by energy</h3>", 1)[1].split("<h2>", 1)[0]
    cells = [re.findall(r"<td[^>]*>([^<]*)</td>", tr) for tr in section.split("<tr")[2:]]
    assert cells == [["research/ft", "a", "training", f"{kwh:,.1f}", f"{energy_cost:,.2f}", f"{grams / 1e3:,.2f}"],
                     ["research/ft", "b", "training", "unknown", "unknown", "unknown"]]


def test_the_replay_table_gains_energy_and_carbon_columns_only_when_energy_was_measured(tmp_path):
    """`gpuledger replay`'s table: kWh and kg CO2e per team and class, "unknown" where a GPU
    reported no power; a trace without any power reading prints the table as before."""
    from agent.accounting.summary import format_table

    hours = 3
    head = ("team", "class", "GPU-h alloc", "GPU-h used", "util", "cost USD", "idle USD")
    setup = [node(), devices(gpu("GPU-a"), gpu("GPU-b", index=1), gpu("GPU-c", index=2)),
             pods(pod("p1", "GPU-a", labels={"team": "a"}), pod("p2", "GPU-b", labels={"team": "b"}))]
    minutes = range(1, hours * 60 + 1)
    powered_run = tmp_path / "powered"
    powered_run.mkdir()
    # GPU-a at 600 W, GPU-b without power, GPU-c held by no pod at 60 W
    s = run(powered_run, setup + [x for i in minutes for x in (
        powered(sample("GPU-a", 1764547200 + 60 * i, 90, interval=60), 600.0),
        sample("GPU-b", 1764547200 + 60 * i, 50, interval=60),
        powered(sample("GPU-c", 1764547200 + 60 * i, 0, interval=60), 60.0))]).summary
    lines = format_table(s).splitlines()
    assert lines[1].split() == [*" ".join(head).split(), "kWh", "kg", "CO2e"]
    kwh_a, kwh_c = 600.0 * 60 * hours * 60 / KWH, 60.0 * 60 * hours * 60 / KWH  # 1.8 and 0.18 kWh
    g = 323.05  # us-east-1, the bundled table (docs/energy.md)
    row = {ln.split()[0]: ln.split() for ln in lines[3:]}
    assert row["a"][-2:] == [f"{kwh_a:,.2f}", f"{kwh_a * 1.5 * g / 1e3:,.2f}"]  # 1.80 kWh, 0.87 kg
    assert row["b"][-2:] == ["unknown", "unknown"]
    assert row["(unallocated)"][-2:] == [f"{kwh_c:,.2f}", f"{kwh_c * 1.5 * g / 1e3:,.2f}"]
    assert row["TOTAL"][-2:] == ["unknown", "unknown"]  # b's part is unknown, so the whole is

    dark = tmp_path / "dark"
    dark.mkdir()
    s = run(dark, setup + [sample(d, 1764547200 + 60 * i, 50, interval=60)
                           for i in minutes for d in ("GPU-a", "GPU-b", "GPU-c")]).summary
    text = format_table(s)
    assert text.splitlines()[1].split() == " ".join(head).split()
    assert "kWh" not in text and "unknown" not in text
