"""The agent's accounting pieces in-process: the meter, the rollup book, the exporter."""

from __future__ import annotations

import math
import random

import pytest

from agent.config import Config
from agent.exporter import AgentMetrics
from agent.metering import Meter, Resume
from agent.rollups import RollupBook, read_rollup
from collectors.faults import FaultCounter
from collectors.pricing.ratecard import RateCardPricer, load_snapshot
from collectors.records import Container, Device, DevicesRecord, Owner, Pod, PodsRecord, Sample
from collectors.tracefile import iter_records
from tests.agentrun import assert_same_ledger, keyed, reference, rollup_rows, small_trace

__all__ = ["reference", "small_trace"]  # fixtures

PRICER = RateCardPricer(load_snapshot())


def _play(records, chunks: list[int], book: RollupBook, meter: Meter, interval: float):
    """Feed ``records`` in chunks of the given sizes, flushing after each as the agent does."""
    i = 0
    for size in chunks:
        cycle = meter.process(records[i:i + size], interval)
        book.add(cycle.rows)
        if cycle.newest_ts is not None:
            book.flush(cycle.newest_ts - 2 * interval)
        i += size
    return i


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_chunking_gives_replays_ledger(small_trace, reference, tmp_path, seed):
    """Cycles of random sizes (one record to several minutes of them) change nothing."""
    records = [r for _, r in iter_records(small_trace)]
    meta, records = records[0], records[1:]
    rng = random.Random(seed)
    chunks = []
    left = len(records)
    while left:
        chunks.append(min(left, rng.choice([1, 3, 17, 60, 400, 2000])))
        left -= chunks[-1]
    meter, book = Meter(PRICER, Config()), RollupBook(tmp_path, "USD")
    _play(records, chunks, book, meter, meta.interval_s)
    book.flush_all(max(r.ts for r in records))
    assert_same_ledger(keyed(rollup_rows(tmp_path)), reference["rows"])


NODE, GPU = "n1", "GPU-1"


def _devices(ts: float) -> DevicesRecord:
    return DevicesRecord(ts, NODE, (Device(GPU, "NVIDIA L4", 24e9),))


def _pods(ts: float, *names: str) -> PodsRecord:
    return PodsRecord(ts, NODE, tuple(
        Pod(uid=f"uid-{n}", namespace="ns", name=n, labels={"team": "t"}, owner=Owner("Job", n),
            containers=(Container("main", (GPU,)),))
        for n in names))


def test_samples_of_undescribed_devices_and_late_samples_are_dropped_and_counted():
    meter = Meter(PRICER, Config(), horizon_s=300)
    cycle = meter.process([Sample(5.0, NODE, GPU, 50.0, interval_s=1.0)], 1.0)
    assert cycle.dropped_undescribed == 1 and cycle.samples == 0 and not cycle.rows
    cycle = meter.process([_devices(10.0), Sample(1000.0, NODE, GPU, 50.0, interval_s=1.0)], 1.0)
    assert cycle.samples == 1
    cycle = meter.process([Sample(600.0, NODE, GPU, 50.0, interval_s=1.0)], 1.0)  # 400 s behind
    assert cycle.dropped_late == 1 and cycle.samples == 0
    cycle = meter.process([Sample(800.0, NODE, GPU, 50.0, interval_s=1.0)], 1.0)  # within 300 s
    assert cycle.samples == 1


def test_a_pod_arriving_mid_cycle_gets_only_its_seconds():
    """State records and samples in one cycle: each sample sees the state at its own time."""
    meter = Meter(PRICER, Config())
    records = [_devices(0.0)] + [Sample(float(t), NODE, GPU, 100.0, interval_s=1.0) for t in range(1, 11)]
    records.insert(6, _pods(5.0, "a"))  # from ts 5 on, pod a holds the GPU (samples 5..10 = 6 s)
    rows = meter.process(records, 1.0).rows
    held = sum(r.sums[0] for r in rows if r.key.pod is not None)
    free = sum(r.sums[1] for r in rows if r.key.pod is None)
    assert (held, free) == (6.0, 4.0)
    hourly = rows[0].slot.gpu_hourly_price
    assert math.isclose(sum(r.sums[5] for r in rows), 6.0 * hourly / 3600)


def test_resume_skips_what_the_ledger_holds():
    meter = Meter(PRICER, Config(), resume={NODE: Resume(minutes_through=0, samples_through=65.0)})
    records = [_devices(0.0)] + [Sample(float(t), NODE, GPU, 10.0, interval_s=1.0) for t in range(1, 71)]
    cycle = meter.process(records, 1.0)
    # minute 0 holds samples 1..60 (midpoints below 60); 61..65 are at or before samples_through
    assert cycle.dropped_resumed == 65 and cycle.samples == 5


def test_rollups_restore_and_merge_the_minute_in_progress(tmp_path):
    """Stop mid-minute, restart: the minute's two halves add up in one row."""
    first = Meter(PRICER, Config())
    book = RollupBook(tmp_path, "USD")
    head = [_devices(0.0), _pods(0.0, "a")] + [Sample(float(t), NODE, GPU, 50.0, interval_s=1.0) for t in range(1, 91)]
    book.add(first.process(head, 1.0).rows)
    book.flush(88.0)  # minute 0 closes
    book.flush_all(90.0)  # shutdown in minute 60: samples 61..90 written too
    (path,) = list(tmp_path.rglob("*.jsonl.gz"))
    header, rows = read_rollup(path)
    assert (header["minutes_through"], header["samples_through"]) == (0, 90.0)
    assert sorted((r["minute"], r["samples"]) for r in rows) == [(0, 60), (60, 30)]

    book2 = RollupBook(tmp_path, "USD")
    resume = book2.restore()
    assert resume == {NODE: Resume(0, 90.0)}
    second = Meter(PRICER, Config(), resume=resume)
    tail = [_devices(0.0), _pods(0.0, "a")] + [Sample(float(t), NODE, GPU, 50.0, interval_s=1.0) for t in range(1, 121)]
    cycle = second.process(tail, 1.0)
    assert cycle.dropped_resumed == 90
    book2.add(cycle.rows)
    book2.flush(200.0)
    _, rows = read_rollup(path)
    by_minute = {r["minute"]: r for r in rows}
    assert by_minute[60]["samples"] == 60 and by_minute[60]["allocated_gpu_seconds"] == 60.0
    assert by_minute[60]["used_gpu_seconds"] == 30.0
    assert len(rows) == 2


def test_late_row_rewrites_a_written_minute(tmp_path):
    meter, book = Meter(PRICER, Config()), RollupBook(tmp_path, "USD")
    book.add(meter.process([_devices(0.0)] + [Sample(float(t), NODE, GPU, 0.0, interval_s=1.0) for t in range(1, 60)],
                           1.0).rows)
    book.add(meter.process([Sample(100.0, NODE, GPU, 0.0, interval_s=1.0)], 1.0).rows)
    assert book.flush(98.0) == 1
    book.add(meter.process([Sample(60.0, NODE, GPU, 0.0, interval_s=1.0)], 1.0).rows)  # late, for minute 0
    book.flush(98.0)
    (path,) = list(tmp_path.rglob("*.jsonl.gz"))
    rows = {r["minute"]: r for r in read_rollup(path)[1]}
    assert rows[0]["unallocated_gpu_seconds"] == 60.0 and 60 not in rows


def test_a_new_label_set_shows_zero_first_then_its_increments():
    meter = Meter(PRICER, Config())
    metrics = AgentMetrics("USD", "dry-run", "test", FaultCounter())
    metrics.add_cycle(meter.process([_devices(0.0), _pods(0.0, "a"), Sample(1.0, NODE, GPU, 100.0, interval_s=1.0)], 1.0))

    def cost() -> dict:
        family = {f.name: f for f in metrics.collect()}["gpuledger_gpu_cost"]
        return {s.labels["workload"]: s.value for s in family.samples}

    assert cost() == {"Job/a": 0.0}
    price = meter.timeline.slots[0].gpu_hourly_price / 3600
    metrics.add_cycle(meter.process([Sample(2.0, NODE, GPU, 100.0, interval_s=1.0)], 1.0))
    assert math.isclose(cost()["Job/a"], 2 * price)  # the held-back first second and the second one
    metrics.add_cycle(meter.process([_pods(2.5, "a", "b"), Sample(3.0, NODE, GPU, 100.0, interval_s=1.0)], 1.0))
    got = cost()
    assert math.isclose(got["Job/a"], 2.5 * price) and got["Job/b"] == 0.0  # shared 1/2 each; b waits
    assert math.isclose(metrics.totals()["gpuledger_gpu_cost"], 3 * price)
    metrics.settle()
    assert math.isclose(sum(cost().values()), 3 * price)


def test_readiness():
    from agent.daemon import Health

    health = Health(started=0.0, needs_placement=True, ready_within_s=10.0)
    assert health.ready(1.0) == (False, "no samples attributed yet")
    health.last_cycle = 5.0
    assert health.ready(6.0) == (False, "no answer from the kubelet and the API server yet")
    health.placement_seen = True
    assert health.ready(6.0)[0] and not health.ready(16.0)[0]
    health.trace_finished = True  # dry-run after the end of the trace: still serving
    assert health.ready(1000.0)[0]
