"""Counting faults in the world, and logging each kind once.

A node agent that runs forever meets a lost GPU, an unsupported field or a process
that exits mid-read every day. It must keep going, and an operator must be able to see
how often each happened without a log line per sample: so every fault is counted by
``(collector, reason)`` (the agent's metrics export these counts) and logged at
WARNING the first time that pair is seen, at DEBUG afterwards.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("gpuledger.faults")


class FaultCounter:
    """Thread-safe counts of faults by ``(collector, reason)``."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or log
        self._counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def record(self, collector: str, reason: str, detail: str = "", count: int = 1) -> None:
        """Count ``count`` faults of one kind; log it if this is the first of its kind."""
        key = (collector, reason)
        with self._lock:
            seen = self._counts.get(key, 0)
            self._counts[key] = seen + count
        suffix = f": {detail}" if detail else ""
        if seen == 0:
            self._log.warning(
                "%s: %s%s (further '%s' faults are counted, not logged)", collector, reason, suffix, reason
            )
        else:
            self._log.debug("%s: %s%s", collector, reason, suffix)

    def counts(self) -> dict[tuple[str, str], int]:
        """A copy of the counts, for metrics and tests."""
        with self._lock:
            return dict(self._counts)

    def count(self, collector: str, reason: str) -> int:
        with self._lock:
            return self._counts.get((collector, reason), 0)


FAULTS = FaultCounter()
"""The process-wide counter the collectors use unless given another (the agent's
metrics read this one)."""
