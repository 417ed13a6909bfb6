"""`klingflow validate`: problems on stderr then a count, exit 2; `PATH: ok (N steps)`."""

from __future__ import annotations

from pathlib import Path

import pytest

from klingflow.cli import main
from klingflow.lockfile import Lock, lock_path, write_lock
from klingflow.plan import build_plan
from klingflow.spec import load_pipeline
from tests.conftest import EXAMPLE_FILES
from tests.effecthelpers import keep_sim_catalogues

GOOD = """\
version: 1
name: good
steps:
  - {id: a, kind: effect, effect: rocket, image: "https://x.test/a.png"}
  - {id: b, kind: frames, image: "${steps.a.last_frame}"}
"""
BAD = """\
version: 1
name: bad
steps:
  - {id: a, kind: frames, image: "https://x.test/a.png", duration: 7}
  - {id: b, kind: frames, image: "https://x.test/a.png", enable_audio: yes}
"""


@pytest.fixture(autouse=True)
def sim_catalogue_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Effects are judged by the simulator's catalogue (`--sim`), kept here."""
    keep_sim_catalogues(tmp_path / "kept")
    monkeypatch.setenv("KLINGFLOW_HOME", str(tmp_path / "kept"))


def test_valid_file_prints_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    assert main(["validate", "--sim", str(path)]) == 0
    out = capsys.readouterr()
    assert out.out == f"{path}: ok (2 steps)\n"
    assert out.err == ""


def test_problems_then_count_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text(BAD)
    assert main(["validate", "--sim", str(good), str(bad)]) == 2
    out = capsys.readouterr()
    assert out.out == f"{good}: ok (2 steps)\n"
    assert out.err.splitlines() == [
        f"{bad}:4:68: steps[0] (id: a).duration: 7 is not one of 5, 10 for kling-v2-1",
        f"{bad}:5:72: steps[1] (id: b).enable_audio: 'yes' is not of type 'boolean'; "
        "write true or false",
        "2 problems found"]


def test_file_is_shown_as_given(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pipes").mkdir()
    (tmp_path / "pipes" / "p.yaml").write_text("version: 1\n")
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "pipes/p.yaml"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "pipes/p.yaml:1:1: <document>: missing required key 'name'",
        "pipes/p.yaml:1:1: <document>: missing required key 'steps'",
        "2 problems found"]


EXAMPLES = EXAMPLE_FILES


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_pipeline_validates(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--sim", str(path)]) == 0, capsys.readouterr().err


def test_a_lock_file_among_the_pipelines_is_skipped_with_a_note(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`klingflow validate pipelines/*.yaml` after a run sees NAME.lock.yaml too."""
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    plan = build_plan(load_pipeline(good))
    lock = lock_path(good)
    write_lock(lock, name="good", backend="sim", plan=plan, entries={}, previous=Lock({}))
    assert main(["validate", "--sim", str(good), str(lock)]) == 0
    out = capsys.readouterr()
    assert out.out == (f"{good}: ok (2 steps)\n"
                       f"{lock}: skipped: a lock file written by klingflow run, not a pipeline\n")
    assert out.err == ""


def _conflicted_lock(pipeline: Path, *, at_the_top: bool = False) -> tuple[Path, str]:
    """The pipeline's real lock, then broken as a merge leaves it: markers around its
    entries, or (`at_the_top`) around the whole file, header included."""
    lock = lock_path(pipeline)
    write_lock(lock, name=pipeline.stem, backend="sim",
               plan=build_plan(load_pipeline(pipeline)), entries={}, previous=Lock({}))
    ours = lock.read_text()
    conflicted = (f"<<<<<<< HEAD\n{ours}=======\n{ours}>>>>>>> theirs\n" if at_the_top else
                  f"{ours}<<<<<<< HEAD\n  ours: 1\n=======\n  theirs: 2\n>>>>>>> theirs\n")
    lock.write_text(conflicted)
    return lock, conflicted


def _lock_problem(lock: Path, line: str) -> None:
    """Located at the first conflict marker, which is where the merge broke it."""
    at = lock.read_text().splitlines().index("<<<<<<< HEAD") + 1
    assert line == (f"{lock}:{at}:1: cannot read this lock file (a merge left its conflict "
                    "marker '<<<<<<<' here); it was left as it is. Fix it (a merge conflict?) "
                    "or delete it, then run again"), line


@pytest.mark.parametrize("at_the_top", [False, True], ids=["in-entries", "at-the-top"])
def test_a_lock_a_merge_left_broken_is_one_problem_of_its_pipeline(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], at_the_top: bool) -> None:
    """`plan` and `run` stop on such a lock (paying again for what it holds, or rewriting
    it, would be worse); `validate`, which CI runs on a pull request, says so first:
    once, whether the lock is named too (`validate pipelines/*.yaml`) or not."""
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    lock, conflicted = _conflicted_lock(good, at_the_top=at_the_top)

    for paths in ([good], [good, lock], [lock, good]):
        assert main(["validate", "--sim", *map(str, paths)]) == 2
        out = capsys.readouterr()
        assert out.out == f"{good}: ok (2 steps)\n"
        problem, count = out.err.splitlines()
        _lock_problem(lock, problem)
        assert count == "1 problem found"
    assert lock.read_text() == conflicted


def test_a_broken_lock_is_reported_with_the_pipelines_own_problems(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    lock, _ = _conflicted_lock(good)
    bad.write_text(BAD)
    lock.rename(lock_path(bad))  # bad.yaml is broken, and so is its lock

    assert main(["validate", "--sim", str(bad)]) == 2
    *pipeline_problems, lock_problem, count = capsys.readouterr().err.splitlines()
    assert [p.split(": ")[0] for p in pipeline_problems] == [f"{bad}:4:68", f"{bad}:5:72"]
    _lock_problem(lock_path(bad), lock_problem)
    assert count == "3 problems found"
