"""Right-sizing, commitment and report settings, declared once with their descriptions.

Each setting is a dataclass field whose metadata holds its help text and its CLI flag;
``gpuledger report`` builds its flags from these declarations and ``docs/recommendations.md``
carries the table :func:`settings_markdown` prints, so a threshold cannot be documented in
one place and read in another.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any


def _setting(default: Any, help: str, unit: str = "") -> Any:
    return field(default=default, metadata={"help": help, "unit": unit})


@dataclass(frozen=True)
class Settings:
    """Every threshold the recommenders use. Frozen: one run, one set of numbers."""

    headroom: float = _setting(
        0.20, "memory headroom: a target GPU (or MIG profile) must hold the observed peak memory "
        "× (1 + headroom)", "fraction")
    target_utilization: float = _setting(
        0.80, "the observed p95 compute, scaled by the relative throughput of the two GPUs, must "
        "stay under this on the target", "fraction")
    idle_share: float = _setting(
        0.95, "a GPU counts as idle when it showed no compute activity for at least this share of "
        "the time it was held", "fraction")
    idle_memory_floor_gib: float = _setting(
        1.0, "memory below this on an idle GPU counts as 'no process memory' (a driver or empty "
        "CUDA context); an idle workload holding more is still reported, at medium risk", "GiB")
    share_max_utilization: float = _setting(
        0.30, "`share` considers inference workloads with two or more replicas whose p95 "
        "utilisation per GPU is at most this", "fraction")
    min_hours: float = _setting(
        6.0, "a workload with fewer GPU-hours than this in the window gets no recommendation", "GPU-hours")
    confidence_high: float = _setting(
        0.70, "confidence is high when the workload was seen for at least this share of the window "
        "(medium from a quarter of it, low below)", "fraction")
    commitment_days: float = _setting(
        30.0, "look-back for commitment (reserved capacity) recommendations", "days")
    anomaly_factor: float = _setting(
        1.5, "a day's cost is an anomaly when it exceeds this × the highest daily cost of the "
        "previous `anomaly_days` days", "×")
    anomaly_days: int = _setting(7, "days of recent history an anomaly is judged against", "days")
    anomaly_min_cost: float = _setting(
        10.0, "ignore jumps smaller than this (in the ledger's currency) per day", "currency")
    top: int = _setting(10, "rows in the report's top-workload tables", "rows")

    def with_overrides(self, **values: Any) -> "Settings":
        """A copy with the given settings changed (None values are ignored)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


def setting_fields() -> list:
    """The declared settings, in order, for CLI flags and docs."""
    return list(fields(Settings))


def settings_markdown() -> str:
    """The settings table for ``docs/recommendations.md``, made from the declarations."""
    rows = ["| setting | flag | default | unit | what it does |", "|---|---|---|---|---|"]
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        rows.append(f"| `{f.name}` | `{flag}` | `{f.default}` | {f.metadata['unit']} | {f.metadata['help']} |")
    return "\n".join(rows) + "\n"
