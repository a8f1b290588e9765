"""Right-sizing, commitment and report settings, declared once with their descriptions.

Each setting is a dataclass field whose metadata holds its help text, its unit and its
bounds; ``gpuledger report`` builds its flags from these declarations, checks values
against the bounds (:func:`check`), and ``docs/recommendations.md`` carries the table
:func:`settings_markdown` prints, so a threshold cannot be documented in one place and
read in another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any


def _setting(default: Any, help: str, unit: str = "", lo: float | None = 0.0, hi: float | None = None) -> Any:
    return field(default=default, metadata={"help": help, "unit": unit, "min": lo, "max": hi})


@dataclass(frozen=True)
class Settings:
    """Every threshold the recommenders use. Frozen: one run, one set of numbers."""

    headroom: float = _setting(
        0.20, "memory headroom: a target GPU (or MIG profile) must hold the observed peak memory "
        "× (1 + headroom)", "fraction", 0.0, 10.0)
    target_utilization: float = _setting(
        0.80, "the observed p95 of each GPU-minute's peak compute, scaled by the relative throughput of "
        "the two GPUs, must stay under this on the target; replicas are sized to run at most this busy",
        "fraction", 0.01, 1.0)
    saturation_share: float = _setting(
        0.01, "a downsize or MIG slice is high risk when the observed peaks would saturate the target (above "
        "100% of it) in more than this share of the GPU-minutes", "fraction", 0.0, 1.0)
    demand_percentile: float = _setting(
        0.95, "`replicas`: the percentile of per-minute demand the fewer replicas must cover (and, per hour of "
        "day, the autoscaling bounds)", "fraction", 0.5, 1.0)
    idle_share: float = _setting(
        0.95, "a GPU (or a pod) counts as idle when it showed no compute activity for at least this share of "
        "the time it was held (of the time its utilisation was known)", "fraction", 0.5, 1.0)
    idle_memory_floor_gib: float = _setting(
        1.0, "memory below this on an idle GPU counts as 'no process memory' (a driver or empty "
        "CUDA context); an idle workload holding more is still reported, at medium risk", "GiB")
    min_util_known_share: float = _setting(
        0.50, "compute is judged (idle, downsize, MIG, share, replicas, schedule) only for a workload or pod "
        "whose utilisation was reported for at least this share of its GPU-time; below it, the workload is "
        "listed as 'utilisation unknown' (MIG slices report none)", "fraction", 0.0, 1.0)
    share_max_utilization: float = _setting(
        0.30, "`share` considers inference workloads with two or more replicas whose p95 "
        "utilisation per GPU is at most this", "fraction", 0.0, 1.0)
    min_hours: float = _setting(
        6.0, "a workload with fewer GPU-hours than this in the window gets no recommendation (it is listed "
        "as 'too little history')", "GPU-hours")
    confidence_high: float = _setting(
        0.70, "confidence is high when the workload was seen for at least this share of the window "
        "(medium from a quarter of it, low below)", "fraction", 0.0, 1.0)
    time_zone: str = _setting(
        "UTC", "`schedule` and the autoscaling bounds read hours of the day and week in this IANA time zone "
        "(e.g. Europe/Berlin)", "zone", None)
    schedule_min_block_hours: float = _setting(
        3.0, "`schedule` proposes stopping only in runs of at least this many consecutive idle hours of the "
        "week", "hours", 1.0, 168.0)
    schedule_min_days: float = _setting(
        7.0, "`schedule` needs at least this many days of the workload's history in the window, so that "
        "every hour of the week was seen", "days", 7.0, None)
    commitment_days: float = _setting(
        30.0, "look-back for commitment (reserved capacity) recommendations, in whole hours ending at the "
        "last complete hour", "days", 1.0, 3660.0)
    commitment_min_days_1y: float = _setting(
        14.0, "a 1-year commitment is recommended only for a pool with at least this many days of "
        "history in the look-back", "days")
    commitment_min_days_3y: float = _setting(
        30.0, "a 3-year commitment is recommended only for a pool with at least this many days of "
        "history in the look-back", "days")
    anomaly_factor: float = _setting(
        1.5, "a day's cost is an anomaly when it exceeds this × the highest daily cost of the "
        "previous `anomaly_days` days", "×", 1.0)
    anomaly_days: int = _setting(7, "days of recent history an anomaly is judged against", "days", 1, 366)
    anomaly_min_cost: float = _setting(
        10.0, "ignore jumps smaller than this (in the ledger's currency) per day", "currency")
    top: int = _setting(10, "rows in the report's top-workload tables", "rows", 1, 10_000)

    def with_overrides(self, **values: Any) -> "Settings":
        """A copy with the given settings changed (None values are ignored)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def min_days_for(self, term_years: int) -> float:
        """Days of pool history a commitment of this term needs."""
        return self.commitment_min_days_3y if term_years >= 3 else self.commitment_min_days_1y


def setting_fields() -> list:
    """The declared settings, in order, for CLI flags and docs."""
    return list(fields(Settings))


def check(name: str, value: Any) -> str | None:
    """What is wrong with ``value`` for setting ``name`` (None when it is fine)."""
    f = next(f for f in fields(Settings) if f.name == name)
    if name == "time_zone":
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(str(value))
        except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
            return f"expected an IANA time zone such as UTC or Europe/Berlin, got {value!r}"
        return None
    lo, hi = f.metadata["min"], f.metadata["max"]
    if isinstance(value, float) and not math.isfinite(value):
        return f"expected a finite number, got {value}"
    if lo is not None and value < lo:
        return f"expected a value of at least {lo:g}, got {value:g}"
    if hi is not None and value > hi:
        return f"expected a value of at most {hi:g}, got {value:g}"
    return None


def _bounds(f) -> str:
    lo, hi = f.metadata["min"], f.metadata["max"]
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f"≥ {lo:g}"
    return f"{lo:g} – {hi:g}"


def settings_markdown() -> str:
    """The settings table for ``docs/recommendations.md``, made from the declarations."""
    rows = ["| setting | flag | default | unit | range | what it does |", "|---|---|---|---|---|---|"]
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        rows.append(f"| `{f.name}` | `{flag}` | `{f.default}` | {f.metadata['unit']} | {_bounds(f)} | "
                    f"{f.metadata['help']} |")
    return "\n".join(rows) + "\n"
