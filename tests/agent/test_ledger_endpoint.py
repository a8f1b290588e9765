"""The agent's read-only ledger endpoint (agent/ledgerserve.py) and the node's retention."""

from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path

import pytest

from agent.config import Config
from agent.ledgerserve import LedgerEndpoint, TokenFile, parse_since
from agent.metering import Meter
from agent.rollups import RollupBook
from collectors.pricing.ratecard import RateCardPricer, load_snapshot
from collectors.records import Device, DevicesRecord, Sample

PRICER = RateCardPricer(load_snapshot())


def _hours(ledger: Path, node: str = "n1", hours: int = 3) -> RollupBook:
    """``hours`` hours of one GPU of ``node`` written to the ledger (the last one in progress)."""
    book = RollupBook(ledger, "USD")
    meter = Meter(PRICER, Config())
    records = [DevicesRecord(0.0, node, (Device("GPU-1", "NVIDIA L4", 24e9),))]
    records += [Sample(float(t), node, "GPU-1", 50.0, interval_s=10.0) for t in range(10, hours * 3600 + 1, 10)]
    book.add(meter.process(records, 10.0).rows)
    book.flush(hours * 3600 - 20.0)
    return book


def _endpoint(book: RollupBook, closed: float | None = None, token: TokenFile | None = None) -> LedgerEndpoint:
    return LedgerEndpoint(book.directory, lambda: closed if closed is not None else
                          book.written_through - book.keep_s, token)


def _listing(endpoint: LedgerEndpoint, query: str = "", headers: dict | None = None) -> list[dict]:
    code, body, kind = endpoint.answer("/ledger" + query, headers or {})
    assert code == 200 and kind == "application/json", body
    return json.loads(body)


def test_the_listing_holds_the_closed_hours_only(tmp_path):
    book = _hours(tmp_path)
    listing = _listing(_endpoint(book))
    # written through 10740 s: hour 0 and hour 1 ended more than keep_s (600 s) before; hour 2 is open
    assert [(e["node"], e["hour"]) for e in listing] == [("n1", 0), ("n1", 3600)]
    first = listing[0]
    assert first["path"] == "/ledger/n1/1970-01-01/00.jsonl.gz" and first["hour_iso"] == "1970-01-01T00:00:00Z"
    data = (tmp_path / "n1" / "1970-01-01" / "00.jsonl.gz").read_bytes()
    assert first["size"] == len(data)
    import hashlib

    assert first["sha256"] == hashlib.sha256(data).hexdigest()
    code, body, kind = _endpoint(book).answer(first["path"], {})
    assert (code, body, kind) == (200, data, "application/gzip")
    # the open hour is there on disk but not served
    assert (tmp_path / "n1" / "1970-01-01" / "02.jsonl.gz").exists()
    assert _endpoint(book).answer("/ledger/n1/1970-01-01/02.jsonl.gz", {})[0] == 404
    # a dry-run whose trace ended: everything is closed
    assert len(_listing(_endpoint(book, closed=math.inf))) == 3


def test_since_takes_unix_seconds_and_iso_times(tmp_path):
    endpoint = _endpoint(_hours(tmp_path), closed=math.inf)
    assert [e["hour"] for e in _listing(endpoint, "?since=3600")] == [3600, 7200]
    assert [e["hour"] for e in _listing(endpoint, "?since=1970-01-01T02:00:00Z")] == [7200]
    assert [e["hour"] for e in _listing(endpoint, "?since=1970-01-01T01:30:00%2B00:00")] == [7200]
    code, body, _ = endpoint.answer("/ledger?since=yesterday", {})
    assert code == 400 and b"since" in body
    assert parse_since("1970-01-01T01:00:00") == 3600.0
    with pytest.raises(ValueError):
        parse_since("nan")


TRAVERSALS = [
    "/ledger/../../etc/passwd",
    "/ledger/../../../etc/passwd",
    "/ledger/%2e%2e/%2e%2e/etc/passwd",
    "/ledger/%2E%2E/1970-01-01/00.jsonl.gz",
    "/ledger/..%2f..%2fetc/1970-01-01/00.jsonl.gz",
    "/ledger/n1/..%2f..%2f..%2fetc%2fpasswd/00.jsonl.gz",
    "/ledger/%2Fetc/1970-01-01/00.jsonl.gz",
    "/ledger//etc/passwd",
    "/ledger/n1/1970-01-01/../../../etc/passwd",
    "/ledger/n1/1970-01-01/00.jsonl.gz%00",
    "/ledger/n1%00/1970-01-01/00.jsonl.gz",
    "/ledger/.hidden/1970-01-01/00.jsonl.gz",
    "/ledger/n1/1970-01-01/00.jsonl.gz.damaged",
    "/ledger/n1/1970-01-01/24.jsonl.gz",
    "/ledger/n1/1970-13-01/00.jsonl.gz",
    "/ledger/n1/%ff/00.jsonl.gz",
    "/ledger/n1/1970-01-01/00.jsonl.gz/x",
    "/ledger/n1",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_paths_outside_the_rollups_are_refused(tmp_path, path):
    ledger = tmp_path / "ledger"
    book = _hours(ledger)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0\n")
    code, body, _ = _endpoint(book, closed=math.inf).answer(path, {})
    assert code in (400, 404) and b"root:" not in body


def test_symbolic_links_are_not_followed(tmp_path):
    ledger = tmp_path / "ledger"
    book = _hours(ledger)
    outside = tmp_path / "outside" / "1970-01-01"
    outside.mkdir(parents=True)
    (outside / "00.jsonl.gz").write_bytes(gzip.compress(b"secret\n"))
    os.symlink(tmp_path / "outside", ledger / "linked")  # a node directory that is a link
    os.symlink(outside / "00.jsonl.gz", ledger / "n1" / "1970-01-01" / "05.jsonl.gz")  # a file that is a link
    endpoint = _endpoint(book, closed=math.inf)
    assert endpoint.answer("/ledger/linked/1970-01-01/00.jsonl.gz", {})[0] == 404
    assert endpoint.answer("/ledger/n1/1970-01-01/05.jsonl.gz", {})[0] == 404
    assert {e["node_dir"] for e in _listing(endpoint)} == {"n1"}
    assert [e["hour"] for e in _listing(endpoint)] == [0, 3600, 7200]


def test_hostile_node_names_are_listed_encoded_and_served(tmp_path):
    book = _hours(tmp_path, node="../escape")
    endpoint = _endpoint(book, closed=math.inf)
    listing = _listing(endpoint)
    assert {e["node"] for e in listing} == {"../escape"}
    assert listing[0]["path"].startswith("/ledger/%252E.%252Fescape/")  # the directory %2E.%2Fescape, quoted
    assert endpoint.answer(listing[0]["path"], {})[0] == 200


def test_a_token_is_required_when_configured(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    endpoint = _endpoint(_hours(tmp_path / "ledger"), closed=math.inf, token=TokenFile(str(token_file)))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"},
                    {"Authorization": "Bearer "}):
        assert endpoint.answer("/ledger", headers)[0] == 401
        assert endpoint.answer("/ledger/n1/1970-01-01/00.jsonl.gz", headers)[0] == 401
    assert len(_listing(endpoint, headers={"Authorization": "Bearer s3cret"})) == 3
    token_file.write_text("rotated-and-longer\n")  # read again when it changes
    assert endpoint.answer("/ledger", {"Authorization": "Bearer s3cret"})[0] == 401
    assert endpoint.answer("/ledger", {"Authorization": "Bearer rotated-and-longer"})[0] == 200


def test_prune_deletes_hours_older_than_kept(tmp_path):
    book = _hours(tmp_path, hours=5)
    assert len(list(tmp_path.rglob("*.jsonl.gz"))) == 5
    (tmp_path / "n1" / "1970-01-01" / "notes.txt").write_text("not ours")
    # written through 17940 s; keeping 2 h deletes the hours that ended before 10740 s: 0 and 1
    assert book.prune(2 * 3600) == 2
    left = sorted(p.name for p in tmp_path.rglob("*.jsonl.gz"))
    assert left == ["02.jsonl.gz", "03.jsonl.gz", "04.jsonl.gz"]
    assert (tmp_path / "n1" / "1970-01-01" / "notes.txt").exists()
    assert book.prune(2 * 3600) == 0
    assert RollupBook(tmp_path / "empty", "USD").prune(0) == 0
