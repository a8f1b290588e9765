"""AWS prices of an EC2 instance type: on-demand, Reserved Instances, Savings Plans, spot.

Four AWS APIs answer four questions, and each answer is parsed by a pure function
here so it can be tested on recorded response bodies:

* Pricing ``get_products`` (on-demand and Reserved Instance terms). The filters pin
  the one product a Kubernetes GPU node runs as: Linux, shared tenancy, no
  pre-installed software, capacity status ``Used`` (not the idle part of a capacity
  reservation). Each ``PriceList`` entry is a JSON *string* holding ``product``,
  ``serviceCode`` and ``terms`` (``OnDemand``, ``Reserved``).
* Savings Plans ``describe_savings_plans_offering_rates`` for EC2 Instance Savings
  Plans (the plan type with the deepest discount for a fixed instance family).
* EC2 ``describe_spot_price_history``, whose current price per availability zone is
  averaged over the zones the node can be in.

API failures (unreachable, throttling, no credentials) become
:class:`~collectors.pricing.cache.PriceApiError` for the cache to absorb. Credentials
come from boto3's standard chain (environment, IRSA web identity, instance profile)
and are never read or logged here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence

from collectors.nodelabels import INSTANCE_TYPE_LABELS, REGION_LABELS, pricing_labels
from collectors.pricing.cache import PriceApiError
from collectors.pricing.ratecard import Commitment, CommitmentOption, GpuPrice, options_from_json, options_to_json
from collectors.pricing.regions import aws_location, location_filter
from collectors.pricing.steps import Step, located, node_step, offer_json

SOURCE = "aws-api"
PRICING_REGION = "us-east-1"  # the Pricing and Savings Plans APIs live here
HOURS_PER_YEAR = 8760.0  # AWS amortises upfront fees over 365-day years
PAYMENTS = {"No Upfront": "no-upfront", "Partial Upfront": "partial-upfront", "All Upfront": "all-upfront"}
TERMS = {"1yr": 1, "3yr": 3}
SECONDS_PER_TERM = {31536000: 1, 94608000: 3}
THROTTLING_CODES = {"Throttling", "ThrottlingException", "RequestLimitExceeded",
                    "TooManyRequestsException", "RequestThrottled", "SlowDown"}


@dataclass(frozen=True)
class InstanceOffer:
    """What the Pricing API says one instance type costs in one region."""

    instance_type: str
    region: str
    sku: str
    on_demand_hourly: float | None
    reserved: tuple[CommitmentOption, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"instance_type": self.instance_type, "region": self.region, "sku": self.sku,
                "on_demand_hourly": self.on_demand_hourly, "reserved": options_to_json(self.reserved)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "InstanceOffer":
        return cls(data["instance_type"], data["region"], data["sku"], data["on_demand_hourly"],
                   options_from_json(data["reserved"]))


# --------------------------------------------------------------------------- pure parsing


def product_filters(instance_type: str, region: str) -> list[dict[str, str]]:
    """The get_products filters that select one Linux, shared-tenancy instance product."""
    def term(field: str, value: str) -> dict[str, str]:
        return {"Type": "TERM_MATCH", "Field": field, "Value": value}

    return [
        term("instanceType", instance_type),
        location_filter(region),
        term("tenancy", "Shared"),
        term("operatingSystem", "Linux"),
        term("preInstalledSw", "NA"),
        term("capacitystatus", "Used"),
    ]


def effective_hourly(upfront: float, hourly: float, term_years: int) -> float:
    """One committed hour's cost: the upfront fee spread over every hour of the term, plus
    the recurring hourly fee. This is what makes no/partial/all upfront comparable."""
    return upfront / (term_years * HOURS_PER_YEAR) + hourly


def parse_price_list_item(text: str) -> tuple[Mapping[str, str], str, float | None, tuple[CommitmentOption, ...]]:
    """(product attributes, sku, on-demand hourly USD, Reserved Instance options) of one entry.

    Only standard (not convertible) Reserved Instances are kept: they are the cheaper
    class and the one a recommender should weigh against Savings Plans.
    """
    item = json.loads(text)
    product = item.get("product", {})
    attributes = product.get("attributes", {})
    terms = item.get("terms", {})
    on_demand = None
    for term in terms.get("OnDemand", {}).values():
        for dim in term.get("priceDimensions", {}).values():
            if dim.get("unit") == "Hrs" and "USD" in dim.get("pricePerUnit", {}):
                on_demand = float(dim["pricePerUnit"]["USD"])
    options = []
    for term in terms.get("Reserved", {}).values():
        attrs = term.get("termAttributes", {})
        years = TERMS.get(attrs.get("LeaseContractLength", ""))
        payment = PAYMENTS.get(attrs.get("PurchaseOption", ""))
        if years is None or payment is None or attrs.get("OfferingClass", "standard") != "standard":
            continue
        upfront = hourly = 0.0
        for dim in term.get("priceDimensions", {}).values():
            usd = float(dim.get("pricePerUnit", {}).get("USD", "0"))
            if dim.get("unit") == "Quantity":
                upfront += usd
            elif dim.get("unit") == "Hrs":
                hourly += usd
        options.append(CommitmentOption("reserved-instance", years, payment,
                                        round(effective_hourly(upfront, hourly, years), 6), SOURCE))
    options.sort(key=lambda o: (o.term_years, o.payment))
    return attributes, product.get("sku", item.get("sku", "")), on_demand, tuple(options)


def offer_from_price_list(price_list: Iterable[str], instance_type: str, region: str) -> InstanceOffer | None:
    """The instance's offer from get_products entries; None when AWS lists no such product.

    The filters can still match more than one product (for example a Capacity Block
    listing); the plain ``RunInstances`` on-demand product with a price wins.
    """
    candidates = []
    for text in price_list:
        attributes, sku, on_demand, reserved = parse_price_list_item(text)
        if attributes.get("instanceType") != instance_type:
            continue
        plain = attributes.get("operation", "RunInstances") == "RunInstances" and \
            attributes.get("marketoption", "OnDemand") == "OnDemand"
        candidates.append((not plain, on_demand is None or on_demand <= 0, sku, on_demand, reserved))
    if not candidates:
        return None
    _, _, sku, on_demand, reserved = min(candidates, key=lambda c: c[:3])
    return InstanceOffer(instance_type, region, sku, on_demand, reserved)


def parse_savings_plan_rates(
    results: Iterable[Mapping[str, Any]], instance_type: str, region: str,
) -> tuple[CommitmentOption, ...]:
    """EC2 Instance Savings Plans options for Linux, shared tenancy, from ``searchResults``.

    A Savings Plan's ``rate`` is already the effective hourly price of the usage it
    covers, whatever the payment option, so it is taken as is.
    """
    best: dict[tuple[int, str], float] = {}
    for result in results:
        offering = result.get("savingsPlanOffering", {})
        props = {p.get("name"): p.get("value") for p in result.get("properties", [])}
        if props.get("instanceType", instance_type) != instance_type or props.get("region", region) != region:
            continue
        if props.get("tenancy", "shared") != "shared" or props.get("productDescription", "Linux/UNIX") != "Linux/UNIX":
            continue
        if result.get("unit") != "Hrs" or "BoxUsage" not in result.get("usageType", "BoxUsage"):
            continue
        if offering.get("currency", "USD") != "USD":
            continue
        years = SECONDS_PER_TERM.get(int(offering.get("durationSeconds", 0)))
        payment = PAYMENTS.get(offering.get("paymentOption", ""))
        if years is None or payment is None:
            continue
        rate = float(result["rate"])
        best[(years, payment)] = min(rate, best.get((years, payment), rate))
    return tuple(CommitmentOption("savings-plan", y, p, rate, SOURCE) for (y, p), rate in sorted(best.items()))


def spot_average(history: Iterable[Mapping[str, Any]], zones: Sequence[str] | None = None) -> float | None:
    """Mean of the latest spot price of each zone in ``zones`` (all zones when None).

    A spot node can be placed in any of its allowed zones, and zones differ by up to 2x;
    the mean is the honest single number. None when no allowed zone has a price.
    """
    latest: dict[str, tuple[datetime, float]] = {}
    for entry in history:
        zone = entry.get("AvailabilityZone")
        if zones is not None and zone not in zones:
            continue
        ts = entry.get("Timestamp")
        if not isinstance(ts, datetime):
            ts = datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
        price = float(entry["SpotPrice"])
        if zone not in latest or ts > latest[zone][0]:
            latest[zone] = (ts, price)
    if not latest:
        return None
    return round(sum(p for _, p in latest.values()) / len(latest), 6)


# --------------------------------------------------------------------------- the clients


def _api_error(err: Exception) -> PriceApiError:
    """A boto error as a PriceApiError whose reason names the code, never credentials."""
    from botocore.exceptions import ClientError

    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "Unknown")
        op = getattr(err, "operation_name", "")
        return PriceApiError(SOURCE, f"{op} failed: {code}", throttled=code in THROTTLING_CODES)
    return PriceApiError(SOURCE, type(err).__name__)


def _call(fn: Callable[[], Any]) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn()
    except (ClientError, BotoCoreError) as err:
        raise _api_error(err) from None


class AwsPrices:
    """The AWS price APIs behind one object; clients are created on first use.

    Tests pass real boto3 clients wrapped in botocore's Stubber; the agent passes
    nothing and gets clients from boto3's default session (standard credential chain).
    """

    def __init__(
        self,
        pricing: Any = None,
        savingsplans: Any = None,
        ec2: Callable[[str], Any] | Mapping[str, Any] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self._pricing = pricing
        self._savingsplans = savingsplans
        self._ec2 = ec2
        self._ec2_clients: dict[str, Any] = {}
        self.clock = clock

    def _client(self, name: str, region: str) -> Any:
        import boto3

        return _call(lambda: boto3.session.Session().client(name, region_name=region))

    @property
    def pricing(self) -> Any:
        if self._pricing is None:
            self._pricing = self._client("pricing", PRICING_REGION)
        return self._pricing

    @property
    def savingsplans(self) -> Any:
        if self._savingsplans is None:
            self._savingsplans = self._client("savingsplans", PRICING_REGION)
        return self._savingsplans

    def ec2(self, region: str) -> Any:
        if region not in self._ec2_clients:
            if isinstance(self._ec2, Mapping):
                self._ec2_clients[region] = self._ec2[region]
            elif callable(self._ec2):
                self._ec2_clients[region] = self._ec2(region)
            else:
                self._ec2_clients[region] = self._client("ec2", region)
        return self._ec2_clients[region]

    def instance_offer(self, instance_type: str, region: str) -> InstanceOffer | None:
        """On-demand and Reserved Instance prices; None for an instance type AWS does not list."""
        def fetch() -> list[str]:
            pages = self.pricing.get_paginator("get_products").paginate(
                ServiceCode="AmazonEC2", Filters=product_filters(instance_type, region),
                FormatVersion="aws_v1", PaginationConfig={"PageSize": 100},
            )
            return [text for page in pages for text in page.get("PriceList", [])]

        return offer_from_price_list(_call(fetch), instance_type, region)

    def savings_plans(self, instance_type: str, region: str) -> tuple[CommitmentOption, ...]:
        """EC2 Instance Savings Plans options (1 and 3 years, every payment option)."""
        def fetch() -> list[Mapping[str, Any]]:
            results: list[Mapping[str, Any]] = []
            token = None
            while True:
                kwargs: dict[str, Any] = dict(
                    savingsPlanTypes=["EC2Instance"], products=["EC2"], serviceCodes=["AmazonEC2"],
                    operations=["RunInstances"],
                    filters=[{"name": "region", "values": [region]},
                             {"name": "instanceType", "values": [instance_type]},
                             {"name": "tenancy", "values": ["shared"]},
                             {"name": "productDescription", "values": ["Linux/UNIX"]}],
                    maxResults=1000,
                )
                if token:
                    kwargs["nextToken"] = token
                page = self.savingsplans.describe_savings_plans_offering_rates(**kwargs)
                results.extend(page.get("searchResults", []))
                token = page.get("nextToken")
                if not token:
                    return results

        return parse_savings_plan_rates(_call(fetch), instance_type, region)

    def spot_hourly(self, instance_type: str, region: str, zones: Sequence[str] | None = None) -> float | None:
        """Current Linux spot price averaged over ``zones`` (all the region's zones when None)."""
        def fetch() -> list[Mapping[str, Any]]:
            pages = self.ec2(region).get_paginator("describe_spot_price_history").paginate(
                InstanceTypes=[instance_type], ProductDescriptions=["Linux/UNIX"], StartTime=self.clock(),
            )
            return [entry for page in pages for entry in page.get("SpotPriceHistory", [])]

        return spot_average(_call(fetch), zones)


def describe_location(region: str) -> str:
    """``us-east-1 (US East (N. Virginia))`` for explanations."""
    name = aws_location(region)
    return f"{region} ({name})" if name else region


# --------------------------------------------------------------------------- in the chain
# How the price chain (collectors/pricing/chain.py) asks this source about an AWS node;
# declared in collectors/pricing/sources.py. The chain has checked that the node is AWS.


def price(chain, api: AwsPrices, labels: Mapping[str, str], model: str, physical: int,
          steps: list[Step]) -> tuple[GpuPrice, str, float] | None:
    """The node's on-demand (or spot) instance price split over its GPUs; None and a step otherwise."""
    where = pricing_labels(labels)
    if not located(SOURCE, where, physical, "instance type", "the AWS price APIs price an instance type in a region", steps):
        return None
    it, region = where.instance_type, where.region
    if where.capacity_type == "spot":
        zones = [where.zone] if where.zone else None
        lookup = chain.cache.lookup((SOURCE, "spot", it, region, where.zone or "*"),
                                    lambda: api.spot_hourly(it, region, zones))
        hourly, what = lookup.value, f"spot price of {it} in {where.zone or 'every zone of ' + region}"
    else:
        lookup = chain.cache.lookup((SOURCE, "offer", it, region),
                                    lambda: offer_json(api.instance_offer(it, region)))
        offer = InstanceOffer.from_json(lookup.value) if lookup.found else None
        hourly = offer.on_demand_hourly if offer else None
        what = f"on-demand price of {it} in {describe_location(region)}" + (f", SKU {offer.sku}" if offer else "")
    return node_step(SOURCE, lookup, hourly, what, physical, chain.gpu_share, steps)


def commitments(chain, api: AwsPrices, labels: Mapping[str, str], model: str) -> list[Commitment]:
    """Reserved Instances and EC2 Instance Savings Plans of the node's instance type."""
    where = pricing_labels(labels)
    if not where.instance_type or not where.region:
        return []
    it, region = where.instance_type, where.region
    offer = chain.cache.get((SOURCE, "offer", it, region), lambda: offer_json(api.instance_offer(it, region)))
    plans = chain.cache.get((SOURCE, "savings-plans", it, region),
                            lambda: options_to_json(api.savings_plans(it, region)))
    options: tuple[CommitmentOption, ...] = ()
    if offer is not None:
        options += InstanceOffer.from_json(offer).reserved
    if plans is not None:
        options += options_from_json(plans)
    return [Commitment(options=options, match={INSTANCE_TYPE_LABELS[0]: it, REGION_LABELS[0]: region})] \
        if options else []
