"""What each workload held and used over a window: the evidence every recommendation cites.

A workload is (team, class, namespace, owner kind, owner name) on one GPU model (and MIG
profile, for slices), as ``docs/classification.md`` defines it. Utilisation is per
GPU-minute row: used seconds over allocated seconds (rows of unknown utilisation, MIG
slices, are left out of it); memory is the row's peak. Percentiles are over the rows, so
each GPU-minute counts once. Everything is computed on integer codes and numpy arrays
(:mod:`recommenders.grouping`), so a week of a thousand GPUs takes seconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recommenders.grouping import column_codes, dense_ids, group_ids, group_max
from recommenders.quantiles import group_quantiles

KEY = ("team", "workload_class", "namespace", "workload_kind", "workload_name", "gpu_model", "mig_profile")


def allocated_mask(rows: pd.DataFrame) -> np.ndarray:
    """Rows held by a pod (unallocated capacity has no workload)."""
    return (rows["pod_uid"].notna() & (rows["allocated_gpu_seconds"] > 0)).to_numpy()


def allocated_rows(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[allocated_mask(rows)]


def workload_ids(rows: pd.DataFrame, mask: np.ndarray | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """A dense workload id per (masked) row, and the key columns of each id."""
    return group_ids(rows, KEY, mask)


def workload_stats(rows: pd.DataFrame, window_hours: float, idle_memory_floor: float) -> pd.DataFrame:
    """One row per workload with the figures of ``docs/recommendations.md`` ("Evidence").

    ``rows`` are ledger rows (any; unallocated ones are skipped). Columns: the KEY, pods,
    gpu_hours, cost, idle_cost, util_p50/p95/max (fraction), memory_p99/max_bytes,
    gpu_memory_bytes, memory_max_fraction, active_share, hourly_price (per GPU),
    gpus_per_pod (median over pods of the most GPUs a pod held at once), replicas (median
    pods at once), hours_observed, coverage, idle_share, idle_memory_max_bytes,
    util_known_share; ``attrs['idle_gpus']`` holds, per multi-GPU pod and device, the
    seconds :func:`idle_devices_per_pod` needs.

    The columns are used in place, full length (no masked copies of ten million rows):
    unallocated rows fall into groups of their own, dropped at the end.
    """
    mask = allocated_mask(rows)
    if not mask.any():
        return pd.DataFrame(columns=[*KEY])
    wid, keys = group_ids(rows, KEY, extra={"_held": mask.astype(np.int64)})
    k = len(keys)
    held_group = keys.pop("_held").to_numpy(dtype=np.int64) == 1

    def col(name: str) -> np.ndarray:
        return rows[name].to_numpy(np.float64)

    alloc, used, unknown, active, mem = (col(c) for c in ("allocated_gpu_seconds", "used_gpu_seconds",
                                                          "util_unknown_gpu_seconds", "active_gpu_seconds",
                                                          "memory_used_max_bytes"))
    known = (unknown <= 0) & mask
    idle_row = known & (active <= 0)

    def total(x: np.ndarray) -> np.ndarray:
        return np.bincount(wid, weights=x, minlength=k)

    out = keys
    out["gpu_hours"] = total(alloc) / 3600.0
    out["cost"] = total(col("cost"))
    out["idle_cost"] = total(col("idle_cost"))
    with np.errstate(invalid="ignore", divide="ignore"):
        out["hourly_price"] = out["cost"] / out["gpu_hours"]
        known_seconds = total(np.where(known, alloc, 0.0))
        out["util_known_share"] = known_seconds / (out["gpu_hours"] * 3600.0)
        out["active_share"] = total(np.where(known, active, 0.0)) / known_seconds
        out["idle_share"] = total(np.where(idle_row, alloc, 0.0)) / known_seconds
        util = np.divide(used, alloc, out=np.full(len(alloc), np.nan), where=known & (alloc > 0))
    q = group_quantiles(wid, util, (0.5, 0.95, 1.0), k)
    del util
    out["util_p50"], out["util_p95"], out["util_max"] = q[:, 0], q[:, 1], q[:, 2]
    qm = group_quantiles(wid, mem, (0.99, 1.0), k)
    out["memory_p99_bytes"], out["memory_max_bytes"] = qm[:, 0], qm[:, 1]
    out["idle_memory_max_bytes"] = group_max(wid, np.where(idle_row, mem, np.nan), k)
    out["gpu_memory_bytes"] = group_max(wid, col("gpu_memory_total_bytes"), k)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["memory_max_fraction"] = out["memory_max_bytes"] / out["gpu_memory_bytes"]

    # pods, GPUs per pod, replicas (pods at once) and minutes seen, from (pod, minute) pairs;
    # pod code 0 is "no pod" (unallocated rows) and belongs to a dummy group k
    pod, _ = column_codes(rows["pod_uid"])
    dev, _ = column_codes(rows["device_uuid"])
    pod = np.where(mask, pod, 0).astype(np.int64)
    minute = rows["minute"].to_numpy(np.int64)
    m = (minute - minute.min()) // 60
    n_min = int(m.max()) + 1
    n_pod = int(pod.max()) + 1
    pod_w = np.full(n_pod, k, np.int64)
    pod_w[pod[mask]] = wid[mask]
    pod_w[0] = k
    pm_ids, pm_keys = dense_ids(pod * n_min + m, n_pod * n_min)
    del m
    gpus_at_once = np.bincount(pm_ids)
    del pm_ids
    pm_pod, pm_min = np.divmod(pm_keys, n_min)
    seen_pods = np.unique(pm_pod[pm_pod > 0])
    out["pods"] = np.bincount(pod_w[seen_pods], minlength=k + 1)[:k]
    per_pod_max = group_max(pm_pod, gpus_at_once.astype(np.float64), n_pod)[seen_pods]
    out["gpus_per_pod"] = group_quantiles(pod_w[seen_pods], per_pod_max, (0.5,), k + 1)[:k, 0]
    wm_ids, wm_keys = dense_ids(pod_w[pm_pod] * n_min + pm_min, (k + 1) * n_min)
    pods_at_once = np.bincount(wm_ids).astype(np.float64)
    wm_w = wm_keys // n_min
    out["replicas"] = group_quantiles(wm_w, pods_at_once, (0.5,), k + 1)[:k, 0]
    out["hours_observed"] = np.bincount(wm_w, minlength=k + 1)[:k] / 60.0
    out["coverage"] = np.minimum(out["hours_observed"] / window_hours, 1.0) if window_hours > 0 else 0.0

    # GPUs a multi-GPU pod never used: idle for idle_share of its time and holding no memory
    new_index = np.cumsum(held_group) - 1
    idle_gpus = None
    multi = per_pod_max >= 2
    if multi.any():
        multi_pods = np.zeros(n_pod, bool)
        multi_pods[seen_pods[multi]] = True
        sel = multi_pods[pod]
        n_dev = int(dev.max()) + 1
        pd_ids, pd_keys = dense_ids(pod[sel] * n_dev + dev[sel], n_pod * n_dev)
        n = len(pd_keys)
        known_s = np.bincount(pd_ids, weights=np.where(known, alloc, 0.0)[sel], minlength=n)
        idle_s = np.bincount(pd_ids, weights=np.where(idle_row, alloc, 0.0)[sel], minlength=n)
        mem_max = group_max(pd_ids, mem[sel], n)
        idle_gpus = pd.DataFrame({
            "w": new_index[pod_w[pd_keys // n_dev]], "p": pd_keys // n_dev, "known": known_s, "idle": idle_s,
            "mem": np.nan_to_num(mem_max, nan=0.0)})
    out = out[held_group].reset_index(drop=True)
    out.attrs["idle_gpus"] = idle_gpus
    out.attrs["idle_memory_floor"] = idle_memory_floor
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
