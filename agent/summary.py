"""The summary of a ledger: totals, teams (split by class) and workloads.

``summary.json`` is a public contract (``docs/summary.md``). The figures are sums of
ledger rows, so they reconcile with the ledger exactly.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np

from agent.ledger import COUNTED, Ledger
from agent.timeline import Timeline

SUMMARY_VERSION = 1
FIGURES = ("allocated_gpu_seconds", "used_gpu_seconds", "util_unknown_gpu_seconds", "cost", "idle_cost")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def unit_figures(cost: float, requests: float | None, input_tokens: float | None,
                 output_tokens: float | None) -> dict[str, float | None]:
    """Cost per 1,000 requests and per million tokens on the allocation basis (null where
    the count is unknown or 0): docs/unit-economics.md."""
    def per(count: float | None, scale: float) -> float | None:
        return cost / count * scale if count else None

    return {"cost_per_1k_requests": per(requests, 1e3), "cost_per_1m_input_tokens": per(input_tokens, 1e6),
            "cost_per_1m_output_tokens": per(output_tokens, 1e6)}


def summarize(ledger: Ledger, timeline: Timeline, window: tuple[float, float]) -> dict[str, Any]:
    """Totals, per-team figures with a per-class split, and per-workload figures."""
    n_pods = len(timeline.pods)
    pod_rows = ledger.holder >= 0
    holder = ledger.holder[pod_rows]
    per_pod = {
        "allocated_gpu_seconds": ledger.allocated, "used_gpu_seconds": ledger.used,
        "util_unknown_gpu_seconds": ledger.util_unknown, "cost": ledger.cost,
        "idle_cost": ledger.idle_cost,
    }
    models = sorted({s.model for s in timeline.slots})
    model_code = {m: i for i, m in enumerate(models)}
    row_model = np.array([model_code[s.model] for s in timeline.slots], np.int64)[ledger.slot[pod_rows]] if len(timeline.slots) else np.empty(0, np.int64)
    pair = holder * max(len(models), 1) + row_model
    size = n_pods * max(len(models), 1)
    sums = {k: np.bincount(pair, weights=v[pod_rows], minlength=size) for k, v in per_pod.items()}
    rows = np.bincount(pair, minlength=size)
    served = {}  # serving counts per (pod, model), NaN where its servers counted nothing
    for k in COUNTED:
        values = getattr(ledger, k)[pod_rows]
        seen = np.bincount(pair, weights=~np.isnan(values), minlength=size) > 0
        served[k] = np.where(seen, np.bincount(pair, weights=np.nan_to_num(values), minlength=size), np.nan)

    teams: dict[str, dict[str, Any]] = {}
    workloads: dict[tuple, dict[str, Any]] = {}
    for p, pod in enumerate(timeline.pods):
        for m, model in enumerate(models):
            code = p * len(models) + m
            if rows[code] == 0:
                continue
            figures = {k: float(sums[k][code]) for k in FIGURES}
            team = teams.setdefault(pod.team, {"team": pod.team, **dict.fromkeys(FIGURES, 0.0), "by_class": {}})
            cls = team["by_class"].setdefault(pod.workload_class, dict.fromkeys(FIGURES, 0.0))
            key = (pod.namespace, pod.workload_kind, pod.workload_name, pod.team, pod.workload_class, model)
            work = workloads.setdefault(key, {
                "namespace": pod.namespace, "kind": pod.workload_kind, "name": pod.workload_name,
                "team": pod.team, "workload_class": pod.workload_class, "gpu_model": model,
                **dict.fromkeys(FIGURES, 0.0), "pods": 0, **dict.fromkeys(COUNTED),
            })
            work["pods"] += 1
            for k, v in figures.items():
                team[k] += v
                cls[k] += v
                work[k] += v
            for k in COUNTED:
                if not np.isnan(served[k][code]):
                    work[k] = (work[k] or 0.0) + float(served[k][code])
    for work in workloads.values():
        work.update(unit_figures(work["cost"], work["requests"], work["input_tokens"], work["output_tokens"]))

    totals = {
        "gpu_seconds": float(ledger.allocated.sum() + ledger.unallocated.sum()),
        "allocated_gpu_seconds": float(ledger.allocated.sum()),
        "used_gpu_seconds": float(ledger.used.sum()),
        "unallocated_gpu_seconds": float(ledger.unallocated.sum()),
        "util_unknown_gpu_seconds": float(ledger.util_unknown.sum()),
        "cost": float(ledger.cost.sum()),
        "idle_cost": float(ledger.idle_cost.sum()),
        "unallocated_cost": float(ledger.unallocated_cost.sum()),
    }
    prices = sorted({
        (s.node, s.instance_type or "", s.model, s.gpu_hourly_price, s.price_source) for s in timeline.slots
        if s.parent_uuid is None
    })
    return {
        "version": SUMMARY_VERSION,
        "currency": timeline.currency,
        "window": {"start": iso(window[0]), "end": iso(window[1])},
        "totals": totals,
        "teams": sorted(teams.values(), key=lambda t: (-t["cost"], t["team"])),
        "workloads": sorted(workloads.values(), key=lambda w: (-w["cost"], w["namespace"], w["name"], w["gpu_model"])),
        "prices": [
            {"node": n, "instance_type": it or None, "gpu_model": m, "gpu_hourly": h, "source": src}
            for n, it, m, h, src in prices
        ],
    }


def format_table(summary: dict[str, Any]) -> str:
    """The per-team table printed by ``gpuledger replay``."""
    cur = summary["currency"]
    head = ("team", "class", "GPU-h alloc", "GPU-h used", "util", f"cost {cur}", f"idle {cur}")
    rows: list[tuple[str, ...]] = []

    def line(team: str, cls: str, f: dict[str, float]) -> tuple[str, ...]:
        measured = f["allocated_gpu_seconds"] - f["util_unknown_gpu_seconds"]
        util = f"{100 * f['used_gpu_seconds'] / measured:.1f}%" if measured > 0 else "n/a"
        return (team, cls, f"{f['allocated_gpu_seconds'] / 3600:,.2f}", f"{f['used_gpu_seconds'] / 3600:,.2f}",
                util, f"{f['cost']:,.2f}", f"{f['idle_cost']:,.2f}")

    for team in summary["teams"]:
        for cls, figures in sorted(team["by_class"].items(), key=lambda kv: -kv[1]["cost"]):
            rows.append(line(team["team"], cls, figures))
    t = summary["totals"]
    rows.append(("(unallocated)", "", f"{t['unallocated_gpu_seconds'] / 3600:,.2f}", "", "",
                 f"{t['unallocated_cost']:,.2f}", f"{t['unallocated_cost']:,.2f}"))
    total = line("TOTAL", "", t)
    total = total[:2] + (f"{t['gpu_seconds'] / 3600:,.2f}",) + total[3:5] + (
        f"{t['cost'] + t['unallocated_cost']:,.2f}", f"{t['idle_cost'] + t['unallocated_cost']:,.2f}")
    widths = [max(len(r[i]) for r in [head, *rows, total]) for i in range(len(head))]

    def render(r: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    rule = "  ".join("-" * w for w in widths)
    window = summary["window"]
    return "\n".join([f"GPU cost by team, {window['start']} to {window['end']}", render(head), rule,
                      *map(render, rows), rule, render(total)]) + "\n"
