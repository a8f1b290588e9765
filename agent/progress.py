"""A progress line for long work: shown on a terminal, silent when piped."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    """Call with (done, total); redraws at most every 0.2 s, and only on a terminal."""

    def __init__(self, label: str, unit: str = "bytes", stream: TextIO | None = None) -> None:
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.started = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.2 and done < total:
            return
        self._last = now
        pct = 100.0 * done / total if total else 100.0
        amount = f"{done / 1e6:,.0f} of {total / 1e6:,.0f} MB" if self.unit == "bytes" else f"{done:,} of {total:,} {self.unit}"
        self.stream.write(f"\r{self.label}: {pct:5.1f}% ({amount}, {now - self.started:.0f} s)\x1b[K")
        self.stream.flush()
        self._drawn = True

    def done(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
