"""The price chain: fallback order, gpu_share, commitments, and the source on every ledger row."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3")
from botocore.stub import ANY, Stubber  # noqa: E402

from agent.config import Config  # noqa: E402
from agent.replay import replay  # noqa: E402
from collectors.pricing.aws import AwsPrices, product_filters  # noqa: E402
from collectors.pricing.cache import PriceApiError  # noqa: E402
from collectors.pricing.chain import PriceChain, provider_of  # noqa: E402
from collectors.pricing.gcp import GcpCatalog, catalog_from_skus  # noqa: E402
from collectors.pricing.ratecard import Commitment, CommitmentOption, GpuPrice, load_rate_card, load_snapshot  # noqa: E402
from tests.conftest import write_jsonl  # noqa: E402

FIXTURES = Path(__file__).parents[1] / "fixtures" / "pricing"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)
SNAP = load_snapshot().name  # "snapshot:DATE"
IT, RG, ZN = "node.kubernetes.io/instance-type", "topology.kubernetes.io/region", "topology.kubernetes.io/zone"
CT = "karpenter.sh/capacity-type"
H100, A10G, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A10G", "NVIDIA A100-SXM4-40GB"

CARD = """currency: USD
gpu_share: 0.5
nodes:
  - match: {gpuledger.io/pool: dgx}
    hourly: 16.0
gpus:
  "Tesla V100-SXM2-16GB": 1.25
default_gpu_hourly: 0.75
"""
P5_OD = {IT: "p5.48xlarge", RG: "us-east-1", CT: "on-demand", "karpenter.k8s.aws/instance-family": "p5"}
P5_SPOT = {IT: "p5.48xlarge", RG: "us-east-1", ZN: "us-east-1b", CT: "spot"}
G5 = {IT: "g5.xlarge", RG: "us-east-1", "eks.amazonaws.com/nodegroup": "gpu"}
DGX = {"gpuledger.io/pool": "dgx"}
G2 = {IT: "g2-standard-4", RG: "us-central1", "cloud.google.com/gke-nodepool": "l4"}


def aws_body(name: str) -> dict:
    data = json.loads((FIXTURES / "aws" / name).read_text())
    for entry in data.get("SpotPriceHistory", []):
        entry["Timestamp"] = datetime.fromisoformat(entry["Timestamp"])
    return data


def client(service: str):
    return boto3.client(service, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def products(it: str, region: str = "us-east-1", token: str | None = None) -> dict:
    params = {"ServiceCode": "AmazonEC2", "Filters": product_filters(it, region), "FormatVersion": "aws_v1",
              "MaxResults": 100}
    return {**params, "NextToken": token} if token else params


def stub_p5(stub: Stubber) -> None:
    stub.add_response("get_products", aws_body("get_products_p5.48xlarge_page1.json"), products("p5.48xlarge"))
    stub.add_response("get_products", aws_body("get_products_p5.48xlarge_page2.json"),
                      products("p5.48xlarge", token="AAMA-EFRSVBRSW5BvZXZzMmZpY1pLdUdqOUdrN1B6NThlVUQ0dEt3PT0="))


def stub_spot(stub: Stubber) -> None:
    params = {"InstanceTypes": ["p5.48xlarge"], "ProductDescriptions": ["Linux/UNIX"], "StartTime": NOW}
    stub.add_response("describe_spot_price_history", aws_body("spot_price_history_p5.48xlarge_us-east-1.json"), params)
    stub.add_response("describe_spot_price_history",
                      aws_body("spot_price_history_p5.48xlarge_us-east-1_page2.json"),
                      {**params, "NextToken": ANY})


class FakeGcp:
    """The GCP source with the catalog already parsed (the real client is tested elsewhere)."""

    def __init__(self) -> None:
        skus = []
        for name in ("skus_page1.json", "skus_page2.json"):
            skus += json.loads((FIXTURES / "gcp" / name).read_text())["skus"]
        self._catalog = catalog_from_skus(skus)

    def catalog(self) -> GcpCatalog:
        return self._catalog


class DeadGcp:
    def catalog(self) -> GcpCatalog:
        raise PriceApiError("gcp-api", "list_skus failed: ServiceUnavailable")


def test_provider_from_labels():
    assert provider_of(P5_SPOT) == "aws" and provider_of(G5) == "aws"
    assert provider_of(G2) == "gcp" and provider_of({IT: "a2-highgpu-1g"}) == "gcp"
    assert provider_of(DGX) is None


def test_fallback_order_card_then_api_then_snapshot_then_default(rates):
    card = load_rate_card(rates(CARD))
    pricing = client("pricing")
    with Stubber(pricing) as stub:
        stub_p5(stub)
        stub.add_client_error("get_products", service_error_code="ThrottlingException", http_status_code=400)
        chain = PriceChain(card=card, apis={"aws": AwsPrices(pricing=pricing)})
        # 1. the card's nodes entry, split over the GPUs after gpu_share
        assert chain(DGX, A100, 8) == GpuPrice(16.0 * 0.5 / 8, "rate-card")
        # 1. the card's gpus entry beats every later source
        assert chain(P5_OD, "Tesla V100-SXM2-16GB", 8) == GpuPrice(1.25, "rate-card")
        # 2. the AWS API
        assert chain(P5_OD, H100, 8) == GpuPrice(55.04 * 0.5 / 8, "aws-api")
        # 3. AWS throttles: the snapshot's g5.xlarge entry
        assert chain(G5, A10G, 1) == GpuPrice(1.006 * 0.5, SNAP)
        # 4. nothing knows it: the card's default
        assert chain({IT: "x9.huge"}, "Mystery GPU", 2) == GpuPrice(0.75, "default")
        stub.assert_no_pending_responses()
    assert chain.cache.faults == {"aws-api": 1}


def test_explain_names_the_entry_and_why_earlier_sources_passed(rates):
    chain = PriceChain(card=load_rate_card(rates(CARD)), apis={"gcp": DeadGcp()})
    got = chain.explain(G2, "NVIDIA L4", 1)
    assert got.price == GpuPrice(pytest.approx(0.70683 * 0.5), SNAP)
    assert "snapshot nodes[" in got.entry and "g2-standard-4" in got.entry
    assert [s.source for s in got.steps][:2] == ["rate-card", "gcp-api"]
    assert got.steps[1].outcome == "unavailable" and "ServiceUnavailable" in got.steps[1].detail
    ok = PriceChain(apis={"gcp": FakeGcp()}).explain(G2, "NVIDIA L4", 1)
    assert ok.price == GpuPrice(pytest.approx(0.56004 + 4 * 0.0249868 + 16 * 0.0029278), "gcp-api")
    assert "g2-standard-4" in ok.entry and "0C9F-C2F5-2AE6" in ok.entry and ok.steps == ()


def test_gcp_spot_and_gpu_only_prices():
    chain = PriceChain(apis={"gcp": FakeGcp()})
    spot = {**G2, "cloud.google.com/gke-spot": "true"}
    assert chain(spot, "NVIDIA L4", 1).hourly == pytest.approx(0.224 + 4 * 0.0099947 + 16 * 0.0011711)
    n1 = {IT: "n1-standard-8", RG: "us-east1", "cloud.google.com/gke-nodepool": "t4"}
    assert chain(n1, "Tesla T4", 4) == GpuPrice(0.35, "gcp-api")  # per GPU, not split


def test_no_card_uses_the_snapshot_default_and_non_usd_cards_skip_usd_sources(rates):
    assert PriceChain()({}, "Mystery GPU", 1) == GpuPrice(load_snapshot().default_gpu_hourly, "default")
    eur = load_rate_card(rates(CARD.replace("USD", "EUR")))
    chain = PriceChain(card=eur, apis={"gcp": FakeGcp()})
    assert chain(G2, "NVIDIA L4", 1) == GpuPrice(0.75, "default")
    assert {s.outcome for s in chain.explain(G2, "NVIDIA L4", 1).steps} == {"no match", "skipped"}


def test_commitments_from_the_apis():
    pricing, plans = client("pricing"), client("savingsplans")
    with Stubber(pricing) as s1, Stubber(plans) as s2:
        stub_p5(s1)
        s2.add_response("describe_savings_plans_offering_rates", aws_body("savings_plans_p5.48xlarge_page1.json"))
        s2.add_response("describe_savings_plans_offering_rates", aws_body("savings_plans_p5.48xlarge_page2.json"))
        chain = PriceChain(apis={"aws": AwsPrices(pricing=pricing, savingsplans=plans), "gcp": FakeGcp()})
        (aws,) = chain.commitments(P5_OD, H100)
    assert aws.match == {IT: "p5.48xlarge", RG: "us-east-1"} and aws.gpu_model is None
    kinds = {(o.kind, o.term_years, o.payment) for o in aws.options}
    assert len(kinds) == 12 and ("savings-plan", 3, "all-upfront") in kinds
    assert ("reserved-instance", 1, "partial-upfront") in kinds and {o.source for o in aws.options} == {"aws-api"}
    (g2,) = chain.commitments(G2, "NVIDIA L4")
    assert g2.match == {IT: "g2-standard-4", RG: "us-central1"} and [o.term_years for o in g2.options] == [1, 3]
    n1 = {IT: "n1-standard-8", RG: "us-central1", "cloud.google.com/gke-nodepool": "a"}
    (gpu,) = chain.commitments(n1, A100)
    assert gpu == Commitment(options=(CommitmentOption("committed-use", 1, "no-upfront", 1.848362, "gcp-api"),
                                      CommitmentOption("committed-use", 3, "no-upfront", 1.0268, "gcp-api")),
                             gpu_model=A100)


def test_rate_card_commitments_come_first(rates):
    text = CARD + """commitments:
  - gpu_model: "NVIDIA L4"
    options:
      - {kind: committed-use, term_years: 1, payment: no-upfront, hourly: 0.30}
  - match: {gpuledger.io/pool: other}
    options:
      - {kind: reserved-instance, term_years: 3, payment: all-upfront, hourly: 9.0}
"""
    chain = PriceChain(card=load_rate_card(rates(text)), apis={"gcp": FakeGcp()})
    found = chain.commitments(G2, "NVIDIA L4")
    assert found[0].gpu_model == "NVIDIA L4" and found[0].options[0].hourly == 0.30
    assert found[0].options[0].source == "rate-card"
    assert found[1].match == {IT: "g2-standard-4", RG: "us-central1"} and found[1].options[0].source == "gcp-api"
    assert len(found) == 2  # the other pool's commitment is not this node's


# --------------------------------------------------------------------------- the ledger


def _node(name, labels):
    return {"kind": "node", "ts": 0, "node": name, "labels": labels}


def _devices(name, model, n, mig=False):
    devs = [{"uuid": f"GPU-{name}-{i}", "index": i, "model": model} for i in range(n)]
    if mig:
        devs.append({"uuid": f"MIG-{name}-0", "parent_uuid": f"GPU-{name}-0", "mig_profile": "3g.40gb",
                     "model": model})
    return {"kind": "devices", "ts": 0, "node": name, "devices": devs}


def _pods(name, uuid):
    return {"kind": "pods", "ts": 0, "node": name, "pods": [
        {"uid": f"u-{name}", "namespace": "ml", "name": f"p-{name}", "labels": {},
         "containers": [{"name": "main", "devices": [uuid]}]}]}


def _sample(name, uuid, ts, util=50):
    return {"kind": "sample", "ts": ts, "node": name, "uuid": uuid, "util": util}


def test_every_ledger_row_carries_its_price_source(tmp_path, rates):
    nodes = [  # (name, labels, model, GPUs, MIG)
        ("aws-od", P5_OD, H100, 8, False),
        ("aws-spot", P5_SPOT, H100, 8, False),
        ("aws-g5", G5, A10G, 1, False),
        ("onprem", DGX, A100, 2, True),
        ("mystery", {"kubernetes.io/hostname": "box"}, "Mystery GPU", 1, False),
    ]
    records = []
    for name, labels, model, n, mig in nodes:
        records += [_node(name, labels), _devices(name, model, n, mig), _pods(name, f"GPU-{name}-1" if n > 1 else f"GPU-{name}-0")]
    for name, _, _, n, mig in nodes:
        uuids = [f"GPU-{name}-{i}" for i in range(n)] + ([f"MIG-{name}-0"] if mig else [])
        for ts in (10.0, 70.0):
            records += [_sample(name, u, ts, None if u.startswith("MIG") else 50) for u in uuids]
    trace = write_jsonl(tmp_path / "t.jsonl", records)

    pricing, ec2 = client("pricing"), client("ec2")
    with Stubber(pricing) as sp, Stubber(ec2) as se:
        stub_p5(sp)  # aws-od
        stub_spot(se)  # aws-spot (us-east-1b)
        sp.add_response("get_products", aws_body("get_products_unknown.json"), products("g5.xlarge"))  # aws-g5
        chain = PriceChain(card=load_rate_card(rates(CARD.replace("gpu_share: 0.5", "gpu_share: 1.0"))),
                           apis={"aws": AwsPrices(pricing=pricing, ec2={"us-east-1": ec2}, clock=lambda: NOW)})
        result = replay([trace], chain, Config())
        sp.assert_no_pending_responses()
        se.assert_no_pending_responses()

    table = result.table.to_pylist()
    expected = {
        "aws-od": ("aws-api", 55.04 / 8),
        "aws-spot": ("aws-api", 24.7664 / 8),
        "aws-g5": (SNAP, 1.006),  # the API lists no such product: the snapshot
        "onprem": ("rate-card", 16.0 / 2),  # MIG slice rows too: the parent's price
        "mystery": ("default", 0.75),
    }
    assert {row["node"] for row in table} == set(expected)
    for row in table:
        source, hourly = expected[row["node"]]
        assert row["price_source"] == source, row
        assert row["gpu_hourly_price"] == pytest.approx(hourly), row
    slice_rows = [r for r in table if r["device_uuid"] == "MIG-onprem-0"]
    assert slice_rows and all(r["price_source"] == "rate-card" for r in slice_rows)
    # a 3g slice of a 7-slice GPU costs 3/7 of its parent's second
    assert sum(r["cost"] + r["unallocated_cost"] for r in slice_rows) == pytest.approx(
        sum(r["unallocated_gpu_seconds"] + r["allocated_gpu_seconds"] for r in slice_rows) * 8.0 / 3600)
    assert {(p["source"]) for p in result.summary["prices"]} == {"aws-api", SNAP, "rate-card", "default"}


# --------------------------------------------------------------------------- prices show


def prices_cli(argv, capsys) -> tuple[int, str, str]:
    """The command as agent/cli.py runs it: InputError -> one line on stderr, exit 2."""
    import argparse

    from agent.cmd_prices import register
    from collectors.errors import InputError

    parser = argparse.ArgumentParser(prog="gpuledger")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    try:
        code = args.handler(args) or 0
    except InputError as err:
        print(f"gpuledger: error: {err}", file=sys.stderr)
        code = 2
    captured = capsys.readouterr()
    return code, captured.out, captured.err



def test_prices_show_explains_a_snapshot_price_and_guesses_the_gpu_count(capsys):
    code, out, _ = prices_cli(["prices", "show", "--node-labels",
                               "node.kubernetes.io/instance-type=p5.48xlarge,topology.kubernetes.io/region=us-east-1"],
                              capsys)
    assert code == 0
    assert "GPUs: 8 x NVIDIA H100 80GB HBM3" in out and "price: 6.88 USD per GPU-hour" in out
    assert f"source: {SNAP}" in out and "whole node: 55.04 USD per hour" in out
    assert "entry: snapshot nodes[" in out


def test_prices_show_with_a_rate_card_and_the_cache(tmp_path, capsys, rates):
    card = rates(CARD)
    code, out, _ = prices_cli(["prices", "show", "--node-labels", "gpuledger.io/pool=dgx", "--gpus", "4",
                               "--gpu-model", A100, "--rates", str(card), "--cache", str(tmp_path / "c")], capsys)
    assert code == 0 and "price: 2 USD per GPU-hour" in out and "source: rate-card" in out
    code, out, _ = prices_cli(["prices", "show", "--node-labels", "kubernetes.io/hostname=x", "--gpu-model", "Odd",
                               "--rates", str(card)], capsys)
    assert "source: default" in out and "passed over:" in out and "rate-card: no match" in out


@pytest.mark.parametrize("argv, words", [
    (["--node-labels", "novalue"], "expected KEY=VALUE"),
    (["--node-labels", ","], "at least one"),
    (["--node-labels", "a=b", "--gpus", "0"], "at least 1"),
    (["--node-labels", "a=b", "--rates", "/nonexistent/rates.yaml"], "cannot read"),
])
def test_prices_show_user_mistakes_exit_2(capsys, argv, words):
    code, out, err = prices_cli(["prices", "show", *argv], capsys)
    assert code == 2 and out == "" and words in err and err.count("\n") == 1


def test_prices_show_lists_each_commitment_once_with_a_region_label(capsys):
    """The snapshot's region-less commitments are the fallback for regions it does not
    list; with a region it lists, only that region's are the node's options."""
    labels = "node.kubernetes.io/instance-type=p5.48xlarge,topology.kubernetes.io/region=us-east-1"
    code, out, _ = prices_cli(["prices", "show", "--node-labels", labels], capsys)
    assert code == 0
    options = [line.split(" per ")[0] for line in out.splitlines() if line.startswith("  reserved-instance")]
    assert options and len(options) == len(set(options)), out
    assert all("topology.kubernetes.io/region=us-east-1" in line
               for line in out.splitlines() if line.startswith("  reserved-instance")), out
    code, out, _ = prices_cli(["prices", "show", "--node-labels",
                               "node.kubernetes.io/instance-type=p5.48xlarge,topology.kubernetes.io/region=ap-south-2"],
                              capsys)
    options = [line for line in out.splitlines() if line.startswith("  reserved-instance")]
    assert options and len(options) == len(set(options)), out  # the region-less fallback, once


@pytest.mark.parametrize("labels, missing", [
    ("node.kubernetes.io/instance-type=p5.48xlarge", "no region label (topology.kubernetes.io/region)"),
    ("topology.kubernetes.io/region=us-east-1,eks.amazonaws.com/nodegroup=gpu",
     "no instance type label (node.kubernetes.io/instance-type)"),
])
def test_prices_show_aws_says_which_label_is_missing(capsys, labels, missing):
    code, out, _ = prices_cli(["prices", "show", "--node-labels", labels, "--aws"], capsys)
    assert code == 0
    (step,) = [line for line in out.splitlines() if line.startswith("  aws-api: skipped")]
    assert missing in step and "instance type or region" not in step, step
