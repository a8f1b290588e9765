"""``recommendations.json`` and ``recommendations.csv``: one row per recommendation, stable columns.

Both carry exactly :data:`recommenders.rightsizing.COLUMNS`, in that order (documented
in ``docs/report.md``); CSV writes a missing value as an empty cell, JSON as null. The
JSON also carries what a script acting on the advice needs beside it: the commitment
plan per pool, the workloads not judged and why, and which sources priced the spend.
"""

from __future__ import annotations

import csv
import io
import json

from recommenders.formats import register
from recommenders.commitments import OptionResult, PoolResult
from recommenders.formats.escaping import csv_cell
from recommenders.report import REPORT_VERSION, Report, to_plain
from recommenders.rightsizing import COLUMNS


def _option(o: OptionResult | None) -> dict | None:
    if o is None:
        return None
    return {"option": o.option.label, "kind": o.option.kind, "term_years": o.option.term_years,
            "payment": o.option.payment, "hourly": o.option.hourly, "price_source": o.option.source or None,
            "k": o.k, "hourly_commitment": o.hourly_commitment, "monthly_before": o.monthly_before,
            "monthly_after": o.monthly_after, "monthly_savings": o.monthly_savings, "savings_pct": o.savings_pct,
            "utilization": o.utilization, "coverage": o.coverage, "break_even": o.break_even, "eligible": o.eligible}


def _rounded(value):
    """Floats to 6 decimals: their last digits depend on the order the ledger files were read in."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def commitment_plan(p: PoolResult) -> dict:
    """One pool of the plan, machine-readable (docs/report.md, "commitments")."""
    return _rounded(to_plain({
        "kind": p.kind, "instance_type": p.instance_type, "gpu_model": p.gpu_model, "region": p.region,
        "hours": p.hours, "history_days": p.history_days, "on_demand_hourly": p.on_demand_hourly,
        "usage_mean": p.usage_mean, "usage_min": p.usage_min, "usage_max": p.usage_max,
        "recommended": _option(p.best), "reason": p.reason, "beats": p.beats or None,
        "options": [_option(o) for o in p.options],
        "after_rightsizing": dict(_option(p.after_rightsizing), assumes=list(p.assumes))
        if p.after_rightsizing is not None else None,
        "spot_hourly": p.spot_hourly, "spot_note": p.spot_note,
    }))


@register("json", "recommendations.json", "recommendations as JSON")
def render_json(r: Report) -> str:
    doc = {
        "version": REPORT_VERSION, "currency": r.currency,
        "window": {"start": r.window.start, "end": r.window.end, "hours": r.window.hours},
        "potential_monthly_savings": round(r.potential_monthly_savings, 2),
        "price_sources": to_plain(r.price_sources),
        "columns": list(COLUMNS),
        "recommendations": [rec.as_row() for rec in r.recommendations],
        "not_judged": to_plain(r.not_judged),
        "unit_costs": _rounded(to_plain(r.unit_costs)),
        "commitment_window": {"start": r.commitment_window.start, "end": r.commitment_window.end,
                              "hours": r.commitment_window.hours},
        "commitments": [commitment_plan(p) for p in r.commitments],
    }
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"  # finite by construction: inputs are checked


@register("csv", "recommendations.csv", "recommendations as CSV")
def render_csv(r: Report) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for rec in r.recommendations:
        row = rec.as_row()
        writer.writerow([csv_cell(row[c]) for c in COLUMNS])
    return buf.getvalue()
