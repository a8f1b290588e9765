"""GCP prices: the real CloudCatalogClient over REST against a local HTTP fake of the catalog."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

pytest.importorskip("google.cloud.billing_v1")
from google.api_core.client_options import ClientOptions  # noqa: E402
from google.auth.credentials import AnonymousCredentials  # noqa: E402
from google.cloud import billing_v1  # noqa: E402

from collectors.pricing.cache import PriceApiError  # noqa: E402
from collectors.pricing.gcp import GcpCatalog, GcpPrices, catalog_from_skus, money, parse_sku  # noqa: E402
from collectors.pricing.ratecard import CommitmentOption  # noqa: E402

FIXTURES = Path(__file__).parents[1] / "fixtures" / "pricing" / "gcp"
PAGES = {None: "skus_page1.json", "CAESDgoMMEM5Ri1DMkY1LTJBRTYYAQ": "skus_page2.json"}


def page(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def all_skus() -> list[dict]:
    return page("skus_page1.json")["skus"] + page("skus_page2.json")["skus"]


class FakeCatalog(BaseHTTPRequestHandler):
    """GET /v1/services/{service}/skus with pageToken paging, or a forced error status."""

    requests: list[str] = []
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlparse(self.path)
        type(self).requests.append(self.path)
        if type(self).status != 200 or url.path != "/v1/services/6F81-5844-456A/skus":
            code = type(self).status if type(self).status != 200 else 404
            data = json.dumps({"error": {"code": code, "message": "fake error", "status": "RESOURCE_EXHAUSTED"}})
        else:
            token = parse_qs(url.query).get("pageToken", [None])[0]
            code, data = 200, (FIXTURES / PAGES[token]).read_text()
        raw = data.encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def catalog_server():
    FakeCatalog.requests = []
    FakeCatalog.status = 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeCatalog)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def real_client(port: int) -> billing_v1.CloudCatalogClient:
    return billing_v1.CloudCatalogClient(
        transport="rest", credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=f"http://127.0.0.1:{port}"),
    )


# --------------------------------------------------------------------------- pure parsing


def test_money_adds_units_and_nanos():
    assert money("2", 933908000) == pytest.approx(2.933908)
    assert money(None, None) == 0.0


def test_parse_sku_reads_kind_usage_regions_and_the_last_tier():
    rates = {s["skuId"]: parse_sku(s) for s in all_skus()}
    l4 = rates["0C9F-C2F5-2AE6"]
    assert (l4.kind, l4.name, l4.usage, l4.regions, l4.hourly) == (
        "gpu", "Nvidia L4", "on-demand", ("us-central1", "us-east1", "us-west1"), 0.56004)
    assert rates["F3E8-7FC4-1A2B"].usage == "spot"
    assert rates["94E1-8F6B-4C2D"].name == "Nvidia Tesla T4" and rates["94E1-8F6B-4C2D"].usage == "spot"
    assert (rates["8D2A-51F3-C3E9"].usage, rates["8D2A-51F3-C3E9"].name) == ("commit-3y", "Nvidia L4")
    assert (rates["A9C2-7B01-4E3C"].kind, rates["A9C2-7B01-4E3C"].name) == ("ram", "G2")
    assert (rates["7A8B-9C0D-1E2F"].kind, rates["7A8B-9C0D-1E2F"].usage) == ("core", "commit-1y")
    assert rates["E5F6-0718-293A"].hourly == 0.6  # free first tier, then 0.6
    # not used: DWS GPUs, storage, N1 cores
    assert rates["2E7D-AB31-9C40"] is None and rates["D973-5D65-BAB2"] is None and rates["5F0D-33C3-8B21"] is None


def test_machine_price_is_gpus_plus_vcpus_plus_memory():
    catalog = catalog_from_skus(all_skus())
    a2 = catalog.price("a2-highgpu-1g", "NVIDIA A100-SXM4-40GB", "us-central1", "on-demand")
    assert a2.whole_machine and a2.gpus == 1
    assert a2.hourly == pytest.approx(2.933908 + 12 * 0.031611 + 85 * 0.004237)  # 3.673385, GCP's list price
    g2 = catalog.price("g2-standard-48", "NVIDIA L4", "us-central1", "spot")
    assert g2.hourly == pytest.approx(4 * 0.224 + 48 * 0.0099947 + 192 * 0.0011711)
    # no A2 spot vCPU SKU in the catalog: no machine price rather than a GPU-only one
    assert catalog.price("a2-highgpu-1g", "NVIDIA A100-SXM4-40GB", "us-central1", "spot") is None
    # N1 with an attached T4: the GPU SKU alone
    t4 = catalog.price("n1-standard-8", "Tesla T4", "us-east1", "on-demand")
    assert (t4.hourly, t4.whole_machine, t4.gpus) == (0.35, False, 1)
    # a region with its own SKU
    assert catalog.price(None, "NVIDIA L4", "us-east4", "on-demand").hourly == 0.63081
    assert catalog.price(None, "NVIDIA L4", "asia-east1", "on-demand") is None


def test_commitments_are_committed_use_options_for_the_same_unit():
    catalog = catalog_from_skus(all_skus())
    options = catalog.commitments("g2-standard-4", "NVIDIA L4", "us-central1")
    assert options == (
        CommitmentOption("committed-use", 1, "no-upfront",
                         pytest.approx(0.352825 + 4 * 0.0157417 + 16 * 0.0018445), "gcp-api"),
        CommitmentOption("committed-use", 3, "no-upfront",
                         pytest.approx(0.252018 + 4 * 0.0112441 + 16 * 0.0013175), "gcp-api"),
    )
    assert [o.hourly for o in catalog.commitments(None, "NVIDIA A100-SXM4-40GB", "us-west1")] == [1.848362, 1.0268]


def test_catalog_round_trips_through_json():
    catalog = catalog_from_skus(all_skus())
    assert GcpCatalog.from_json(json.loads(json.dumps(catalog.to_json()))) == catalog


# --------------------------------------------------------------------------- the real client


def test_real_client_pages_through_the_catalog(catalog_server):
    prices = GcpPrices(real_client(catalog_server.server_port))
    catalog = prices.catalog()
    assert len(FakeCatalog.requests) == 2 and "pageToken=CAESDgoMMEM5Ri1DMkY1LTJBRTYYAQ" in FakeCatalog.requests[1]
    assert "pageSize=5000" in FakeCatalog.requests[0]
    assert catalog == catalog_from_skus(all_skus())


@pytest.mark.parametrize("status, throttled", [(429, True), (503, False), (403, False)])
def test_api_errors_become_price_api_errors(catalog_server, status, throttled):
    FakeCatalog.status = status
    with pytest.raises(PriceApiError) as info:
        GcpPrices(real_client(catalog_server.server_port)).catalog()
    assert info.value.source == "gcp-api" and info.value.throttled is throttled


def test_unreachable_endpoint_is_a_price_api_error():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeCatalog)
    port = server.server_port
    server.server_close()  # nothing listens there now
    with pytest.raises(PriceApiError):
        GcpPrices(real_client(port)).catalog()
