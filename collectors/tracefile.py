"""Reading and writing trace files (JSON Lines, plain or gzip).

Writing lives in :mod:`collectors.tracewriter`, which needs neither Arrow nor NumPy,
so the recorder on every GPU node stays small.

Reading has two paths that produce the same result. The fast path hands blocks of
lines to Arrow's JSON reader with a fixed schema for samples (the bulk of any trace)
and decodes the few other records with :mod:`json`. When Arrow rejects a block, or a
sample fails a check, the careful path reads that block line by line with
:func:`collectors.records.from_json`, which names the exact line and field. Both paths
apply the same checks, so what is accepted does not depend on the path taken.
"""

from __future__ import annotations

import gzip
import json
import os
import queue
import threading
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from collectors.errors import InputError
from collectors.records import (
    BYTES_MAX,
    COUNT_MAX,
    INTERVAL_MAX,
    TS_MAX,
    DevicesRecord,
    Meta,
    NodeRecord,
    PodsRecord,
    Record,
    Sample,
    ServingRecord,
    from_json,
)
from collectors.samples import CODE, Interners, SampleColumns, ServingColumns

BLOCK_BYTES = 8 << 20

_PROCESS = pa.struct(
    [("pid", pa.int64()), ("pod_uid", pa.string()), ("util", pa.float64()),
     ("mem_used_bytes", pa.float64())]
)
# the fields of samples and of serving records (trace format 1.1): both bulk kinds are
# parsed by Arrow; every other kind is decoded line by line
_SAMPLE_SCHEMA = pa.schema(
    [("kind", pa.string()), ("ts", pa.float64()), ("node", pa.string()), ("uuid", pa.string()),
     ("util", pa.float64()), ("mem_used_bytes", pa.float64()), ("power_w", pa.float64()),
     ("interval_s", pa.float64()), ("processes", pa.list_(_PROCESS)), ("pod_uid", pa.string()),
     ("requests", pa.float64()), ("input_tokens", pa.float64()), ("output_tokens", pa.float64()),
     ("errors", pa.float64())]
)
_SAMPLE_FIELDS = ["ts", "node", "uuid", "util", "mem_used_bytes", "power_w", "interval_s", "processes"]
_PARSE = pajson.ParseOptions(explicit_schema=_SAMPLE_SCHEMA, unexpected_field_behavior="ignore")


# --------------------------------------------------------------------------- reading


@dataclass
class TraceBlock:
    """What one block of one trace file holds: its samples in columns, its serving records
    in columns (None: none), and its state records with their (file index, line)."""

    file: int
    samples: SampleColumns
    serving: ServingColumns | None
    states: list[tuple[tuple[int, int], NodeRecord | DevicesRecord | PodsRecord]]

    def newest(self) -> float:
        """The latest ts of any record in the block (-inf for a block of none)."""
        newest = max((r.ts for _, r in self.states), default=-np.inf)
        if len(self.samples):
            newest = max(newest, float(self.samples.ts.max()))
        if self.serving is not None and len(self.serving):
            newest = max(newest, float(self.serving.ts.max()))
        return newest


Progress = Callable[[int, int], None]


class TraceStream:
    """One or more trace files read as one stream of blocks, merged by time.

    The next block always comes from the file that is furthest behind (the lowest newest
    ts read so far), so files covering the same hours are read side by side and what a
    reader must hold before every file has reached a time stays about one block per file.
    :attr:`low_water` is the time every file has reached: records at or before it have
    all been read, save those a file holds out of time order.

    ``progress(done, total)`` is called with bytes of (compressed) input read so far;
    ``block_bytes()`` gives the size of each next block (tests vary it).
    """

    def __init__(self, paths: Iterable[str | Path], interners: Interners | None = None,
                 progress: Progress | None = None, block_bytes: Callable[[], int] = lambda: BLOCK_BYTES) -> None:
        self.files = [str(p) for p in paths]
        self.interners = interners or Interners()
        self.progress = progress
        self.sizes = []
        for f in self.files:
            try:
                self.sizes.append(os.path.getsize(f))
            except OSError as err:
                raise InputError(f"cannot read trace: {err.strerror}", file=f) from None
        self._readers = [_FileReader(name, i, self.interners, block_bytes) for i, name in enumerate(self.files)]
        self._newest = [-np.inf] * len(self.files)
        self._done = [False] * len(self.files)
        self._read = [0] * len(self.files)

    @property
    def metas(self) -> list[Meta]:
        return [r.meta for r in self._readers if r.meta is not None]

    @property
    def low_water(self) -> float:
        """The newest ts read so far of the file furthest behind (inf once all are read)."""
        return min((t for t, done in zip(self._newest, self._done) if not done), default=np.inf)

    def where(self, order: tuple[int, int]) -> tuple[str, int]:
        """The file name and line of a (file index, line)."""
        return self.files[order[0]], order[1]

    def read_ahead(self) -> Iterator[tuple[TraceBlock, float]]:
        """Each block with :attr:`low_water` as it was once the block was read, while a
        thread reads and parses the next one (Arrow's parser and NumPy work without the
        GIL, so reading overlaps the caller's work on the block before). One block waits
        at most; an error in reading is raised here, where the caller iterates."""
        handoff: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    handoff.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for block in self:
                    if not put((block, self.low_water, None)):
                        return
                put((None, self.low_water, None))
            except BaseException as err:  # noqa: BLE001 - handed to the caller, who raises it
                put((None, None, err))

        reader = threading.Thread(target=produce, name="trace-reader", daemon=True)
        reader.start()
        try:
            while True:
                block, low_water, err = handoff.get()
                if err is not None:
                    raise err
                if block is None:
                    return
                yield block, low_water
        finally:
            stop.set()
            reader.join()

    def __iter__(self) -> Iterator[TraceBlock]:
        blocks = [r.blocks() for r in self._readers]
        total = sum(self.sizes)
        while not all(self._done):
            i = min((k for k in range(len(blocks)) if not self._done[k]), key=lambda k: (self._newest[k], k))
            try:
                block, position = next(blocks[i])
            except StopIteration:
                self._done[i] = True
                self._read[i] = self.sizes[i]
                continue
            self._newest[i] = max(self._newest[i], block.newest())
            self._read[i] = position
            if self.progress:
                self.progress(sum(self._read), total)
            yield block


@dataclass
class Trace:
    """Everything read from one or more trace files, held at once (small traces, tests);
    replay streams instead (:class:`TraceStream`)."""

    files: list[str]
    metas: list[Meta]
    states: list[tuple[tuple[int, int], NodeRecord | DevicesRecord | PodsRecord]]  # ((file, line), record)
    batches: list[SampleColumns]
    interners: Interners = field(default_factory=Interners)
    serving: list[ServingColumns] = field(default_factory=list)

    @property
    def samples(self) -> SampleColumns:
        return SampleColumns.concat(list(self.batches))


def read_traces(
    paths: Iterable[str | Path],
    interners: Interners | None = None,
    progress: Progress | None = None,
) -> Trace:
    """Read trace files into one :class:`Trace`; raises :class:`InputError` on bad input."""
    stream = TraceStream(paths, interners, progress)
    states, batches, serving = [], [], []
    for block in stream:
        states += block.states
        if len(block.samples):
            batches.append(block.samples)
        if block.serving is not None:
            serving.append(block.serving)
    return Trace(stream.files, stream.metas, states, batches, stream.interners, serving)


@contextmanager
def open_trace(path: str | Path) -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """The decompressed stream of a trace file (gzip is recognised by its content, not
    its name) and the raw file under it, whose position tells how much was read."""
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        yield (gzip.GzipFile(fileobj=raw) if gzipped else raw), raw  # type: ignore[misc]


def iter_records(path: str | Path) -> Iterator[tuple[int, Record]]:
    """Every record of one file with its line number, read carefully (small files, tests)."""
    try:
        with open_trace(path) as (stream, _):
            for number, raw in enumerate(stream, 1):
                if raw.strip():
                    yield number, _decode(raw, str(path), number)
    except UNREADABLE as err:
        raise InputError(f"cannot read trace: {_why(err)}", file=str(path)) from None


UNREADABLE = (OSError, EOFError, zlib.error)  # unreadable, or a truncated or corrupt gzip stream


def _why(err: BaseException) -> str:
    if isinstance(err, zlib.error):
        return f"corrupt gzip data ({err})"
    if isinstance(err, EOFError):
        return "the gzip stream ends early (truncated?)"
    return str(err)


def _decode(raw: bytes, file: str, line: int) -> Record:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        msg = getattr(err, "msg", str(err))
        raise InputError(f"not valid JSON ({msg})", file=file, line=line) from None
    except RecursionError:
        obj = _decode_deep(raw)
        if obj is None:
            raise InputError("not valid JSON (nested too deeply)", file=file, line=line) from None
    try:
        return from_json(obj)
    except InputError as err:
        raise err.at(file, line) from None


_read_one_line = pajson.read_json  # bound once: the tests that force the careful path replace the block reader


def _decode_deep(raw: bytes) -> dict[str, Any] | None:
    """A sample line too deeply nested for :mod:`json` (in a field it does not know: the
    fields it knows are shallow), decoded as the fast path decodes it, so that the two
    paths accept the same lines; None when it is not such a sample."""
    try:
        table = _read_one_line(pa.BufferReader(raw), parse_options=_PARSE)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    rows = table.to_pylist()
    if len(rows) != 1 or rows[0].get("kind") != "sample":
        return None
    return rows[0]


class _FileReader:
    """Reads one file block by block."""

    def __init__(self, name: str, index: int, interners: Interners,
                 block_bytes: Callable[[], int] = lambda: BLOCK_BYTES) -> None:
        self.name = name
        self.block_bytes = block_bytes
        self.index = index
        self.interners = interners
        self.states: list = []  # the current block's
        self.serving: list[ServingColumns] = []  # the current block's
        self.meta: Meta | None = None
        self.meta_line = 0

    def blocks(self) -> Iterator[tuple[TraceBlock, int]]:
        """Each block's records, with the bytes of the file read so far."""
        try:
            with open_trace(self.name) as (stream, raw):
                for samples, position in self._blocks(stream, raw):
                    serving = ServingColumns.concat(self.serving) if self.serving else None
                    yield TraceBlock(self.index, samples, serving, self.states), position
                    self.states, self.serving = [], []
        except UNREADABLE as err:
            raise InputError(f"cannot read trace: {_why(err)}", file=self.name) from None

    def _blocks(self, stream: BinaryIO, raw: BinaryIO) -> Iterator[tuple[SampleColumns, int]]:
        first_line = 1
        carry = b""
        while True:
            chunk = stream.read(self.block_bytes())
            data = carry + chunk if carry else chunk
            if not chunk:
                if data.strip():
                    yield self._block(_Block(data, len(data), first_line)), raw.tell()
                break
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry = data
                continue
            block = _Block(data, cut, first_line)
            carry = data[cut:]
            yield self._block(block), raw.tell()
            first_line += block.newlines
        if self.meta is None:
            raise InputError("is empty: a trace starts with a meta line", file=self.name)

    # ----------------------------------------------------------------- one block

    def _block(self, block: "_Block") -> SampleColumns:
        if self.meta is None:
            self._read_meta(block)
        if not block.utf8():
            return self._careful(block)  # Arrow does not check the UTF-8 of strings; json does
        try:
            table = pajson.read_json(pa.BufferReader(block.view), parse_options=_PARSE)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return self._careful(block)
        rows = block.rows(table.num_rows)
        if rows is None:  # e.g. two objects on one line
            return self._careful(block)
        kind = table.column("kind")
        is_sample = pc.fill_null(pc.equal(kind, "sample"), False).to_numpy(zero_copy_only=False)
        is_serving = pc.fill_null(pc.equal(kind, "serving"), False).to_numpy(zero_copy_only=False)
        for r in np.flatnonzero(~is_sample & ~is_serving):
            line = int(rows[r])
            number = block.first_line + line
            self._state(_decode(block.line(line), self.name, number), number)
        if is_serving.any():
            self._serving_columns(block, table.filter(pa.array(is_serving)), block.first_line + rows[is_serving])
        if not is_sample.all():
            table = table.select(_SAMPLE_FIELDS).filter(pa.array(is_sample))
            rows = rows[is_sample]
        lines = block.first_line + rows
        columns = self._columns(table, lines)
        bad = _first_bad_sample(table, columns)
        if bad is not None:
            number = int(lines[bad])
            _decode(block.line(number - block.first_line), self.name, number)
            raise InputError("sample rejected by the trace schema", file=self.name, line=number)
        return columns

    def _read_meta(self, block: "_Block") -> None:
        rows = block.nonblank()
        if not len(rows):
            return
        number = block.first_line + int(rows[0])
        record = _decode(block.line(int(rows[0])), self.name, number)
        if not isinstance(record, Meta):
            raise InputError("expected a meta record on the first line", file=self.name, line=number, field="kind")
        self.meta = record
        self.meta_line = number

    def _state(self, record: Record, number: int) -> None:
        if isinstance(record, Meta):
            if number != self.meta_line:
                raise InputError("a meta record belongs on the first line only", file=self.name, line=number, field="kind")
            return
        self.states.append(((self.index, number), record))

    def _careful(self, block: "_Block") -> SampleColumns:
        samples: list[Sample] = []
        numbers: list[int] = []
        served: list[ServingRecord] = []
        served_at: list[int] = []
        for line in block.nonblank():
            number = block.first_line + int(line)
            record = _decode(block.line(int(line)), self.name, number)
            if isinstance(record, Sample):
                samples.append(record)
                numbers.append(number)
            elif isinstance(record, ServingRecord):
                served.append(record)
                served_at.append(number)
            else:
                self._state(record, number)
        assert self.meta is not None
        if served:
            self.serving.append(ServingColumns.from_records(served, self.interners, self.meta.interval_s,
                                                            self.index, served_at))
        return SampleColumns.from_samples(samples, self.interners, self.meta.interval_s, self.index, numbers)

    def _serving_columns(self, block: "_Block", table: pa.Table, lines: np.ndarray) -> None:
        """The block's serving records, checked in bulk; a bad one is decoded alone to name its field."""
        assert self.meta is not None
        ts = _floats(table.column("ts"))
        interval = _floats(table.column("interval_s"))
        counts = {n: _floats(table.column(n)) for n in ("requests", "input_tokens", "output_tokens", "errors")}
        checks = [~np.isfinite(ts) | _outside(ts, 0, np.nextafter(TS_MAX, 0)),
                  _missing_string(table.column("node")), _missing_string(table.column("pod_uid")),
                  _nonpositive(interval) | _outside(interval, 0, INTERVAL_MAX)]
        checks += [_outside(v, 0, COUNT_MAX) for v in counts.values()]
        bad = np.flatnonzero(np.logical_or.reduce(checks))
        if len(bad):
            number = int(lines[bad[0]])
            _decode(block.line(number - block.first_line), self.name, number)
            raise InputError("serving record rejected by the trace schema", file=self.name, line=number)
        interval[np.isnan(interval)] = self.meta.interval_s
        self.serving.append(ServingColumns(
            ts=ts, interval=interval, node=_encode(table.column("node"), self.interners.nodes),
            pod=_encode(table.column("pod_uid"), self.interners.pods),
            requests=counts["requests"], input_tokens=counts["input_tokens"], output_tokens=counts["output_tokens"],
            file=np.full(table.num_rows, self.index, CODE), line=lines.astype(CODE)))

    def _columns(self, table: pa.Table, lines: np.ndarray) -> SampleColumns:
        assert self.meta is not None
        interval = _floats(table.column("interval_s"))
        interval[np.isnan(interval)] = self.meta.interval_s
        procs = table.column("processes").combine_chunks()
        offsets = _list_offsets(procs)
        flat = procs.flatten() if len(procs) else pa.array([], _PROCESS)
        if isinstance(flat, pa.ChunkedArray):
            flat = flat.combine_chunks()
        return SampleColumns(
            ts=_floats(table.column("ts")),
            interval=interval,
            node=_encode(table.column("node"), self.interners.nodes),
            uuid=_encode(table.column("uuid"), self.interners.uuids),
            util=_floats(table.column("util")),
            mem=_floats(table.column("mem_used_bytes")),
            power=_floats(table.column("power_w")),
            proc_offsets=offsets,
            proc_pod=_encode(flat.field("pod_uid"), self.interners.pods),
            proc_util=_floats(flat.field("util")),
            proc_mem=_floats(flat.field("mem_used_bytes")),
            file=np.full(table.num_rows, self.index, CODE),
            line=lines.astype(CODE),
        )


class _Block:
    """Whole lines of a file, ``data[:size]``, and where each line starts and ends."""

    def __init__(self, data: bytes, size: int, first_line: int) -> None:
        self.view = memoryview(data)[:size]
        self.first_line = first_line
        buf = self._buf = np.frombuffer(self.view, np.uint8)
        newlines = np.flatnonzero(buf == 10)
        self.newlines = len(newlines)
        if not len(newlines) or newlines[-1] != len(buf) - 1:
            newlines = np.append(newlines, len(buf))  # a last line with no newline
        self.starts = np.concatenate(([0], newlines[:-1] + 1))
        self.ends = newlines
        cr = (self.ends > self.starts) & (buf[np.maximum(self.ends - 1, 0)] == 13)
        self.ends[cr] -= 1
        first = buf[np.minimum(self.starts, max(len(buf) - 1, 0))] if len(buf) else np.zeros(0, np.uint8)
        self._plain = (self.ends > self.starts) & (first == ord("{"))

    def line(self, index: int) -> bytes:
        return bytes(self.view[self.starts[index]:self.ends[index]])

    def utf8(self) -> bool:
        """Whether the block is valid UTF-8 (ASCII, as traces mostly are, is checked in one pass)."""
        if not len(self._buf) or int(self._buf.max()) < 0x80:
            return True
        try:
            str(self.view, "utf-8")
        except UnicodeDecodeError:
            return False
        return True

    def nonblank(self) -> np.ndarray:
        """Indices of the lines that are not blank (blank lines are allowed and skipped)."""
        keep = self._plain.copy()
        doubtful = np.flatnonzero(~keep & (self.ends > self.starts))  # not starting with '{'
        keep[doubtful] = [bool(self.line(int(i)).strip()) for i in doubtful]
        return np.flatnonzero(keep)

    def rows(self, table_rows: int) -> np.ndarray | None:
        """The line of each table row, or None when rows and lines do not pair up."""
        if table_rows == len(self._plain) and self._plain.all():
            return np.arange(table_rows, dtype=np.int64)
        rows = self.nonblank()
        return rows if len(rows) == table_rows else None


def _floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(column, float("nan")).to_numpy(zero_copy_only=False), np.float64).copy()


def _encode(column: pa.ChunkedArray | pa.Array, interner) -> np.ndarray:
    """Interned codes of a string column; null becomes -1."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = column.dictionary_encode()
    mapping = np.array([interner.code(v) for v in encoded.dictionary.to_pylist()] + [-1], CODE)
    indices = encoded.indices.fill_null(len(mapping) - 1).to_numpy(zero_copy_only=False)
    return mapping[indices]


def _list_offsets(array: pa.ListArray) -> np.ndarray:
    """Offsets of a list column with null lists counted as empty."""
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(array) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _first_bad_sample(table: pa.Table, cols: SampleColumns) -> int | None:
    """Index of the first sample that breaks a rule the careful reader checks, or None.
    ``cols`` are the table's samples in columns (an absent interval already the file's
    default, which the meta line's checks keep in range)."""
    ts, interval = cols.ts, cols.interval
    checks = [
        ~np.isfinite(ts) | _outside(ts, 0, np.nextafter(TS_MAX, 0)),
        _missing_string(table.column("node")),
        _missing_string(table.column("uuid")),
        _outside(cols.util, 0, 100),
        _outside(cols.mem, 0, BYTES_MAX),
        _outside(cols.power, 0, np.inf),
        _nonpositive(interval) | _outside(interval, 0, INTERVAL_MAX),
    ]
    bad = np.logical_or.reduce(checks)
    procs = table.column("processes").combine_chunks()
    if procs.null_count < len(procs):
        flat = procs.flatten()
        owner = np.repeat(np.arange(len(procs)), np.diff(_list_offsets(procs)))
        nested = (
            flat.is_null().to_numpy(zero_copy_only=False)
            | flat.field("pid").is_null().to_numpy(zero_copy_only=False)
            | _outside(cols.proc_util, 0, 100)
            | _outside(cols.proc_mem, 0, BYTES_MAX)
        )
        if nested.any():
            bad[owner[np.flatnonzero(nested)]] = True
    hits = np.flatnonzero(bad)
    return int(hits[0]) if len(hits) else None


def _missing_string(column) -> np.ndarray:
    empty = pc.fill_null(pc.equal(pc.binary_length(column), 0), True)
    return empty.to_numpy(zero_copy_only=False)


def _outside(values: np.ndarray, low: float, high: float) -> np.ndarray:
    present = ~np.isnan(values)
    with np.errstate(invalid="ignore"):
        return present & (~np.isfinite(values) | (values < low) | (values > high))


def _nonpositive(values: np.ndarray) -> np.ndarray:
    present = ~np.isnan(values)
    with np.errstate(invalid="ignore"):
        return present & (~np.isfinite(values) | (values <= 0))
