"""Number and date formatting shared by the human-readable formats (Markdown, HTML)."""

from __future__ import annotations

from datetime import datetime, timezone

GIB = float(1 << 30)


def money(x: float | None, currency: str = "") -> str:
    if x is None:
        return "–"
    text = f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.2f}"
    return f"{text} {currency}".strip()


def signed_money(x: float | None) -> str:
    if x is None:
        return "–"
    return ("+" if x > 0 else "−" if x < 0 else "±") + money(abs(x))


def pct(x: float | None, digits: int = 0) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def signed_pct(x: float | None) -> str:
    if x is None:
        return "new"
    if abs(x) < 0.005:
        return "±0%"
    return ("+" if x > 0 else "−" if x < 0 else "±") + f"{abs(100 * x):.0f}%"


def hours(x: float | None) -> str:
    return "–" if x is None else f"{x:,.1f}"


def gib(x: float | None) -> str:
    return "–" if x is None else f"{x / GIB:.1f} GiB"


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def day(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%a %d %b %Y")


def workload(r) -> str:
    get = r.get if isinstance(r, dict) else lambda k: getattr(r, k)
    return f"{get('namespace')}/{get('workload_name')}"


def target(rec) -> str:
    """What a recommendation changes, in a few words."""
    if rec.type == "idle":
        return "release (0 GPUs)"
    if rec.type == "reduce-count":
        return f"{rec.current_gpus_per_pod:g} → {rec.target_gpus_per_pod:g} GPUs per pod"
    if rec.type == "downsize-model":
        return f"{rec.current_gpu_model} → {rec.target_gpu_model}"
    if rec.type == "mig":
        return f"MIG {rec.target_mig_profile} of {rec.target_gpu_model}"
    if rec.type == "share":
        n = rec.replicas or 0
        return f"{n:g} replicas on {round(n * (rec.target_gpus_per_pod or 0)):g} shared GPU(s)"
    if rec.type == "replicas":
        return (f"{rec.target_replicas:g} replicas instead of {rec.replicas:g} (autoscale "
                f"{rec.autoscale_min_replicas}–{rec.autoscale_max_replicas})")
    if rec.type == "schedule":
        return f"stop {rec.stop_hours}"
    if rec.type == "idle-pods":
        n = len((rec.pod_names or "").split())
        return f"remove {n} idle pod{'s' if n != 1 else ''}"
    return rec.type


# --------------------------------------------------------------------------- sentences both formats print


def compared_with(r) -> str:
    """What the window is compared with: the window before it, or nothing."""
    if not r.has_previous:
        return "no previous window"
    return f"the {r.previous.hours / 24:.1f} days before"


def idle_money(x) -> str:
    """Idle cost, or 'unknown' where utilisation was never reported (MIG slices)."""
    return "unknown" if x is None else money(x)


def no_recommendation(r) -> str:
    """Why the recommendation table is empty, without claiming efficiency the figures deny."""
    t = r.totals
    waste = t["idle_cost"] + t["unallocated_cost"]
    share = waste / t["total_cost"] if t["total_cost"] else 0.0
    if share >= 0.5:
        return (f"No recommendation, although {pct(share)} of the spend bought no work (idle or unallocated): "
                "see the workloads not judged below and the top workloads by idle cost.")
    if r.not_judged:
        return ("No recommendation for the workloads that could be judged; the others are listed below with the "
                "reason.")
    return "No recommendation: every workload seen long enough uses what it holds."


def no_anomaly(r) -> str:
    from recommenders.anomalies import MIN_HISTORY_DAYS

    if not r.anomalies_judged:
        return (f"Not enough history to judge anomalies: the ledger holds {r.history_days:.1f} days (a day is judged "
                f"against at least {MIN_HISTORY_DAYS} earlier days with cost).")
    return (f"No team or workload's daily cost rose above {r.settings.anomaly_factor:g}× its highest day of the "
            f"{r.settings.anomaly_days} before.")


def price_sources(r) -> str:
    """'snapshot:2026-11-23 96%, default 4%': which sources priced how much of the spend."""
    if not r.price_sources:
        return "–"
    return ", ".join(f"{p['source']} {pct(p['share'])}" for p in r.price_sources)


def commitment_choice(p) -> str:
    """The best option of a pool, or why there is none."""
    if p.best is not None:
        return p.best.option.label
    if p.reason:
        return p.reason
    return "no price" if not p.options else "stay on demand"


def after_rightsizing(p) -> str:
    """The after-right-sizing figure, naming what it assumes."""
    a = p.after_rightsizing
    if p.best is None or a is None:
        return "–"
    head = f"k={a.k}, saves {money(a.monthly_savings)}" if a.k > 0 else "stay on demand"
    if p.assumes:
        shown = "; ".join(p.assumes[:3]) + (f"; and {len(p.assumes) - 3} more" if len(p.assumes) > 3 else "")
        return f"{head} (assumes {shown})"
    return f"{head} (counting only the GPU-time pods held; no recommendation touches this pool)"



def unit_money(x: float | None) -> str:
    """A unit cost: three significant digits below 1 (0.0573), else as money."""
    if x is None:
        return "–"
    return f"{x:.3g}" if abs(x) < 1 else money(x)


def unit_cost_rows(r) -> list[list[str]]:
    """The unit economics table's cells, shared by Markdown and HTML (escaping is theirs)."""
    def count(x) -> str:
        return "–" if x is None else f"{x:,.0f}"

    def pair(u, what: str) -> str:
        return f"{unit_money(u[what + '_allocation'])} / {unit_money(u[what + '_usage'])}"

    rows = []
    for u in r.unit_costs:
        if u["requests"] is None:
            change = "no requests counted"
        elif u["change_pct"] is not None:
            change = signed_pct(u["change_pct"]) + (" (anomaly)" if u["anomaly"] else "")
        else:
            change = "no previous window" if not r.has_previous else "new"
        trend = " → ".join(unit_money(d["cost_per_1k_requests"]) for d in u["daily"][-7:]) \
            if u["requests"] is not None else "–"
        rows.append([workload(u), str(u["team"]), count(u["requests"]), count(u["input_tokens"]),
                     count(u["output_tokens"]), money(u["cost_allocation"]), pair(u, "cost_per_1k_requests"),
                     pair(u, "cost_per_1m_input_tokens"), pair(u, "cost_per_1m_output_tokens"), trend, change])
    return rows


def unknown(value: float | None, per: float = 1.0, form: str = "{:,.1f}") -> str:
    """A figure in larger units, or "unknown" where it is not known (never 0)."""
    return "unknown" if value is None else form.format(value / per)


ENERGY_HEADER = ["team", "kWh", "energy cost", "kg CO2e"]

ENERGY_NOTE = ("GPU board energy, its cost (× PUE × the kWh price, beside the cost above, not in it) and "
               "carbon (docs/energy.md); unknown where a sample had no power reading, no kWh price was given or "
               "the region's carbon intensity is not known.")


def energy_rows(r) -> list[list[str]]:
    """The energy and carbon table's cells by team, shared by Markdown and HTML (escaping is theirs)."""
    return [[str(t["team"]), unknown(t.get("energy_joules"), 3.6e6, "{:,.1f}"),
             "unknown" if t.get("energy_cost") is None else money(t["energy_cost"]),
             unknown(t.get("carbon_grams"), 1e3, "{:,.2f}")] for t in r.teams]


WORKLOAD_ENERGY_HEADER = ["workload", "team", "class", "kWh", "energy cost", "kg CO2e"]


def workload_energy_rows(r) -> list[list[str]]:
    """The top workloads by energy: cells shared by Markdown and HTML (escaping is theirs)."""
    return [[workload(w), str(w["team"]),
             str(w["workload_class"]), unknown(w.get("energy_joules"), 3.6e6, "{:,.1f}"),
             "unknown" if w.get("energy_cost") is None else money(w["energy_cost"]),
             unknown(w.get("carbon_grams"), 1e3, "{:,.2f}")] for w in r.energy_by_workload]


UNIT_COST_HEADER = ["workload", "team", "requests", "input tokens", "output tokens", "cost",
                    "per 1k requests (alloc / used)", "per 1M input tokens", "per 1M output tokens",
                    "per 1k requests, by day", "change"]

UNIT_COST_NOTE = ("Allocation: all the cost the workload held, idle included (it adds up to the spend); used: the "
                  "cost of the GPU-seconds it used. Each token figure divides the whole cost by one kind of token. "
                  "See docs/unit-economics.md.")

NO_UNIT_COSTS = ("No inference workload, and no model server counted requests (annotate the pods for Prometheus "
                 "scraping, or map their server: docs/unit-economics.md).")
