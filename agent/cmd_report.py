"""``gpuledger report``: the weekly showback report and recommendations from ledger files or Prometheus.

The shell around :mod:`recommenders`: read the history (ledger files, or the agent's
counters from Prometheus through :mod:`collectors.promhistory`) and the rate card, turn
the rate card's commitment prices into plain data, call the pure report builder, render
every registered format in memory, and only then write the files (each atomically), so
a bad input, or a Prometheus that cannot answer, leaves nothing behind. Register it with
``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Sequence

from agent import durations
from collectors.errors import InputError
from collectors.nodelabels import (
    CAPACITY_LABELS, INSTANCE_TYPE_LABELS, REGION_LABELS, ZONE_LABELS, capacity_type, pricing_labels,
)
from recommenders.engines import MEMORY_LIMIT

def parse_duration(text: str, flag: str = "--since") -> float:
    """'7d', '36h', '2w', '90m' (a bare number means days) in seconds; InputError otherwise."""
    try:
        return durations.parse_duration(text, bare_unit="d")
    except ValueError as err:
        raise InputError(str(err), field=flag) from None


def parse_time(text: str, flag: str = "--until") -> float:
    """ISO 8601 ('2025-12-01', '2025-12-01T06:00Z', with an offset or UTC) or Unix seconds; InputError otherwise."""
    from datetime import datetime, timezone

    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise InputError(f"expected a time such as 2025-12-01T06:00Z or Unix seconds, got {text!r}",
                         field=flag) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*", re.IGNORECASE)


def parse_size(text: str, flag: str = "--memory-limit") -> str:
    """'4GB', '512MB', '1.5GiB' as DuckDB takes it; InputError otherwise."""
    match = _SIZE.fullmatch(text or "")
    if not match or float(match.group(1)) <= 0:
        raise InputError(f"expected a size such as 1GB, 4GB or 512MB, got {text!r}", field=flag)
    return f"{match.group(1)}{match.group(2).upper().replace('I', 'i')}"


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to the CLI's subparsers."""
    from recommenders.engines import DEFAULT as DEFAULT_ENGINE, ENGINES
    from recommenders.settingfields import add_flags
    from recommenders.settings import Settings  # no pandas: building the CLI stays light

    files = "report.md, report.html, recommendations.json, recommendations.csv and focus.csv"
    p = subparsers.add_parser(
        "report", help="weekly showback report, right-sizing and commitment recommendations",
        description=f"Read ledger files (from `gpuledger replay --out`), or the agent's counters from Prometheus, "
        f"and write {files} for the window that ends at the last ledger minute (or --until) and the window before "
        "it. See docs/report.md and docs/recommendations.md.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--ledger", nargs="+", metavar="PATH",
                        help="ledger.parquet file(s), the agent's ledger directory, or a gathered dataset "
                        "(a directory of date=YYYY-MM-DD partitions, or its s3://BUCKET/PREFIX URL: read with "
                        "DuckDB, the window's partitions only; docs/fleet.md)")
    source.add_argument("--prometheus", metavar="URL",
                        help="read the history from the Prometheus that scrapes the agents (base URL, e.g. "
                        "http://prometheus:9090) instead of ledger files; see docs/report.md, 'From Prometheus'")
    p.add_argument("--since", default="7d", metavar="DURATION",
                   help="length of the report window, e.g. 7d, 36h, 2w (default 7d)")
    p.add_argument("--until", metavar="TIME",
                   help="end of the report window, ISO 8601 (2025-12-01T06:00Z; UTC when no offset) or Unix "
                   "seconds; with --prometheus rounded down to the hour (default: now), with --ledger to the "
                   "minute (default: the ledger's end)")
    p.add_argument("--region", metavar="REGION",
                   help="with --prometheus: the region to assume where the price gauge carries no region label "
                   "(for commitment prices that name one)")
    p.add_argument("--prometheus-timeout", default="60s", metavar="DURATION",
                   help="with --prometheus: how long to wait for each answer (default 60s)")
    p.add_argument("--memory-limit", default=MEMORY_LIMIT, metavar="SIZE",
                   help=f"with a gathered dataset and the DuckDB engine: DuckDB's memory, beyond which its sorts, "
                   f"joins, groupings and percentiles spill to a temporary directory, e.g. {MEMORY_LIMIT} (default), "
                   "1GB, 4GB. More is somewhat faster; the report's peak is about 300 MB above it")
    p.add_argument("--s3-endpoint", metavar="URL",
                   help="with an s3:// dataset: the S3 endpoint, for a store that is not AWS (MinIO, Ceph); "
                   "default $AWS_ENDPOINT_URL, else AWS. Credentials come from the usual AWS environment and files")
    p.add_argument("--rates", metavar="FILE",
                   help="rate card with a `commitments` section for reserved-capacity prices "
                   "(default: the bundled snapshot)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the report files into")
    p.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE,
                   help="with --ledger DATASET: what runs its SQL, embedded DuckDB (default) or Spark "
                   "(needs pyspark and Java 17+; see docs/fleet.md, 'Spark')")
    p.add_argument("--spark-master", metavar="URL",
                   help="with --engine spark: the Spark master, e.g. spark://host:7077, yarn, k8s://https://host "
                   "(default local[2], in this process)")
    group = p.add_argument_group("recommendation settings (docs/recommendations.md)")
    add_flags(group, Settings)
    p.set_defaults(handler=run)
    return p


def commitment_prices(card) -> tuple[list, dict]:
    """The rate card's commitments as :class:`recommenders.commitments.PoolPrices`, and spot prices.

    Node options are scaled by ``gpu_share`` so that they compare with the GPU share of
    the node price the ledger carries. Spot prices come from ``nodes`` entries that match
    an instance type and a spot capacity label.
    """
    from recommenders.commitments import Option, PoolPrices

    pools = []
    for i, c in enumerate(card.commitments):
        options = tuple(Option(o.kind, o.term_years, o.payment,
                               o.hourly * (card.gpu_share if c.match is not None else 1.0), o.source)
                        for o in c.options)
        if c.gpu_model is not None:
            pools.append(PoolPrices("gpu", {"gpu_model": c.gpu_model}, options))
            continue
        match = {}
        for label, value in c.match.items():
            column = ("instance_type" if label in INSTANCE_TYPE_LABELS else "region" if label in REGION_LABELS
                      else "zone" if label in ZONE_LABELS else "capacity" if label in CAPACITY_LABELS else None)
            if column is None:
                raise InputError(f"a commitment can match only instance type, region, zone or capacity type labels, "
                                 f"not {label!r}", field=f"commitments[{i}].match")
            if column != "capacity":
                match[column] = value
        if "instance_type" not in match:
            raise InputError("a node commitment must match an instance type label", field=f"commitments[{i}].match")
        pools.append(PoolPrices("node", match, options))
    spot = {}
    for rate in card.nodes:
        where = pricing_labels(rate.match)
        if where.instance_type and capacity_type(rate.match) == "spot":
            spot.setdefault((where.instance_type, where.region), rate.hourly * card.gpu_share)
    return pools, spot


def build(args: argparse.Namespace):
    """Read the inputs and build the report model (no files written)."""
    from collectors.pricing.ratecard import load_rate_card, load_snapshot
    from recommenders.dataset import is_dataset
    from recommenders.history import LedgerError, ledger_end, load_history
    from recommenders.report import build_report
    from recommenders.settingfields import Layer, flag_name, flag_values, resolve
    from recommenders.settings import Settings

    since = parse_duration(args.since)
    flags = Layer(flag_values(Settings, args), lambda f, err: InputError(err, field=flag_name(f)))
    settings = resolve(Settings, [flags])
    card = load_rate_card(args.rates) if args.rates else load_snapshot()
    pools, spot = commitment_prices(card)
    until = parse_time(args.until) if getattr(args, "until", None) else None
    prometheus = getattr(args, "prometheus", None)
    if getattr(args, "region", None) and not prometheus:
        raise InputError("applies to --prometheus only", field="--region")
    if getattr(args, "s3_endpoint", None) and not any(str(p).startswith("s3://") for p in args.ledger or ()):
        raise InputError("applies to an s3:// --ledger only", field="--s3-endpoint")
    memory_limit = parse_size(getattr(args, "memory_limit", None) or MEMORY_LIMIT)
    engine_flag = "--engine" if getattr(args, "engine", "duckdb") != "duckdb" else (
        "--spark-master" if getattr(args, "spark_master", None) else None)
    if engine_flag and (prometheus or not any(is_dataset(p) for p in args.ledger)):
        raise InputError("applies to a gathered dataset only (--ledger DIR of date=YYYY-MM-DD partitions)",
                         field=engine_flag)
    notes: list[str] = []
    if prometheus:
        history, notes = prometheus_history(args, since, settings.commitment_days, until)
        first, end, currency = history.first_minute, history.end, history.currency
        source = "Prometheus"
    else:
        history = None
        source = "the ledger"
        try:
            if any(is_dataset(p) for p in args.ledger):
                return dataset_report(args.ledger, since, until, settings, card, pools, spot,
                                      getattr(args, "s3_endpoint", None), rates=args.rates, memory_limit=memory_limit,
                                      kind=getattr(args, "engine", "duckdb"), master=getattr(args, "spark_master", None))
            paths = ledger_paths(args.ledger)
            first, end = ledger_end(paths)
            end = window_end(first, end, until)
            start = min(end - 2 * since, end - settings.commitment_days * 86400)
            history = load_history(paths, start, end)
            currency = history.currency
        except LedgerError as err:
            raise InputError(err.message, file=err.file, field=err.field) from None
    if args.rates and currency != card.currency:
        raise InputError(f"{source} is in {currency} but the rate card in {card.currency}",
                         file=args.rates, field="currency")
    report = build_report(history.rows, end, since, currency, first, settings,
                          pool_prices=pools, spot_hourly=spot)
    report.notes.extend(notes)
    return report


def window_end(first: float, end: float, until: float | None) -> float:
    """The report's end: the ledger's, or ``--until`` rounded down to the minute where earlier."""
    if until is None:
        return end
    if until <= first:
        raise InputError("the ledger holds no minute before this time", field="--until")
    return min(end, float(int(until // 60) * 60))


def dataset_report(given: Sequence[str], since: float, until: float | None, settings, card, pools, spot,
                   s3_endpoint: str | None = None, rates: str | None = None, kind: str = "duckdb",
                   master: str | None = None, memory_limit: str = MEMORY_LIMIT):
    """The report of a gathered dataset (``<root>/date=YYYY-MM-DD/*.parquet``, a directory or an
    object-store URL): every figure a query run by DuckDB or Spark (``kind``,
    :mod:`recommenders.engines`) over the window's partitions; no ledger row is held in memory."""
    from recommenders.dataset import dataset_end
    from recommenders.engines import open_engine
    from recommenders.report import report_from

    if len(given) != 1:
        raise InputError("give a gathered dataset alone (one directory of date=YYYY-MM-DD partitions)",
                         field="--ledger")
    with open_engine(kind, given[0], master, s3_endpoint, memory_limit) as e:
        first, end = dataset_end(e)
        end = window_end(first, end, until)
        e.check(max(first, min(end - 2 * since, end - settings.commitment_days * 86400)), end)
        e.window(max(first, end - since), end)  # the window's currency, from its files
        if rates and e.currency != card.currency:
            raise InputError(f"the ledger is in {e.currency} but the rate card in {card.currency}", file=rates,
                             field="currency")
        return report_from(e, end, since, e.currency, first, settings, pool_prices=pools, spot_hourly=spot)


_ROLLUP_NAME = re.compile(r"(^|/)\d{4}-\d\d-\d\d/\d\d\.jsonl\.gz$")  # <node>/<YYYY-MM-DD>/<HH>.jsonl.gz
LEDGER_KINDS = ("the agent's ledger directory (<node>/<YYYY-MM-DD>/<HH>.jsonl.gz files) or ledger.parquet files "
                "from `gpuledger replay --out`")


def ledger_paths(given: Sequence[str]) -> list[Path]:
    """The ledger files that ``--ledger`` names: files as they are, and in a directory the
    ledger files by their documented names (``*.parquet``, the agent's hourly rollups),
    so a trace or a report lying beside them is not taken for one. InputError saying what
    was expected when a directory holds none, or a file is a trace."""
    out: list[Path] = []
    for name in given:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.parquet") if p.is_file())
            found += sorted(p for p in path.rglob("*.jsonl.gz")
                            if p.is_file() and _ROLLUP_NAME.search(p.relative_to(path).as_posix()))
            if not found:
                raise InputError(f"no ledger files in this directory: expected {LEDGER_KINDS}", file=name,
                                 field="--ledger")
            out += found
            continue
        if _is_trace(path):
            raise InputError(f"is a trace, not a ledger: replay it first (`gpuledger replay {name} --out DIR`) and "
                             f"give DIR/ledger.parquet, or give {LEDGER_KINDS}", file=name, line=1, field="--ledger")
        out.append(path)
    return out


def _is_trace(path: Path) -> bool:
    """Whether a file starts with a trace's meta record (a common mix-up with a ledger)."""
    import gzip
    import json

    if not path.name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        return False
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            first = json.loads(f.readline(1 << 20) or b"null")
    except (OSError, EOFError, ValueError):
        return False
    return isinstance(first, dict) and first.get("kind") == "meta"


def prometheus_history(args: argparse.Namespace, since: float, commitment_days: float, until: float | None):
    """(History, notes) from the agent's counters in Prometheus, for the window and the look-back before it.

    The window ends on the hour (``until``, default now, rounded down); the rows are the
    hour rows of :func:`collectors.promhistory.hour_rows`, spread over their minutes in
    the report window (:func:`collectors.promhistory.spread_minutes`).
    """
    import time

    from collectors.promhistory import HOUR, PrometheusError, fetch, hour_rows, spread_minutes
    from recommenders.history import history_from_columns

    timeout = parse_duration(args.prometheus_timeout, "--prometheus-timeout")
    end = float(int((until if until is not None else time.time()) // HOUR) * HOUR)
    start = end - max(2 * since, commitment_days * 86400)
    try:
        answers = fetch(args.prometheus, start, end, timeout=timeout, detail_from=end - since)
        rows = hour_rows(answers.results, default_region=args.region)
    except PrometheusError as err:
        raise InputError(str(err), field="--prometheus") from None
    if rows.first_hour is None:
        raise InputError(f"Prometheus at {args.prometheus} holds gpuledger series but no GPU-time in the window "
                         "ending at --until", field="--prometheus")
    history = history_from_columns(spread_minutes(rows, spread_from=end - since), start, end, rows.currency)
    notes = [PROMETHEUS_NOTE] + rows.notes
    regions = {r for r in rows.columns["region"] if r}
    if not regions and any(t for t in rows.columns["instance_type"]):
        notes.append("The agent's metrics carry no region, so pools show none and commitments are priced by the "
                     "rate card's region-less entries (the bundled snapshot's are us-east-1 rates): give the "
                     "cluster's region with --region to use the prices for it.")
    return history, notes


PROMETHEUS_NOTE = (
    "Built from Prometheus, hour by hour: spend, GPU-hours, idle and unallocated cost, daily cost, anomalies and "
    "commitment usage come from the agent's counters and match a ledger's; the utilisation distribution and the "
    "right-sizing evidence (utilisation percentiles, idle share, pods, memory peaks) come from each hour's counters "
    "shaped by the device gauges as sampled at the scrape interval, coarser than a ledger's minutes (peaks between "
    "two scrapes are missed). Check a recommendation's evidence before acting on it.")


def run(args: argparse.Namespace) -> int:
    from collectors.atomicfile import atomic_paths, check_dir_target
    from recommenders.formats import render_all

    out = Path(args.out)
    check_dir_target(out)
    report = build(args)
    texts = render_all(report)  # everything rendered before anything is written
    with atomic_paths([out / name for name in texts]) as paths:  # all five files, or none
        for path, text in zip(paths, texts.values()):
            path.write_text(text, encoding="utf-8")
    sys.stdout.write(
        f"{report.window.hours / 24:.1f} days to {_iso(report.window.end)}: spend {report.totals['total_cost']:,.2f} "
        f"{report.currency}, {len(report.recommendations)} recommendations, potential savings "
        f"{report.potential_monthly_savings:,.2f} {report.currency}/month\n"
        f"wrote {', '.join(str(out / n) for n in texts)}\n")
    return 0


def _iso(ts: float) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``report`` alone, without the rest of the CLI (``python -m agent.cmd_report``:
    benchmarks/report_bench.py times it this way)."""
    parser = argparse.ArgumentParser(prog="gpuledger")
    register(parser.add_subparsers())
    args = parser.parse_args(["report", *(argv or sys.argv[1:])])
    try:
        return args.handler(args)
    except InputError as err:
        print(f"gpuledger: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
