"""The summary a run prints at its end, and `klingflow report`: a finished run shown
again as text, JSON or the review page, from its report.json and files alone."""

from __future__ import annotations

import json
import webbrowser
from pathlib import Path
from typing import Any

import pytest

from klingflow.report import format_report
from klingflow.report.load import find_run_dir
from tests.runhelpers import (
    frames_step,
    only_run_dir,
    read_report,
    run_cli,
    write_pipeline,
)
from tests.test_report_html import _report

FAST = ["--sim-speed", "20"]


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


# ---- klingflow report -------------------------------------------------------------------


def _film_pipeline(folder: Path, name: str) -> Path:
    path = write_pipeline(folder, name, [
        frames_step("one", "a quiet lake at dawn"),
        frames_step("two", "the lake at noon", image="${steps.one.last_frame}")])
    path.write_text(path.read_text(encoding="utf-8") + "outputs:\n  film: {concat: [one, two]}\n",
                    encoding="utf-8")
    return path


def test_a_finished_run_is_shown_again_from_its_files(
        isolated: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    runs = str(isolated / "runs")
    code, run_out, err = run_cli(["run", str(_film_pipeline(isolated / "p", "lake")), "--sim",
                                  *FAST, "--out", runs], capsys)
    assert code == 0, err
    run_dir = only_run_dir(isolated / "runs", "lake")
    page = run_dir / "report.html"
    written = page.read_text(encoding="utf-8")

    assert run_cli(["report", "--out", runs], capsys) == (0, run_out, "")
    assert run_cli(["report", str(run_dir), "--text"], capsys) == (0, run_out, "")
    code, out, err = run_cli(["report", str(run_dir), "--json"], capsys)
    assert (code, err) == (0, "") and json.loads(out) == read_report(run_dir)

    page.unlink()
    assert run_cli(["report", str(run_dir), "--html"], capsys) == (0, f"{page}\n", "")
    assert page.read_text(encoding="utf-8") == written

    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    assert run_cli(["report", "--out", runs, "--open"], capsys)[0] == 0
    assert opened == [page.resolve().as_uri()]


def test_the_latest_report_says_when_a_newer_run_has_none(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run killed before it ended writes no report: `report` showed the one before it,
    and did not say so."""
    runs = isolated / "runs"
    code, run_out, err = run_cli(["run", str(_film_pipeline(isolated / "p", "lake")), "--sim",
                                  *FAST, "--out", str(runs)], capsys)
    assert code == 0, err
    shown = only_run_dir(runs, "lake")
    killed = runs / "lake" / "29991231-235959-00001"
    killed.mkdir()
    (killed / "journal.jsonl").write_text('{"event": "run"}\n', encoding="utf-8")
    assert run_cli(["report", "--out", str(runs)], capsys) == (0, run_out, (
        f"klingflow: note: {killed} is newer, but has no report.json yet: it is still "
        "running, or was stopped before it ended (continue it with run --resume); this is "
        f"the newest report, {shown}\n"))
    assert run_cli(["report", str(shown)], capsys) == (0, run_out, "")  # named: no note


def test_the_latest_run_is_the_newest_of_any_pipeline(tmp_path: Path) -> None:
    for name, run_id in (("b", "20261129-100000-00001"), ("a", "20261129-110000-00002"),
                         ("a", "20261128-120000-00003")):
        (tmp_path / name / run_id).mkdir(parents=True)
        (tmp_path / name / run_id / "report.json").write_text("{}", encoding="utf-8")
    (tmp_path / "c" / "20261130-000000-00004").mkdir(parents=True)  # still running: no report

    assert find_run_dir(tmp_path) == tmp_path / "a" / "20261129-110000-00002"


def _broken_run(tmp_path: Path, report: str | None) -> Path:
    run_dir = tmp_path / "runs" / "p" / "20261129-100000-00001"
    run_dir.mkdir(parents=True)
    if report is not None:
        (run_dir / "report.json").write_text(report, encoding="utf-8")
    return run_dir


def test_no_run_at_all_is_a_usage_error(isolated: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["report"], capsys) == (2, "", (
        "klingflow: no run found under runs/ (expected runs/NAME/RUN-ID/report.json): "
        "run a pipeline first, or name a run directory\n"))
    assert run_cli(["report", "nowhere"], capsys) == (
        2, "", "klingflow: nowhere: no such run directory\n")


def test_a_run_without_a_report_is_a_usage_error(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = _broken_run(tmp_path, None)

    assert run_cli(["report", str(run_dir), "--html"], capsys) == (2, "", (
        f"klingflow: {run_dir}: no report.json there (a run writes it when it ends)\n"))


def test_a_broken_report_is_a_located_usage_error(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = _broken_run(tmp_path, '{"format": 1,\n  "steps": [,]}')

    assert run_cli(["report", str(run_dir)], capsys) == (2, "", (
        f"klingflow: {run_dir}/report.json:2:13: not valid JSON: Expecting value\n"))


def test_a_report_of_another_shape_is_a_usage_error(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    report = _report()
    report["steps"][1]["status"] = "melted"
    run_dir = _broken_run(tmp_path, json.dumps(report))

    code, out, err = run_cli(["report", str(run_dir), "--open"], capsys)

    assert (code, out) == (2, "")
    assert err == (f"klingflow: {run_dir}/report.json: not a klingflow run report: "
                   "steps[1].status: 'melted' is not one of ['succeeded', 'cached', 'failed', "
                   "'skipped', 'not_run', 'interrupted']\n")
    assert not (run_dir / "report.html").exists()
