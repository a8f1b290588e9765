"""Names from the ledger cannot run as spreadsheet formulas or break report.md (issue 15, item 18)."""

from __future__ import annotations

import csv
import io
import re

import pytest

from recommenders.formats import render_all
from recommenders.formats.escaping import csv_cell, md_text
from recommenders.report import build_report
from tests.recommenders.test_report_rows import T0, frame, gpu_minutes

HOSTILE = {
    "namespace": "=HYPERLINK(\"http://x\";\"a\")", "name": "+cmd|' /C calc'!A0", "team": "-2+3",
    "node": "@SUM(A1)", "instance_type": "\tp4d", "region": "\r=us", "model": "=NVIDIA",
}


@pytest.fixture(scope="module")
def report_files() -> dict[str, str]:
    week = range(0, 7 * 24 * 60, 2)
    idle = gpu_minutes(pod="p1", minutes=week, util=0.0, mem_gib=0.0, namespace=HOSTILE["namespace"],
                       name=HOSTILE["name"], team=HOSTILE["team"], node=HOSTILE["node"],
                       instance_type=HOSTILE["instance_type"], region=HOSTILE["region"], model=HOSTILE["model"])
    markup = gpu_minutes(pod="p2", minutes=week, util=0.0, mem_gib=0.0, namespace="<img src=x onerror=alert(1)>",
                         name="a|b\nc *d* [e](http://x) `f`", team="t<b>", device="GPU-2")
    free = gpu_minutes(pod="p3", minutes=week, allocated=False, device="GPU-3", node=HOSTILE["node"])
    r = build_report(frame(idle, markup, free), T0 + 7 * 86400, 7 * 86400, "USD", T0)
    assert r.recommendations, "the idle workloads are recommended for release"
    return render_all(r)


FORMULA = re.compile(r"^[=+\-@\t\r]")


def _cells(text: str) -> list[dict[str, str]]:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert len({len(r) for r in rows}) == 1, "every row as wide as the header"
    return [dict(zip(rows[0], r)) for r in rows[1:]]


@pytest.mark.parametrize("name", ["recommendations.csv", "focus.csv"])
def test_no_csv_cell_starts_a_formula(report_files, name):
    rows = _cells(report_files[name])
    assert rows
    cells = [v for row in rows for v in row.values()]
    starts = [v for v in cells if FORMULA.match(v) and not re.fullmatch(r"-\d+(\.\d+)?(e[-+]?\d+)?", v)]
    assert not starts, starts
    joined = "\n".join(cells)
    for value in ("'=HYPERLINK", "'-2+3") + (("'+cmd|' /C calc'!A0",) if name == "recommendations.csv" else ()):
        assert value in joined, (value, name)  # neutralised, not dropped


def test_negative_numbers_stay_numbers_in_the_csv():
    assert csv_cell(-12.5) == -12.5 and csv_cell(-3) == -3 and csv_cell(0.0) == 0.0
    assert csv_cell("-12.5") == "'-12.5" and csv_cell("=1") == "'=1" and csv_cell("a=1") == "a=1"
    assert csv_cell(None) == "" and csv_cell("\tx") == "'\tx" and csv_cell("\rx") == "'\nx"
    assert csv_cell("a\r\nb\rc") == "a\nb\nc"


def test_recommendations_csv_keeps_its_numbers(report_files):
    for row in _cells(report_files["recommendations.csv"]):
        float(row["monthly_savings"])  # still a plain number, no quote
        assert not row["monthly_savings"].startswith("'")


def test_report_md_escapes_html_and_keeps_tables_whole(report_files):
    md = report_files["report.md"]
    assert "<img" not in md and "<b>" not in md and "&lt;img src=x onerror=alert(1)&gt;" in md
    assert "onerror=alert(1)>" not in md
    # the workload name with a newline, a pipe and Markdown stays on one table row, as text
    rows = [line for line in md.splitlines() if "a\\|b c" in line]
    assert rows and all(r.startswith("|") or r.startswith("- ") for r in rows), rows
    assert "\\*d\\*" in md and "\\[e\\](http://x)" in md and "\\`f\\`" in md


def test_each_table_row_has_as_many_cells_as_its_header(report_files):
    lines = report_files["report.md"].splitlines()
    width = None
    for line in lines:
        if not line.startswith("|"):
            width = None
            continue
        n = len(re.split(r"(?<!\\)\|", line)) - 2
        if width is None:
            width = n
        assert n == width, line


def test_md_text():
    assert md_text("a|b\nc\r\nd") == "a\\|b c d"
    assert md_text("<script>&") == "&lt;script&gt;&amp;"
    assert md_text("*x* _y_ [z](u) `c` \\") == "\\*x\\* \\_y\\_ \\[z\\](u) \\`c\\` \\\\"
