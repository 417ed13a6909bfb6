"""How a command that does not return ends: one clear line, the right exit code, even
when the error comes out of a task group (issue 9, item 12), and no failed start
leaves a run directory (polish).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from klingflow import media
from klingflow.cli import main
from klingflow.errors import UsageError
from tests.runhelpers import frames_step, only_run_dir, run_cli, write_pipeline

FAST = ["--sim-speed", "10", "--poll-interval", "0.05"]
BUG_HINT = "Run again with --traceback to see where.\n"


def _pipeline(folder: Path) -> Path:
    return write_pipeline(folder, "errors", [frames_step("one", "a quiet lake"),
                                             frames_step("two", "a quiet sea")])


def _failing_frames(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """Extracting a clip's frames (in a worker thread, inside the run's task groups)
    raises `error`."""
    def fail(video: Path, first_png: Path, last_png: Path) -> None:
        raise error

    monkeypatch.setattr(media, "extract_frames", fail)


def test_a_klingflow_error_from_inside_the_task_groups_is_itself(
        isolated: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_frames(monkeypatch, UsageError("the frames folder went away"))
    path = _pipeline(isolated / "p")
    code, _, err = run_cli(["run", str(path), "--sim", "--out", str(isolated / "runs"),
                            *FAST], capsys)
    assert code == 2
    assert err.endswith("\nklingflow: the frames folder went away\n")
    assert "+--" not in err and "Traceback" not in err


def test_a_bug_inside_the_task_groups_is_quoted_not_the_groups_drawing(
        isolated: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_frames(monkeypatch, ValueError("no frame at the end\nsecond line"))
    path = _pipeline(isolated / "p")
    code, _, err = run_cli(["run", str(path), "--sim", "--out", str(isolated / "runs"),
                            *FAST], capsys)
    assert code == 3
    assert err.endswith("\nklingflow: unexpected error (a bug): ValueError: no frame at the "
                        f"end\n{BUG_HINT}")
    assert "+--" not in err


def test_traceback_shows_the_whole_group(isolated: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_frames(monkeypatch, ValueError("no frame at the end"))
    path = _pipeline(isolated / "p")
    with pytest.raises(BaseExceptionGroup) as caught:
        main(["--traceback", "run", str(path), "--sim", "--out", str(isolated / "runs"),
              *FAST])
    assert caught.group_contains(ValueError, match="no frame at the end")


def test_ctrl_c_inside_the_task_groups_exits_130_with_one_line(
        isolated: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_frames(monkeypatch, KeyboardInterrupt())
    path = _pipeline(isolated / "p")
    code, _, err = run_cli(["run", str(path), "--sim", "--out", str(isolated / "runs"),
                            *FAST], capsys)
    assert code == 130
    assert err.endswith("\nklingflow: interrupted\n")
    assert "Traceback" not in err


def test_a_bad_force_leaves_no_run_directory(isolated: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = _pipeline(isolated / "p")
    code, out, err = run_cli(["run", str(path), "--sim", "--out", str(isolated / "runs"),
                              "--force", "nosuch", *FAST], capsys)
    assert (code, out) == (2, "")
    assert err == f"klingflow: --force nosuch: no such step in {path}\n"
    assert not (isolated / "runs" / "errors").exists()


def test_a_run_that_recorded_something_keeps_its_directory(
        isolated: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A task was paid for before the error: its run directory (and journal) stay."""
    _failing_frames(monkeypatch, UsageError("the frames folder went away"))
    path = _pipeline(isolated / "p")
    code, _, _ = run_cli(["run", str(path), "--sim", "--out", str(isolated / "runs"),
                          *FAST], capsys)
    assert code == 2
    journal = only_run_dir(isolated / "runs", "errors") / "journal.jsonl"
    assert '"event": "submitted"' in journal.read_text(encoding="utf-8")


# ---- found by hostile testing: each was exit 3 ("a bug") -------------------------------


def test_a_pipeline_file_that_is_a_symlink_loop_is_a_located_error(
        isolated: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KLINGFLOW_HOME")  # the cache is looked for beside the file
    (isolated / "loop.yaml").symlink_to("loop.yaml")
    for command in (["validate"], ["plan", "--sim"]):
        code, out, err = run_cli([command[0], "loop.yaml", *command[1:]], capsys)
        assert (code, out) == (2, ""), command
        assert err == ("loop.yaml:1:1: <document>: cannot read the file: Too many levels of "
                       "symbolic links\n1 problem found\n")


def test_a_cache_entry_of_the_wrong_shape_is_ignored_like_a_damaged_one(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _pipeline(isolated / "p")
    assert run_cli(["run", str(path), "--sim", *FAST], capsys)[0] == 0
    entries = list((isolated / "home" / "entries").glob("*.json"))
    assert len(entries) == 2
    for entry, text in zip(entries, ('{"a": 1}', "[]"), strict=True):
        entry.write_text(text)
    path.with_name("errors.lock.yaml").unlink()  # else the lock would restore them
    code, out, err = run_cli(["plan", str(path), "--sim"], capsys)
    assert (code, err) == (0, "")
    assert out.count("will run (new)") == 2


def test_a_report_page_that_cannot_be_written_or_drawn_is_a_clear_error(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _pipeline(isolated / "p")
    assert run_cli(["run", str(path), "--sim", "--out", "runs", *FAST], capsys)[0] == 0
    run_dir = only_run_dir(isolated / "runs", "errors")
    (run_dir / "report.html").unlink()
    (run_dir / "report.html").mkdir()  # where the page goes
    code, _, err = run_cli(["report", str(run_dir), "--html"], capsys)
    assert (code, err) == (2, f"klingflow: {run_dir}: cannot write report.html: Is a "
                              "directory\n")
    report = run_dir / "report.json"
    report.write_text(report.read_text().replace('"started_at": "', '"started_at": "x', 1))
    code, _, err = run_cli(["report", str(run_dir), "--html"], capsys)
    assert code == 2
    assert err.startswith(f"klingflow: {report}: not a klingflow run report: started_at: 'x")
    assert err.endswith("' is not an ISO 8601 time\n")


def test_a_home_where_the_catalogue_cannot_be_kept_is_a_clear_error(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (isolated / "home").mkdir()
    (isolated / "home" / "effects").write_text("a file where a folder goes")
    code, _, err = run_cli(["effects", "--sim"], capsys)
    assert code == 2
    assert err.startswith(f"klingflow: cannot keep the effects catalogue under "
                          f"{isolated / 'home'}: ")
    assert err.endswith("; check KLINGFLOW_HOME\n")
