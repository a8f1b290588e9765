"""Hostile input files give one line and exit 2, never a traceback (issue 15, items 15-17).

One test per input the fault review found crashing; ``tests/collectors/test_fuzz_readers.py``
looks for new ones.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from agent.config import Config
from agent.replay import replay
from collectors.pricing.ratecard import RateCard
from tests.conftest import META, write_jsonl
from tests.collectors.test_fuzz_readers import _careful_only, run_cli

DEV = {"kind": "devices", "ts": 0, "node": "n", "devices": [{"uuid": "GPU-1", "model": "Tesla T4"}]}
SMP = {"kind": "sample", "ts": 1, "node": "n", "uuid": "GPU-1", "util": 10}


def _trace(tmp_path: Path, last: bytes, name: str = "t.jsonl") -> Path:
    head = "\n".join(json.dumps(x) for x in (META, DEV, SMP)).encode() + b"\n"
    path = tmp_path / name
    path.write_bytes(head + last + b"\n")
    return path


def _one_line(tmp_path: Path, *argv: str) -> str:
    out = tmp_path / "out"
    code, _, err = run_cli(*argv, "--out", str(out))
    assert code == 2, err
    assert err.startswith("gpuledger: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists() or not any(out.iterdir())
    return err


# --------------------------------------------------------------------------- traces

HOSTILE_LINES = {
    "invalid UTF-8 in a sample string": (b'{"kind":"sample","ts":2,"node":"n\xff","uuid":"GPU-1","util":10}',
                                         "t.jsonl:4: not valid JSON"),
    "400-digit integer": (b'{"kind":"sample","ts":' + b"9" * 400 + b',"node":"n","uuid":"GPU-1"}',
                          "t.jsonl:4: field 'ts': expected a number, got an integer of 400 digits"),
    "time past year 9999": (b'{"kind":"sample","ts":1e15,"node":"n","uuid":"GPU-1"}',
                            "t.jsonl:4: field 'ts': expected Unix seconds from 0 to before year 9999"),
    "negative time": (b'{"kind":"devices","ts":-5,"node":"n","devices":[]}', "t.jsonl:4: field 'ts'"),
    "interval of 1e20 s": (b'{"kind":"sample","ts":2,"node":"n","uuid":"GPU-1","interval_s":1e20}',
                           "t.jsonl:4: field 'interval_s': expected seconds above 0 and at most 31622400"),
    "deeply nested JSON": (b"[" * 100000 + b"]" * 100000, "t.jsonl:4: not valid JSON (nested too deeply)"),
    "lone surrogate in a name": (b'{"kind":"sample","ts":2,"node":"n\\ud800","uuid":"GPU-1"}',
                                 "t.jsonl:4: field 'node': expected Unicode text, got a lone surrogate"),
    "lone surrogate in a label": (b'{"kind":"pods","ts":0,"node":"n","pods":[{"uid":"u","namespace":"x","name":"p",'
                                  b'"labels":{"team":"\\udfff"}}]}', "t.jsonl:4: field 'pods[0].labels.team'"),
    "kind of the wrong type": (b'{"kind":{"a":1},"ts":2}', "t.jsonl:4: field 'kind': expected one of"),
    "memory past what a ledger holds": (b'{"kind":"sample","ts":2,"node":"n","uuid":"GPU-1","mem_used_bytes":1e300}',
                                        "t.jsonl:4: field 'mem_used_bytes': expected at most 1e+18 bytes"),
}


@pytest.mark.parametrize("reader", ["fast", "careful"])
@pytest.mark.parametrize("case", HOSTILE_LINES)
def test_a_hostile_trace_line_is_one_line_and_exit_2(tmp_path, monkeypatch, case, reader):
    if reader == "careful":
        _careful_only(monkeypatch)
    line, said = HOSTILE_LINES[case]
    path = _trace(tmp_path, line)
    err = _one_line(tmp_path, "replay", str(path))
    assert f"{path}:{said.split(':', 1)[1]}" in err, err


def test_a_corrupt_gzip_body_is_one_line_and_exit_2(tmp_path):
    lines = [DEV] + [SMP | {"ts": t} for t in range(1, 3000)]
    data = bytearray(gzip.compress(("\n".join(json.dumps(x) for x in [META] + lines) + "\n").encode()))
    for i in range(200, 260):
        data[i] ^= 0x55
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(bytes(data))
    err = _one_line(tmp_path, "replay", str(path))
    assert f"{path}: cannot read trace: corrupt gzip data" in err


@pytest.mark.parametrize("reader", ["fast", "careful"])
def test_deep_nesting_in_an_unknown_sample_field_is_ignored_on_both_paths(tmp_path, monkeypatch, reader):
    """Unknown fields are ignored; Python's json cannot decode 100,000 levels, Arrow can:
    both paths accept the line, so what is accepted does not depend on the path."""
    if reader == "careful":
        _careful_only(monkeypatch)
    path = _trace(tmp_path, b'{"kind":"sample","ts":2,"node":"n","uuid":"GPU-1","x":' + b"[" * 100000 + b"]" * 100000 + b"}")
    assert replay([path], RateCard("USD", 3.6), Config()).summary["totals"]["gpu_seconds"] == 2.0


def test_a_time_just_before_9999_replays_with_iso_dates(tmp_path):
    late = 253370764800 - 30
    path = write_jsonl(tmp_path / "t.jsonl", [DEV | {"ts": late - 60}, SMP | {"ts": late}])
    code, out, err = run_cli("replay", str(path), "--json")
    assert code == 0, err
    assert json.loads(out)["window"] == {"start": "9998-12-31T23:59:29Z", "end": "9998-12-31T23:59:30Z"}


# --------------------------------------------------------------------------- rate cards and configs (items 15, 16, 17)

CARD_HEAD = "currency: USD\ndefault_gpu_hourly: 2.0\n"


def test_yaml_merge_keys_work_in_rate_cards_and_configs(tmp_path):
    from agent.config import load_config
    from collectors.pricing.ratecard import gpu_price, load_rate_card

    rates = tmp_path / "rates.yaml"
    rates.write_text(CARD_HEAD + """\
nodes:
  - &p4d
    match: {node.kubernetes.io/instance-type: p4d.24xlarge}
    hourly: 32.0
  - <<: *p4d
    match: {node.kubernetes.io/instance-type: p4d.24xlarge, karpenter.sh/capacity-type: spot}
    hourly: 12.0
  - <<: [*p4d]
    match: {node.kubernetes.io/instance-type: p5.48xlarge}
""")
    card = load_rate_card(rates)
    assert [(dict(n.match), n.hourly) for n in card.nodes] == [
        ({"node.kubernetes.io/instance-type": "p4d.24xlarge"}, 32.0),
        ({"node.kubernetes.io/instance-type": "p4d.24xlarge", "karpenter.sh/capacity-type": "spot"}, 12.0),
        ({"node.kubernetes.io/instance-type": "p5.48xlarge"}, 32.0)]
    assert gpu_price(card, {"node.kubernetes.io/instance-type": "p5.48xlarge"}, "x", 8).hourly == 4.0
    config = tmp_path / "config.yaml"
    config.write_text("label_rules:\n  - &rule {label: app, class: inference, value: vllm}\n"
                      "  - <<: *rule\n    value: tgi\n")
    assert [(r.label, r.workload_class, r.value) for r in load_config(config).label_rules] == [
        ("app", "inference", "vllm"), ("app", "inference", "tgi")]


HOSTILE_YAML = {
    "!!float xyz": ("default_gpu_hourly: !!float xyz\n", 3, "cannot read 'xyz' as a value of tag 'float'"),
    "!!int abc": ("default_gpu_hourly: !!int abc\n", 3, "cannot read 'abc' as a value of tag 'int'"),
    "!!binary": ("default_gpu_hourly: !!binary aGVsbG8=\n", 3, "expected a number of at least 0, got b'hello'"),
    "!!timestamp": ("default_gpu_hourly: !!timestamp xyz\n", 3, "as a value of tag 'timestamp'"),
    "a python tag": ("default_gpu_hourly: !!python/object/apply:os.system [true]\n", 3, "expected a number"),
    "a python tag on a value": ("default_gpu_hourly: !!python/name:os.system x\n", 3, "cannot read 'x'"),
    "recursive alias": ("nodes: &a [*a]\n", 3, "recursive alias"),
    "recursive merge": ("nodes:\n  - &m {<<: *m, hourly: 1}\n", 4, "recursive alias"),
    "500-level nesting": ("nodes: " + "[" * 500 + "]" * 500 + "\n", 3, "nested more than 64 levels deep"),
    "500-level mappings": ("gpus: " + "{a: " * 500 + "1" + "}" * 500 + "\n", 3, "nested more than 64 levels deep"),
    "400-digit price": ("gpus: {Tesla T4: " + "9" * 400 + "}\n", 3, "got an integer of 400 digits"),
    "a price of 1e308": ("gpus: {Tesla T4: 1.0e+308}\n", 3, "expected a price of at most 1e+09 an hour"),
    "an infinite price": ("gpus: {Tesla T4: .inf}\n", 3, "expected a number of at least 0, got inf"),
    "lone surrogate": ('gpus: {"\\ud800": 1}\n', 3, "lone surrogate"),
    "NUL character": ("gpus: {a: 1}\x00\n", 3, "not valid YAML (unacceptable character #x0000)"),
}


@pytest.mark.parametrize("case", HOSTILE_YAML)
def test_a_hostile_rate_card_is_one_line_and_exit_2(tmp_path, case):
    text, line, said = HOSTILE_YAML[case]
    rates = tmp_path / "rates.yaml"
    rates.write_text(CARD_HEAD + text, encoding="utf-8", errors="surrogatepass")
    err = _one_line(tmp_path, "replay", str(_trace(tmp_path, b"")), "--rates", str(rates))
    assert f"{rates}:{line}: " in err and said in err, err


def test_default_gpu_hourly_1e308_is_refused_not_infinity_in_the_summary(tmp_path):
    rates = tmp_path / "rates.yaml"
    rates.write_text("currency: USD\ndefault_gpu_hourly: 1.0e+308\n")
    err = _one_line(tmp_path, "replay", str(_trace(tmp_path, b"")), "--rates", str(rates))
    assert f"{rates}:2: field 'default_gpu_hourly': expected a price of at most 1e+09 an hour" in err


@pytest.mark.parametrize("config", [
    "team_labels: !!int abc\n", "namespace_teams: &a {x: *a}\n", "team_labels: " + "[" * 500 + "]" * 500 + "\n",
    'namespace_teams: {research: "\\udfff"}\n', "agent:\n  speed: " + "9" * 400 + "\n",
    "agent:\n  interval: !!timestamp 2026-01-01\n", "label_rules: [{<<: *nothing}]\n",
])
def test_a_hostile_config_is_one_line_and_exit_2(tmp_path, config):
    path = tmp_path / "config.yaml"
    path.write_text(config, encoding="utf-8", errors="surrogatepass")
    code, _, err = run_cli("config", str(path))
    assert code == 2 and err.count("\n") == 1 and f"{path}:" in err, err
    if not config.startswith("agent:"):  # replay reads all but the agent: section
        assert f"{path}:" in _one_line(tmp_path, "replay", str(_trace(tmp_path, b"")), "--config", str(path))


LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + k)}: &{chr(98 + k)} [" + ",".join([f"*{chr(97 + k)}"] * 9) + "]\n" for k in range(8))


@pytest.mark.parametrize("where", ["rate card", "config"])
def test_billion_laughs_are_refused_at_once(tmp_path, where):
    import time

    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS + (CARD_HEAD if where == "rate card" else ""))
    assert len(path.read_bytes()) < 600
    argv = ("--rates" if where == "rate card" else "--config", str(path))
    started = time.monotonic()
    err = _one_line(tmp_path, "replay", str(_trace(tmp_path, b"")), *argv)
    assert time.monotonic() - started < 2.0
    assert "expands to more than 1,000,000 values" in err


def test_aliases_are_expanded_once(tmp_path):
    """Below the limit, a document with many aliases of a big list loads fast and shares it."""
    from collectors.yamlfile import LocatedYaml

    path = tmp_path / "ok.yaml"
    path.write_text("big: &big [" + ",".join(["1"] * 5000) + "]\nuses: [" + ",".join(["*big"] * 150) + "]\n")
    doc = LocatedYaml(path)
    assert len(doc.data["uses"]) == 150 and all(u is doc.data["big"] for u in doc.data["uses"])


def test_a_document_past_the_declared_size_is_refused(tmp_path):
    from collectors.yamlfile import MAX_BYTES

    path = tmp_path / "big.yaml"
    path.write_text(CARD_HEAD + "# " + "x" * MAX_BYTES + "\n")
    err = _one_line(tmp_path, "replay", str(_trace(tmp_path, b"")), "--rates", str(path))
    assert f"{path}: is larger than 4 MiB" in err


# --------------------------------------------------------------------------- ledgers (items 15, 17)

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


@pytest.fixture(scope="module")
def ledger(tmp_path_factory) -> Path:
    """A small real ledger.parquet from replay."""
    d = tmp_path_factory.mktemp("ledger")
    lines = [DEV | {"ts": 1764046800}] + [SMP | {"ts": 1764046800 + 10 * k, "interval_s": 10} for k in range(1, 400)]
    trace = write_jsonl(d / "t.jsonl", lines)
    code, _, err = run_cli("replay", str(trace), "--out", str(d))
    assert code == 0, err
    return d / "ledger.parquet"


def _forged(tmp_path: Path, ledger: Path, column: str, values) -> Path:
    table = pq.read_table(ledger)
    path = tmp_path / "forged.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, values), path)
    return path


def _n(ledger: Path) -> int:
    return pq.read_metadata(ledger).num_rows


LEDGER_CASES = {
    "minute past 9999": ("minute", lambda n: pa.array(np.full(n, 300000000000, np.int64)).cast(pa.timestamp("s", tz="UTC")),
                         "field 'minute': expected minutes from"),
    "minute not a time": ("minute", lambda n: pa.array(["soon"] * n), "field 'minute': expected a timestamp, got a column of string"),
    "team of numbers": ("team", lambda n: pa.array(np.arange(n, dtype=np.float64)), "field 'team': expected strings"),
    "cost of strings": ("cost", lambda n: pa.array(["x"] * n), "field 'cost': expected numbers"),
    "an infinite price": ("gpu_hourly_price", lambda n: pa.array(np.full(n, np.inf)),
                          "field 'gpu_hourly_price': expected a number from 0 to 1e+09, got inf"),
    "NaN money": ("cost", lambda n: pa.array(np.full(n, np.nan)), "field 'cost': expected a number from 0 to 1e+15, got null"),
    "huge seconds": ("allocated_gpu_seconds", lambda n: pa.array(np.full(n, 1e15)),
                     "field 'allocated_gpu_seconds': expected a number from 0 to 1e+08, got 1e+15"),
    "negative seconds": ("unallocated_gpu_seconds", lambda n: pa.array(np.full(n, -5.0)),
                         "field 'unallocated_gpu_seconds': expected a number from 0 to 1e+08, got -5"),
    "used beyond allocated": ("used_gpu_seconds", lambda n: pa.array(np.full(n, 17.0)),
                              "field 'used_gpu_seconds': expected used_gpu_seconds + util_unknown_gpu_seconds of "
                              "at most allocated_gpu_seconds"),
}


@pytest.mark.parametrize("case", LEDGER_CASES)
def test_a_forged_ledger_is_one_line_and_exit_2(tmp_path, ledger, case):
    column, values, said = LEDGER_CASES[case]
    path = _forged(tmp_path, ledger, column, values(_n(ledger)))
    err = _one_line(tmp_path, "report", "--ledger", str(path))
    assert f"{path}: {said}" in err, err


def test_a_ledger_with_a_corrupt_data_page_is_one_line_and_exit_2(tmp_path, ledger):
    """The footer is intact (the file opens), a column chunk is not."""
    data = bytearray(ledger.read_bytes())
    meta = pq.read_metadata(ledger)
    chunk = meta.row_group(0).column(meta.schema.names.index("cost"))
    start = chunk.data_page_offset
    for i in range(start + 8, start + chunk.total_compressed_size - 4):
        data[i] ^= 0x5A
    path = tmp_path / "corrupt.parquet"
    path.write_bytes(bytes(data))
    err = _one_line(tmp_path, "report", "--ledger", str(path))
    assert f"{path}: field 'cost': cannot read ledger:" in err, err


def test_a_rollup_with_an_infinite_price_is_one_line_and_exit_2(tmp_path, ledger):
    rows = pq.read_table(ledger).to_pylist()
    header = {"gpuledger_ledger": "1", "currency": "USD", "node": "n", "hour": 1764046800}
    lines = [json.dumps(header)]
    for row in rows:
        row["minute"] = int(row["minute"].timestamp())
        lines.append(json.dumps(row | {"gpu_hourly_price": 1e400}))  # json writes Infinity
    path = tmp_path / "ledger" / "n" / "2025-11-25" / "05.jsonl.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    err = _one_line(tmp_path, "report", "--ledger", str(tmp_path / "ledger"))
    assert "field 'gpu_hourly_price'" in err or "cannot read ledger rollup" in err, err


def test_the_commitment_optimum_does_not_allocate_by_value():
    """Usage in the billions (a forged ledger within no bound) used to allocate one float per
    unit of usage; the optimum is found among two integers per hour."""
    from recommenders.commitments import commitment_costs, optimal_k

    usage = np.array([3e12, 1.5, 2.0, 0.0])
    assert optimal_k(usage, 1.0, 2.0) == (2, 1.0 * 2 * 4 + 2.0 * (3e12 - 2))
    rng = np.random.default_rng(5)
    for _ in range(50):
        u = rng.uniform(0, 30, rng.integers(1, 40)).round(rng.integers(0, 3))
        c, p = rng.uniform(0.1, 3), rng.uniform(0.1, 3)
        costs = commitment_costs(u, c, p)
        assert optimal_k(u, c, p) == (int(np.argmin(costs)), pytest.approx(float(costs.min())))
