"""The ``gpuledger`` command.

User mistakes (bad files, bad flags) print one line naming the file, line and field
and exit 2; nothing is written in that case.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from collectors.errors import InputError, Unavailable

EXIT_INPUT = 2  # a mistake in the user's input: one line naming file, line and field
EXIT_FAILED = 1  # something in the world failed (a write, no GPU): one line saying what


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line that names the command and the flag:
    ``gpuledger simulate: error: unrecognized arguments: --hour (see gpuledger simulate --help)``,
    exit 2. Long flags are matched whole (``--hour`` is not ``--hours``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        # A subcommand's parser is asked for the arguments it knows; one it does not know
        # is its own error (argparse would hand it to the top level, whose usage names
        # neither the subcommand nor its flags).
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def error(self, message: str):  # type: ignore[override]
        message = " ".join(message.split())
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def version() -> str:
    """The installed gpuledger's version."""
    from importlib.metadata import PackageNotFoundError, version as installed

    try:
        return installed("gpuledger")
    except PackageNotFoundError:
        return "unknown"


class Terminated(BaseException):
    """SIGTERM in a command that has no handler of its own (the agent and record have):
    unwinds like Ctrl-C, so every file being written is removed, not left half-done."""


def _terminate(signum, _frame) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_INPUT
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.handler(args) or 0
    except InputError as err:
        print(f"gpuledger: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except Unavailable as err:
        print(f"gpuledger: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as err:  # a write that failed (disk full, a file too large): what and where, no traceback
        where = f"{err.filename}: " if err.filename else ""
        print(f"gpuledger: error: {where}{err.strerror or err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("gpuledger: interrupted; nothing written", file=sys.stderr)
        return 130
    except Terminated:
        print("gpuledger: stopped by SIGTERM; nothing written", file=sys.stderr)
        return 143
    finally:
        from collectors.atomicfile import discard_pending

        discard_pending()  # a file being written when the command stopped, whatever stopped it


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="gpuledger",
        description="Attribute every GPU-second and its cost to a team and a workload. "
        "Try it with no GPU: `gpuledger simulate --out demo.jsonl.gz && gpuledger replay demo.jsonl.gz`.",
    )
    parser.add_argument("--version", action="version", version=f"gpuledger {version()}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _replay_parser(sub)
    _simulate_parser(sub)
    _import_parser(sub)
    _config_parser(sub)
    from agent import cmd_agent, cmd_gather, cmd_prices, cmd_record, cmd_report

    for command in (cmd_agent, cmd_record, cmd_report, cmd_prices, cmd_gather):
        command.register(sub)
    return parser


# --------------------------------------------------------------------------- replay


def _replay_parser(sub) -> None:
    from agent.durations import duration_arg
    from collectors.records import LATENESS_S

    p = sub.add_parser(
        "replay",
        help="attribute and price a recorded trace (dry-run of the agent)",
        description="Read one or more trace files (JSON Lines, plain or gzip; several "
        "files are merged by time), attribute every GPU-second to a pod or to "
        "unallocated capacity, price it, and print cost per team and workload class. "
        "With --out, also write summary.json and ledger.parquet (one row per minute, "
        "device and pod). See docs/trace-format.md and docs/cost-model.md.",
    )
    p.add_argument("traces", nargs="+", metavar="TRACE", help="trace files (.jsonl or .jsonl.gz)")
    p.add_argument("--rates", metavar="FILE",
                   help="rate card (YAML, docs/rate-card.md) that alone prices the trace; "
                   "default: the bundled public price snapshot")
    p.add_argument("--config", metavar="FILE",
                   help="team and workload-class settings (YAML, docs/configuration.md)")
    p.add_argument("--out", metavar="DIR", help="write summary.json and ledger.parquet here")
    p.add_argument("--json", action="store_true", help="print summary.json to stdout instead of the table")
    p.add_argument("--lateness", type=duration_arg, default=LATENESS_S, metavar="DURATION",
                   help="how much older than the records before it in its file a record may be "
                   f"(default {LATENESS_S:g}s); replay holds about this much of the trace in memory "
                   "(docs/trace-format.md, \"Order\")")
    p.set_defaults(handler=_replay)


def _replay(args: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.progress import ProgressLine
    from agent.replay import replay
    from agent.sinks import DiscardSink, ParquetSink
    from agent.accounting.summary import format_table
    from collectors.atomicfile import atomic_paths, check_dir_target
    from collectors.pricing.ratecard import RateCardPricer, load_rate_card, load_snapshot

    out = Path(args.out) if args.out else None
    if out is not None:
        check_dir_target(out)
    # Arrow's default allocator (mimalloc) keeps freed blocks for reuse; replay frees every
    # block it parses, and the system allocator hands them back: a third less peak memory
    # for the same speed (benchmarks/README.md, replay_bench).
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
    pricer = RateCardPricer(load_rate_card(args.rates) if args.rates else load_snapshot())
    config = load_config(args.config)
    progress = ProgressLine("reading traces")
    try:
        if out is None:
            result = replay(args.traces, pricer, config, progress, sink=DiscardSink(), lateness_s=args.lateness)
        else:
            # both files appear together once all went well; on an input error, neither (nor the folder)
            with atomic_paths([out / "ledger.parquet", out / "summary.json"]) as (ledger, summary_json):
                sink = ParquetSink(ledger, pricer.currency)
                try:
                    result = replay(args.traces, pricer, config, progress, sink=sink, lateness_s=args.lateness)
                    sink.close()
                finally:
                    sink.abandon()
                summary_json.write_text(json.dumps(result.summary, indent=2) + "\n", encoding="utf-8")
    finally:
        progress.done()
    if args.json:
        sys.stdout.write(json.dumps(result.summary, indent=2) + "\n")
    else:
        sys.stdout.write(format_table(result.summary))
        sources = sorted({p["source"] for p in result.summary["prices"]})
        sys.stdout.write(f"prices from: {', '.join(sources) or 'none'} ({result.summary['currency']})\n")
        if out is not None:
            sys.stdout.write(f"wrote {out / 'summary.json'} and {out / 'ledger.parquet'}\n")
    return 0


# --------------------------------------------------------------------------- simulate


def _simulate_parser(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="write a realistic demo cluster trace (no GPU or cluster needed)",
        description="Generate a deterministic trace of a demo GPU cluster: training jobs, "
        "bursty and idle inference, a notebook, a MIG-partitioned GPU, a time-sliced GPU, "
        "unallocated GPUs and several teams. See docs/simulator.md.",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--nodes", type=int, default=4, help="number of GPU nodes (default 4)")
    p.add_argument("--hours", type=float, default=24.0, help="length of the trace in hours (default 24)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    p.add_argument("--start", type=float, default=None,
                   help="start time, Unix seconds (default: a fixed date, so output is reproducible)")
    p.add_argument("--out", required=True, metavar="FILE", help="trace file to write (.jsonl or .jsonl.gz)")
    p.set_defaults(handler=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    from agent.progress import ProgressLine
    from collectors.simulator import simulate

    from collectors.atomicfile import check_file_target

    check_file_target(args.out)
    progress = ProgressLine("simulating", unit="samples")
    options = {"seed": args.seed, "nodes": args.nodes, "hours": args.hours, "interval_s": args.interval}
    if args.start is not None:
        options["start"] = args.start
    try:
        stats = simulate(args.out, progress=progress, **options)
    finally:
        progress.done()
    print(f"wrote {stats.path}: {stats.nodes} nodes, {stats.gpus} GPUs, {stats.pods} pods, "
          f"{stats.samples:,} samples and {stats.serving:,} serving records over {args.hours:g} h")
    return 0


# --------------------------------------------------------------------------- import


def _import_parser(sub) -> None:
    from collectors.importers import IMPORTERS

    p = sub.add_parser(
        "import", help="turn logs you already have (nvidia-smi, public traces) into a trace",
        description="Convert another format into a gpuledger trace that `gpuledger replay` reads.",
    )
    kinds = p.add_subparsers(title="formats", metavar="FORMAT", required=True)
    for importer in IMPORTERS.values():
        q = kinds.add_parser(importer.name, help=importer.help, description=importer.description)
        importer.add_arguments(q)
        q.add_argument("--out", required=True, metavar="FILE", help="trace file to write (.jsonl or .jsonl.gz)")
        q.set_defaults(handler=_import, importer=importer)


def _import(args: argparse.Namespace) -> int:
    from collectors.atomicfile import check_file_target

    check_file_target(args.out)
    print(args.importer.run(args, Path(args.out)))
    return 0


# --------------------------------------------------------------------------- config


def _config_parser(sub) -> None:
    p = sub.add_parser("config", help="check a config file, or print the settings reference",
                       description="Check a config file (team and workload-class rules, and the agent: "
                       "section), or print the table of settings.")
    p.add_argument("file", nargs="?", help="config file to check")
    p.add_argument("--docs", action="store_true", help="print the settings table (Markdown)")
    p.set_defaults(handler=_config)


def _config(args: argparse.Namespace) -> int:
    from agent.config import load_config, settings_markdown

    if args.docs or not args.file:
        sys.stdout.write(settings_markdown())
        return 0
    load_config(args.file)
    from agent.agent_settings import check_file

    check_file(args.file)  # the agent: section, if any
    print(f"{args.file}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
