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

_NULL = b'": null'  # a key's null, as json.dumps writes it
_INT_LIMIT = 2.0 ** 63  # Python reads a larger integer as an int that Arrow's from_pydict refuses as a double
_FLOATS = tuple(c.name for c in COLUMNS if c.kind == "float")
_CHECK_FINITE = tuple(c.name for c in COLUMNS if c.kind == "float" and c.name in (*SUMS, *MAXED, *COUNTED))
_NOT_NULL = tuple(n for n in (*SUMS, "samples") if n not in MEASURED)


def rollup_table(data: bytes, where: str) -> "pa.Table":
    """A served rollup (its gzip bytes) as a table with the ledger's Arrow schema, rows in the
    file's order; ``ValueError`` naming ``where`` (and the line) when it is not a good rollup."""
    fast = _fast([data])
    return fast[0] if fast is not None else _exact(data, where)


def rollup_tables(files: list[tuple[bytes, str]]) -> list["pa.Table"]:
    """Several rollups (gzip bytes, where from) at once, for one read of Arrow's JSON reader and
    one round of checks (a node-day's hours: most of a rollup's cost is per call, not per row).
    The tables of the good rollups before the first bad one, and that one's ``ValueError``
    (``args[1]``: the tables before it) when there is one; see :func:`rollup_table`."""
    if not files:
        return []
    fast = _fast([data for data, _ in files])
    if fast is not None:
        table, rows = fast
        out, at = [], 0
        for n in rows:
            out.append(table.slice(at, n))
            at += n
        return out
    done: list["pa.Table"] = []
    for data, where in files:
        try:
            done.append(rollup_table(data, where))
        except ValueError as err:
            raise BadRollup(str(err), done) from None
    return done


class BadRollup(ValueError):
    """A bad rollup in :func:`rollup_tables`; ``good`` holds the tables read before it."""

    def __init__(self, message: str, good: list["pa.Table"]) -> None:
        super().__init__(message)
        self.good = good


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


def _prepared(data: bytes) -> tuple[int, str, bytes, int] | None:
    """A rollup's hour, currency, rows' text and row count, when its text is such that Arrow's
    reader and the agent's read it alike; None when the exact reader must decide."""
    from agent.rollups import checked_rows

    inflate = zlib.decompressobj(31)
    try:
        raw = inflate.decompress(data)
        if not raw.isascii():  # (what the agent writes: json.dumps escapes the rest)
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
    if not body.endswith(b"\n"):
        body += b"\n"
    lines = body.count(b"\n")
    # Every line an object of its own: a line of JSON null would be a row of nulls to Arrow's
    # reader (a first one crashes it), any other value is an error there, a blank line is
    # skipped (and the row count below differs).
    if not body.startswith(b"{") or b"\nn" in body or b"\n " in body or b"\n\t" in body:
        return None
    return hour, header["currency"], body, lines


def _fast(files: list[bytes]) -> "tuple[pa.Table, list[int]] | None":
    """The rows of ``files``, one table in their order, and each file's row count; None when the
    exact reader must decide (for any of them)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    prepared = [_prepared(data) for data in files]
    if any(p is None for p in prepared) or len({p[1] for p in prepared}) != 1:
        return None
    body = b"".join(p[2] for p in prepared)
    lines = [p[3] for p in prepared]
    try:
        table = pj.read_json(pa.BufferReader(body), read_options=_read_options(len(body)),
                             parse_options=_parse_options())
    except (pa.ArrowException, ValueError):
        return None
    if table.num_rows != sum(lines):
        return None
    # Every null from a null the file holds, none from a key it lacks (which Arrow's reader also
    # reads as null, and the agent's reader refuses for the row's identity): with no backslash,
    # '": null' is a key and its null, and Arrow refuses a key twice in a row or one it does not know.
    if sum(column.null_count for column in table.columns) != body.count(_NULL):
        return None
    minute = table.column("minute")
    if minute.null_count:
        return None
    hour = np.repeat(np.array([p[0] for p in prepared], dtype=np.int64), lines)
    at = minute.to_numpy() - hour
    if at.size and (at.min() < 0 or at.max() >= HOUR):  # each row a minute of its own file's hour
        return None
    if any(table.column(n).null_count for n in _NOT_NULL):
        return None
    if not all(pc.all(pc.is_finite(table.column(n)), min_count=0).as_py() is not False for n in _CHECK_FINITE):
        return None
    if any(pc.any(pc.greater_equal(pc.abs(table.column(n)), _INT_LIMIT), min_count=0).as_py() for n in _FLOATS):
        return None  # maybe written as an integer the agent's reader refuses: let it decide
    schema = arrow_schema(prepared[0][1])
    table = table.set_column(0, schema.field("minute"), minute.cast(pa.timestamp("s", tz="UTC")))
    return table.cast(schema), lines


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
