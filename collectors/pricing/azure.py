"""Azure prices of a VM size from the Azure Retail Prices API: on-demand, spot,
reservations and savings plans.

The API (``https://prices.azure.com/api/retail/prices``) needs no credentials. One GET
with an OData ``$filter`` on ``serviceName``, ``armSkuName``, ``armRegionName`` and
``priceType`` returns the meters of one VM size in one region, a page of up to 1000
``Items`` at a time; ``NextPageLink`` names the next page until it is null. With
``api-version=2023-01-01-preview`` each pay-as-you-go item also carries its
``savingsPlan`` rates. Two questions are asked per VM size and region:

* ``priceType eq 'Consumption'``: the on-demand meter (Linux: the ``productName`` does
  not end in ``Windows``), the spot meter (``Spot`` in the meter or SKU name), and the
  on-demand meter's ``savingsPlan`` array (1- and 3-year hourly rates). Low Priority
  meters (Azure Batch) are not a VM a Kubernetes node runs as and are skipped.
* ``priceType eq 'Reservation'``: 1- and 3-year reservations. Their ``unitPrice`` is the
  price of the **whole term** (``unitOfMeasure`` still reads ``1 Hour``), turned here into
  an effective hourly rate: ``price / (years x 8760)``.

Each answer is parsed by a pure function (:func:`offer_from_items`,
:func:`reservations_from_items`) so it can be tested on recorded bodies; the HTTP is in
:class:`AzurePrices` (urllib3, a timeout on every request). Throttling (HTTP 429) is
retried after the ``Retry-After`` the API asks for, within bounds; any other failure
(another HTTP status, an unreachable API, a body that is not the API's JSON) becomes a
:class:`~collectors.pricing.cache.PriceApiError` for the cache to absorb, as with AWS
and GCP.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import quote, urlparse

from collectors.errors import InputError
from collectors.nodelabels import INSTANCE_TYPE_LABELS, REGION_LABELS, pricing_labels
from collectors.pricing.cache import Lookup, PriceApiError
from collectors.pricing.ratecard import Commitment, CommitmentOption, GpuPrice, options_from_json, options_to_json
from collectors.pricing.steps import Step, located, node_step, offer_json

SOURCE = "azure-api"
API_URL = "https://prices.azure.com/api/retail/prices"
API_VERSION = "2023-01-01-preview"  # the version that carries savingsPlan rates
#: Where the client asks instead of API_URL when set (a mirror, a proxy, or a test's server).
ENDPOINT_ENV = "GPULEDGER_AZURE_PRICES_URL"
SERVICE = "Virtual Machines"
HOURS_PER_YEAR = 8760.0  # a reservation's term price spread over 365-day years
TERMS = {"1 Year": 1, "3 Years": 3}
CONSUMPTION, RESERVATION = "Consumption", "Reservation"

TIMEOUT_S = 10.0  # connect and read, per request
THROTTLE_RETRIES = 3  # 429s retried per request before giving up
MAX_WAIT_S = 10.0  # the longest Retry-After honoured; a longer one is an error at once
MAX_TOTAL_WAIT_S = 20.0  # all waits of one question together
DEFAULT_WAIT_S = 2.0  # a 429 without a (readable) Retry-After
MAX_PAGES = 50  # a VM size in a region has a handful of meters; a longer chain is a loop
MAX_BODY_BYTES = 32 * 1024 * 1024  # a page of 1000 items is about 1 MB


@dataclass(frozen=True)
class AzureOffer:
    """What the pay-as-you-go meters say one VM size costs in one region."""

    sku: str  # armSkuName, e.g. Standard_ND96isr_H100_v5
    region: str  # armRegionName, e.g. eastus
    product: str  # productName of the on-demand meter, e.g. "Virtual Machines NDsr H100 v5 Series"
    meter: str  # meterName of the on-demand meter
    on_demand_hourly: float | None
    spot_hourly: float | None
    savings_plans: tuple[CommitmentOption, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"sku": self.sku, "region": self.region, "product": self.product, "meter": self.meter,
                "on_demand_hourly": self.on_demand_hourly, "spot_hourly": self.spot_hourly,
                "savings_plans": options_to_json(self.savings_plans)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "AzureOffer":
        return cls(data["sku"], data["region"], data["product"], data["meter"], data["on_demand_hourly"],
                   data["spot_hourly"], options_from_json(data["savings_plans"]))


# --------------------------------------------------------------------------- pure parsing


def odata_filter(sku: str, region: str, price_type: str) -> str:
    """The ``$filter`` that selects one VM size's meters of one price type in one region.

    Since ``2023-01-01-preview`` filter values are case-sensitive; ``armSkuName`` is spelt
    as the node's ``node.kubernetes.io/instance-type`` label spells it.
    """
    def text(value: str) -> str:
        return "'" + value.replace("'", "''") + "'"  # OData doubles a quote inside a string

    return (f"serviceName eq {text(SERVICE)} and armSkuName eq {text(sku)} and "
            f"armRegionName eq {text(region)} and priceType eq {text(price_type)}")


def first_page_url(endpoint: str, sku: str, region: str, price_type: str) -> str:
    sep = "&" if "?" in endpoint else "?"
    return (f"{endpoint}{sep}api-version={API_VERSION}"
            f"&$filter={quote(odata_filter(sku, region, price_type), safe='')}")


def reservation_hourly(term_price: float, term_years: int) -> float:
    """One reserved hour: the whole term's price spread over every hour of the term."""
    return term_price / (term_years * HOURS_PER_YEAR)


def _price(item: Mapping[str, Any], key: str = "retailPrice") -> float | None:
    value = item.get(key, item.get("unitPrice"))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _names(item: Mapping[str, Any]) -> tuple[str, str, str]:
    return tuple(str(item.get(k) or "") for k in ("meterName", "skuName", "productName"))  # type: ignore[return-value]


def is_windows(item: Mapping[str, Any]) -> bool:
    """Windows meters share the meter name with Linux; only the product name says Windows."""
    return _names(item)[2].endswith("Windows")


def is_low_priority(item: Mapping[str, Any]) -> bool:
    meter, sku, _ = _names(item)
    return "Low Priority" in meter or "Low Priority" in sku


def is_spot(item: Mapping[str, Any]) -> bool:
    meter, sku, _ = _names(item)
    return "Spot" in meter or sku.endswith(" Spot")


def is_linux_vm_hour(item: Any, sku: str, region: str) -> bool:
    """An item of this VM size and region, USD per hour, Linux, not Low Priority."""
    return (isinstance(item, Mapping) and item.get("armSkuName") == sku and item.get("armRegionName") == region
            and item.get("serviceName", SERVICE) == SERVICE and item.get("currencyCode", "USD") == "USD"
            and item.get("unitOfMeasure", "1 Hour") == "1 Hour" and not is_windows(item)
            and not is_low_priority(item))


def _preferred(items: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """Of several meters for the same thing: the primary meter region's, then the newest."""
    if not items:
        return None
    return max(items, key=lambda i: (i.get("isPrimaryMeterRegion") is not False, str(i.get("effectiveStartDate") or "")))


def offer_from_items(items: Iterable[Any], sku: str, region: str) -> AzureOffer | None:
    """On-demand, spot and savings-plan prices from ``Consumption`` items; None when the API
    lists no Linux meter of this VM size in this region."""
    on_demand, spot = [], []
    for item in items:
        if not is_linux_vm_hour(item, sku, region) or item.get("type") != CONSUMPTION or _price(item) is None:
            continue
        (spot if is_spot(item) else on_demand).append(item)
    best, best_spot = _preferred(on_demand), _preferred(spot)
    if best is None and best_spot is None:
        return None
    plans: dict[int, float] = {}
    for plan in (best or {}).get("savingsPlan") or []:
        years = TERMS.get(plan.get("term")) if isinstance(plan, Mapping) else None
        rate = _price(plan) if years else None
        if years and rate is not None:
            plans[years] = min(rate, plans.get(years, rate))
    options = tuple(CommitmentOption("savings-plan", y, "no-upfront", round(r, 6), SOURCE) for y, r in sorted(plans.items()))
    meter, _, product = _names(best or best_spot)  # type: ignore[arg-type]
    return AzureOffer(sku, region, product, meter, _price(best) if best else None,
                      _price(best_spot) if best_spot else None, options)


def reservations_from_items(items: Iterable[Any], sku: str, region: str) -> tuple[CommitmentOption, ...]:
    """1- and 3-year reservations from ``Reservation`` items, as effective hourly rates.

    Azure bills a reservation upfront or monthly for the same total, so an option is
    listed once, as ``no-upfront`` (monthly payments).
    """
    by_term: dict[int, list[Mapping[str, Any]]] = {}
    for item in items:
        if not is_linux_vm_hour(item, sku, region) or item.get("type") != RESERVATION or _price(item) is None:
            continue
        years = TERMS.get(item.get("reservationTerm"))
        if years:
            by_term.setdefault(years, []).append(item)
    options = []
    for years, found in sorted(by_term.items()):
        total = _price(_preferred(found))  # type: ignore[arg-type]
        options.append(CommitmentOption("reserved-instance", years, "no-upfront",
                                        round(reservation_hourly(total, years), 6), SOURCE))  # type: ignore[arg-type]
    return tuple(options)


def parse_page(body: bytes) -> tuple[list[Any], str | None]:
    """``Items`` and ``NextPageLink`` of one page; ValueError when it is not the API's JSON."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not JSON ({err.__class__.__name__} at byte {getattr(err, 'pos', '?')})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("Items"), list):
        raise ValueError("no Items list in the answer")
    link = doc.get("NextPageLink")
    if link is not None and not isinstance(link, str):
        raise ValueError("NextPageLink is not a string")
    return doc["Items"], link or None


def retry_after_s(value: str | None, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date); None if unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - now()).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


# --------------------------------------------------------------------------- the client


class AzurePrices:
    """The Retail Prices API behind one object.

    ``endpoint`` defaults to ``$GPULEDGER_AZURE_PRICES_URL``, else the public API; one
    that is not an http(s) URL is an InputError naming where it came from. The waits
    between throttled retries go through ``sleep`` (tests may watch them).
    """

    def __init__(self, endpoint: str | None = None, timeout_s: float = TIMEOUT_S,
                 throttle_retries: int = THROTTLE_RETRIES, max_wait_s: float = MAX_WAIT_S,
                 max_total_wait_s: float = MAX_TOTAL_WAIT_S, sleep: Callable[[float], None] = time.sleep,
                 pool: Any = None) -> None:
        given = endpoint or os.environ.get(ENDPOINT_ENV) or API_URL
        where = urlparse(given)
        if where.scheme not in ("http", "https") or not where.hostname or where.query or where.fragment:
            raise InputError(f"expected the http(s) URL of the Retail Prices API, such as {API_URL}, got {given!r}",
                             field="endpoint" if endpoint else ENDPOINT_ENV)
        self.endpoint = given.rstrip("/")
        self.timeout_s = timeout_s
        self.throttle_retries = throttle_retries
        self.max_wait_s = max_wait_s
        self.max_total_wait_s = max_total_wait_s
        self.sleep = sleep
        self._pool = pool

    @property
    def pool(self) -> Any:
        if self._pool is None:
            import urllib3

            self._pool = urllib3.PoolManager(
                retries=False, timeout=urllib3.Timeout(connect=self.timeout_s, read=self.timeout_s),
                headers={"Accept": "application/json", "User-Agent": "gpuledger"},
            )
        return self._pool

    def offer(self, sku: str, region: str) -> AzureOffer | None:
        """On-demand, spot and savings plans; None for a VM size Azure does not list there."""
        return offer_from_items(self.items(sku, region, CONSUMPTION), sku, region)

    def reservations(self, sku: str, region: str) -> tuple[CommitmentOption, ...]:
        """1- and 3-year reservations as effective hourly rates."""
        return reservations_from_items(self.items(sku, region, RESERVATION), sku, region)

    def items(self, sku: str, region: str, price_type: str) -> list[Any]:
        """Every page of the answer for one VM size, region and price type."""
        url: str | None = first_page_url(self.endpoint, sku, region, price_type)
        home = urlparse(self.endpoint)
        found: list[Any] = []
        waited = [0.0]
        for _ in range(MAX_PAGES):
            assert url is not None
            try:
                page, url = parse_page(self._get(url, waited))
            except ValueError as err:
                raise PriceApiError(SOURCE, f"retail prices answer unreadable: {err}") from None
            found.extend(page)
            if url is None:
                return found
            link = urlparse(url)
            if (link.scheme, link.hostname) != (home.scheme, home.hostname):
                raise PriceApiError(SOURCE, f"NextPageLink leads to another host ({link.hostname})")
        raise PriceApiError(SOURCE, f"more than {MAX_PAGES} pages for one VM size")

    def _get(self, url: str, waited: list[float]) -> bytes:
        """The body of a 200; throttling waited out within the bounds, anything else an error."""
        import urllib3

        attempt = 0
        while True:
            try:
                response = self.pool.request("GET", url, preload_content=False, redirect=False)
            except (urllib3.exceptions.HTTPError, OSError) as err:
                raise PriceApiError(SOURCE, f"retail prices API unreachable ({type(err).__name__})") from None
            try:
                if response.status == 200:
                    body = response.read(MAX_BODY_BYTES + 1)
                    if len(body) > MAX_BODY_BYTES:
                        raise PriceApiError(SOURCE, f"retail prices page larger than {MAX_BODY_BYTES} bytes")
                    return body
                status, wait = response.status, retry_after_s(response.headers.get("Retry-After"))
            except (urllib3.exceptions.HTTPError, OSError) as err:
                raise PriceApiError(SOURCE, f"retail prices API unreachable ({type(err).__name__})") from None
            finally:
                response.release_conn()
            if status != 429:
                raise PriceApiError(SOURCE, f"retail prices API answered HTTP {status}")
            wait = DEFAULT_WAIT_S if wait is None else wait
            attempt += 1
            if attempt > self.throttle_retries or wait > self.max_wait_s or waited[0] + wait > self.max_total_wait_s:
                raise PriceApiError(SOURCE, f"retail prices API throttled (HTTP 429, Retry-After {wait:g} s)",
                                    throttled=True)
            waited[0] += wait
            self.sleep(wait)


# --------------------------------------------------------------------------- in the chain
# How the price chain (collectors/pricing/chain.py) asks this source about an AKS node;
# declared in collectors/pricing/sources.py. The chain has checked that the node is Azure.


def _offer(chain, api: AzurePrices, sku: str, region: str) -> Lookup:
    return chain.cache.lookup((SOURCE, "consumption", sku, region), lambda: offer_json(api.offer(sku, region)))


def price(chain, api: AzurePrices, labels: Mapping[str, str], model: str, physical: int,
          steps: list[Step]) -> tuple[GpuPrice, str, float] | None:
    """The VM size's pay-as-you-go (or spot) price split over its GPUs; None and a step otherwise."""
    where = pricing_labels(labels)
    if not located(SOURCE, where, physical, "VM size", "the Azure Retail Prices API prices a VM size in a region", steps):
        return None
    sku, region = where.instance_type, where.region
    lookup = _offer(chain, api, sku, region)
    offer = AzureOffer.from_json(lookup.value) if lookup.found else None
    if where.capacity_type == "spot":
        hourly, what = (offer.spot_hourly if offer else None), f"spot price of {sku} in {region}"
    else:
        hourly = offer.on_demand_hourly if offer else None
        what = f"on-demand price of {sku} in {region}" + (f" ({offer.product}, meter {offer.meter!r})" if offer else "")
    return node_step(SOURCE, lookup, hourly, what, physical, chain.gpu_share, steps)


def commitments(chain, api: AzurePrices, labels: Mapping[str, str], model: str) -> list[Commitment]:
    """Reservations (whole-term prices made hourly) and savings plans of the node's VM size."""
    where = pricing_labels(labels)
    if not where.instance_type or not where.region:
        return []
    sku, region = where.instance_type, where.region
    offer = _offer(chain, api, sku, region).value
    reserved = chain.cache.get((SOURCE, "reservation", sku, region),
                               lambda: options_to_json(api.reservations(sku, region)))
    options: tuple[CommitmentOption, ...] = ()
    if reserved is not None:
        options += options_from_json(reserved)
    if offer is not None:
        options += AzureOffer.from_json(offer).savings_plans
    return [Commitment(options=options, match={INSTANCE_TYPE_LABELS[0]: sku, REGION_LABELS[0]: region})] \
        if options else []
