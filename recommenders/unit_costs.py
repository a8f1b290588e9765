"""Unit economics: what one request, and one million tokens, cost each inference workload.

The ledger knows each workload's GPU cost to the cent (idle time, MIG slices and
time-shared GPUs included) and, where its pods' model servers count them, its requests
and tokens per minute. Dividing one by the other gives the figure FinOps for AI is
judged by, on two bases (``docs/unit-economics.md``):

* **allocation**: all the cost the workload held, idle included. It reconciles with the
  spend: the workloads' allocation costs add up to the showback.
* **usage**: the cost of the GPU-seconds it used (``cost − idle_cost``; seconds of
  unknown utilisation, such as MIG slices', count as used, since they are not known to
  be idle). What the answers cost if the GPUs had been kept busy.

A workload here is (team, namespace, owner kind, owner name), over every GPU model it
ran on. Pure: ledger rows in, plain dicts out.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from recommenders.anomalies import DAY
from recommenders.grouping import group_ids

UNIT_KEY = ("team", "namespace", "workload_kind", "workload_name")
SERVING = ("requests", "input_tokens", "output_tokens")


def _per_1k(cost: float, count: float | None, scale: float) -> float | None:
    if count is None or not count > 0:
        return None
    return cost / count * scale


def _sums(rows: pd.DataFrame, extra: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Per workload (and extra keys): cost, usage cost and the serving counts (NaN where never counted)."""
    mask = rows["pod_uid"].notna().to_numpy()
    ids, keys = group_ids(rows, UNIT_KEY, mask, extra={k: v[mask] for k, v in (extra or {}).items()})
    n = len(keys)

    def total(values: np.ndarray) -> np.ndarray:
        return np.bincount(ids, weights=values[mask], minlength=n)

    cost = rows["cost"].to_numpy(np.float64)
    keys["cost_allocation"] = total(cost)
    keys["cost_usage"] = total(cost - rows["idle_cost"].to_numpy(np.float64))
    classes = rows["workload_class"].astype(object).to_numpy()[mask]
    keys["inference"] = np.bincount(ids, weights=(classes == "inference").astype(np.float64), minlength=n) > 0
    for name in SERVING:
        if name not in rows:
            keys[name] = np.nan
            continue
        values = rows[name].to_numpy(np.float64)
        seen = total((~np.isnan(values)).astype(np.float64)) > 0
        keys[name] = np.where(seen, total(np.nan_to_num(values)), np.nan)
    return keys


def _figures(r: dict[str, Any]) -> dict[str, Any]:
    def num(x) -> float | None:
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

    requests, inputs, outputs = (num(r[n]) for n in SERVING)
    a, u = float(r["cost_allocation"]), float(r["cost_usage"])
    return {
        "requests": requests, "input_tokens": inputs, "output_tokens": outputs,
        "cost_allocation": a, "cost_usage": u,
        "cost_per_1k_requests_allocation": _per_1k(a, requests, 1e3),
        "cost_per_1k_requests_usage": _per_1k(u, requests, 1e3),
        "cost_per_1m_input_tokens_allocation": _per_1k(a, inputs, 1e6),
        "cost_per_1m_input_tokens_usage": _per_1k(u, inputs, 1e6),
        "cost_per_1m_output_tokens_allocation": _per_1k(a, outputs, 1e6),
        "cost_per_1m_output_tokens_usage": _per_1k(u, outputs, 1e6),
    }


def unit_costs(current: pd.DataFrame, previous: pd.DataFrame, anomaly_factor: float) -> list[dict[str, Any]]:
    """One entry per inference workload (or any workload whose servers counted requests).

    Each holds the keys of ``UNIT_KEY``, the figures of :func:`_figures`, ``daily`` (per
    UTC day: cost, requests and cost per 1,000 requests on the allocation basis),
    ``previous_cost_per_1k_requests_allocation`` and ``change_pct`` against the window
    before, and ``anomaly`` (the cost per request rose past ``anomaly_factor`` × the
    previous window's). Largest allocation cost first.
    """
    if len(current) == 0 or not current["pod_uid"].notna().any():
        return []
    now = _sums(current)
    before = {tuple(r[k] for k in UNIT_KEY): _figures(r) for r in _sums(previous).to_dict("records")} \
        if len(previous) and previous["pod_uid"].notna().any() else {}
    day = (current["minute"].to_numpy(np.int64) // DAY).astype(np.int32)
    daily = _sums(current, {"day": day}).to_dict("records")
    by_day: dict[tuple, list[dict[str, Any]]] = {}
    for r in daily:
        f = _figures(r)
        by_day.setdefault(tuple(r[k] for k in UNIT_KEY), []).append({
            "day": pd.Timestamp(int(r["day"]) * DAY, unit="s", tz="UTC").strftime("%Y-%m-%d"),
            "cost": f["cost_allocation"], "requests": f["requests"],
            "cost_per_1k_requests": f["cost_per_1k_requests_allocation"]})
    out = []
    for r in now.to_dict("records"):
        figures = _figures(r)
        if not r["inference"] and figures["requests"] is None:
            continue
        key = tuple(r[k] for k in UNIT_KEY)
        prev = before.get(key, {}).get("cost_per_1k_requests_allocation")
        cur = figures["cost_per_1k_requests_allocation"]
        change = (cur - prev) / prev if cur is not None and prev else None
        out.append({
            **{k: r[k] for k in UNIT_KEY}, **figures,
            "daily": sorted(by_day.get(key, []), key=lambda d: d["day"]),
            "previous_cost_per_1k_requests_allocation": prev, "change_pct": change,
            "anomaly": bool(cur is not None and prev and cur > anomaly_factor * prev),
        })
    # cost rounded to micro-units in the key: equal costs summed in another row order differ in
    # their last bits, and the order must not depend on the order the rows were read in
    out.sort(key=lambda d: (-round(d["cost_allocation"], 6), str(d["namespace"]), str(d["workload_name"])))
    return out
