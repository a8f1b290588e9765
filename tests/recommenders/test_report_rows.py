"""Helpers (no tests here): build small ledgers row by row, with figures a test can work out by hand.

Each row is one GPU-minute of one pod on one device, following docs/ledger.md: a full
minute allocated (60 s), used = 60 × util, active = 60 when util > 0, cost = 60 × price
/ 3600, idle cost = cost × (1 − util).
"""

from __future__ import annotations

from typing import Iterable

import pandas as pd

from recommenders.history import ensure_categorical

GIB = float(1 << 30)
T0 = 1_764_028_800  # 2025-11-25T00:00:00Z, a midnight


def gpu_minutes(
    *, pod: str, minutes: Iterable[int], util: float | list[float] = 0.5, mem_gib: float | None = 10.0,
    model: str = "NVIDIA A100-SXM4-40GB", mem_total_gib: float = 40.0, price: float = 2.7447,
    device: str | None = None, namespace: str = "ns", kind: str = "Deployment", name: str = "app",
    team: str = "team-a", workload_class: str = "inference", node: str = "node-1",
    instance_type: str | None = "p4d.24xlarge", region: str | None = "us-east-1",
    capacity_type: str | None = "on-demand", mig_profile: str | None = None, parent: str | None = None,
    allocated: bool = True, peak: float | list[float] | None = None, price_source: str = "rate-card",
    unknown: list[bool] | None = None,
) -> list[dict]:
    """``peak``: each minute's highest sample (``util_peak``; left out when None, as in a 1.0
    ledger); ``unknown``: minutes whose utilisation was not reported (non-MIG)."""
    rows = []
    minutes = list(minutes)
    utils = util if isinstance(util, list) else [util] * len(minutes)
    peaks = peak if isinstance(peak, list) else [peak] * len(minutes)
    unknowns = unknown or [False] * len(minutes)
    for m, u, top, unk in zip(minutes, utils, peaks, unknowns):
        cost = 60 * price / 3600
        rows.append({
            "minute": T0 + 60 * m, "node": node, "device_uuid": device or f"GPU-{pod}", "parent_uuid": parent,
            "mig_profile": mig_profile, "gpu_model": model, "gpu_memory_total_bytes": mem_total_gib * GIB,
            "pod_uid": f"uid-{pod}" if allocated else None, "namespace": namespace if allocated else None,
            "pod": pod if allocated else None,
            "team": team if allocated else None, "workload_class": workload_class if allocated else None,
            "workload_kind": kind if allocated else None, "workload_name": name if allocated else None,
            "instance_type": instance_type, "region": region, "zone": None, "capacity_type": capacity_type,
            "price_source": price_source, "gpu_hourly_price": price,
            "allocated_gpu_seconds": 60.0 if allocated else 0.0, "unallocated_gpu_seconds": 0.0 if allocated else 60.0,
            "used_gpu_seconds": 60.0 * u if allocated and mig_profile is None else 0.0,
            "util_unknown_gpu_seconds": 60.0 if allocated and mig_profile is not None else 0.0,
            "active_gpu_seconds": 60.0 if allocated and u > 0 and mig_profile is None else 0.0,
            "memory_used_max_bytes": None if mem_gib is None else mem_gib * GIB,
            "cost": cost if allocated else 0.0,
            "idle_cost": cost * (1 - u) if allocated and mig_profile is None else 0.0,
            "unallocated_cost": 0.0 if allocated else cost, "samples": 1,
        })
        if unk and allocated and mig_profile is None:
            rows[-1].update(used_gpu_seconds=0.0, util_unknown_gpu_seconds=60.0, active_gpu_seconds=0.0,
                            idle_cost=0.0)
        if top is not None:
            rows[-1]["util_peak"] = top if allocated and mig_profile is None and not unk else None
    return rows


def frame(*groups: list[dict]) -> pd.DataFrame:
    rows = [r for g in groups for r in g]
    df = pd.DataFrame(rows)
    for col in ("gpu_memory_total_bytes", "memory_used_max_bytes", "util_peak"):
        if col in df:
            df[col] = df[col].astype(float)
    return ensure_categorical(df.sort_values("minute", kind="stable").reset_index(drop=True))
