"""A damaged run journal is a located usage error (exit 2); a last line cut short by a
crash is tolerated silently, and the next line written starts afresh (issue 9, item 12).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from klingflow.journal import Journal
from tests.runhelpers import (
    frames_step,
    only_run_dir,
    read_journal,
    read_report,
    run_cli,
    write_pipeline,
)

FAST = ["--sim-speed", "10", "--poll-interval", "0.05"]
RUN_LINE = b'{"backend": "sim", "event": "run", "pipeline": "journal", "time": 1.0}\n'
UPLOADED = b'{"event": "uploaded", "sha256": "ab", "time": 1.1, "url": "http://sim/a.png"}\n'


def _pipeline(folder: Path) -> Path:
    return write_pipeline(folder, "journal", [frames_step("one", "a quiet lake")])


def _damaged_run(isolated: Path, middle: bytes) -> Path:
    run_dir = isolated / "runs" / "journal" / "20260101-000000-00001"
    run_dir.mkdir(parents=True)
    (run_dir / "journal.jsonl").write_bytes(RUN_LINE + middle + b"\n" + UPLOADED)
    return run_dir


@pytest.mark.parametrize(("middle", "problem"), [
    (b'{"event": "uploaded", "url": "caf\xe9"}', "not UTF-8 text"),
    (b"not json at all", "not JSON (Expecting value)"),
    (b'{"event": "uploaded", "sha256": "ab"', "not JSON (Expecting ',' delimiter)"),
    (b'["event", "uploaded"]', "not a journal event (expected a JSON object)"),
    (b'{"event": "submitting", "step": "one"}', "not a journal event (no 'key')"),
    (b'{"event": "uploaded", "sha256": ["ab"], "url": "u"}',
     "not a journal event (a field of the wrong type)"),
])
def test_a_damaged_line_is_named_with_its_file_and_number(
        isolated: Path, capsys: pytest.CaptureFixture[str], middle: bytes,
        problem: str) -> None:
    path = _pipeline(isolated / "p")
    run_dir = _damaged_run(isolated, middle)
    before = (run_dir / "journal.jsonl").read_bytes()
    code, out, err = run_cli(["run", str(path), "--sim", "--resume", str(run_dir), *FAST],
                             capsys)
    assert (code, out) == (2, "")
    assert err == (f"klingflow: {run_dir / 'journal.jsonl'}:2: {problem}; the run journal is "
                   "damaged: repair or delete line 2, then resume again\n")
    assert (run_dir / "journal.jsonl").read_bytes() == before  # nothing appended
    assert sorted(p.name for p in run_dir.iterdir()) == ["journal.jsonl"]


def test_resume_latest_names_the_damaged_line_too(isolated: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = _pipeline(isolated / "p")
    run_dir = _damaged_run(isolated, b"\xff\xfe")
    code, _, err = run_cli(["run", str(path), "--sim", "--out", str(isolated / "runs"),
                            "--resume", *FAST], capsys)
    assert code == 2
    assert err.startswith(f"klingflow: {run_dir / 'journal.jsonl'}:2: not UTF-8 text;")


@pytest.mark.parametrize("cut", [b'{"event": "subm', b'{"event": "uploaded", "url": "caf\xc3'])
def test_a_last_line_cut_short_by_a_crash_is_dropped_and_the_resume_goes_on(
        isolated: Path, capsys: pytest.CaptureFixture[str], cut: bytes) -> None:
    """Cut within its text or within a character: the resume runs, and the journal it
    leaves is whole lines only (the cut line would otherwise swallow the next one)."""
    path = _pipeline(isolated / "p")
    runs = isolated / "runs"
    code, _, err = run_cli(["run", str(path), "--sim", "--out", str(runs), *FAST], capsys)
    assert code == 0, err
    run_dir = only_run_dir(runs, "journal")
    with (run_dir / "journal.jsonl").open("ab") as journal:
        journal.write(cut)
    lines = (run_dir / "journal.jsonl").read_bytes().splitlines()
    write_pipeline(path.parent, "journal", [frames_step("one", "a quiet lake"),
                                            frames_step("two", "a quiet sea")])
    for _ in range(2):  # the first one writes after the cut line (step two is new)
        code, _, err = run_cli(["run", str(path), "--sim", "--out", str(runs), "--resume",
                                *FAST], capsys)
        assert (code, err.count("klingflow:")) == (0, 0), err
    events = read_journal(run_dir)  # every line is JSON again
    assert len(events) > len(lines) - 1
    assert [e["event"] for e in events[len(lines) - 1:]][:2] == ["run", "submitting"]
    assert read_report(run_dir)["status"] == "succeeded"


def test_a_whole_last_line_without_its_newline_is_kept(tmp_path: Path) -> None:
    """A crash between the text and its newline: the event counts, and the next line
    goes on a line of its own."""
    path = tmp_path / "journal.jsonl"
    path.write_bytes(RUN_LINE + UPLOADED.rstrip(b"\n"))
    assert Journal.replay(path).uploads == {"ab": "http://sim/a.png"}
    journal = Journal(path)
    journal.write({"event": "uploaded", "sha256": "cd", "url": "http://sim/b.png"})
    journal.close()
    events = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert [e.get("sha256") for e in events] == [None, "ab", "cd"]
    assert Journal.replay(path).uploads == {"ab": "http://sim/a.png", "cd": "http://sim/b.png"}


def test_a_journal_makes_its_file_with_its_first_line_only(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path, header={"event": "run", "pipeline": "p", "backend": "sim"})
    journal.close()
    assert not path.exists() and not journal.started
    journal = Journal(path, header={"event": "run", "pipeline": "p", "backend": "sim"})
    journal.write({"event": "uploaded", "sha256": "ab", "url": "u"})
    journal.close()
    assert [json.loads(line)["event"] for line in path.read_text().splitlines()] == [
        "run", "uploaded"]
