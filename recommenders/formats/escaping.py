"""Names from the ledger (teams, namespaces, workloads, instance types) are input from
anyone: a dry-run trace or an imported log can name a workload ``=HYPERLINK(...)`` or
``<img onerror=...>``. The formats put them in cells and text through these functions.
"""

from __future__ import annotations

import html
import re

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A value for a CSV cell that a spreadsheet will not run as a formula (OWASP's advice):
    a string beginning with ``= + - @``, a tab or a carriage return gets a leading single
    quote. Numbers stay numbers (a negative saving is still -12.5); None stays empty. A
    carriage return inside a string becomes a newline: Python's csv quotes a cell with a
    newline, but not one with a lone carriage return, which readers take as a row's end."""
    if value is None:
        return ""
    if isinstance(value, str):
        if value.startswith(_FORMULA_START):
            value = "'" + value
        if "\r" in value:
            value = value.replace("\r\n", "\n").replace("\r", "\n")
    return value


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|])")


def md_text(value: object) -> str:
    """Text for Markdown, a table cell included: HTML escaped (``<`` ``>`` ``&``), line breaks
    as spaces (a newline would end the table row), and the characters Markdown would read
    as emphasis, code, links or a column break (``\\ ` * _ [ ] |``) backslash-escaped."""
    text = " ".join(str(value).splitlines())
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))
