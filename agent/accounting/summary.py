"""The summary of a ledger: totals, teams (split by class) and workloads.

``summary.json`` is a public contract (``docs/summary.md``). The figures are sums of
ledger rows, so they reconcile with the ledger exactly.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np

from agent.accounting.engine import Names
from agent.accounting.ledger import COUNTED, Rows

SUMMARY_VERSION = 1
FIGURES = ("allocated_gpu_seconds", "used_gpu_seconds", "util_unknown_gpu_seconds", "cost", "idle_cost",
           "energy_joules", "energy_cost", "carbon_grams")
ENERGY = ("energy_joules", "energy_cost", "carbon_grams")  # null when any part was not measured (docs/energy.md)


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


class SummaryBook:
    """The summary accumulated from ledger rows as they are finished (a sink, see
    :mod:`agent.sinks`), so no ledger has to be held to summarise it.

    Figures are kept per (pod version, GPU model): teams, classes and workloads are sums
    of those, made once at the end.
    """

    def __init__(self) -> None:
        self._pairs: dict[tuple[int, str], np.ndarray] = {}  # (pod id, model) -> FIGURES, rows, COUNTED, counted
        self._totals = dict.fromkeys(_TOTALS, 0.0)
        self._models: list[str] = []  # model of each slot id

    def add(self, rows: Rows, names: Names) -> None:
        v = rows.values
        for name in _SUMMED:
            self._totals[name] += float(v[name].sum())
        held = rows.holder >= 0
        for name in ENERGY:
            self._totals[name] += float(v[name][held].sum())
            self._totals["unallocated_" + name] += float(v[name][~held].sum())
        pod_rows = np.flatnonzero(rows.holder >= 0)
        if not len(pod_rows):
            return
        self._models += [s.model for s in names.slots.values[len(self._models):]]
        models = sorted(set(self._models))
        code = {m: i for i, m in enumerate(models)}
        slot_model = np.array([code[m] for m in self._models], np.int64)
        pair = rows.holder[pod_rows] * len(models) + slot_model[rows.slot[pod_rows]]
        keys, inverse = np.unique(pair, return_inverse=True)
        parts = [np.bincount(inverse, weights=v[k][pod_rows], minlength=len(keys)) for k in FIGURES]
        parts.append(np.bincount(inverse, minlength=len(keys)).astype(np.float64))
        for k in COUNTED:
            values = v[k][pod_rows]
            parts.append(np.bincount(inverse, weights=np.nan_to_num(values), minlength=len(keys)))
            parts.append(np.bincount(inverse, weights=~np.isnan(values), minlength=len(keys)))
        sums = np.column_stack(parts)
        for i, key in enumerate(keys.tolist()):
            at = (key // len(models), models[key % len(models)])
            found = self._pairs.get(at)
            self._pairs[at] = sums[i] if found is None else found + sums[i]

    def summary(self, names: Names, currency: str, window: tuple[float, float],
                prices: set[tuple]) -> dict[str, Any]:
        """Totals, per-team figures with a per-class split, and per-workload figures."""
        teams: dict[str, dict[str, Any]] = {}
        workloads: dict[tuple, dict[str, Any]] = {}
        n = len(FIGURES)
        for (pod_id, model), sums in sorted(self._pairs.items()):
            pod = names.pods.values[pod_id]
            figures = {k: float(sums[i]) for i, k in enumerate(FIGURES)}
            team = teams.setdefault(pod.team, {"team": pod.team, **dict.fromkeys(FIGURES, 0.0), "by_class": {}})
            cls = team["by_class"].setdefault(pod.workload_class, dict.fromkeys(FIGURES, 0.0))
            key = (pod.namespace, pod.workload_kind, pod.workload_name, pod.team, pod.workload_class, model)
            work = workloads.setdefault(key, {
                "namespace": pod.namespace, "kind": pod.workload_kind, "name": pod.workload_name,
                "team": pod.team, "workload_class": pod.workload_class, "gpu_model": model,
                **dict.fromkeys(FIGURES, 0.0), "pods": 0, **dict.fromkeys(COUNTED),
            })
            work["pods"] += 1
            for k, value in figures.items():
                team[k] += value
                cls[k] += value
                work[k] += value
            for i, k in enumerate(COUNTED):
                if sums[n + 2 + 2 * i] > 0:
                    work[k] = (work[k] or 0.0) + float(sums[n + 1 + 2 * i])
        for work in workloads.values():
            work.update(unit_figures(work["cost"], work["requests"], work["input_tokens"], work["output_tokens"]))
        t = {k: _known(v) for k, v in self._totals.items()}
        totals = {"gpu_seconds": t["allocated_gpu_seconds"] + t["unallocated_gpu_seconds"], **t}
        for team in teams.values():
            _null_unknown(team)
            for figures in team["by_class"].values():
                _null_unknown(figures)
        for work in workloads.values():
            _null_unknown(work)
        return {
            "version": SUMMARY_VERSION,
            "currency": currency,
            "window": {"start": iso(window[0]), "end": iso(window[1])},
            "totals": totals,
            "teams": sorted(teams.values(), key=lambda t: (-t["cost"], t["team"])),
            "workloads": sorted(workloads.values(), key=lambda w: (-w["cost"], w["namespace"], w["name"], w["gpu_model"])),
            "prices": [
                {"node": n, "instance_type": it or None, "gpu_model": m, "gpu_hourly": h, "source": src}
                for n, it, m, h, src in sorted(prices)
            ],
        }


# summary.json's totals besides gpu_seconds: sums of the ledger columns of these names (docs/summary.md);
# the energy figures of pods' rows, and of the unallocated rows under unallocated_*
_SUMMED = ("allocated_gpu_seconds", "used_gpu_seconds", "unallocated_gpu_seconds", "util_unknown_gpu_seconds",
           "cost", "idle_cost", "unallocated_cost")
_TOTALS = (*_SUMMED, *ENERGY, *(f"unallocated_{k}" for k in ENERGY))


def _known(value: float) -> float | None:
    """A figure, or None (JSON null) where it is unknown (NaN)."""
    return None if value != value else value


def _null_unknown(figures: dict[str, Any]) -> None:
    for k in ENERGY:
        figures[k] = _known(figures[k])


def format_table(summary: dict[str, Any]) -> str:
    """The per-team table printed by ``gpuledger replay``; with energy (kWh) and carbon (kg
    CO2e) columns when any energy was measured ("unknown" where a part was not, never 0)."""
    cur = summary["currency"]
    t = summary["totals"]
    energy = _any_energy(summary)
    head = ("team", "class", "GPU-h alloc", "GPU-h used", "util", f"cost {cur}", f"idle {cur}")
    if energy:
        head += ("kWh", "kg CO2e")
    rows: list[tuple[str, ...]] = []

    def with_energy(row: tuple[str, ...], joules: float | None, grams: float | None) -> tuple[str, ...]:
        return row + (_unknown(joules, 3.6e6), _unknown(grams, 1e3)) if energy else row

    def line(team: str, cls: str, f: dict[str, float]) -> tuple[str, ...]:
        measured = f["allocated_gpu_seconds"] - f["util_unknown_gpu_seconds"]
        util = f"{100 * f['used_gpu_seconds'] / measured:.1f}%" if measured > 0 else "n/a"
        return with_energy((team, cls, f"{f['allocated_gpu_seconds'] / 3600:,.2f}", f"{f['used_gpu_seconds'] / 3600:,.2f}",
                            util, f"{f['cost']:,.2f}", f"{f['idle_cost']:,.2f}"),
                           f.get("energy_joules"), f.get("carbon_grams"))

    for team in summary["teams"]:
        for cls, figures in sorted(team["by_class"].items(), key=lambda kv: -kv[1]["cost"]):
            rows.append(line(team["team"], cls, figures))
    rows.append(with_energy(("(unallocated)", "", f"{t['unallocated_gpu_seconds'] / 3600:,.2f}", "", "",
                             f"{t['unallocated_cost']:,.2f}", f"{t['unallocated_cost']:,.2f}"),
                            t.get("unallocated_energy_joules"), t.get("unallocated_carbon_grams")))
    total = line("TOTAL", "", t)
    total = total[:2] + (f"{t['gpu_seconds'] / 3600:,.2f}",) + total[3:5] + (
        f"{t['cost'] + t['unallocated_cost']:,.2f}", f"{t['idle_cost'] + t['unallocated_cost']:,.2f}")
    total = with_energy(total, _plus(t.get("energy_joules"), t.get("unallocated_energy_joules")),
                        _plus(t.get("carbon_grams"), t.get("unallocated_carbon_grams")))
    widths = [max(len(r[i]) for r in [head, *rows, total]) for i in range(len(head))]

    def render(r: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    rule = "  ".join("-" * w for w in widths)
    window = summary["window"]
    return "\n".join([f"GPU cost by team, {window['start']} to {window['end']}", render(head), rule,
                      *map(render, rows), rule, render(total)]) + "\n"


def _any_energy(summary: dict[str, Any]) -> bool:
    """Whether any energy was measured: a trace without power readings prints the table as before."""
    t = summary["totals"]
    figures = [c.get("energy_joules") for team in summary["teams"] for c in team["by_class"].values()]
    figures += [t.get("energy_joules"), t.get("unallocated_energy_joules")]
    return any(x is not None and x > 0 for x in figures)


def _unknown(value: float | None, per: float) -> str:
    return "unknown" if value is None else f"{value / per:,.2f}"


def _plus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b
