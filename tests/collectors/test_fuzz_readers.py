"""Seeded fuzzing of every reader of user files (issue 15, item 15).

Each test mutates a small valid input a few hundred ways (values out of range or of the
wrong type, huge integers, lone surrogates, invalid UTF-8, deep nesting, repeated,
swapped, cut and flipped bytes, corrupt gzip) and runs the real command on it. Whatever
the input, the command either succeeds with finite figures or exits 2 with one line; a
traceback is a failure. The seeds are fixed, so a failure reproduces; the cases are small,
so all of it takes a few seconds.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import random
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import pytest

from agent import cli
from agent.cli import main
from agent.config import Config
from agent.replay import replay
from collectors import tracefile
from collectors.errors import InputError
from collectors.pricing.ratecard import RateCard
from collectors.tracefile import iter_records

pytestmark = pytest.mark.slow  # drives real processes or servers; see README "Fast loop"

CASES = 300


@functools.lru_cache(maxsize=1)
def _parser():
    return _build_parser()


_build_parser = cli.build_parser


def run_cli(*argv: str) -> tuple[int, str, str]:
    """The CLI in-process: (exit code, stdout, stderr); any exception but SystemExit propagates.
    The parser is built once (building it is most of the time of a small command)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), mock.patch.object(cli, "build_parser", _parser):
        try:
            code = main(list(argv))
        except SystemExit as exit_:  # argparse
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def assert_one_line_or_success(code: int, err: str, case: str) -> None:
    assert code in (0, 2), f"{case}: exit {code}: {err}"
    if code == 2:
        assert err.startswith("gpuledger: error: ") and err.count("\n") == 1, f"{case}: {err!r}"
    assert "Traceback" not in err, f"{case}: {err}"


def strict_json(text: str):
    """JSON that Python's json would refuse to write with allow_nan=False: no NaN, no Infinity."""
    def refuse(token):
        raise AssertionError(f"non-finite number {token} in JSON output")
    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------- mutations

# Raw JSON tokens that json.dumps cannot produce: they are put in as text.
RAW = ["9" * 400, "-" + "9" * 400, "1e400", "NaN", "Infinity", "-Infinity", '"\\ud800"', '"a\\udfffb"',
       '"\\u0000"', "[" * 3000 + "]" * 3000, '{"a":' * 3000 + "1" + "}" * 3000, "1e-320", "-0"]
VALUES = [None, True, False, 0, -1, 0.5, 101, 1e20, 1e308, -1e308, 253370764800, 253370764799.5, 2 ** 63,
          "", "x", "../../etc", "/abs", "..", "=cmd|' /C calc'!A0", "@SUM(1)", "-2+3", "\t", "a\nb", "ü" * 3,
          "x" * 5000, [], [1, 2], {}, {"a": {"b": [1]}}, [{"pid": 1}], [{"pid": "x"}], [None]]


def _value(rng: random.Random) -> str:
    if rng.random() < 0.35:
        return rng.choice(RAW)
    return json.dumps(rng.choice(VALUES))


def _set_field(rng: random.Random, line: str) -> str:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return line
    if not isinstance(obj, dict) or not obj:
        return line
    target, key = obj, rng.choice(list(obj))
    nested = obj.get(key)
    if isinstance(nested, list) and nested and isinstance(nested[0], dict) and rng.random() < 0.5:
        target = rng.choice(nested)
        key = rng.choice(list(target) + ["extra"])
    marker = "\u0001MARK\u0001"
    target[key] = marker
    return json.dumps(obj).replace(json.dumps(marker), _value(rng))


def mutate_lines(rng: random.Random, lines: list[str]) -> list[str]:
    lines = list(lines)
    for _ in range(rng.choice([1, 1, 2, 3])):
        op = rng.randrange(8)
        i = rng.randrange(len(lines)) if lines else 0
        if not lines:
            lines.append(_value(rng))
        elif op <= 2:
            lines[i] = _set_field(rng, lines[i])
        elif op == 3:
            lines.insert(i, lines[rng.randrange(len(lines))])  # a repeated line
        elif op == 4:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 5:
            del lines[i]
        elif op == 6:
            lines.insert(i, _value(rng))
        else:
            try:
                obj = json.loads(lines[i]) if lines[i].startswith("{") else None
            except (ValueError, RecursionError):
                obj = None
            if isinstance(obj, dict) and obj:
                del obj[rng.choice(list(obj))]
                lines[i] = json.dumps(obj)
    return lines


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    op = rng.randrange(4)
    if not data:
        return bytes(rng.randrange(256) for _ in range(8))
    i = rng.randrange(len(data))
    if op == 0:
        data[i] ^= 1 << rng.randrange(8)
    elif op == 1:
        data[i:i] = bytes(rng.choice([0xFF, 0xC3, 0x80, 0xED, 0xA0, 0x00, 0x0A, 0x7B]) for _ in range(rng.randint(1, 4)))
    elif op == 2:
        del data[i:]
    else:
        data[i:i + 8] = bytes(rng.randrange(256) for _ in range(8))
    return bytes(data)


# --------------------------------------------------------------------------- traces

TRACE = [
    {"kind": "meta", "format": "gpuledger-trace", "version": 1, "interval_s": 10.0},
    {"kind": "node", "ts": 1764046800, "node": "gpu-a", "labels": {"node.kubernetes.io/instance-type": "p4d.24xlarge"}},
    {"kind": "devices", "ts": 1764046800, "node": "gpu-a", "devices": [
        {"uuid": "GPU-1", "index": 0, "model": "NVIDIA A100-SXM4-40GB", "memory_total_bytes": 42949672960},
        {"uuid": "MIG-1", "parent_uuid": "GPU-1", "mig_profile": "3g.20gb", "model": "NVIDIA A100-SXM4-40GB"},
        {"uuid": "GPU-2", "index": 1, "model": "NVIDIA A100-SXM4-40GB"}]},
    {"kind": "pods", "ts": 1764046800, "node": "gpu-a", "pods": [
        {"uid": "u1", "namespace": "research", "name": "train-0", "labels": {"team": "ml"},
         "owner": {"kind": "PyTorchJob", "name": "train"}, "containers": [{"name": "c", "devices": ["GPU-2"]}]},
        {"uid": "u2", "namespace": "serve", "name": "infer-0", "labels": {},
         "containers": [{"name": "c", "devices": ["MIG-1"]}]}]},
] + [
    {"kind": "sample", "ts": 1764046800 + 10 * k, "node": "gpu-a", "uuid": uuid, "util": 40.0 + k,
     "mem_used_bytes": 1000 * k, "power_w": 300.5,
     **({"processes": [{"pid": 7, "pod_uid": "u1", "util": 40.0, "mem_used_bytes": 5}]} if uuid == "GPU-2" else {})}
    for k in range(1, 5) for uuid in ("GPU-1", "MIG-1", "GPU-2")
]


def _careful_only(monkeypatch):
    import pyarrow as pa

    def reject(*args, **kwargs):
        raise pa.ArrowInvalid("forced by the test")

    monkeypatch.setattr(tracefile.pajson, "read_json", reject)


def _trace_case(seed: int) -> tuple[str, bytes]:
    rng = random.Random(seed)
    lines = mutate_lines(rng, [json.dumps(x) for x in TRACE])
    data = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
    gz = rng.random() < 0.3
    if gz:
        data = gzip.compress(data, mtime=0)
    if rng.random() < 0.25:
        data = mutate_bytes(rng, data)
    return ("t.jsonl.gz" if gz else "t.jsonl"), data


def _replay_outcome(path: Path):
    try:
        result = replay([path], RateCard(currency="USD", default_gpu_hourly=3.6), Config())
    except InputError as err:
        assert "\n" not in str(err) and err.file == str(path), f"{path}: {err!r}"
        return "error", (err.file, err.line, err.field)
    return "ok", round(result.summary["totals"]["gpu_seconds"], 6)


def test_fuzzed_traces_replay_or_exit_2_in_one_line_on_both_reader_paths(tmp_path, monkeypatch):
    """Every case: exit 2 with one line naming the file, or figures that are finite JSON,
    a Parquet ledger and a table; the careful path (line by line) gives the same answer."""
    fast, paths = {}, []
    for seed in range(CASES):
        name, data = _trace_case(seed)
        path = tmp_path / f"{seed}-{name}"
        path.write_bytes(data)
        paths.append(path)
        fast[seed] = _replay_outcome(path)
        if fast[seed][0] == "ok" or seed % 10 == 0:  # the command itself: all that succeed, some that fail
            out = tmp_path / f"out-{seed}"
            code, stdout, err = run_cli("replay", str(path), "--out", str(out), "--json")
            assert_one_line_or_success(code, err, f"seed {seed} ({path})")
            assert (code == 0) == (fast[seed][0] == "ok"), f"seed {seed}: {err}"
            if code == 0:
                strict_json(stdout)
                strict_json((out / "summary.json").read_text())
                assert (out / "ledger.parquet").stat().st_size > 0
            else:
                assert not (out / "summary.json").exists() and not (out / "ledger.parquet").exists()
    kinds = [o[0] for o in fast.values()]
    assert kinds.count("ok") > CASES // 10 and kinds.count("error") > CASES // 10  # both outcomes reached
    _careful_only(monkeypatch)
    for seed, path in enumerate(paths):
        careful = _replay_outcome(path)
        assert careful[0] == fast[seed][0], f"seed {seed}: fast {fast[seed]}, careful {careful}"
        if careful[0] == "ok":
            assert careful == fast[seed], f"seed {seed}"


def test_fuzzed_traces_read_by_the_agent_dry_run_are_records_or_one_input_error(tmp_path):
    for seed in range(CASES):
        name, data = _trace_case(seed)
        path = tmp_path / f"{seed}-{name}"
        path.write_bytes(data)
        try:
            for _ in iter_records(path):
                pass
        except InputError as err:
            assert "\n" not in str(err), f"seed {seed}"


# --------------------------------------------------------------------------- rate cards and configs

RATE_CARD = """\
currency: USD
gpu_share: 0.8
default_gpu_hourly: 2.5
nodes:
  - <<: &p4d
      match: {node.kubernetes.io/instance-type: p4d.24xlarge, karpenter.sh/capacity-type: spot}
      hourly: 32.77
    hourly: 12.5
  - *p4d
gpus:
  NVIDIA A100-SXM4-40GB: 3.1
  Tesla T4: {hourly: 0.35}
commitments:
  - match: {node.kubernetes.io/instance-type: p4d.24xlarge, topology.kubernetes.io/region: us-east-1}
    options:
      - {kind: reserved-instance, term_years: 1, payment: no-upfront, hourly: 20.0}
      - {kind: savings-plan, term_years: 3, payment: all-upfront, hourly: 12.0}
  - gpu_model: Tesla T4
    options: [{kind: committed-use, term_years: 1, payment: no-upfront, hourly: 0.2}]
"""

CONFIG = """\
team_labels: [gpuledger.io/team, team]
namespace_teams:
  research: ml-research
  serving: &team platform
  batch: *team
workload_class_label: gpuledger.io/workload-class
label_rules:
  - {label: notebook-name, class: interactive}
  - {label: app, class: inference, value: vllm}
owner_kind_classes: {PyTorchJob: training, Deployment: inference}
agent:
  interval: 2s
  speed: 60
  listen: 127.0.0.1:9400
  log_level: info
"""

YAML_TOKENS = ["!!float xyz", "!!int abc", "!!binary aGk=", "!!timestamp xyz", "!!timestamp 2026-11-23", "*nowhere",
               "&r [*r]", "&m {a: *m}", "1e400", ".inf", "-.inf", ".nan", "-1", "9" * 400, "0x" + "f" * 300, "~", "''",
               "[]", "{}", "[" * 200 + "]" * 200, "{a: " * 100 + "1" + "}" * 100, '"\\ud800"', '"\\udfff x"',
               "!!python/object/apply:os.system [true]", "!foo bar", "!!set {a, b}", "!!omap [{a: 1}]", "yes",
               "2026-11-23", "12:30:00", "=1+1", "@SUM(A1)", "'-1'", "1_000", "0o777", "<<: *p4d", "? [a]", "|\n  x",
               "1.0e+308", "3.0e+9", "1e-320", "*team", "*p4d"]


def mutate_yaml(rng: random.Random, text: str) -> str:
    lines = text.splitlines()
    for _ in range(rng.choice([1, 1, 2, 3])):
        op = rng.randrange(7)
        i = rng.randrange(len(lines)) if lines else 0
        if not lines:
            lines.append(rng.choice(YAML_TOKENS))
        elif op <= 2 and ":" in lines[i]:
            head = lines[i].rsplit(":", 1)[0] if rng.random() < 0.5 else lines[i].split(":", 1)[0]
            lines[i] = f"{head}: {rng.choice(YAML_TOKENS)}"
        elif op == 3:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif op == 4:
            del lines[i]
        elif op == 5:
            indent = len(lines[i]) - len(lines[i].lstrip())
            lines.insert(i, " " * indent + f"{rng.choice(['x', 'hourly', 'match', 'agent', 'nodes'])}: "
                         f"{rng.choice(YAML_TOKENS)}")
        else:
            lines[i] = mutate_bytes(rng, lines[i].encode()).decode("utf-8", "replace")
    laughs = rng.random() < 0.05
    if laughs:  # a billion laughs on top
        lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'] + [
            f"l{k}: &l{k} [" + ",".join([f"*l{k - 1}"] * 9) + "]" for k in range(1, 10)] + lines
    text = "\n".join(lines) + "\n"
    return text


def _yaml_cases(base: str, seed0: int):
    for seed in range(seed0, seed0 + CASES):
        rng = random.Random(seed)
        text = mutate_yaml(rng, base)
        data = text.encode("utf-8", "surrogatepass")
        if rng.random() < 0.1:
            data = mutate_bytes(rng, data)
        yield seed, data


def test_fuzzed_rate_cards_load_or_exit_2_in_one_line(tmp_path):
    outcomes = {0: 0, 2: 0}
    for seed, data in _yaml_cases(RATE_CARD, 10_000):
        path = tmp_path / f"rates-{seed}.yaml"
        path.write_bytes(data)
        for argv in (("prices", "show", "--node-labels", "node.kubernetes.io/instance-type=p4d.24xlarge",
                      "--gpu-model", "NVIDIA A100-SXM4-40GB", "--rates", str(path)),):
            code, out, err = run_cli(*argv)
            assert_one_line_or_success(code, err, f"seed {seed} ({path})")
            outcomes[code] += 1
            if code == 0:
                assert "inf" not in out.lower() and "nan" not in out.lower(), f"seed {seed}: {out}"
    assert min(outcomes.values()) > CASES // 30, outcomes  # both outcomes reached


def test_fuzzed_configs_load_or_exit_2_in_one_line(tmp_path):
    outcomes = {0: 0, 2: 0}
    for seed, data in _yaml_cases(CONFIG, 20_000):
        path = tmp_path / f"config-{seed}.yaml"
        path.write_bytes(data)
        code, out, err = run_cli("config", str(path))
        assert_one_line_or_success(code, err, f"seed {seed} ({path})")
        outcomes[code] += 1
    assert min(outcomes.values()) > CASES // 30, outcomes  # both outcomes reached


# --------------------------------------------------------------------------- ledgers

import re  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from recommenders.history import LedgerError, ledger_end, load_history  # noqa: E402

LEDGER_CASES = 200  # the reader on each; the whole report on every REPORT_EVERY-th one it accepts
REPORT_EVERY = 8
NON_FINITE = re.compile(r"\b(nan|inf|infinity)\b", re.IGNORECASE)

HOSTILE_NUMBERS = [np.inf, -np.inf, np.nan, None, -1.0, -1e-12, 0.0, 5e-324, 1e8, 1e9, 1e15, 1e300, 3600.0]
HOSTILE_STRINGS = [None, "", "=1+1", "+cmd", "-2", "@SUM(A1)", "\t=x", "\r=x", "a|b\nc", "<script>x</script>",
                   "*bold*", "x" * 300, "ünï", "../x", "team,with,commas", '"quoted"']
HOSTILE_MINUTES = [None, -10 ** 12, -31622460, 0, 253370764740, 253370764800, 10 ** 15, 1764046830]


@functools.lru_cache(maxsize=1)
def _ledger_table() -> pa.Table:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        trace = Path(d) / "t.jsonl"
        trace.write_text("\n".join(json.dumps(x) for x in TRACE) + "\n")
        code, _, err = run_cli("replay", str(trace), "--out", d)
        assert code == 0, err
        return pq.read_table(Path(d) / "ledger.parquet")


def _mutate_table(rng: random.Random, table: pa.Table) -> pa.Table:
    for _ in range(rng.choice([1, 1, 2])):
        name = rng.choice(table.schema.names)
        i = table.schema.get_field_index(name)
        kind = table.schema.field(name).type
        op = rng.randrange(10)
        if op == 0:
            table = table.remove_column(i)
        elif op == 1:
            other = rng.choice([pa.string(), pa.float64(), pa.int64(), pa.bool_(), pa.timestamp("ms")])
            try:
                table = table.set_column(i, name, table.column(name).cast(other))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                table = table.set_column(i, name, pa.array([None] * table.num_rows, other))
        else:
            values = table.column(name).to_pylist()
            if pa.types.is_timestamp(kind):
                new = rng.choice(HOSTILE_MINUTES)
                values = [v.timestamp() if v is not None else None for v in values]
                kind = pa.int64()
                table = table.set_column(i, name, pa.array([None if v is None else int(v) for v in values], kind))
                values = table.column(name).to_pylist()
            elif pa.types.is_string(kind) or pa.types.is_dictionary(kind):
                new, kind = rng.choice(HOSTILE_STRINGS), pa.string()
            else:
                new, kind = rng.choice(HOSTILE_NUMBERS), pa.float64()
            rows = range(table.num_rows) if rng.random() < 0.3 else [rng.randrange(table.num_rows)]
            for r in rows:
                values[r] = new
            if name == "minute" and pa.types.is_integer(kind):
                array = pa.array(values, pa.int64()).cast(pa.timestamp("s", tz="UTC")) if rng.random() < 0.5 \
                    else pa.array(values, pa.int64())
            else:
                array = pa.array(values, kind)
            table = table.set_column(i, name, array)
    return table


def _ledger_case(seed: int, tmp_path: Path) -> Path:
    rng = random.Random(seed)
    path = tmp_path / f"{seed}-ledger.parquet"
    if rng.random() < 0.5:  # a rollup of the agent
        path = tmp_path / f"{seed}" / "n" / "2025-11-25" / "05.jsonl.gz"
        path.parent.mkdir(parents=True)
        rows = _ledger_table().to_pylist()
        for row in rows:
            row["minute"] = int(row["minute"].timestamp())
        header = {"gpuledger_ledger": "1", "currency": "USD", "node": "gpu-a", "hour": 1764046800,
                  "minutes_through": 1764046800, "samples_through": None}
        lines = mutate_lines(rng, [json.dumps(header)] + [json.dumps(r) for r in rows])
        data = gzip.compress(("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"), mtime=0)
        if rng.random() < 0.2:
            data = mutate_bytes(rng, data)
        path.write_bytes(data)
        return path.parent.parent.parent
    pq.write_table(_mutate_table(rng, _ledger_table()) if rng.random() < 0.85 else _ledger_table(), path)
    if rng.random() < 0.2:
        path.write_bytes(mutate_bytes(rng, path.read_bytes()))
    return path


def test_fuzzed_ledgers_report_or_exit_2_in_one_line(tmp_path):
    """Parquet ledgers (values out of range, wrong types, missing columns, corrupt pages) and
    agent rollups (mutated lines, corrupt gzip): the reader accepts or names the file and
    field; what it accepts makes a report with finite figures, or exit 2 in one line."""
    from agent.rollups import RollupBook
    from collectors.faults import FaultCounter

    accepted = refused = reported = 0
    for seed in range(LEDGER_CASES):
        path = _ledger_case(seed, tmp_path)
        if path.is_dir():  # a rollup: the agent reads it back at start, setting it aside if damaged
            RollupBook(tmp_path / "restored", "USD", faults=FaultCounter()).restore()
            book = RollupBook(path, "USD", faults=FaultCounter())
            book.restore()
            if book.damaged:  # put back for the report's reader
                for damaged in book.damaged:
                    damaged.with_name(damaged.name + ".damaged").rename(damaged)
        try:
            first, end = ledger_end([path])
            load_history([path], first - 86400, end)
        except LedgerError as err:
            refused += 1
            assert "\n" not in err.message and err.file, f"seed {seed}: {err.message!r}"
            continue
        accepted += 1
        if accepted % REPORT_EVERY:
            continue
        reported += 1
        out = tmp_path / f"report-{seed}"
        code, _, err = run_cli("report", "--ledger", str(path), "--out", str(out))
        assert_one_line_or_success(code, err, f"seed {seed} ({path})")
        if code == 0:
            strict_json((out / "recommendations.json").read_text())
            for name in ("report.md", "report.html", "recommendations.csv", "focus.csv"):
                text = (out / name).read_text()
                assert not NON_FINITE.search(text.replace("inference", "")), f"seed {seed}: {name}"
    assert accepted > LEDGER_CASES // 10 and refused > LEDGER_CASES // 10 and reported > 5, (accepted, refused)
