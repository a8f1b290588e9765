"""``gpuledger gather``: pull the fleet's closed ledger rollups into one Parquet dataset.

Find the agents (a static ``--agents`` list, or ``--kubernetes``: the agent pods the API
server lists by a label selector), ask each for the closed hours it holds since what the
dataset already has (``GET /ledger?since=``, :mod:`agent.ledgerserve`), pull the new ones,
read each with :func:`agent.rollup_table.rollup_table` (the agent's reader's checks, at
Arrow's speed) and put them into the node's file of their UTC date,
``OUT/date=YYYY-MM-DD/<node_dir>.parquet`` (:mod:`agent.gatherset`: the file is replaced
whole, so the dataset stays one file per node-day). OUT is a directory or an object-store
URL (``s3://bucket/prefix``). Agents are pulled :data:`WORKERS` at a time.

Once (a Kubernetes CronJob), or with ``--every DURATION`` in a loop that serves its counts
on ``/metrics`` (a Deployment). Idempotent: a node-hour pulled again replaces its rows, and
``OUT/_gather_checkpoint.json`` records, per node, the newest hour gathered and its sha256;
it is written last, so a gather that stops midway pulls the rest next time. A node's hours
are taken oldest first and its checkpoint only moves past hours that were written, so an
agent that is down, restarts or fails mid-pull is retried with nothing lost or doubled.
Agents that could not be reached are counted in the one-line summary; the exit status is 0
when at least one agent answered (or there were none), 1 when every agent was down, 2 for
a mistake in the flags. See docs/fleet.md.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode, urlsplit

from agent.gatherset import Dataset, day_name
from agent.ledgerserve import load_token
from collectors.errors import InputError, Unavailable

log = logging.getLogger("gpuledger.gather")
CHECKPOINT = "_gather_checkpoint.json"
CHECKPOINT_KEY = "gpuledger_gather"
SELECTOR = "app.kubernetes.io/name=gpuledger"
WORKERS = 16  # agents pulled at once: their requests wait on the network, zlib and Arrow without the GIL
LISTEN = ("0.0.0.0", 9401)


def register(subparsers) -> argparse.ArgumentParser:
    from agent.agent_settings import _listen
    from agent.durations import duration_arg

    def listen_arg(text: str) -> tuple[str, int]:
        try:
            return _listen(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    def every_arg(text: str) -> float:
        seconds = duration_arg(text)
        if seconds < 1:
            raise argparse.ArgumentTypeError(f"expected at least 1s, got {text!r}")
        return seconds

    p = subparsers.add_parser(
        "gather", help="pull the agents' closed ledger rollups into one Parquet dataset (docs/fleet.md)",
        description="Pull every agent's closed hourly ledger rollups (GET /ledger on the agents' listen "
        "address) that the dataset does not hold yet, and write them as one Parquet dataset partitioned by "
        "date: OUT/date=YYYY-MM-DD/<node>.parquet, one file per node and day that is replaced whole as its "
        "hours arrive, with the ledger's schema (docs/ledger.md). Runs once (a CronJob), or with --every in a "
        "loop (a Deployment) that serves its counts on /metrics. Safe to run again at any time: it pulls only "
        "what is new, and an hour pulled again replaces its rows. Agents that are down are counted and "
        "retried on the next run. See docs/fleet.md.")
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
    p.add_argument("--every", type=every_arg, default=None, metavar="DURATION",
                   help="run in a loop, a gather every DURATION (start to start, e.g. 15m), "
                   "instead of once: the agents are found again each time, one that fails is counted in "
                   "gpuledger_gather_agent_failures_total and logged when it starts and stops failing, and "
                   "the counts are served on --listen's /metrics. SIGTERM ends it after the gather in progress")
    p.add_argument("--listen", type=listen_arg, default=LISTEN, metavar="HOST:PORT",
                   help="with --every: address of /metrics and /healthz (default 0.0.0.0:9401)")
    p.set_defaults(handler=run)
    return p


# --------------------------------------------------------------------------- the agents


@dataclass
class Pulled:
    """What one agent gave: node-hours and rows gathered, files written, checkpoint entries, or why it failed."""

    agent: str
    hours: int = 0
    rows: int = 0
    files: int = 0
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
    """Pull one agent's closed hours that ``known`` (node_dir -> checkpoint entry) lacks, a node-day
    at a time: its new hours are read, then written into the node-day's file in one replacement."""
    from agent.rollup_table import BadRollup, rollup_tables

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
        todo = []
        for entry in sorted(entries, key=lambda e: int(e["hour"])):
            hour = int(entry["hour"])
            if have and (hour < have["hour"] or (hour == have["hour"] and entry["sha256"] == have["sha256"])):
                continue
            todo.append((hour, entry))
        days: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for hour, entry in todo:
            days.setdefault(day_name(node_dir, hour), []).append((hour, entry))
        for _name, day in sorted(days.items()):
            got, stop = [], None
            for hour, entry in day:
                try:
                    got.append((_get(agent + entry["path"], token, timeout), entry["path"]))
                except (OSError, http.client.HTTPException) as err:
                    stop, out.failed = "agent", _reason(err)  # the agent went away: what came is written
                    break
            try:
                tables = rollup_tables(got)
            except BadRollup as err:  # a damaged rollup (or one rewritten as we read it): the node waits there
                tables, stop, out.failed = err.good, "node", str(err)[:200]
            if tables:
                pieces = [(hour, t) for (hour, _), t in zip(day, tables)]
                try:
                    dataset.write_day(node_dir, pieces)
                except OSError as err:
                    out.failed = f"writing {day_name(node_dir, pieces[0][0])}: {_reason(err)}"
                    return out
                except ValueError as err:  # the node-day's file there is not ours: left as it is
                    out.failed = str(err)[:200]
                    break
                out.files += 1
                out.hours += len(pieces)
                out.rows += sum(t.num_rows for t in tables)
                hour, entry = day[len(tables) - 1]
                out.checkpoint[node_dir] = {
                    "node": entry.get("node"), "hour": hour,
                    "hour_iso": datetime.fromtimestamp(hour, timezone.utc).strftime("%Y-%m-%dT%H:00:00Z"),
                    "sha256": hashlib.sha256(got[len(tables) - 1][0]).hexdigest(), "agent": agent}
            if stop == "agent":
                return out
            if stop == "node":
                break
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




# --------------------------------------------------------------------------- the command


@dataclass
class Gathered:
    """One gather over every agent."""

    agents: int
    results: list[Pulled]

    @property
    def down(self) -> list[Pulled]:
        return [r for r in self.results if r.failed]

    def line(self, out: str) -> str:
        hours, rows, files = (sum(getattr(r, k) for r in self.results) for k in ("hours", "rows", "files"))
        text = (f"gathered {hours} node-hours ({rows:,} rows, {files} files written) from "
                f"{self.agents - len(self.down)} of {self.agents} agents into {out}")
        if self.down:
            text += f"; {len(self.down)} failed, retried next run: " + ", ".join(
                f"{r.agent} ({r.failed})" for r in self.down)
        return text


def gather_once(args: argparse.Namespace, static: list[str], token: str | None, dataset: Dataset) -> Gathered:
    """Find the agents, pull what is new from each, then write the checkpoint (only when it moved)."""
    known = load_checkpoint(dataset)
    agents = sorted(set(static + (kubernetes_agents(args) if args.kubernetes else [])))
    with ThreadPoolExecutor(min(WORKERS, max(1, len(agents))), thread_name_prefix="gather") as pool:
        results = list(pool.map(lambda a: pull_agent(a, known, dataset, token, args.timeout), agents))
    nodes = dict(known)
    for r in results:
        nodes.update(r.checkpoint)
    if nodes != known:
        dataset.write(CHECKPOINT, _checkpoint_bytes(nodes))
    return Gathered(len(agents), results)


def run(args: argparse.Namespace) -> int:
    if not args.agents and not args.kubernetes:
        raise InputError("expected --agents URL,URL or --kubernetes to find the agents", field="--agents")
    if not 0 < args.port < 65536:
        raise InputError(f"expected a port from 1 to 65535, got {args.port}", field="--port")
    static = _static_agents(args.agents) if args.agents else []
    token = load_token(args.token_file, "--token-file").read().decode() if args.token_file else None
    dataset = Dataset(args.out, args.s3_endpoint)
    if args.every is not None:
        from agent.gatherloop import run_every

        load_checkpoint(dataset)  # a damaged checkpoint is a mistake to fix before the loop starts
        return run_every(args, lambda: gather_once(args, static, token, dataset))
    done = gather_once(args, static, token, dataset)
    print(done.line(args.out))
    return 1 if done.agents and len(done.down) == done.agents else 0
