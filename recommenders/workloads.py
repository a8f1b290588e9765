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

Everything is computed on integer codes and numpy arrays (:mod:`recommenders.grouping`),
so a week of a thousand GPUs takes seconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recommenders.clock import WEEK_HOURS, hour_of_day, hour_of_week
from recommenders.grouping import column_codes, dense_ids, group_ids, group_max
from recommenders.quantiles import Sorted, group_order, group_sorted
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


def _col(rows: pd.DataFrame, name: str) -> np.ndarray:
    """A numeric column as it is held (float64, or float32 for readings: no copy)."""
    if name not in rows:  # a column a 1.0 ledger (or a hand-built frame) lacks
        return np.full(len(rows), np.nan, np.float32)
    column = rows[name].to_numpy()
    return column if column.dtype.kind == "f" else column.astype(np.float64)


def workload_stats(rows: pd.DataFrame, window_hours: float, settings: Settings | float | None = None) -> pd.DataFrame:
    """One row per workload with the figures of ``docs/recommendations.md`` ("Evidence").

    ``rows`` are ledger rows (any; unallocated ones are skipped). Columns: the KEY, pods,
    gpu_hours, cost, idle_cost, util_p50 (of minute means), util_p95/p99/max (of minute
    peaks), memory_p99/max_bytes, gpu_memory_bytes, memory_max_fraction, active_share,
    hourly_price (per GPU), price_source (the one that priced most of its cost),
    default_price_share, gpus_per_pod (median over pods of the most GPUs a pod held at
    once), replicas (median pods at once), replicas_mean, hours_observed, span_days,
    coverage, idle_share, idle_memory_max_bytes, util_known_share, exclusive (every pod
    held whole GPUs of its own), and the arrays the time-shaped strategies read: ``peaks``
    (sorted minute peaks), ``demand`` (sorted per-minute demand), ``demand_by_hour`` (the
    ``demand_percentile`` of demand per hour of the day in ``time_zone``), ``week_held``,
    ``week_active``, ``week_known``, ``week_cost`` (per hour of the week) and
    ``idle_pods``. ``attrs['idle_gpus']`` holds, per multi-GPU pod and device, the seconds
    :func:`idle_devices_per_pod` needs.

    The columns are used in place, full length (no masked copies of ten million rows):
    unallocated rows fall into groups of their own, dropped at the end.
    """
    if not isinstance(settings, Settings):  # older callers passed the idle memory floor in bytes
        settings = Settings() if settings is None else Settings(idle_memory_floor_gib=float(settings) / GIB)
    mask = allocated_mask(rows)
    if not mask.any():
        return pd.DataFrame(columns=[*KEY])
    wid, keys = group_ids(rows, KEY, extra={"_held": mask.astype(np.int64)})
    wid = wid.astype(np.int32 if len(keys) < (1 << 31) else np.int64)
    held_group = keys.pop("_held").to_numpy(dtype=np.int64) == 1
    # each section below is a function, so its full-length temporaries are freed when it returns
    out = keys
    _sums_and_percentiles(out, rows, wid, mask, settings)
    minute = rows["minute"].to_numpy(np.int64)
    m = ((minute - minute.min()) // 60).astype(np.int32)
    idle_gpus = _pods_and_replicas(out, rows, wid, mask, m, window_hours, held_group, settings)
    _demand(out, rows, wid, mask, m, int(minute.min()), settings)
    _week(out, rows, wid, mask, minute, settings)
    out = out[held_group].reset_index(drop=True)
    out.attrs["idle_gpus"] = idle_gpus
    out.attrs["idle_memory_floor"] = settings.idle_memory_floor_gib * GIB
    return out


def _known(rows: pd.DataFrame, mask: np.ndarray) -> np.ndarray:
    """Rows held by a pod whose utilisation was reported."""
    return (_col(rows, "util_unknown_gpu_seconds") <= 0) & mask


def _sums_and_percentiles(out: pd.DataFrame, rows: pd.DataFrame, wid: np.ndarray, mask: np.ndarray,
                          settings: Settings) -> None:
    """GPU-hours, cost, shares of time, utilisation and memory percentiles, prices, idle pods."""
    k = len(out)
    alloc, used, active, mem, cost = (_col(rows, c) for c in ("allocated_gpu_seconds", "used_gpu_seconds",
                                                              "active_gpu_seconds", "memory_used_max_bytes", "cost"))
    known = _known(rows, mask)
    idle_row = known & (active <= 0)

    def total(x: np.ndarray) -> np.ndarray:
        return np.bincount(wid, weights=x, minlength=k)

    out["gpu_hours"] = total(alloc) / 3600.0
    out["cost"] = total(cost)
    out["idle_cost"] = total(_col(rows, "idle_cost"))
    with np.errstate(invalid="ignore", divide="ignore"):
        out["hourly_price"] = out["cost"] / out["gpu_hours"]
        known_seconds = total(np.where(known, alloc, 0.0))
        out["util_known_share"] = known_seconds / (out["gpu_hours"] * 3600.0)
        out["active_share"] = total(np.where(known, active, 0.0)) / known_seconds
        out["idle_share"] = total(np.where(idle_row, alloc, 0.0)) / known_seconds
    out["idle_memory_max_bytes"] = group_max(wid, np.where(idle_row, mem, np.nan), k)
    out["gpu_memory_bytes"] = group_max(wid, _col(rows, "gpu_memory_total_bytes"), k)
    out["price_source"], out["default_price_share"] = _price_sources(rows, wid, k, cost, out["cost"].to_numpy())
    out["idle_pods"] = _objects(_idle_pods(rows, wid, k, mask, known, idle_row, alloc, cost, mem, settings))
    del idle_row
    by_workload = group_order(wid, k)  # one radix sort, shared by the three percentile columns
    qm = group_sorted(wid, mem, k, by_workload).quantiles((0.99, 1.0))
    out["memory_p99_bytes"], out["memory_max_bytes"] = qm[:, 0], qm[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["memory_max_fraction"] = out["memory_max_bytes"] / out["gpu_memory_bytes"]
        util = np.divide(used, alloc, out=np.full(len(alloc), np.nan), where=known & (alloc > 0))
    out["util_p50"] = group_sorted(wid, util, k, by_workload).quantiles((0.5,))[:, 0]
    peak = _col(rows, "util_peak").copy()
    missing = np.isnan(peak)
    peak[missing] = util[missing]  # a 1.0 ledger has no peaks: the minute's mean stands in
    del missing, util
    peak[~known] = np.nan
    del known
    peaks = group_sorted(wid, peak, k, by_workload)
    del peak, by_workload
    q = peaks.quantiles((0.95, 0.99, 1.0))
    out["util_p95"], out["util_p99"], out["util_max"] = q[:, 0], q[:, 1], q[:, 2]
    # the sorted peaks stay for the saturation counts; float32 halves them (a count at a
    # threshold moves by at most the rows within 1e-7 of it)
    out["peaks"] = _views(Sorted(peaks.values.astype(np.float32), peaks.starts, peaks.counts))


def _pods_and_replicas(out: pd.DataFrame, rows: pd.DataFrame, wid: np.ndarray, mask: np.ndarray, m: np.ndarray,
                       window_hours: float, held_group: np.ndarray, settings: Settings) -> "pd.DataFrame | None":
    """Pods, GPUs per pod, replicas and minutes seen, from (pod, minute) pairs; and, for
    multi-GPU pods, the per-device seconds :func:`idle_devices_per_pod` reads."""
    k = len(out)
    # pod code 0 is "no pod" (unallocated rows) and belongs to a dummy group k
    pod, _ = column_codes(rows["pod_uid"])
    pod = np.where(mask, pod, 0).astype(np.int64)
    n_min = int(m.max()) + 1
    n_pod = int(pod.max()) + 1
    pod_w = np.full(n_pod, k, np.int64)
    pod_w[pod[mask]] = wid[mask]
    pod_w[0] = k
    pm_ids, pm_keys = dense_ids(pod * n_min + m, n_pod * n_min)
    gpus_at_once = np.bincount(pm_ids)
    del pm_ids
    pm_pod, pm_min = np.divmod(pm_keys, n_min)
    seen_pods = np.unique(pm_pod[pm_pod > 0])
    out["pods"] = np.bincount(pod_w[seen_pods], minlength=k + 1)[:k]
    per_pod_max = group_max(pm_pod, gpus_at_once.astype(np.float64), n_pod)[seen_pods]
    out["gpus_per_pod"] = group_sorted(pod_w[seen_pods], per_pod_max, k + 1).quantiles((0.5,))[:k, 0]
    wm_ids, wm_keys = dense_ids(pod_w[pm_pod] * n_min + pm_min, (k + 1) * n_min)
    del pm_pod, pm_min, pm_keys
    pods_at_once = np.bincount(wm_ids).astype(np.float64)
    wm_w = wm_keys // n_min
    out["replicas"] = group_sorted(wm_w, pods_at_once, k + 1).quantiles((0.5,))[:k, 0]
    minutes_seen = np.bincount(wm_w, minlength=k + 1)[:k]
    out["replicas_mean"] = np.bincount(wm_w, weights=pods_at_once, minlength=k + 1)[:k] / np.maximum(minutes_seen, 1)
    out["hours_observed"] = minutes_seen / 60.0
    out["coverage"] = np.minimum(out["hours_observed"] / window_hours, 1.0) if window_hours > 0 else 0.0
    first = np.full(k + 1, np.inf)
    np.fmin.at(first, wm_w, (wm_keys % n_min).astype(np.float64))
    last = group_max(wm_w, (wm_keys % n_min).astype(np.float64), k + 1)
    out["span_days"] = np.where(np.isfinite(first[:k]), (last[:k] + 1 - first[:k]) * 60 / 86400.0, 0.0)
    del wm_ids, wm_keys, wm_w

    # GPUs a multi-GPU pod never used: idle for idle_share of its time and holding no memory
    multi = per_pod_max >= 2
    if not multi.any():
        return None
    dev, _ = column_codes(rows["device_uuid"])
    known = _known(rows, mask)
    alloc = _col(rows, "allocated_gpu_seconds")
    idle_row = known & (_col(rows, "active_gpu_seconds") <= 0)
    multi_pods = np.zeros(n_pod, bool)
    multi_pods[seen_pods[multi]] = True
    sel = multi_pods[pod]
    n_dev = int(dev.max()) + 1
    pd_ids, pd_keys = dense_ids(pod[sel] * n_dev + dev[sel], n_pod * n_dev)
    n = len(pd_keys)
    known_s = np.bincount(pd_ids, weights=np.where(known, alloc, 0.0)[sel], minlength=n)
    idle_s = np.bincount(pd_ids, weights=np.where(idle_row, alloc, 0.0)[sel], minlength=n)
    mem_max = group_max(pd_ids, _col(rows, "memory_used_max_bytes")[sel], n)
    new_index = np.cumsum(held_group) - 1
    return pd.DataFrame({
        "w": new_index[pod_w[pd_keys // n_dev]], "p": pd_keys // n_dev, "known": known_s, "idle": idle_s,
        "mem": np.nan_to_num(mem_max, nan=0.0)})


def _demand(out: pd.DataFrame, rows: pd.DataFrame, wid: np.ndarray, mask: np.ndarray, m: np.ndarray,
            first_minute: int, settings: Settings) -> None:
    """Busy GPU-equivalents per (workload, minute), and whether its pods held GPUs alone.

    A workload is "exclusive" when its pods held their GPUs alone (no other pod's row on
    the device in that minute) for 99% of its GPU-time; then each row is one whole GPU,
    busy at its peak. A row of unknown utilisation counts as fully busy: the safe side for
    taking replicas away.
    """
    k = len(out)
    n_min = int(m.max()) + 1
    alloc = _col(rows, "allocated_gpu_seconds")
    dev, _ = column_codes(rows["device_uuid"])
    dm_ids, _ = dense_ids(dev.astype(np.int64) * n_min + m, (int(dev.max()) + 1) * n_min)
    del dev
    alone = mask & (np.bincount(dm_ids, weights=mask)[dm_ids] == 1)
    del dm_ids
    held = np.where(mask, alloc, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["exclusive"] = (np.bincount(wid, weights=np.where(alone, alloc, 0.0), minlength=k)
                            >= 0.99 * np.bincount(wid, weights=held, minlength=k))
    del alone, held
    known = _known(rows, mask)
    peak = _col(rows, "util_peak")
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = _col(rows, "used_gpu_seconds") / alloc
    busy = np.where(mask, np.where(known, np.where(np.isnan(peak), mean, peak), 1.0), 0.0)
    del known, peak, mean
    demand_ids, demand_keys = dense_ids(wid.astype(np.int64) * n_min + m, k * n_min)
    demand = np.bincount(demand_ids, weights=busy)
    del busy, demand_ids
    demand_w = demand_keys // n_min
    out["demand"] = _views(group_sorted(demand_w, demand, k))
    out["demand_mean"] = np.bincount(demand_w, weights=demand, minlength=k) / np.maximum(
        np.bincount(demand_w, minlength=k), 1)
    hod = hour_of_day(first_minute + (demand_keys % n_min) * 60, settings.time_zone)
    by_hour = group_sorted(demand_w * 24 + hod, demand, k * 24).quantiles((settings.demand_percentile,))[:, 0]
    out["demand_by_hour"] = _objects(list(by_hour.reshape(k, 24)))
    _throughput(out, rows, wid, mask, m, n_min, settings)


def _throughput(out: pd.DataFrame, rows: pd.DataFrame, wid: np.ndarray, mask: np.ndarray, m: np.ndarray,
                n_min: int, settings: Settings) -> None:
    """Requests per second per (workload, minute), and what one replica sustained.

    ``rps`` (sorted) is the workload's requests per second in each minute its servers
    counted; ``rps_capacity`` the most requests per second one pod served in a minute
    whose peak utilisation stayed at or under ``target_utilization`` (NaN without one);
    ``serving_share`` the share of the workload's minutes with counts. ``replicas`` sizes
    on these too when serving data exists (docs/unit-economics.md).
    """
    k = len(out)
    requests = _col(rows, "requests")
    counted = mask & ~np.isnan(requests)
    if not counted.any():
        out["rps"] = _objects([np.empty(0)] * k)
        out["rps_capacity"] = np.nan
        out["serving_share"] = 0.0
        return
    ids, keys = dense_ids(wid[counted].astype(np.int64) * n_min + m[counted], k * n_min)
    per_minute = np.bincount(ids, weights=requests[counted]) / 60.0
    w = keys // n_min
    out["rps"] = _views(group_sorted(w, per_minute, k))
    seen = np.bincount(dense_ids(wid[mask].astype(np.int64) * n_min + m[mask], k * n_min)[1] // n_min, minlength=k)
    out["serving_share"] = np.bincount(w, minlength=k) / np.maximum(seen, 1)
    # a pod's minute: its requests (on its first GPU's row) and its highest peak over its GPUs
    pod, _ = column_codes(rows["pod_uid"])
    n_pod = int(pod.max()) + 1
    pm_ids, pm_keys = dense_ids(pod[mask].astype(np.int64) * n_min + m[mask], n_pod * n_min)
    pm_requests = np.bincount(pm_ids, weights=np.nan_to_num(requests[mask]))
    util = np.where(np.isnan(peak := _col(rows, "util_peak")), _col(rows, "used_gpu_seconds")
                    / np.maximum(_col(rows, "allocated_gpu_seconds"), 1e-12), peak)[mask]
    pm_peak = group_max(pm_ids, np.where(_known(rows, mask)[mask], util, np.nan), len(pm_keys))
    pm_w = np.zeros(len(pm_keys), np.int64)
    pm_w[pm_ids] = wid[mask]
    within = pm_peak <= settings.target_utilization  # NaN (unknown utilisation) is not within
    out["rps_capacity"] = group_max(pm_w[within], pm_requests[within] / 60.0, k)


def _week(out: pd.DataFrame, rows: pd.DataFrame, wid: np.ndarray, mask: np.ndarray, minute: np.ndarray,
          settings: Settings) -> None:
    """GPU-seconds held, of known utilisation, active, and their cost, per hour of the week."""
    k = len(out)
    bins = wid.astype(np.int64) * WEEK_HOURS + hour_of_week(minute, settings.time_zone)
    known = _known(rows, mask)
    alloc = _col(rows, "allocated_gpu_seconds")
    for name, values in (("week_held", lambda: alloc),
                         ("week_active", lambda: np.where(known, _col(rows, "active_gpu_seconds"), 0.0)),
                         ("week_known", lambda: np.where(known, alloc, 0.0)), ("week_cost", lambda: _col(rows, "cost"))):
        sums = np.bincount(bins, weights=values(), minlength=k * WEEK_HOURS).reshape(k, WEEK_HOURS)
        out[name] = _objects(list(sums))


def _views(s) -> pd.Series:
    """Each group's sorted values (views into one array)."""
    return _objects([s.of(g) for g in range(len(s.counts))])


def _objects(values: list) -> pd.Series:
    """A column holding one Python object (an array, a list) per workload."""
    holder = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):  # one by one: numpy would stack equal-length arrays into 2-D
        holder[i] = v
    return pd.Series(holder, dtype=object)


def _price_sources(rows: pd.DataFrame, wid: np.ndarray, k: int, cost: np.ndarray,
                   totals: np.ndarray) -> tuple[list, np.ndarray]:
    """Per workload: the price source that priced most of its cost, and the share priced at the default."""
    if "price_source" not in rows:
        return [None] * k, np.zeros(k)
    code, names = column_codes(rows["price_source"])
    n = len(names)
    by_source = np.bincount(wid * n + code, weights=cost, minlength=k * n).reshape(k, n)
    main = [names[i] for i in np.argmax(by_source, axis=1)]
    default = [i for i, name in enumerate(names) if name == DEFAULT_PRICE]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = by_source[:, default[0]] / totals if default else np.zeros(k)
    return main, np.nan_to_num(share)


def _idle_pods(rows, wid, k, mask, known, idle_row, alloc, cost, mem, settings: Settings) -> list[list[dict]]:
    """Per workload: its pods that were idle (``idle_share`` of their known time), largest cost first.

    A pod counts only when it held at least ``min_hours`` GPU-hours and its utilisation was
    known for ``min_util_known_share`` of its GPU-time. Workloads of one pod get an empty list (the workload-level ``idle`` covers them).
    """
    names = rows["pod"] if "pod" in rows else rows["pod_uid"]
    code, values = column_codes(names)
    code = np.where(mask, code, 0).astype(np.int64)
    n = len(values)
    ids, pkeys = dense_ids(wid * n + code, k * n)
    sums = {name: np.bincount(ids, weights=x) for name, x in (
        ("alloc", alloc * mask), ("known", np.where(known, alloc, 0.0)), ("idle", np.where(idle_row, alloc, 0.0)),
        ("cost", cost * mask))}
    mem_max = group_max(ids, np.where(mask, mem, np.nan), len(pkeys))
    w, p = np.divmod(pkeys, n)
    pods_per_w = np.bincount(w[p > 0], minlength=k)
    out: list[list[dict]] = [[] for _ in range(k)]
    with np.errstate(invalid="ignore", divide="ignore"):
        idle = ((p > 0) & (pods_per_w[w] >= 2) & (sums["alloc"] >= settings.min_hours * 3600)
                & (sums["known"] >= settings.min_util_known_share * sums["alloc"])
                & (sums["known"] > 0) & (sums["idle"] >= settings.idle_share * sums["known"]))
    for i in np.flatnonzero(idle):
        out[int(w[i])].append({"pod": str(values[p[i]]), "gpu_hours": float(sums["alloc"][i] / 3600),
                               "cost": float(sums["cost"][i]), "idle_share": float(sums["idle"][i] / sums["known"][i]),
                               "memory_max_bytes": None if np.isnan(mem_max[i]) else float(mem_max[i])})
    for pods in out:
        pods.sort(key=lambda d: (-d["cost"], d["pod"]))
    return out


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
