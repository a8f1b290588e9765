"""Right-sizing, commitment and report settings, declared once with their descriptions.

Each setting is a field of :class:`Settings` declared with :mod:`recommenders.settingfields`:
its help text, its unit, its bounds and the strategies that read it (``read_by``);
``gpuledger report`` builds its flags from these declarations and checks values against
the bounds, and ``docs/recommendations.md`` carries the table :func:`settings_markdown`
prints, so a threshold cannot be documented in one place and read in another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recommenders.settingfields import declared, markdown_table, setting, value_of, with_values

EVERY = "every strategy"


def _zone(value: Any) -> str:
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(str(value))
    except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
        raise ValueError(f"expected an IANA time zone such as UTC or Europe/Berlin, got {value!r}") from None
    return str(value)


def _setting(default: Any, help: str, unit: str, lo: float | None = 0.0, hi: float | None = None, *,
             read_by: tuple[str, ...], parse=None) -> Any:
    return setting(default, help, unit=unit, min=lo, max=hi, read_by=read_by, parse=parse)


@dataclass(frozen=True)
class Settings:
    """Every threshold the recommenders use. Frozen: one run, one set of numbers."""

    headroom: float = _setting(
        0.20, "memory headroom: a target GPU (or MIG profile) must hold the observed peak memory "
        "× (1 + headroom)", "fraction", 0.0, 10.0, read_by=("downsize-model", "mig", "share"))
    target_utilization: float = _setting(
        0.80, "the observed p95 of each GPU-minute's peak compute, scaled by the relative throughput of "
        "the two GPUs, must stay under this on the target; replicas are sized to run at most this busy",
        "fraction", 0.01, 1.0, read_by=("downsize-model", "mig", "replicas", "share"))
    saturation_share: float = _setting(
        0.01, "a downsize or MIG slice is high risk when the observed peaks would saturate the target (above "
        "100% of it) in more than this share of the GPU-minutes", "fraction", 0.0, 1.0,
        read_by=("downsize-model", "mig", "replicas"))
    demand_percentile: float = _setting(
        0.95, "`replicas`: the percentile of per-minute demand the fewer replicas must cover (and, per hour of "
        "day, the autoscaling bounds)", "fraction", 0.5, 1.0, read_by=("replicas",))
    idle_share: float = _setting(
        0.95, "a GPU (or a pod) counts as idle when it showed no compute activity for at least this share of "
        "the time it was held (of the time its utilisation was known)", "fraction", 0.5, 1.0,
        read_by=("idle", "idle-pods", "reduce-count", "schedule"))
    idle_memory_floor_gib: float = _setting(
        1.0, "memory below this on an idle GPU counts as 'no process memory' (a driver or empty "
        "CUDA context); an idle workload holding more is still reported, at medium risk", "GiB",
        read_by=("idle", "idle-pods", "reduce-count"))
    min_util_known_share: float = _setting(
        0.50, "compute is judged (idle, downsize, MIG, share, replicas, schedule) only for a workload or pod "
        "whose utilisation was reported for at least this share of its GPU-time; below it, the workload is "
        "listed as 'utilisation unknown' (MIG slices report none)", "fraction", 0.0, 1.0, read_by=(EVERY,))
    share_max_utilization: float = _setting(
        0.30, "`share` considers inference workloads with two or more replicas whose p95 "
        "utilisation per GPU is at most this", "fraction", 0.0, 1.0, read_by=("share",))
    min_hours: float = _setting(
        6.0, "a workload with fewer GPU-hours than this in the window gets no recommendation (it is listed "
        "as 'too little history')", "GPU-hours", read_by=(EVERY,))
    confidence_high: float = _setting(
        0.70, "confidence is high when the workload was seen for at least this share of the window "
        "(medium from a quarter of it, low below)", "fraction", 0.0, 1.0, read_by=(EVERY,))
    time_zone: str = _setting(
        "UTC", "`schedule` and the autoscaling bounds read hours of the day and week in this IANA time zone "
        "(e.g. Europe/Berlin)", "zone", None, read_by=("schedule", "replicas"), parse=_zone)
    schedule_min_block_hours: float = _setting(
        3.0, "`schedule` proposes stopping only in runs of at least this many consecutive idle hours of the "
        "week", "hours", 1.0, 168.0, read_by=("schedule",))
    schedule_min_days: float = _setting(
        7.0, "`schedule` needs at least this many days of the workload's history in the window, so that "
        "every hour of the week was seen", "days", 7.0, None, read_by=("schedule",))
    commitment_days: float = _setting(
        30.0, "look-back for commitment (reserved capacity) recommendations, in whole hours ending at the "
        "last complete hour", "days", 1.0, 3660.0, read_by=("commitment advice",))
    commitment_min_days_1y: float = _setting(
        14.0, "a 1-year commitment is recommended only for a pool with at least this many days of "
        "history in the look-back", "days", read_by=("commitment advice",))
    commitment_min_days_3y: float = _setting(
        30.0, "a 3-year commitment is recommended only for a pool with at least this many days of "
        "history in the look-back", "days", read_by=("commitment advice",))
    anomaly_factor: float = _setting(
        1.5, "a day's cost is an anomaly when it exceeds this × the highest daily cost of the "
        "previous `anomaly_days` days", "×", 1.0, read_by=("cost anomalies",))
    anomaly_days: int = _setting(7, "days of recent history an anomaly is judged against", "days", 1, 366,
        read_by=("cost anomalies",))
    anomaly_min_cost: float = _setting(
        10.0, "ignore jumps smaller than this (in the ledger's currency) per day", "currency",
        read_by=("cost anomalies",))
    top: int = _setting(10, "rows in the report's top-workload tables", "rows", 1, 10_000, read_by=("the report",))

    def with_overrides(self, **values: Any) -> "Settings":
        """A copy with the given settings changed (None values are ignored)."""
        return with_values(self, **values)

    def min_days_for(self, term_years: int) -> float:
        """Days of pool history a commitment of this term needs."""
        return self.commitment_min_days_3y if term_years >= 3 else self.commitment_min_days_1y


def setting_fields() -> tuple:
    """The declared settings, in order, for CLI flags and docs."""
    return declared(Settings)


def check(name: str, value: Any) -> str | None:
    """What is wrong with ``value`` for setting ``name`` (None when it is fine)."""
    f = next(f for f in declared(Settings) if f.name == name)
    try:
        value_of(f, value)
    except ValueError as err:
        return str(err)
    return None


def settings_markdown() -> str:
    """The settings table for ``docs/recommendations.md``, made from the declarations."""
    return markdown_table(Settings, ("setting", "flag", "default", "unit", "range", "read by", "what it does"))
