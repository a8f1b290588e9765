"""The report's SQL, in one place, over one view named ``ledger``.

The history engine (:mod:`recommenders.dataset`: embedded DuckDB today, Spark later)
defines ``ledger`` as the rows of the report's window, with ``minute`` as Unix seconds
(BIGINT), the ledger's other columns as they are (``docs/ledger.md``). How the view is
made (which files, which partitions, the minute filter) is the engine's business; the
queries here are plain standard SQL that both DuckDB and Spark SQL accept: no
``GROUP BY ALL``, no ``*`` modifiers, integer division as ``CAST(FLOOR(x / n) AS
BIGINT)``, percentiles as the ordered-set aggregate ``PERCENTILE_CONT(q) WITHIN GROUP
(ORDER BY x)``, which interpolates linearly between the two nearest ranks: numpy's (and
so :mod:`recommenders.quantiles`') default definition.

Each query is a function returning the text, so a column list or a percentile can be
filled in without string formatting at the call site.
"""

from __future__ import annotations

from typing import Sequence

from recommenders.workloads import KEY

DAY = 86400


def _names(columns: Sequence[str]) -> str:
    for c in columns:
        if not c.isidentifier():  # only ledger column names ever come here
            raise ValueError(f"not a column name: {c!r}")
    return ", ".join(columns)


def bounds() -> str:
    """The first minute, the last minute and the row count of ``ledger``."""
    return "SELECT MIN(minute) AS first_minute, MAX(minute) AS last_minute, COUNT(*) AS row_count FROM ledger"


def rows(columns: Sequence[str]) -> str:
    """The window's rows, only the columns asked for (the report's pandas path)."""
    return f"SELECT {_names(columns)} FROM ledger"


def scan(columns: Sequence[str]) -> str:
    """Touch every value of the columns and return one row: what merely reading them costs
    (the benchmark's baseline)."""
    _names(columns)
    return "SELECT COUNT(*), " + ", ".join(f"COUNT({c})" for c in columns) + " FROM ledger"


def daily_team_cost() -> str:
    """Spend (pods' cost and unallocated cost) per UTC day (days since the epoch), team and
    whether the row was held by a pod: what :func:`recommenders.report.daily_cost_by_team`
    adds up."""
    return (
        "SELECT CAST(FLOOR(minute / 86400) AS BIGINT) AS day, team, "
        "CASE WHEN pod_uid IS NULL THEN 0 ELSE 1 END AS allocated, "
        "SUM(cost + unallocated_cost) AS cost "
        "FROM ledger "
        "GROUP BY CAST(FLOOR(minute / 86400) AS BIGINT), team, CASE WHEN pod_uid IS NULL THEN 0 ELSE 1 END"
    )


def team_sums() -> str:
    """Per team (pods only): GPU-seconds held, cost, idle cost, of the window's rows."""
    return (
        "SELECT team, SUM(allocated_gpu_seconds) AS allocated_gpu_seconds, SUM(cost) AS cost, "
        "SUM(idle_cost) AS idle_cost FROM ledger WHERE pod_uid IS NOT NULL GROUP BY team"
    )


def workload_percentiles(quantiles: Sequence[float] = (0.95, 0.99)) -> str:
    """Per workload (:data:`recommenders.workloads.KEY`), over its rows held by a pod with
    known utilisation: percentiles of the minute peak (``util_peak``, the minute's mean
    where a 1.0 ledger lacks it) and, over all its held rows, of the memory peak; the
    same figures :func:`recommenders.workloads.workload_stats` derives (``util_p95``,
    ``util_p99``, ``memory_p99_bytes``)."""
    key = _names(KEY)
    held = "pod_uid IS NOT NULL AND allocated_gpu_seconds > 0"
    known = f"{held} AND util_unknown_gpu_seconds <= 0"
    peak = "COALESCE(util_peak, used_gpu_seconds / allocated_gpu_seconds)"
    parts = []
    for q in quantiles:
        tag = f"{round(q * 100):02d}"
        parts.append(f"PERCENTILE_CONT({float(q)!r}) WITHIN GROUP (ORDER BY CASE WHEN {known} THEN {peak} END) "
                     f"AS util_p{tag}")
        parts.append(f"PERCENTILE_CONT({float(q)!r}) WITHIN GROUP (ORDER BY memory_used_max_bytes) "
                     f"AS memory_p{tag}_bytes")
    return (f"SELECT {key}, SUM(allocated_gpu_seconds) / 3600.0 AS gpu_hours, {', '.join(parts)} "
            f"FROM ledger WHERE {held} GROUP BY {key}")


# --------------------------------------------------------------------------- workload evidence
#
# What :func:`recommenders.workloads.workload_stats` reads, per workload (KEY), over the
# rows a pod held. "known": the row's utilisation was reported. A row's peak is its
# highest sample's utilisation, the minute's mean where a 1.0 ledger lacks it (rounded to
# the column's float32, as the ledger holds it). Distributions over minutes (peaks,
# per-minute demand, requests per second) come back counted, as (value, minutes) pairs:
# a few dozen distinct values per workload where the rows are tens of thousands.

HELD = "pod_uid IS NOT NULL AND allocated_gpu_seconds > 0"
KNOWN = "util_unknown_gpu_seconds <= 0"
MEAN = "used_gpu_seconds / allocated_gpu_seconds"
PEAK = f"CAST(COALESCE(util_peak, CAST({MEAN} AS FLOAT)) AS DOUBLE)"
BUSY = f"CASE WHEN {KNOWN} THEN COALESCE(CAST(util_peak AS DOUBLE), {MEAN}) ELSE 1.0 END"


def _key() -> str:
    return _names(KEY)


def local_seconds(spans: Sequence[tuple[int, int]] = ((0, 0),)) -> str:
    """``minute`` shifted to local time: ``spans`` are (from, offset) pairs of
    :func:`recommenders.clock.offset_spans`, so a daylight-saving change inside the window
    is one more branch of a CASE, in any engine's SQL."""
    if len(spans) == 1:
        return f"(minute + {int(spans[0][1])})"
    branches = " ".join(f"WHEN minute < {int(nxt)} THEN minute + {int(off)}"
                        for (_, off), (nxt, _) in zip(spans, spans[1:]))
    return f"(CASE {branches} ELSE minute + {int(spans[-1][1])} END)"


def hour_of_day(spans: Sequence[tuple[int, int]] = ((0, 0),)) -> str:
    return f"(CAST(FLOOR({local_seconds(spans)} / 3600) AS BIGINT) % 24)"


def hour_of_week(spans: Sequence[tuple[int, int]] = ((0, 0),)) -> str:
    """0 = Monday 00:00 … 167 = Sunday 23:00 local (1970-01-01 was a Thursday)."""
    local = local_seconds(spans)
    return (f"(((CAST(FLOOR({local} / 86400) AS BIGINT) + 3) % 7) * 24 "
            f"+ CAST(FLOOR(({local} % 86400) / 3600) AS BIGINT))")


def workload_sums() -> str:
    """Per workload: GPU-seconds held, known, active and idle, cost, memory, pods, and the
    percentiles of memory peaks, minute means and minute peaks."""
    idle = f"{KNOWN} AND active_gpu_seconds <= 0"
    known_peak = f"CASE WHEN {KNOWN} THEN {PEAK} END"
    return (
        f"SELECT {_key()}, SUM(allocated_gpu_seconds) AS held_seconds, SUM(cost) AS cost, "
        f"SUM(idle_cost) AS idle_cost, "
        f"SUM(CASE WHEN {KNOWN} THEN allocated_gpu_seconds ELSE 0 END) AS known_seconds, "
        f"SUM(CASE WHEN {KNOWN} THEN active_gpu_seconds ELSE 0 END) AS active_seconds, "
        f"SUM(CASE WHEN {idle} THEN allocated_gpu_seconds ELSE 0 END) AS idle_seconds, "
        f"MAX(CASE WHEN {idle} THEN CAST(memory_used_max_bytes AS DOUBLE) END) AS idle_memory_max_bytes, "
        f"MAX(CAST(gpu_memory_total_bytes AS DOUBLE)) AS gpu_memory_bytes, "
        f"SUM(CASE WHEN price_source = 'default' THEN cost ELSE 0 END) AS default_cost, "
        f"COUNT(DISTINCT pod_uid) AS pods, "
        f"PERCENTILE_CONT(0.99) WITHIN GROUP (ORDER BY CAST(memory_used_max_bytes AS DOUBLE)) AS memory_p99_bytes, "
        f"MAX(CAST(memory_used_max_bytes AS DOUBLE)) AS memory_max_bytes, "
        f"PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY CASE WHEN {KNOWN} THEN {MEAN} END) AS util_p50, "
        f"PERCENTILE_CONT(0.95) WITHIN GROUP (ORDER BY {known_peak}) AS util_p95, "
        f"PERCENTILE_CONT(0.99) WITHIN GROUP (ORDER BY {known_peak}) AS util_p99, "
        f"MAX({known_peak}) AS util_max "
        f"FROM ledger WHERE {HELD} GROUP BY {_key()}")


def workload_peaks() -> str:
    """Per workload, its known minute peaks counted: (peak, minutes)."""
    return (f"SELECT {_key()}, {PEAK} AS value, COUNT(*) AS n FROM ledger WHERE {HELD} AND {KNOWN} "
            f"GROUP BY {_key()}, {PEAK}")


def workload_price_sources() -> str:
    """Per workload and price source, the cost it priced."""
    return (f"SELECT {_key()}, price_source, SUM(cost) AS cost FROM ledger WHERE {HELD} "
            f"GROUP BY {_key()}, price_source")


def workload_pods() -> str:
    """Per workload and pod (by name): GPU-seconds held, known and idle, cost, memory peak."""
    return (
        f"SELECT {_key()}, pod, SUM(allocated_gpu_seconds) AS held_seconds, "
        f"SUM(CASE WHEN {KNOWN} THEN allocated_gpu_seconds ELSE 0 END) AS known_seconds, "
        f"SUM(CASE WHEN {KNOWN} AND active_gpu_seconds <= 0 THEN allocated_gpu_seconds ELSE 0 END) AS idle_seconds, "
        f"SUM(cost) AS cost, MAX(CAST(memory_used_max_bytes AS DOUBLE)) AS memory_max_bytes "
        f"FROM ledger WHERE {HELD} AND pod IS NOT NULL GROUP BY {_key()}, pod")


_POD_MINUTES = f"SELECT {_names(KEY)}, pod_uid, minute, COUNT(*) AS gpus FROM ledger WHERE {HELD} GROUP BY {_names(KEY)}, pod_uid, minute"


def workload_gpus_per_pod() -> str:
    """Per workload, the median over its pods of the most GPUs a pod held at once."""
    return (f"WITH pm AS ({_POD_MINUTES}), pods AS (SELECT {_key()}, pod_uid, MAX(gpus) AS gpus FROM pm "
            f"GROUP BY {_key()}, pod_uid) "
            f"SELECT {_key()}, PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY gpus) AS gpus_per_pod FROM pods "
            f"GROUP BY {_key()}")


def workload_replicas() -> str:
    """Per workload, over the minutes it held GPUs: pods at once (median, mean), minutes, first and last."""
    return (f"WITH pm AS ({_POD_MINUTES}), wm AS (SELECT {_key()}, minute, COUNT(*) AS pods FROM pm "
            f"GROUP BY {_key()}, minute) "
            f"SELECT {_key()}, PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY pods) AS replicas, "
            f"SUM(pods) AS pod_minutes, COUNT(*) AS minutes, MIN(minute) AS first_minute, "
            f"MAX(minute) AS last_minute FROM wm GROUP BY {_key()}")


def multi_gpu_pod_devices() -> str:
    """Per device of each pod that held two GPUs or more at once: GPU-seconds known and idle, memory peak."""
    return (f"WITH pm AS ({_POD_MINUTES}), multi AS (SELECT pod_uid AS multi_pod FROM pm GROUP BY pod_uid "
            f"HAVING MAX(gpus) >= 2) "
            f"SELECT {_key()}, pod_uid, device_uuid, "
            f"SUM(CASE WHEN {KNOWN} THEN allocated_gpu_seconds ELSE 0 END) AS known_seconds, "
            f"SUM(CASE WHEN {KNOWN} AND active_gpu_seconds <= 0 THEN allocated_gpu_seconds ELSE 0 END) AS idle_seconds, "
            f"MAX(CAST(memory_used_max_bytes AS DOUBLE)) AS memory_max_bytes "
            f"FROM ledger JOIN multi ON pod_uid = multi_pod WHERE {HELD} "
            f"GROUP BY {_key()}, pod_uid, device_uuid")


def workload_shared_seconds() -> str:
    """Per workload, the GPU-seconds it held on a device another pod held in the same minute
    (only devices that more than one pod held are looked at minute by minute)."""
    return (f"WITH shared AS (SELECT device_uuid AS shared_device FROM ledger WHERE {HELD} GROUP BY device_uuid "
            f"HAVING COUNT(DISTINCT pod_uid) > 1), "
            f"crowded AS (SELECT device_uuid AS crowded_device, minute AS crowded_minute FROM ledger "
            f"JOIN shared ON device_uuid = shared_device WHERE {HELD} GROUP BY device_uuid, minute HAVING COUNT(*) > 1) "
            f"SELECT {_key()}, SUM(allocated_gpu_seconds) AS shared_seconds "
            f"FROM ledger JOIN crowded ON device_uuid = crowded_device AND minute = crowded_minute "
            f"WHERE {HELD} GROUP BY {_key()}")


_DEMAND = f"SELECT {_names(KEY)}, minute, SUM({BUSY}) AS demand FROM ledger WHERE {HELD} GROUP BY {_names(KEY)}, minute"


def workload_demand() -> str:
    """Per workload, its per-minute demand (busy GPU-equivalents of all its pods) counted."""
    return f"WITH d AS ({_DEMAND}) SELECT {_key()}, demand AS value, COUNT(*) AS n FROM d GROUP BY {_key()}, demand"


def workload_demand_by_hour(q: float = 0.95, spans: Sequence[tuple[int, int]] = ((0, 0),)) -> str:
    """Per workload and local hour of the day, the ``q`` quantile of its per-minute demand."""
    return (f"WITH d AS ({_DEMAND}) SELECT {_key()}, {hour_of_day(spans)} AS hour, "
            f"PERCENTILE_CONT({float(q)!r}) WITHIN GROUP (ORDER BY demand) AS demand FROM d "
            f"GROUP BY {_key()}, {hour_of_day(spans)}")


def workload_requests() -> str:
    """Per workload, its requests per second in each minute its servers counted, counted."""
    return (f"WITH r AS (SELECT {_key()}, minute, SUM(requests) / 60.0 AS rps FROM ledger "
            f"WHERE {HELD} AND requests IS NOT NULL GROUP BY {_key()}, minute) "
            f"SELECT {_key()}, rps AS value, COUNT(*) AS n FROM r GROUP BY {_key()}, rps")


def workload_replica_capacity(target: float = 0.7) -> str:
    """Per workload, the most requests per second one pod served in a minute whose highest
    known peak stayed at or under ``target`` (a pod's requests are on its rows, its peak
    the highest of its GPUs')."""
    peak = f"COALESCE(CAST(util_peak AS DOUBLE), used_gpu_seconds / GREATEST(allocated_gpu_seconds, 1e-12))"
    return (f"WITH pm AS (SELECT {_key()}, pod_uid, minute, SUM(COALESCE(requests, 0)) AS requests, "
            f"MAX(CASE WHEN {KNOWN} THEN {peak} END) AS peak FROM ledger WHERE {HELD} "
            f"GROUP BY {_key()}, pod_uid, minute) "
            f"SELECT {_key()}, MAX(requests / 60.0) AS rps_capacity FROM pm WHERE peak <= {float(target)!r} "
            f"GROUP BY {_key()}")


def workload_week(spans: Sequence[tuple[int, int]] = ((0, 0),)) -> str:
    """Per workload and local hour of the week: GPU-seconds held, active (known), known, and cost."""
    how = hour_of_week(spans)
    return (f"SELECT {_key()}, {how} AS hour, SUM(allocated_gpu_seconds) AS held, "
            f"SUM(CASE WHEN {KNOWN} THEN active_gpu_seconds ELSE 0 END) AS active, "
            f"SUM(CASE WHEN {KNOWN} THEN allocated_gpu_seconds ELSE 0 END) AS known, SUM(cost) AS cost "
            f"FROM ledger WHERE {HELD} GROUP BY {_key()}, {how}")


def held_minutes() -> str:
    """The first and last minute held by any pod, and whether any server counted requests."""
    return (f"SELECT MIN(minute) AS first_minute, MAX(minute) AS last_minute, COUNT(requests) AS counted "
            f"FROM ledger WHERE {HELD}")


# --------------------------------------------------------------------------- hour rows
#
# The report's sums (totals, teams, classes, daily cost, FOCUS, price sources, energy,
# anomalies, unit costs, commitment pools) add ledger columns up by day or hour and by
# string attributes, never by pod or minute. So the engine adds each device's rows of an
# hour up first, into rows of the ledger's own shape (``minute`` the hour's start,
# ``pod_uid`` only "held or not"), sixty times fewer at one-minute samples, and the
# sums run on those. A null-able sum stays null where any of its rows was (energy not
# measured), and a count is null where none was counted, as the ledger's own merge does.

HOUR_KEY = ("node", "device_uuid", "parent_uuid", "mig_profile", "gpu_model", "namespace", "team", "workload_class",
            "workload_kind", "workload_name", "instance_type", "region", "zone", "capacity_type", "price_source")
HOUR_SUMS = ("allocated_gpu_seconds", "unallocated_gpu_seconds", "used_gpu_seconds", "util_unknown_gpu_seconds",
             "active_gpu_seconds", "cost", "idle_cost", "unallocated_cost", "samples", "requests", "input_tokens",
             "output_tokens")
HOUR_KNOWN_SUMS = ("energy_joules", "energy_cost", "carbon_grams")


def hour_rows() -> str:
    """Each hour's rows of a device and a workload (pods' or unallocated) added up, with the
    ledger's column names; ``gpu_hourly_price`` weighted by the GPU-seconds it priced."""
    hour = "CAST(FLOOR(minute / 3600) AS BIGINT) * 3600"
    held = "CASE WHEN pod_uid IS NULL THEN NULL ELSE 'held' END"
    seconds = "allocated_gpu_seconds + unallocated_gpu_seconds"
    keys = _names(HOUR_KEY)
    return (
        f"SELECT {hour} AS minute, {keys}, {held} AS pod_uid, "
        f"COALESCE(SUM(gpu_hourly_price * ({seconds})) / NULLIF(SUM({seconds}), 0), 0) AS gpu_hourly_price, "
        + ", ".join(f"SUM({c}) AS {c}" for c in HOUR_SUMS) + ", "
        + ", ".join(f"CASE WHEN COUNT({c}) = COUNT(*) THEN SUM({c}) END AS {c}" for c in HOUR_KNOWN_SUMS) + ", "
        f"MAX(gpu_memory_total_bytes) AS gpu_memory_total_bytes, MAX(memory_used_max_bytes) AS memory_used_max_bytes "
        f"FROM ledger GROUP BY {hour}, {keys}, {held}")


def utilization_buckets() -> str:
    """GPU-seconds held by pods per utilisation bucket (0: exactly idle, 1–10: tenths) for rows
    of known utilisation, and per MIG or not for rows of unknown utilisation (bucket NULL)."""
    bucket = (f"CASE WHEN {KNOWN} THEN GREATEST(0, LEAST(10, CAST(CEIL({MEAN} * 10 - 1e-9) AS BIGINT))) END")
    mig = "CASE WHEN mig_profile IS NULL THEN 0 ELSE 1 END"
    return (f"SELECT {bucket} AS bucket, {mig} AS mig, SUM(allocated_gpu_seconds) AS seconds FROM ledger "
            f"WHERE {HELD} GROUP BY {bucket}, {mig}")
