"""What one price source said about one node: a :class:`Step` when it did not price it,
and the whole-node arithmetic when it did.

Shared by the chain (:mod:`collectors.pricing.chain`) and each cloud source's layer
(``price`` and ``commitments`` in ``aws.py``, ``gcp.py``, ``azure.py``), so the sources
say "skipped", "no match" and "unavailable" the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from collectors.pricing.cache import Lookup
from collectors.pricing.ratecard import GpuPrice


@dataclass(frozen=True)
class Step:
    """One price source's answer for one node: ``priced``, ``no match``, ``skipped`` or ``unavailable``."""

    source: str
    outcome: str
    detail: str


def node_step(source: str, lookup: Lookup, hourly: float | None, what: str, physical: int, share: float,
              steps: list[Step]) -> tuple[GpuPrice, str, float] | None:
    """A whole-node price split over the node's GPUs; None (and the step that says why) without one."""
    if hourly is None:
        if lookup.status == "unavailable":
            steps.append(Step(source, "unavailable", f"{lookup.error}; no earlier answer cached"))
        else:
            steps.append(Step(source, "no match", f"no {what}"))
        return None
    price = GpuPrice(hourly * share / physical, source)
    return price, f"{what}: {hourly:g}/h x gpu_share {share:g} / {physical} GPUs{stale_note(lookup)}", hourly


def stale_note(lookup: Lookup) -> str:
    return f" (last good answer kept: {lookup.error})" if lookup.status == "stale" else ""


def offer_json(offer):
    """An offer (``to_json()``) as the cache keeps it; None stays None."""
    return offer.to_json() if offer is not None else None
