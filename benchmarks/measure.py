"""What every benchmark here measures the same way: a child process's wall time and
peak resident memory (``wait4``'s ``ru_maxrss``), so the parent's own memory never
counts. Scripts import it as ``from measure import run_child`` (they run from this
folder's path)."""

from __future__ import annotations

import os
import subprocess
import time


def run_child(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"child failed ({status}): {' '.join(argv)}")
    return wall, usage.ru_maxrss / 1024.0
