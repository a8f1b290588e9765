"""Right-sizing: per workload, what to give back and what it saves.

Each strategy is a pure function from one workload's evidence (a row of
:func:`recommenders.workloads.workload_stats`) to at most one :class:`Recommendation`;
strategies are registered in :data:`STRATEGIES` by type name, so another can be added
without touching the others. The safety rule is enforced here, once, for all of them:
no recommendation may give a workload less memory than it was seen to use
(:func:`is_safe`), and one whose memory was never observed gets only ``idle`` or
``reduce-count`` advice, which takes away GPUs that held nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from recommenders.catalog import Catalog, cheaper_than, load_catalog
from recommenders.settings import Settings
from recommenders.workloads import idle_devices_per_pod, workload_stats

HOURS_PER_MONTH = 730.0  # 365 × 24 / 12, the convention cloud price pages use
GIB = float(1 << 30)
TYPES = ("idle", "reduce-count", "downsize-model", "mig", "share")
MIN_UTIL_KNOWN = 0.9  # share of GPU-time with reported utilisation needed to judge compute


@dataclass(frozen=True)
class Recommendation:
    """One row of ``recommendations.csv`` / ``recommendations.json`` (docs/report.md)."""

    type: str
    team: str | None
    namespace: str | None
    workload_kind: str | None
    workload_name: str | None
    workload_class: str | None
    current_gpu_model: str | None
    current_mig_profile: str | None
    current_gpus_per_pod: float | None
    target_gpu_model: str | None
    target_mig_profile: str | None
    target_gpus_per_pod: float | None
    observed_max_memory_bytes: float | None
    target_memory_bytes: float | None
    monthly_savings: float
    currency: str
    confidence: str
    risk: str
    evidence: str
    pods: int
    replicas: float | None
    gpu_hours: float
    cost: float
    idle_cost: float
    util_p50: float | None
    util_p95: float | None
    util_max: float | None
    memory_p99_bytes: float | None
    gpu_memory_bytes: float | None
    active_share: float | None
    hours_observed: float
    window_hours: float
    freed_share: float  # share of the workload's GPU-time the change gives back

    def as_row(self) -> dict:
        return {k: _clean(v) for k, v in asdict(self).items()}


COLUMNS = tuple(f.name for f in fields(Recommendation))


def _clean(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (np.floating,)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


@dataclass(frozen=True)
class Context:
    settings: Settings
    catalog: Catalog
    window_hours: float
    currency: str


Strategy = Callable[[Mapping, Context], "Recommendation | None"]
STRATEGIES: dict[str, Strategy] = {}


def strategy(name: str) -> Callable[[Strategy], Strategy]:
    """Register a strategy under its recommendation type."""
    def register(fn: Strategy) -> Strategy:
        STRATEGIES[name] = fn
        return fn
    return register


# --------------------------------------------------------------------------- helpers


def _num(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def confidence(coverage: float, settings: Settings) -> str:
    """high / medium / low from the share of the window the workload was seen in."""
    if coverage >= settings.confidence_high:
        return "high"
    if coverage >= 0.25:
        return "medium"
    return "low"


def monthly(window_saving: float, window_hours: float) -> float:
    """A saving over the window, projected to a 730-hour month."""
    return window_saving * HOURS_PER_MONTH / window_hours if window_hours > 0 else 0.0


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _gib(x: float | None) -> str:
    return "n/a" if x is None else f"{x / GIB:.1f} GiB"


def _base(w: Mapping, ctx: Context, kind: str, freed: float, **target) -> Recommendation:
    saving = float(w["cost"]) * freed
    fields_ = dict(
        type=kind, team=w["team"], namespace=w["namespace"], workload_kind=w["workload_kind"],
        workload_name=w["workload_name"], workload_class=w["workload_class"],
        current_gpu_model=w["gpu_model"], current_mig_profile=w["mig_profile"],
        current_gpus_per_pod=_num(w["gpus_per_pod"]),
        target_gpu_model=None, target_mig_profile=None, target_gpus_per_pod=None,
        observed_max_memory_bytes=_num(w["memory_max_bytes"]), target_memory_bytes=None,
        monthly_savings=round(monthly(saving, ctx.window_hours), 2), currency=ctx.currency,
        confidence=confidence(float(w["coverage"]), ctx.settings), risk="medium", evidence="",
        pods=int(w["pods"]), replicas=_num(w["replicas"]), gpu_hours=float(w["gpu_hours"]),
        cost=float(w["cost"]), idle_cost=float(w["idle_cost"]),
        util_p50=_num(w["util_p50"]), util_p95=_num(w["util_p95"]), util_max=_num(w["util_max"]),
        memory_p99_bytes=_num(w["memory_p99_bytes"]), gpu_memory_bytes=_num(w["gpu_memory_bytes"]),
        active_share=_num(w["active_share"]), hours_observed=float(w["hours_observed"]),
        window_hours=ctx.window_hours, freed_share=freed,
    )
    fields_.update(target)
    return Recommendation(**fields_)


def _figures(w: Mapping) -> str:
    return (f"{int(w['pods'])} pod(s), {float(w['gpu_hours']):,.1f} GPU-h; utilisation p50 {_pct(_num(w['util_p50']))}, "
            f"p95 {_pct(_num(w['util_p95']))}, max {_pct(_num(w['util_max']))}; memory p99 "
            f"{_gib(_num(w['memory_p99_bytes']))}, max {_gib(_num(w['memory_max_bytes']))} of "
            f"{_gib(_num(w['gpu_memory_bytes']))}; active {_pct(_num(w['active_share']))} of the time")


def needed_memory(w: Mapping, settings: Settings) -> float | None:
    """Observed peak memory × (1 + headroom), or None when memory was never reported."""
    peak = _num(w["memory_max_bytes"])
    return None if peak is None else peak * (1.0 + settings.headroom)


def current_hourly(w: Mapping, ctx: Context) -> float:
    """Typical price of the current GPU (catalog), else what the ledger charged."""
    spec = ctx.catalog.get(w["gpu_model"])
    return spec.hourly if spec and spec.hourly else float(w["hourly_price"])


def _util_known(w: Mapping) -> bool:
    return _num(w["util_p95"]) is not None and float(w["util_known_share"]) >= MIN_UTIL_KNOWN


# --------------------------------------------------------------------------- strategies


@strategy("idle")
def idle(w: Mapping, ctx: Context) -> Recommendation | None:
    """GPUs held with no compute activity for nearly all of the window: release them."""
    s = ctx.settings
    share = _num(w["idle_share"])
    if share is None or share < s.idle_share or float(w["util_known_share"]) < MIN_UTIL_KNOWN:
        return None
    held = _num(w["idle_memory_max_bytes"]) or 0.0
    floor = s.idle_memory_floor_gib * GIB
    if held <= floor:
        risk, why = "low", "no process memory"
    else:
        risk, why = "medium", f"but holding up to {_gib(held)} of memory (a loaded model nobody calls?)"
    text = (f"no GPU activity {_pct(share)} of the time held, {why}; release the GPUs or scale to zero. "
            + _figures(w))
    return _base(w, ctx, "idle", 1.0, target_gpus_per_pod=0.0, target_memory_bytes=0.0, risk=risk, evidence=text)


@strategy("reduce-count")
def reduce_count(w: Mapping, ctx: Context) -> Recommendation | None:
    """A multi-GPU pod where some GPUs stay idle and empty: request fewer."""
    current = _num(w["gpus_per_pod"])
    spare = int(w.get("idle_gpus_per_pod", 0) or 0)
    if not current or current < 2 or spare < 1 or spare >= current:
        return None
    target = current - spare
    text = (f"{spare} of the {current:g} GPUs of every pod stayed idle with no memory used; request "
            f"{target:g}. " + _figures(w))
    return _base(w, ctx, "reduce-count", spare / current, target_gpus_per_pod=target,
                 target_gpu_model=w["gpu_model"], target_memory_bytes=_num(w["gpu_memory_bytes"]),
                 risk="low", evidence=text)


@strategy("downsize-model")
def downsize_model(w: Mapping, ctx: Context) -> Recommendation | None:
    """The cheapest catalog GPU whose memory and (scaled) compute fit."""
    s = ctx.settings
    spec = ctx.catalog.get(w["gpu_model"])
    need = needed_memory(w, s)
    if spec is None or w["mig_profile"] is not None or need is None or not _util_known(w):
        return None
    p95 = float(w["util_p95"])
    price = current_hourly(w, ctx)
    for target in cheaper_than(ctx.catalog, price):
        scaled = p95 * spec.tflops / target.tflops
        if target.memory_bytes >= need and scaled <= s.target_utilization and target.name != spec.name:
            freed = 1.0 - target.hourly / price
            margin = target.memory_bytes / need
            risk = "low" if margin >= 1.5 and scaled <= s.target_utilization / 2 else "medium"
            if w["workload_class"] == "training" and (_num(w["gpus_per_pod"]) or 1) > 1:
                risk = "high"
            text = (f"{target.name} ({_gib(target.memory_bytes)}) holds the peak {_gib(_num(w['memory_max_bytes']))} "
                    f"+ {s.headroom:.0%} headroom, and p95 compute {_pct(p95)} becomes {_pct(scaled)} on it "
                    f"(throughput {spec.tflops:g} → {target.tflops:g} TFLOPS); typical price "
                    f"{price:.3f} → {target.hourly:.3f}/GPU-h. " + _figures(w))
            return _base(w, ctx, "downsize-model", freed, target_gpu_model=target.name,
                         target_gpus_per_pod=_num(w["gpus_per_pod"]), target_memory_bytes=target.memory_bytes,
                         risk=risk, evidence=text)
    return None


@strategy("mig")
def mig(w: Mapping, ctx: Context) -> Recommendation | None:
    """The smallest MIG profile of the same GPU whose memory and compute slices fit."""
    s = ctx.settings
    spec = ctx.catalog.get(w["gpu_model"])
    need = needed_memory(w, s)
    if (spec is None or not spec.mig or w["mig_profile"] is not None or need is None
            or not _util_known(w) or (_num(w["gpus_per_pod"]) or 1) != 1):
        return None
    p95 = float(w["util_p95"])
    for profile in sorted(spec.mig, key=lambda p: (p.slices, p.memory_bytes)):
        if profile.slices >= spec.mig_slices:
            break
        share = profile.slices / spec.mig_slices
        if profile.memory_bytes >= need and p95 / share <= s.target_utilization:
            risk = "high" if w["workload_class"] == "training" else "medium"
            text = (f"MIG {profile.name} ({profile.slices}/{spec.mig_slices} of the compute, "
                    f"{_gib(profile.memory_bytes)}) holds the peak {_gib(_num(w['memory_max_bytes']))} + "
                    f"{s.headroom:.0%} headroom; p95 compute {_pct(p95)} of the whole GPU is {_pct(p95 / share)} "
                    f"of the slice. " + _figures(w))
            return _base(w, ctx, "mig", 1.0 - share, target_gpu_model=spec.name, target_mig_profile=profile.name,
                         target_gpus_per_pod=1.0, target_memory_bytes=profile.memory_bytes, risk=risk, evidence=text)
    return None


@strategy("share")
def share(w: Mapping, ctx: Context) -> Recommendation | None:
    """Several inference replicas each using a little of a GPU: time-slice them onto fewer GPUs."""
    s = ctx.settings
    need = needed_memory(w, s)
    gpu_mem = _num(w["gpu_memory_bytes"])
    replicas = _num(w["replicas"])
    if (w["workload_class"] != "inference" or w["mig_profile"] is not None or need is None or not gpu_mem
            or not _util_known(w) or (_num(w["gpus_per_pod"]) or 1) != 1 or not replicas or replicas < 2):
        return None
    p95 = float(w["util_p95"])
    if p95 > s.share_max_utilization:
        return None
    by_memory = math.floor(gpu_mem / need) if need > 0 else math.inf
    by_compute = math.floor(s.target_utilization / p95) if p95 > 0 else math.inf
    per_gpu = int(min(by_memory, by_compute, math.ceil(replicas)))
    if per_gpu < 2:
        return None
    n = math.ceil(replicas)
    gpus = math.ceil(n / per_gpu)
    if gpus >= n:
        return None
    text = (f"{n} replicas each use p95 {_pct(p95)} of a GPU and at most {_gib(_num(w['memory_max_bytes']))}; "
            f"{per_gpu} fit on one {w['gpu_model']} ({_gib(gpu_mem)}) with {s.headroom:.0%} memory headroom "
            f"and under {s.target_utilization:.0%} compute, so {gpus} GPU(s) instead of {n} (time-slicing or MPS). "
            + _figures(w))
    return _base(w, ctx, "share", 1.0 - gpus / n, target_gpu_model=w["gpu_model"], target_gpus_per_pod=gpus / n,
                 target_memory_bytes=gpu_mem / per_gpu, risk="medium", evidence=text)


# --------------------------------------------------------------------------- running


def is_safe(rec: Recommendation) -> bool:
    """The safety rule: a workload keeps at least the memory it was seen to use.

    ``idle`` releases GPUs that did no work at all, so it has no target memory to check.
    """
    if rec.type == "idle":
        return True
    if rec.observed_max_memory_bytes is None:
        return rec.type == "reduce-count"
    return rec.target_memory_bytes is not None and rec.target_memory_bytes >= rec.observed_max_memory_bytes


def recommend(
    rows: pd.DataFrame, window_hours: float, currency: str, settings: Settings | None = None,
    catalog: Catalog | None = None, types: Iterable[str] | None = None, stats: pd.DataFrame | None = None,
) -> list[Recommendation]:
    """Every recommendation for the ledger rows of one window, largest saving first.

    An idle workload gets only ``idle`` (release it all); others may get several
    alternatives (e.g. ``mig`` and ``downsize-model``), whose savings do not add up.
    """
    settings = settings or Settings()
    catalog = catalog or load_catalog()
    if stats is None:
        stats = workload_stats(rows, window_hours, settings.idle_memory_floor_gib * GIB)
    if stats.empty:
        return []
    stats = stats.copy()
    stats["idle_gpus_per_pod"] = idle_devices_per_pod(stats, settings.idle_share)
    ctx = Context(settings, catalog, window_hours, currency)
    chosen = [t for t in (types or STRATEGIES)]
    out: list[Recommendation] = []
    for w in stats.to_dict("records"):
        w = {k: (None if isinstance(v, float) and math.isnan(v) and k in ("mig_profile",) else v) for k, v in w.items()}
        if float(w["gpu_hours"]) < settings.min_hours:
            continue
        found = []
        for name in chosen:
            rec = STRATEGIES[name](w, ctx)
            if rec is not None and rec.monthly_savings > 0 and is_safe(rec):
                found.append(rec)
                if name == "idle":
                    break
        out.extend(found)
    out.sort(key=lambda r: (-r.monthly_savings, r.type, str(r.namespace), str(r.workload_name)))
    return out


def best_per_workload(recs: Iterable[Recommendation]) -> dict[tuple, Recommendation]:
    """The largest-saving recommendation of each workload (alternatives do not add up)."""
    best: dict[tuple, Recommendation] = {}
    for r in recs:
        key = (r.team, r.workload_class, r.namespace, r.workload_kind, r.workload_name,
               r.current_gpu_model, r.current_mig_profile)
        if key not in best or r.monthly_savings > best[key].monthly_savings:
            best[key] = r
    return best
