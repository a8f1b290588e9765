"""The body of ``/metrics``: prometheus_client's text formats, rendered from the agent's snapshot.

prometheus_client chooses the format from the ``Accept`` header (``choose_encoder``) and
renders the process and platform collectors, and it stays the authority on the format:
for the two formats a scraper asks for (the text format 0.0.4 and OpenMetrics 1.0.0, with
the default escaping or ``allow-utf-8``) the agent's own families are rendered here,
byte for byte as prometheus_client renders them (``tests/agent/test_exposition.py``
compares the two), and any other choice is prometheus_client's encoder over the whole
registry.

Why: prometheus_client builds a sample object per series and, for each, validates and
escapes every label name and value again; the agent shows some 230 series whose label
sets mostly stay the same from one scrape to the next. Here a family's ``# HELP`` and
``# TYPE`` lines are prometheus_client's own, rendered once, a label set's
``{name="value",...}`` is kept from the scrape before, and a sample line is its name,
that string and the value (prometheus_client's ``floatToGoString``).
"""

from __future__ import annotations

import re
from functools import partial
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client import exposition
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.utils import floatToGoString

from agent.exporter import AgentMetrics
from collectors.metricfamilies import COUNTER, FAMILIES, Metric

TEXT = "text"
OPENMETRICS = "openmetrics"
# escapings under which a name of [a-zA-Z_][a-zA-Z0-9_]* is written as it is
_PLAIN_ESCAPINGS = (om_exposition.UNDERSCORES, om_exposition.ALLOWUTF8)
_PLAIN_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

class Exposition:
    """``/metrics`` for an ``Accept`` header: (body, content type).

    ``metrics``: the agent's :class:`~agent.exporter.AgentMetrics`, a prometheus_client
    collector whose ``collect`` builds its families from its ``snapshot``."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self.snapshot = metrics.snapshot
        process, platform = ProcessCollector(registry=None), PlatformCollector(registry=None)
        self.registry = CollectorRegistry(auto_describe=False)  # everything, for any other format
        for c in (metrics, process, platform):
            self.registry.register(c)
        self.others = CollectorRegistry(auto_describe=False)  # what follows the agent's families
        for c in (process, platform):
            self.others.register(c)
        self._headers: dict[tuple[str, str], str] = {}
        self._label_sets: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}
        # every declared name is written as it is (the declarations' rules, tested)
        self._direct = all(_PLAIN_NAME.fullmatch(m.name) and all(_PLAIN_NAME.fullmatch(n) for n in m.labels)
                           for m in FAMILIES)

    def answer(self, accept: str) -> tuple[bytes, str]:
        encoder, content_type = exposition.choose_encoder(accept)
        form = _form(encoder) if self._direct else None
        if form is None:
            return encoder(self.registry), content_type
        return self.render(form).encode("utf-8") + encoder(self.others), content_type

    def render(self, form: str) -> str:
        """The agent's families in ``form`` (TEXT or OPENMETRICS), without OpenMetrics' ``# EOF``."""
        out: list[str] = []
        previous, label_sets = self._label_sets, {}
        for m, samples in self.snapshot():
            header = self._headers.get((form, m.name))
            if header is None:
                header = self._headers[(form, m.name)] = _header(m, form)
            out.append(header)
            name, names = m.sample, m.labels
            for values, value in samples:
                key = (names, values)
                labels = label_sets.get(key)
                if labels is None:
                    labels = previous.get(key)
                    if labels is None:
                        labels = _label_set(names, values)
                    label_sets[key] = labels
                out.append(f"{name}{labels} {floatToGoString(value)}\n")
        self._label_sets = label_sets  # those of this scrape: label sets gone are let go
        return "".join(out)


def _form(encoder: Callable) -> str | None:
    """TEXT or OPENMETRICS when ``encoder`` (choose_encoder's) writes the agent's names as
    they are and its samples as :meth:`Exposition.render` does; None for any other."""
    if encoder is exposition.generate_latest:
        return TEXT
    if not isinstance(encoder, partial) or encoder.args or encoder.keywords.get("escaping") not in _PLAIN_ESCAPINGS:
        return None
    if encoder.func is exposition.generate_latest and set(encoder.keywords) == {"escaping"}:
        return TEXT
    if (encoder.func is om_exposition.generate_latest and set(encoder.keywords) == {"escaping", "version"}
            and encoder.keywords["version"] == "1.0.0"):
        return OPENMETRICS
    return None


def _header(m: Metric, form: str) -> str:
    """A family's ``# HELP`` and ``# TYPE`` lines, as prometheus_client writes them."""
    kind = CounterMetricFamily if m.type == COUNTER else GaugeMetricFamily
    family = kind(m.name, m.help, labels=m.labels)
    if form == TEXT:
        return exposition.generate_latest(_Families(family)).decode("utf-8")
    text = om_exposition.generate_latest(_Families(family)).decode("utf-8")
    return text.removesuffix("# EOF\n")


def _label_set(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    """``{name="value",...}`` sorted by name, values escaped, as both formats write it; '' for none."""
    if not names:
        return ""
    pairs = sorted(zip(names, values))
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _Families:
    """A registry of given families (prometheus_client's encoders call ``collect``)."""

    def __init__(self, *families) -> None:
        self.families = families

    def collect(self) -> Iterator:
        return iter(self.families)
