"""The price cache: expiry, last good prices through outages, fault counting, disk persistence."""

from __future__ import annotations

import json
import logging

import pytest

from collectors.pricing.cache import CACHE_FILE, PriceApiError, PriceCache
from collectors.pricing.chain import PriceChain
from collectors.pricing.ratecard import GpuPrice


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Api:
    """A fetch function whose answer or failure the test sets."""

    def __init__(self, value=None) -> None:
        self.value = value
        self.down = False
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.down:
            raise PriceApiError("aws-api", "GetProducts failed: ThrottlingException", throttled=True)
        return self.value


KEY = ("aws-api", "offer", "p5.48xlarge", "us-east-1")


def test_fresh_answers_are_reused_and_expired_ones_fetched_again():
    clock, api = Clock(), Api({"hourly": 55.04})
    cache = PriceCache(max_age_s=3600, clock=clock)
    assert cache.lookup(KEY, api).status == "fetched"
    clock.t += 3599
    assert cache.lookup(KEY, api).status == "fresh" and api.calls == 1
    clock.t += 1
    api.value = {"hourly": 50.0}
    got = cache.lookup(KEY, api)
    assert (got.status, got.value, api.calls) == ("fetched", {"hourly": 50.0}, 2)


def test_an_unreachable_api_keeps_the_last_good_answer_counts_and_logs_once(caplog):
    clock, api = Clock(), Api({"hourly": 55.04})
    cache = PriceCache(max_age_s=3600, retry_after_s=300, clock=clock)
    cache.get(KEY, api)
    api.down = True
    clock.t += 4000
    with caplog.at_level(logging.WARNING, logger="gpuledger.pricing"):
        got = cache.lookup(KEY, api)
        assert (got.status, got.value) == ("stale", {"hourly": 55.04}) and "Throttling" in got.error
        clock.t += 10  # within retry_after: not even tried
        assert cache.lookup(KEY, api).status == "stale" and api.calls == 2
        clock.t += 300
        other = ("aws-api", "offer", "g5.xlarge", "us-east-1")
        assert cache.lookup(KEY, api).value == {"hourly": 55.04}
        assert cache.lookup(other, api).status == "unavailable"
    assert cache.faults == {"aws-api": 3}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "aws-api" in warnings[0].getMessage()
    assert "testing" not in caplog.text  # nothing but the error code is logged
    api.down = False
    clock.t += 300
    assert cache.lookup(KEY, api).status == "fetched"


def test_answers_survive_a_restart_on_disk_and_outlive_an_outage(tmp_path):
    clock, api = Clock(), Api({"hourly": 55.04})
    first = PriceCache(tmp_path, clock=clock)
    first.get(KEY, api)
    first.get(("aws-api", "offer", "p9.mega", "us-east-1"), Api(None))  # "no such product" is an answer too
    doc = json.loads((tmp_path / CACHE_FILE).read_text())
    assert doc["format"] == "gpuledger-price-cache" and len(doc["entries"]) == 2
    assert not [p for p in tmp_path.iterdir() if p.name != CACHE_FILE]  # no temporary files left

    clock.t += 86400  # a day later, the API is down
    down = Api()
    down.down = True
    second = PriceCache(tmp_path, clock=clock)
    got = second.lookup(KEY, down)
    assert (got.status, got.value) == ("stale", {"hourly": 55.04}) and second.faults == {"aws-api": 1}
    fresh = PriceCache(tmp_path, clock=Clock(clock.t - 86400 + 10))
    assert fresh.lookup(KEY, down).status == "fresh" and down.calls == 1


def test_a_damaged_cache_file_is_ignored(tmp_path, caplog):
    (tmp_path / CACHE_FILE).write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="gpuledger.pricing"):
        cache = PriceCache(tmp_path)
    assert "ignoring the price cache" in caplog.text
    assert cache.lookup(KEY, Api({"hourly": 1.0})).status == "fetched"


def test_refresh_expired_fetches_every_known_key_again():
    clock = Clock()
    apis = {k: Api({"hourly": float(i)}) for i, k in enumerate([KEY, ("gcp-api", "catalog")])}
    cache = PriceCache(max_age_s=3600, clock=clock)
    for key, api in apis.items():
        cache.get(key, api)
    assert cache.refresh_expired() == 0 and all(a.calls == 1 for a in apis.values())
    clock.t += 3600
    apis[("gcp-api", "catalog")].down = True
    assert cache.refresh_expired() == 1
    assert [a.calls for a in apis.values()] == [2, 2]
    assert cache.faults == {"gcp-api": 1}  # counted under the source that owns the key


class FlakyAws:
    """An AWS source whose on-demand answer the test controls (the chain's view of it)."""

    def __init__(self) -> None:
        self.down = False

    def instance_offer(self, it, region):
        if self.down:
            raise PriceApiError("aws-api", "EndpointConnectionError")
        from collectors.pricing.aws import InstanceOffer
        return InstanceOffer(it, region, "SKU", 40.0)


def test_chain_keeps_pricing_with_last_good_api_prices_and_expires_them(tmp_path):
    clock = Clock()
    aws = FlakyAws()
    chain = PriceChain(cache=PriceCache(tmp_path, max_age_s=3600, clock=clock), apis={"aws": aws})
    labels = {"node.kubernetes.io/instance-type": "p5.48xlarge", "topology.kubernetes.io/region": "us-east-1",
              "eks.amazonaws.com/nodegroup": "gpu"}
    assert chain(labels, "NVIDIA H100 80GB HBM3", 8) == GpuPrice(5.0, "aws-api")
    aws.down = True
    clock.t += 7200
    explained = chain.explain(labels, "NVIDIA H100 80GB HBM3", 8)
    assert explained.price == GpuPrice(5.0, "aws-api") and "last good answer kept" in explained.entry
    assert chain.cache.faults == {"aws-api": 1}
    # without any good answer the chain falls through to the snapshot
    cold = PriceChain(cache=PriceCache(clock=clock), apis={"aws": aws})
    assert cold(labels, "NVIDIA H100 80GB HBM3", 8).source.startswith("snapshot:")


@pytest.mark.parametrize("bad", ['{"format": "other", "version": 1, "entries": []}', "[]"])
def test_foreign_json_is_not_taken_for_a_cache(tmp_path, bad):
    (tmp_path / CACHE_FILE).write_text(bad)
    assert list(PriceCache(tmp_path).keys()) == []
