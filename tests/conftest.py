"""Shared test helpers: writing small traces, and where the shared real data lives."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any, Iterable

import pytest

META = {"kind": "meta", "format": "gpuledger-trace", "version": 1, "interval_s": 1.0}


def write_jsonl(path: Path, objs: Iterable[dict[str, Any] | str], meta: dict | None = META) -> Path:
    """Write objects (or raw lines) as JSON Lines, gzip when the name ends in .gz."""
    lines = [json.dumps(meta)] if meta is not None else []
    lines += [o if isinstance(o, str) else json.dumps(o) for o in objs]
    data = ("\n".join(lines) + "\n").encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def shared_data() -> Path | None:
    """The real public data beside the checkout, or None when it is absent."""
    env = os.environ.get("GPULEDGER_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture
def rates(tmp_path: Path):
    """Write a rate card from YAML text and return its path."""
    def make(text: str) -> Path:
        path = tmp_path / "rates.yaml"
        path.write_text(text)
        return path
    return make
