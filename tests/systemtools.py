"""System tools some tests drive for real, and what happens when one is missing.

gcc builds the fake NVML library, Prometheus and promtool run the scrape and rule tests,
Chromium renders the HTML report, curl runs the README's agent snippet, Java runs Spark
(the report's Spark engine), and a pinned helm
is downloaded from the npm registry (tests/helmtool.py). ``.ci/run`` installs the Debian
packages on a fresh machine. Elsewhere a test whose tool is missing is skipped with a
reason naming the Debian package, except under ``CI=true``: there a missing tool fails
the test, so CI never passes by skipping.
"""

from __future__ import annotations

import os
import shutil

import pytest

#: command -> the Debian package that provides it (.ci/run installs these; a test checks it)
PACKAGES = {
    "gcc": "gcc",
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "chromium": "chromium",
    "curl": "curl",
    "java": "default-jre-headless",
}


def in_ci() -> bool:
    """``CI`` set to true (GitHub Actions, GitLab and most CI systems set it; .ci/run does)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(message: str) -> None:
    """Skip the test with ``message``, or fail it under CI=true."""
    if in_ci():
        pytest.fail(f"{message} (CI=true: not skipped)", pytrace=False)
    pytest.skip(message)


def require_tool(command: str, package: str | None = None, *alternatives: str) -> str:
    """The path of ``command`` (or of the first alternative found); skips the test, or
    fails it under CI=true, with a reason naming the Debian package when it is missing."""
    for name in (command, *alternatives):
        path = shutil.which(name)
        if path:
            return path
    package = package or PACKAGES[command]
    missing(f"`{command}` not found: install the Debian package `{package}` (`apt-get install {package}`; "
            f".ci/run does)")
    raise AssertionError("unreachable")
