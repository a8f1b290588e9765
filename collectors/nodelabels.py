"""The node labels that matter for price, read from the well-known label conventions.

EKS, Karpenter, GKE and AKS each spell capacity type differently; the ledger wants one
vocabulary: ``on-demand``, ``spot`` or ``reserved``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

INSTANCE_TYPE_LABELS = ("node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type")
REGION_LABELS = ("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region")
ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")


@dataclass(frozen=True)
class PricingLabels:
    instance_type: str | None
    region: str | None
    zone: str | None
    capacity_type: str | None


def _first(labels: Mapping[str, str], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        if labels.get(key):
            return labels[key]
    return None


def capacity_type(labels: Mapping[str, str]) -> str | None:
    """on-demand, spot or reserved, from whichever provider's label is present."""
    karpenter = labels.get("karpenter.sh/capacity-type")
    if karpenter:
        return {"on-demand": "on-demand", "spot": "spot", "reserved": "reserved"}.get(karpenter, karpenter)
    eks = labels.get("eks.amazonaws.com/capacityType")
    if eks:
        return {"ON_DEMAND": "on-demand", "SPOT": "spot", "CAPACITY_BLOCK": "reserved"}.get(eks, eks.lower())
    if labels.get("cloud.google.com/gke-spot") == "true" or labels.get("cloud.google.com/gke-preemptible") == "true":
        return "spot"
    gke = labels.get("cloud.google.com/gke-provisioning")
    if gke:
        return {"standard": "on-demand", "spot": "spot", "preemptible": "spot"}.get(gke, gke)
    azure = labels.get("kubernetes.azure.com/scalesetpriority")
    if azure:
        return "spot" if azure == "spot" else "on-demand"
    return None


def pricing_labels(labels: Mapping[str, str]) -> PricingLabels:
    return PricingLabels(
        instance_type=_first(labels, INSTANCE_TYPE_LABELS),
        region=_first(labels, REGION_LABELS),
        zone=_first(labels, ZONE_LABELS),
        capacity_type=capacity_type(labels),
    )
