"""The node's closed ledger rollups, served read-only over the agent's HTTP address.

``GET /ledger?since=T`` lists the closed hours (JSON: one object per file, oldest first)
and ``GET /ledger/<node_dir>/<YYYY-MM-DD>/<HH>.jsonl.gz`` returns one file as it is on
disk, for ``gpuledger gather`` (``agent/cmd_gather.py``, ``docs/fleet.md``) to pull.

An hour is *closed* when the agent will not write it again: its end plus the book's
``keep_s`` (how long late rows may still land in it) is behind the newest minute written,
or a dry-run's trace has ended and everything is on disk. The hour being written is
neither listed nor served.

Only names the agent itself writes are served: three path components, the node's
directory (one safe component, :func:`recommenders.ledger_schema.node_dirname`), a date
and an hour file; ``..``, absolute paths, encoded slashes and NUL are refused with 400,
and a symbolic link anywhere below the ledger directory (or a path that resolves outside
it) is not found (404). With a token file, every ``/ledger`` request needs
``Authorization: Bearer <token>`` (401 otherwise); the file is read again when it changes.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import json
import os
import re
import stat
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs, quote, unquote

from collectors.errors import InputError
from recommenders.ledger_schema import HOUR, ROLLUP_HEADER, ROLLUP_SUFFIX

PREFIX = "/ledger"
_DATE = re.compile(r"\d{4}-\d\d-\d\d")
_FILE = re.compile(r"(\d\d)" + re.escape(ROLLUP_SUFFIX))
TEXT = "text/plain; charset=utf-8"
Answer = tuple[int, bytes, str]


def parse_since(text: str) -> float:
    """Unix seconds, or an ISO 8601 time (UTC when it names no zone); ValueError otherwise."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(f"expected Unix seconds or an ISO 8601 time, got {text[:40]!r}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return when.timestamp()
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"expected a finite time, got {text[:40]!r}")
    return value


def hour_of(date: str, file: str) -> int | None:
    """The Unix hour a rollup's date folder and file name stand for (None: not a rollup name)."""
    m = _FILE.fullmatch(file)
    if not _DATE.fullmatch(date) or not m or int(m.group(1)) > 23:
        return None
    try:
        day = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return calendar.timegm(day.timetuple()) + int(m.group(1)) * HOUR


def url_path(node_dir: str, date: str, file: str) -> str:
    return f"{PREFIX}/{quote(node_dir, safe='')}/{date}/{file}"


def load_token(path: str, flag: str) -> "TokenFile":
    """The token file a flag names, read once now; InputError (file and flag) when it
    cannot be read or is empty: the agent and ``gather`` check it before any work."""
    try:
        return TokenFile(path)
    except OSError as err:
        raise InputError(f"cannot read the bearer token: {err.strerror}", file=path, field=flag) from None
    except ValueError:
        raise InputError("empty, expected a bearer token", file=path, field=flag) from None


class TokenFile:
    """The bearer token in a file, read again when the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._token = b""
        self._lock = threading.Lock()
        self.read()

    def read(self) -> bytes:
        """The token; OSError when the file cannot be read, ValueError when it is empty."""
        with self._lock:
            st = os.stat(self.path)
            if self._seen != (st.st_mtime_ns, st.st_size):
                token = Path(self.path).read_bytes().strip()
                if not token:
                    raise ValueError(f"{self.path}: empty, expected a bearer token")
                self._token, self._seen = token, (st.st_mtime_ns, st.st_size)
            return self._token

    def allows(self, authorization: str | None) -> bool:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return False
        return hmac.compare_digest(given.strip().encode(), self.read())


class LedgerEndpoint:
    """Answers ``/ledger`` requests from the rollups in ``directory``.

    ``closed_before``: hours ending at or before this time are closed (``inf``: all).
    """

    def __init__(self, directory: str | Path, closed_before: Callable[[], float],
                 token: TokenFile | None = None) -> None:
        self.directory = Path(directory)
        self.closed_before = closed_before
        self.token = token
        self._facts: dict[str, tuple[tuple[int, int], str, str | None]] = {}  # path -> (mtime, size), sha, node
        self._lock = threading.Lock()

    def answer(self, raw_path: str, headers: Mapping[str, str]) -> Answer:
        path, _, query = raw_path.partition("?")
        if self.token is not None:
            try:
                allowed = self.token.allows(headers.get("Authorization"))
            except (OSError, ValueError) as err:
                return 503, f"cannot read the ledger token file: {err}\n".encode(), TEXT
            if not allowed:
                return 401, b"the ledger needs Authorization: Bearer <token>\n", TEXT
        if path in (PREFIX, PREFIX + "/"):
            return self._listing(query)
        return self._file(path[len(PREFIX) + 1:])

    # ------------------------------------------------------------------ listing

    def _listing(self, query: str) -> Answer:
        since = -float("inf")
        values = parse_qs(query).get("since")
        if values:
            try:
                since = parse_since(values[-1])
            except ValueError as err:
                return 400, f"since: {err}\n".encode(), TEXT
        closed = self.closed_before()
        out: list[dict[str, Any]] = []
        for node_dir, date, file, hour, full in self._rollups():
            if hour < since or hour + HOUR > closed:
                continue
            try:
                st = full.stat()
                sha, node = self._facts_of(full, st)
            except (OSError, ValueError):
                continue  # removed or rewritten meanwhile: the next listing has it
            out.append({"node": node, "node_dir": node_dir, "hour": hour,
                        "hour_iso": datetime.fromtimestamp(hour, timezone.utc).strftime("%Y-%m-%dT%H:00:00Z"),
                        "path": url_path(node_dir, date, file), "size": st.st_size, "sha256": sha})
        out.sort(key=lambda e: (e["hour"], e["node_dir"]))
        return 200, (json.dumps(out) + "\n").encode(), "application/json"

    def _rollups(self):
        """(node_dir, date, file, hour, path) of every rollup below the directory, no links followed."""
        try:
            nodes = sorted(os.scandir(self.directory), key=lambda e: e.name)
        except OSError:
            return
        for node in nodes:
            if not node.is_dir(follow_symlinks=False) or node.name.startswith("."):
                continue
            try:
                dates = sorted(os.scandir(node.path), key=lambda e: e.name)
            except OSError:
                continue
            for date in dates:
                if not date.is_dir(follow_symlinks=False) or not _DATE.fullmatch(date.name):
                    continue
                try:
                    files = sorted(os.scandir(date.path), key=lambda e: e.name)
                except OSError:
                    continue
                for f in files:
                    hour = hour_of(date.name, f.name)
                    if hour is not None and f.is_file(follow_symlinks=False):
                        yield node.name, date.name, f.name, hour, Path(f.path)

    def _facts_of(self, path: Path, st: os.stat_result) -> tuple[str, str | None]:
        """The sha256 of a file and the node its header names, remembered while it is unchanged."""
        key = str(path)
        seen = (st.st_mtime_ns, st.st_size)
        with self._lock:
            known = self._facts.get(key)
        if known is not None and known[0] == seen:
            return known[1], known[2]
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        node = None
        try:
            import gzip

            first = gzip.decompress(data).split(b"\n", 1)[0]
            header = json.loads(first)
            if isinstance(header, dict) and ROLLUP_HEADER in header and isinstance(header.get("node"), str):
                node = header["node"]
        except (OSError, EOFError, ValueError, RecursionError):
            pass
        with self._lock:
            self._facts[key] = (seen, sha, node)
            if len(self._facts) > 100_000:
                self._facts.clear()
        return sha, node

    # ------------------------------------------------------------------ one file

    def _file(self, rest: str) -> Answer:
        raw = rest.split("/")
        if len(raw) != 3:
            return 400, b"expected /ledger/<node_dir>/<YYYY-MM-DD>/<HH>.jsonl.gz\n", TEXT
        try:
            parts = [unquote(p, errors="strict") for p in raw]
        except UnicodeDecodeError:
            return 400, b"expected a UTF-8 path\n", TEXT
        node_dir, date, file = parts
        bad = any(p in ("", ".", "..") or p.startswith(".") or any(c in p for c in "/\\\0") for p in parts)
        hour = hour_of(date, file)
        if bad or hour is None:
            return 400, b"expected /ledger/<node_dir>/<YYYY-MM-DD>/<HH>.jsonl.gz\n", TEXT
        if hour + HOUR > self.closed_before():
            return 404, b"that hour is not closed yet: try the listing, GET /ledger\n", TEXT
        full = self.directory / node_dir / date / file
        try:
            for step in (self.directory / node_dir, self.directory / node_dir / date, full):
                if stat.S_ISLNK(os.lstat(step).st_mode):
                    return 404, b"not found\n", TEXT
            root = os.path.realpath(self.directory)
            if os.path.commonpath([root, os.path.realpath(full)]) != root or not full.is_file():
                return 404, b"not found\n", TEXT
            data = full.read_bytes()
        except (OSError, ValueError):
            return 404, b"not found\n", TEXT
        return 200, data, "application/gzip"
