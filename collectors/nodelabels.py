"""The node labels that matter for price, read from the well-known label conventions.

EKS, Karpenter, GKE and AKS each spell capacity type differently; the ledger wants one
vocabulary: ``on-demand``, ``spot`` or ``reserved``. Which cloud a node runs in
(:func:`provider_of`) decides which cloud's price API is asked. NVIDIA's GPU feature
discovery (GFD) labels say which GPU a node has and how it is shared (:func:`gpu_labels`).

The placement collector writes a node's labels into ``node`` records as they are, less
the labels that change without the node changing (:data:`VOLATILE_LABELS`), so a node
record is written when something that can matter for price changed, not every minute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

INSTANCE_TYPE_LABELS = ("node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type")
REGION_LABELS = ("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region")
ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")
CAPACITY_LABELS = ("karpenter.sh/capacity-type", "eks.amazonaws.com/capacityType", "cloud.google.com/gke-spot",
                   "cloud.google.com/gke-preemptible", "cloud.google.com/gke-provisioning",
                   "kubernetes.azure.com/scalesetpriority")  # what capacity_type() reads


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


GCP_MACHINE_PREFIXES = {"a2", "a3", "a4", "g2", "g4", "n1", "n2", "n2d", "e2", "c2", "c3", "c4"}


def provider_of(labels: Mapping[str, str]) -> str | None:
    """``aws``, ``gcp``, ``azure`` or None, from the labels each provider's nodes carry.

    Provider label prefixes decide first (GKE ``cloud.google.com/``, EKS and Karpenter on
    AWS, AKS ``kubernetes.azure.com/``); failing those, the shape of the instance type:
    ``p5.48xlarge`` (AWS), ``a2-highgpu-1g`` (GCP), ``Standard_ND96isr_H100_v5`` (Azure).
    """
    keys = list(labels)
    if any(k.startswith(("cloud.google.com/", "node.gke.io/")) for k in keys):
        return "gcp"
    if any(k.startswith(("eks.amazonaws.com/", "karpenter.k8s.aws/", "k8s.amazonaws.com/")) for k in keys):
        return "aws"
    if any(k.startswith("kubernetes.azure.com/") for k in keys):
        return "azure"
    instance_type = pricing_labels(labels).instance_type or ""
    if instance_type.startswith(("Standard_", "Basic_")):  # Azure VM sizes
        return "azure"
    if "." in instance_type:  # p5.48xlarge; GCP machine types have no dot
        return "aws"
    if instance_type.split("-")[0] in GCP_MACHINE_PREFIXES:
        return "gcp"
    return None


#: Labels that change while nothing about the node does (GFD rewrites its timestamp).
VOLATILE_LABELS = frozenset({"nvidia.com/gfd.timestamp"})


def stable_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The labels worth recording: all but the volatile ones, sorted by key."""
    return {k: labels[k] for k in sorted(labels) if k not in VOLATILE_LABELS}


@dataclass(frozen=True)
class GpuLabels:
    """What GPU feature discovery says about a node's GPUs.

    ``replicas`` above 1 means the device plugin advertises each GPU that many times
    (time-slicing or MPS; ``sharing_strategy`` says which), so pods holding the same GPU
    share it. ``mig_strategy`` is ``none``, ``single`` (MIG slices advertised as
    ``nvidia.com/gpu``) or ``mixed`` (as ``nvidia.com/mig-<profile>``).
    """

    product: str | None
    count: int | None
    memory_mib: int | None
    replicas: int | None
    sharing_strategy: str | None
    mig_strategy: str | None
    mig_config: str | None
    mig_capable: bool | None


def _int_label(labels: Mapping[str, str], key: str) -> int | None:
    try:
        return int(labels[key])
    except (KeyError, ValueError):
        return None


def gpu_labels(labels: Mapping[str, str]) -> GpuLabels:
    """The GFD labels of a node (``nvidia.com/gpu.product`` and friends), parsed.

    With the ``single`` MIG strategy GFD appends the profile to the product
    (``NVIDIA-A100-SXM4-40GB-MIG-1g.5gb``); with time-slicing it may append ``-SHARED``.
    Both are kept as written: the product label is for people and rate-card matches.
    """
    capable = labels.get("nvidia.com/mig.capable")
    return GpuLabels(
        product=labels.get("nvidia.com/gpu.product") or None,
        count=_int_label(labels, "nvidia.com/gpu.count"),
        memory_mib=_int_label(labels, "nvidia.com/gpu.memory"),
        replicas=_int_label(labels, "nvidia.com/gpu.replicas"),
        sharing_strategy=labels.get("nvidia.com/gpu.sharing-strategy") or None,
        mig_strategy=labels.get("nvidia.com/mig.strategy") or None,
        mig_config=labels.get("nvidia.com/mig.config") or None,
        mig_capable=None if capable is None else capable == "true",
    )
