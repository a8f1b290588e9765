"""The weekly report as data: one model that every format (md, html, json, csv, FOCUS) renders.

Building the model is pure: ledger rows in, plain Python values out (dicts, lists,
the recommenders' frozen records). Nothing here formats text or touches files; the
formats in :mod:`recommenders.formats` do the one, ``agent/cmd_report.py`` the other.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

from recommenders.anomalies import DAY, MIN_HISTORY_DAYS, Anomaly, find_anomalies
from recommenders.catalog import Catalog, load_catalog
from recommenders.commitments import PoolPrices, PoolResult, commitment_plan, lookback
from recommenders.grouping import column_codes, group_ids
from recommenders.rightsizing import Recommendation, best_per_workload, not_judged, recommend, workload_key
from recommenders.settings import Settings
from recommenders.unit_costs import unit_costs
from recommenders import queries
from recommenders.workloads import KEY, allocated_mask, forget_evidence, workload_evidence, workload_ids

REPORT_VERSION = 2
UNALLOCATED = "(unallocated)"
UTIL_BUCKETS = (0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class Window:
    start: float
    end: float

    @property
    def hours(self) -> float:
        return max(self.end - self.start, 0.0) / 3600.0


@dataclass
class Report:
    """Everything the formats render; ``docs/report.md`` describes each part."""

    currency: str
    window: Window
    previous: Window
    requested_days: float
    totals: dict[str, float]
    previous_totals: dict[str, float]
    teams: list[dict[str, Any]]
    classes: list[dict[str, Any]]
    top_by_cost: list[dict[str, Any]]
    top_by_idle: list[dict[str, Any]]
    anomalies: list[Anomaly]
    recommendations: list[Recommendation]
    savings_by_type: dict[str, float]
    potential_monthly_savings: float
    commitments: list[PoolResult]
    commitment_window: Window
    daily_cost: dict[str, Any]
    utilization_histogram: list[dict[str, Any]]
    focus_rows: list[dict[str, Any]]
    settings: Settings
    notes: list[str] = field(default_factory=list)
    not_judged: list[dict[str, Any]] = field(default_factory=list)
    price_sources: list[dict[str, Any]] = field(default_factory=list)
    unit_costs: list[dict[str, Any]] = field(default_factory=list)
    history_days: float = 0.0  # from the ledger's first minute to the window's end
    energy_by_workload: list[dict[str, Any]] = field(default_factory=list)

    @property
    def has_previous(self) -> bool:
        return self.previous.hours > 0

    @property
    def anomalies_judged(self) -> bool:
        """Enough history before the window's last day for any entity to have a range."""
        return self.history_days >= MIN_HISTORY_DAYS + 1


def _figures(rows: pd.DataFrame) -> dict[str, float]:
    alloc = float(rows["allocated_gpu_seconds"].sum())
    unalloc = float(rows["unallocated_gpu_seconds"].sum())
    used = float(rows["used_gpu_seconds"].sum())
    unknown = float(rows["util_unknown_gpu_seconds"].sum())
    cost = float(rows["cost"].sum())
    unalloc_cost = float(rows["unallocated_cost"].sum())
    return {
        "capacity_gpu_hours": (alloc + unalloc) / 3600, "allocated_gpu_hours": alloc / 3600,
        "used_gpu_hours": used / 3600, "unallocated_gpu_hours": unalloc / 3600,
        "utilization": used / (alloc - unknown) if alloc - unknown > 0 else None,
        "cost": cost, "idle_cost": float(rows["idle_cost"].sum()), "unallocated_cost": unalloc_cost,
        "total_cost": cost + unalloc_cost,
        **{k: _energy_sum(rows, k) for k in ENERGY},
    }


ENERGY = ("energy_joules", "energy_cost", "carbon_grams")  # beside the cost (docs/energy.md)


def _energy_sum(rows: pd.DataFrame, column: str) -> float | None:
    """All rows' energy figure, or None when any is unknown (or the ledger predates them)."""
    if not len(rows):
        return 0.0
    return _known(float(_numbers(rows, column).sum()))


def _numbers(rows: pd.DataFrame, column: str) -> np.ndarray:
    """A column as floats; all NaN (unknown) where the rows lack it (history from
    Prometheus, which has no energy per row)."""
    if column in rows:
        return rows[column].to_numpy(np.float64)
    return np.full(len(rows), np.nan)


def _known(value: float) -> float | None:
    return None if value != value else value


def _by(rows: pd.DataFrame, column: str) -> pd.DataFrame:
    mask = rows["pod_uid"].notna().to_numpy()
    ids, keys = group_ids(rows, [column], mask)
    n = len(keys)

    def total(name: str) -> np.ndarray:
        return np.bincount(ids, weights=_numbers(rows, name)[mask], minlength=n)

    index = [("(none)" if v is None else v) for v in keys[column]]
    return pd.DataFrame({
        "gpu_hours": total("allocated_gpu_seconds") / 3600, "used_hours": total("used_gpu_seconds") / 3600,
        "unknown_hours": total("util_unknown_gpu_seconds") / 3600, "cost": total("cost"),
        "idle_cost": total("idle_cost"), **{k: total(k) for k in ENERGY},
    }, index=pd.Index(index, dtype=object))


WORKLOAD_ENERGY_KEY = ("team", "workload_class", "namespace", "workload_kind", "workload_name")


def workload_energy(rows: pd.DataFrame, top: int) -> list[dict[str, Any]]:
    """The ``top`` workloads by board energy: kWh, energy cost and carbon, each None where a
    row of the workload lacked it (unknown, never 0). Workloads with unknown energy come
    after the measured ones, ordered by name; ties are broken by name too."""
    if not len(rows) or "energy_joules" not in rows:
        return []
    mask = rows["pod_uid"].notna().to_numpy()
    if not mask.any():
        return []
    ids, keys = group_ids(rows, list(WORKLOAD_ENERGY_KEY), mask)
    n = len(keys)
    sums = {k: np.bincount(ids, weights=_numbers(rows, k)[mask], minlength=n) for k in ENERGY}
    out = [{**{c: keys[c].iloc[i] for c in WORKLOAD_ENERGY_KEY},
            **{k: _known(float(sums[k][i])) for k in ENERGY}} for i in range(n)]
    out.sort(key=lambda w: (w["energy_joules"] is None, -(w["energy_joules"] or 0.0),
                            *(str(w[c]) for c in WORKLOAD_ENERGY_KEY)))
    return out[:top]


def _change(now: float, before: float | None) -> tuple[float | None, float | None]:
    if before is None:
        return None, None
    return now - before, ((now - before) / before if before > 0 else None)


def team_table(current: pd.DataFrame, previous: pd.DataFrame) -> list[dict[str, Any]]:
    """Per-team showback with the change against the previous window, plus unallocated capacity."""
    now, before = _by(current, "team"), _by(previous, "team")
    out = []
    for team, r in now.sort_values("cost", ascending=False).iterrows():
        prev = float(before.loc[team, "cost"]) if team in before.index else None
        delta, pct = _change(float(r["cost"]), prev)
        known = r["gpu_hours"] - r["unknown_hours"]
        out.append({"team": team, "gpu_hours": float(r["gpu_hours"]), "used_gpu_hours": float(r["used_hours"]),
                    "utilization": float(r["used_hours"] / known) if known > 0 else None,
                    "cost": float(r["cost"]), "idle_cost": _idle_or_unknown(r),
                    "util_unknown_gpu_hours": float(r["unknown_hours"]),
                    "previous_cost": prev, "change": delta, "change_pct": pct,
                    **{k: _known(float(r[k])) for k in ENERGY}})
    unallocated_rows = current[current["pod_uid"].isna()] if len(current) else current
    un_now = float(current["unallocated_cost"].sum())
    un_prev = float(previous["unallocated_cost"].sum()) if len(previous) else None
    delta, pct = _change(un_now, un_prev)
    out.append({"team": UNALLOCATED, "gpu_hours": float(current["unallocated_gpu_seconds"].sum() / 3600),
                "used_gpu_hours": 0.0, "utilization": None, "cost": un_now, "idle_cost": un_now,
                "util_unknown_gpu_hours": 0.0,
                "previous_cost": un_prev, "change": delta, "change_pct": pct,
                **{k: _energy_sum(unallocated_rows, k) for k in ENERGY}})
    return out


def class_table(current: pd.DataFrame) -> list[dict[str, Any]]:
    """Training vs inference vs interactive (vs other), and unallocated capacity: GPU-hours,
    cost and share of the whole spend (so the shares add up to 100%)."""
    by = _by(current, "workload_class")
    unallocated = float(current["unallocated_cost"].sum())
    total = float(by["cost"].sum()) + unallocated
    out = [{"workload_class": c, "gpu_hours": float(r["gpu_hours"]), "cost": float(r["cost"]),
            "idle_cost": _idle_or_unknown(r), "share": float(r["cost"]) / total if total > 0 else 0.0,
            **{k: _known(float(r[k])) for k in ENERGY}}
           for c, r in by.sort_values("cost", ascending=False).iterrows()]
    if unallocated > 0 or float(current["unallocated_gpu_seconds"].sum()) > 0:
        out.append({"workload_class": UNALLOCATED, "gpu_hours": float(current["unallocated_gpu_seconds"].sum() / 3600),
                    "cost": unallocated, "idle_cost": unallocated,
                    "share": unallocated / total if total > 0 else 0.0,
                    **{k: _energy_sum(current[current["pod_uid"].isna()], k) for k in ENERGY}})
    return out


def _idle_or_unknown(r) -> float | None:
    """Idle cost, or None where utilisation was never reported (MIG): unknown is not 0."""
    if r["gpu_hours"] > 0 and r["unknown_hours"] >= r["gpu_hours"] - 1e-9:
        return None
    return float(r["idle_cost"])


def _workload_rows(stats: pd.DataFrame, column: str, top: int) -> list[dict[str, Any]]:
    if stats.empty:
        return []
    cols = [*KEY, "pods", "gpu_hours", "cost", "idle_cost", "util_p50", "util_p95", "memory_max_bytes",
            "gpu_memory_bytes", "active_share", "util_known_share"]
    # ties (two workloads that cost the same) are broken by name, so the table does not
    # depend on the order the ledger files were read in
    order = [column, *KEY]
    part = stats.sort_values(order, ascending=[False] + [True] * len(KEY), kind="stable").head(top)[cols]
    out = []
    for r in part.to_dict("records"):
        if not r[column] > 0:
            continue
        r = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        if not r.pop("util_known_share"):  # utilisation never reported (MIG): idle cost unknown, not 0
            r["idle_cost"] = None
        out.append(r)
    return out


def utilization_histogram(buckets: pd.DataFrame) -> list[dict[str, Any]]:
    """GPU-hours by utilisation bucket (0 exactly, then tenths), for allocated rows of known
    utilisation, then those of unknown utilisation (MIG or not); ``buckets`` is the result
    of :func:`recommenders.queries.utilization_buckets`."""
    per = np.zeros(11)
    unknown = {0: 0.0, 1: 0.0}
    for bucket, mig, seconds in zip(buckets["bucket"].astype(object), buckets["mig"], buckets["seconds"]):
        if pd.isna(bucket):
            unknown[int(mig)] += float(seconds)
        else:
            per[int(bucket)] += float(seconds)
    per /= 3600
    out = [{"bucket": "0%", "gpu_hours": float(per[0])}]
    out += [{"bucket": f"{(i - 1) * 10}–{i * 10}%", "gpu_hours": float(per[i])} for i in range(1, 11)]
    for label, mig in (("not reported (MIG)", 1), ("not reported", 0)):
        if unknown[mig] > 0:
            out.append({"bucket": label, "gpu_hours": unknown[mig] / 3600})
    return out


def _days(rows: pd.DataFrame) -> np.ndarray:
    """UTC day (days since the epoch) of each row, int32."""
    return (rows["minute"].to_numpy(np.int64) // DAY).astype(np.int32)


def daily_cost_by_team(rows: pd.DataFrame, start: float | None = None, end: float | None = None) -> dict[str, Any]:
    """Cost per UTC day and team (unallocated capacity as its own series).

    ``partial`` marks the days the data ``[start, end)`` (default: the rows' first minute
    to one minute past their last) does not cover whole, so a short first or last day is
    not read as a drop in spend.
    """
    allocated = rows["pod_uid"].notna().to_numpy()
    ids, keys = group_ids(rows, ["team"], extra={"day": _days(rows), "allocated": allocated.view(np.int8)})
    cost = np.bincount(ids, weights=rows["cost"].to_numpy(np.float64) + rows["unallocated_cost"].to_numpy(np.float64),
                       minlength=len(keys))
    team = [UNALLOCATED if not a else ("(none)" if t is None else t) for t, a in zip(keys["team"], keys["allocated"])]
    table = pd.DataFrame({"day": keys["day"].astype(np.int64), "team": team, "cost": cost})
    table = table.groupby(["day", "team"])["cost"].sum().unstack(fill_value=0.0)
    table = table[table.sum().sort_values(ascending=False).index]
    days = [pd.Timestamp(int(d) * DAY, unit="s", tz="UTC").strftime("%Y-%m-%d") for d in table.index]
    minute = rows["minute"].to_numpy(np.int64)
    lo = float(minute.min()) if start is None and len(minute) else (start or 0.0)
    hi = float(minute.max()) + 60 if end is None and len(minute) else (end or 0.0)
    partial = [bool(int(d) * DAY < lo or (int(d) + 1) * DAY > hi) for d in table.index]
    return {"days": days, "partial": partial, "teams": {str(t): [float(x) for x in table[t]] for t in table.columns}}


def focus_rows(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per UTC day × team × workload (and GPU model, region), plus unallocated capacity."""
    allocated = rows["pod_uid"].notna().to_numpy()
    cols = ["team", "workload_class", "namespace", "workload_kind", "workload_name", "gpu_model", "region"]
    ids, keys = group_ids(rows, cols, extra={"day": _days(rows), "allocated": allocated.view(np.int8)})
    n = len(keys)
    f = {c: rows[c].to_numpy(np.float64) for c in ("allocated_gpu_seconds", "unallocated_gpu_seconds", "cost",
                                                       "idle_cost", "unallocated_cost")}
    keys["gpu_seconds"] = np.bincount(ids, weights=f["allocated_gpu_seconds"] + f["unallocated_gpu_seconds"], minlength=n)
    keys["cost"] = np.bincount(ids, weights=f["cost"] + f["unallocated_cost"], minlength=n)
    keys["idle_cost"] = np.bincount(ids, weights=f["idle_cost"] + f["unallocated_cost"], minlength=n)
    out = []
    for r in keys.to_dict("records"):
        alloc = bool(r.pop("allocated"))
        for c in cols:
            r[c] = r[c] if r[c] is not None else ""
        if not alloc:
            r.update(team=UNALLOCATED, workload_class="", namespace="", workload_kind="", workload_name="")
        elif not r["team"]:
            r["team"] = "(none)"
        out.append(r)
    merged: dict[tuple, dict[str, Any]] = {}
    for r in out:  # unallocated rows of several workload keys collapse into one per day, model, region
        key = (r["day"], r["team"], r["workload_class"], r["namespace"], r["workload_kind"], r["workload_name"],
               r["gpu_model"], r["region"])
        if key in merged:
            for c in ("gpu_seconds", "cost", "idle_cost"):
                merged[key][c] += r[c]
        else:
            merged[key] = r
    return [merged[k] for k in sorted(merged, key=lambda k: tuple(str(x) for x in k))]


@dataclass(frozen=True)
class Freed:
    """Per ledger row, the share of its allocated time right-sizing would give back, and which
    recommendation (an index into ``labels``, -1 for none) gives it back."""

    share: np.ndarray
    by: np.ndarray
    labels: tuple[str, ...]


def freed_shares(rows: pd.DataFrame, recs: Sequence[Recommendation]) -> np.ndarray:
    """Per ledger row, the share of its allocated time the best recommendation of its workload frees."""
    return freed_by_recommendation(rows, recs).share


def freed_by_recommendation(rows: pd.DataFrame, recs: Sequence[Recommendation]) -> Freed:
    """:class:`Freed` for the best recommendation of each workload (alternatives do not add up)."""
    freed = np.zeros(len(rows))
    by = np.full(len(rows), -1, np.int32)
    best = best_per_workload(recs)
    chosen = sorted(best.values(), key=lambda r: (-r.monthly_savings, str(r.namespace), str(r.workload_name)))
    labels = tuple(f"{r.type} {r.namespace}/{r.workload_name}" for r in chosen)
    if not best or len(rows) == 0:
        return Freed(freed, by, labels)
    mask = allocated_mask(rows)
    if not mask.any():
        return Freed(freed, by, labels)
    wid, keys = workload_ids(rows, mask)
    index = {workload_key(r): i for i, r in enumerate(chosen)}

    def share(rec: Recommendation) -> float:
        # a downsized workload leaves its current pool altogether (it moves to another GPU)
        return 1.0 if rec.type == "downsize-model" else rec.freed_share

    per_key = [index.get(tuple(r), -1) for r in keys[list(KEY)].itertuples(index=False)]
    per_key_share = np.array([share(chosen[i]) if i >= 0 else 0.0 for i in per_key])
    freed[mask] = per_key_share[wid]
    by[mask] = np.array(per_key, np.int32)[wid]
    return Freed(freed, by, labels)


def price_source_table(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Spend (pods' and unallocated) by the price source that priced it, largest first."""
    if "price_source" not in rows or len(rows) == 0:
        return []
    code, names = column_codes(rows["price_source"])
    money = rows["cost"].to_numpy(np.float64) + rows["unallocated_cost"].to_numpy(np.float64)
    per = np.bincount(code, weights=money, minlength=len(names))
    total = float(per.sum())
    # rounded to cents and parts per million: the sums' last digits depend on the order the
    # ledger files were read in, and the report must not
    out = [{"source": "(none)" if names[i] is None else str(names[i]), "cost": round(float(per[i]), 2),
            "share": round(float(per[i]) / total, 6) if total > 0 else 0.0} for i in range(len(names)) if per[i] > 0]
    return sorted(out, key=lambda d: (-d["cost"], d["source"]))


class Ledger(Protocol):
    """Where the report's queries run: the view ``ledger`` narrowed to a window, and a query's
    (small) result. :class:`recommenders.sqlframe.FrameLedger` (rows in memory) and
    :class:`recommenders.dataset.Engine` (a gathered dataset) are two."""

    def window(self, start: float, end: float, allow_empty: bool = False) -> Any: ...

    def sql(self, text: str, categorical: Sequence[str] = ()) -> pd.DataFrame: ...

    def materialize(self, name: str, text: str) -> None: ...

    def forget(self, name: str) -> None: ...


def build_report(
    rows: pd.DataFrame, end: float, since_s: float, currency: str, first_minute: float,
    settings: Settings | None = None, catalog: Catalog | None = None,
    pool_prices: Sequence[PoolPrices] = (), spot_hourly: Mapping[tuple, float] | None = None,
) -> Report:
    """:func:`report_from` of ledger rows in memory. ``rows`` must reach back to the earliest
    of the previous window and the commitment look-back (``settings.commitment_days``)."""
    from recommenders.sqlframe import FrameLedger

    with FrameLedger(rows) as ledger:
        return report_from(ledger, end, since_s, currency, first_minute, settings, catalog, pool_prices, spot_hourly)


HOUR_COLUMNS = ("minute", *queries.HOUR_KEY, "pod_uid", "gpu_hourly_price", *queries.HOUR_SUMS, *queries.HOUR_KNOWN_SUMS)


def _no_hours() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object if c in queries.HOUR_KEY or c == "pod_uid" else np.float64)
                         for c in HOUR_COLUMNS})


def hour_windows(ledger: Ledger, windows: Sequence[Window]) -> list[pd.DataFrame]:
    """The hour rows (:func:`recommenders.queries.hour_rows`) of each window, in one pass over
    the rows of them all: the windows' starts and ends cut the rows into parts, and each
    window's rows are the parts it covers (an hour cut by a window's edge is split there,
    as that window's own pass would cut it)."""
    live = [w for w in windows if w.end > w.start]
    if not live:
        return [_no_hours() for _ in windows]
    cuts = sorted({int(t) for w in live for t in (w.start, w.end)})
    ledger.window(cuts[0], cuts[-1], allow_empty=True)
    # the names as categoricals, as a ledger file's rows are held: a few names, codes per row
    rows = ledger.sql(queries.hour_rows(cuts[1:-1]), categorical=(*queries.HOUR_KEY, "pod_uid"))
    part = rows["part"].to_numpy(np.int64)
    rows = rows.drop(columns="part")
    out = []
    for w in windows:
        if w.end <= w.start:
            out.append(_no_hours())
            continue
        # part i holds [cuts[i], cuts[i + 1]) (the view starts at cuts[0])
        first, last = cuts.index(int(w.start)), cuts.index(int(w.end))
        if first == 0 and last == len(cuts) - 1:
            out.append(rows)  # every part: the frame itself, not a copy (the report's functions do not modify it)
        else:
            out.append(rows[(part >= first) & (part < last)].reset_index(drop=True))
    return out


def report_from(
    ledger: Ledger, end: float, since_s: float, currency: str, first_minute: float,
    settings: Settings | None = None, catalog: Catalog | None = None,
    pool_prices: Sequence[PoolPrices] = (), spot_hourly: Mapping[tuple, float] | None = None,
) -> Report:
    """The report for the window ``[end − since, end)`` and the one before it, from queries.

    The workload evidence and the utilisation histogram are queries over the window's
    rows; every sum runs on the hour rows of the window, of the one before it and of the
    commitment look-back (``settings.commitment_days``), each a query. ``first_minute``
    is the ledger's first minute, so a window that starts before the data is measured
    from the data.
    """
    settings = settings or Settings()
    catalog = catalog or load_catalog()
    current = Window(max(end - since_s, first_minute), end)
    previous = Window(max(end - 2 * since_s, first_minute), current.start)
    commit = Window(*lookback(first_minute, end, settings.commitment_days))
    hours = current.hours
    ledger.window(current.start, end, allow_empty=True)
    stats = workload_evidence(ledger, hours, settings)
    histogram = utilization_histogram(ledger.sql(queries.utilization_buckets()) if len(stats)
                                      else pd.DataFrame({"bucket": [], "mig": [], "seconds": []}))
    forget_evidence(ledger)
    # commitment_plan counts whole hours before commit.end
    cur_rows, prev_rows, commit_rows = hour_windows(ledger, [current, previous, commit])
    recent = pd.concat([prev_rows, cur_rows], ignore_index=True) if len(prev_rows) else cur_rows
    recs = recommend(cur_rows, hours, currency, settings, catalog, stats=stats)
    best = best_per_workload(recs)
    by_type: dict[str, float] = {}
    for r in best.values():
        by_type[r.type] = by_type.get(r.type, 0.0) + r.monthly_savings
    freed = freed_by_recommendation(commit_rows, recs)
    plan = commitment_plan(commit_rows, pool_prices, commit.start, commit.end, freed=freed.share,
                           spot_hourly=spot_hourly, freed_by=freed.by, freed_labels=freed.labels,
                           min_history_days={1: settings.commitment_min_days_1y, 3: settings.commitment_min_days_3y})
    notes = []
    if current.hours < since_s / 3600 - 1e-9:
        notes.append(f"The ledger starts {current.hours:.1f} h before its end, so this window is shorter than "
                     f"the {since_s / 86400:g} days asked for; savings are projected from what was seen.")
    if previous.hours <= 0:
        notes.append("No ledger data before this window: there is no previous window to compare with.")
    if commit.hours < settings.commitment_days * 24 - 1e-9:
        notes.append(f"Commitments are judged on {max(commit.hours, 0.0) / 24:.1f} days of history (the look-back asks "
                     f"for {settings.commitment_days:g}); a term is recommended only with {settings.commitment_min_days_1y:g} "
                     f"days (1 year) or {settings.commitment_min_days_3y:g} days (3 years) of a pool's history.")
    if not pool_prices:
        notes.append("No commitment prices: add a `commitments` section to the rate card (--rates) to see what "
                     "reserved capacity would save; pools are listed with their usage only.")
    sources = price_source_table(cur_rows)
    default = sum(p["share"] for p in sources if p["source"] == "default")
    if default > 0:
        notes.append(f"{default:.0%} of the spend was priced at the default price (no rate card or snapshot entry "
                     "matched): give a rate card (--rates) so costs and savings are real; model changes are not "
                     "offered where the saving would rest on that placeholder.")
    return Report(
        currency=currency, window=current, previous=previous, requested_days=since_s / DAY,
        totals=_figures(cur_rows), previous_totals=_figures(prev_rows) if len(prev_rows) else {},
        teams=team_table(cur_rows, prev_rows), classes=class_table(cur_rows),
        top_by_cost=_workload_rows(stats, "cost", settings.top), top_by_idle=_workload_rows(stats, "idle_cost", settings.top),
        anomalies=find_anomalies(recent, current.start, settings),
        recommendations=recs, savings_by_type=by_type,
        potential_monthly_savings=float(sum(r.monthly_savings for r in best.values())),
        commitments=plan, commitment_window=commit,
        daily_cost=daily_cost_by_team(recent, max(previous.start, first_minute), end),
        utilization_histogram=histogram, focus_rows=focus_rows(cur_rows),
        settings=settings, notes=notes, not_judged=not_judged(stats, recs, settings, catalog),
        price_sources=sources, history_days=(end - first_minute) / DAY,
        unit_costs=unit_costs(cur_rows, prev_rows, settings.anomaly_factor),
        energy_by_workload=workload_energy(cur_rows, settings.top),
    )


def to_plain(value: Any) -> Any:
    """Dataclasses, numpy scalars and NaN as JSON-ready values (for the JSON format and tests)."""
    if hasattr(value, "__dataclass_fields__"):
        return {k: to_plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return None if math.isnan(v) or math.isinf(v) else v
    return value
