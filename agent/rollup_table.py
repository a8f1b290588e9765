"""One served rollup file as an Arrow table with the ledger's schema, for ``gpuledger gather``.

The agent's own reader (:func:`agent.rollups.parse_rollup` and
:func:`agent.rollups.checked_rows`) is the definition of a good rollup: it decodes every
row as a Python object and checks it. That costs about 40 ms for a node-hour of 480 rows,
which is most of a gather. :func:`rollup_table` gives the same table in about a tenth of
that: zlib, then Arrow's JSON reader with an explicit schema derived from the ledger's
columns (:data:`recommenders.ledger_schema.COLUMNS`), then the reader's checks as column
operations. The fast path only accepts what the agent's reader accepts; anything it is
not sure of (a byte sequence Arrow's reader treats differently, a check that fails) falls
back to the agent's reader, whose error message (file, line, field) is the one raised, so
bad input is the same one ``ValueError`` naming the file either way, never a crash.

Arrow is imported when called: the agent itself never loads it.
"""

from __future__ import annotations

import json
import zlib
from typing import TYPE_CHECKING

from recommenders.ledger_schema import (COLUMNS, COUNTED, HOUR, MAXED, MEASURED, NAMES, ROLLUP_HEADER, SUMS,
                                        arrow_schema)

if TYPE_CHECKING:
    import pyarrow as pa

_SEPARATOR = b'": '  # json.dumps' key separator: how the agent writes each of a row's keys
_INT_LIMIT = 2.0 ** 63  # Python reads a larger integer as an int that Arrow's from_pydict refuses as a double
_FLOATS = tuple(c.name for c in COLUMNS if c.kind == "float")
_CHECK_FINITE = tuple(c.name for c in COLUMNS if c.kind == "float" and c.name in (*SUMS, *MAXED, *COUNTED))
_NOT_NULL = tuple(n for n in (*SUMS, "samples") if n not in MEASURED)


def rollup_table(data: bytes, where: str) -> "pa.Table":
    """A served rollup (its gzip bytes) as a table with the ledger's Arrow schema, rows in the
    file's order; ``ValueError`` naming ``where`` (and the line) when it is not a good rollup."""
    table = _fast(data)
    return table if table is not None else _exact(data, where)


def _exact(data: bytes, where: str) -> "pa.Table":
    """The agent's reader, row by row: the definition, and the error messages."""
    import gzip
    import io

    import pyarrow as pa

    from agent.rollups import checked_rows, parse_rollup

    try:
        with gzip.open(io.BytesIO(data), "rt", encoding="utf-8") as text:  # as read_rollup reads a file
            header, rows = parse_rollup(text, where)
        checked_rows(header, rows)  # every row of the file's hour, with numbers where numbers belong
    except (OSError, EOFError, RecursionError, zlib.error, gzip.BadGzipFile) as err:
        raise ValueError(f"{where}: not a readable ledger rollup: {err}") from None
    except ValueError as err:  # UnicodeDecodeError and JSON errors included
        message = str(err)
        raise ValueError(message if message.startswith(f"{where}:") else f"{where}: {message}") from None
    currency = header.get("currency")
    if not _currency(currency):
        raise ValueError(f"{where}: line 1: expected a three-letter currency code")
    try:
        return pa.Table.from_pydict({n: [r.get(n) for r in rows] for n in NAMES}, schema=arrow_schema(currency))
    except (pa.ArrowException, TypeError, OverflowError, ValueError) as err:
        raise ValueError(f"{where}: {str(err).splitlines()[0][:160]}") from None


def _currency(value: object) -> bool:
    return isinstance(value, str) and len(value) == 3 and value.isalpha() and value.isupper()


def _fast(data: bytes) -> "pa.Table | None":
    """The table, or None when the exact reader must decide."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    from agent.rollups import checked_rows

    inflate = zlib.decompressobj(31)
    try:
        raw = inflate.decompress(data)
        raw.decode("utf-8")
    except (zlib.error, UnicodeDecodeError):
        return None
    if not inflate.eof or inflate.unused_data or b"\r" in raw or b"\\" in raw:
        return None  # several gzip members, universal newlines, escapes: what only the exact reader reads alike
    end = raw.find(b"\n")
    if end <= 0:
        return None
    try:
        header = json.loads(raw[:end])
        if not isinstance(header, dict) or ROLLUP_HEADER not in header or not _currency(header.get("currency")):
            return None
        hour, _ = checked_rows(header, [])
    except (ValueError, RecursionError):
        return None
    body = raw[end + 1:]
    lines = body.count(b"\n") + (0 if body.endswith(b"\n") else 1)
    # Every line one flat object of its own ('{' only where a line starts) with every column's key:
    # with no backslash, each '": ' closes a key; Arrow refuses a key twice in a row or one it does
    # not know, so as many keys as lines times columns means each row has all of them (a missing
    # key would read as null, which the agent's reader refuses for the row's identity).
    if not body.startswith(b"{") or body.count(b"{") != lines or body.count(b"\n{") != lines - 1 \
            or body.count(_SEPARATOR) != lines * len(NAMES):
        return None
    try:
        table = pj.read_json(pa.BufferReader(body), read_options=_read_options(len(body)),
                             parse_options=_parse_options())
    except (pa.ArrowException, ValueError):
        return None
    if table.num_rows != lines:
        return None
    minute = table.column("minute")
    if minute.null_count or pc.min(minute).as_py() < hour or pc.max(minute).as_py() >= hour + HOUR:
        return None
    if any(table.column(n).null_count for n in _NOT_NULL):
        return None
    if not all(pc.all(pc.is_finite(table.column(n)), min_count=0).as_py() is not False for n in _CHECK_FINITE):
        return None
    if any(pc.any(pc.greater_equal(pc.abs(table.column(n)), _INT_LIMIT), min_count=0).as_py() for n in _FLOATS):
        return None  # maybe written as an integer the agent's reader refuses: let it decide
    schema = arrow_schema(header["currency"])
    table = table.set_column(0, schema.field("minute"), minute.cast(pa.timestamp("s", tz="UTC")))
    return table.cast(schema)


_OPTIONS: dict[str, object] = {}


def _parse_options():
    import pyarrow as pa
    import pyarrow.json as pj

    if "parse" not in _OPTIONS:
        types = {"minute": pa.int64(), "string": pa.string(), "float": pa.float64(), "int": pa.int64()}
        schema = pa.schema([(c.name, types[c.kind]) for c in COLUMNS])
        _OPTIONS["parse"] = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
    return _OPTIONS["parse"]


def _read_options(size: int):
    import pyarrow.json as pj

    # one block: the rows in order, and no threads of Arrow's own (gather runs files in parallel)
    return pj.ReadOptions(use_threads=False, block_size=max(1 << 20, size + 1))
