"""The agent's settings, declared once: flags, environment, config file and docs.

Each setting is a field of :class:`AgentSettings` (:mod:`recommenders.settingfields`) and
can come from a flag (``--ledger-dir``), the environment (``GPULEDGER_LEDGER_DIR``) or the
``agent:`` section of the ``--config`` file (``ledger_dir:``), in that order of precedence.
All three go through the field's parser, so a bad value is reported the same way wherever
it came from: the flag, the variable, or the file and line. ``docs/agent.md``'s table is
generated from these declarations.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from agent.durations import parse_duration
from collectors.errors import InputError, describe
from collectors.kubelet.resources import DEFAULT_SOCKET
from collectors.pricing.sources import SOURCES
from collectors.yamlfile import LocatedYaml
from recommenders.settingfields import (Layer, add_flags as _add_flags, check_values, declared, env_name,
                                        env_values, flag_name, flag_values, markdown_table, resolve as _resolve,
                                        setting, yaml_values)

ENV_PREFIX = "GPULEDGER_"
PRICE_SOURCES = {source.name: source for source in SOURCES}
LIVE_LEDGER_DIR = "/var/lib/gpuledger/ledger"  # the live agent's default (a host path in the chart)
FILE_SECTION = "agent"
_ON_OFF = ("on", "off")
_AUTO_ON_OFF = ("auto", "on", "off")


def _listen(value: Any) -> tuple[str, int]:
    host, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT such as 0.0.0.0:9400, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _duration(minimum: float, maximum: float = math.inf) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        seconds = parse_duration(str(value))
        if seconds < minimum:
            raise ValueError(f"expected at least {minimum:g} s, got {value!r}")
        if seconds > maximum:
            raise ValueError(f"expected at most {maximum:g} s, got {value!r}")
        return seconds
    return parse


def _text(value: Any) -> str:
    if not isinstance(value, (str, int, float)) or str(value) == "":
        raise ValueError(f"expected a non-empty string, got {describe(value)}")
    return str(value)


def _optional_path(value: Any) -> str | None:
    return None if value in (None, "") else _text(value)


def _speed(value: Any) -> float:
    try:
        speed = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"expected a number such as 1, 60 or 3600, got {value!r}") from None
    if not speed > 0 or speed == float("inf"):
        raise ValueError(f"expected a speed above 0, got {value!r}")
    return speed


def _cron(value: Any) -> str:
    from apscheduler.triggers.cron import CronTrigger

    text = _text(value)
    try:
        CronTrigger.from_crontab(text)
    except ValueError as err:
        raise ValueError(f"expected a cron expression such as '0 6 * * 1', got {text!r} ({err})") from None
    return text


def _timezone(value: Any) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    text = _text(value)
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"expected an IANA time zone such as UTC or Europe/Berlin, got {text!r}") from None
    return text


def _names(value: Any) -> tuple[str, ...]:
    """'http,8000' or a YAML list: port names or numbers."""
    items = value if isinstance(value, (list, tuple)) else [] if value in (None, "") else str(value).split(",")
    out = tuple(str(v).strip() for v in items if str(v).strip())
    if any(not n.replace("-", "").isalnum() for n in out):
        raise ValueError(f"expected port names or numbers separated by commas, got {describe(value)}")
    return out


def _mappings(value: Any) -> dict[str, dict[str, tuple[str, ...]]]:
    """Counter names of other model servers: {server: {requests: [names], output_tokens: [...]}}
    (a YAML mapping in the config file, or the same as JSON in a flag or variable)."""
    import json

    from collectors.serving import FIELDS

    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError("expected a JSON object such as {\"my-server\": {\"requests\": [\"answers_total\"]}}") \
                from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of server names to their counters, got {describe(value)}")
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for server, fields in value.items():
        if not isinstance(fields, dict) or not fields.get("requests"):
            raise ValueError(f"server {server!r}: expected a mapping with at least `requests: [counter names]`")
        mapped = {}
        for name, counters in fields.items():
            if name not in FIELDS:
                raise ValueError(f"server {server!r}: expected fields among {', '.join(FIELDS)}, got {name!r}")
            names = [counters] if isinstance(counters, str) else counters
            if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"server {server!r}: {name}: expected a list of metric names")
            mapped[name] = tuple(names)
        out[str(server)] = mapped
    return out


@dataclass(frozen=True)
class AgentSettings:
    """Every setting of ``gpuledger agent``. Frozen: one process, one set of values."""

    listen: tuple[str, int] = setting(
        ("0.0.0.0", 9400), "Address of /metrics, /healthz and /readyz.", parse=_listen, metavar="HOST:PORT",
        shown_default="`0.0.0.0:9400`")
    node: str | None = setting(
        None, "Node name for the records and the metrics (default: $NODE_NAME, else the host name).",
        parse=_optional_path, metavar="NAME")
    interval: float = setting(
        1.0, "Time between samples. In dry-run: how often the agent takes the trace's next records (wall time).",
        parse=_duration(0.05), metavar="DURATION", shown_default="`1s`")
    account_every: float = setting(
        10.0, "How often the samples taken since the last time are attributed, counted on /metrics and added "
        "to the minute ledger. Sampling stays at --interval; accounting a batch costs about what accounting one "
        "sample cycle does, so a longer period saves CPU, and /metrics lags the GPUs by up to this much (at most "
        "2m; --interval or less: every cycle).",
        parse=_duration(0.0, 120.0), metavar="DURATION", shown_default="`10s`")
    ledger_dir: str | None = setting(
        None, "Where the minute ledger rollups go (DIR/<node>/<date>/<hour>.jsonl.gz); keep it on the host so a "
        "restart loses nothing. A restart continues the ledger there if it came from the same source (this live "
        "agent, or the same trace), and refuses another's (see --fresh-ledger).", parse=_text, metavar="DIR",
        shown_default=f"`{LIVE_LEDGER_DIR}`; in dry-run a new directory for each run")
    ledger_keep_days: float = setting(
        35.0, "Days of rollups kept on the node: older hours are deleted (by the ledger's own clock: the newest "
        "minute written), so a gatherer (`gpuledger gather`, docs/fleet.md) that is down for less than this "
        "loses nothing. The default keeps the 30 days the weekly report's commitment look-back reads.", unit="days", min=1.0 / 24, max=3660.0, metavar="DAYS")
    ledger_token_file: str | None = setting(
        None, "A file holding the bearer token a client must send to read the ledger over HTTP (GET /ledger, "
        "docs/fleet.md); read again when it changes. Without one the ledger endpoint is open to anyone who "
        "reaches the listen address.", parse=_optional_path, metavar="FILE")
    fresh_ledger: bool = setting(
        False, "Start afresh: delete the rollup files already in --ledger-dir (another trace's, say) before "
        "starting.")
    rates: str | None = setting(
        None, "Your rate card (docs/rate-card.md); before the cloud APIs and the bundled snapshot.",
        parse=_optional_path, metavar="FILE")
    # one switch per cloud price source, in the registry's order (collectors/pricing/sources.py;
    # tests/collectors/test_price_sources.py checks the two agree)
    aws: bool = setting(False, PRICE_SOURCES["aws"].setting_help)
    gcp: bool = setting(False, PRICE_SOURCES["gcp"].setting_help)
    azure: bool = setting(False, PRICE_SOURCES["azure"].setting_help)
    price_cache: str | None = setting(
        None, "Keep price API answers in DIR/prices.json across restarts.", parse=_optional_path, metavar="DIR")
    price_refresh: float = setting(
        3600.0, "How often prices are fetched again.", parse=_duration(60.0), metavar="DURATION",
        shown_default="`1h`")
    kubernetes: str = setting(
        "auto", "Learn pods and node labels from the kubelet and the API server: auto does when the "
        "pod-resources socket exists.", choices=_AUTO_ON_OFF)
    kubelet_socket: str = setting(DEFAULT_SOCKET, "The kubelet pod-resources socket.", parse=_text, metavar="PATH")
    kubeconfig: str | None = setting(
        None, "Kubeconfig for the API server (default: the in-cluster service account).", parse=_optional_path,
        metavar="FILE")
    serving: str = setting(
        "auto", "Read the request and token counters of the node's GPU pods' model servers (vLLM, SGLang, TGI, "
        "Triton; docs/unit-economics.md): auto does when Kubernetes placement is on.", choices=_AUTO_ON_OFF)
    serving_interval: float = setting(
        15.0, "How often the model servers' counters are read.", parse=_duration(1.0), metavar="DURATION",
        shown_default="`15s`")
    serving_timeout: float = setting(
        2.0, "How long one model server may take to answer; a slower one is counted and skipped, never holding "
        "up GPU sampling.", parse=_duration(0.1), metavar="DURATION", shown_default="`2s`")
    serving_ports: tuple[str, ...] = setting(
        (), "Container ports (names or numbers, comma-separated) to read /metrics from when a pod has no "
        "prometheus.io/scrape annotation.", parse=_names, metavar="PORTS", shown_default="none")
    serving_mappings: Mapping[str, Mapping[str, tuple[str, ...]]] = setting(
        {}, "Counters of other model servers: {server: {requests: [names], input_tokens: [...], output_tokens: "
        "[...], errors: [...]}} (YAML in the config file, JSON in a flag or variable).", parse=_mappings,
        metavar="JSON", shown_default="none")
    processes: str = setting(
        "on", "Per-process GPU use, to split time-shared GPUs (reads /proc/<pid>/cgroup: the pod needs hostPID).",
        choices=_ON_OFF)
    proc_root: str = setting("/proc", "Where /proc/<pid>/cgroup is read.", parse=_text, metavar="DIR")
    report_out: str | None = setting(
        None, "Write the weekly report from this node's ledger into DIR/<date>/ (off when not set; a "
        "cluster-wide report comes from Prometheus, see docs/helm.md).", parse=_optional_path, metavar="DIR")
    report_schedule: str = setting(
        "0 6 * * 1", "When the weekly report runs (cron: minute hour day month weekday).", parse=_cron,
        metavar="CRON")
    report_timezone: str = setting("UTC", "Time zone of the report schedule.", parse=_timezone, metavar="TZ")
    dry_run: bool = setting(False, "Run on a recorded trace (--trace) instead of NVML and Kubernetes.")
    trace: str | None = setting(
        None, "The trace a dry-run replays (docs/trace-format.md).", parse=_optional_path, metavar="FILE")
    speed: float = setting(
        1.0, "Dry-run: trace seconds played per wall second (60 plays an hour a minute).", parse=_speed,
        metavar="N")
    exit_at_end: bool = setting(
        False, "Dry-run: stop when the trace ends (default: keep serving the final figures).")
    log_level: str = setting("info", "Logging: debug, info, warning or error.",
                             choices=("debug", "info", "warning", "error"))


SETTINGS = declared(AgentSettings)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (a bool one a switch); a flag left out means 'from the
    environment, file or default'."""
    _add_flags(parser, AgentSettings, ENV_PREFIX)


def resolve(args: argparse.Namespace, environ: Mapping[str, str] | None = None,
            config_path: str | None = None) -> AgentSettings:
    """Every setting's value: flag, else environment, else config file, else default.

    Raises InputError naming the flag, the variable, or the file, line and key.
    """
    environ = os.environ if environ is None else environ
    settings = _resolve(AgentSettings, [
        Layer(flag_values(AgentSettings, args), lambda f, err: InputError(err, field=flag_name(f))),
        Layer(env_values(AgentSettings, environ, ENV_PREFIX),
              lambda f, err: InputError(err, field=env_name(f, ENV_PREFIX))),
        _file_layer(config_path),
    ])
    if settings.node is None:
        settings = replace(settings, node=environ.get("NODE_NAME") or socket.gethostname())
    if settings.ledger_dir is None and not settings.dry_run:
        # a dry-run without one gets its own (agent/cmd_agent.py)
        settings = replace(settings, ledger_dir=LIVE_LEDGER_DIR)
    _check_together(settings)
    return settings


def check_file(path: str) -> None:
    """Check the ``agent:`` section of a config file alone (``gpuledger config FILE``);
    InputError naming the line of the first bad value."""
    check_values(AgentSettings, _file_layer(path))


def _file_layer(path: str | None) -> Layer:
    if path is None:
        return Layer({}, lambda f, err: InputError(err))
    doc = LocatedYaml(path)
    values = yaml_values(AgentSettings, doc, (FILE_SECTION,), "agent setting") if isinstance(doc.data, dict) else {}
    return Layer(values, lambda f, err: doc.error((FILE_SECTION, f.name), err))


def _check_together(s: AgentSettings) -> None:
    if s.ledger_token_file:
        from agent.ledgerserve import load_token

        load_token(s.ledger_token_file, "--ledger-token-file")
    if s.dry_run:
        if not s.trace:
            raise InputError("--dry-run needs --trace FILE (make one with `gpuledger simulate --out FILE`)",
                             field="--trace")
        trace = Path(s.trace)
        if trace.is_dir():
            raise InputError("expected a trace file (.jsonl or .jsonl.gz, from `gpuledger simulate`, `record` or "
                             "`import`), found a directory", file=s.trace, field="--trace")
        if not trace.is_file():
            raise InputError("no such trace file (make one with `gpuledger simulate --out FILE`)",
                             file=s.trace, field="--trace")
    elif s.trace:
        raise InputError("--trace is for --dry-run; add --dry-run to replay it", field="--trace")



def settings_markdown() -> str:
    """The table of ``docs/agent.md``, made from the declarations."""
    return markdown_table(AgentSettings, ("flag", "environment", "setting", "default", "what it does"), ENV_PREFIX,
                          headers={"setting": "`agent:` key"})
