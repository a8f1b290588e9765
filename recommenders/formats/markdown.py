"""``report.md``: the weekly report as Markdown, for a wiki, a pull request or a terminal."""

from __future__ import annotations


from recommenders.formats import register
from recommenders.formats.escaping import md_text
from recommenders.formats.text import (
    ENERGY_HEADER, ENERGY_NOTE, NO_UNIT_COSTS, UNIT_COST_HEADER, UNIT_COST_NOTE, after_rightsizing, commitment_choice,
    WORKLOAD_ENERGY_HEADER, compared_with, day, energy_rows, gib,
    hours, idle_money, money, no_anomaly, no_recommendation, pct, price_sources, signed_money, signed_pct, target,
    unit_cost_rows, when, workload, workload_energy_rows,
)
from recommenders.report import Report

BAR = 30


def _table(header: list[str], rows: list[list[str]], align: str = "", empty: str = "Nothing to show.") -> list[str]:
    if not rows:  # never bare headers
        return [empty, ""]
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(md_text(c) for c in r) + " |" for r in rows]  # names come from anyone
    return out + [""]


def _bar(x: float, top: float) -> str:
    n = 0 if top <= 0 else x / top * BAR
    return "█" * int(n) + ("▌" if n - int(n) >= 0.5 else "")


def headline(r: Report) -> list[str]:
    t, p = r.totals, r.previous_totals
    waste = t["idle_cost"] + t["unallocated_cost"]
    if p.get("total_cost"):
        change = f"{signed_pct((t['total_cost'] - p['total_cost']) / p['total_cost'])} vs {compared_with(r)}"
    else:
        change = compared_with(r) if not r.has_previous else f"nothing in {compared_with(r)}"
    return [
        f"- **GPU spend:** {money(t['total_cost'], r.currency)} ({change}) "
        f"for {hours(t['capacity_gpu_hours'])} GPU-hours; priced by {price_sources(r)}",
        f"- **Utilisation:** {pct(t['utilization'])} of allocated GPU time did work; "
        f"{pct(t['unallocated_gpu_hours'] / t['capacity_gpu_hours'] if t['capacity_gpu_hours'] else None)} of capacity was held by no pod",
        f"- **Paid for nothing:** {money(waste, r.currency)} ({pct(waste / t['total_cost'] if t['total_cost'] else None)}) "
        f"idle or unallocated",
        f"- **Right-sizing could save** {money(r.potential_monthly_savings, r.currency)} a month "
        f"({len(r.recommendations)} recommendations)",
    ]


@register("md", "report.md", "the weekly report in Markdown")
def render(r: Report) -> str:
    cur = r.currency
    out = [f"# GPU cost report: {day(r.window.start)} – {day(r.window.end - 1)}", "",
           f"Window {when(r.window.start)} to {when(r.window.end)} ({r.window.hours:.0f} h); "
           + (f"compared with {when(r.previous.start)} to {when(r.previous.end)}" if r.has_previous
              else "no previous window to compare with") + f". Costs in {cur}.", ""]
    out += headline(r) + [""]
    for note in r.notes:
        out.append(f"> {note}")
    if r.notes:
        out.append("")

    out += ["## Showback by team", ""]
    out += _table(["team", "GPU-h", "utilisation", "cost", "idle cost", "previous", "change"],
                  [[t["team"], hours(t["gpu_hours"]), pct(t["utilization"]), money(t["cost"]), idle_money(t["idle_cost"]),
                    money(t["previous_cost"]), f"{signed_money(t['change'])} ({signed_pct(t['change_pct'])})"
                    if t["change"] is not None else ("new" if r.has_previous else "–")] for t in r.teams])

    out += ["## Energy and carbon by team", "", ENERGY_NOTE, ""]
    out += _table(ENERGY_HEADER, energy_rows(r))
    out += ["### Top workloads by energy", ""]
    out += _table(WORKLOAD_ENERGY_HEADER, workload_energy_rows(r), "lllrrr", "No workload held GPUs in the window.")

    out += ["## Training, inference, interactive", ""]
    out += _table(["class", "GPU-h", "cost", "idle cost", "share of spend", ""],
                  [[c["workload_class"], hours(c["gpu_hours"]), money(c["cost"]), idle_money(c["idle_cost"]),
                    pct(c["share"]), _bar(c["share"], 1.0)] for c in r.classes], "lrrrrl", "No GPU time in the window.")

    out += ["## Daily cost by team", ""]
    days, teams = r.daily_cost["days"], r.daily_cost["teams"]
    partial = r.daily_cost.get("partial") or [False] * len(days)
    totals = [sum(v[i] for v in teams.values()) for i in range(len(days))]
    top = max(totals, default=0.0)
    out += _table(["day", "cost", ""], [[d + (" (partial)" if part else ""), money(x), _bar(x, top)]
                                        for d, x, part in zip(days, totals, partial)], "lrl", "No cost in the window.")

    out += ["## Utilisation distribution (GPU-hours of allocated GPUs)", ""]
    top = max((b["gpu_hours"] for b in r.utilization_histogram), default=0.0)
    out += _table(["utilisation", "GPU-h", ""], [[b["bucket"], hours(b["gpu_hours"]), _bar(b["gpu_hours"], top)]
                                                 for b in r.utilization_histogram], "lrl",
                  "No allocated GPU time in the window.")

    for title, rows, col in (("Top workloads by cost", r.top_by_cost, "cost"),
                             ("Top workloads by idle cost", r.top_by_idle, "idle_cost")):
        out += [f"## {title}", ""]
        out += _table(["workload", "team", "class", "GPU", "pods", "GPU-h", "peak p95", "cost", "idle cost"],
                      [[workload(w), str(w["team"]), str(w["workload_class"]),
                        str(w["gpu_model"]) + (f" {w['mig_profile']}" if w["mig_profile"] else ""), str(w["pods"]),
                        hours(w["gpu_hours"]), pct(w["util_p95"]), money(w["cost"]), idle_money(w["idle_cost"])]
                       for w in rows], "lllllrrrr",
                      "No workload held GPUs in the window." if col == "cost" else "No workload left GPUs idle.")

    out += ["## Unit economics (inference)", "", UNIT_COST_NOTE, ""]
    out += _table(UNIT_COST_HEADER, unit_cost_rows(r), "llrrrrrrrll", NO_UNIT_COSTS)

    out += ["## Anomalies", ""]
    if r.anomalies:
        out += _table(["day", "what", "cost", "recent max", "×"],
                      [[a.day, f"{a.scope} {a.name}", money(a.cost), money(a.recent_max), f"{a.factor:.1f}"]
                       for a in r.anomalies], "llrrr")
    else:
        out += [no_anomaly(r), ""]

    out += ["## Right-sizing recommendations", ""]
    if r.recommendations:
        out += ["Sorted by estimated monthly savings. Alternatives for one workload do not add up; the total above "
                "counts the best one per workload. Every figure is in `recommendations.csv`.", ""]
        out += _table(["type", "workload", "team", "change", "peak memory", "target memory", "saves / month",
                       "confidence", "risk"],
                      [[x.type, workload(x), str(x.team), target(x), gib(x.observed_max_memory_bytes),
                        gib(x.target_memory_bytes), money(x.monthly_savings), x.confidence, x.risk]
                       for x in r.recommendations], "llllrrrll")
        out += ["<details><summary>Evidence</summary>", ""]
        out += [f"- **{md_text(x.type)} {md_text(workload(x))}**: {md_text(x.evidence)}" for x in r.recommendations]
        out += ["", "</details>", ""]
    else:
        out += [no_recommendation(r), ""]

    if r.not_judged:
        out += ["## Not judged", "",
                "Workloads that got no recommendation for a reason other than using what they hold:", ""]
        out += _table(["workload", "team", "GPU", "GPU-h", "cost", "why"],
                      [[workload(w), str(w["team"]), str(w["gpu_model"]) + (f" {w['mig_profile']}" if w["mig_profile"] else ""),
                        hours(w["gpu_hours"]), money(w["cost"]), w["reason"]] for w in r.not_judged], "lllrrl")

    out += ["## Reserved capacity (commitments)", "",
            f"Look-back {when(r.commitment_window.start)} to {when(r.commitment_window.end)}. Usage counts capacity "
            f"present each hour (spot and reserved capacity excluded); 'after right-sizing' commits only to what the "
            f"workloads would still hold.", ""]
    rows = []
    for p in r.commitments:
        b = p.best
        rows.append([p.label, f"{p.history_days:.1f}", f"{p.usage_mean:.2f} ({p.usage_min:.2f}–{p.usage_max:.2f})",
                     money(p.on_demand_hourly), commitment_choice(p),
                     str(b.k) if b else "–", money(b.hourly_commitment) if b else "–",
                     money(b.monthly_before) if b else "–", money(b.monthly_after) if b else "–",
                     f"{money(b.monthly_savings)} ({pct(b.savings_pct)})" if b else "–",
                     pct(b.utilization) if b else "–", pct(b.coverage) if b else "–", pct(b.break_even) if b else "–",
                     p.beats or "–", after_rightsizing(p)])
    out += _table(["pool", "history days", "units/h mean (min–max)", "on-demand/h", "best option", "k", "commit/h",
                   "month before", "month after", "saves", "utilisation", "coverage", "break-even", "beats",
                   "after right-sizing"], rows,
                  "lrrrlrrrrrrrrll", "No commitment pool: no on-demand capacity in the look-back carries an instance type (node pools) or a GPU model with commitment prices (GPU pools).")
    for p in r.commitments:
        if p.spot_note:
            out.append(f"- **{md_text(p.label)}**: {md_text(p.spot_note)}.")
    out += ["", "---", f"gpuledger report v2 · settings: headroom {r.settings.headroom:.0%}, target utilisation "
            f"{r.settings.target_utilization:.0%}, idle ≥ {r.settings.idle_share:.0%} of the time", ""]
    return "\n".join(out)

