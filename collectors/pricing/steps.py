"""What one price source said about one node: a :class:`Step` when it did not price it,
and the whole-node arithmetic when it did.

Shared by the chain (:mod:`collectors.pricing.chain`) and each cloud source's layer
(``price`` and ``commitments`` in ``aws.py``, ``gcp.py``, ``azure.py``), so the sources
say "skipped", "no match" and "unavailable" the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from collectors.nodelabels import INSTANCE_TYPE_LABELS, REGION_LABELS, PricingLabels
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


def located(source: str, where: PricingLabels, physical: int, type_name: str, asks: str, steps: list[Step]) -> bool:
    """Whether the node names its machine type (``type_name``: "instance type", "VM size")
    and region and its GPU count is known; if not, a "skipped" step saying which label is
    missing and what the source prices (``asks``)."""
    missing = [f"{what} label ({labels[0]})" for what, value, labels in (
        (type_name, where.instance_type, INSTANCE_TYPE_LABELS), ("region", where.region, REGION_LABELS))
        if not value]
    if not missing and physical > 0:
        return True
    why = "the node has no " + " and no ".join(missing) if missing else "the node's GPU count is not known"
    steps.append(Step(source, "skipped", f"{why}; {asks}"))
    return False
