"""Replay as a stream: any batching gives the same ledger, bit for bit; memory does not grow
with the trace; several files merge by time; records out of order beyond the lateness are
refused with their file and line."""

from __future__ import annotations

import gzip
import json
import random

import pyarrow.parquet as pq
import pytest

from agent.config import Config
from agent.replay import Replay, replay
from agent.sinks import ParquetSink
from collectors.errors import InputError
from collectors.pricing.ratecard import RateCard, RateCardPricer
from collectors.simulator import simulate
from collectors.tracefile import TraceStream

pytestmark = pytest.mark.slow  # drives real processes or servers; see README "Fast loop"

CARD = RateCard(currency="USD", default_gpu_hourly=3.6)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A demo cluster trace with every feature: MIG slices, a time-sliced GPU, pods coming
    and going, serving records."""
    path = tmp_path_factory.mktemp("stream") / "demo.jsonl"
    simulate(path, seed=3, nodes=3, hours=1.5, interval_s=10.0)
    return path


def _parquet(paths, out, **options) -> bytes:
    sink = ParquetSink(out, CARD.currency)
    result = replay(paths, CARD, Config(), sink=sink, **options)
    sink.close()
    return out.read_bytes(), result.summary


def test_random_chunks_give_the_same_ledger_bytes(demo, tmp_path):
    single, summary = _parquet([demo], tmp_path / "single.parquet", block_bytes=lambda: 1 << 30)
    assert pq.read_metadata(tmp_path / "single.parquet").num_rows > 1000
    rng = random.Random(7)
    for run in range(4):
        sizes = lambda: rng.randint(200, 60_000)  # noqa: E731  (a line is about 300 bytes)
        lateness = rng.choice([0.001, 10.0, 95.0, 300.0, 5000.0])
        chunked, chunked_summary = _parquet([demo], tmp_path / f"chunked{run}.parquet", block_bytes=sizes,
                                            lateness_s=lateness)
        assert chunked == single, (run, lateness)
        assert json.dumps(chunked_summary, sort_keys=True) == json.dumps(summary, sort_keys=True) or _close(
            chunked_summary, summary)


def _close(a, b) -> bool:
    """Summaries equal to 1e-9 (a team's figures add up in another order when batched otherwise)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1e-300)
    return a == b


def _split_by_node(demo, tmp_path):
    """The demo's lines in one file per node (each with the meta line), as a fleet's recorders write them."""
    lines = demo.read_text().splitlines()
    meta, rest = lines[0], lines[1:]
    files = {}
    for line in rest:
        node = json.loads(line)["node"]
        files.setdefault(node, [meta]).append(line)
    paths = []
    for i, (node, body) in enumerate(sorted(files.items())):
        path = tmp_path / f"{node}.jsonl.gz"
        path.write_bytes(gzip.compress(("\n".join(body) + "\n").encode()))
        paths.append(path)
    return paths


def test_files_merge_by_time(demo, tmp_path):
    """One file per node, given in any order and read in small blocks, makes the ledger of
    the one file: the stream reads the file furthest behind next."""
    paths = _split_by_node(demo, tmp_path)
    assert len(paths) == 3
    whole, summary = _parquet([demo], tmp_path / "whole.parquet")
    rng = random.Random(1)
    split, split_summary = _parquet(list(reversed(paths)), tmp_path / "split.parquet",
                                    block_bytes=lambda: rng.randint(500, 20_000), lateness_s=60.0)
    assert pq.read_table(tmp_path / "split.parquet").equals(pq.read_table(tmp_path / "whole.parquet"))
    assert _close(split_summary["totals"], summary["totals"])


def test_memory_stays_bounded_as_the_trace_grows(tmp_path):
    """What replay holds between blocks (records read and not yet accounted, row parts of
    open minutes) stays about the lateness and one block, however long the trace."""
    peaks = {}
    for hours in (2.0, 8.0):
        path = tmp_path / f"t{hours}.jsonl"
        stats = simulate(path, seed=2, nodes=2, hours=hours, interval_s=10.0)
        stream = TraceStream([path], block_bytes=lambda: 64_000)
        run = Replay(stream, RateCardPricer(CARD), Config(), _Count(), lateness_s=120.0)
        peak = 0
        for block in stream:
            run.feed(block)
            run.advance(stream.low_water - 120.0)
            held = sum(len(s) for s in run._samples) + sum(len(r) for parts in run._open for r in parts)
            peak = max(peak, held)
        run.advance(float("inf"))
        assert run.sink.rows > 0 and run.sampled == stats.samples
        peaks[hours] = peak
    # a block of 64 kB is about 200 samples, 2 minutes of two nodes; 4x the trace, not 4x the memory
    assert peaks[8.0] <= peaks[2.0] * 1.5, peaks
    assert peaks[8.0] < stats.samples / 20, (peaks, stats.samples)


class _Count:
    rows = 0

    def add(self, rows, names) -> None:
        self.rows += len(rows)


def _trace(tmp_path, records, name="t.jsonl"):
    path = tmp_path / name
    meta = {"kind": "meta", "format": "gpuledger-trace", "version": 1, "interval_s": 1.0, "source": "test"}
    path.write_text("\n".join(json.dumps(r) for r in [meta, *records]) + "\n")
    return path


def _setup(ts=0.0):
    return [{"kind": "node", "ts": ts, "node": "n", "labels": {}},
            {"kind": "devices", "ts": ts, "node": "n", "devices": [{"uuid": "GPU-1", "model": "m"}]}]


def _sample(ts):
    return {"kind": "sample", "ts": ts, "node": "n", "uuid": "GPU-1", "util": 50.0}


def test_out_of_order_within_the_lateness_is_accounted(tmp_path):
    ordered = _setup() + [_sample(float(t)) for t in range(1, 1001)]
    shuffled = _setup() + [_sample(float(t)) for t in range(1, 1001)]
    rng = random.Random(4)
    for i in range(2, len(shuffled) - 1):  # swap neighbours: at most a second out of order
        if rng.random() < 0.3:
            shuffled[i], shuffled[i + 1] = shuffled[i + 1], shuffled[i]
    a = replay([_trace(tmp_path, ordered, "a.jsonl")], CARD, Config(), block_bytes=lambda: 2000, lateness_s=5)
    b = replay([_trace(tmp_path, shuffled, "b.jsonl")], CARD, Config(), block_bytes=lambda: 2000, lateness_s=5)
    assert b.table.equals(a.table)
    assert a.summary["totals"]["gpu_seconds"] == 1000.0


def test_a_record_later_than_the_lateness_names_its_file_and_line(tmp_path):
    setup = _setup()
    setup[1]["devices"].append({"uuid": "GPU-2", "model": "m"})
    records = setup + [_sample(float(t)) for t in range(1, 2001)] + [{**_sample(1500.5), "uuid": "GPU-2"}]
    path = _trace(tmp_path, records)
    with pytest.raises(InputError) as caught:
        replay([path], CARD, Config(), block_bytes=lambda: 4000, lateness_s=60)
    err = caught.value
    assert (err.file, err.line, err.field) == (str(path), len(records) + 1, "ts")
    assert "at most 60 s older" in err.message and "--lateness" in err.message
    # read as one block, the same trace is in order enough: nothing had been accounted yet
    assert replay([path], CARD, Config(), block_bytes=lambda: 1 << 30, lateness_s=60).summary is not None


def test_an_interval_longer_than_any_before_cannot_reopen_a_written_minute(tmp_path):
    """GPU-2's one sample covers 1000-3000 s: its minute (the midpoint's, 1980) was written
    long before it arrives when replay reads in small blocks; refused, never left out."""
    setup = _setup()
    setup[1]["devices"].append({"uuid": "GPU-2", "model": "m"})
    records = setup + [_sample(float(t)) for t in range(1, 3001)]
    records.append({**_sample(3000.0), "uuid": "GPU-2", "interval_s": 2000.0})
    path = _trace(tmp_path, records)
    got = replay([path], CARD, Config(), block_bytes=lambda: 1 << 30).summary["totals"]["gpu_seconds"]
    assert got == 3000.0 + 2000.0  # read at once, it is accounted
    with pytest.raises(InputError) as caught:
        replay([path], CARD, Config(), block_bytes=lambda: 3000, lateness_s=1)
    assert (caught.value.line, caught.value.field) == (len(records) + 1, "interval_s")
    assert "already written" in caught.value.message
