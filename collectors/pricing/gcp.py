"""GCP prices from the Cloud Billing Catalog: GPU SKUs and the A2/A3/G2 VM SKUs.

GCP bills a GPU machine as parts: every attached GPU (a per-GPU SKU), plus the host
VM's vCPUs and memory. For the accelerator-optimised families (A2, A3, G2) the GPUs
come with the machine type, so a node's price is the sum of all three, computed from
the machine's shape (:data:`MACHINES`). For N1 machines with attached GPUs only the
GPU SKU is a GPU cost (the N1 VM would exist anyway), so those GPUs are priced by the
GPU SKU alone.

The catalog is one paged listing of every Compute Engine SKU (``list_skus``); it is
fetched whole, reduced to the rates we need (:class:`GcpRate`) by the pure
:func:`parse_sku`, and looked up per region. A SKU's ``category.usageType`` says
on-demand (``OnDemand``), spot (``Preemptible``) or a 1- or 3-year commitment
(``Commit1Yr``, ``Commit3Yr``); its price is ``units + nanos / 1e9`` of the last tier of
``tieredRates`` (the rate a machine that runs all month pays).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from collectors.nodelabels import INSTANCE_TYPE_LABELS, REGION_LABELS, pricing_labels
from collectors.pricing.cache import Lookup, PriceApiError
from collectors.pricing.ratecard import Commitment, CommitmentOption, GpuPrice
from collectors.pricing.steps import Step, node_step, stale_note

SOURCE = "gcp-api"
COMPUTE_ENGINE = "services/6F81-5844-456A"  # the Compute Engine service in the catalog
USAGE = {"OnDemand": "on-demand", "Preemptible": "spot", "Commit1Yr": "commit-1y", "Commit3Yr": "commit-3y"}
HOURLY_UNITS = {"h", "GiBy.h"}

_GPU = re.compile(r"^(?:Commitment v1: )?(?:Spot Preemptible )?(Nvidia [\w .-]+?) GPU"
                  r"(?: attached to Spot Preemptible VMs)?(?: running)? in [\w .,()-]+?(?: for [13] Years?)?$")
_VM = re.compile(r"^(?:Spot Preemptible )?(A2|A3|A3 Mega|A3 Ultra|G2) Instance (Core|Ram) running in [\w .,()-]+$")
_VM_COMMIT = re.compile(r"^Commitment v1: (A2|A3|A3 Mega|A3 Ultra|G2) (Cpu|Ram) in [\w .,()-]+ for [13] Years?$")
_EXCLUDE = ("Sole Tenancy", "DWS", "Dynamic Workload", "Flex", "Calendar", "Reserved", "Custom", "Extended")


@dataclass(frozen=True)
class MachineShape:
    vcpus: int
    memory_gib: float
    gpus: int
    family: str  # the VM SKUs' family name: "A2", "A3", "A3 Mega", "A3 Ultra", "G2"
    gpu: str  # the GPU SKUs' name: "Nvidia L4"


def _shapes(prefix: str, family: str, gpu: str, sizes: Iterable[tuple[str, int, float, int]]) -> dict[str, MachineShape]:
    return {f"{prefix}-{suffix}": MachineShape(c, m, g, family, gpu) for suffix, c, m, g in sizes}


# Machine shapes from https://cloud.google.com/compute/docs/accelerator-optimized-machines
MACHINES: dict[str, MachineShape] = {
    **_shapes("a2-highgpu", "A2", "Nvidia Tesla A100",
              [("1g", 12, 85, 1), ("2g", 24, 170, 2), ("4g", 48, 340, 4), ("8g", 96, 680, 8)]),
    **_shapes("a2-megagpu", "A2", "Nvidia Tesla A100", [("16g", 96, 1360, 16)]),
    **_shapes("a2-ultragpu", "A2", "Nvidia A100 80GB",
              [("1g", 12, 170, 1), ("2g", 24, 340, 2), ("4g", 48, 680, 4), ("8g", 96, 1360, 8)]),
    **_shapes("a3-highgpu", "A3", "Nvidia H100 80GB",
              [("1g", 26, 234, 1), ("2g", 52, 468, 2), ("4g", 104, 936, 4), ("8g", 208, 1872, 8)]),
    **_shapes("a3-megagpu", "A3 Mega", "Nvidia H100 80GB Mega", [("8g", 208, 1872, 8)]),
    **_shapes("a3-ultragpu", "A3 Ultra", "Nvidia H200 141GB", [("8g", 224, 2952, 8)]),
    **_shapes("g2-standard", "G2", "Nvidia L4",
              [("4", 4, 16, 1), ("8", 8, 32, 1), ("12", 12, 48, 1), ("16", 16, 64, 1),
               ("24", 24, 96, 2), ("32", 32, 128, 1), ("48", 48, 192, 4), ("96", 96, 384, 8)]),
}

# NVML model name -> GPU SKU name, for GPUs attached to N1 (and other general) machines.
NVML_TO_SKU: dict[str, str] = {
    "Tesla T4": "Nvidia Tesla T4",
    "Tesla P4": "Nvidia Tesla P4",
    "Tesla P100-PCIE-16GB": "Nvidia Tesla P100",
    "Tesla V100-SXM2-16GB": "Nvidia Tesla V100",
    "NVIDIA L4": "Nvidia L4",
    "NVIDIA A100-SXM4-40GB": "Nvidia Tesla A100",
    "NVIDIA A100-SXM4-80GB": "Nvidia A100 80GB",
    "NVIDIA H100 80GB HBM3": "Nvidia H100 80GB",
    "NVIDIA H200": "Nvidia H200 141GB",
}
SKU_TO_NVML: dict[str, str] = {**{sku: nvml for nvml, sku in NVML_TO_SKU.items()},
                               "Nvidia H100 80GB Mega": "NVIDIA H100 80GB HBM3"}


@dataclass(frozen=True)
class GcpRate:
    """One priced SKU: a GPU, or a family's vCPU (``core``) or GiB of memory (``ram``)."""

    kind: str  # "gpu", "core", "ram"
    name: str  # "Nvidia L4" for a GPU, "G2" for a family
    usage: str  # "on-demand", "spot", "commit-1y", "commit-3y"
    regions: tuple[str, ...]
    hourly: float
    sku_id: str


@dataclass(frozen=True)
class Priced:
    """A price found in the catalog, with the SKUs it was added up from."""

    hourly: float
    gpus: int  # how many GPUs the price covers
    skus: tuple[str, ...]
    whole_machine: bool


def money(units: Any, nanos: Any) -> float:
    """A google.type.Money amount (``units`` is an int64, sent as a string)."""
    return int(units or 0) + int(nanos or 0) / 1e9


def parse_sku(sku: Mapping[str, Any]) -> GcpRate | None:
    """The rate of one Sku (API JSON), or None for a SKU we do not price with."""
    category = sku.get("category", {})
    usage = USAGE.get(category.get("usageType", ""))
    description = sku.get("description", "")
    if usage is None or category.get("resourceFamily") != "Compute" or any(x in description for x in _EXCLUDE):
        return None
    match = _GPU.match(description)
    if match:
        kind, name = "gpu", match.group(1)
    elif (match := _VM.match(description) or _VM_COMMIT.match(description)):
        kind, name = ("core" if match.group(2) in ("Core", "Cpu") else "ram"), match.group(1)
    else:
        return None
    infos = sku.get("pricingInfo") or []
    if not infos:
        return None
    expression = infos[-1].get("pricingExpression", {})
    tiers = expression.get("tieredRates") or []
    if not tiers or expression.get("usageUnit") not in HOURLY_UNITS:
        return None
    price = tiers[-1].get("unitPrice", {})
    if price.get("currencyCode", "USD") != "USD":
        return None
    hourly = money(price.get("units"), price.get("nanos")) / float(expression.get("displayQuantity") or 1)
    return GcpRate(kind, name, usage, tuple(sku.get("serviceRegions", [])), round(hourly, 9), sku.get("skuId", ""))


@dataclass(frozen=True)
class GcpCatalog:
    """The Compute Engine rates we price with, looked up by (kind, name, usage, region)."""

    rates: tuple[GcpRate, ...]

    def rate(self, kind: str, name: str, usage: str, region: str) -> GcpRate | None:
        for rate in self.rates:
            if rate.kind == kind and rate.name == name and rate.usage == usage and region in rate.regions:
                return rate
        return None

    def gpu_sku(self, machine_type: str | None, model: str) -> str | None:
        shape = MACHINES.get(machine_type or "")
        return shape.gpu if shape else NVML_TO_SKU.get(model)

    def price(self, machine_type: str | None, model: str, region: str, usage: str) -> Priced | None:
        """A whole A2/A3/G2 machine (vCPUs + memory + GPUs), or one attached GPU alone.

        None when any part is missing: a machine priced without its host would look
        cheaper than it is, so it is better left to the next price source.
        """
        shape = MACHINES.get(machine_type or "")
        if shape is not None:
            gpu = self.rate("gpu", shape.gpu, usage, region)
            core = self.rate("core", shape.family, usage, region)
            ram = self.rate("ram", shape.family, usage, region)
            if gpu is None or core is None or ram is None:
                return None
            hourly = shape.gpus * gpu.hourly + shape.vcpus * core.hourly + shape.memory_gib * ram.hourly
            return Priced(round(hourly, 9), shape.gpus, (gpu.sku_id, core.sku_id, ram.sku_id), True)
        name = NVML_TO_SKU.get(model)
        gpu = self.rate("gpu", name, usage, region) if name else None
        return Priced(gpu.hourly, 1, (gpu.sku_id,), False) if gpu else None

    def commitments(self, machine_type: str | None, model: str, region: str) -> tuple[CommitmentOption, ...]:
        """1- and 3-year committed-use prices of the same unit :meth:`price` prices.

        GCP commitments are billed monthly with nothing upfront, hence ``no-upfront``.
        """
        options = []
        for years in (1, 3):
            found = self.price(machine_type, model, region, f"commit-{years}y")
            if found is not None:
                options.append(CommitmentOption("committed-use", years, "no-upfront", found.hourly, SOURCE))
        return tuple(options)

    def to_json(self) -> list[list[Any]]:
        return [[r.kind, r.name, r.usage, list(r.regions), r.hourly, r.sku_id] for r in self.rates]

    @classmethod
    def from_json(cls, data: Iterable[list[Any]]) -> "GcpCatalog":
        return cls(tuple(GcpRate(k, n, u, tuple(rg), float(h), s) for k, n, u, rg, h, s in data))


def catalog_from_skus(skus: Iterable[Mapping[str, Any]]) -> GcpCatalog:
    rates = (parse_sku(s) for s in skus)
    return GcpCatalog(tuple(r for r in rates if r is not None))


class GcpPrices:
    """The Cloud Catalog behind one object.

    Tests pass a real ``CloudCatalogClient(transport="rest")`` pointed at a local fake;
    the agent passes nothing and gets a client with Application Default Credentials
    (Workload Identity, a service account key in the environment, gcloud).
    """

    def __init__(self, client: Any = None, page_size: int = 5000) -> None:
        self._client = client
        self.page_size = page_size

    @property
    def client(self) -> Any:
        if self._client is None:
            from google.auth.exceptions import GoogleAuthError
            from google.cloud import billing_v1

            try:
                self._client = billing_v1.CloudCatalogClient()
            except GoogleAuthError as err:
                raise PriceApiError(SOURCE, type(err).__name__) from None
        return self._client

    def catalog(self) -> GcpCatalog:
        """Every page of the Compute Engine SKUs, reduced to the rates we use."""
        from google.api_core.exceptions import GoogleAPIError, TooManyRequests
        from google.auth.exceptions import GoogleAuthError
        from google.cloud import billing_v1

        try:
            pager = self.client.list_skus(request={"parent": COMPUTE_ENGINE, "page_size": self.page_size})
            wanted = []
            for sku in pager:
                if sku.category.resource_family != "Compute":
                    continue
                text = sku.description
                if " GPU " in text or "Instance Core" in text or "Instance Ram" in text or text.startswith("Commitment v1:"):
                    wanted.append(json.loads(billing_v1.Sku.to_json(sku)))
        except TooManyRequests as err:
            raise PriceApiError(SOURCE, f"list_skus throttled: {err.code}", throttled=True) from None
        except GoogleAPIError as err:
            raise PriceApiError(SOURCE, f"list_skus failed: {type(err).__name__}") from None
        except GoogleAuthError as err:
            raise PriceApiError(SOURCE, type(err).__name__) from None
        except (OSError, ValueError) as err:  # transport errors outside api_core's mapping
            raise PriceApiError(SOURCE, f"list_skus failed: {type(err).__name__}") from None
        return catalog_from_skus(wanted)


# --------------------------------------------------------------------------- in the chain
# How the price chain (collectors/pricing/chain.py) asks this source about a GKE node;
# declared in collectors/pricing/sources.py. The chain has checked that the node is GCP.


def _catalog(chain, api: GcpPrices) -> Lookup:
    return chain.cache.lookup((SOURCE, "catalog"), lambda: api.catalog().to_json())


def price(chain, api: GcpPrices, labels: Mapping[str, str], model: str, physical: int,
          steps: list[Step]) -> tuple[GpuPrice, str, float | None] | None:
    """A2/A3/G2 machines priced whole and split over their GPUs; other GPUs by their GPU SKU."""
    where = pricing_labels(labels)
    if not where.region or physical <= 0:
        steps.append(Step(SOURCE, "skipped", "the node has no region label"))
        return None
    lookup = _catalog(chain, api)
    catalog = GcpCatalog.from_json(lookup.value) if lookup.found else None
    usage = "spot" if where.capacity_type == "spot" else "on-demand"
    priced = catalog.price(where.instance_type, model, where.region, usage) if catalog else None
    share = chain.gpu_share
    if priced is None:
        return node_step(SOURCE, lookup, None, f"{usage} price of {where.instance_type or model}", physical,
                         share, steps)
    what = f"{usage} SKUs {', '.join(priced.skus)} in {where.region}"
    if priced.whole_machine:
        return node_step(SOURCE, lookup, priced.hourly, f"{where.instance_type} {what}", physical, share, steps)
    return GpuPrice(priced.hourly, SOURCE), f"GPU {what} (GPU only){stale_note(lookup)}", None


def commitments(chain, api: GcpPrices, labels: Mapping[str, str], model: str) -> list[Commitment]:
    """Committed-use discounts: per machine for A2/A3/G2, per GPU otherwise."""
    where = pricing_labels(labels)
    if not where.region:
        return []
    lookup = _catalog(chain, api)
    if not lookup.found:
        return []
    options = GcpCatalog.from_json(lookup.value).commitments(where.instance_type, model, where.region)
    if not options:
        return []
    if where.instance_type in MACHINES:
        return [Commitment(options=options, match={INSTANCE_TYPE_LABELS[0]: where.instance_type,
                                                   REGION_LABELS[0]: where.region})]
    return [Commitment(options=options, gpu_model=model)]
