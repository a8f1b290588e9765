"""Cloud prices kept between fetches: fresh for an hour, last good ones kept through outages.

The agent must price every GPU-second even while AWS or GCP is unreachable or
throttling us, and a restart must not wait on (or be blocked by) those APIs. So every
answer a price API gives is stored under a key, in memory and on disk (one JSON file,
written whole or not at all), with the time it was fetched. An answer older than
``max_age_s`` (an hour by default) is fetched again; if that fails, the old answer is
kept and used, the failure is counted per source (for the
``gpuledger_price_fetch_failures_total`` metric) and logged once per outage, and the
key is not retried for ``retry_after_s`` so a dead endpoint does not slow every lookup.

Values are plain JSON data; the price sources turn them into their own types. Nothing
that identifies a caller (keys, tokens, profiles) is ever stored or logged: only the
price keys (instance type, region) and the error's class and code.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from collectors.atomicfile import write_text

log = logging.getLogger("gpuledger.pricing")
log.addHandler(logging.NullHandler())  # a library logs; the agent decides where to

CACHE_FILE = "prices.json"
CACHE_FORMAT = "gpuledger-price-cache"
CACHE_VERSION = 1
DEFAULT_MAX_AGE_S = 3600.0
DEFAULT_RETRY_AFTER_S = 300.0

Key = tuple[str, ...]


class PriceApiError(Exception):
    """A price API could not answer now: unreachable, throttling, no credentials.

    Not the user's mistake (that is an InputError); the cache absorbs it. ``reason``
    is safe to log: it never carries credentials.
    """

    def __init__(self, source: str, reason: str, throttled: bool = False) -> None:
        self.source = source
        self.reason = reason
        self.throttled = throttled
        super().__init__(f"{source}: {reason}")


@dataclass(frozen=True)
class Lookup:
    """What the cache answered for one key, and how (for ``prices show``)."""

    value: Any  # the JSON value, or None when there is none
    status: str  # "fresh", "fetched", "stale" (kept after a failure), "unavailable"
    fetched_at: float | None = None
    error: str | None = None

    @property
    def found(self) -> bool:
        return self.value is not None


@dataclass
class _Entry:
    value: Any
    fetched_at: float


class PriceCache:
    """Answers of price APIs by key; see the module docstring for the rules.

    ``directory`` None keeps the cache in memory only (tests, one-shot commands).
    ``clock`` is injectable so expiry is testable without sleeping.
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        retry_after_s: float = DEFAULT_RETRY_AFTER_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(directory) / CACHE_FILE if directory is not None else None
        self.max_age_s = max_age_s
        self.retry_after_s = retry_after_s
        self.clock = clock
        self._entries: dict[Key, _Entry] = {}
        self._fetchers: dict[Key, Callable[[], Any]] = {}
        self._retry_at: dict[Key, float] = {}
        self._faults: dict[str, int] = {}
        self._failing: set[str] = set()
        self._write_warned = False
        if self.path is not None:
            self._load()

    # ------------------------------------------------------------------ lookups

    def lookup(self, key: Key, fetch: Callable[[], Any]) -> Lookup:
        """The value for ``key``, fetching it when missing or older than ``max_age_s``.

        ``fetch`` returns JSON data (None for "the API knows no such thing", which is
        cached too) or raises :class:`PriceApiError`.
        """
        self._fetchers[key] = fetch
        entry = self._entries.get(key)
        now = self.clock()
        if entry is not None and now - entry.fetched_at < self.max_age_s:
            return Lookup(entry.value, "fresh", entry.fetched_at)
        if now < self._retry_at.get(key, float("-inf")):
            return self._fallback(key, entry, "not retried yet after a failure")
        return self._fetch(key, fetch, entry)

    def get(self, key: Key, fetch: Callable[[], Any]) -> Any:
        return self.lookup(key, fetch).value

    def refresh_expired(self) -> int:
        """Fetch again every known key older than ``max_age_s``; returns how many failed.

        The agent's scheduler calls this (hourly) so prices are current before they are
        needed, not on the first sample after they expire.
        """
        failed = 0
        for key, fetch in list(self._fetchers.items()):
            entry = self._entries.get(key)
            if entry is None or self.clock() - entry.fetched_at >= self.max_age_s:
                if self._fetch(key, fetch, entry).status in ("stale", "unavailable"):
                    failed += 1
        return failed

    @property
    def faults(self) -> Mapping[str, int]:
        """Failed fetches per source (``aws-api``, ``gcp-api``) since start."""
        return dict(self._faults)

    def keys(self) -> Iterable[Key]:
        return list(self._entries)

    # ------------------------------------------------------------------ internals

    def _fetch(self, key: Key, fetch: Callable[[], Any], entry: _Entry | None) -> Lookup:
        source = key[0]
        try:
            value = fetch()
        except PriceApiError as err:
            self._faults[source] = self._faults.get(source, 0) + 1
            self._retry_at[key] = self.clock() + self.retry_after_s
            if source not in self._failing:
                self._failing.add(source)
                kept = "keeping the last good prices" if entry is not None else "no earlier prices"
                log.warning("price source %s failed (%s); %s, next try in %.0f s",
                            source, err.reason, kept, self.retry_after_s)
            return self._fallback(key, entry, err.reason)
        now = self.clock()
        self._entries[key] = _Entry(value, now)
        self._retry_at.pop(key, None)
        if source in self._failing:
            self._failing.discard(source)
            log.info("price source %s answers again", source)
        self._save()
        return Lookup(value, "fetched", now)

    def _fallback(self, key: Key, entry: _Entry | None, reason: str) -> Lookup:
        if entry is not None:
            return Lookup(entry.value, "stale", entry.fetched_at, reason)
        return Lookup(None, "unavailable", None, reason)

    def _load(self) -> None:
        """Read the last run's answers; a damaged cache is only a cache, so it is skipped."""
        assert self.path is not None
        if not self.path.exists():
            return
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if doc.get("format") != CACHE_FORMAT or doc.get("version") != CACHE_VERSION:
                raise ValueError("not a gpuledger price cache of this version")
            for item in doc["entries"]:
                self._entries[tuple(str(k) for k in item["key"])] = _Entry(item["value"], float(item["fetched_at"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            log.warning("ignoring the price cache %s: %s", self.path, err)
            self._entries.clear()

    def _save(self) -> None:
        if self.path is None:
            return
        doc = {
            "format": CACHE_FORMAT, "version": CACHE_VERSION,
            "entries": [{"key": list(k), "fetched_at": e.fetched_at, "value": e.value}
                        for k, e in sorted(self._entries.items())],
        }
        try:
            write_text(self.path, json.dumps(doc, indent=1, sort_keys=True) + "\n")
        except OSError as err:  # a read-only cache dir must not stop pricing
            if self._write_warned:
                return
            self._write_warned = True
            log.warning("cannot write the price cache %s: %s", self.path, err.strerror)
