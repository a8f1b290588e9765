"""``recommendations.json`` and ``recommendations.csv``: one row per recommendation, stable columns.

Both carry exactly :data:`recommenders.rightsizing.COLUMNS`, in that order (documented
in ``docs/report.md``); CSV writes a missing value as an empty cell, JSON as null.
"""

from __future__ import annotations

import csv
import io
import json

from recommenders.formats import register
from recommenders.formats.escaping import csv_cell
from recommenders.report import REPORT_VERSION, Report
from recommenders.rightsizing import COLUMNS


@register("json", "recommendations.json", "recommendations as JSON")
def render_json(r: Report) -> str:
    doc = {
        "version": REPORT_VERSION, "currency": r.currency,
        "window": {"start": r.window.start, "end": r.window.end, "hours": r.window.hours},
        "potential_monthly_savings": round(r.potential_monthly_savings, 2),
        "columns": list(COLUMNS),
        "recommendations": [rec.as_row() for rec in r.recommendations],
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
