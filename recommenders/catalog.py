"""The GPU catalog: memory, MIG profiles, relative throughput and typical price per GPU.

The right-sizer needs to know, for every GPU it might recommend, how much memory it has
(the safety rule), how fast it is relative to another (to scale utilisation), what MIG
slices it can be cut into, and what it typically costs (to rank the cheaper ones). The
figures live in ``gpu_catalog.yaml`` beside this module, each with its source, so they
can be checked and refreshed without reading code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Iterable, Mapping

import yaml

MIB = 1 << 20
CATALOG_FILE = "gpu_catalog.yaml"


@dataclass(frozen=True)
class MigProfile:
    """A MIG profile: ``slices`` compute slices of the parent's ``mig_slices``."""

    name: str
    slices: int
    memory_bytes: float


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_bytes: float
    tflops: float
    hourly: float | None
    mig_slices: int = 0
    mig: tuple[MigProfile, ...] = ()
    aliases: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)  # identity hash: the index below is cached per catalog
class Catalog:
    gpus: tuple[GpuSpec, ...]
    sources: Mapping[str, str]

    def get(self, model: str | None) -> GpuSpec | None:
        """The spec for an NVML model name (exact name or alias), or None."""
        if not model:
            return None
        return self._index().get(model.strip().lower())

    def _index(self) -> dict[str, GpuSpec]:
        return _index(self)


@lru_cache(maxsize=8)
def _index(catalog: Catalog) -> dict[str, GpuSpec]:
    out: dict[str, GpuSpec] = {}
    for gpu in catalog.gpus:
        for name in (gpu.name, *gpu.aliases):
            out[name.lower()] = gpu
    return out


def parse_catalog(data: Mapping) -> Catalog:
    """A Catalog from the YAML structure; raises ValueError naming the bad entry."""
    gpus = []
    for i, entry in enumerate(data.get("gpus") or []):
        try:
            mig = tuple(MigProfile(str(p["name"]), int(p["slices"]), float(p["memory_mib"]) * MIB)
                        for p in entry.get("mig") or ())
            gpus.append(GpuSpec(
                name=str(entry["name"]), memory_bytes=float(entry["memory_mib"]) * MIB,
                tflops=float(entry["tflops"]),
                hourly=None if entry.get("hourly") is None else float(entry["hourly"]),
                mig_slices=int(entry.get("mig_slices") or 0), mig=mig,
                aliases=tuple(entry.get("aliases") or ()), sources=tuple(entry.get("sources") or ()),
            ))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"gpu catalog entry {i}: {err!r}") from None
    return Catalog(tuple(gpus), dict(data.get("sources") or {}))


@lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    """The bundled catalog (``recommenders/gpu_catalog.yaml``)."""
    text = resources.files("recommenders").joinpath(CATALOG_FILE).read_text(encoding="utf-8")
    return parse_catalog(yaml.safe_load(text))


def cheaper_than(catalog: Catalog, hourly: float) -> Iterable[GpuSpec]:
    """Catalog GPUs with a typical price below ``hourly``, cheapest first."""
    priced = [g for g in catalog.gpus if g.hourly is not None and g.hourly < hourly]
    return sorted(priced, key=lambda g: (g.hourly, -g.tflops))
