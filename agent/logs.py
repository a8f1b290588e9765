"""Log lines of the long-running commands: ISO 8601 UTC times, one line per event.

``2025-11-25T06:00:00.123Z gpuledger: INFO: ...``: a time a person reads and a log
collector parses, never Unix seconds. Times inside messages go through :func:`iso`.
"""

from __future__ import annotations

import logging
import time

FORMAT = "%(asctime)s gpuledger: %(levelname)s: %(message)s"


class IsoFormatter(logging.Formatter):
    """Record times as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC)."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def setup(level: str) -> None:
    """Log to stderr at ``level`` with ISO times; the scheduler library's own chatter is
    left out (the agent logs what a user can act on, see agent/daemon.py)."""
    handler = logging.StreamHandler()
    handler.setFormatter(IsoFormatter(FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("apscheduler").setLevel(logging.ERROR)


def iso(ts: float) -> str:
    """Unix seconds as ISO 8601 UTC, to the second: ``2025-11-25T06:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
