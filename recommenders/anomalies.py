"""Cost anomalies: a team or workload whose daily cost jumped above its own recent range.

Judged per UTC day against the same entity's previous ``anomaly_days`` days: a day is
an anomaly when its cost exceeds ``anomaly_factor`` × the highest of those days and the
jump is at least ``anomaly_min_cost``. An entity needs three earlier days with any
cost to have a range at all, so a workload that just started is not an anomaly (it
shows up in the top tables instead).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recommenders.grouping import group_ids
from recommenders.settings import Settings

DAY = 86400
MIN_HISTORY_DAYS = 3


@dataclass(frozen=True)
class Anomaly:
    scope: str  # team | workload
    name: str
    team: str
    day: str  # YYYY-MM-DD (UTC)
    cost: float
    recent_max: float
    recent_mean: float

    @property
    def factor(self) -> float:
        return self.cost / self.recent_max if self.recent_max > 0 else float("inf")


def daily_costs(rows: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Cost per UTC day (column ``day``, days since the epoch) and the ``by`` columns, for pods' rows."""
    mask = rows["pod_uid"].notna().to_numpy()
    day = (rows["minute"].to_numpy(np.int64)[mask] // DAY).astype(np.int32)
    ids, keys = group_ids(rows, by, mask, extra={"day": day})
    keys["cost"] = np.bincount(ids, weights=rows["cost"].to_numpy(np.float64)[mask], minlength=len(keys))
    for column in by:
        keys[column] = [("(none)" if v is None else v) for v in keys[column]]
    return keys


def find_anomalies(rows: pd.DataFrame, window_start: float, settings: Settings) -> list[Anomaly]:
    """Anomalous days inside the window (``minute >= window_start``), largest jump first."""
    out: list[Anomaly] = []
    scopes = {"team": ["team"], "workload": ["team", "namespace", "workload_kind", "workload_name"]}
    first_day = int(window_start // DAY)
    for scope, by in scopes.items():
        daily = daily_costs(rows, by)
        for key, part in daily.groupby(by, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            series = dict(zip(part["day"].to_numpy(), part["cost"].to_numpy()))
            for day, cost in series.items():
                if day < first_day:
                    continue
                prior = [series[d] for d in range(day - settings.anomaly_days, day) if series.get(d, 0) > 0]
                if len(prior) < MIN_HISTORY_DAYS:
                    continue
                top = max(prior)
                if cost > settings.anomaly_factor * top and cost - top >= settings.anomaly_min_cost:
                    name = key[0] if scope == "team" else f"{key[1]}/{key[2]}/{key[3]}"
                    out.append(Anomaly(scope, name, key[0], _date(day), float(cost), float(top),
                                       float(np.mean(prior))))
    out.sort(key=lambda a: -(a.cost - a.recent_max))
    return out


def _date(day: int) -> str:
    return pd.Timestamp(int(day) * DAY, unit="s", tz="UTC").strftime("%Y-%m-%d")
