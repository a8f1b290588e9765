"""Durations on the command line: ``500ms``, ``1s``, ``10m``, ``2h``, ``7d``, ``2w``, ``1h30m``.

One parser for every flag that takes a duration (``record --interval/--duration``,
``report --since``), so they all read the same units the same way.
"""

from __future__ import annotations

import re

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d|w)")
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def parse_duration(text: str, bare_unit: str = "s") -> float:
    """Seconds in a duration; a bare number counts in ``bare_unit``.

    Raises ValueError for anything else, and for zero.
    """
    text = (text or "").strip().lower()
    if _NUMBER.fullmatch(text):
        seconds = float(text) * UNITS[bare_unit]
    else:
        pos, seconds = 0, 0.0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * UNITS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise ValueError(f"expected a duration such as 500ms, 10m, 2h or 7d, got {text!r}")
    if seconds <= 0:
        raise ValueError(f"expected a duration above zero, got {text!r}")
    if seconds == float("inf"):
        raise ValueError(f"expected a finite duration, got {text[:40]!r}")
    return seconds


def duration_arg(text: str) -> float:
    """``parse_duration`` as an argparse ``type``: a bad value is a usage error naming the flag."""
    import argparse

    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
