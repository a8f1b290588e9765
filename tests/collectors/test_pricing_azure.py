"""Azure prices: the real client (urllib3) against a local HTTP server that speaks the
Retail Prices API's JSON: $filter, NextPageLink paging, 429 with Retry-After, errors."""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlparse

import pytest

from collectors.nodelabels import capacity_type, provider_of
from collectors.pricing.azure import (
    API_VERSION, ENDPOINT_ENV, SOURCE, AzureOffer, AzurePrices, odata_filter, offer_from_items, parse_page,
    reservation_hourly, reservations_from_items, retry_after_s,
)
from collectors.pricing.cache import PriceApiError, PriceCache
from collectors.pricing.chain import PriceChain
from collectors.pricing.ratecard import Commitment, CommitmentOption, GpuPrice, load_snapshot
from tests.conftest import write_jsonl

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parents[1] / "fixtures" / "pricing" / "azure"
ITEMS = json.loads((FIXTURES / "retail_prices_items.json").read_text())
SNAP = load_snapshot().name
IT, RG = "node.kubernetes.io/instance-type", "topology.kubernetes.io/region"
H100_VM, A100_VM = "Standard_ND96isr_H100_v5", "Standard_NC24ads_A100_v4"
H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100 80GB PCIe"
# what an AKS GPU node carries (the labels the kubelet and AKS set)
AKS = {IT: H100_VM, RG: "eastus", "topology.kubernetes.io/zone": "eastus-2",
       "kubernetes.azure.com/agentpool": "gpu", "kubernetes.azure.com/cluster": "MC_ml_aks_eastus",
       "kubernetes.azure.com/mode": "user", "kubernetes.io/os": "linux"}
AKS_SPOT = {**AKS, "kubernetes.azure.com/scalesetpriority": "spot", "kubernetes.azure.com/agentpool": "gpuspot"}


class FakeRetailPrices(BaseHTTPRequestHandler):
    """GET /api/retail/prices?api-version=...&$filter=... as the Retail Prices API answers it:
    the items that match every `field eq 'value'` of the filter (``priceType`` is the items'
    ``type``), ``page_size`` at a time, each page naming the next one in ``NextPageLink``.

    ``script`` holds answers given before the real one, one per request: ``(status,
    headers)`` or ``(200, b"raw body")``. ``requests`` records (monotonic time, path)."""

    items: list[dict] = ITEMS
    page_size = 1000
    script: list = []
    requests: list = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        cls = type(self)
        cls.requests.append((time.monotonic(), self.path))
        if cls.script:
            status, extra = cls.script.pop(0)
            if isinstance(extra, bytes):
                return self._send(status, extra)
            return self._send(status, json.dumps({"error": {"code": "TooManyRequests" if status == 429 else "Error",
                                                             "message": "fake"}}).encode(), extra)
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if url.path != "/api/retail/prices":
            return self._send(404, b'{"error": "not found"}')
        if query.get("api-version") != [API_VERSION]:
            return self._send(400, b'{"error": "api-version"}')
        terms = query.get("$filter", [""])[0].split(" and ")
        wanted = {}
        for term in terms:
            match = re.fullmatch(r"(\w+) eq '((?:[^']|'')*)'", term)
            if not match:
                return self._send(400, b'{"error": "Invalid OData parameters supplied"}')
            wanted["type" if match.group(1) == "priceType" else match.group(1)] = match.group(2).replace("''", "'")
        found = [i for i in cls.items if all(i.get(k) == v for k, v in wanted.items())]
        skip = int(query.get("$skip", ["0"])[0])
        page = found[skip:skip + cls.page_size]
        more = skip + cls.page_size < len(found)
        next_link = (f"http://127.0.0.1:{self.server.server_port}/api/retail/prices?api-version={API_VERSION}"
                     f"&$filter={quote(query['$filter'][0], safe='')}&$skip={skip + cls.page_size}") if more else None
        body = {"BillingCurrency": "USD", "CustomerEntityId": "Default", "CustomerEntityType": "Retail",
                "Items": page, "NextPageLink": next_link, "Count": len(page)}
        self._send(200, json.dumps(body).encode())

    def _send(self, status: int, raw: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def api():
    FakeRetailPrices.items, FakeRetailPrices.page_size = ITEMS, 1000
    FakeRetailPrices.script, FakeRetailPrices.requests = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeRetailPrices)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_port}/api/retail/prices"
    yield server
    server.shutdown()
    server.server_close()


def dead_url() -> str:
    """An endpoint where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/retail/prices"


def of(sku: str, region: str, price_type: str) -> list[dict]:
    return [i for i in ITEMS if (i["armSkuName"], i["armRegionName"], i["type"]) == (sku, region, price_type)]


# --------------------------------------------------------------------------- pure parsing


def test_the_filter_names_service_vm_size_region_and_price_type():
    assert odata_filter(H100_VM, "eastus", "Consumption") == (
        "serviceName eq 'Virtual Machines' and armSkuName eq 'Standard_ND96isr_H100_v5' and "
        "armRegionName eq 'eastus' and priceType eq 'Consumption'")
    assert "armSkuName eq 'it''s'" in odata_filter("it's", "eastus", "Reservation")  # OData quoting


def test_linux_on_demand_spot_and_savings_plans_from_the_consumption_meters():
    offer = offer_from_items(of(H100_VM, "eastus", "Consumption"), H100_VM, "eastus")
    # not the Windows meter (102.736, same meter name), not the non-primary meter region
    # (99.99), not Low Priority (41.094), not the Windows spot meter (22.585536)
    assert (offer.on_demand_hourly, offer.spot_hourly) == (98.32, 18.169536)
    assert (offer.product, offer.meter) == ("Virtual Machines NDsr H100 v5 Series", "ND96isr H100 v5")
    assert offer.savings_plans == (CommitmentOption("savings-plan", 1, "no-upfront", 74.7232, SOURCE),
                                   CommitmentOption("savings-plan", 3, "no-upfront", 53.0928, SOURCE))
    # per GPU, by hand: 98.32 / 8 = 12.29 on demand, 18.169536 / 8 = 2.271192 spot
    assert PriceChain(apis={"azure": _Fixed(offer)})(AKS, H100, 8) == GpuPrice(pytest.approx(12.29), SOURCE)
    assert PriceChain(apis={"azure": _Fixed(offer)})(AKS_SPOT, H100, 8) == GpuPrice(pytest.approx(2.271192), SOURCE)


def test_a_dev_test_meter_is_not_a_pay_as_you_go_price():
    dev_test = [dict(i, type="DevTestConsumption") for i in of(H100_VM, "eastus", "Consumption")]
    assert offer_from_items(dev_test, H100_VM, "eastus") is None


def test_reservations_are_whole_term_prices_made_hourly():
    # 525600 for one year: 525600 / 8760 = 60.0 an hour; 1103760 for three: / 26280 = 42.0
    assert reservation_hourly(525600.0, 1) == 60.0 and reservation_hourly(1103760.0, 3) == 42.0
    assert reservations_from_items(of(H100_VM, "eastus", "Reservation"), H100_VM, "eastus") == (
        CommitmentOption("reserved-instance", 1, "no-upfront", 60.0, SOURCE),
        CommitmentOption("reserved-instance", 3, "no-upfront", 42.0, SOURCE))
    # NC24ads A100 v4: 19272 / 8760 = 2.2, 36792 / 26280 = 1.4
    assert [o.hourly for o in reservations_from_items(ITEMS, A100_VM, "eastus")] == [2.2, 1.4]


def test_items_of_another_size_region_currency_or_unit_are_ignored():
    assert offer_from_items(ITEMS, H100_VM, "westeurope").on_demand_hourly == 127.816
    assert offer_from_items(ITEMS, "Standard_ND96isr_H200_v5", "eastus") is None
    eur = [dict(i, currencyCode="EUR") for i in of(H100_VM, "eastus", "Consumption")]
    assert offer_from_items(eur, H100_VM, "eastus") is None
    odd = [dict(i, retailPrice=float("nan"), unitPrice=None) for i in of(H100_VM, "eastus", "Consumption")]
    assert offer_from_items(odd + ["not an item", None], H100_VM, "eastus") is None


def test_the_offer_round_trips_through_json():
    offer = offer_from_items(ITEMS, H100_VM, "eastus")
    assert AzureOffer.from_json(json.loads(json.dumps(offer.to_json()))) == offer


def test_page_shape_and_retry_after():
    body = {"BillingCurrency": "USD", "Items": [{"a": 1}], "NextPageLink": None, "Count": 1}
    assert parse_page(json.dumps(body).encode()) == ([{"a": 1}], None)
    for bad in (b"{not json", b"[]", b'{"Items": 3}', b'{"Items": [], "NextPageLink": 5}', b"\xff\xfe"):
        with pytest.raises(ValueError):
            parse_page(bad)
    now = datetime(2026, 12, 3, 10, 0, 0, tzinfo=timezone.utc)
    assert retry_after_s("7") == 7.0 and retry_after_s("-3") == 0.0 and retry_after_s(None) is None
    assert retry_after_s("Thu, 03 Dec 2026 10:00:05 GMT", lambda: now) == 5.0
    assert retry_after_s("soon") is None and retry_after_s("inf") is None


def test_aks_labels_say_azure_and_spot():
    assert provider_of(AKS) == "azure" and provider_of({IT: "Standard_NC4as_T4_v3"}) == "azure"
    assert capacity_type(AKS_SPOT) == "spot" and capacity_type(AKS) is None
    assert provider_of({IT: "p5.48xlarge"}) == "aws" and provider_of({IT: "a2-highgpu-1g"}) == "gcp"


class _Fixed:
    """An Azure source whose answers are already parsed (the HTTP is tested below)."""

    def __init__(self, offer, reservations=()) -> None:
        self._offer, self._reservations = offer, reservations

    def offer(self, sku, region):
        return self._offer if (sku, region) == (self._offer.sku, self._offer.region) else None

    def reservations(self, sku, region):
        return self._reservations


# --------------------------------------------------------------------------- the real client over HTTP


def test_every_page_is_read_until_next_page_link_is_null(api):
    FakeRetailPrices.page_size = 2  # the real API pages at 1000; six Consumption meters -> three pages
    offer = AzurePrices(api.url).offer(H100_VM, "eastus")
    paths = [p for _, p in FakeRetailPrices.requests]
    assert len(paths) == 3 and "$skip=2" in paths[1] and "$skip=4" in paths[2]
    first = parse_qs(urlparse(paths[0]).query)
    assert first["api-version"] == [API_VERSION]
    assert first["$filter"] == [odata_filter(H100_VM, "eastus", "Consumption")]
    assert offer == offer_from_items(of(H100_VM, "eastus", "Consumption"), H100_VM, "eastus")
    assert offer.on_demand_hourly == 98.32


def test_reservations_over_http(api):
    assert AzurePrices(api.url).reservations(A100_VM, "eastus") == (
        CommitmentOption("reserved-instance", 1, "no-upfront", 2.2, SOURCE),
        CommitmentOption("reserved-instance", 3, "no-upfront", 1.4, SOURCE))
    assert "priceType eq 'Reservation'" in parse_qs(urlparse(FakeRetailPrices.requests[0][1]).query)["$filter"][0]


@pytest.mark.slow
def test_throttling_waits_as_long_as_retry_after_says(api):
    FakeRetailPrices.script = [(429, {"Retry-After": "1"}), (429, {"Retry-After": "1"})]
    waits = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    offer = AzurePrices(api.url, sleep=sleep).offer(A100_VM, "eastus")
    assert offer.on_demand_hourly == 3.673 and waits == [1.0, 1.0]
    times = [t for t, _ in FakeRetailPrices.requests]
    assert len(times) == 3 and all(b - a >= 0.95 for a, b in zip(times, times[1:]))  # the server saw the waits


@pytest.mark.parametrize("script, requests", [
    ([(429, {"Retry-After": "3600"})], 1),  # longer than the longest wait: an error at once
    ([(429, {"Retry-After": "0"})] * 4, 4),  # still throttled after three retries
    ([(429, {})] * 2, 2),  # no Retry-After: 2 s each, and 2 + 2 > the 3 s allowed in all
])
def test_throttling_beyond_the_bounds_is_a_throttled_error_without_long_waits(api, script, requests):
    FakeRetailPrices.script = list(script)
    waits = []
    started = time.monotonic()
    with pytest.raises(PriceApiError) as info:
        AzurePrices(api.url, sleep=waits.append, max_total_wait_s=3.0).offer(A100_VM, "eastus")
    assert info.value.throttled and info.value.source == SOURCE and "429" in info.value.reason
    assert len(FakeRetailPrices.requests) == requests and sum(waits) <= 3.0
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("answer, words", [
    ((500, {}), "HTTP 500"),
    ((403, {}), "HTTP 403"),
    ((200, b"<html>maintenance</html>"), "not JSON"),
    ((200, b'{"Items": "none"}'), "no Items list"),
])
def test_other_failures_are_price_api_errors_not_throttling(api, answer, words):
    FakeRetailPrices.script = [answer]
    with pytest.raises(PriceApiError) as info:
        AzurePrices(api.url).offer(H100_VM, "eastus")
    assert words in info.value.reason and not info.value.throttled and len(FakeRetailPrices.requests) == 1


def test_a_next_page_link_to_another_host_is_not_followed(api):
    FakeRetailPrices.script = [(200, json.dumps({"Items": [], "NextPageLink": "http://example.com/x"}).encode())]
    with pytest.raises(PriceApiError, match="another host"):
        AzurePrices(api.url).offer(H100_VM, "eastus")


def test_the_endpoint_comes_from_the_environment(monkeypatch, api, capsys):
    from agent.cli import main

    monkeypatch.setenv(ENDPOINT_ENV, api.url)
    assert AzurePrices().endpoint == api.url
    monkeypatch.delenv(ENDPOINT_ENV)
    assert AzurePrices().endpoint == "https://prices.azure.com/api/retail/prices"
    monkeypatch.setenv(ENDPOINT_ENV, "prices.azure.com/api/retail/prices")  # no scheme: a user's mistake
    assert main(["prices", "show", "--node-labels", f"{IT}={H100_VM},{RG}=eastus", "--azure"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert ENDPOINT_ENV in captured.err and "expected the http(s) URL" in captured.err


# --------------------------------------------------------------------------- the chain


def test_the_chain_prices_aks_nodes_from_the_api_and_names_the_meter(api):
    chain = PriceChain(apis={"azure": AzurePrices(api.url)})
    got = chain.explain(AKS, H100, 8)
    assert got.price == GpuPrice(pytest.approx(98.32 / 8), SOURCE) and got.node_hourly == 98.32
    assert "ND96isr H100 v5" in got.entry and "Virtual Machines NDsr H100 v5 Series" in got.entry and not got.steps
    assert chain(AKS_SPOT, H100, 8) == GpuPrice(pytest.approx(18.169536 / 8), SOURCE)
    assert chain({**AKS, RG: "westeurope"}, H100, 8) == GpuPrice(pytest.approx(127.816 / 8), SOURCE)
    assert len(FakeRetailPrices.requests) == 2  # eastus once (cached for its spot node), westeurope once


def test_commitments_of_an_aks_pool_are_reservations_and_savings_plans(api):
    chain = PriceChain(apis={"azure": AzurePrices(api.url)})
    (pool,) = chain.commitments(AKS, H100)
    assert pool == Commitment(options=(
        CommitmentOption("reserved-instance", 1, "no-upfront", 60.0, SOURCE),
        CommitmentOption("reserved-instance", 3, "no-upfront", 42.0, SOURCE),
        CommitmentOption("savings-plan", 1, "no-upfront", 74.7232, SOURCE),
        CommitmentOption("savings-plan", 3, "no-upfront", 53.0928, SOURCE)), match={IT: H100_VM, RG: "eastus"})


def test_an_unreachable_api_falls_back_to_the_snapshot_counted_and_logged_once(caplog):
    chain = PriceChain(cache=PriceCache(), apis={"azure": AzurePrices(dead_url(), timeout_s=2.0)})
    with caplog.at_level(logging.WARNING, logger="gpuledger.pricing"):
        got = chain.explain(AKS, H100, 8)
        other = chain.explain({**AKS, IT: A100_VM}, A100, 1)
    # the snapshot's eastus figures (azure-karpenter-pricing, 2026-06-18)
    assert got.price == GpuPrice(pytest.approx(98.32 / 8), SNAP) and other.price == GpuPrice(3.673, SNAP)
    (step,) = got.steps
    assert (step.source, step.outcome) == (SOURCE, "unavailable") and "unreachable" in step.detail
    assert chain.cache.faults == {SOURCE: 2}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and SOURCE in warnings[0].getMessage()


def test_an_aks_node_without_a_region_label_says_so():
    chain = PriceChain(apis={"azure": AzurePrices(dead_url())})
    got = chain.explain({k: v for k, v in AKS.items() if k != RG}, H100, 8)
    assert got.price == GpuPrice(pytest.approx(98.32 / 8), SNAP)  # the region-less snapshot entry (eastus)
    assert got.steps[0].outcome == "skipped" and "region label (topology.kubernetes.io/region)" in got.steps[0].detail
    assert chain.cache.faults == {}


# --------------------------------------------------------------------------- the snapshot


@pytest.mark.parametrize("labels, model, gpus, hourly", [
    ({IT: "Standard_ND96isr_H100_v5", RG: "eastus"}, H100, 8, 98.32),
    ({IT: "Standard_ND96isr_H100_v5", RG: "westeurope"}, H100, 8, 127.816),
    ({IT: "Standard_ND96isr_H200_v5", RG: "eastus2"}, "NVIDIA H200", 8, 84.8),
    ({IT: "Standard_ND96asr_v4", RG: "eastus"}, "NVIDIA A100-SXM4-40GB", 8, 27.197),
    ({IT: "Standard_NC64as_T4_v3", RG: "westeurope"}, "Tesla T4", 4, 5.44),
    ({IT: "Standard_NV36ads_A10_v5", "kubernetes.azure.com/agentpool": "viz"}, "NVIDIA A10-24Q", 1, 3.2),
])
def test_the_snapshot_prices_azure_vm_sizes(labels, model, gpus, hourly):
    assert PriceChain()(labels, model, gpus) == GpuPrice(pytest.approx(hourly / gpus), SNAP)


# --------------------------------------------------------------------------- end to end


def test_prices_show_azure_prices_an_aks_node_from_the_api(monkeypatch, api, capsys):
    from agent.cli import main

    monkeypatch.setenv(ENDPOINT_ENV, api.url)
    labels = ",".join(f"{k}={v}" for k, v in AKS.items())
    assert main(["prices", "show", "--node-labels", labels, "--azure"]) == 0
    out = capsys.readouterr().out
    assert "GPUs: 8 x NVIDIA H100 80GB HBM3 (GPU count from the instance type)" in out
    assert "price: 12.29 USD per GPU-hour" in out and "whole node: 98.32 USD per hour" in out
    assert "source: azure-api" in out and "passed over:" not in out
    options = [line.strip() for line in out.splitlines() if line.startswith("  reserved-instance")
               or line.startswith("  savings-plan")]
    assert options == [
        f"reserved-instance 1y no-upfront: 60/h per {IT}={H100_VM}, {RG}=eastus (azure-api)",
        f"reserved-instance 3y no-upfront: 42/h per {IT}={H100_VM}, {RG}=eastus (azure-api)",
        f"savings-plan 1y no-upfront: 74.7232/h per {IT}={H100_VM}, {RG}=eastus (azure-api)",
        f"savings-plan 3y no-upfront: 53.0928/h per {IT}={H100_VM}, {RG}=eastus (azure-api)",
    ]


def test_prices_show_azure_with_the_api_down_says_so_and_uses_the_snapshot(monkeypatch, capsys):
    from agent.cli import main

    monkeypatch.setenv(ENDPOINT_ENV, dead_url())
    labels = f"{IT}={A100_VM},{RG}=westeurope,kubernetes.azure.com/agentpool=a100"
    assert main(["prices", "show", "--node-labels", labels, "--azure"]) == 0
    out = capsys.readouterr().out
    assert f"source: {SNAP}" in out and "price: 4.775 USD per GPU-hour" in out
    assert "azure-api: unavailable: retail prices API unreachable" in out


def _aks_trace(path: Path, hours: int, interval: int = 600) -> Path:
    """An AKS node (one NC24ads A100 v4 in eastus) running one pod the whole time."""
    labels = {IT: A100_VM, RG: "eastus", "kubernetes.azure.com/agentpool": "a100"}
    t0 = 1_796_000_400  # a whole hour
    records = [{"kind": "node", "ts": t0, "node": "aks-a100-0", "labels": labels},
               {"kind": "devices", "ts": t0, "node": "aks-a100-0",
                "devices": [{"uuid": "GPU-aks-0", "index": 0, "model": A100}]},
               {"kind": "pods", "ts": t0, "node": "aks-a100-0", "pods": [
                   {"uid": "u-train", "namespace": "ml", "name": "train-0", "labels": {"team": "vision"},
                    "containers": [{"name": "main", "devices": ["GPU-aks-0"]}]}]}]
    records += [{"kind": "sample", "ts": t0 + k * interval, "node": "aks-a100-0", "uuid": "GPU-aks-0", "util": 90}
                for k in range(1, hours * 3600 // interval + 1)]
    meta = {"kind": "meta", "format": "gpuledger-trace", "version": 1, "interval_s": float(interval)}
    return write_jsonl(path, records, meta=meta)


@pytest.mark.slow
def test_the_weekly_report_prices_an_aks_pools_reservation(tmp_path):
    """gpuledger replay then report: the AKS pool (VM size x region, from the node's labels)
    meets the rate card's Azure commitment, and the on-demand price it is weighed against is
    the snapshot's Azure price the ledger carries."""
    trace = _aks_trace(tmp_path / "aks.jsonl", hours=72)
    rates = tmp_path / "rates.yaml"
    rates.write_text(f"""currency: USD
default_gpu_hourly: 2.0
commitments:
  - match: {{{IT}: {A100_VM}, {RG}: eastus}}
    options:
      - {{kind: reserved-instance, term_years: 1, payment: no-upfront, hourly: 2.2}}
      - {{kind: savings-plan, term_years: 3, payment: no-upfront, hourly: 1.9834}}
""")
    run = [sys.executable, "-m", "agent.cli"]
    done = subprocess.run([*run, "replay", str(trace), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([*run, "report", "--ledger", str(tmp_path / "out" / "ledger.parquet"), "--rates", str(rates),
                           "--commitment-min-days-1y", "2", "--commitment-min-days-3y", "2",
                           "--out", str(tmp_path / "r")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "r" / "recommendations.json").read_text())
    (pool,) = [p for p in doc["commitments"] if p.get("instance_type") == A100_VM]
    assert pool["region"] == "eastus" and pool["on_demand_hourly"] == pytest.approx(3.673)
    # the node runs every hour: commit to it, with the cheaper 3-year savings plan
    assert pool["recommended"]["option"] == "3y savings-plan no-upfront" and pool["recommended"]["k"] == 1
    md = (tmp_path / "r" / "report.md").read_text()
    assert re.search(r"\| Standard\\_NC24ads\\_A100\\_v4 \(eastus\) \|.*\| 3y savings-plan no-upfront \| 1 \|", md), md


def test_the_agent_setting_asks_azure_for_aks_nodes(monkeypatch, api, tmp_path):
    """`gpuledger agent --azure` (here GPULEDGER_AZURE) in dry-run: the AKS node's GPU is
    priced by the Azure API; with the API unreachable it is priced by the snapshot and the
    failure is counted in gpuledger_collector_errors_total."""
    import argparse

    from prometheus_client import CollectorRegistry, generate_latest

    from agent import agent_settings
    from agent.cmd_agent import build
    from agent.config import Config

    trace = _aks_trace(tmp_path / "aks.jsonl", hours=1)
    for endpoint, source in ((api.url, SOURCE), (dead_url(), SNAP)):
        monkeypatch.setenv(ENDPOINT_ENV, endpoint)
        settings = agent_settings.resolve(argparse.Namespace(**{s.name: None for s in agent_settings.SETTINGS}), {
            "GPULEDGER_DRY_RUN": "true", "GPULEDGER_TRACE": str(trace), "GPULEDGER_AZURE": "true",
            "GPULEDGER_LEDGER_DIR": str(tmp_path / f"ledger-{source}"), "GPULEDGER_SPEED": "1000000000"})
        agent = build(settings, Config())
        try:
            assert list(agent.meter.pricer.apis) == ["azure"] and isinstance(agent.meter.pricer.apis["azure"], AzurePrices)
            agent.sample()
            agent.sample()
        finally:
            agent.shutdown()
        registry = CollectorRegistry()
        registry.register(agent.metrics)
        text = generate_latest(registry).decode()
        prices = [line for line in text.splitlines() if line.startswith("gpuledger_gpu_hourly_price{")]
        assert prices and all(f'source="{source}"' in line and line.endswith(" 3.673") for line in prices), prices
        failed = [line for line in text.splitlines() if line.startswith(
            'gpuledger_collector_errors_total{collector="pricing",reason="azure-api_failed"}')]
        assert bool(failed) == (source == SNAP)
