"""The ledger's contract, declared once: columns, types, how rows add up, versions, files.

Every writer (replay's Parquet sink, the agent's hourly rollups) and every reader (the
weekly report's history, the rollup restore) takes the ledger's shape from here, so adding
a column is a change to this file, the row arithmetic in :mod:`agent.accounting.ledger` and
``docs/ledger.md`` (whose table a test checks against :data:`COLUMNS`).

It lives in ``recommenders`` because the dependency rule lets both sides import it there
(``agent`` may use ``recommenders``; ``recommenders`` may use neither of the others), and it
imports nothing heavy: the agent reads it on every GPU node without loading pandas or
Arrow (:func:`arrow_schema` imports Arrow only when called).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

VERSION = "1.3"  # 1.1 added util_peak, 1.2 the serving counts, 1.3 energy and carbon
VERSIONS = ("1", "1.1", "1.2", "1.3")  # what readers take: a minor version only adds columns


@dataclass(frozen=True)
class Column:
    """One ledger column.

    ``kind``: ``minute`` (a timestamp in seconds), ``string``, ``float`` or ``int``.
    ``role`` says where a row's value comes from and how two parts of a row combine:
    ``key`` (the row's identity), ``device`` and ``pod`` (attributes of the device or pod
    version the row is for; a pod attribute is null on unallocated rows), ``sum`` (added),
    ``max`` (the highest, null when no sample had one), ``count`` (added where known, null
    when nothing was counted); a nullable ``sum`` (energy, carbon) is null when any part of
    the row is (what was not measured cannot be added). ``since``: the ledger version that added it (older ledgers
    read it as null). ``high``: the largest value a reader accepts (money, seconds, ...).
    """

    name: str
    kind: str
    role: str
    nullable: bool = False
    since: str = "1"
    high: float | None = None


SECONDS_MAX = 1e8  # GPU-seconds in one row: a sample covers at most 366 days
PRICE_MAX = 1e9  # per GPU-hour, as rate cards
MONEY_MAX = 1e15  # per row
BYTES_MAX = 1e18
COUNT_MAX = 1e15
JOULES_MAX = 1e18
GRAMS_MAX = 1e18

COLUMNS: tuple[Column, ...] = (
    Column("minute", "minute", "key"),
    Column("node", "string", "key"),
    Column("device_uuid", "string", "key"),
    Column("parent_uuid", "string", "device", nullable=True),
    Column("mig_profile", "string", "device", nullable=True),
    Column("gpu_model", "string", "device"),
    Column("gpu_memory_total_bytes", "float", "device", nullable=True, high=BYTES_MAX),
    Column("pod_uid", "string", "pod", nullable=True),
    Column("namespace", "string", "pod", nullable=True),
    Column("pod", "string", "pod", nullable=True),
    Column("team", "string", "pod", nullable=True),
    Column("workload_class", "string", "pod", nullable=True),
    Column("workload_kind", "string", "pod", nullable=True),
    Column("workload_name", "string", "pod", nullable=True),
    Column("instance_type", "string", "device", nullable=True),
    Column("region", "string", "device", nullable=True),
    Column("zone", "string", "device", nullable=True),
    Column("capacity_type", "string", "device", nullable=True),
    Column("price_source", "string", "device"),
    Column("gpu_hourly_price", "float", "device", high=PRICE_MAX),
    Column("allocated_gpu_seconds", "float", "sum", high=SECONDS_MAX),
    Column("unallocated_gpu_seconds", "float", "sum", high=SECONDS_MAX),
    Column("used_gpu_seconds", "float", "sum", high=SECONDS_MAX),
    Column("util_unknown_gpu_seconds", "float", "sum", high=SECONDS_MAX),
    Column("active_gpu_seconds", "float", "sum", high=SECONDS_MAX),
    Column("memory_used_max_bytes", "float", "max", nullable=True, high=BYTES_MAX),
    Column("util_peak", "float", "max", nullable=True, since="1.1", high=1.0),
    Column("cost", "float", "sum", high=MONEY_MAX),
    Column("idle_cost", "float", "sum", high=MONEY_MAX),
    Column("unallocated_cost", "float", "sum", high=MONEY_MAX),
    Column("samples", "int", "sum"),
    Column("requests", "float", "count", nullable=True, since="1.2", high=COUNT_MAX),
    Column("input_tokens", "float", "count", nullable=True, since="1.2", high=COUNT_MAX),
    Column("output_tokens", "float", "count", nullable=True, since="1.2", high=COUNT_MAX),
    Column("energy_joules", "float", "sum", nullable=True, since="1.3", high=JOULES_MAX),
    Column("energy_cost", "float", "sum", nullable=True, since="1.3", high=MONEY_MAX),
    Column("carbon_grams", "float", "sum", nullable=True, since="1.3", high=GRAMS_MAX),
)
BY_NAME = {c.name: c for c in COLUMNS}
NAMES = tuple(c.name for c in COLUMNS)


def _named(*roles: str, kind: str | None = None) -> tuple[str, ...]:
    return tuple(c.name for c in COLUMNS if c.role in roles and (kind is None or c.kind == kind))


SUMS = tuple(n for n in _named("sum") if n != "samples")  # the money, seconds, energy and carbon of a row, added
MEASURED = tuple(c.name for c in COLUMNS if c.role == "sum" and c.nullable)  # null when any part is
MAXED = _named("max")
COUNTED = _named("count")
DEVICE = _named("device")  # from the device (and its node's labels and price) in effect
POD = _named("pod")  # from the pod version; null on unallocated rows
STRINGS = _named("key", "device", "pod", kind="string")
# The identity of a row: one minute of one device for one version of one pod (or for nobody).
# Two versions of a pod that differ only in labels outside these columns are two rows.
ROW_KEY = ("minute", "node", "device_uuid", *POD)
OPTIONAL = frozenset(c.name for c in COLUMNS if c.since != "1")  # an older ledger may lack them


def arrow_schema(currency: str) -> "pa.Schema":
    """The Parquet ledger's Arrow schema, with the version and currency in its metadata."""
    import pyarrow as pa

    types = {"minute": pa.timestamp("s", tz="UTC"), "string": pa.string(), "float": pa.float64(),
             "int": pa.int64()}
    schema = pa.schema([(c.name, types[c.kind]) for c in COLUMNS])
    return schema.with_metadata({"gpuledger.ledger_version": VERSION, "gpuledger.currency": currency})


# --------------------------------------------------------------------------- the agent's rollups

ROLLUP_SUFFIX = ".jsonl.gz"
ROLLUP_HEADER = "gpuledger_ledger"  # the header line's marker: {"gpuledger_ledger": "1.3", ...}
HOUR = 3600

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_KEEP = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_MAX_DIRNAME = 200


def rollup_path(directory: Path, node: str, hour: int) -> Path:
    """Where the agent keeps a node's rollup of one hour: ``DIR/<node>/<YYYY-MM-DD>/<HH>.jsonl.gz``."""
    stamp = time.gmtime(hour)
    return directory / node_dirname(node) / time.strftime("%Y-%m-%d", stamp) / f"{stamp.tm_hour:02d}{ROLLUP_SUFFIX}"


ROLLUP_NAME = re.compile(r"(^|/)\d{4}-\d\d-\d\d/\d\d\.jsonl\.gz$")  # what rollup_path names, below DIR/<node>


def node_dirname(node: str) -> str:
    """The directory of a node's rollups: one safe path component, whatever the name.

    Kubernetes node names (letters, digits, ``.``, ``-``) are used as they are. Any other
    name (from a trace in dry-run: ``..``, ``a/b``, ``/abs``, a NUL, a leading dot or dash)
    is percent-encoded byte by byte (``%2E.`` for ``..``), so it can only name a directory
    inside the ledger directory, and two names never share one; a name too long for a
    file name keeps its first part and a hash of the whole. The files' headers and rows
    carry the real name, which is what the agent and the report read.
    """
    import hashlib

    if _PLAIN_NAME.fullmatch(node):
        return node
    raw = node.encode("utf-8", "surrogatepass")
    out = "".join(chr(b) if b in _KEEP and (i or b not in b".-_") else f"%{b:02X}" for i, b in enumerate(raw))
    if len(out) > _MAX_DIRNAME:
        out = out[:_MAX_DIRNAME - 17] + "~" + hashlib.sha256(raw).hexdigest()[:16]
    return out
