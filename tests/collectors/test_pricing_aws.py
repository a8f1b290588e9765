"""AWS prices: real boto3 clients under botocore's Stubber, with recorded-shape responses."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3")
from botocore.stub import ANY, Stubber  # noqa: E402

from collectors.pricing.aws import (  # noqa: E402
    AwsPrices, effective_hourly, offer_from_price_list, parse_price_list_item, parse_savings_plan_rates,
    product_filters, spot_average,
)
from collectors.pricing.cache import PriceApiError  # noqa: E402
from collectors.pricing.ratecard import CommitmentOption  # noqa: E402
from collectors.pricing.regions import aws_location, location_filter  # noqa: E402

FIXTURES = Path(__file__).parents[1] / "fixtures" / "pricing" / "aws"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)


def body(name: str) -> dict:
    data = json.loads((FIXTURES / name).read_text())
    for entry in data.get("SpotPriceHistory", []):  # botocore hands out datetimes
        entry["Timestamp"] = datetime.fromisoformat(entry["Timestamp"])
    return data


def client(service: str, region: str = "us-east-1"):
    return boto3.client(service, region_name=region, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def get_products_params(instance_type: str, region: str, token: str | None = None) -> dict:
    params = {"ServiceCode": "AmazonEC2", "Filters": product_filters(instance_type, region),
              "FormatVersion": "aws_v1", "MaxResults": 100}
    if token:
        params["NextToken"] = token
    return params


# --------------------------------------------------------------------------- pure parsing


def test_regions_map_to_pricing_location_names():
    assert aws_location("us-east-1") == "US East (N. Virginia)"
    assert aws_location("eu-west-1") == "EU (Ireland)"
    assert location_filter("us-west-2")["Value"] == "US West (Oregon)"
    assert location_filter("xx-new-9") == {"Type": "TERM_MATCH", "Field": "regionCode", "Value": "xx-new-9"}


def test_filters_pin_linux_shared_tenancy_used_capacity():
    filters = {f["Field"]: f["Value"] for f in product_filters("p5.48xlarge", "us-east-1")}
    assert filters == {"instanceType": "p5.48xlarge", "location": "US East (N. Virginia)", "tenancy": "Shared",
                       "operatingSystem": "Linux", "preInstalledSw": "NA", "capacitystatus": "Used"}


def test_effective_hourly_spreads_upfront_over_the_term():
    assert effective_hourly(8760, 1.0, 1) == pytest.approx(2.0)
    assert effective_hourly(26280, 0.0, 3) == pytest.approx(1.0)


def test_price_list_entry_gives_on_demand_and_standard_reserved_terms():
    text = body("get_products_p5.48xlarge_page1.json")["PriceList"][0]
    assert isinstance(text, str)  # the API returns each entry as a JSON string
    attributes, sku, on_demand, reserved = parse_price_list_item(text)
    assert attributes["instanceType"] == "p5.48xlarge" and sku == "JRTZEAYVSMAW6E5X"
    assert on_demand == 55.04
    got = {(o.term_years, o.payment): o.hourly for o in reserved}
    assert got == pytest.approx({
        (1, "no-upfront"): 36.4,
        (1, "partial-upfront"): 155124 / 8760 + 17.708,
        (1, "all-upfront"): 304040 / 8760,
        (3, "no-upfront"): 26.02,
        (3, "partial-upfront"): 328500 / 26280 + 12.5,
        (3, "all-upfront"): 643896 / 26280,
    }, abs=1e-6)  # the convertible terms are left out
    assert {(o.kind, o.source) for o in reserved} == {("reserved-instance", "aws-api")}


def test_offer_prefers_the_plain_on_demand_product():
    text = body("get_products_p5.48xlarge_page1.json")["PriceList"][0]
    item = json.loads(text)
    item["product"]["attributes"]["marketoption"] = "CapacityBlock"
    item["product"]["sku"] = "AAAAAAAAAAAAAAAA"
    item["terms"]["OnDemand"] = {}
    offer = offer_from_price_list([json.dumps(item), text], "p5.48xlarge", "us-east-1")
    assert offer.sku == "JRTZEAYVSMAW6E5X" and offer.on_demand_hourly == 55.04
    assert offer_from_price_list([], "p9.huge", "us-east-1") is None


def test_savings_plan_rates_by_term_and_payment():
    results = body("savings_plans_p5.48xlarge_page1.json")["searchResults"] + \
        body("savings_plans_p5.48xlarge_page2.json")["searchResults"]
    dedicated = json.loads(json.dumps(results[0]))
    dedicated["properties"][-1]["value"] = "dedicated"
    dedicated["rate"] = "1.0"
    options = parse_savings_plan_rates(results + [dedicated], "p5.48xlarge", "us-east-1")
    assert options[0] == CommitmentOption("savings-plan", 1, "all-upfront", 37.2672, "aws-api")
    assert {(o.term_years, o.payment): o.hourly for o in options} == {
        (1, "all-upfront"): 37.2672, (1, "no-upfront"): 39.7389, (1, "partial-upfront"): 38.0374,
        (3, "all-upfront"): 25.8726, (3, "no-upfront"): 29.2848, (3, "partial-upfront"): 26.9734,
    }


def test_spot_is_the_mean_of_each_allowed_zones_latest_price():
    history = body("spot_price_history_p5.48xlarge_us-east-1.json")["SpotPriceHistory"] + \
        body("spot_price_history_p5.48xlarge_us-east-1_page2.json")["SpotPriceHistory"]
    # us-east-1a's latest is 21.3476 (the 20.9123 entry is older)
    assert spot_average(history) == pytest.approx((21.3476 + 24.7664 + 19.812) / 3, abs=1e-6)
    assert spot_average(history, ["us-east-1a", "us-east-1b"]) == pytest.approx((21.3476 + 24.7664) / 2)
    assert spot_average(history, ["us-east-1f"]) is None


# --------------------------------------------------------------------------- real clients


def test_get_products_pages_through_every_page():
    pricing = client("pricing")
    with Stubber(pricing) as stub:
        stub.add_response("get_products", body("get_products_p5.48xlarge_page1.json"),
                          get_products_params("p5.48xlarge", "us-east-1"))
        stub.add_response("get_products", body("get_products_p5.48xlarge_page2.json"),
                          get_products_params("p5.48xlarge", "us-east-1",
                                              "AAMA-EFRSVBRSW5BvZXZzMmZpY1pLdUdqOUdrN1B6NThlVUQ0dEt3PT0="))
        offer = AwsPrices(pricing=pricing).instance_offer("p5.48xlarge", "us-east-1")
        stub.assert_no_pending_responses()
    assert offer.on_demand_hourly == 55.04 and len(offer.reserved) == 6


def test_unknown_instance_type_is_no_offer_not_an_error():
    pricing = client("pricing")
    with Stubber(pricing) as stub:
        stub.add_response("get_products", body("get_products_unknown.json"),
                          get_products_params("p9.mega", "us-east-1"))
        assert AwsPrices(pricing=pricing).instance_offer("p9.mega", "us-east-1") is None


def test_throttling_becomes_a_price_api_error_without_secrets():
    pricing = client("pricing")
    with Stubber(pricing) as stub:
        stub.add_client_error("get_products", service_error_code="ThrottlingException",
                              service_message="Rate exceeded", http_status_code=400)
        with pytest.raises(PriceApiError) as info:
            AwsPrices(pricing=pricing).instance_offer("p5.48xlarge", "us-east-1")
    assert info.value.throttled and info.value.source == "aws-api"
    assert "ThrottlingException" in info.value.reason and "testing" not in str(info.value)


def test_savings_plans_follow_next_token():
    plans = client("savingsplans")
    with Stubber(plans) as stub:
        stub.add_response("describe_savings_plans_offering_rates", body("savings_plans_p5.48xlarge_page1.json"),
                          {"savingsPlanTypes": ["EC2Instance"], "products": ["EC2"], "serviceCodes": ["AmazonEC2"],
                           "operations": ["RunInstances"], "filters": ANY, "maxResults": 1000})
        stub.add_response("describe_savings_plans_offering_rates", body("savings_plans_p5.48xlarge_page2.json"),
                          {"savingsPlanTypes": ["EC2Instance"], "products": ["EC2"], "serviceCodes": ["AmazonEC2"],
                           "operations": ["RunInstances"], "filters": ANY, "maxResults": 1000,
                           "nextToken": "eyJvZmZzZXQiOjR9"})
        options = AwsPrices(savingsplans=plans).savings_plans("p5.48xlarge", "us-east-1")
        stub.assert_no_pending_responses()
    assert len(options) == 6 and {o.kind for o in options} == {"savings-plan"}


def test_spot_price_history_pages_and_averages_over_the_nodes_zone():
    ec2 = client("ec2")
    with Stubber(ec2) as stub:
        params = {"InstanceTypes": ["p5.48xlarge"], "ProductDescriptions": ["Linux/UNIX"], "StartTime": NOW}
        stub.add_response("describe_spot_price_history", body("spot_price_history_p5.48xlarge_us-east-1.json"), params)
        stub.add_response("describe_spot_price_history",
                          body("spot_price_history_p5.48xlarge_us-east-1_page2.json"),
                          {**params, "NextToken": "eyJ2IjoiMiIsImMiOiJtdE1CYkZIQ3ZvVE9aR2dwdmRpbmF3PT0ifQ=="})
        prices = AwsPrices(ec2={"us-east-1": ec2}, clock=lambda: NOW)
        assert prices.spot_hourly("p5.48xlarge", "us-east-1", ["us-east-1d"]) == pytest.approx(19.812)
        stub.assert_no_pending_responses()
