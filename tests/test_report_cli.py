"""The summary a run prints at its end, and `klingflow report`: a finished run shown
again as text, JSON or the review page, from its report.json and files alone."""

from __future__ import annotations

from typing import Any

from klingflow.report import format_report
from tests.test_report_html import _report


def _last_line(report: dict[str, Any]) -> str:
    return format_report(report).splitlines()[-1]


def test_the_summary_ends_with_the_films_and_the_page() -> None:
    report = _report()
    report["outputs"]["cut"]["missing"] = ["bad"]

    assert _last_line(report) == (
        "film: runs/rocket/20261129-100000-00001/outputs/film.mp4 (10.0 s)   "
        "cut: incomplete, missing bad (failed)   "
        "review: runs/rocket/20261129-100000-00001/report.html")


def test_a_film_that_could_not_be_made_says_why() -> None:
    report = _report(outputs={"film": {
        "concat": ["launch"], "status": "incomplete", "missing": [],
        "error": "the film could not be made: launch.mp4: no such file"}})

    assert _last_line(report) == (
        "film: incomplete, the film could not be made: launch.mp4: no such file   "
        "review: runs/rocket/20261129-100000-00001/report.html")


def test_without_outputs_the_summary_still_names_the_page() -> None:
    assert _last_line(_report(outputs={})) == (
        "review: runs/rocket/20261129-100000-00001/report.html")
