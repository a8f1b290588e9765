"""Helper (no tests here): a gathered ledger dataset written from a ledger file.

:func:`write_day_dataset` lays it out as the gatherer does, ``<root>/date=YYYY-MM-DD/<node>.parquet``
(one file per node-day); :func:`write_dataset` as the first gatherer did, one file per
node-hour, ``<node>-<HH>.parquet``, which readers still take. The ledger's columns and
metadata are kept.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recommenders.ledger_schema import node_dirname


def _pieces(ledger: Path, seconds: int):
    """The ledger's rows by node and by ``seconds``-long span (an hour, a day), in time order:
    (span number, node name, rows) for each piece, each a zero-copy slice of one sorted table."""
    table = pq.read_table(ledger)
    minute = table.column("minute").cast(pa.timestamp("s", tz="UTC")).cast(pa.int64()).to_numpy()
    node_codes = pc.dictionary_encode(table.column("node").cast(pa.string())).combine_chunks()
    names = node_codes.dictionary.to_pylist()
    key = (minute // seconds) * len(names) + node_codes.indices.to_numpy(zero_copy_only=False)
    order = np.lexsort((minute, key))
    table = table.take(pa.array(order))
    key = key[order]
    starts = np.concatenate(([0], np.flatnonzero(np.diff(key)) + 1))
    ends = np.concatenate((starts[1:], [len(key)]))
    for lo, hi in zip(starts.tolist(), ends.tolist()):
        span, n = divmod(int(key[lo]), len(names))
        yield span, names[n], table.slice(lo, hi - lo)


def _write(root: Path, when: int, name: str, rows: pa.Table) -> Path:
    folder = root / f"date={time.strftime('%Y-%m-%d', time.gmtime(when))}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows, folder / name)
    return folder / name


def write_day_dataset(ledger: Path, root: Path) -> list[Path]:
    """``ledger`` as the gatherer keeps it: one file per node and UTC date
    (``<root>/date=YYYY-MM-DD/<node>.parquet``, rows in time order); returns the files written."""
    return [_write(root, day * 86400, f"{node_dirname(node)}.parquet", rows)
            for day, node, rows in _pieces(ledger, 86400)]


def write_dataset(ledger: Path, root: Path) -> list[Path]:
    """Split ``ledger`` (a ledger.parquet) into ``root``, one file per node-hour; returns the files written."""
    return [_write(root, hour * 3600, f"{node_dirname(node)}-{time.gmtime(hour * 3600).tm_hour:02d}.parquet", rows)
            for hour, node, rows in _pieces(ledger, 3600)]
