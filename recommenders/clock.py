"""Hours of the day and of the week in a time zone, for ten million minutes at once.

``schedule`` and the autoscaling bounds ask "which hours of the week" a workload is
busy, and people read those hours on their own clocks. The zone's UTC offset is looked
up once per UTC hour of the data (a few hundred look-ups a week), not once per row, and
added to every minute; daylight-saving changes fall on whole UTC hours in every zone in
use, so this is exact.
"""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import numpy as np

HOUR = 3600
DAY = 86400
WEEK_HOURS = 168
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def local_seconds(ts: np.ndarray, tz: str) -> np.ndarray:
    """Unix seconds shifted by the zone's UTC offset at each time (int64)."""
    ts = np.asarray(ts, dtype=np.int64)
    if tz in ("UTC", "Etc/UTC") or len(ts) == 0:
        return ts
    zone = ZoneInfo(tz)
    first, last = int(ts.min()) // HOUR, int(ts.max()) // HOUR
    offsets = np.array([int(datetime.fromtimestamp(h * HOUR, timezone.utc).astimezone(zone).utcoffset().total_seconds())
                        for h in range(first, last + 1)], np.int64)
    return ts + offsets[ts // HOUR - first]


def offset_spans(tz: str, start: float, end: float) -> list[tuple[int, int]]:
    """The zone's UTC offset over ``[start, end)``: (from, offset seconds) pairs, the first
    from ``start``, one more at each change (daylight saving), looked up per UTC hour as
    :func:`local_seconds` does; what a query engine needs to turn minutes into local hours."""
    if tz in ("UTC", "Etc/UTC"):
        return [(int(start), 0)]
    zone = ZoneInfo(tz)
    spans: list[tuple[int, int]] = []
    for h in range(int(start) // HOUR, int(max(end, start + 1) - 1) // HOUR + 1):
        offset = int(datetime.fromtimestamp(h * HOUR, timezone.utc).astimezone(zone).utcoffset().total_seconds())
        if not spans or spans[-1][1] != offset:
            spans.append((max(h * HOUR, int(start)), offset))
    return spans


def hour_of_week(ts: np.ndarray, tz: str) -> np.ndarray:
    """0 = Monday 00:00–01:00 in ``tz`` … 167 = Sunday 23:00–24:00."""
    local = local_seconds(ts, tz)
    weekday = (local // DAY + 3) % 7  # 1970-01-01 was a Thursday
    return (weekday * 24 + (local % DAY) // HOUR).astype(np.int64)


def hour_of_day(ts: np.ndarray, tz: str) -> np.ndarray:
    return ((local_seconds(ts, tz) % DAY) // HOUR).astype(np.int64)


def describe_week_hours(hours: np.ndarray) -> str:
    """Hours of the week (0–167) as blocks a person reads: 'Mon–Thu 19:00–08:00, Sat–Sun all day'.

    Each day's hours become ranges; an evening range that runs into the next morning is
    written once, on the day it starts ('Mon 19:00–08:00' is Monday 19:00 to Tuesday
    08:00), unless the next day is stopped all day; days with the same ranges are named
    together.
    """
    on = np.zeros(WEEK_HOURS, bool)
    on[np.asarray(hours, dtype=np.int64) % WEEK_HOURS] = True
    if on.all():
        return "all week"
    ranges: list[list[tuple[int, int]]] = []
    for d in range(7):
        day = on[d * 24:(d + 1) * 24]
        runs, h = [], 0
        while h < 24:
            if day[h]:
                n = h
                while n < 24 and day[n]:
                    n += 1
                runs.append((h, n))
                h = n
            else:
                h += 1
        ranges.append(runs)
    full = [r == [(0, 24)] for r in ranges]
    texts: dict[str, list[int]] = {}
    carried = [False] * 7  # a day whose 00:00 range was written on the day before
    for d in range(7):
        if full[d]:
            texts.setdefault("all day", []).append(d)
            continue
        nxt = (d + 1) % 7
        for a, b in ranges[d]:
            if a == 0 and carried[d]:
                continue
            if b == 24 and not full[nxt] and ranges[nxt] and ranges[nxt][0][0] == 0:
                end = ranges[nxt][0][1]
                carried[nxt] = True
                texts.setdefault(f"{a:02d}:00–{end:02d}:00", []).append(d)
            else:
                texts.setdefault(f"{a:02d}:00–{b:02d}:00", []).append(d)
    if carried[0] and not full[0]:  # Sunday's evening took Monday's morning: drop a Monday 00:00 range written first
        first = ranges[0][0] if ranges[0] else None
        if first and first[0] == 0:
            key = f"00:00–{first[1]:02d}:00"
            if key in texts and 0 in texts[key]:
                texts[key].remove(0)
                if not texts[key]:
                    del texts[key]
    parts = [f"{_days(sorted(set(days)))} {text}"
             for text, days in sorted(texts.items(), key=lambda kv: (min(kv[1]), kv[0]))]
    return ", ".join(parts)


def _days(days: list[int]) -> str:
    """[0, 1, 2, 3, 4] -> 'Mon–Fri'; [0, 2] -> 'Mon, Wed'."""
    runs: list[list[int]] = []
    for d in days:
        if runs and d == runs[-1][-1] + 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    return ", ".join(DAYS[r[0]] if len(r) == 1 else f"{DAYS[r[0]]}–{DAYS[r[-1]]}" for r in runs)
