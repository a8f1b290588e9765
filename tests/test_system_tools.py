"""Tests that need a system tool skip without it, saying which Debian package, and fail
under CI=true; .ci/run installs every such package; the README says so."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.systemtools import PACKAGES

ROOT = Path(__file__).resolve().parents[1]

PROBE = '''
from tests.systemtools import require_tool

def test_needs_promtool():
    require_tool("promtool", "prometheus")
'''


@pytest.mark.parametrize("ci, outcome", [(None, "skipped"), ("true", "failed")])
def test_a_missing_tool_skips_naming_the_package_except_in_ci(tmp_path, ci, outcome):
    (tmp_path / "test_probe.py").write_text(PROBE)
    (tmp_path / "bin").mkdir()  # a PATH without promtool
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(PATH=str(tmp_path / "bin"), PYTHONPATH=str(ROOT))
    if ci:
        env["CI"] = ci
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider",
                           str(tmp_path / "test_probe.py")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert f"1 {outcome}" in done.stdout, done.stdout + done.stderr
    assert "`promtool` not found: install the Debian package `prometheus`" in done.stdout, done.stdout
    assert ("CI=true: not skipped" in done.stdout) == (outcome == "failed")


def test_ci_run_installs_every_package_the_tests_name():
    script = (ROOT / ".ci" / "run").read_text()
    installed = set(re.findall(r"missing\+=\(([a-z0-9.+-]+)\)", script))
    assert set(PACKAGES.values()) <= installed, set(PACKAGES.values()) - installed
    assert 'export CI="${CI:-true}"' in script
    assert ".venv/bin/python -m pytest -q" in script


def test_the_readme_says_what_the_tests_need():
    readme = " ".join((ROOT / "README.md").read_text().split())
    for package in set(PACKAGES.values()):
        assert f"`{package}`" in readme, package
    assert "CI=true" in readme and ".ci/run" in readme


@pytest.mark.slow
def test_tests_find_system_tools_through_require_tool():
    """So that none fails with 'not found' outside CI, or skips inside it."""
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path.name == "systemtools.py":
            continue
        for tool in PACKAGES:
            if re.search(rf"""which\(["']{tool}["']\)""", path.read_text()):
                offenders.append(f"{path.relative_to(ROOT)}: {tool}")
    assert not offenders, offenders
