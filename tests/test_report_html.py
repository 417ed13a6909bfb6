"""The review page as a pure function of a report and its run directory: what a reader
sees at a glance (failures, films, seams, waits, credits) and that it loads nothing
from the network. The page in a real browser: tests/test_report_html_browser.py."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from PIL import Image

from klingflow.report.html import render_html, write_html
from klingflow.report.timeline import spans
from tests.runhelpers import REPORT_SCHEMA

T0 = "2026-11-29T10:00:{:06.3f}+00:00"
MODERATION = ("HTTP 500: The content you uploaded appears to violate the community "
              "guidelines. (CM_EXT.POther)")


def _at(seconds: float) -> str:
    return T0.format(seconds)


def _files(step_id: str) -> dict[str, dict[str, str]]:
    return {attr: {"path": f"{step_id}{suffix}", "sha256": "0" * 64}
            for attr, suffix in (("video", ".mp4"), ("first_frame", ".first.png"),
                                 ("last_frame", ".last.png"))}


def _step(step_id: str, status: str = "succeeded", **fields: Any) -> dict[str, Any]:
    step: dict[str, Any] = {
        "id": step_id, "kind": "frames", "model": "kling-v2-1", "mode": "std", "duration": 5,
        "prompt": f"the {step_id} shot", "needs": [], "status": status, "task_id": 7,
        "account": "main", "attempts": 1, "error_category": None, "error": None,
        "queued_at": _at(0), "ready_at": _at(0), "slot_at": _at(0), "submitted_at": _at(1),
        "finished_at": _at(4), "credits": 20, "key": None,
        "outputs": _files(step_id) if status in ("succeeded", "cached") else {}}
    step.update(fields)
    return step


def _report(**changes: Any) -> dict[str, Any]:
    """A run of four steps: launch, climb (from launch's last frame, waited for a slot),
    bad (moderated), after (skipped); a film of launch + climb and one missing bad."""
    report: dict[str, Any] = {
        "format": 1, "pipeline": {"name": "rocket", "path": "pipelines/rocket.yaml"},
        "run_id": "20261129-100000-00001", "run_dir": "runs/rocket/20261129-100000-00001",
        "backend": "sim", "status": "failed", "error": None,
        "started_at": _at(0), "finished_at": _at(12.5),
        "steps": [
            _step("launch"),
            _step("climb", needs=["launch"], ready_at=_at(4), slot_at=_at(6),
                  submitted_at=_at(6.5), final_at=_at(9), finished_at=_at(10), credits=35),
            _step("bad", "failed", task_id=None, prompt="a <forbidden> scene & more",
                  submitted_at=None, finished_at=_at(2), credits=0,
                  error_category="moderation", error=MODERATION),
            _step("after", "skipped", task_id=None, needs=["bad"], ready_at=_at(2),
                  slot_at=None, submitted_at=None, finished_at=_at(2), credits=0, attempts=0,
                  error="needs bad, which failed"),
        ],
        "outputs": {
            "film": {"concat": ["launch", "climb"], "status": "ready", "missing": [],
                     "path": "outputs/film.mp4", "sha256": "1" * 64, "duration": 9.958,
                     "frames": 239, "method": "copy", "cached": False, "error": None,
                     "parts": [{"step": "launch", "frames": 120, "seam_dropped": False},
                               {"step": "climb", "frames": 120, "seam_dropped": True}]},
            "cut": {"concat": ["launch", "bad", "after"], "status": "incomplete",
                    "missing": ["bad", "after"], "path": None, "sha256": None,
                    "duration": None, "frames": None, "method": None, "cached": False,
                    "error": None,
                    "parts": [{"step": "launch", "frames": 120, "seam_dropped": False},
                              {"step": "bad", "frames": None, "seam_dropped": False},
                              {"step": "after", "frames": None, "seam_dropped": False}]},
        },
        "seams": [{"parent": "launch", "parent_frame": "last_frame", "child": "climb",
                   "child_frame": "first_frame", "difference": 1.2},
                  {"parent": "bad", "parent_frame": "last_frame", "child": "after",
                   "child_frame": "first_frame", "difference": None}],
        "totals": {"steps": 4, "by_status": {"succeeded": 2, "failed": 1, "skipped": 1},
                   "credits": 55, "credits_by_account": {"main": 55}, "tasks_created": 2},
    }
    report.update(changes)
    return report


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """The files a run leaves for launch and climb, and the film."""
    for step_id in ("launch", "climb"):
        for suffix in (".first.png", ".last.png"):
            Image.new("RGB", (32, 18), (90, 30, 30)).save(tmp_path / f"{step_id}{suffix}")
        (tmp_path / f"{step_id}.mp4").write_bytes(b"mp4")
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "film.mp4").write_bytes(b"mp4")
    (tmp_path / "report.json").write_text("{}", encoding="utf-8")
    (tmp_path / "journal.jsonl").write_text("", encoding="utf-8")
    return tmp_path


def _card(page: str, step_id: str) -> str:
    match = re.search(rf'<article class="[^"]*" id="step-{step_id}">.*?</article>', page)
    assert match, step_id
    return match.group(0)


def test_the_example_report_is_a_valid_report() -> None:
    jsonschema.validate(_report(), REPORT_SCHEMA)


def test_failed_and_skipped_steps_stand_out(run_dir: Path) -> None:
    page = render_html(_report(), run_dir)

    bad, after = _card(page, "bad"), _card(page, "after")
    assert bad.startswith('<article class="card failed problem" id="step-bad">')
    assert '<span class="badge failed">failed</span>' in bad
    assert f'<p class="error">[moderation] {MODERATION}</p>' in bad
    assert '<p class="prompt">a &lt;forbidden&gt; scene &amp; more</p>' in bad
    assert after.startswith('<article class="card skipped problem" id="step-after">')
    assert '<p class="error">needs bad, which failed</p>' in after
    assert '<dt>waited for</dt><dd><a href="#step-bad">bad</a></dd>' in after
    assert _card(page, "launch").startswith('<article class="card succeeded" id="step-launch">')
    # the header names them before any card
    assert ('<p class="alert">1 failed: <a href="#step-bad">bad</a></p>'
            '<p class="alert">1 skipped: <a href="#step-after">after</a></p>') in page
    assert ('<button type="button" data-filter="problems" aria-pressed="false">'
            "problems only 2</button>") in page


def test_a_card_shows_the_request_and_the_clip(run_dir: Path) -> None:
    climb = _card(render_html(_report(), run_dir), "climb")

    assert ('<img class="thumb" loading="lazy" decoding="async" src="climb.first.png" '
            'alt="climb: first frame">') in climb
    assert 'src="climb.last.png"' in climb
    assert '<video controls preload="none" src="climb.mp4" data-poster="climb.first.png">' in climb
    for fact in ("<dt>model</dt><dd>kling-v2-1</dd>", "<dt>mode</dt><dd>std</dd>",
                 "<dt>duration</dt><dd>5 s</dd>", "<dt>account</dt><dd>main</dd>",
                 "<dt>task</dt><dd>7</dd>", "<dt>credits</dt><dd>35</dd>",
                 '<dt>waited for</dt><dd><a href="#step-launch">launch</a></dd>',
                 "<dt>waits</dt><dd>4.0 s for the steps it needs; 2.0 s for a slot</dd>"):
        assert fact in climb, fact


def test_films_play_and_an_incomplete_one_says_what_is_missing(run_dir: Path) -> None:
    page = render_html(_report(), run_dir)

    assert ('<video controls preload="metadata" src="outputs/film.mp4" '
            'poster="launch.first.png"></video>') in page
    assert "10.0 s · 239 frames · joined without re-encoding" in page
    assert ('<li class="seam" title="climb: succeeded (continues the part before: its first '
            'frame is shown once)"><a href="#step-climb">climb</a></li>') in page
    assert ('<figure class="film incomplete" id="film-cut"><div class="nofile"><span>missing '
            '<a href="#step-bad">bad</a>, <a href="#step-after">after</a></span></div>') in page
    assert ('<p class="alert">film cut is incomplete: missing <a href="#step-bad">bad</a>, '
            '<a href="#step-after">after</a></p>') in page


def test_a_seam_over_the_threshold_gets_a_warning(run_dir: Path) -> None:
    calm = render_html(_report(), run_dir)
    report = _report()
    report["seams"][0]["difference"] = 23.4
    rough = render_html(report, run_dir)

    assert '<div class="diff">differs by 1.2 (mean per pixel, 0-255)</div>' in calm
    assert '<div class="seam warn">' not in calm
    assert '<div class="seam warn">' in rough
    assert ('<div class="diff">\u26a0 differs by 23.4 (over 8): the clip does not continue '
            "where the other one is</div>") in rough
    assert '<div class="diff">not measured: a frame is missing</div>' in calm


def test_a_file_that_is_not_there_is_never_linked(run_dir: Path) -> None:
    (run_dir / "climb.last.png").unlink()
    (run_dir / "outputs" / "film.mp4").unlink()

    page = render_html(_report(), run_dir)

    assert 'src="climb.last.png"' not in page
    assert '<div class="nofile"><span>no last frame</span></div>' in _card(page, "climb")
    assert '<div class="nofile"><span>the film file is missing</span></div>' in page
    for src in re.findall(r'(?:src|poster|href)="([^"#][^"]*)"', page):
        assert src.startswith("data:") or (run_dir / src).is_file(), src


def test_the_page_loads_nothing_from_the_network(run_dir: Path) -> None:
    page = render_html(_report(), run_dir)

    assert not re.search(r"(?:src|href|poster)=\"(?:https?:)?//", page)
    assert "@import" not in page and "url(http" not in page
    assert page.count("<script>") == 1 and "<script src" not in page


def test_credits_fall_back_to_the_total_until_the_accounting_has_more(run_dir: Path) -> None:
    plain = render_html(_report(), run_dir)
    report = _report()
    report["totals"].update(credits_charged=35, credits_charged_run=90,
                            credits_saved={"cache": 20, "lock": 35, "remote": 0})
    jsonschema.validate(report, REPORT_SCHEMA)
    detailed = render_html(report, run_dir)

    assert "<div><dt>credits charged</dt><dd>55</dd></div>" in plain
    assert "<div><dt>credits charged by this invocation</dt><dd>35</dd></div>" in detailed
    assert "<div><dt>credits charged in all</dt><dd>90</dd></div>" in detailed
    assert ("<div><dt>credits saved</dt><dd>55 (20 by the cache, 35 by the lock, "
            "0 by the remote)</dd></div>") in detailed
    assert "<div><dt>wall time</dt><dd>12.5 s</dd></div>" in plain


def test_the_timeline_shows_waits_for_a_slot_per_account(run_dir: Path) -> None:
    page = render_html(_report(), run_dir)

    # launch runs from 0 to 4 s while bad is being submitted from 0 to 2 s
    assert ("<h3>main <small>4 steps; at most 2 in flight; 2.0 s waiting for a slot in all"
            "</small></h3>") in page
    climb_row = re.search(r'<div class="row"><a href="#step-climb".*?</div></div>', page)
    assert climb_row
    assert ('<i class="waiting" style="left:32.000%;width:16.000%" '
            'title="waiting for a slot: 2.0 s"></i>') in climb_row.group(0)
    assert [s.phase for s in spans(_report()["steps"][1])] == [
        "queued", "waiting", "submitting", "running", "collecting"]
    bad_row = re.search(r'<div class="row"><a href="#step-bad".*?</div></div>', page)
    assert bad_row and '<i class="submitting failed"' in bad_row.group(0)  # refused at POST


def test_a_clip_downloading_holds_no_slot(run_dir: Path) -> None:
    """One slot: b gets it when a's task is final, while a's clip is still downloading."""
    steps = [_step("a", slot_at=_at(0), submitted_at=_at(0.5), final_at=_at(3),
                   finished_at=_at(5)),
             _step("b", ready_at=_at(1), slot_at=_at(3), submitted_at=_at(3.5),
                   final_at=_at(6), finished_at=_at(7))]
    page = render_html(_report(steps=steps, outputs={}, seams=[]), run_dir)

    assert ("<h3>main <small>2 steps; at most 1 in flight; 2.0 s waiting for a slot in all"
            "</small></h3>") in page
    assert ('<i class="collecting" style="left:24.000%;width:16.000%" '
            'title="downloading, frames: 2.0 s"></i>') in page


def test_a_step_restored_from_the_cache_is_not_shown_waiting_for_a_slot() -> None:
    cached = _step("old", "cached", ready_at=_at(1), slot_at=None, submitted_at=None,
                   finished_at=_at(1.5))

    assert [(s.phase, s.start, s.end) for s in spans(cached)] == [
        ("queued", *_seconds(0, 1)), ("running", *_seconds(1, 1.5))]


def _seconds(*moments: float) -> tuple[float, ...]:
    from klingflow.report.timeline import seconds

    return tuple(seconds(_at(m)) or 0.0 for m in moments)


def test_a_report_from_before_the_timeline_marks_still_renders(run_dir: Path) -> None:
    report = copy.deepcopy(_report())
    for step in report["steps"]:
        for key in ("kind", "model", "mode", "duration", "prompt", "needs", "ready_at",
                    "slot_at"):
            del step[key]
    report["outputs"] = {"film": {"concat": ["launch", "climb"], "status": "ready"}}
    del report["seams"]
    jsonschema.validate(report, REPORT_SCHEMA)

    page = render_html(report, run_dir)

    assert "<p>This report records no seams (an older klingflow wrote it).</p>" in page
    assert '<figure class="film ready" id="film-film">' in page
    assert "<dt>model</dt><dd>-</dd>" in _card(page, "climb")


def test_the_page_is_written_beside_the_report(run_dir: Path) -> None:
    path = write_html(_report(), run_dir)

    assert path == run_dir / "report.html"
    assert path.read_text(encoding="utf-8") == render_html(_report(), run_dir)


def test_a_step_never_given_a_slot_is_shown_apart(run_dir: Path) -> None:
    report = _report()
    report["steps"][3]["account"] = None  # after: skipped before it asked for a slot

    page = render_html(report, run_dir)

    lanes = re.findall(r'<div class="lane"><h3>(.*?) <small>', page)
    assert lanes == ["main", "(never given a slot)"]
