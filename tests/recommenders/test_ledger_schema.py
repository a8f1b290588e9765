"""The ledger's contract is declared once (recommenders/ledger_schema.py): the docs table,
the Parquet writer, the agent's rollups and the report's reader all follow it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import pyarrow as pa

from agent.config import Config
from agent.metering import Meter
from agent.rollups import row_dict
from collectors.pricing.ratecard import RateCard, RateCardPricer
from collectors.tracefile import iter_records
from recommenders import history, ledger_schema as schema
from tests.agentrun import small_trace

ROOT = Path(__file__).resolve().parents[2]
DOC_TYPES = {"minute": "timestamp[s, UTC]", "string": "string", "float": "double", "int": "int64"}


def _documented() -> dict[str, str]:
    """column -> its documented type, from docs/ledger.md's table."""
    out = {}
    for line in (ROOT / "docs/ledger.md").read_text().splitlines():
        m = re.match(r"\| (`[^|]+`) \| ([^|]+) \|", line)
        if m:
            for name in re.findall(r"`([a-z_]+)`", m.group(1)):
                out[name] = m.group(2).strip()
    return out


def test_the_docs_table_is_the_schema():
    documented = _documented()
    assert list(documented) == list(schema.NAMES)
    for column in schema.COLUMNS:
        text = documented[column.name]
        assert text.removesuffix(", null") == DOC_TYPES[column.kind], column.name
        assert text.endswith(", null") == column.nullable, column.name


def test_the_parquet_schema_is_the_declared_one():
    arrow = schema.arrow_schema("EUR")
    assert arrow.names == list(schema.NAMES)
    assert arrow.field("minute").type == pa.timestamp("s", tz="UTC")
    assert arrow.metadata == {b"gpuledger.ledger_version": schema.VERSION.encode(), b"gpuledger.currency": b"EUR"}


@pytest.mark.slow
def test_rollup_rows_have_the_declared_columns_in_order(small_trace):
    meter = Meter(RateCardPricer(RateCard("USD", 3.6)), Config())
    cycle = meter.process([r for _, r in iter_records(small_trace)], 1.0)
    assert cycle.rows
    from agent.rollups import _Acc

    row = cycle.rows[0]
    written = row_dict(row.key, _Acc(row.slot, list(row.sums), row.mem_max, row.util_peak, row.samples,
                                      list(row.counts)))
    assert tuple(written) == schema.NAMES


def test_the_report_reads_the_declared_columns():
    assert set(history.COLUMNS) == set(schema.NAMES) - {"zone", "samples"}
    assert history.OPTIONAL == {"util_peak", "requests", "input_tokens", "output_tokens", "energy_joules",
                                "energy_cost", "carbon_grams"}
    assert history._BOUNDS["cost"] == schema.MONEY_MAX and history._BOUNDS["gpu_hourly_price"] == schema.PRICE_MAX


def test_the_schema_module_loads_nothing_heavy():
    code = ("import sys; import recommenders.ledger_schema; "
            "print(' '.join(m for m in ('pandas', 'pyarrow', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr
