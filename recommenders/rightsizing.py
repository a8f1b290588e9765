"""Right-sizing: per workload, what to give back and what it saves.

Each strategy is a pure function from one workload's evidence (a row of
:func:`recommenders.workloads.workload_stats`) to at most one :class:`Recommendation`;
strategies are registered in :data:`STRATEGIES` by type name, so another can be added
without touching the others. What every strategy must respect is enforced here, once:

* the safety rule: no recommendation may give a workload less memory than it was seen
  to use (:func:`is_safe`); one whose memory was never observed gets only advice that
  keeps or releases whole GPUs (``idle``, ``idle-pods``, ``reduce-count``, ``replicas``,
  ``schedule``);
* price provenance: every recommendation says which source priced its current and
  target GPUs; a saving that rests on the default price is low confidence and says so,
  and a model change whose saving would come only from the default price is not offered;
* nothing hidden: a workload that gets no recommendation for a reason other than "it
  uses what it holds" is returned by :func:`not_judged` with that reason.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from recommenders.catalog import Catalog, cheaper_than, load_catalog
from recommenders.clock import describe_week_hours
from recommenders.settings import Settings
from recommenders.workloads import DEFAULT_PRICE, idle_devices_per_pod, workload_stats

HOURS_PER_MONTH = 730.0  # 365 × 24 / 12, the convention cloud price pages use
GIB = float(1 << 30)
TYPES = ("idle", "idle-pods", "reduce-count", "replicas", "schedule", "downsize-model", "mig", "share")
CATALOG_PRICE = "gpu-catalog"  # price source of a catalog GPU's typical price (gpu_catalog.yaml)
NAMED_PODS = 10  # pods named in an idle-pods evidence line; all are in pod_names


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
    # added in report v2 (appended, so v1 column positions hold)
    util_p99: float | None = None
    current_hourly_price: float | None = None  # per GPU, as the saving was computed
    current_price_source: str | None = None
    target_hourly_price: float | None = None
    target_price_source: str | None = None
    target_replicas: float | None = None  # replicas
    autoscale_min_replicas: int | None = None  # replicas: bounds by hour of day
    autoscale_max_replicas: int | None = None
    stop_hours: str | None = None  # schedule: the hours of the week to stop in, in settings.time_zone
    pod_names: str | None = None  # idle-pods: the pods, space-separated
    saturated_minutes: int | None = None  # GPU-minutes whose peak would exceed the target's capacity

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


def _default_priced(w: Mapping) -> bool:
    """Most of the workload's cost was priced at the default (no rate card or snapshot price)."""
    return float(w.get("default_price_share") or 0.0) > 0.5


def _base(w: Mapping, ctx: Context, kind: str, freed: float, **target) -> Recommendation:
    saving = float(w["cost"]) * freed
    evidence = target.pop("evidence", "")
    conf = confidence(float(w["coverage"]), ctx.settings)
    if _default_priced(w):
        conf = "low"
        evidence = (f"priced at the default {float(w['hourly_price']):.2f}/GPU-h (no rate card or snapshot price "
                    f"for {w['gpu_model']}): give a rate card (--rates) for the real saving. " + evidence)
    fields_ = dict(
        type=kind, team=w["team"], namespace=w["namespace"], workload_kind=w["workload_kind"],
        workload_name=w["workload_name"], workload_class=w["workload_class"],
        current_gpu_model=w["gpu_model"], current_mig_profile=w["mig_profile"],
        current_gpus_per_pod=_num(w["gpus_per_pod"]),
        target_gpu_model=None, target_mig_profile=None, target_gpus_per_pod=None,
        observed_max_memory_bytes=_num(w["memory_max_bytes"]), target_memory_bytes=None,
        monthly_savings=round(monthly(saving, ctx.window_hours), 2), currency=ctx.currency,
        confidence=conf, risk="medium", evidence=evidence,
        pods=int(w["pods"]), replicas=_num(w["replicas"]), gpu_hours=float(w["gpu_hours"]),
        cost=float(w["cost"]), idle_cost=float(w["idle_cost"]),
        util_p50=_num(w["util_p50"]), util_p95=_num(w["util_p95"]), util_max=_num(w["util_max"]),
        memory_p99_bytes=_num(w["memory_p99_bytes"]), gpu_memory_bytes=_num(w["gpu_memory_bytes"]),
        active_share=_num(w["active_share"]), hours_observed=float(w["hours_observed"]),
        window_hours=ctx.window_hours, freed_share=freed, util_p99=_num(w.get("util_p99")),
        current_hourly_price=_num(w["hourly_price"]), current_price_source=w.get("price_source"),
    )
    fields_.update(target)
    return Recommendation(**fields_)


def _figures(w: Mapping) -> str:
    return (f"{int(w['pods'])} pod(s), {float(w['gpu_hours']):,.1f} GPU-h; utilisation p50 {_pct(_num(w['util_p50']))}, "
            f"peaks p95 {_pct(_num(w['util_p95']))}, p99 {_pct(_num(w.get('util_p99')))}, max "
            f"{_pct(_num(w['util_max']))}; memory p99 {_gib(_num(w['memory_p99_bytes']))}, max "
            f"{_gib(_num(w['memory_max_bytes']))} of {_gib(_num(w['gpu_memory_bytes']))}; active "
            f"{_pct(_num(w['active_share']))} of the time; {float(w['hours_observed']):,.1f} h seen over "
            f"{float(w.get('span_days') or 0):.1f} days")


def needed_memory(w: Mapping, settings: Settings) -> float | None:
    """Observed peak memory × (1 + headroom), or None when memory was never reported."""
    peak = _num(w["memory_max_bytes"])
    return None if peak is None else peak * (1.0 + settings.headroom)


def current_hourly(w: Mapping, ctx: Context) -> tuple[float, str]:
    """(typical price of the current GPU, its source): the catalog's, else what the ledger charged."""
    spec = ctx.catalog.get(w["gpu_model"])
    if spec and spec.hourly:
        return spec.hourly, CATALOG_PRICE
    return float(w["hourly_price"]), str(w.get("price_source") or "ledger")


def util_known(w: Mapping, settings: Settings) -> bool:
    """Utilisation was reported for enough of the workload's GPU-time to judge its compute."""
    return _num(w["util_p95"]) is not None and float(w["util_known_share"]) >= settings.min_util_known_share


def saturated(w: Mapping, scale: float) -> int:
    """GPU-minutes whose peak × ``scale`` would exceed the whole target (100%)."""
    peaks = w.get("peaks")
    if peaks is None or not len(peaks) or scale <= 0:
        return 0
    return peaks.above(1.0 / scale)


def _saturation(w: Mapping, scale: float, settings: Settings, target: str) -> tuple[int, bool, str]:
    """(saturated GPU-minutes, whether that makes the change high risk, the evidence sentence)."""
    n = saturated(w, scale)
    total = len(w.get("peaks") if w.get("peaks") is not None else ())
    if n == 0 or not total:
        return 0, False, ""
    share = n / total
    return n, share > settings.saturation_share, (
        f"Its peaks would saturate the {target} in {n:,} of {total:,} GPU-minutes ({share:.1%}). ")


# --------------------------------------------------------------------------- strategies


@strategy("idle")
def idle(w: Mapping, ctx: Context) -> Recommendation | None:
    """GPUs held with no compute activity for nearly all of the window: release them."""
    s = ctx.settings
    share = _num(w["idle_share"])
    if share is None or share < s.idle_share or float(w["util_known_share"]) < s.min_util_known_share:
        return None
    held = _num(w["idle_memory_max_bytes"]) or 0.0
    floor = s.idle_memory_floor_gib * GIB
    if held <= floor:
        risk, why = "low", "no process memory"
    else:
        risk, why = "medium", f"but holding up to {_gib(held)} of memory (a loaded model nobody calls?)"
    text = (f"No GPU activity {_pct(share)} of the time held, {why}; release the GPUs or scale to zero. "
            + _figures(w))
    return _base(w, ctx, "idle", 1.0, target_gpus_per_pod=0.0, target_memory_bytes=0.0, risk=risk, evidence=text)


@strategy("idle-pods")
def idle_pods(w: Mapping, ctx: Context) -> Recommendation | None:
    """Pods of a busy multi-replica workload that did nothing: the traffic never reached them."""
    pods = w.get("idle_pods") or []
    if not pods:
        return None
    cost = sum(p["cost"] for p in pods)
    floor = ctx.settings.idle_memory_floor_gib * GIB
    holding = [p for p in pods if (p["memory_max_bytes"] or 0.0) > floor]
    named = ", ".join(f"{p['pod']} (idle {_pct(p['idle_share'])}, {_gib(p['memory_max_bytes'])})"
                      for p in pods[:NAMED_PODS])
    more = f" and {len(pods) - NAMED_PODS} more" if len(pods) > NAMED_PODS else ""
    text = (f"{len(pods)} of its {int(w['pods'])} pods showed no GPU activity for at least "
            f"{_pct(ctx.settings.idle_share)} of their time, {len(holding)} of them holding memory: {named}{more}. "
            f"Their GPUs cost {cost:,.2f} {ctx.currency} in the window; remove them or find out why no requests "
            f"reach them (readiness, load balancing, a stuck model). " + _figures(w))
    return _base(w, ctx, "idle-pods", cost / float(w["cost"]) if float(w["cost"]) > 0 else 0.0,
                 target_gpu_model=w["gpu_model"], target_memory_bytes=_num(w["gpu_memory_bytes"]),
                 target_gpus_per_pod=_num(w["gpus_per_pod"]), risk="medium" if holding else "low",
                 pod_names=" ".join(p["pod"] for p in pods), evidence=text)


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


def needed_replicas(demand: float, gpus_per_replica: float, settings: Settings) -> int:
    """The fewest replicas whose GPUs, each at ``target_utilization``, cover ``demand`` GPUs of work."""
    return max(1, math.ceil(demand / (settings.target_utilization * gpus_per_replica) - 1e-9))


@strategy("replicas")
def replicas(w: Mapping, ctx: Context) -> Recommendation | None:
    """Fewer replicas of a workload whose pods together do a few GPUs' worth of work.

    Demand per minute is the busy GPU-equivalents of all its pods together; the fewest
    replicas whose GPUs at ``target_utilization`` cover its ``demand_percentile`` is what
    it needs. Each replica keeps its own GPU and memory, so the memory rule holds as is.
    """
    s = ctx.settings
    demand = w.get("demand")
    median = _num(w["replicas"]) or 0.0
    now = _num(w.get("replicas_mean")) or 0.0
    gpus = _num(w["gpus_per_pod"]) or 1.0
    if (demand is None or not len(demand) or median < 2 or not bool(w.get("exclusive"))
            or not util_known(w, s) or w["mig_profile"] is not None):
        return None
    level = demand.quantile(s.demand_percentile)
    needed = needed_replicas(level, gpus, s)
    throughput = ""
    rps_level, capacity = _num(w.get("rps_level")), _num(w.get("rps_capacity"))
    if w.get("rps_minutes") and rps_level is not None and capacity and float(w.get("serving_share") or 0) >= 0.5:
        # serving counts exist: the replicas must also carry the requests at what one carried at the target
        by_requests = max(1, math.ceil(rps_level / capacity - 1e-9))
        throughput = (f"By throughput: p{100 * s.demand_percentile:g} {rps_level:,.2f} requests/s, one replica "
                      f"carried up to {capacity:,.2f}/s at or under {_pct(s.target_utilization)}, so "
                      f"{by_requests} replicas; the larger count stands. ")
        needed = max(needed, by_requests)
    if needed > median - 1:  # keep at least the typical count minus one: nothing to give back
        return None
    over_target = demand.above(needed * gpus * s.target_utilization)
    over_full = demand.above(needed * gpus)
    by_hour = [needed_replicas(x, gpus, s) for x in w["demand_by_hour"] if not math.isnan(x)]
    low, high = (min(by_hour), max(by_hour)) if by_hour else (needed, needed)
    peak_needs = needed_replicas(demand.max(), gpus, s)
    n = len(demand)
    text = (f"Together its pods did p{100 * s.demand_percentile:g} {level:.1f} GPUs' worth of work a minute "
            f"(mean {demand.mean():.1f}, max {demand.max():.1f}) on {now:.1f} replicas of {gpus:g} GPU "
            f"on average; {needed} replicas at {_pct(s.target_utilization)} cover that: {over_target:,} of {n:,} "
            f"minutes ({over_target / n:.1%}) would have run above {_pct(s.target_utilization)} and {over_full:,} "
            f"({over_full / n:.1%}) above their capacity. Autoscale by hour of day ({s.time_zone}): "
            f"minReplicas: {low}, maxReplicas: {high} (the busiest minute seen needed {peak_needs}). " + throughput
            + _figures(w))
    risk = "high" if over_full / n > s.saturation_share else "medium"
    return _base(w, ctx, "replicas", max(0.0, 1.0 - needed / now), target_gpu_model=w["gpu_model"],
                 target_gpus_per_pod=gpus, target_memory_bytes=_num(w["gpu_memory_bytes"]),
                 target_replicas=float(needed), autoscale_min_replicas=low, autoscale_max_replicas=high,
                 saturated_minutes=over_full, risk=risk, evidence=text)


def stop_blocks(held: np.ndarray, active: np.ndarray, known: np.ndarray, min_block: float,
                idle_share: float) -> np.ndarray:
    """Hours of the week (0–167) to stop in: runs of at least ``min_block`` quiet hours.

    An hour is quiet when, over every week seen together, the workload showed no GPU
    activity for at least ``idle_share`` of the time it held GPUs in it (the ``idle``
    rule, so a kernel polling the GPU now and then does not count as work) and its
    utilisation was known whenever it held GPUs; an hour it held none is quiet too
    (stopping there costs nothing). The week is a circle, so a run can cross from Sunday
    into Monday.
    """
    quiet = (active <= (1.0 - idle_share) * held + 1e-6) & (known >= held - 1e-6)
    if quiet.all():
        return np.arange(len(quiet))
    if not quiet.any():
        return np.empty(0, np.int64)
    n = len(quiet)
    start = int(np.flatnonzero(~quiet)[0])  # walk from a busy hour, so no run is split
    chosen: list[int] = []
    h = 0
    while h < n:
        i = (start + h) % n
        if quiet[i]:
            run = []
            while h < n and quiet[(start + h) % n]:
                run.append((start + h) % n)
                h += 1
            if len(run) >= min_block:
                chosen += run
        else:
            h += 1
    return np.array(sorted(chosen), np.int64)


@strategy("schedule")
def schedule(w: Mapping, ctx: Context) -> Recommendation | None:
    """Stop in the hours of the week in which the workload never did any GPU work."""
    s = ctx.settings
    if (float(w.get("span_days") or 0.0) < s.schedule_min_days or ctx.window_hours < s.schedule_min_days * 24
            or not util_known(w, s) or w.get("week_held") is None):
        return None
    held, active, known, cost = (np.asarray(w[c], np.float64) for c in ("week_held", "week_active", "week_known",
                                                                         "week_cost"))
    hours = stop_blocks(held, active, known, s.schedule_min_block_hours, s.idle_share)
    if not len(hours):
        return None
    saving = float(cost[hours].sum())
    total = float(cost.sum())
    if saving <= 0 or total <= 0:
        return None
    text_hours = describe_week_hours(hours)
    weeks = float(w["span_days"]) / 7.0
    text = (f"No GPU activity (beyond {1 - s.idle_share:.0%} of the time) in the {weeks:.1f} weeks seen in these "
            f"hours ({s.time_zone}): {text_hours}; "
            f"stopping then (scale to zero, cull idle kernels, a CronJob) saves their cost, {saving / total:.0%} of "
            f"the total. " + _figures(w))
    risk = "low" if w["workload_class"] == "interactive" else "medium"
    return _base(w, ctx, "schedule", saving / total, target_gpu_model=w["gpu_model"],
                 target_gpus_per_pod=_num(w["gpus_per_pod"]), target_memory_bytes=_num(w["gpu_memory_bytes"]),
                 stop_hours=text_hours, risk=risk, evidence=text)


@strategy("downsize-model")
def downsize_model(w: Mapping, ctx: Context) -> Recommendation | None:
    """The cheapest catalog GPU whose memory and (scaled) compute fit."""
    s = ctx.settings
    spec = ctx.catalog.get(w["gpu_model"])
    need = needed_memory(w, s)
    if spec is None or w["mig_profile"] is not None or need is None or not util_known(w, s):
        return None
    p95 = float(w["util_p95"])
    price, source = current_hourly(w, ctx)
    if source == DEFAULT_PRICE:
        return None  # the "saving" would be the gap between a placeholder and a real price
    for target in cheaper_than(ctx.catalog, price):
        scale = spec.tflops / target.tflops
        scaled = p95 * scale
        if target.memory_bytes >= need and scaled <= s.target_utilization and target.name != spec.name:
            freed = 1.0 - target.hourly / price
            margin = target.memory_bytes / need
            risk = "low" if margin >= 1.5 and scaled <= s.target_utilization / 2 else "medium"
            if w["workload_class"] == "training" and (_num(w["gpus_per_pod"]) or 1) > 1:
                risk = "high"
            n_sat, too_many, sat_text = _saturation(w, scale, s, target.name)
            if too_many:
                risk = "high"
            text = (f"{target.name} ({_gib(target.memory_bytes)}) holds the peak {_gib(_num(w['memory_max_bytes']))} "
                    f"+ {s.headroom:.0%} headroom, and the p95 of minute peaks, {_pct(p95)}, becomes {_pct(scaled)} "
                    f"on it (throughput {spec.tflops:g} → {target.tflops:g} TFLOPS). {sat_text}Typical price "
                    f"{price:.3f} ({source}) → {target.hourly:.3f} ({CATALOG_PRICE})/GPU-h. " + _figures(w))
            return _base(w, ctx, "downsize-model", freed, target_gpu_model=target.name,
                         target_gpus_per_pod=_num(w["gpus_per_pod"]), target_memory_bytes=target.memory_bytes,
                         current_hourly_price=price, current_price_source=source, target_hourly_price=target.hourly,
                         target_price_source=CATALOG_PRICE, saturated_minutes=n_sat, risk=risk, evidence=text)
    return None


@strategy("mig")
def mig(w: Mapping, ctx: Context) -> Recommendation | None:
    """The smallest MIG profile of the same GPU whose memory and compute slices fit."""
    s = ctx.settings
    spec = ctx.catalog.get(w["gpu_model"])
    need = needed_memory(w, s)
    if (spec is None or not spec.mig or w["mig_profile"] is not None or need is None
            or not util_known(w, s) or (_num(w["gpus_per_pod"]) or 1) != 1):
        return None
    p95 = float(w["util_p95"])
    for profile in sorted(spec.mig, key=lambda p: (p.slices, p.memory_bytes)):
        if profile.slices >= spec.mig_slices:
            break
        share = profile.slices / spec.mig_slices
        if profile.memory_bytes >= need and p95 / share <= s.target_utilization:
            risk = "high" if w["workload_class"] == "training" else "medium"
            n_sat, too_many, sat_text = _saturation(w, 1.0 / share, s, f"{profile.name} slice")
            if too_many:
                risk = "high"
            hourly = _num(w["hourly_price"])
            text = (f"MIG {profile.name} ({profile.slices}/{spec.mig_slices} of the compute, "
                    f"{_gib(profile.memory_bytes)}) holds the peak {_gib(_num(w['memory_max_bytes']))} + "
                    f"{s.headroom:.0%} headroom; the p95 of minute peaks, {_pct(p95)} of the whole GPU, is "
                    f"{_pct(p95 / share)} of the slice. {sat_text}" + _figures(w))
            return _base(w, ctx, "mig", 1.0 - share, target_gpu_model=spec.name, target_mig_profile=profile.name,
                         target_gpus_per_pod=1.0, target_memory_bytes=profile.memory_bytes,
                         target_hourly_price=None if hourly is None else hourly * share,
                         target_price_source=w.get("price_source"), saturated_minutes=n_sat, risk=risk,
                         evidence=text)
    return None


@strategy("share")
def share(w: Mapping, ctx: Context) -> Recommendation | None:
    """Several inference replicas each using a little of a GPU: time-slice them onto fewer GPUs."""
    s = ctx.settings
    need = needed_memory(w, s)
    gpu_mem = _num(w["gpu_memory_bytes"])
    replicas = _num(w["replicas"])
    if (w["workload_class"] != "inference" or w["mig_profile"] is not None or need is None or not gpu_mem
            or not util_known(w, s) or (_num(w["gpus_per_pod"]) or 1) != 1 or not replicas or replicas < 2):
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
    text = (f"{n} replicas each peak at p95 {_pct(p95)} of a GPU and use at most {_gib(_num(w['memory_max_bytes']))}; "
            f"{per_gpu} fit on one {w['gpu_model']} ({_gib(gpu_mem)}) with {s.headroom:.0%} memory headroom "
            f"and under {s.target_utilization:.0%} compute, so {gpus} GPU(s) instead of {n} (time-slicing or MPS). "
            + _figures(w))
    return _base(w, ctx, "share", 1.0 - gpus / n, target_gpu_model=w["gpu_model"], target_gpus_per_pod=gpus / n,
                 target_memory_bytes=gpu_mem / per_gpu, risk="medium", evidence=text)


# --------------------------------------------------------------------------- running


KEEPS_OR_RELEASES_WHOLE_GPUS = ("idle-pods", "reduce-count", "replicas", "schedule")


def is_safe(rec: Recommendation) -> bool:
    """The safety rule: a workload keeps at least the memory it was seen to use.

    ``idle`` releases GPUs that did no work at all, so it has no target memory to check;
    the types that keep or release whole GPUs of the same model need no memory reading.
    """
    if rec.type == "idle":
        return True
    if rec.observed_max_memory_bytes is None:
        return rec.type in KEEPS_OR_RELEASES_WHOLE_GPUS
    return rec.target_memory_bytes is not None and rec.target_memory_bytes >= rec.observed_max_memory_bytes


def prepare(rows: pd.DataFrame, window_hours: float, settings: Settings, stats: pd.DataFrame | None) -> pd.DataFrame:
    """The workload evidence with the per-pod idle-GPU counts the strategies read."""
    if stats is None:
        stats = workload_stats(rows, window_hours, settings)
    if stats.empty:
        return stats
    stats = stats.copy()
    stats["idle_gpus_per_pod"] = idle_devices_per_pod(stats, settings.idle_share)
    return stats


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
    stats = prepare(rows, window_hours, settings, stats)
    if stats.empty:
        return []
    ctx = Context(settings, catalog, window_hours, currency)
    chosen = [t for t in (types or STRATEGIES)]
    out: list[Recommendation] = []
    for w in _records(stats):
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


def _records(stats: pd.DataFrame) -> list[dict]:
    records = stats.to_dict("records")
    for w in records:
        if isinstance(w.get("mig_profile"), float):  # NaN from an all-missing column
            w["mig_profile"] = None
    return records


def workload_key(r) -> tuple:
    """The workload a recommendation (or a stats record) is about."""
    get = r.get if isinstance(r, dict) else lambda k: getattr(r, k)
    model = get("current_gpu_model") if not isinstance(r, dict) else get("gpu_model")
    mig_ = get("current_mig_profile") if not isinstance(r, dict) else get("mig_profile")
    return (get("team"), get("workload_class"), get("namespace"), get("workload_kind"), get("workload_name"),
            model, mig_)


def not_judged(stats: pd.DataFrame, recs: Iterable[Recommendation], settings: Settings,
               catalog: Catalog | None = None) -> list[dict]:
    """Workloads with no recommendation for a reason other than 'it uses what it holds'.

    One entry per such workload, largest cost first: its key, cost, GPU-hours and
    ``reason``. Reasons: too little history, utilisation unknown, memory never reported,
    priced at the default.
    """
    catalog = catalog or load_catalog()
    have = {workload_key(r) for r in recs}
    out = []
    for w in _records(stats) if not stats.empty else []:
        if workload_key(w) in have:
            continue
        reasons = []
        if float(w["gpu_hours"]) < settings.min_hours:
            reasons.append(f"too little history: {float(w['gpu_hours']):,.1f} GPU-hours in the window "
                           f"(needs {settings.min_hours:g})")
        else:
            known = float(w["util_known_share"]) if not math.isnan(float(w["util_known_share"])) else 0.0
            if known < settings.min_util_known_share:
                why = " (MIG slices report none)" if w["mig_profile"] is not None else ""
                reasons.append(f"utilisation unknown for {1 - known:.0%} of its GPU-time{why}: compute cannot be "
                               f"judged")
            if _num(w["memory_max_bytes"]) is None:
                reasons.append("memory never reported: no smaller GPU or slice can be checked")
            if _default_priced(w):
                reasons.append(f"priced at the default {float(w['hourly_price']):.2f}/GPU-h (no rate card or "
                               f"snapshot price for {w['gpu_model']}): a model change would compare against a "
                               f"placeholder")
        if reasons:
            out.append({"team": w["team"], "workload_class": w["workload_class"], "namespace": w["namespace"],
                        "workload_kind": w["workload_kind"], "workload_name": w["workload_name"],
                        "gpu_model": w["gpu_model"], "mig_profile": w["mig_profile"],
                        "gpu_hours": float(w["gpu_hours"]), "cost": float(w["cost"]), "reason": "; ".join(reasons)})
    # cost rounded to micro-units: equal costs summed in another order differ in their last bits,
    # and the order must not depend on how the engine added them up
    out.sort(key=lambda d: (-round(d["cost"], 6), str(d["namespace"]), str(d["workload_name"]), str(d["gpu_model"])))
    return out


def best_per_workload(recs: Iterable[Recommendation]) -> dict[tuple, Recommendation]:
    """The largest-saving recommendation of each workload (alternatives do not add up)."""
    best: dict[tuple, Recommendation] = {}
    for r in recs:
        key = workload_key(r)
        if key not in best or r.monthly_savings > best[key].monthly_savings:
            best[key] = r
    return best
