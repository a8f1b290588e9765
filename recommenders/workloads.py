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

from typing import Protocol

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
    from recommenders.sqlframe import FrameLedger

    with FrameLedger(rows) as ledger:
        return workload_evidence(ledger, window_hours, settings)


class Queries(Protocol):
    """Where the evidence's queries run: the view ``ledger`` of the window, a query's (small)
    result, and a query's result kept as a table for the next queries (until forgotten)."""

    def sql(self, text: str) -> pd.DataFrame: ...

    def materialize(self, name: str, text: str) -> None: ...

    def forget(self, name: str) -> None: ...


#: the tables :func:`workload_evidence` keeps, in the order it makes them (each reads the ones before)
EVIDENCE_TABLES = ("held_keys", "workloads", "pods", "devices", "held_ids", "held", "pod_minutes", "workload_minutes")


def forget_evidence(ledger: Queries) -> None:
    """Drop the tables :func:`workload_evidence` kept: they are the size of the window's rows,
    and the engine's memory is better spent on what comes next."""
    for name in reversed(EVIDENCE_TABLES):
        ledger.forget(name)


def workload_evidence(ledger: Queries, window_hours: float, settings: Settings | float | None = None) -> pd.DataFrame:
    """One row per workload with the figures of ``docs/recommendations.md`` ("Evidence").

    Every figure is a query over the view ``ledger`` (the window's rows,
    :mod:`recommenders.queries`), so the rows never need to fit in memory; only results
    of a few rows per workload come back. Columns: the KEY, pods, gpu_hours, cost,
    idle_cost, util_p50 (of minute means), util_p95/p99/max (of minute peaks),
    memory_p99/max_bytes, gpu_memory_bytes, memory_max_fraction, active_share,
    hourly_price (per GPU), price_source (the one that priced most of its cost),
    default_price_share, gpus_per_pod (median over pods of the most GPUs a pod held at
    once), replicas (median pods at once), replicas_mean, hours_observed, span_days,
    coverage, idle_share, idle_memory_max_bytes, util_known_share, exclusive (every pod
    held whole GPUs of its own), and what the time-shaped strategies read: ``peaks`` (the
    known minute peaks, a :class:`~recommenders.quantiles.Counted`), ``demand`` (per-minute
    demand, Counted) and ``demand_mean``, ``demand_by_hour`` (the ``demand_percentile`` of
    demand per hour of the day in ``time_zone``), ``rps_minutes`` and ``rps_level`` (the
    minutes whose requests were counted, and the ``demand_percentile`` of requests per
    second over them), ``rps_capacity``, ``serving_share``, ``week_held``,
    ``week_active``, ``week_known``, ``week_cost`` (per hour of the week) and
    ``idle_pods``. ``attrs['idle_gpus']`` holds, per multi-GPU pod and device, the seconds
    :func:`idle_devices_per_pod` needs.
    """
    from recommenders import queries
    from recommenders.clock import offset_spans

    if not isinstance(settings, Settings):  # older callers passed the idle memory floor in bytes
        settings = Settings() if settings is None else Settings(idle_memory_floor_gib=float(settings) / GIB)
    ledger.materialize("held_keys", queries.held_keys_table())
    ledger.materialize("workloads", queries.workload_table())
    workloads = ledger.sql("SELECT * FROM workloads")
    if workloads.empty:
        return pd.DataFrame(columns=[*KEY])
    for name, text in (("pods", queries.pod_table()), ("devices", queries.device_table()),
                       ("held_ids", queries.held_ids_table())):
        ledger.materialize(name, text)
    relabelled = int(ledger.sql(queries.pods_in_two_workloads())["n"].iloc[0])
    ledger.materialize("held", queries.held_table(by_pod_device=relabelled == 0))
    ledger.materialize("pod_minutes", queries.pod_minutes_table())
    ledger.materialize("workload_minutes", queries.workload_minutes_table())
    workloads = workloads.sort_values("w").reset_index(drop=True)
    k = len(workloads)
    keys = _keys(workloads)
    out = pd.DataFrame({c: [key[j] for key in keys] for j, c in enumerate(KEY)}, dtype=object)

    def by_w(text: str, names: list[str]) -> dict[str, np.ndarray]:
        return _by_w(ledger.sql(text), k, names)

    num = by_w(queries.workload_sums(), [
        "held_seconds", "cost", "idle_cost", "known_seconds", "active_seconds", "idle_seconds", "idle_memory_max_bytes",
        "gpu_memory_bytes", "default_cost", "pods", "memory_max_bytes"])
    num["memory_p99_bytes"] = by_w(queries.workload_memory_p99(), ["memory_p99_bytes"])["memory_p99_bytes"]
    num["util_p50"] = by_w(queries.workload_util_p50(), ["util_p50"])["util_p50"]
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
    for c in ("idle_memory_max_bytes", "gpu_memory_bytes", "memory_p99_bytes", "memory_max_bytes", "util_p50"):
        out[c] = num[c]
    out["pods"] = num["pods"].astype(np.int64)
    out["price_source"] = _main_price_source(ledger.sql(queries.workload_price_sources()), k)
    out["idle_pods"] = _objects(_idle_pods(ledger.sql(queries.workload_pods()), k, settings))
    peaks = _counted(ledger.sql(queries.workload_peaks()), k)
    out["peaks"] = _objects(peaks)
    for name, q in (("util_p95", 0.95), ("util_p99", 0.99), ("util_max", 1.0)):
        out[name] = [p.quantile(q) for p in peaks]

    out["gpus_per_pod"] = by_w(queries.workload_gpus_per_pod(), ["gpus_per_pod"])["gpus_per_pod"]
    seen = by_w(queries.workload_presence(), ["pod_minutes", "minutes", "first_minute", "last_minute"])
    minutes = np.nan_to_num(seen["minutes"])
    out["replicas"] = by_w(queries.workload_replicas(), ["replicas"])["replicas"]
    out["replicas_mean"] = np.nan_to_num(seen["pod_minutes"]) / np.maximum(minutes, 1)
    out["hours_observed"] = minutes / 60.0
    out["coverage"] = np.minimum(out["hours_observed"] / window_hours, 1.0) if window_hours > 0 else 0.0
    out["span_days"] = np.where(np.isfinite(seen["first_minute"]),
                                (seen["last_minute"] - seen["first_minute"] + 60.0) / 86400.0, 0.0)
    shared = by_w(queries.workload_shared_seconds(), ["shared_seconds"])["shared_seconds"]
    out["exclusive"] = num["held_seconds"] - np.nan_to_num(shared) >= 0.99 * num["held_seconds"]

    span = ledger.sql(queries.held_minutes()).iloc[0]
    spans = offset_spans(settings.time_zone, float(span["first_minute"]), float(span["last_minute"]) + 60.0)
    demand = _counted(ledger.sql(queries.workload_demand()), k)
    out["demand"] = _objects(demand)
    out["demand_mean"] = [d.mean() if len(d) else 0.0 for d in demand]
    by_hour = ledger.sql(queries.workload_demand_by_hour(settings.demand_percentile, spans))
    table = np.full((k, 24), np.nan)
    table[by_hour["w"].to_numpy(np.int64), by_hour["hour"].to_numpy(np.int64)] = by_hour["demand"].to_numpy(np.float64)
    out["demand_by_hour"] = _objects(list(table))
    if int(span["counted"]) > 0:
        rps = by_w(queries.workload_requests(settings.demand_percentile), ["n", "rps_level"])
        out["rps_minutes"] = np.nan_to_num(rps["n"]).astype(np.int64)
        out["rps_level"] = rps["rps_level"]
        out["serving_share"] = out["rps_minutes"] / np.maximum(minutes, 1)
        out["rps_capacity"] = by_w(queries.workload_replica_capacity(settings.target_utilization),
                                   ["rps_capacity"])["rps_capacity"]
    else:
        out["rps_minutes"] = 0
        out["rps_level"] = np.nan
        out["rps_capacity"] = np.nan
        out["serving_share"] = 0.0
    week = ledger.sql(queries.workload_week(spans))
    at = (week["w"].to_numpy(np.int64), week["hour"].to_numpy(np.int64))
    for name in ("held", "active", "known", "cost"):
        table = np.zeros((k, WEEK_HOURS))
        table[at] = week[name].to_numpy(np.float64)
        out[f"week_{name}"] = _objects(list(table))
    out.attrs["idle_gpus"] = _idle_gpus(ledger.sql(queries.multi_gpu_pod_devices()))
    out.attrs["idle_memory_floor"] = settings.idle_memory_floor_gib * GIB
    return out


def _keys(frame: pd.DataFrame) -> list[tuple]:
    """Each result row's workload key, None for a missing part."""
    columns = [frame[c].astype(object).tolist() for c in KEY]
    return [tuple(None if pd.isna(v) else str(v) for v in parts) for parts in zip(*columns)]


def _by_w(frame: pd.DataFrame, k: int, names: list[str]) -> dict[str, np.ndarray]:
    """Per-workload columns of a query's result by ``w`` (NaN where it has no row)."""
    out = {name: np.full(k, np.nan) for name in names}
    at = frame["w"].to_numpy(np.int64)
    for name in names:
        out[name][at] = frame[name].to_numpy(np.float64, na_value=np.nan)
    return out


def _counted(frame: pd.DataFrame, k: int) -> list[Counted]:
    """Per workload, the (value, n) pairs of a query by ``w`` as a :class:`Counted` (empty where none)."""
    frame = frame[frame["value"].notna()]  # a NULL (unknown) value is not a minute of the distribution
    w = frame["w"].to_numpy(np.int64)
    order = np.argsort(w, kind="stable")
    w = w[order]
    values = frame["value"].to_numpy(np.float64)[order]
    counts = frame["n"].to_numpy(np.int64)[order]
    bounds = np.searchsorted(w, np.arange(k + 1))
    return [Counted.of(values[bounds[i]:bounds[i + 1]], counts[bounds[i]:bounds[i + 1]]) for i in range(k)]


def _main_price_source(frame: pd.DataFrame, k: int) -> list:
    """Per workload, the price source that priced most of its cost (ties: the first by name)."""
    best: list[tuple] = [(-np.inf, "")] * k
    out: list = [None] * k
    for i, source, cost in zip(frame["w"].to_numpy(np.int64), frame["price_source"].astype(object), frame["cost"]):
        name = None if pd.isna(source) else str(source)
        rank = (float(cost), "" if name is None else name)
        if rank[0] > best[i][0] or (rank[0] == best[i][0] and rank[1] < best[i][1]):
            best[i], out[i] = rank, name
    return out


def _idle_pods(frame: pd.DataFrame, k: int, settings: Settings) -> list[list[dict]]:
    """Per workload: its pods that were idle (``idle_share`` of their known time), largest cost first.

    A pod counts only when it held at least ``min_hours`` GPU-hours and its utilisation was
    known for ``min_util_known_share`` of its GPU-time. Workloads of one pod get an empty
    list (the workload-level ``idle`` covers them).
    """
    out: list[list[dict]] = [[] for _ in range(k)]
    w = frame["w"].to_numpy(np.int64)
    pods_per_workload = np.bincount(w, minlength=k)
    held, known, idle, cost = (frame[c].to_numpy(np.float64) for c in ("held_seconds", "known_seconds",
                                                                        "idle_seconds", "cost"))
    memory = frame["memory_max_bytes"].to_numpy(np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        chosen = ((pods_per_workload[w] >= 2) & (held >= settings.min_hours * 3600) & (known > 0)
                  & (known >= settings.min_util_known_share * held) & (idle >= settings.idle_share * known))
    names = frame["pod"].astype(object).to_numpy()
    for i in np.flatnonzero(chosen):
        out[int(w[i])].append({"pod": str(names[i]), "gpu_hours": float(held[i] / 3600), "cost": float(cost[i]),
                               "idle_share": float(idle[i] / known[i]),
                               "memory_max_bytes": None if np.isnan(memory[i]) else float(memory[i])})
    for pods in out:
        pods.sort(key=lambda d: (-d["cost"], d["pod"]))
    return out


def _idle_gpus(frame: pd.DataFrame) -> "pd.DataFrame | None":
    """Per device of each multi-GPU pod: its workload's row (``w``), the pod (``p``), GPU-seconds
    known and idle, and memory peak (0 where never reported)."""
    if frame.empty:
        return None
    return pd.DataFrame({
        "w": frame["w"].to_numpy(np.int64), "p": frame["p"].to_numpy(np.int64),
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
