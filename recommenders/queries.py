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
