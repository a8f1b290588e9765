"""``report.html``: the weekly report as one self-contained page, for a browser or a mail client.

No scripts, no external files: CSS is in the page, and the charts are HTML bars (table
cells and sized blocks with inline styles), which mail clients that strip SVG and
``data:`` images still show.
"""

from __future__ import annotations

from html import escape

from recommenders.formats import register
from recommenders.formats.text import (
    ENERGY_HEADER, ENERGY_NOTE, NO_UNIT_COSTS, UNIT_COST_HEADER, UNIT_COST_NOTE, after_rightsizing, commitment_choice,
    WORKLOAD_ENERGY_HEADER, compared_with, day, energy_rows, gib,
    hours, idle_money, money, no_anomaly, no_recommendation, pct, price_sources, signed_money, signed_pct, target,
    unit_cost_rows, when, workload, workload_energy_rows,
)
from recommenders.report import UNALLOCATED, Report

# Tableau 10 plus two more, so up to 12 teams never share a colour (grey is kept for unallocated)
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#2f4b7c", "#a05195", "#17becf")
UNALLOCATED_COLOUR = "#c9ced6"

CSS = """
body{margin:0;padding:24px;background:#f4f6f9;font:14px/1.45 -apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;color:#1f2933}
.page{max-width:1080px;margin:0 auto;background:#fff;border-radius:8px;padding:28px 32px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 10px;padding-bottom:6px;border-bottom:2px solid #e4e7eb}
.sub{color:#616e7c;margin:0 0 18px}
table{border-collapse:collapse;width:100%;margin:6px 0 8px}
th{background:#f0f2f5;text-align:left;font-weight:600;color:#3e4c59;font-size:12px;text-transform:uppercase;letter-spacing:.03em}
th,td{padding:6px 8px;border-bottom:1px solid #e4e7eb;vertical-align:top}
td.n,th.n{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
tr.muted td{color:#7b8794}
.kpis td{border:0;padding:0 8px 0 0;width:25%}
.kpi{background:#f7f9fb;border:1px solid #e4e7eb;border-radius:6px;padding:12px 14px}
.kpi .v{font-size:22px;font-weight:700}.kpi .l{color:#616e7c;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.kpi .d{font-size:12px;color:#616e7c}
.up{color:#c62828}.down{color:#2e7d32}
.note{background:#fff8e1;border-left:4px solid #f9a825;padding:8px 12px;margin:8px 0;color:#5d4a00}
.bar{display:inline-block;height:12px;vertical-align:middle}
.tag{display:inline-block;padding:1px 7px;border-radius:10px;font-size:12px;font-weight:600;white-space:nowrap}
.t-idle{background:#fde2e1;color:#a61b1b}.t-reduce-count{background:#fff0d6;color:#8a5300}
.t-downsize-model{background:#e0ecff;color:#1d4ed8}.t-mig{background:#efe4ff;color:#6b21a8}.t-share{background:#dcf5e7;color:#166534}
.t-idle-pods{background:#fde2e1;color:#a61b1b}.t-replicas{background:#e3f4f4;color:#0f5e5e}.t-schedule{background:#fff3c4;color:#7a5a00}
.r-low{color:#2e7d32}.r-medium{color:#b26a00}.r-high{color:#c62828}
.ev{color:#52606d;font-size:12px}
.legend span{display:inline-block;margin-right:14px;font-size:12px;color:#3e4c59}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
.compact td,.compact th{font-size:12px;padding:5px 6px}.compact td.n{white-space:normal}
.foot{margin-top:28px;color:#7b8794;font-size:12px}
"""


def _e(x) -> str:
    return escape("" if x is None else str(x))


def _table(header: list[str], rows: list[list[str]], numeric: set[int], row_class: list[str] | None = None,
           cls: str = "", empty: str = "Nothing to show.") -> str:
    if not rows:  # never bare headers
        return f"<p>{_e(empty)}</p>"
    head = "".join(f"<th class='n'>{_e(h)}</th>" if i in numeric else f"<th>{_e(h)}</th>" for i, h in enumerate(header))
    body = []
    for j, r in enumerate(rows):
        row_attr = f" class='{row_class[j]}'" if row_class and row_class[j] else ""
        body.append(f"<tr{row_attr}>" + "".join(f"<td class='n'>{c}</td>" if i in numeric else f"<td>{c}</td>"
                                            for i, c in enumerate(r)) + "</tr>")
    return f"<table class='{cls}'><tr>{head}</tr>{''.join(body)}</table>"


def _change_html(delta, pct_) -> str:
    if delta is None:
        return "<span class='d'>new</span>"
    cls = "up" if delta > 0 else "down" if delta < 0 else ""
    return f"<span class='{cls}'>{_e(signed_money(delta))} ({_e(signed_pct(pct_))})</span>"


def _kpis(r: Report) -> str:
    t, p = r.totals, r.previous_totals
    change = ""
    if p.get("total_cost"):
        d = (t["total_cost"] - p["total_cost"]) / p["total_cost"]
        change = f"<span class='{'up' if d > 0 else 'down'}'>{_e(signed_pct(d))}</span> vs previous"
    elif not r.has_previous:
        change = "no previous window"
    waste = t["idle_cost"] + t["unallocated_cost"]
    cards = [
        ("GPU spend", money(t["total_cost"], r.currency), change or f"{hours(t['capacity_gpu_hours'])} GPU-h"),
        ("Utilisation", pct(t["utilization"]), "of allocated GPU time did work"),
        ("Idle or unallocated", money(waste, r.currency), f"{pct(waste / t['total_cost'] if t['total_cost'] else None)} of spend"),
        ("Right-sizing could save", money(r.potential_monthly_savings, r.currency) + "/mo",
         f"{len(r.recommendations)} recommendations"),
    ]
    cells = "".join(f"<td><div class='kpi'><div class='l'>{_e(l)}</div><div class='v'>{_e(v)}</div>"
                    f"<div class='d'>{d}</div></div></td>" for l, v, d in cards)
    return f"<table class='kpis'><tr>{cells}</tr></table>"


def _colours(names: list[str]) -> dict[str, str]:
    out, i = {}, 0
    for n in names:
        if n == UNALLOCATED:
            out[n] = UNALLOCATED_COLOUR
        else:
            out[n] = PALETTE[i % len(PALETTE)]
            i += 1
    return out


def _daily_chart(r: Report) -> str:
    days, teams = r.daily_cost["days"], r.daily_cost["teams"]
    if not days:
        return "<p>No cost in the window.</p>"
    colours = _colours(list(teams))
    totals = [sum(v[i] for v in teams.values()) for i in range(len(days))]
    top = max(totals) or 1.0
    rows = []
    for i, d in enumerate(days):
        segs = "".join(f"<span class='bar' title='{_e(t)}: {_e(money(v[i]))}' style='width:{v[i] / top * 100:.2f}%;"
                       f"background:{colours[t]}'></span>" for t, v in teams.items() if v[i] > 0)
        style = "" if _in_window(d, r) else " style='color:#9aa5b1'"
        label = d + (" (partial)" if (r.daily_cost.get("partial") or [False] * len(days))[i] else "")
        rows.append(f"<tr><td{style}>{_e(label)}</td><td style='width:70%'><div style='white-space:nowrap;font-size:0'>{segs}"
                    f"</div></td><td class='n'>{_e(money(totals[i]))}</td></tr>")
    legend = "".join(f"<span><i style='background:{c}'></i>{_e(t)}</span>" for t, c in colours.items())
    return (f"<div class='legend'>{legend}</div><table>{''.join(rows)}</table>"
            f"<p class='ev'>Grey dates belong to the previous window. Bars: cost per UTC day, stacked by team.</p>")


def _in_window(d: str, r: Report) -> bool:
    from datetime import datetime, timezone
    ts = datetime.strptime(d, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()
    return ts + 86400 > r.window.start


def _histogram(r: Report) -> str:
    buckets = r.utilization_histogram
    total = sum(b["gpu_hours"] for b in buckets) or 1.0
    top = max(b["gpu_hours"] for b in buckets) or 1.0
    rows = []
    for b in buckets:
        colour = "#e15759" if b["bucket"] == "0%" else "#bab0ac" if "MIG" in b["bucket"] else "#4e79a7"
        rows.append(f"<tr><td style='width:150px'>{_e(b['bucket'])}</td><td style='width:60%'><span class='bar' "
                    f"style='width:{b['gpu_hours'] / top * 100:.2f}%;background:{colour}'></span></td>"
                    f"<td class='n'>{_e(hours(b['gpu_hours']))} GPU-h</td><td class='n'>{_e(pct(b['gpu_hours'] / total))}</td></tr>")
    return f"<table>{''.join(rows)}</table><p class='ev'>Allocated GPU time by the utilisation of each GPU-minute.</p>"


@register("html", "report.html", "the weekly report as a self-contained HTML page")
def render(r: Report) -> str:
    cur = r.currency
    parts = [f"<h1>GPU cost report</h1><p class='sub'>{_e(day(r.window.start))} – {_e(day(r.window.end - 1))} · "
             f"{r.window.hours:.0f} h ending {_e(when(r.window.end))} · compared with {_e(compared_with(r))} · "
             f"costs in {_e(cur)} · priced by {_e(price_sources(r))}</p>", _kpis(r)]
    parts += [f"<div class='note'>{_e(n)}</div>" for n in r.notes]

    parts.append("<h2>Showback by team</h2>")
    parts.append(_table(["team", "GPU-h", "utilisation", "cost", "idle cost", "previous", "change"],
                        [[_e(t["team"]), hours(t["gpu_hours"]), pct(t["utilization"]), money(t["cost"]),
                          idle_money(t["idle_cost"]), money(t["previous_cost"]),
                          _change_html(t["change"], t["change_pct"]) if r.has_previous else "–"]
                         for t in r.teams], {1, 2, 3, 4, 5, 6},
                        ["muted" if t["team"] == UNALLOCATED else "" for t in r.teams]))

    parts.append(f"<h2>Energy and carbon by team</h2><p class='ev'>{_e(ENERGY_NOTE)}</p>")
    parts.append(_table(ENERGY_HEADER, [[_e(c) for c in row] for row in energy_rows(r)], {1, 2, 3},
                        ["muted" if t["team"] == UNALLOCATED else "" for t in r.teams]))
    parts.append("<h3>Top workloads by energy</h3>")
    parts.append(_table(WORKLOAD_ENERGY_HEADER, [[_e(c) for c in row] for row in workload_energy_rows(r)], {3, 4, 5},
                        empty="No workload held GPUs in the window."))

    parts.append("<h2>Daily cost by team</h2>" + _daily_chart(r))

    parts.append("<h2>Training, inference, interactive</h2>")
    colours = {"training": "#4e79a7", "inference": "#59a14f", "interactive": "#f28e2b", "other": "#bab0ac",
               UNALLOCATED: UNALLOCATED_COLOUR}
    parts.append(_table(["class", "GPU-h", "cost", "idle cost", "share of spend", ""],
                        [[_e(c["workload_class"]), hours(c["gpu_hours"]), money(c["cost"]), idle_money(c["idle_cost"]),
                          pct(c["share"]), f"<span class='bar' style='width:{c['share'] * 200:.1f}px;background:"
                          f"{colours.get(c['workload_class'], '#9c755f')}'></span>"] for c in r.classes], {1, 2, 3, 4}))

    parts.append("<h2>Utilisation distribution</h2>" + _histogram(r))

    for title, rows in (("Top workloads by cost", r.top_by_cost), ("Top workloads by idle cost", r.top_by_idle)):
        parts.append(f"<h2>{title}</h2>")
        parts.append(_table(["workload", "team", "class", "GPU", "pods", "GPU-h", "peak p95", "peak memory", "cost", "idle cost"],
                            [[_e(workload(w)), _e(w["team"]), _e(w["workload_class"]),
                              _e(w["gpu_model"]) + (f" <span class='ev'>{_e(w['mig_profile'])}</span>" if w["mig_profile"] else ""),
                              str(w["pods"]), hours(w["gpu_hours"]), pct(w["util_p95"]), gib(w["memory_max_bytes"]),
                              money(w["cost"]), idle_money(w["idle_cost"])] for w in rows], {4, 5, 6, 7, 8, 9},
                            empty="No workload held GPUs in the window." if title.endswith("by cost")
                            else "No workload left GPUs idle."))

    parts.append(f"<h2>Unit economics (inference)</h2><p class='ev'>{_e(UNIT_COST_NOTE)}</p>")
    parts.append(_table(UNIT_COST_HEADER, [[_e(c) for c in row] for row in unit_cost_rows(r)],
                        set(range(2, 9)), cls="compact", empty=NO_UNIT_COSTS))

    parts.append("<h2>Anomalies</h2>")
    if r.anomalies:
        parts.append(_table(["day", "what", "cost", "recent max", "×"],
                            [[_e(a.day), f"{_e(a.scope)} <b>{_e(a.name)}</b>", money(a.cost), money(a.recent_max),
                              f"{a.factor:.1f}"] for a in r.anomalies], {2, 3, 4}))
    else:
        parts.append(f"<p>{_e(no_anomaly(r))}</p>")

    parts.append("<h2>Right-sizing recommendations</h2>")
    if r.recommendations:
        parts.append("<p class='ev'>Sorted by estimated monthly savings. Alternatives for one workload do not add up; "
                     "the headline counts the best per workload. No recommendation gives a workload less memory than "
                     "it was seen to use.</p>")
        parts.append(_table(["type", "workload", "change", "peak → target memory", "saves / month", "confidence", "risk"],
                            [[f"<span class='tag t-{x.type}'>{_e(x.type)}</span>",
                              f"<b>{_e(workload(x))}</b><br><span class='ev'>{_e(x.team)} · {_e(x.workload_class)} · "
                              f"{_e(x.current_gpu_model)}</span>",
                              _e(target(x)) + f"<br><span class='ev'>{_e(x.evidence)}</span>",
                              f"{gib(x.observed_max_memory_bytes)} → {gib(x.target_memory_bytes)}",
                              f"<b>{_e(money(x.monthly_savings, cur))}</b>", _e(x.confidence),
                              f"<span class='r-{x.risk}'>{_e(x.risk)}</span>"] for x in r.recommendations], {3, 4}))
    else:
        parts.append(f"<p>{_e(no_recommendation(r))}</p>")

    if r.not_judged:
        parts.append("<h2>Not judged</h2><p class='ev'>Workloads that got no recommendation for a reason other than "
                     "using what they hold.</p>")
        parts.append(_table(["workload", "team", "GPU", "GPU-h", "cost", "why"],
                            [[_e(workload(w)), _e(w["team"]), _e(w["gpu_model"]) + (f" {_e(w['mig_profile'])}" if w["mig_profile"] else ""),
                              hours(w["gpu_hours"]), money(w["cost"]), _e(w["reason"])] for w in r.not_judged], {3, 4}))

    parts.append("<h2>Reserved capacity (commitments)</h2>")
    parts.append(f"<p class='ev'>Look-back {_e(when(r.commitment_window.start))} to {_e(when(r.commitment_window.end))}. "
                 "Units are nodes (node-priced pools) or GPUs (GPU-priced pools) present each hour, spot and reserved "
                 "capacity excluded. k is the exact cost-minimising commitment.</p>")
    rows = []
    for p in r.commitments:
        b = p.best
        usage = f"{p.usage_mean:.2f}<br><span class='ev'>{p.usage_min:.2f}–{p.usage_max:.2f}</span>"
        history = f"{p.history_days:.1f}"
        if b is None:
            rows.append([_e(p.label), history, usage, money(p.on_demand_hourly),
                         f"<span class='ev'>{_e(commitment_choice(p))}</span>", "–", "–", "–", "–", "–"])
            continue
        rows.append([_e(p.label), history, usage, money(p.on_demand_hourly),
                     f"{_e(b.option.label)}<br><span class='ev'>beats {_e(p.beats)}</span>",
                     f"{b.k}<br><span class='ev'>{money(b.hourly_commitment)}/h</span>",
                     f"{money(b.monthly_before)} →<br>{money(b.monthly_after)}",
                     f"<b>{money(b.monthly_savings)}</b><br><span class='ev'>{pct(b.savings_pct)}</span>",
                     f"{pct(b.utilization)} / {pct(b.coverage)} / {pct(b.break_even)}", _e(after_rightsizing(p))])
    parts.append(_table(["pool", "history days", "units/h mean, range", "on-demand /h", "best option", "commit k",
                         "month before → after", "saves / month", "used / covered / break-even", "after right-sizing"],
                        rows, {1, 2, 3, 5, 6, 7, 8}, cls="compact",
                        empty="No commitment pool: no on-demand capacity in the look-back carries an instance type (node pools) or a GPU model with commitment prices (GPU pools)."))
    parts += [f"<div class='note'><b>{_e(p.label)}</b>: {_e(p.spot_note)}.</div>" for p in r.commitments if p.spot_note]

    parts.append(f"<p class='foot'>gpuledger report v2 · headroom {r.settings.headroom:.0%} · target utilisation "
                 f"{r.settings.target_utilization:.0%} · idle ≥ {r.settings.idle_share:.0%} of the time · files: "
                 f"recommendations.csv, recommendations.json, focus.csv</p>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            "content='width=device-width,initial-scale=1'><title>GPU cost report</title>"
            f"<style>{CSS}</style></head><body><div class='page'>{''.join(parts)}</div></body></html>\n")
