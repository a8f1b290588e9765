"""The agent's Pricer: price sources stacked in a fixed order, each price naming its source.

The order is the contract (``docs/pricing.md``):

1. the user's rate card: its ``nodes`` entries, then its ``gpus`` entries (``rate-card``);
2. the cloud price APIs, when enabled: AWS (``aws-api``) for AWS nodes, GCP
   (``gcp-api``) for GKE nodes, Azure (``azure-api``) for AKS nodes;
3. the bundled snapshot's ``nodes`` and ``gpus`` entries (``snapshot:DATE``);
4. the rate card's ``default_gpu_hourly`` (the snapshot's when there is no card)
   (``default``).

The user's figures always win, live prices beat a dated table, and every GPU gets
*some* price. A whole-node price (a ``nodes`` entry, an instance or machine price) is
multiplied by ``gpu_share`` and split evenly over the node's physical GPUs; a per-GPU
price is used as is. :meth:`PriceChain.explain` says which step priced a node and why
the earlier ones did not, which is what ``gpuledger prices show`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from collectors.nodelabels import INSTANCE_TYPE_LABELS, REGION_LABELS, pricing_labels, provider_of
from collectors.pricing.aws import AwsPrices, InstanceOffer, describe_location
from collectors.pricing.aws import SOURCE as AWS_SOURCE
from collectors.pricing.azure import SOURCE as AZURE_SOURCE
from collectors.pricing.azure import AzureOffer, AzurePrices
from collectors.pricing.cache import Lookup, PriceCache
from collectors.pricing.gcp import MACHINES, GcpCatalog, GcpPrices
from collectors.pricing.gcp import SOURCE as GCP_SOURCE
from collectors.pricing.ratecard import (
    DEFAULT_SOURCE, RATE_CARD_SOURCE, Commitment, CommitmentOption, GpuPrice, RateCard, load_snapshot,
    options_from_json, options_to_json,
)

API_CURRENCY = "USD"
INSTANCE_TYPE = INSTANCE_TYPE_LABELS[0]
REGION = REGION_LABELS[0]


@dataclass(frozen=True)
class Step:
    """One price source's answer for one node: ``priced``, ``no match``, ``skipped`` or ``unavailable``."""

    source: str
    outcome: str
    detail: str


@dataclass(frozen=True)
class Explained:
    """A GPU's price, the entry it came from, and what each earlier source said."""

    price: GpuPrice
    entry: str
    steps: tuple[Step, ...]
    node_hourly: float | None = None  # the whole-node price, when the price is one


@dataclass
class PriceChain:
    """A :class:`~collectors.pricing.ratecard.Pricer` over every price source.

    ``aws`` / ``gcp`` / ``azure`` None leaves that cloud's API out. ``cache`` holds API answers
    (in memory when not given); see :mod:`collectors.pricing.cache`.
    """

    card: RateCard | None = None
    snapshot: RateCard | None = None
    aws: AwsPrices | None = None
    gcp: GcpPrices | None = None
    cache: PriceCache = field(default_factory=PriceCache)
    azure: AzurePrices | None = None

    def __post_init__(self) -> None:
        if self.snapshot is None:
            self.snapshot = load_snapshot()

    @property
    def currency(self) -> str:
        return self.card.currency if self.card is not None else self.snapshot.currency

    @property
    def gpu_share(self) -> float:
        return self.card.gpu_share if self.card is not None else self.snapshot.gpu_share

    def __call__(self, labels: Mapping[str, str], model: str, physical_gpus: int) -> GpuPrice:
        return self.explain(labels, model, physical_gpus).price

    # ------------------------------------------------------------------ pricing

    def explain(self, labels: Mapping[str, str], model: str, physical_gpus: int) -> Explained:
        steps: list[Step] = []
        if self.card is not None:
            found = _card_price(self.card, labels, model, physical_gpus, self.gpu_share, "rate card")
            if found is not None:
                return Explained(found[0], found[1], tuple(steps), found[2])
            steps.append(Step(RATE_CARD_SOURCE, "no match", "no nodes entry matches the labels and "
                              f"no gpus entry names {model!r}"))
        usd = self.currency == API_CURRENCY
        for name, layer, source in (("aws", self._aws, AWS_SOURCE), ("gcp", self._gcp, GCP_SOURCE),
                                    ("azure", self._azure, AZURE_SOURCE)):
            if getattr(self, name) is None:
                continue
            if not usd:
                steps.append(Step(source, "skipped", f"cloud prices are USD; the rate card is {self.currency}"))
                continue
            found = layer(labels, model, physical_gpus, steps)
            if found is not None:
                return Explained(found[0], found[1], tuple(steps), found[2])
        snapshot = self.snapshot
        if usd:
            found = _card_price(snapshot, labels, model, physical_gpus, self.gpu_share, "snapshot")
            if found is not None:
                return Explained(found[0], found[1], tuple(steps), found[2])
            steps.append(Step(snapshot.name, "no match", "the snapshot lists neither this instance type "
                              f"in this region nor {model!r}"))
        else:
            steps.append(Step(snapshot.name, "skipped", f"the snapshot is USD; the rate card is {self.currency}"))
        default = (self.card or snapshot).default_gpu_hourly
        where = "rate card" if self.card is not None else "snapshot"
        return Explained(GpuPrice(default, DEFAULT_SOURCE), f"{where} default_gpu_hourly", tuple(steps))

    def _aws(self, labels, model, physical, steps) -> tuple[GpuPrice, str, float] | None:
        if provider_of(labels) != "aws":
            return None
        where = pricing_labels(labels)
        missing = [f"{what} label ({labels_[0]})" for what, value, labels_ in (
            ("instance type", where.instance_type, INSTANCE_TYPE_LABELS), ("region", where.region, REGION_LABELS))
            if not value]
        if missing or physical <= 0:
            why = ("the node has no " + " and no ".join(missing) if missing
                   else "the node's GPU count is not known")
            steps.append(Step(AWS_SOURCE, "skipped", why + "; the AWS price APIs price an instance type in a region"))
            return None
        it, region = where.instance_type, where.region
        if where.capacity_type == "spot":
            zones = [where.zone] if where.zone else None
            lookup = self.cache.lookup((AWS_SOURCE, "spot", it, region, where.zone or "*"),
                                       lambda: self.aws.spot_hourly(it, region, zones))
            hourly, what = lookup.value, f"spot price of {it} in {where.zone or 'every zone of ' + region}"
        else:
            lookup = self.cache.lookup((AWS_SOURCE, "offer", it, region),
                                       lambda: _offer_json(self.aws.instance_offer(it, region)))
            offer = InstanceOffer.from_json(lookup.value) if lookup.found else None
            hourly = offer.on_demand_hourly if offer else None
            what = f"on-demand price of {it} in {describe_location(region)}" + (f", SKU {offer.sku}" if offer else "")
        return self._node_step(AWS_SOURCE, lookup, hourly, what, physical, steps)

    def _gcp(self, labels, model, physical, steps) -> tuple[GpuPrice, str, float | None] | None:
        if provider_of(labels) != "gcp":
            return None
        where = pricing_labels(labels)
        if not where.region or physical <= 0:
            steps.append(Step(GCP_SOURCE, "skipped", "the node has no region label"))
            return None
        lookup = self._catalog()
        catalog = GcpCatalog.from_json(lookup.value) if lookup.found else None
        usage = "spot" if where.capacity_type == "spot" else "on-demand"
        priced = catalog.price(where.instance_type, model, where.region, usage) if catalog else None
        if priced is None:
            return self._node_step(GCP_SOURCE, lookup, None, f"{usage} price of {where.instance_type or model}", physical, steps)
        what = f"{usage} SKUs {', '.join(priced.skus)} in {where.region}"
        if priced.whole_machine:
            return self._node_step(GCP_SOURCE, lookup, priced.hourly, f"{where.instance_type} {what}", physical, steps)
        note = _stale_note(lookup)
        return GpuPrice(priced.hourly, GCP_SOURCE), f"GPU {what} (GPU only){note}", None

    def _azure(self, labels, model, physical, steps) -> tuple[GpuPrice, str, float] | None:
        if provider_of(labels) != "azure":
            return None
        where = pricing_labels(labels)
        missing = [f"{what} label ({labels_[0]})" for what, value, labels_ in (
            ("VM size", where.instance_type, INSTANCE_TYPE_LABELS), ("region", where.region, REGION_LABELS))
            if not value]
        if missing or physical <= 0:
            why = ("the node has no " + " and no ".join(missing) if missing
                   else "the node's GPU count is not known")
            steps.append(Step(AZURE_SOURCE, "skipped", why + "; the Azure Retail Prices API prices a VM size in a region"))
            return None
        sku, region = where.instance_type, where.region
        lookup = self._azure_offer(sku, region)
        offer = AzureOffer.from_json(lookup.value) if lookup.found else None
        if where.capacity_type == "spot":
            hourly, what = (offer.spot_hourly if offer else None), f"spot price of {sku} in {region}"
        else:
            hourly = offer.on_demand_hourly if offer else None
            what = f"on-demand price of {sku} in {region}" + (f" ({offer.product}, meter {offer.meter!r})" if offer else "")
        return self._node_step(AZURE_SOURCE, lookup, hourly, what, physical, steps)

    def _azure_offer(self, sku: str, region: str) -> Lookup:
        return self.cache.lookup((AZURE_SOURCE, "consumption", sku, region),
                                 lambda: _offer_json(self.azure.offer(sku, region)))

    def _node_step(self, source: str, lookup: Lookup, hourly: float | None, what: str, physical: int,
                   steps: list[Step]) -> tuple[GpuPrice, str, float] | None:
        if hourly is None:
            if lookup.status == "unavailable":
                steps.append(Step(source, "unavailable", f"{lookup.error}; no earlier answer cached"))
            else:
                steps.append(Step(source, "no match", f"no {what}"))
            return None
        share = self.gpu_share
        price = GpuPrice(hourly * share / physical, source)
        return price, f"{what}: {hourly:g}/h x gpu_share {share:g} / {physical} GPUs{_stale_note(lookup)}", hourly

    def _catalog(self) -> Lookup:
        return self.cache.lookup((GCP_SOURCE, "catalog"), lambda: self.gcp.catalog().to_json())

    # ------------------------------------------------------------------ commitments

    def commitments(self, labels: Mapping[str, str], model: str) -> tuple[Commitment, ...]:
        """Commitment options for this node: the rate card's, then the cloud APIs', and the
        snapshot's only when no API offered any (the same order as prices).

        Prices are per committed unit: per node for ``match`` pools, per GPU for
        ``gpu_model`` pools, like :class:`~collectors.pricing.ratecard.CommitmentOption`.
        """
        found = list(_matching(self.card, labels, model)) if self.card is not None else []
        if self.currency != API_CURRENCY:
            return tuple(found)
        from_apis = self._aws_commitments(labels) + self._gcp_commitments(labels, model) + \
            self._azure_commitments(labels)
        found += from_apis
        if not from_apis:
            found += _matching(self.snapshot, labels, model)
        return tuple(found)

    def _aws_commitments(self, labels: Mapping[str, str]) -> list[Commitment]:
        where = pricing_labels(labels)
        if provider_of(labels) != "aws" or self.aws is None or not where.instance_type or not where.region:
            return []
        it, region = where.instance_type, where.region
        offer = self.cache.get((AWS_SOURCE, "offer", it, region),
                               lambda: _offer_json(self.aws.instance_offer(it, region)))
        plans = self.cache.get((AWS_SOURCE, "savings-plans", it, region),
                               lambda: options_to_json(self.aws.savings_plans(it, region)))
        options: tuple[CommitmentOption, ...] = ()
        if offer is not None:
            options += InstanceOffer.from_json(offer).reserved
        if plans is not None:
            options += options_from_json(plans)
        return [Commitment(options=options, match={INSTANCE_TYPE: it, REGION: region})] if options else []

    def _gcp_commitments(self, labels: Mapping[str, str], model: str) -> list[Commitment]:
        where = pricing_labels(labels)
        if provider_of(labels) != "gcp" or self.gcp is None or not where.region:
            return []
        lookup = self._catalog()
        if not lookup.found:
            return []
        options = GcpCatalog.from_json(lookup.value).commitments(where.instance_type, model, where.region)
        if not options:
            return []
        if where.instance_type in MACHINES:
            return [Commitment(options=options, match={INSTANCE_TYPE: where.instance_type, REGION: where.region})]
        return [Commitment(options=options, gpu_model=model)]

    def _azure_commitments(self, labels: Mapping[str, str]) -> list[Commitment]:
        """Reservations (whole-term prices made hourly) and savings plans of the node's VM size."""
        where = pricing_labels(labels)
        if provider_of(labels) != "azure" or self.azure is None or not where.instance_type or not where.region:
            return []
        sku, region = where.instance_type, where.region
        offer = self._azure_offer(sku, region).value
        reserved = self.cache.get((AZURE_SOURCE, "reservation", sku, region),
                                  lambda: options_to_json(self.azure.reservations(sku, region)))
        options: tuple[CommitmentOption, ...] = ()
        if reserved is not None:
            options += options_from_json(reserved)
        if offer is not None:
            options += AzureOffer.from_json(offer).savings_plans
        return [Commitment(options=options, match={INSTANCE_TYPE: sku, REGION: region})] if options else []


# --------------------------------------------------------------------------- helpers


def _card_price(card: RateCard, labels, model: str, physical: int, share: float,
                what: str) -> tuple[GpuPrice, str, float | None] | None:
    """A card's nodes entry (split over the GPUs) or gpus entry; None when neither matches."""
    if physical > 0:
        for i, rate in enumerate(card.nodes):
            if all(labels.get(k) == v for k, v in rate.match.items()):
                match = ", ".join(f"{k}={v}" for k, v in rate.match.items())
                entry = f"{what} nodes[{i}] ({match}): {rate.hourly:g}/h x gpu_share {share:g} / {physical} GPUs"
                return GpuPrice(rate.hourly * share / physical, rate.source), entry, rate.hourly
    gpu = card.gpus.get(model)
    if gpu is not None:
        return GpuPrice(gpu.hourly, gpu.source), f"{what} gpus[{model!r}]: {gpu.hourly:g}/h per GPU", None
    return None


def _matching(card: RateCard, labels: Mapping[str, str], model: str) -> tuple[Commitment, ...]:
    """A card's commitments whose pool this node is in: by label match or by GPU model.

    Where two label matches both fit the node and one is a narrower case of the other
    (the same instance type, in a given region), only the narrower one is its pool:
    the other is the fallback for nodes the narrower one does not cover."""
    found = [c for c in card.commitments
             if (c.match is not None and all(labels.get(k) == v for k, v in c.match.items()))
             or (c.gpu_model is not None and c.gpu_model == model)]
    return tuple(c for c in found
                 if c.match is None or not any(o.match is not None and o is not c and o.match.items() > c.match.items()
                                               for o in found))


def _stale_note(lookup: Lookup) -> str:
    return f" (last good answer kept: {lookup.error})" if lookup.status == "stale" else ""


def _offer_json(offer: InstanceOffer | AzureOffer | None):
    return offer.to_json() if offer is not None else None


def build_chain(card: RateCard | None = None, aws: bool = False, gcp: bool = False,
                cache: PriceCache | None = None, azure: bool = False) -> PriceChain:
    """The chain the agent and ``prices show`` use; API clients are made on first use."""
    return PriceChain(card=card, aws=AwsPrices() if aws else None, gcp=GcpPrices() if gcp else None,
                      cache=cache if cache is not None else PriceCache(), azure=AzurePrices() if azure else None)
