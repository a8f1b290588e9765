"""Rate cards: what a GPU-second costs, from a user's YAML or the bundled snapshot.

A rate card prices a *physical* GPU. The first ``nodes`` entry whose labels all match
the node's labels gives the node's hourly price, of which ``gpu_share`` is charged to
its GPUs, split evenly over the physical GPUs on the node. Failing that, the ``gpus``
entry for the device model gives a per-GPU hourly price; failing that,
``default_gpu_hourly``. MIG slices are priced by the cost model, as a share of their
parent's price. ``docs/rate-card.md`` is the contract.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

from collectors.errors import describe
from collectors.pricing.energy import NO_ENERGY_SECTION, EnergyRates, parse_energy
from collectors.yamlfile import Key, LocatedYaml

MAX_HOURLY = 1e9  # any price above a billion an hour is a mistake, and keeps every sum of money finite
RATE_CARD_SOURCE = "rate-card"
DEFAULT_SOURCE = "default"
SNAPSHOT_FILE = "snapshot.yaml"


@dataclass(frozen=True)
class NodeRate:
    """A node price by label match; ``source`` names where the figure comes from."""

    match: Mapping[str, str]
    hourly: float
    source: str


@dataclass(frozen=True)
class GpuRate:
    hourly: float
    source: str


@dataclass(frozen=True)
class GpuPrice:
    """The price of one physical GPU on one node, and where it came from."""

    hourly: float
    source: str

    @property
    def per_second(self) -> float:
        return self.hourly / 3600.0


@dataclass(frozen=True)
class CommitmentOption:
    """One way to commit: e.g. a 1-year no-upfront Reserved Instance.

    ``hourly`` is the effective hourly rate of one committed unit (a node for
    node-priced pools, a GPU for GPU-priced pools), upfront payment amortised over the
    term, in the card's currency.
    """

    kind: str  # "reserved-instance", "savings-plan", "committed-use"
    term_years: int  # 1 or 3
    payment: str  # "no-upfront", "partial-upfront", "all-upfront"
    hourly: float
    source: str


def options_to_json(options: Iterable[CommitmentOption]) -> list[dict[str, Any]]:
    """Commitment options as plain JSON data (how the price cache keeps API answers)."""
    return [{"kind": o.kind, "term_years": o.term_years, "payment": o.payment, "hourly": o.hourly,
             "source": o.source} for o in options]


def options_from_json(data: Iterable[Mapping[str, Any]]) -> tuple[CommitmentOption, ...]:
    return tuple(CommitmentOption(d["kind"], int(d["term_years"]), d["payment"], float(d["hourly"]), d["source"])
                 for d in data)


@dataclass(frozen=True)
class Commitment:
    """The commitment options of one pool: nodes matching ``match``, or GPUs of ``gpu_model``."""

    options: tuple[CommitmentOption, ...]
    match: Mapping[str, str] | None = None
    gpu_model: str | None = None


@dataclass(frozen=True)
class RateCard:
    currency: str
    default_gpu_hourly: float
    gpu_share: float = 1.0
    nodes: tuple[NodeRate, ...] = ()
    gpus: Mapping[str, GpuRate] = field(default_factory=dict)
    name: str = RATE_CARD_SOURCE
    commitments: tuple[Commitment, ...] = ()
    energy: EnergyRates = NO_ENERGY_SECTION  # docs/energy.md


class Pricer(Protocol):
    """Anything that prices a physical GPU: a rate card, or a chain of price sources."""

    currency: str

    def __call__(self, labels: Mapping[str, str], model: str, physical_gpus: int) -> GpuPrice: ...


@dataclass(frozen=True)
class RateCardPricer:
    """A rate card alone as a :class:`Pricer` (what ``replay --rates`` uses)."""

    card: RateCard

    @property
    def currency(self) -> str:
        return self.card.currency

    def __call__(self, labels: Mapping[str, str], model: str, physical_gpus: int) -> GpuPrice:
        return gpu_price(self.card, labels, model, physical_gpus)


def gpu_price(card: RateCard, labels: Mapping[str, str], model: str, physical_gpus: int) -> GpuPrice:
    """Hourly price of one physical GPU of ``model`` on a node with ``labels``.

    Pure: the same card, labels, model and GPU count always give the same price.
    """
    if physical_gpus > 0:
        for rate in card.nodes:
            if all(labels.get(k) == v for k, v in rate.match.items()):
                return GpuPrice(rate.hourly * card.gpu_share / physical_gpus, rate.source)
    gpu = card.gpus.get(model)
    if gpu is not None:
        return GpuPrice(gpu.hourly, gpu.source)
    return GpuPrice(card.default_gpu_hourly, DEFAULT_SOURCE)


# --------------------------------------------------------------------------- loading

_CARD_KEYS = {"currency", "gpu_share", "nodes", "gpus", "default_gpu_hourly", "commitments", "energy"}
_SNAPSHOT_KEYS = _CARD_KEYS | {"format", "date", "sources"}


def load_rate_card(path: str | Path) -> RateCard:
    """Read and check a user's rate card; raises InputError naming file, line and field."""
    doc = LocatedYaml(path)
    return _parse(doc, snapshot=False, source=RATE_CARD_SOURCE)


@lru_cache(maxsize=1)
def load_snapshot() -> RateCard:
    """The bundled, dated price snapshot; every price's source reads ``snapshot:DATE``."""
    path = resources.files("collectors.pricing").joinpath(SNAPSHOT_FILE)
    with resources.as_file(path) as real:
        doc = LocatedYaml(real, bundled=True)
    if not isinstance(doc.data, dict) or "date" not in doc.data:
        raise doc.error(("date",), "the bundled snapshot has no date")
    date = str(doc.data["date"])
    card = _parse(doc, snapshot=True, source=f"snapshot:{date}")
    return RateCard(
        currency=card.currency, default_gpu_hourly=card.default_gpu_hourly,
        gpu_share=card.gpu_share, nodes=card.nodes, gpus=card.gpus, name=f"snapshot:{date}",
        commitments=card.commitments, energy=card.energy,
    )


def _parse(doc: LocatedYaml, snapshot: bool, source: str) -> RateCard:
    """A RateCard from parsed YAML; the snapshot may carry descriptive extra fields."""
    allowed = _SNAPSHOT_KEYS if snapshot else _CARD_KEYS
    entry_extras = {"provider", "gpu_model", "gpus", "source"} if snapshot else set()
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error((), f"expected a mapping with {', '.join(sorted(_CARD_KEYS))}")
    for key in data:
        if key not in allowed:
            raise doc.error((key,), f"unknown field; expected one of {', '.join(sorted(allowed))}")
    currency = data.get("currency")
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha() or not currency.isupper():
        raise doc.error(("currency",), f"expected a three-letter ISO 4217 code such as USD, got {describe(currency)}")
    gpu_share = _number(doc, ("gpu_share",), data.get("gpu_share", 1.0), low_exclusive=0.0, high=1.0)
    if "default_gpu_hourly" not in data:
        raise doc.error((), "field 'default_gpu_hourly' is required: the price of a GPU no entry matches")
    default = _number(doc, ("default_gpu_hourly",), data["default_gpu_hourly"], low=0.0)

    nodes_raw = data.get("nodes") or []
    if not isinstance(nodes_raw, list):
        raise doc.error(("nodes",), "expected a list of {match, hourly} entries")
    nodes = []
    for i, entry in enumerate(nodes_raw):
        key = ("nodes", i)
        if not isinstance(entry, dict):
            raise doc.error(key, "expected a mapping with match and hourly")
        match = entry.get("match")
        if not isinstance(match, dict) or not match or not all(isinstance(k, str) for k in match):
            raise doc.error(key + ("match",), "expected a non-empty mapping of node labels to values")
        extra = set(entry) - {"match", "hourly"} - entry_extras
        if extra:
            raise doc.error(key + (sorted(extra)[0],), "unknown field; expected match and hourly")
        hourly = _number(doc, key + ("hourly",), entry.get("hourly"), low=0.0)
        nodes.append(NodeRate({k: str(v) for k, v in match.items()}, hourly, source))

    gpus_raw = data.get("gpus") or {}
    if not isinstance(gpus_raw, dict):
        raise doc.error(("gpus",), "expected a mapping of GPU model name to hourly price")
    gpus = {}
    for model, value in gpus_raw.items():
        key = ("gpus", model)
        hourly_value = value.get("hourly") if isinstance(value, dict) else value
        gpus[str(model)] = GpuRate(_number(doc, key, hourly_value, low=0.0), source)
    commitments = _commitments(doc, data.get("commitments"), source, entry_extras)
    energy = parse_energy(doc, data.get("energy"))
    return RateCard(currency, default, gpu_share, tuple(nodes), gpus, commitments=commitments, energy=energy)


COMMITMENT_KINDS = ("reserved-instance", "savings-plan", "committed-use")
COMMITMENT_TERMS = (1, 3)
COMMITMENT_PAYMENTS = ("no-upfront", "partial-upfront", "all-upfront")


def _commitments(doc: LocatedYaml, raw: Any, source: str, extras: set[str]) -> tuple[Commitment, ...]:
    """The ``commitments`` section: per node match or GPU model, options with term, payment and rate.

    An entry has exactly one of ``match`` (node labels, like ``nodes``) and ``gpu_model``
    (an NVML model name), and a non-empty list of ``options``.
    """
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise doc.error(("commitments",), "expected a list of {match or gpu_model, options} entries")
    out = []
    entry_extra = {"source", "note", "provider", "date"} if extras else set()
    for i, entry in enumerate(raw):
        key = ("commitments", i)
        if not isinstance(entry, dict):
            raise doc.error(key, "expected a mapping with match or gpu_model, and options")
        extra = set(entry) - {"match", "gpu_model", "options"} - entry_extra
        if extra:
            raise doc.error(key + (sorted(extra)[0],), "unknown field; expected match or gpu_model, and options")
        match, model = entry.get("match"), entry.get("gpu_model")
        if (match is None) == (model is None):
            raise doc.error(key, "expected exactly one of match (node labels) and gpu_model")
        if match is not None and (not isinstance(match, dict) or not match or not all(isinstance(k, str) for k in match)):
            raise doc.error(key + ("match",), "expected a non-empty mapping of node labels to values")
        if model is not None and (not isinstance(model, str) or not model):
            raise doc.error(key + ("gpu_model",), f"expected a GPU model name, got {describe(model)}")
        options_raw = entry.get("options")
        if not isinstance(options_raw, list) or not options_raw:
            raise doc.error(key + ("options",), "expected a non-empty list of {kind, term_years, payment, hourly}")
        options = []
        for j, opt in enumerate(options_raw):
            okey = key + ("options", j)
            if not isinstance(opt, dict):
                raise doc.error(okey, "expected a mapping with kind, term_years, payment and hourly")
            extra = set(opt) - {"kind", "term_years", "payment", "hourly"} - entry_extra
            if extra:
                raise doc.error(okey + (sorted(extra)[0],), "unknown field; expected kind, term_years, payment, hourly")
            kind, term, payment = opt.get("kind"), opt.get("term_years"), opt.get("payment")
            if kind not in COMMITMENT_KINDS:
                raise doc.error(okey + ("kind",), f"expected one of {', '.join(COMMITMENT_KINDS)}, got {describe(kind)}")
            if isinstance(term, bool) or term not in COMMITMENT_TERMS:
                raise doc.error(okey + ("term_years",), f"expected 1 or 3, got {describe(term)}")
            if payment not in COMMITMENT_PAYMENTS:
                raise doc.error(okey + ("payment",), f"expected one of {', '.join(COMMITMENT_PAYMENTS)}, got {describe(payment)}")
            hourly = _number(doc, okey + ("hourly",), opt.get("hourly"), low=0.0)
            options.append(CommitmentOption(kind, int(term), payment, hourly, source))
        out.append(Commitment(
            options=tuple(options),
            match={k: str(v) for k, v in match.items()} if match is not None else None,
            gpu_model=model,
        ))
    return tuple(out)


def _describe_number(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10 ** 30:
        return f"an integer of {len(str(abs(value)))} digits"
    return describe(value)


def _number(
    doc: LocatedYaml, key: Key, value: Any, low: float | None = None,
    low_exclusive: float | None = None, high: float | None = None,
) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok:
        try:
            ok = math.isfinite(float(value))
        except OverflowError:  # an integer of hundreds of digits
            ok = False
    if ok and high is None and low is not None and value > MAX_HOURLY:  # a price
        raise doc.error(key, f"expected a price of at most {MAX_HOURLY:g} an hour, got {describe(value)}")
    if ok and low is not None and value < low:
        ok = False
    if ok and low_exclusive is not None and value <= low_exclusive:
        ok = False
    if ok and high is not None and value > high:
        ok = False
    if not ok:
        if low_exclusive is not None and high is not None:
            want = f"a number above {low_exclusive:g} and at most {high:g}"
        elif low is not None:
            want = f"a number of at least {low:g}"
        else:
            want = "a number"
        raise doc.error(key, f"expected {want}, got {_describe_number(value)}")
    return float(value)
