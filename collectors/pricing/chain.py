"""The agent's Pricer: price sources stacked in a fixed order, each price naming its source.

The order is the contract (``docs/pricing.md``):

1. the user's rate card: its ``nodes`` entries, then its ``gpus`` entries (``rate-card``);
2. the cloud price APIs, when enabled, in the order of
   :data:`collectors.pricing.sources.SOURCES`: AWS (``aws-api``) for AWS nodes, GCP
   (``gcp-api``) for GKE nodes, Azure (``azure-api``) for AKS nodes; each source's module
   says how it prices a node (its ``price`` and ``commitments``);
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
from typing import Any, Mapping

from collectors.nodelabels import provider_of
from collectors.pricing.cache import PriceCache
from collectors.pricing.ratecard import (
    DEFAULT_SOURCE, RATE_CARD_SOURCE, Commitment, GpuPrice, RateCard, load_snapshot,
)
from collectors.pricing.sources import SOURCES
from collectors.pricing.steps import Step

__all__ = ["API_CURRENCY", "Explained", "PriceChain", "Step", "provider_of"]

API_CURRENCY = "USD"


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

    ``apis`` holds the cloud price sources to ask, by their name in
    :data:`~collectors.pricing.sources.SOURCES` (``{"aws": AwsPrices()}``); they are asked
    in the registry's order whatever the mapping's, and a source left out is not asked.
    ``cache`` holds API answers (in memory when not given); see
    :mod:`collectors.pricing.cache`.
    """

    card: RateCard | None = None
    snapshot: RateCard | None = None
    apis: Mapping[str, Any] = field(default_factory=dict)
    cache: PriceCache = field(default_factory=PriceCache)

    def __post_init__(self) -> None:
        if self.snapshot is None:
            self.snapshot = load_snapshot()
        unknown = set(self.apis) - {s.name for s in SOURCES}
        if unknown:
            raise ValueError(f"unknown price sources {sorted(unknown)}; expected among {[s.name for s in SOURCES]}")
        self.apis = {s.name: self.apis[s.name] for s in SOURCES if self.apis.get(s.name) is not None}

    @property
    def currency(self) -> str:
        return self.card.currency if self.card is not None else self.snapshot.currency

    @property
    def gpu_share(self) -> float:
        return self.card.gpu_share if self.card is not None else self.snapshot.gpu_share

    def __call__(self, labels: Mapping[str, str], model: str, physical_gpus: int) -> GpuPrice:
        return self.explain(labels, model, physical_gpus).price

    def _layers(self):
        """(declaration, its module, the client) of each source asked, in the chain's order."""
        return [(s, s.layer(), self.apis[s.name]) for s in SOURCES if s.name in self.apis]

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
        for declared, layer, api in self._layers():
            if not usd:
                steps.append(Step(layer.SOURCE, "skipped", f"cloud prices are USD; the rate card is {self.currency}"))
                continue
            if provider_of(labels) != declared.provider:
                continue
            found = layer.price(self, api, labels, model, physical_gpus, steps)
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
        from_apis = [c for declared, layer, api in self._layers() if provider_of(labels) == declared.provider
                     for c in layer.commitments(self, api, labels, model)]
        found += from_apis
        if not from_apis:
            found += _matching(self.snapshot, labels, model)
        return tuple(found)


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
