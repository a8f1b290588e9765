"""Where finished ledger rows go: one interface, a Parquet file or a table in memory.

A sink takes :class:`~agent.accounting.ledger.Rows` (ids) with the :class:`~agent.accounting.engine.Names` they
refer to. Replay writes completed minutes to :class:`ParquetSink` (row groups as the trace
advances, so the ledger never sits whole in memory); the agent's
:class:`~agent.rollups.RollupBook` takes the same calls and writes hourly JSON Lines.
Arrow is imported only by the functions that need it: the agent never loads it.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from agent.accounting.engine import Names
from agent.accounting.ledger import POD_ATTR, SLOT_ATTR, Rows, concat
from recommenders.ledger_schema import COLUMNS, DEVICE, POD, arrow_schema

if TYPE_CHECKING:
    import pyarrow as pa

ROW_GROUP_ROWS = 1 << 16  # rows of a row group: about 15 MB as ids, 25 MB as an Arrow table


class LedgerSink(Protocol):
    """Takes finished ledger rows."""

    def add(self, rows: Rows, names: Names) -> None:
        ...


def ledger_order(rows: Rows, names: Names) -> np.ndarray:
    """The ledger's row order: minute, node, device, then unallocated before pods by uid.
    It depends on names only, so any batching of the same input gives the same file."""
    device = names.device_order()[rows.device] if len(names.devices) else rows.device
    pods = names.pod_order()
    holder = np.where(rows.holder >= 0, pods[np.maximum(rows.holder, 0)] if len(pods) else -1, -1)
    return np.lexsort((holder, device, rows.minute))


def to_table(rows: Rows, names: Names, currency: str) -> "pa.Table":
    """Rows as an Arrow table with the columns of ``docs/ledger.md``, in the given order.

    Strings are looked up in dictionaries of the names (one entry per device, slot or pod
    version), never built row by row.
    """
    import pyarrow as pa

    schema = arrow_schema(currency)
    slots, pods, devices = names.slots.values, names.pods.values, names.devices.values
    slot_index = pa.array(rows.slot)
    holder_index = pa.array(rows.holder, mask=rows.holder < 0)
    columns: dict[str, pa.Array] = {
        "minute": pa.array(rows.minute, pa.timestamp("s", tz="UTC")),
        "node": pa.array([d[0] for d in devices], pa.string()).take(pa.array(rows.device)),
        "device_uuid": pa.array([d[1] for d in devices], pa.string()).take(pa.array(rows.device)),
    }
    for name in DEVICE:
        attr = SLOT_ATTR[name]
        columns[name] = pa.array([getattr(s, attr) for s in slots], schema.field(name).type).take(slot_index)
    for name in POD:
        attr = POD_ATTR[name]
        columns[name] = pa.array([getattr(p, attr) for p in pods], pa.string()).take(holder_index)
    for column in COLUMNS:
        if column.name in rows.values:
            values = rows.values[column.name]
            nullable = column.nullable and values.dtype.kind == "f"
            columns[column.name] = pa.array(values, schema.field(column.name).type,
                                            mask=np.isnan(values) if nullable else None)
    return pa.table([columns[c.name] for c in COLUMNS], schema=schema)


class DiscardSink:
    """Takes rows and keeps none (a replay that only prints its summary)."""

    def add(self, rows: Rows, names: Names) -> None:
        pass


class TableSink:
    """Keeps the rows, for :attr:`table` at the end (tests, small traces)."""

    def __init__(self, currency: str) -> None:
        self.currency = currency
        self._parts: list[Rows] = []
        self._names: Names | None = None

    def add(self, rows: Rows, names: Names) -> None:
        self._parts.append(rows)
        self._names = names

    def table(self) -> "pa.Table":
        rows = concat(self._parts)
        names = self._names or Names()
        return to_table(rows.take(ledger_order(rows, names)), names, self.currency)


class ParquetSink:
    """Writes rows to a Parquet file in row groups of :data:`ROW_GROUP_ROWS` rows.

    Rows must come in ledger order across calls (replay hands over minutes as they close,
    each batch in :func:`ledger_order`). Encoding and compressing a row group is Arrow's
    work, done without the GIL, so it runs on a thread of its own while replay reads and
    accounts the next block; one row group at most is in flight. The file is written at
    ``path`` as given: callers write to a temporary name and rename it once everything
    succeeded (:func:`collectors.atomicfile.atomic_paths`), so no reader ever sees part of
    a ledger.
    """

    def __init__(self, path: str | Path, currency: str) -> None:
        self.path = Path(path)
        self.currency = currency
        self.rows = 0
        self._pending: list[Rows] = []
        self._pending_rows = 0
        self._names: Names | None = None
        self._writer = None
        self._thread: ThreadPoolExecutor | None = None
        self._in_flight: Future | None = None

    def add(self, rows: Rows, names: Names) -> None:
        if not len(rows):
            return
        self._pending.append(rows)
        self._pending_rows += len(rows)
        self._names = names
        while self._pending_rows >= ROW_GROUP_ROWS:
            pending = concat(self._pending)
            self._write(pending.take(slice(0, ROW_GROUP_ROWS)))
            rest = pending.take(slice(ROW_GROUP_ROWS, None))
            self._pending, self._pending_rows = [rest], len(rest)

    def _write(self, rows: Rows) -> None:
        """One row group. Groups are cut at every ROW_GROUP_ROWS rows, however the rows
        came, so the same ledger always makes the same file."""
        import pyarrow.parquet as pq

        assert self._names is not None
        table = to_table(rows, self._names, self.currency)
        self._wait()
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="ledger-writer")
        assert self._thread is not None
        self._in_flight = self._thread.submit(self._writer.write_table, table, row_group_size=len(rows))
        self.rows += len(rows)

    def _wait(self) -> None:
        """Until the row group in flight is written (its error, if any, raised here)."""
        if self._in_flight is not None:
            future, self._in_flight = self._in_flight, None
            future.result()

    def close(self) -> None:
        """Write what is pending and finish the file (an empty ledger has no row group)."""
        import pyarrow.parquet as pq

        try:
            if self._pending_rows:
                self._write(concat(self._pending))
            self._pending, self._pending_rows = [], 0
            self._wait()
            if self._writer is None:
                self._writer = pq.ParquetWriter(self.path, arrow_schema(self.currency), compression="zstd")
            self._writer.close()
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Stop the writing thread (after an error: the caller discards the file)."""
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
