"""The report's SQL, in one place, over one view named ``ledger``.

The engine (:mod:`recommenders.dataset`: embedded DuckDB over a gathered dataset;
:mod:`recommenders.sqlframe`: DuckDB over rows in memory; :mod:`recommenders.spark_engine`:
Spark) defines ``ledger`` as the rows of the report's window, with ``minute`` as Unix seconds
(BIGINT), the ledger's other columns as they are (``docs/ledger.md``). How the view is
made (which files, which partitions, the minute filter) is the engine's business; the
queries here are plain standard SQL that both DuckDB and Spark SQL accept: no
``GROUP BY ALL``, no ``*`` modifiers, integer division as ``CAST(FLOOR(x / n) AS
BIGINT)``, percentiles from the values counted and a running sum (:func:`counted_quantiles`,
which spills to disk), interpolated linearly between the two nearest ranks as
``PERCENTILE_CONT`` does: numpy's (and so :mod:`recommenders.quantiles`') default
definition.

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


# --------------------------------------------------------------------------- workload evidence
#
# What :func:`recommenders.workloads.workload_evidence` reads, per workload (KEY), over
# the rows a pod held. "known": the row's utilisation was reported. A row's peak is its
# highest sample's utilisation, the minute's mean where a 1.0 ledger lacks it (as the
# float32 the report holds readings in). Distributions over minutes (peaks, per-minute
# demand, requests per second) come back counted, as (value, minutes) pairs: a few dozen
# distinct values per workload where the rows are tens of thousands.
#
# Most figures group by workload and pod or minute, so the window's held rows are first
# put in a table of their own (:func:`held_table`, which the engine materialises) with
# the workload, the pod and the device as small integers (:func:`workload_table`,
# :func:`pod_table`, :func:`device_table`, all read from the one pass of
# :func:`held_keys_table`): the groupings that follow hash integers, not seven strings.

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


def counted_quantiles(source: str, groups: Sequence[tuple[str, str]], value: str, qs: dict[str, float],
                      where: str = "") -> str:
    """Per group, each quantile of ``qs`` (name: q) of ``value`` over the rows of ``source``
    (``groups``: (name, expression) pairs; NULL values are left out), as ``PERCENTILE_CONT``
    defines it: linear between the two nearest ranks, numpy's default. Also ``n``, the
    values counted.

    Computed from the values counted, as (value, n) pairs, and a running sum of n in value
    order: a grouping and a window, which both engines spill to disk, where
    ``PERCENTILE_CONT`` holds every value of a group in memory at once (a fleet's week of
    memory readings is far more than that). The value at rank r (from 0) is the least
    value whose running count passes r."""
    names = ", ".join(name for name, _ in groups)
    keyed = ", ".join(f"{expr} AS {name}" for name, expr in groups)
    cond = f"({value}) IS NOT NULL" + (f" AND ({where})" if where else "")
    picks = []
    for i, q in enumerate(qs.values()):
        at = f"{float(q)!r} * (total - 1)"
        picks.append(f"MIN(CASE WHEN upto > FLOOR({at}) THEN value END) AS lo_{i}, "
                     f"MIN(CASE WHEN upto > CEIL({at}) THEN value END) AS hi_{i}, "
                     f"MAX({at} - FLOOR({at})) AS frac_{i}")
    out = ", ".join(f"lo_{i} + (hi_{i} - lo_{i}) * frac_{i} AS {name}" for i, name in enumerate(qs))
    return (f"WITH v AS (SELECT {keyed}, {value} AS value FROM {source} WHERE {cond}), "
            f"c AS (SELECT {names}, value, COUNT(*) AS n FROM v GROUP BY {names}, value), "
            f"r AS (SELECT {names}, value, SUM(n) OVER (PARTITION BY {names} ORDER BY value "
            f"ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS upto, SUM(n) OVER (PARTITION BY {names}) AS total "
            f"FROM c), "
            f"p AS (SELECT {names}, MAX(total) AS n, {', '.join(picks)} FROM r GROUP BY {names}) "
            f"SELECT {names}, CAST(n AS BIGINT) AS n, {out} FROM p")


def held_keys_table() -> str:
    """Each (workload, pod, device, price source) of the window's held rows, with the pod's
    name and the cost priced: one pass over the rows, from which the numbering tables
    below (and :func:`workload_price_sources`) are read."""
    return (f"SELECT {_key()}, pod_uid, device_uuid, price_source, MAX(pod) AS pod, SUM(cost) AS cost FROM ledger "
            f"WHERE {HELD} GROUP BY {_key()}, pod_uid, device_uuid, price_source")


def workload_table() -> str:
    """The workloads of the window's held rows, numbered ``w`` in key order (missing parts
    first; needs ``held_keys``)."""
    order = ", ".join(f"{c} NULLS FIRST" for c in KEY)
    return (f"SELECT {_key()}, CAST(ROW_NUMBER() OVER (ORDER BY {order}) - 1 AS BIGINT) AS w "
            f"FROM (SELECT DISTINCT {_key()} FROM held_keys) k")


def pod_table() -> str:
    """The pods of the window's held rows, numbered ``p``, with their names (needs ``held_keys``)."""
    return ("SELECT pod_uid, MAX(pod) AS pod, CAST(ROW_NUMBER() OVER (ORDER BY pod_uid) - 1 AS BIGINT) AS p "
            "FROM held_keys GROUP BY pod_uid")


def device_table() -> str:
    """The devices of the window's held rows, numbered ``d`` (needs ``held_keys``)."""
    return ("SELECT device_uuid, CAST(ROW_NUMBER() OVER (ORDER BY device_uuid) - 1 AS BIGINT) AS d "
            "FROM (SELECT DISTINCT device_uuid FROM held_keys) k")


def held_ids_table() -> str:
    """Each (workload, pod, device) of the window's held rows with its numbers ``w``, ``p``
    and ``d`` (needs ``held_keys``, ``workloads``, ``pods`` and ``devices``): a few thousand
    rows, so the window's rows are joined to their numbers once."""
    same = " AND ".join(f"hk.{c} IS NOT DISTINCT FROM k.{c}" for c in KEY)
    return (f"SELECT DISTINCT {', '.join(f'hk.{c}' for c in KEY)}, hk.pod_uid, hk.device_uuid, k.w, pods.p, devices.d "
            f"FROM held_keys hk JOIN workloads k ON {same} JOIN pods ON hk.pod_uid = pods.pod_uid "
            f"JOIN devices ON hk.device_uuid = devices.device_uuid")


def pods_in_two_workloads() -> str:
    """How many (pod, device) pairs of ``held_ids`` belong to more than one workload (a pod
    relabelled inside the window): when none does, :func:`held_table` joins on the pod and
    the device alone."""
    return ("SELECT COUNT(*) AS n FROM (SELECT pod_uid, device_uuid FROM held_ids GROUP BY pod_uid, device_uuid "
            "HAVING COUNT(*) > 1) t")


def held_table(by_pod_device: bool = False) -> str:
    """The window's held rows, numbered (needs ``held_ids``): the columns the evidence reads.
    Joined on the workload's key, the pod and the device; on the pod and the device alone
    with ``by_pod_device``, which is the same join where each (pod, device) has one
    workload (:func:`pods_in_two_workloads`) and two strings to hash instead of nine."""
    same = "".join(f"l.{c} IS NOT DISTINCT FROM n.{c} AND " for c in KEY) if not by_pod_device else ""
    return (
        "SELECT n.w, n.p, n.d, l.minute, l.allocated_gpu_seconds AS alloc, l.used_gpu_seconds AS used, "
        "CASE WHEN l.util_unknown_gpu_seconds <= 0 THEN 1 ELSE 0 END AS known, "
        "l.active_gpu_seconds AS active, l.cost, l.idle_cost, CAST(l.memory_used_max_bytes AS DOUBLE) AS mem, "
        "CAST(l.gpu_memory_total_bytes AS DOUBLE) AS gpu_mem, CAST(l.util_peak AS DOUBLE) AS peak, "
        "CAST(COALESCE(l.util_peak, CAST(l.used_gpu_seconds / l.allocated_gpu_seconds AS FLOAT)) AS DOUBLE) AS peak32, "
        "l.requests, CASE WHEN l.price_source = 'default' THEN 1 ELSE 0 END AS default_priced "
        f"FROM ledger l JOIN held_ids n ON {same}l.pod_uid = n.pod_uid AND l.device_uuid = n.device_uuid "
        f"WHERE l.pod_uid IS NOT NULL AND l.allocated_gpu_seconds > 0")


IDLE = "known = 1 AND active <= 0"


def workload_sums() -> str:
    """Per workload: GPU-seconds held, known, active and idle, cost, memory, pods (the
    percentiles are :func:`workload_memory_p99`, :func:`workload_util_p50` and, counted,
    :func:`workload_peaks`)."""
    return (
        "SELECT w, SUM(alloc) AS held_seconds, SUM(cost) AS cost, SUM(idle_cost) AS idle_cost, "
        "SUM(CASE WHEN known = 1 THEN alloc ELSE 0 END) AS known_seconds, "
        "SUM(CASE WHEN known = 1 THEN active ELSE 0 END) AS active_seconds, "
        f"SUM(CASE WHEN {IDLE} THEN alloc ELSE 0 END) AS idle_seconds, "
        f"MAX(CASE WHEN {IDLE} THEN mem END) AS idle_memory_max_bytes, "
        "MAX(gpu_mem) AS gpu_memory_bytes, SUM(CASE WHEN default_priced = 1 THEN cost ELSE 0 END) AS default_cost, "
        "COUNT(DISTINCT p) AS pods, MAX(mem) AS memory_max_bytes FROM held GROUP BY w")


def workload_memory_p99() -> str:
    """Per workload, the 99th percentile of its rows' memory peaks."""
    return counted_quantiles("held", [("w", "w")], "mem", {"memory_p99_bytes": 0.99})


def workload_util_p50() -> str:
    """Per workload, the median of its rows' minute means (where utilisation was known)."""
    return counted_quantiles("held", [("w", "w")], "CASE WHEN known = 1 THEN used / alloc END", {"util_p50": 0.5})


def workload_peaks() -> str:
    """Per workload, its known minute peaks counted: (peak, minutes)."""
    return "SELECT w, peak32 AS value, COUNT(*) AS n FROM held WHERE known = 1 GROUP BY w, peak32"


def workload_price_sources() -> str:
    """Per workload and price source, the cost it priced (needs ``held_keys`` and ``workloads``)."""
    same = " AND ".join(f"hk.{c} IS NOT DISTINCT FROM k.{c}" for c in KEY)
    return (f"SELECT k.w, hk.price_source, SUM(hk.cost) AS cost FROM held_keys hk JOIN workloads k ON {same} "
            "GROUP BY k.w, hk.price_source")


def workload_pods() -> str:
    """Per workload and pod (by name): GPU-seconds held, known and idle, cost, memory peak."""
    return (
        "SELECT h.w, pods.pod, SUM(h.alloc) AS held_seconds, "
        "SUM(CASE WHEN h.known = 1 THEN h.alloc ELSE 0 END) AS known_seconds, "
        "SUM(CASE WHEN h.known = 1 AND h.active <= 0 THEN h.alloc ELSE 0 END) AS idle_seconds, "
        "SUM(h.cost) AS cost, MAX(h.mem) AS memory_max_bytes "
        "FROM held h JOIN pods ON h.p = pods.p WHERE pods.pod IS NOT NULL GROUP BY h.w, pods.pod")


def pod_minutes_table() -> str:
    """Per pod and minute (with its workload): the GPUs it held, its requests (and of how
    many rows they were counted), its highest known peak (over its GPUs), and its demand:
    the busy GPU-equivalents of its rows (a row of unknown utilisation counts as fully busy)."""
    return ("SELECT w, p, minute, COUNT(*) AS gpus, SUM(COALESCE(requests, 0)) AS requests, "
            "COUNT(requests) AS counted, "
            "MAX(CASE WHEN known = 1 THEN COALESCE(peak, used / GREATEST(alloc, 1e-12)) END) AS peak, "
            "SUM(CASE WHEN known = 1 THEN COALESCE(peak, used / alloc) ELSE 1.0 END) AS demand "
            "FROM held GROUP BY w, p, minute")


def workload_gpus_per_pod() -> str:
    """Per workload, the median over its pods of the most GPUs a pod held at once (needs ``pod_minutes``)."""
    return counted_quantiles("(SELECT w, p, MAX(gpus) AS gpus FROM pod_minutes GROUP BY w, p) pods", [("w", "w")],
                             "gpus", {"gpus_per_pod": 0.5})


def workload_replicas() -> str:
    """Per workload, the median over the minutes it held GPUs of its pods at once (needs ``workload_minutes``)."""
    return counted_quantiles("workload_minutes", [("w", "w")], "pods", {"replicas": 0.5})


def workload_presence() -> str:
    """Per workload, over the minutes it held GPUs: pod-minutes, minutes, first and last (needs ``workload_minutes``)."""
    return ("SELECT w, CAST(SUM(pods) AS BIGINT) AS pod_minutes, COUNT(*) AS minutes, MIN(minute) AS first_minute, "
            "MAX(minute) AS last_minute FROM workload_minutes GROUP BY w")


def multi_gpu_pod_devices() -> str:
    """Per device of each pod that held two GPUs or more at once: GPU-seconds known and idle, memory peak."""
    return ("WITH multi AS (SELECT p AS multi_pod FROM pod_minutes GROUP BY p HAVING MAX(gpus) >= 2) "
            "SELECT w, p, d, SUM(CASE WHEN known = 1 THEN alloc ELSE 0 END) AS known_seconds, "
            f"SUM(CASE WHEN {IDLE} THEN alloc ELSE 0 END) AS idle_seconds, MAX(mem) AS memory_max_bytes "
            "FROM held JOIN multi ON p = multi_pod GROUP BY w, p, d")


def workload_shared_seconds() -> str:
    """Per workload, the GPU-seconds it held on a device another pod held in the same minute
    (only devices that more than one pod held are looked at minute by minute)."""
    return ("WITH shared AS (SELECT d AS shared_device FROM (SELECT DISTINCT d, p FROM held) dp GROUP BY d "
            "HAVING COUNT(*) > 1), "
            "on_shared AS (SELECT w, d, minute, alloc FROM held JOIN shared ON d = shared_device), "
            "crowded AS (SELECT d AS crowded_device, minute AS crowded_minute FROM on_shared "
            "GROUP BY d, minute HAVING COUNT(*) > 1) "
            "SELECT w, SUM(alloc) AS shared_seconds FROM on_shared "
            "JOIN crowded ON d = crowded_device AND minute = crowded_minute GROUP BY w")


def workload_minutes_table() -> str:
    """Per workload and minute (needs ``pod_minutes``): its pods, its demand (the busy
    GPU-equivalents of all its pods), and its requests (and of how many rows they were counted)."""
    return ("SELECT w, minute, COUNT(*) AS pods, SUM(demand) AS demand, SUM(requests) AS requests, "
            "CAST(SUM(counted) AS BIGINT) AS counted FROM pod_minutes GROUP BY w, minute")


def workload_demand() -> str:
    """Per workload, its per-minute demand counted (needs ``workload_minutes``)."""
    return "SELECT w, demand AS value, COUNT(*) AS n FROM workload_minutes GROUP BY w, demand"


def workload_demand_by_hour(q: float = 0.95, spans: Sequence[tuple[int, int]] = ((0, 0),)) -> str:
    """Per workload and local hour of the day, the ``q`` quantile of its per-minute demand
    (needs ``workload_minutes``)."""
    return counted_quantiles("workload_minutes", [("w", "w"), ("hour", hour_of_day(spans))], "demand", {"demand": q})


def workload_requests(q: float = 0.95) -> str:
    """Per workload, over the minutes its servers counted requests: how many, and the ``q``
    quantile of its requests per second, ``n`` and ``rps_level`` (needs ``workload_minutes``)."""
    return counted_quantiles("workload_minutes", [("w", "w")], "requests / 60.0", {"rps_level": q}, where="counted > 0")


def workload_replica_capacity(target: float = 0.7) -> str:
    """Per workload, the most requests per second one pod served in a minute whose highest
    known peak stayed at or under ``target`` (needs ``pod_minutes``)."""
    return (f"SELECT w, MAX(requests / 60.0) AS rps_capacity FROM pod_minutes WHERE peak <= {float(target)!r} "
            "GROUP BY w")


def workload_week(spans: Sequence[tuple[int, int]] = ((0, 0),)) -> str:
    """Per workload and local hour of the week: GPU-seconds held, active (known), known, and cost."""
    how = hour_of_week(spans)
    return (f"SELECT w, {how} AS hour, SUM(alloc) AS held, SUM(CASE WHEN known = 1 THEN active ELSE 0 END) AS active, "
            f"SUM(CASE WHEN known = 1 THEN alloc ELSE 0 END) AS known, SUM(cost) AS cost "
            f"FROM held GROUP BY w, {how}")


def held_minutes() -> str:
    """The first and last minute held by any pod, and whether any server counted requests."""
    return "SELECT MIN(minute) AS first_minute, MAX(minute) AS last_minute, COUNT(requests) AS counted FROM held"


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


def hour_rows(cuts: Sequence[int] = ()) -> str:
    """Each hour's rows of a device and a workload (pods' or unallocated) added up, with the
    ledger's column names; ``gpu_hourly_price`` weighted by the GPU-seconds it priced.

    ``cuts`` (Unix seconds, ascending) split the rows into parts, numbered in ``part``: 0
    before the first cut, 1 from it to the next, and so on; an hour a cut falls inside
    has a row on each side. So one pass gives the hour rows of several windows that meet
    at the cuts (the report's current and previous windows and the commitment look-back)."""
    hour = "CAST(FLOOR(minute / 3600) AS BIGINT) * 3600"
    held = "CASE WHEN pod_uid IS NULL THEN NULL ELSE 'held' END"
    seconds = "allocated_gpu_seconds + unallocated_gpu_seconds"
    keys = _names(HOUR_KEY)
    part = "CAST(0 AS BIGINT)"  # not a bare 0: GROUP BY 0 would name a column by position
    if cuts:
        branches = " ".join(f"WHEN minute < {int(c)} THEN {i}" for i, c in enumerate(cuts))
        part = f"CASE {branches} ELSE {len(cuts)} END"
    return (
        f"SELECT {hour} AS minute, {part} AS part, {keys}, {held} AS pod_uid, "
        f"COALESCE(SUM(gpu_hourly_price * ({seconds})) / NULLIF(SUM({seconds}), 0), 0) AS gpu_hourly_price, "
        + ", ".join(f"CAST(SUM({c}) AS BIGINT) AS {c}" if c == "samples" else f"SUM({c}) AS {c}"
                    for c in HOUR_SUMS) + ", "
        + ", ".join(f"CASE WHEN COUNT({c}) = COUNT(*) THEN SUM({c}) END AS {c}" for c in HOUR_KNOWN_SUMS) + ", "
        f"MAX(gpu_memory_total_bytes) AS gpu_memory_total_bytes, MAX(memory_used_max_bytes) AS memory_used_max_bytes "
        f"FROM ledger GROUP BY {hour}, {part}, {keys}, {held}")


def utilization_buckets() -> str:
    """GPU-seconds held by pods per utilisation bucket (0: exactly idle, 1–10: tenths) for rows
    of known utilisation, and per MIG or not for rows of unknown utilisation (bucket NULL)
    (needs ``held`` and ``workloads``)."""
    bucket = "CASE WHEN h.known = 1 THEN GREATEST(0, LEAST(10, CAST(CEIL(h.used / h.alloc * 10 - 1e-9) AS BIGINT))) END"
    mig = "CASE WHEN k.mig_profile IS NULL THEN 0 ELSE 1 END"
    return (f"SELECT {bucket} AS bucket, {mig} AS mig, SUM(h.alloc) AS seconds FROM held h JOIN workloads k "
            f"ON h.w = k.w GROUP BY {bucket}, {mig}")


# --------------------------------------------------------------------------- checks


def value_checks() -> list[tuple[str, str, str]]:
    """(column, the SQL condition of a bad row, what was expected) for each number column and
    each part-within-whole rule: the checks :func:`recommenders.history._frame` makes of a
    ledger file's rows, for rows a query engine reads where they lie."""
    from recommenders import history

    out = []
    for name in history.NUMBERS:
        high = history._BOUNDS.get(name, history.BYTES_MAX)
        nullable = name in history.NULLABLE or name not in history._BOUNDS
        value = f"CAST({name} AS DOUBLE)"
        # NaN compares above every number in both engines, so it fails the upper bound (isnan()
        # is not used: DuckDB folds it to false from Parquet statistics, which leave NaN out)
        bad = f"(NOT ({value} >= {-history._SLACK!r} AND {value} <= {high!r}))"
        if not nullable:
            bad = f"({name} IS NULL OR {bad})"
        out.append((name, bad, f"a number from 0 to {high:g}{' or null' if nullable else ''}"))
    for parts, whole in history._PARTS:
        total = " + ".join(parts)
        out.append((parts[0], f"({total} > {whole} * (1 + 1e-9) + 1e-300)",
                    f"{total} of at most {whole} on each row"))
    return out


def bad_rows() -> str:
    """How many rows fail each of :func:`value_checks`, in one pass."""
    checks = value_checks()
    return ("SELECT " + ", ".join(f"COUNT(CASE WHEN {bad} THEN 1 END) AS bad_{i}"
                                  for i, (_, bad, _) in enumerate(checks)) + " FROM ledger")


def first_bad_row(condition: str, column: str) -> str:
    """The first minute with a row failing ``condition``, the first node with such a row in
    it, and the value of one of that node's (to name it in the error). Aggregates, not a WHERE: a filter may be pushed
    down to Parquet statistics, which leave NaN out."""
    _names([column])
    first = f"(SELECT MIN(CASE WHEN {condition} THEN minute END) FROM ledger)"
    node = f"(SELECT MIN(CASE WHEN {condition} AND minute = {first} THEN node END) FROM ledger)"
    at = f"{condition} AND minute = {first} AND node = {node}"
    return (f"SELECT MIN(minute) AS minute, MIN(node) AS node, MIN(value) AS value FROM "
            f"(SELECT CASE WHEN {at} THEN minute END AS minute, CASE WHEN {at} THEN node END AS node, "
            f"CASE WHEN {at} THEN {column} END AS value FROM ledger) t")
