"""The gathered dataset: one Parquet file per node and UTC date, replaced whole as hours arrive.

``OUT/date=YYYY-MM-DD/<node_dir>.parquet`` holds every gathered hour of one node's day,
sorted by minute (then as the rollup: device, pod), with the ledger's Arrow schema. When
new hours of that node-day arrive, :meth:`Dataset.write_day` reads the file, drops the
rows of the hours being written (a re-pulled hour replaces its rows), adds the new ones
and writes the file again whole: on a disk under a temporary name that is fsynced and
renamed over the old one, on an object store as one PUT of the new object. A reader
listing ``date=*/*.parquet`` at any moment finds each node-day once, as one whole version:
no row is in two files, so none is seen twice, and no rename or delete ever leaves a moment
without it. See docs/fleet.md, "Compaction".

OUT is a directory or an object-store URL (``s3://bucket/prefix``), through ``pyarrow.fs``.
"""

from __future__ import annotations

import glob
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from collectors.atomicfile import write_bytes
from collectors.errors import InputError
from recommenders.ledger_schema import HOUR

if TYPE_CHECKING:
    import pyarrow as pa

CURRENCY_KEY = b"gpuledger.currency"


def day_name(node_dir: str, hour: int) -> str:
    """``date=YYYY-MM-DD/<node_dir>.parquet``: the file of a node's day that holds ``hour``."""
    return f"date={time.strftime('%Y-%m-%d', time.gmtime(hour))}/{node_dir}.parquet"


STALE_S = 3600.0  # a temporary file older than this is a killed gatherer's, not one being written


def _sweep(final: Path) -> None:
    """Remove what a gatherer killed while writing ``final`` left: its temporary files (hidden
    names that readers skip) older than :data:`STALE_S`."""
    now = time.time()
    for tmp in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_S:
                tmp.unlink()
        except OSError:
            pass  # gone meanwhile, or not ours to remove: harmless either way


class Dataset:
    """Where the Parquet files and the checkpoint go: a pyarrow filesystem and a root in it."""

    def __init__(self, out: str, s3_endpoint: str | None) -> None:
        from collectors.objectstore import open_location

        self.out = out
        self._locks: dict[str, threading.Lock] = {}  # per node: two agents serving one node take turns
        self._guard = threading.Lock()
        try:
            where = open_location(out, s3_endpoint)
        except ValueError as err:
            raise InputError(str(err), file=out, field="--out") from None
        self.fs, self.root, self.local = where.fs, where.root, where.local

    def path(self, *parts: str) -> str:
        return "/".join((self.root,) + parts)

    def write(self, relative: str, data: bytes) -> None:
        """Write a file whole: a temporary name, fsync and a rename on a disk; one PUT on an object store
        (a new object appears whole or not at all, and replaces the old one whole)."""
        final = self.path(relative)
        if not self.local:
            self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
            with self.fs.open_output_stream(final) as f:
                f.write(data)
            return
        write_bytes(final, data, durable=True)
        _sweep(Path(final))

    def read(self, relative: str) -> bytes | None:
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self.path(relative))
        if info.type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(self.path(relative)) as f:
            return f.read()

    def _lock(self, node_dir: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(node_dir, threading.Lock())

    def write_day(self, node_dir: str, pieces: list[tuple[int, "pa.Table"]]) -> int:
        """Put the hours ``pieces`` (hour, its rows: one node, one UTC date) into the node-day's file,
        replacing the rows those hours had there; returns the rows the file holds now. ``OSError``
        when the store fails, ``ValueError`` (naming the file) when the file there is not one of ours."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        hours = sorted(h for h, _ in pieces)
        relative = day_name(node_dir, hours[0])
        assert all(day_name(node_dir, h) == relative for h in hours), "one node-day at a time"
        new = pa.concat_tables([t for _, t in sorted(pieces, key=lambda p: p[0])])
        with self._lock(node_dir):
            old = self._read_day(relative, new.schema)
            if old is not None and old.num_rows:
                minute = old.column("minute")
                replaced = None
                for h in hours:
                    lo, hi = pa.scalar(h, pa.timestamp("s", tz="UTC")), pa.scalar(h + HOUR, pa.timestamp("s", tz="UTC"))
                    inside = pc.and_(pc.greater_equal(minute, lo), pc.less(minute, hi))
                    replaced = inside if replaced is None else pc.or_(replaced, inside)
                kept = old.filter(pc.invert(replaced))
                table = pa.concat_tables([kept, new])
                table = table.take(pc.sort_indices(table, [("minute", "ascending")]))  # stable: hours stay whole
            else:
                table = new
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, compression="zstd")
            self.write(relative, sink.getvalue().to_pybytes())
        return table.num_rows

    def _read_day(self, relative: str, schema: "pa.Schema") -> "pa.Table | None":
        import pyarrow as pa
        import pyarrow.fs as pafs
        import pyarrow.parquet as pq

        where = self.path(relative)
        if self.fs.get_file_info(where).type == pafs.FileType.NotFound:  # OSError: the store failed
            return None
        try:
            with self.fs.open_input_file(where) as f:
                data = pq.read_table(f)
        except pa.ArrowInvalid as err:
            raise ValueError(f"{where}: not a Parquet file of the ledger ({str(err).splitlines()[0][:120]}); "
                             "nothing written to it") from None
        have = (data.schema.metadata or {}).get(CURRENCY_KEY)
        want = (schema.metadata or {}).get(CURRENCY_KEY)
        if have != want:
            raise ValueError(f"{where}: holds rows in {(have or b'?').decode()}, the agent now serves "
                             f"{(want or b'?').decode()}; nothing written to it")
        try:
            return data.select(schema.names).cast(schema)
        except (pa.ArrowException, KeyError, ValueError) as err:
            raise ValueError(f"{where}: not the ledger's columns ({str(err).splitlines()[0][:120]}); "
                             "nothing written to it") from None
