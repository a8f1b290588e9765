"""What a GPU's energy costs and emits: the rate card's ``energy`` section and the carbon table.

A sample's energy is its board power times its interval (joules, as NVML measures it).
What that energy costs and emits depends on the node: the facility's overhead (``pue``),
the price of a kWh (which may change with the hour of the day) and the grid's carbon
intensity (grams CO2e per kWh, from the bundled table ``carbon.yaml`` by the node's region,
or from the rate card). :func:`energy_terms` answers, for one node, the figures the
accounting multiplies joules by. ``docs/energy.md`` is the contract.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping

from collectors.errors import describe
from collectors.yamlfile import Key, LocatedYaml

CARBON_FILE = "carbon.yaml"
JOULES_PER_KWH = 3.6e6
MAX_KWH_PRICE = 1e6  # per kWh: a larger figure is a mistake, and keeps every sum of money finite
MAX_PUE = 10.0
MAX_G_PER_KWH = 1e5  # the dirtiest grids are near 1,000 g/kWh


@dataclass(frozen=True)
class HourPrice:
    """A kWh price for the UTC hours ``start`` (included) to ``end`` (excluded), wrapping
    past midnight when ``end`` is not after ``start`` (22 to 6 is the night)."""

    start: int
    end: int
    kwh_price: float

    def hours(self) -> tuple[int, ...]:
        span = (self.end - self.start) % 24 or 24
        return tuple((self.start + h) % 24 for h in range(span))


@dataclass(frozen=True)
class EnergyNode:
    """Energy terms for the nodes whose labels all match ``match``; None: the section's."""

    match: Mapping[str, str]
    kwh_price: float | None = None
    pue: float | None = None
    hours: tuple[HourPrice, ...] | None = None
    carbon_g_per_kwh: float | None = None


@dataclass(frozen=True)
class EnergyRates:
    """The rate card's ``energy`` section (the defaults when a card has none).

    ``kwh_price`` None: energy has no price (``energy_cost`` is unknown). ``carbon``:
    grams CO2e per kWh by region, over the bundled table.
    """

    kwh_price: float | None = None
    pue: float = 1.0
    add_to_cost: bool = False
    hours: tuple[HourPrice, ...] = ()
    nodes: tuple[EnergyNode, ...] = ()
    carbon: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EnergyTerms:
    """What one node's joules are worth: a kWh price per UTC hour (NaN: no price), the
    PUE, and grams CO2e per kWh (NaN: unknown)."""

    kwh_by_hour: tuple[float, ...]
    pue: float
    g_per_kwh: float


NO_ENERGY_SECTION = EnergyRates()


def energy_terms(rates: EnergyRates, labels: Mapping[str, str], region: str | None) -> EnergyTerms:
    """The terms of a node with ``labels`` in ``region``: the first ``nodes`` entry whose
    labels all match, each of its fields falling back to the section's; the carbon
    intensity from that entry, else the section's ``carbon`` by region, else the
    bundled table by region, else unknown."""
    entry = next((n for n in rates.nodes if all(labels.get(k) == v for k, v in n.match.items())), None)
    kwh = rates.kwh_price if entry is None or entry.kwh_price is None else entry.kwh_price
    hours = rates.hours if entry is None or entry.hours is None else entry.hours
    pue = rates.pue if entry is None or entry.pue is None else entry.pue
    by_hour = [math.nan if kwh is None else kwh] * 24
    for tariff in hours:
        for h in tariff.hours():
            by_hour[h] = tariff.kwh_price
    g = entry.carbon_g_per_kwh if entry is not None else None
    if g is None and region is not None:
        g = rates.carbon.get(region)
        if g is None:
            g = carbon_table().get(region)
    return EnergyTerms(tuple(by_hour), pue, math.nan if g is None else g)


@dataclass(frozen=True)
class CarbonTable:
    date: str
    source: str
    regions: Mapping[str, float]

    def get(self, region: str) -> float | None:
        return self.regions.get(region)


@lru_cache(maxsize=1)
def carbon_table() -> CarbonTable:
    """The bundled table of grid carbon intensity by cloud region (``carbon.yaml``)."""
    path = resources.files("collectors.pricing").joinpath(CARBON_FILE)
    with resources.as_file(path) as real:
        doc = LocatedYaml(real, bundled=True)
    data = doc.data
    if not isinstance(data, dict) or not isinstance(data.get("regions"), dict):
        raise doc.error((), "the bundled carbon table has no regions")
    regions = {str(k): _number(doc, ("regions", k, "g_per_kwh"),
                               v.get("g_per_kwh") if isinstance(v, dict) else None, 0.0, MAX_G_PER_KWH)
               for k, v in data["regions"].items()}
    return CarbonTable(str(data.get("date")), str(data.get("source")), regions)


# --------------------------------------------------------------------------- the rate card's section

_SECTION_KEYS = ("kwh_price", "pue", "add_to_cost", "hours", "nodes", "carbon")
_NODE_KEYS = ("match", "kwh_price", "pue", "hours", "carbon_g_per_kwh")


def parse_energy(doc: LocatedYaml, raw: Any) -> EnergyRates:
    """The ``energy`` section of a rate card; InputError naming file, line and field."""
    key: Key = ("energy",)
    if raw is None:
        return NO_ENERGY_SECTION
    if not isinstance(raw, dict):
        raise doc.error(key, f"expected a mapping with {', '.join(_SECTION_KEYS)}")
    _known(doc, key, raw, _SECTION_KEYS)
    add = raw.get("add_to_cost", False)
    if not isinstance(add, bool):
        raise doc.error(key + ("add_to_cost",), f"expected true or false, got {describe(add)}")
    nodes_raw = raw.get("nodes") or []
    if not isinstance(nodes_raw, list):
        raise doc.error(key + ("nodes",), "expected a list of {match, kwh_price, pue, hours, carbon_g_per_kwh}")
    nodes = []
    for i, entry in enumerate(nodes_raw):
        nkey = key + ("nodes", i)
        if not isinstance(entry, dict):
            raise doc.error(nkey, "expected a mapping with match and the terms it sets")
        _known(doc, nkey, entry, _NODE_KEYS)
        match = entry.get("match")
        if not isinstance(match, dict) or not match or not all(isinstance(k, str) for k in match):
            raise doc.error(nkey + ("match",), "expected a non-empty mapping of node labels to values")
        nodes.append(EnergyNode(
            match={k: str(v) for k, v in match.items()},
            kwh_price=_optional(doc, nkey + ("kwh_price",), entry, "kwh_price", 0.0, MAX_KWH_PRICE),
            pue=_optional(doc, nkey + ("pue",), entry, "pue", 1.0, MAX_PUE),
            hours=_hours(doc, nkey + ("hours",), entry["hours"]) if entry.get("hours") is not None else None,
            carbon_g_per_kwh=_optional(doc, nkey + ("carbon_g_per_kwh",), entry, "carbon_g_per_kwh", 0.0,
                                       MAX_G_PER_KWH),
        ))
    carbon_raw = raw.get("carbon") or {}
    if not isinstance(carbon_raw, dict):
        raise doc.error(key + ("carbon",), "expected a mapping of region to grams CO2e per kWh")
    carbon = {str(region): _number(doc, key + ("carbon", region), value, 0.0, MAX_G_PER_KWH)
              for region, value in carbon_raw.items()}
    return EnergyRates(
        kwh_price=_optional(doc, key + ("kwh_price",), raw, "kwh_price", 0.0, MAX_KWH_PRICE),
        pue=_optional(doc, key + ("pue",), raw, "pue", 1.0, MAX_PUE) or 1.0,
        add_to_cost=add,
        hours=_hours(doc, key + ("hours",), raw.get("hours") or []),
        nodes=tuple(nodes),
        carbon=carbon,
    )


def _hours(doc: LocatedYaml, key: Key, raw: Any) -> tuple[HourPrice, ...]:
    if not isinstance(raw, list):
        raise doc.error(key, "expected a list of {from, to, kwh_price} (UTC hours 0-24)")
    out = []
    for i, entry in enumerate(raw):
        hkey = key + (i,)
        if not isinstance(entry, dict):
            raise doc.error(hkey, "expected a mapping with from, to and kwh_price")
        _known(doc, hkey, entry, ("from", "to", "kwh_price"))
        bounds = []
        for name in ("from", "to"):
            value = entry.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 24:
                raise doc.error(hkey + (name,), f"expected a whole UTC hour from 0 to 24, got {describe(value)}")
            bounds.append(value)
        if "kwh_price" not in entry:
            raise doc.error(hkey, "field 'kwh_price' is required")
        out.append(HourPrice(bounds[0] % 24, bounds[1] % 24,
                             _number(doc, hkey + ("kwh_price",), entry["kwh_price"], 0.0, MAX_KWH_PRICE)))
    return tuple(out)


def _known(doc: LocatedYaml, key: Key, entry: dict, allowed: tuple[str, ...]) -> None:
    for name in entry:
        if name not in allowed:
            raise doc.error(key + (name,), f"unknown field; expected one of {', '.join(allowed)}")


def _optional(doc: LocatedYaml, key: Key, entry: dict, name: str, low: float, high: float) -> float | None:
    return None if entry.get(name) is None else _number(doc, key, entry[name], low, high)


def _number(doc: LocatedYaml, key: Key, value: Any, low: float, high: float) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok:
        try:
            ok = math.isfinite(float(value)) and low <= value <= high
        except OverflowError:
            ok = False
    if not ok:
        raise doc.error(key, f"expected a number from {low:g} to {high:g}, got {describe(value)}")
    return float(value)
