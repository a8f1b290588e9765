"""Report formats, pluggable by registry: each renders the :class:`~recommenders.report.Report` to text.

A format is a name, the file it writes and a pure ``render(report) -> str``. The report
command writes every registered format; adding one is a module that calls
:func:`register` (and an import below).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from recommenders.report import Report


@dataclass(frozen=True)
class Format:
    name: str
    filename: str
    description: str
    render: Callable[[Report], str]


FORMATS: dict[str, Format] = {}


def register(name: str, filename: str, description: str) -> Callable[[Callable[[Report], str]], Callable[[Report], str]]:
    def add(render: Callable[[Report], str]) -> Callable[[Report], str]:
        FORMATS[name] = Format(name, filename, description, render)
        return render
    return add


def render_all(report: Report) -> dict[str, str]:
    """filename -> text for every registered format."""
    return {f.filename: f.render(report) for f in FORMATS.values()}


from recommenders.formats import markdown, html, recommendation_rows, focus  # noqa: E402,F401  (registration)
