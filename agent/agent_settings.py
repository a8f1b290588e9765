"""The agent's settings, declared once: flags, environment, config file and docs.

Each setting can come from a flag (``--ledger-dir``), the environment
(``GPULEDGER_LEDGER_DIR``) or the ``agent:`` section of the ``--config`` file
(``ledger_dir:``), in that order of precedence. All three go through the same parser, so
a bad value is reported the same way wherever it came from: the flag, the variable, or
the file and line. ``docs/agent.md``'s table is generated from these declarations.
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from agent.durations import parse_duration
from collectors.errors import InputError, describe
from collectors.kubelet.resources import DEFAULT_SOCKET
from collectors.pricing.sources import SOURCES as PRICE_SOURCES
from collectors.yamlfile import LocatedYaml

ENV_PREFIX = "GPULEDGER_"
LIVE_LEDGER_DIR = "/var/lib/gpuledger/ledger"  # the live agent's default (a host path in the chart)
FILE_SECTION = "agent"


@dataclass(frozen=True)
class Setting:
    """One setting. ``parse`` turns a string (or a YAML scalar) into the value, raising
    ValueError with what was expected."""

    name: str
    default: Any
    help: str
    parse: Callable[[Any], Any]
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    shown_default: str | None = None  # the default as the docs and --help say it, when not ``default``

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


def _listen(value: Any) -> tuple[str, int]:
    host, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT such as 0.0.0.0:9400, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _duration(minimum: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        seconds = parse_duration(str(value))
        if seconds < minimum:
            raise ValueError(f"expected at least {minimum:g} s, got {value!r}")
        return seconds
    return parse


def _text(value: Any) -> str:
    if not isinstance(value, (str, int, float)) or str(value) == "":
        raise ValueError(f"expected a non-empty string, got {describe(value)}")
    return str(value)


def _optional_path(value: Any) -> str | None:
    return None if value in (None, "") else _text(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower() if not isinstance(value, bool) else ("on" if value else "off")
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return text
    return parse


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


SETTINGS: tuple[Setting, ...] = (
    Setting("listen", "0.0.0.0:9400", "Address of /metrics, /healthz and /readyz.", _listen, "HOST:PORT"),
    Setting("node", None, "Node name for the records and the metrics (default: $NODE_NAME, else the host name).",
            _optional_path, "NAME"),
    Setting("interval", "1s", "Time between samples. In dry-run: how often the agent takes the trace's next "
            "records (wall time).", _duration(0.05), "DURATION"),
    Setting("ledger_dir", None, "Where the minute ledger rollups go (DIR/<node>/<date>/<hour>.jsonl.gz); "
            "keep it on the host so a restart loses nothing. A restart continues the ledger there if it came "
            "from the same source (this live agent, or the same trace), and refuses another's "
            "(see --fresh-ledger).", _text, "DIR",
            shown_default=f"`{LIVE_LEDGER_DIR}`; in dry-run a new directory for each run"),
    Setting("fresh_ledger", False, "Start afresh: delete the rollup files already in --ledger-dir (another "
            "trace's, say) before starting.", _bool),
    Setting("rates", None, "Your rate card (docs/rate-card.md); before the cloud APIs and the bundled snapshot.",
            _optional_path, "FILE"),
    *(Setting(source.name, False, source.setting_help, _bool) for source in PRICE_SOURCES),
    Setting("price_cache", None, "Keep price API answers in DIR/prices.json across restarts.", _optional_path, "DIR"),
    Setting("price_refresh", "1h", "How often prices are fetched again.", _duration(60.0), "DURATION"),
    Setting("kubernetes", "auto", "Learn pods and node labels from the kubelet and the API server: auto does when "
            "the pod-resources socket exists.", _choice("auto", "on", "off"), choices=("auto", "on", "off")),
    Setting("kubelet_socket", DEFAULT_SOCKET, "The kubelet pod-resources socket.", _text, "PATH"),
    Setting("kubeconfig", None, "Kubeconfig for the API server (default: the in-cluster service account).",
            _optional_path, "FILE"),
    Setting("serving", "auto", "Read the request and token counters of the node's GPU pods' model servers "
            "(vLLM, SGLang, TGI, Triton; docs/unit-economics.md): auto does when Kubernetes placement is on.",
            _choice("auto", "on", "off"), choices=("auto", "on", "off")),
    Setting("serving_interval", "15s", "How often the model servers' counters are read.", _duration(1.0),
            "DURATION"),
    Setting("serving_timeout", "2s", "How long one model server may take to answer; a slower one is counted "
            "and skipped, never holding up GPU sampling.", _duration(0.1), "DURATION"),
    Setting("serving_ports", (), "Container ports (names or numbers, comma-separated) to read /metrics from "
            "when a pod has no prometheus.io/scrape annotation.", _names, "PORTS", shown_default="none"),
    Setting("serving_mappings", {}, "Counters of other model servers: {server: {requests: [names], "
            "input_tokens: [...], output_tokens: [...], errors: [...]}} (YAML in the config file, JSON in a "
            "flag or variable).", _mappings, "JSON", shown_default="none"),
    Setting("processes", "on", "Per-process GPU use, to split time-shared GPUs (reads /proc/<pid>/cgroup: "
            "the pod needs hostPID).", _choice("on", "off"), choices=("on", "off")),
    Setting("proc_root", "/proc", "Where /proc/<pid>/cgroup is read.", _text, "DIR"),
    Setting("report_out", None, "Write the weekly report from this node's ledger into DIR/<date>/ (off when "
            "not set; a cluster-wide report comes from Prometheus, see docs/helm.md).", _optional_path, "DIR"),
    Setting("report_schedule", "0 6 * * 1", "When the weekly report runs (cron: minute hour day month weekday).",
            _cron, "CRON"),
    Setting("report_timezone", "UTC", "Time zone of the report schedule.", _timezone, "TZ"),
    Setting("dry_run", False, "Run on a recorded trace (--trace) instead of NVML and Kubernetes.", _bool),
    Setting("trace", None, "The trace a dry-run replays (docs/trace-format.md).", _optional_path, "FILE"),
    Setting("speed", 1.0, "Dry-run: trace seconds played per wall second (60 plays an hour a minute).",
            _speed, "N"),
    Setting("exit_at_end", False, "Dry-run: stop when the trace ends (default: keep serving the final figures).",
            _bool),
    Setting("log_level", "info", "Logging: debug, info, warning or error.",
            _choice("debug", "info", "warning", "error"), choices=("debug", "info", "warning", "error")),
)
BOOLEAN = {*(source.name for source in PRICE_SOURCES), "dry_run", "exit_at_end", "fresh_ledger"}


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; a flag left out means 'from the environment, file or default'."""
    for s in SETTINGS:
        parser.add_argument(s.flag, dest=s.name, default=None, help=flag_help(s),
                            **({"action": "store_const", "const": "true"} if s.name in BOOLEAN
                               else {"metavar": s.metavar, "choices": s.choices}))


def flag_help(s: Setting) -> str:
    """``--help`` text of a setting: its help, its default, its variable; one period each."""
    text = s.help.rstrip(".")
    default = (s.shown_default or "").replace("`", "") or (None if s.default is None or s.name in BOOLEAN
                                                          else str(s.default))
    if default:
        text += f" (default {default})"
    return f"{text}. Env {s.env}."


def resolve(args: argparse.Namespace, environ: Mapping[str, str] | None = None,
            config_path: str | None = None) -> dict[str, Any]:
    """Every setting's value: flag, else environment, else config file, else default.

    Raises InputError naming the flag, the variable, or the file, line and key.
    """
    environ = os.environ if environ is None else environ
    doc, section = _file_section(config_path)
    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw, where = getattr(args, s.name, None), (lambda err, s=s: InputError(err, field=s.flag))
        if raw is None and s.env in environ:
            raw, where = environ[s.env], (lambda err, s=s: InputError(err, field=s.env))
        if raw is None and section.get(s.name) is not None:
            raw, where = section[s.name], (lambda err, s=s: doc.error((FILE_SECTION, s.name), err))  # type: ignore[union-attr]
        if raw is None:
            values[s.name] = None if s.default is None else s.parse(s.default)
            continue
        try:
            values[s.name] = s.parse(raw)
        except ValueError as err:
            raise where(str(err)) from None
    if values["node"] is None:
        values["node"] = environ.get("NODE_NAME") or socket.gethostname()
    if values["ledger_dir"] is None and not values["dry_run"]:
        values["ledger_dir"] = LIVE_LEDGER_DIR  # a dry-run without one gets its own (agent/cmd_agent.py)
    _check_together(values, environ)
    return values


def check_file(path: str) -> None:
    """Check the ``agent:`` section of a config file alone (``gpuledger config FILE``);
    InputError naming the line of the first bad value."""
    doc, section = _file_section(path)
    for s in SETTINGS:
        if section.get(s.name) is not None:
            try:
                s.parse(section[s.name])
            except ValueError as err:
                raise doc.error((FILE_SECTION, s.name), str(err)) from None  # type: ignore[union-attr]


def _file_section(path: str | None) -> tuple[LocatedYaml | None, dict[str, Any]]:
    if path is None:
        return None, {}
    doc = LocatedYaml(path)
    data = doc.data if isinstance(doc.data, dict) else {}
    section = data.get(FILE_SECTION)
    if section is None:
        return doc, {}
    if not isinstance(section, dict):
        raise doc.error((FILE_SECTION,), "expected a mapping of agent settings")
    known = {s.name for s in SETTINGS}
    for key in section:
        if key not in known:
            raise doc.error((FILE_SECTION, key), f"unknown agent setting; expected one of {', '.join(sorted(known))}")
    return doc, section


def _check_together(values: dict[str, Any], environ: Mapping[str, str]) -> None:
    if values["dry_run"]:
        if not values["trace"]:
            raise InputError("--dry-run needs --trace FILE (make one with `gpuledger simulate --out FILE`)",
                             field="--trace")
        trace = Path(values["trace"])
        if trace.is_dir():
            raise InputError("expected a trace file (.jsonl or .jsonl.gz, from `gpuledger simulate`, `record` or "
                             "`import`), found a directory", file=values["trace"], field="--trace")
        if not trace.is_file():
            raise InputError("no such trace file (make one with `gpuledger simulate --out FILE`)",
                             file=values["trace"], field="--trace")
    elif values["trace"]:
        raise InputError("--trace is for --dry-run; add --dry-run to replay it", field="--trace")


def settings_markdown() -> str:
    """The table of ``docs/agent.md``, made from the declarations."""
    rows = ["| flag | environment | `agent:` key | default | what it does |", "|---|---|---|---|---|"]
    for s in SETTINGS:
        default = s.shown_default or ("—" if s.default is None else f"`{s.default}`")
        rows.append(f"| `{s.flag}` | `{s.env}` | `{s.name}` | {default} | {s.help} |")
    return "\n".join(rows) + "\n"
