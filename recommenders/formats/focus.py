"""``focus.csv``: the window's GPU costs as FinOps FOCUS 1.2 cost-and-usage rows.

One row per UTC day × team × workload (× GPU model × region), plus one per day for
capacity no pod held, so the file adds up to the report's total spend. gpuledger is
the publisher of these rows and the cost is what the rate card says a GPU-hour costs,
so billed, effective, list and contracted cost are the same figure: the attribution
is showback, not an invoice: ``InvoiceId`` is null (FOCUS: null when the charge is
not associated with an invoice). ``Tags`` carries team, workload
class and workload. ``tests/recommenders/test_focus.py`` runs the FinOps Foundation's validator.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone

from recommenders.anomalies import DAY
from recommenders.formats import register
from recommenders.formats.escaping import csv_cell
from recommenders.report import UNALLOCATED, Report

PROVIDER = "gpuledger"
SERVICE = "Kubernetes GPU compute"

COLUMNS = (
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingAccountType", "BillingCurrency",
    "BillingPeriodEnd", "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription",
    "ChargeFrequency", "ChargePeriodEnd", "ChargePeriodStart", "ConsumedQuantity", "ConsumedUnit",
    "ContractedCost", "ContractedUnitPrice", "EffectiveCost", "InvoiceId", "InvoiceIssuerName", "ListCost",
    "ListUnitPrice", "PricingCategory", "PricingCurrency", "PricingQuantity", "PricingUnit", "ProviderName",
    "PublisherName", "RegionId", "RegionName", "ResourceId", "ResourceName", "ResourceType",
    "ServiceCategory", "ServiceName", "ServiceSubcategory", "SkuId", "SkuPriceId", "SubAccountId",
    "SubAccountName", "SubAccountType", "Tags",
)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _month(ts: float) -> tuple[str, str]:
    d = datetime.fromtimestamp(ts, timezone.utc)
    start = d.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start.strftime("%Y-%m-%dT%H:%M:%SZ"), end.strftime("%Y-%m-%dT%H:%M:%SZ")


def _dec(x: float) -> str:
    return f"{x:.10f}".rstrip("0").rstrip(".") if x else "0"


def focus_records(r: Report) -> list[dict[str, str]]:
    out = []
    for row in r.focus_rows:
        start = int(row["day"]) * DAY
        qty = row["gpu_seconds"] / 3600.0
        cost = row["cost"]
        unit_price = cost / qty if qty > 0 else 0.0
        period_start, period_end = _month(start)
        unallocated = row["team"] == UNALLOCATED
        name = f"{row['namespace']}/{row['workload_kind']}/{row['workload_name']}" if not unallocated else "unallocated"
        sku = row["gpu_model"] or "unknown GPU"
        tags = {"team": row["team"], "workload-class": row["workload_class"] or "none", "workload": name,
                "namespace": row["namespace"] or "none", "gpu-model": sku}
        region = row["region"] or None
        out.append({
            "BilledCost": _dec(cost), "BillingAccountId": "gpuledger", "BillingAccountName": "gpuledger showback",
            "BillingAccountType": "Showback", "BillingCurrency": r.currency,
            "BillingPeriodEnd": period_end, "BillingPeriodStart": period_start,
            "ChargeCategory": "Usage", "ChargeClass": None,
            "ChargeDescription": (f"GPU capacity held by no pod ({sku})" if unallocated
                                  else f"GPU time of {name} for team {row['team']} ({sku})"),
            "ChargeFrequency": "Usage-Based", "ChargePeriodEnd": _iso(start + DAY), "ChargePeriodStart": _iso(start),
            "ConsumedQuantity": _dec(qty), "ConsumedUnit": "GPU-Hours",
            "ContractedCost": _dec(cost), "ContractedUnitPrice": _dec(unit_price), "EffectiveCost": _dec(cost),
            "InvoiceId": None, "InvoiceIssuerName": PROVIDER, "ListCost": _dec(cost), "ListUnitPrice": _dec(unit_price),
            "PricingCategory": "Standard", "PricingCurrency": r.currency, "PricingQuantity": _dec(qty),
            "PricingUnit": "GPU-Hours", "ProviderName": PROVIDER, "PublisherName": PROVIDER,
            "RegionId": region, "RegionName": region,
            "ResourceId": f"{row['team']}/{name}/{sku}", "ResourceName": name, "ResourceType": "GPU workload",
            "ServiceCategory": "AI and Machine Learning", "ServiceName": SERVICE,
            "ServiceSubcategory": "AI Platforms", "SkuId": sku, "SkuPriceId": f"{sku} per GPU-hour",
            "SubAccountId": row["team"], "SubAccountName": row["team"], "SubAccountType": "Team",
            "Tags": json.dumps(tags, separators=(",", ":")),
        })
    return out


@register("focus", "focus.csv", "the window's costs as FOCUS 1.2 rows")
def render(r: Report) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for rec in focus_records(r):
        writer.writerow({k: csv_cell(v) for k, v in rec.items()})  # numbers are written by _dec: never negative
    return buf.getvalue()
