"""``gpuledger gather``: pull the fleet's closed ledger rollups into one Parquet dataset.

Run once per invocation (a Kubernetes CronJob in the chart): find the agents (a static
``--agents`` list, or ``--kubernetes``: the agent pods the API server lists by a label
selector), ask each for the closed hours it holds since what the dataset already has
(``GET /ledger?since=``, :mod:`agent.ledgerserve`), pull the new ones and write each
node-hour as one Parquet file, ``OUT/date=YYYY-MM-DD/<node_dir>-<HH>.parquet``, with the
ledger's Arrow schema (:func:`recommenders.ledger_schema.arrow_schema`). OUT is a
directory or an object-store URL (``s3://bucket/prefix``).

Idempotent: a node-hour pulled again replaces its file (written under a temporary name
and moved, or one PUT on an object store), and ``OUT/_gather_checkpoint.json`` records,
per node, the newest hour gathered and its sha256; it is written last, so a gather that
stops midway pulls the rest next time. A node's hours are taken oldest first and its
checkpoint only moves past hours that were written, so an agent that is down, restarts
or fails mid-pull is retried on the next run with nothing lost or doubled. Agents that
could not be reached are counted in the one-line summary; the exit status is 0 when at
least one agent answered (or there were none), 1 when every agent was down, 2 for a
mistake in the flags. See docs/fleet.md.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from agent.ledgerserve import load_token
from collectors.atomicfile import write_bytes
from collectors.errors import InputError, Unavailable

log = logging.getLogger("gpuledger.gather")
CHECKPOINT = "_gather_checkpoint.json"
CHECKPOINT_KEY = "gpuledger_gather"
SELECTOR = "app.kubernetes.io/name=gpuledger"
WORKERS = 8


def register(subparsers) -> argparse.ArgumentParser:
    from agent.durations import duration_arg

    p = subparsers.add_parser(
        "gather", help="pull the agents' closed ledger rollups into one Parquet dataset (docs/fleet.md)",
        description="Pull every agent's closed hourly ledger rollups (GET /ledger on the agents' listen "
        "address) that the dataset does not hold yet, and write them as one Parquet dataset partitioned by "
        "date: OUT/date=YYYY-MM-DD/<node>-<HH>.parquet, one file per node-hour, with the ledger's schema "
        "(docs/ledger.md). Runs once (a CronJob); safe to run again at any time: it pulls only what is new, "
        "and an hour pulled again replaces its file. Agents that are down are counted in the summary line "
        "and retried on the next run. See docs/fleet.md.")
    p.add_argument("--out", required=True, metavar="DIR|URL",
                   help="the dataset: a directory, or s3://bucket/prefix (any URL pyarrow.fs reads)")
    p.add_argument("--agents", metavar="URL,URL", default=None,
                   help="the agents' base URLs, comma-separated (http://node-a:9400,http://node-b:9400)")
    p.add_argument("--kubernetes", action="store_true",
                   help="find the agents as the pods the API server lists with --selector (in-cluster "
                   "service account, or --kubeconfig)")
    p.add_argument("--selector", default=SELECTOR, metavar="LABELS",
                   help=f"label selector of the agent pods (default {SELECTOR})")
    p.add_argument("--namespace", default=None, metavar="NS",
                   help="namespace of the agent pods (default: all namespaces)")
    p.add_argument("--port", type=int, default=9400, metavar="PORT",
                   help="the agents' listen port, with --kubernetes (default 9400)")
    p.add_argument("--kubeconfig", default=None, metavar="FILE",
                   help="kubeconfig for the API server (default: the in-cluster service account)")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="file holding the bearer token the agents ask for (their --ledger-token-file)")
    p.add_argument("--s3-endpoint", default=None, metavar="URL",
                   help="S3 endpoint for an s3:// --out (default: $AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--timeout", type=duration_arg, default=30.0, metavar="DURATION",
                   help="how long one agent request may take (default 30s)")
    p.set_defaults(handler=run)
    return p


# --------------------------------------------------------------------------- the dataset


class Dataset:
    """Where the Parquet files and the checkpoint go: a pyarrow filesystem and a root in it."""

    def __init__(self, out: str, s3_endpoint: str | None) -> None:
        import pyarrow.fs as pafs

        self.out = out
        self.local = "://" not in out
        try:
            if self.local:
                path = Path(out)
                if path.exists() and not path.is_dir():
                    raise InputError("expected a directory for the dataset, found a file", file=out, field="--out")
                self.fs, self.root = pafs.LocalFileSystem(), str(path.resolve())
            elif out.startswith("s3://"):
                endpoint = s3_endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
                parts = urlsplit(out)
                if not parts.netloc:
                    raise InputError("expected s3://BUCKET/PREFIX", file=out, field="--out")
                options: dict[str, Any] = {}
                if endpoint:
                    scheme = urlsplit(endpoint).scheme
                    options.update(endpoint_override=endpoint, scheme=scheme or "https")
                region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                if region:
                    options["region"] = region
                self.fs = pafs.S3FileSystem(**options)
                self.root = (parts.netloc + parts.path).rstrip("/")
            else:
                self.fs, self.root = pafs.FileSystem.from_uri(out)
                self.root = self.root.rstrip("/")
        except InputError:
            raise
        except Exception as err:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
            raise InputError(f"cannot use it as the dataset: {str(err).splitlines()[0][:200]}", file=out,
                             field="--out") from None

    def path(self, *parts: str) -> str:
        return "/".join((self.root,) + parts)

    def write(self, relative: str, data: bytes) -> None:
        """Write a file whole: a temporary name and a move on a disk, one PUT on an object store."""
        final = self.path(relative)
        folder = final.rsplit("/", 1)[0]
        self.fs.create_dir(folder, recursive=True)
        if not self.local:
            with self.fs.open_output_stream(final) as f:
                f.write(data)
            return
        write_bytes(final, data, durable=True)

    def read(self, relative: str) -> bytes | None:
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self.path(relative))
        if info.type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(self.path(relative)) as f:
            return f.read()


def dataset_name(node_dir: str, hour: int) -> str:
    """``date=YYYY-MM-DD/<node_dir>-<HH>.parquet``: where a node-hour goes in the dataset."""
    stamp = time.gmtime(hour)
    return f"date={time.strftime('%Y-%m-%d', stamp)}/{node_dir}-{stamp.tm_hour:02d}.parquet"


def rollup_to_parquet(data: bytes, where: str) -> tuple[bytes, int]:
    """One rollup file's bytes as Parquet bytes with the ledger's schema, and its row count,
    read by the agent's own rollup reader (agent/rollups.py); ValueError when damaged."""
    import gzip
    import zlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from agent.rollups import checked_rows, parse_rollup
    from recommenders.ledger_schema import NAMES, arrow_schema

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
    if not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha() and currency.isupper()):
        raise ValueError(f"{where}: line 1: expected a three-letter currency code")
    schema = arrow_schema(currency)
    try:
        table = pa.Table.from_pydict({n: [r.get(n) for r in rows] for n in NAMES}, schema=schema)
    except (pa.ArrowException, TypeError, OverflowError) as err:
        raise ValueError(f"{where}: {str(err).splitlines()[0][:160]}") from None
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes(), table.num_rows


# --------------------------------------------------------------------------- the agents


@dataclass
class Pulled:
    """What one agent gave: node-hours written, rows, checkpoint entries, or why it failed."""

    agent: str
    files: int = 0
    rows: int = 0
    checkpoint: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: str | None = None


def _get(url: str, token: str | None, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "gpuledger-gather"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return resp.read()


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)[:120]
    return (str(err).splitlines() or [type(err).__name__])[0][:160]


def pull_agent(agent: str, known: dict[str, dict[str, Any]], dataset: Dataset, token: str | None,
               timeout: float) -> Pulled:
    """Pull one agent's closed hours that ``known`` (node_dir -> checkpoint entry) lacks."""
    out = Pulled(agent)
    mine = [e["hour"] for e in known.values() if e.get("agent") == agent]
    query = f"?{urlencode({'since': min(mine)})}" if mine else ""
    try:
        listing = json.loads(_get(f"{agent}/ledger{query}", token, timeout))
        if not isinstance(listing, list):
            raise ValueError("the listing is not a JSON list")
        by_node: dict[str, list[dict[str, Any]]] = {}
        for entry in listing:
            by_node.setdefault(str(entry["node_dir"]), []).append(entry)
            int(entry["hour"]), str(entry["path"]), str(entry["sha256"])
    except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException) as err:
        out.failed = _reason(err)
        return out
    for node_dir, entries in sorted(by_node.items()):
        have = known.get(node_dir)
        for entry in sorted(entries, key=lambda e: e["hour"]):
            hour = int(entry["hour"])
            if have and (hour < have["hour"] or (hour == have["hour"] and entry["sha256"] == have["sha256"])):
                continue
            try:
                data = _get(agent + entry["path"], token, timeout)
                parquet, rows = rollup_to_parquet(data, entry["path"])
                dataset.write(dataset_name(node_dir, hour), parquet)
            except (OSError, http.client.HTTPException) as err:
                out.failed = _reason(err)
                return out  # the agent went away: what was written is in out.checkpoint
            except ValueError as err:  # a damaged rollup (or one rewritten as we read it)
                out.failed = str(err)[:200]
                break  # this node waits here: retried next run
            out.files += 1
            out.rows += rows
            have = out.checkpoint[node_dir] = {
                "node": entry.get("node"), "hour": hour,
                "hour_iso": datetime.fromtimestamp(hour, timezone.utc).strftime("%Y-%m-%dT%H:00:00Z"),
                "sha256": hashlib.sha256(data).hexdigest(), "agent": agent}
    return out


def kubernetes_agents(args: argparse.Namespace) -> list[str]:
    """The base URLs of the running agent pods the API server lists with the selector."""
    from collectors.kubehttp import ConfigError, KubeClient, KubeError

    try:
        client = (KubeClient.from_kubeconfig(args.kubeconfig) if args.kubeconfig else KubeClient.in_cluster())
    except ConfigError as err:
        raise InputError(str(err), field="--kubernetes") from None
    path = f"/api/v1/namespaces/{args.namespace}/pods" if args.namespace else "/api/v1/pods"
    try:
        pods = client.get_json(path, {"labelSelector": args.selector})
    except KubeError as err:
        raise Unavailable(f"cannot list the agent pods ({args.selector}): {err}") from None
    except Exception as err:  # noqa: BLE001 - urllib3's connection errors
        raise Unavailable(f"cannot reach the API server {client.host}: {type(err).__name__}") from None
    finally:
        client.close()
    urls = []
    for pod in pods.get("items") or []:
        status = pod.get("status") or {}
        ip = status.get("podIP")
        if status.get("phase") == "Running" and ip:
            urls.append(f"http://{'[' + ip + ']' if ':' in ip else ip}:{args.port}")
    return sorted(set(urls))


def _static_agents(text: str) -> list[str]:
    urls = []
    for item in (t.strip().rstrip("/") for t in text.split(",")):
        if not item:
            continue
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"expected agent URLs such as http://node-a:9400, got {item!r}", field="--agents")
        try:
            parts.port
        except ValueError:
            raise InputError(f"expected agent URLs such as http://node-a:9400, got {item!r}", field="--agents") \
                from None
        urls.append(item)
    if not urls:
        raise InputError("expected at least one agent URL", field="--agents")
    return urls


def load_checkpoint(dataset: Dataset) -> dict[str, dict[str, Any]]:
    try:
        data = dataset.read(CHECKPOINT)
    except OSError as err:
        raise Unavailable(f"cannot read {dataset.path(CHECKPOINT)}: {err}") from None
    if data is None:
        return {}
    try:
        doc = json.loads(data)
        nodes = doc["nodes"]
        if CHECKPOINT_KEY not in doc or not isinstance(nodes, dict) or not all(
                isinstance(e, dict) and isinstance(e.get("hour"), int) and isinstance(e.get("sha256"), str)
                for e in nodes.values()):
            raise ValueError("not a gather checkpoint")
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"not a gather checkpoint ({str(err)[:80]}); delete it to gather everything again",
                         file=dataset.path(CHECKPOINT)) from None
    return nodes


def _checkpoint_bytes(nodes: dict[str, dict[str, Any]]) -> bytes:
    return (json.dumps({CHECKPOINT_KEY: 1, "nodes": dict(sorted(nodes.items()))}, indent=1) + "\n").encode()


# --------------------------------------------------------------------------- the command


def run(args: argparse.Namespace) -> int:
    if not args.agents and not args.kubernetes:
        raise InputError("expected --agents URL,URL or --kubernetes to find the agents", field="--agents")
    if not 0 < args.port < 65536:
        raise InputError(f"expected a port from 1 to 65535, got {args.port}", field="--port")
    static = _static_agents(args.agents) if args.agents else []
    token = load_token(args.token_file, "--token-file").read().decode() if args.token_file else None
    dataset = Dataset(args.out, args.s3_endpoint)
    known = load_checkpoint(dataset)
    agents = sorted(set(static + (kubernetes_agents(args) if args.kubernetes else [])))
    with ThreadPoolExecutor(min(WORKERS, max(1, len(agents)))) as pool:
        results = list(pool.map(lambda a: pull_agent(a, known, dataset, token, args.timeout), agents))
    nodes = dict(known)
    for r in results:
        nodes.update(r.checkpoint)
    if nodes != known:
        dataset.write(CHECKPOINT, _checkpoint_bytes(nodes))
    down = [r for r in results if r.failed]
    files, rows = sum(r.files for r in results), sum(r.rows for r in results)
    line = (f"gathered {files} node-hours ({rows:,} rows) from {len(agents) - len(down)} of {len(agents)} "
            f"agents into {args.out}")
    if down:
        line += f"; {len(down)} failed, retried next run: " + ", ".join(f"{r.agent} ({r.failed})" for r in down)
    print(line)
    return 1 if agents and len(down) == len(agents) else 0
