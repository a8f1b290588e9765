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


def write_day_dataset(ledger: Path, root: Path) -> list[Path]:
    """``ledger`` as the gatherer keeps it: one file per node and UTC date
    (``<root>/date=YYYY-MM-DD/<node>.parquet``, rows in time order); returns the files written."""
    table = pq.read_table(ledger)
    minute = table.column("minute").cast(pa.timestamp("s", tz="UTC")).cast(pa.int64()).to_numpy()
    node_codes = pc.dictionary_encode(table.column("node").cast(pa.string())).combine_chunks()
    names = node_codes.dictionary.to_pylist()
    day = minute // 86400
    key = day * len(names) + node_codes.indices.to_numpy(zero_copy_only=False)
    order = np.lexsort((minute, key))
    table = table.take(pa.array(order))
    key = key[order]
    starts = np.concatenate(([0], np.flatnonzero(np.diff(key)) + 1))
    ends = np.concatenate((starts[1:], [len(key)]))
    written = []
    for lo, hi in zip(starts.tolist(), ends.tolist()):
        d, n = divmod(int(key[lo]), len(names))
        folder = root / f"date={time.strftime('%Y-%m-%d', time.gmtime(d * 86400))}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{node_dirname(names[n])}.parquet"
        pq.write_table(table.slice(lo, hi - lo), path)
        written.append(path)
    return written


def write_dataset(ledger: Path, root: Path) -> list[Path]:
    """Split ``ledger`` (a ledger.parquet) into ``root``, one file per node-hour; returns the files written."""
    table = pq.read_table(ledger)
    minute = table.column("minute").cast(pa.timestamp("s", tz="UTC")).cast(pa.int64()).to_numpy()
    hour = minute // 3600
    nodes = table.column("node").cast(pa.string())
    node_codes = pc.dictionary_encode(nodes).combine_chunks()
    names = node_codes.dictionary.to_pylist()
    key = hour * len(names) + node_codes.indices.to_numpy(zero_copy_only=False)
    order = np.argsort(key, kind="stable")
    table = table.take(pa.array(order))  # once; then each node-hour is a zero-copy slice
    key = key[order]
    starts = np.concatenate(([0], np.flatnonzero(np.diff(key)) + 1))
    ends = np.concatenate((starts[1:], [len(key)]))
    written = []
    for lo, hi in zip(starts.tolist(), ends.tolist()):
        h, n = divmod(int(key[lo]), len(names))
        stamp = time.gmtime(h * 3600)
        folder = root / f"date={time.strftime('%Y-%m-%d', stamp)}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{node_dirname(names[n])}-{stamp.tm_hour:02d}.parquet"
        pq.write_table(table.slice(lo, hi - lo), path)
        written.append(path)
    return written
