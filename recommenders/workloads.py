"""What each workload held and used over a window: the evidence every recommendation cites.

A workload is (team, class, namespace, owner kind, owner name) on one GPU model (and MIG
profile, for slices), as ``docs/classification.md`` defines it. Per GPU-minute row:

* utilisation is used seconds over allocated seconds (the minute's mean); the row's
  **peak** is its highest sample's utilisation (``util_peak``; the mean where a 1.0
  ledger lacks it). Compute checks use percentiles of the peaks, so a spiky pod is never
  understated by averaging; rows of unknown utilisation (MIG slices) are left out;
* memory is the row's peak.

Per minute of the workload, its **demand** is the busy GPU-equivalents of all its pods
together: the sum of its rows' peaks, each row being one GPU the pod held (a row of
unknown utilisation counts as fully busy). That is what ``replicas`` sizes, for
workloads whose pods hold GPUs of their own. Per hour of the week, the GPU-time
held and the activity seen are what ``schedule`` reads.

Every figure is a query over the window's rows (:mod:`recommenders.queries`), run by
whichever engine holds them: DuckDB over a gathered dataset or over rows in memory,
Spark over a cluster's. Only the per-workload results come back, so the rows never
have to fit in memory; distributions over minutes come back counted.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from recommenders.clock import WEEK_HOURS
from recommenders.grouping import group_ids
from recommenders.quantiles import Counted
from recommenders.settings import Settings

KEY = ("team", "workload_class", "namespace", "workload_kind", "workload_name", "gpu_model", "mig_profile")
GIB = float(1 << 30)
DEFAULT_PRICE = "default"  # the price source of a GPU no rate card or snapshot knew (docs/pricing.md)


def allocated_mask(rows: pd.DataFrame) -> np.ndarray:
    """Rows held by a pod (unallocated capacity has no workload)."""
    return (rows["pod_uid"].notna() & (rows["allocated_gpu_seconds"] > 0)).to_numpy()


def allocated_rows(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[allocated_mask(rows)]


def workload_ids(rows: pd.DataFrame, mask: np.ndarray | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """A dense workload id per (masked) row, and the key columns of each id."""
    return group_ids(rows, KEY, mask)


def workload_stats(rows: pd.DataFrame, window_hours: float, settings: Settings | float | None = None) -> pd.DataFrame:
    """:func:`workload_evidence` of ledger rows in memory (a DataFrame: tests, the agent's own report)."""
    from recommenders.sqlframe import frame_sql

    with frame_sql(rows) as sql:
        return workload_evidence(sql, window_hours, settings)


def workload_evidence(sql: Callable[[str], pd.DataFrame], window_hours: float,
                      settings: Settings | float | None = None) -> pd.DataFrame:
    """One row per workload with the figures of ``docs/recommendations.md`` ("Evidence").

    ``sql`` runs a query over the view ``ledger`` (the window's rows, :mod:`recommenders.queries`)
    and returns its (small) result: every figure is a query, so the rows never need to
    fit in memory. Columns: the KEY, pods, gpu_hours, cost, idle_cost, util_p50 (of minute
    means), util_p95/p99/max (of minute peaks), memory_p99/max_bytes, gpu_memory_bytes,
    memory_max_fraction, active_share, hourly_price (per GPU), price_source (the one that
    priced most of its cost), default_price_share, gpus_per_pod (median over pods of the
    most GPUs a pod held at once), replicas (median pods at once), replicas_mean,
    hours_observed, span_days, coverage, idle_share, idle_memory_max_bytes,
    util_known_share, exclusive (every pod held whole GPUs of its own), and what the
    time-shaped strategies read: ``peaks`` (the known minute peaks, a
    :class:`~recommenders.quantiles.Counted`), ``demand`` (per-minute demand, Counted) and
    ``demand_mean``, ``demand_by_hour`` (the ``demand_percentile`` of demand per hour of
    the day in ``time_zone``), ``rps`` (Counted), ``rps_capacity``, ``serving_share``,
    ``week_held``, ``week_active``, ``week_known``, ``week_cost`` (per hour of the week)
    and ``idle_pods``. ``attrs['idle_gpus']`` holds, per multi-GPU pod and device, the
    seconds :func:`idle_devices_per_pod` needs.
    """
    from recommenders import queries
    from recommenders.clock import offset_spans

    if not isinstance(settings, Settings):  # older callers passed the idle memory floor in bytes
        settings = Settings() if settings is None else Settings(idle_memory_floor_gib=float(settings) / GIB)
    base = sql(queries.workload_sums())
    if base.empty:
        return pd.DataFrame(columns=[*KEY])
    keys = _keys(base)
    order = sorted(range(len(keys)), key=lambda i: [(v is not None, v or "") for v in keys[i]])
    base = base.iloc[order].reset_index(drop=True)
    keys = [keys[i] for i in order]
    index = {key: i for i, key in enumerate(keys)}
    k = len(keys)
    out = pd.DataFrame({c: [key[j] for key in keys] for j, c in enumerate(KEY)}, dtype=object)
    num = {c: base[c].to_numpy(np.float64, na_value=np.nan) for c in base.columns if c not in KEY}
    with np.errstate(invalid="ignore", divide="ignore"):
        out["gpu_hours"] = num["held_seconds"] / 3600.0
        out["cost"] = num["cost"]
        out["idle_cost"] = num["idle_cost"]
        out["hourly_price"] = num["cost"] / out["gpu_hours"]
        out["util_known_share"] = num["known_seconds"] / num["held_seconds"]
        out["active_share"] = num["active_seconds"] / num["known_seconds"]
        out["idle_share"] = num["idle_seconds"] / num["known_seconds"]
        out["default_price_share"] = np.nan_to_num(num["default_cost"] / num["cost"])
        out["memory_max_fraction"] = num["memory_max_bytes"] / num["gpu_memory_bytes"]
    for c in ("idle_memory_max_bytes", "gpu_memory_bytes", "memory_p99_bytes", "memory_max_bytes", "util_p50",
              "util_p95", "util_p99", "util_max"):
        out[c] = num[c]
    out["pods"] = num["pods"].astype(np.int64)
    out["price_source"] = _main_price_source(sql(queries.workload_price_sources()), index, k)
    out["idle_pods"] = _objects(_idle_pods(sql(queries.workload_pods()), index, k, settings))
    out["peaks"] = _objects(_counted(sql(queries.workload_peaks()), index, k))

    per_pod = _by_key(sql(queries.workload_gpus_per_pod()), index, k, ["gpus_per_pod"])
    out["gpus_per_pod"] = per_pod["gpus_per_pod"]
    seen = _by_key(sql(queries.workload_replicas()), index, k,
                   ["replicas", "pod_minutes", "minutes", "first_minute", "last_minute"])
    minutes = np.nan_to_num(seen["minutes"])
    out["replicas"] = seen["replicas"]
    out["replicas_mean"] = np.nan_to_num(seen["pod_minutes"]) / np.maximum(minutes, 1)
    out["hours_observed"] = minutes / 60.0
    out["coverage"] = np.minimum(out["hours_observed"] / window_hours, 1.0) if window_hours > 0 else 0.0
    out["span_days"] = np.where(np.isfinite(seen["first_minute"]),
                                (seen["last_minute"] - seen["first_minute"] + 60.0) / 86400.0, 0.0)
    shared = _by_key(sql(queries.workload_shared_seconds()), index, k, ["shared_seconds"])["shared_seconds"]
    out["exclusive"] = num["held_seconds"] - np.nan_to_num(shared) >= 0.99 * num["held_seconds"]

    span = sql(queries.held_minutes()).iloc[0]
    spans = offset_spans(settings.time_zone, float(span["first_minute"]), float(span["last_minute"]) + 60.0)
    demand = _counted(sql(queries.workload_demand()), index, k)
    out["demand"] = _objects(demand)
    out["demand_mean"] = [d.mean() if len(d) else 0.0 for d in demand]
    by_hour = np.full((k, 24), np.nan)
    for key, hour, value in _rows(sql(queries.workload_demand_by_hour(settings.demand_percentile, spans)), ["hour", "demand"]):
        by_hour[index[key], int(hour)] = value
    out["demand_by_hour"] = _objects(list(by_hour))
    if int(span["counted"]) > 0:
        rps = _counted(sql(queries.workload_requests()), index, k)
        out["rps"] = _objects(rps)
        out["serving_share"] = np.array([len(r) for r in rps], np.float64) / np.maximum(minutes, 1)
        out["rps_capacity"] = _by_key(sql(queries.workload_replica_capacity(settings.target_utilization)), index, k,
                                      ["rps_capacity"])["rps_capacity"]
    else:
        out["rps"] = _objects([Counted.of(np.empty(0), np.empty(0))] * k)
        out["rps_capacity"] = np.nan
        out["serving_share"] = 0.0
    week = {name: np.zeros((k, WEEK_HOURS)) for name in ("held", "active", "known", "cost")}
    for key, hour, *values in _rows(sql(queries.workload_week(spans)), ["hour", "held", "active", "known", "cost"]):
        for name, value in zip(("held", "active", "known", "cost"), values):
            week[name][index[key], int(hour)] = value
    for name, table in week.items():
        out[f"week_{name}"] = _objects(list(table))
    out.attrs["idle_gpus"] = _idle_gpus(sql(queries.multi_gpu_pod_devices()), index)
    out.attrs["idle_memory_floor"] = settings.idle_memory_floor_gib * GIB
    return out


def _keys(frame: pd.DataFrame) -> list[tuple]:
    """Each result row's workload key, None for a missing part."""
    columns = [frame[c].astype(object).tolist() for c in KEY]
    return [tuple(None if pd.isna(v) else str(v) for v in parts) for parts in zip(*columns)]


def _rows(frame: pd.DataFrame, names: list[str]):
    """(key, *values) per result row."""
    values = [frame[c].to_numpy() for c in names]
    for i, key in enumerate(_keys(frame)):
        yield (key, *(v[i] for v in values))


def _by_key(frame: pd.DataFrame, index: dict, k: int, names: list[str]) -> dict[str, np.ndarray]:
    """Per-workload columns of a query's result, in the workloads' order (NaN where it has no row)."""
    out = {name: np.full(k, np.nan) for name in names}
    at = np.array([index[key] for key in _keys(frame)], np.int64)
    for name in names:
        out[name][at] = frame[name].to_numpy(np.float64, na_value=np.nan)
    return out


def _counted(frame: pd.DataFrame, index: dict, k: int) -> list[Counted]:
    """Per workload, the (value, n) pairs of a query as a :class:`Counted` (empty where none)."""
    values: list[list] = [[] for _ in range(k)]
    counts: list[list] = [[] for _ in range(k)]
    for key, value, n in _rows(frame, ["value", "n"]):
        if not pd.isna(value):  # a NULL (unknown) value is not a minute of the distribution
            values[index[key]].append(value)
            counts[index[key]].append(n)
    return [Counted.of(np.array(v, np.float64), np.array(c, np.int64)) for v, c in zip(values, counts)]


def _main_price_source(frame: pd.DataFrame, index: dict, k: int) -> list:
    """Per workload, the price source that priced most of its cost (ties: the first by name)."""
    best: list[tuple] = [(-np.inf, "")] * k
    out: list = [None] * k
    for key, source, cost in _rows(frame, ["price_source", "cost"]):
        i = index[key]
        name = None if pd.isna(source) else str(source)
        rank = (float(cost), "" if name is None else name)
        if rank[0] > best[i][0] or (rank[0] == best[i][0] and rank[1] < best[i][1]):
            best[i], out[i] = rank, name
    return out


def _idle_pods(frame: pd.DataFrame, index: dict, k: int, settings: Settings) -> list[list[dict]]:
    """Per workload: its pods that were idle (``idle_share`` of their known time), largest cost first.

    A pod counts only when it held at least ``min_hours`` GPU-hours and its utilisation was
    known for ``min_util_known_share`` of its GPU-time. Workloads of one pod get an empty
    list (the workload-level ``idle`` covers them).
    """
    out: list[list[dict]] = [[] for _ in range(k)]
    pods_per_workload = np.zeros(k, np.int64)
    rows = list(_rows(frame, ["pod", "held_seconds", "known_seconds", "idle_seconds", "cost", "memory_max_bytes"]))
    for key, *_ in rows:
        pods_per_workload[index[key]] += 1
    for key, pod, held, known, idle, cost, memory in rows:
        i = index[key]
        if (pods_per_workload[i] >= 2 and held >= settings.min_hours * 3600 and known > 0
                and known >= settings.min_util_known_share * held and idle >= settings.idle_share * known):
            out[i].append({"pod": str(pod), "gpu_hours": float(held / 3600), "cost": float(cost),
                           "idle_share": float(idle / known),
                           "memory_max_bytes": None if pd.isna(memory) else float(memory)})
    for pods in out:
        pods.sort(key=lambda d: (-d["cost"], d["pod"]))
    return out


def _idle_gpus(frame: pd.DataFrame, index: dict) -> "pd.DataFrame | None":
    """Per device of each multi-GPU pod: its workload's row (``w``), the pod (``p``), GPU-seconds
    known and idle, and memory peak (0 where never reported)."""
    if frame.empty:
        return None
    pods = {uid: i for i, uid in enumerate(pd.unique(frame["pod_uid"].astype(object)))}
    return pd.DataFrame({
        "w": [index[key] for key in _keys(frame)], "p": [pods[u] for u in frame["pod_uid"].astype(object)],
        "known": frame["known_seconds"].to_numpy(np.float64), "idle": frame["idle_seconds"].to_numpy(np.float64),
        "mem": np.nan_to_num(frame["memory_max_bytes"].to_numpy(np.float64, na_value=np.nan), nan=0.0)})


def _objects(values: list) -> pd.Series:
    """A column holding one Python object (an array, a list) per workload."""
    holder = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):  # one by one: numpy would stack equal-length arrays into 2-D
        holder[i] = v
    return pd.Series(holder, dtype=object)


def idle_devices_per_pod(stats: pd.DataFrame, idle_share: float) -> np.ndarray:
    """Per workload: the fewest idle GPUs among its multi-GPU pods (0 when none qualifies)."""
    d = stats.attrs.get("idle_gpus")
    floor = stats.attrs.get("idle_memory_floor", 0.0)
    result = np.zeros(len(stats), np.int64)
    if d is None or d.empty:
        return result
    d = d.assign(is_idle=(d["known"] > 0) & (d["idle"] >= idle_share * d["known"]) & (d["mem"] <= floor))
    per_pod = d.groupby(["w", "p"]).agg(n=("is_idle", "size"), idle=("is_idle", "sum"))
    multi = per_pod[per_pod["n"] >= 2]
    if multi.empty:
        return result
    fewest = multi.groupby(level="w")["idle"].min()
    result[fewest.index.to_numpy()] = fewest.to_numpy()
    return result
