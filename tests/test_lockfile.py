"""The lock file: stable, diff-friendly, one section per backend, round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from klingflow.errors import UsageError
from klingflow.lockfile import Lock, LockEntry, lock_path, read_lock, write_lock
from klingflow.plan import build_plan
from klingflow.spec import load_pipeline
from tests.runhelpers import frames_step, run_cli, write_pipeline


def test_lock_path_sits_beside_the_pipeline() -> None:
    assert lock_path(Path("pipelines/x.yaml")) == Path("pipelines/x.lock.yaml")


def test_a_missing_lock_reads_as_empty(tmp_path: Path) -> None:
    assert read_lock(tmp_path / "none.lock.yaml").backends == {}


ENTRY = ("version: 2\nbackends:\n  sim:\n    one:\n      key: k\n      task_id: {task_id}\n"
         "      account: null\n      model: kling-v2-1\n      mode: std\n      duration: 5\n"
         "      credits: {credits}\n      outputs: {{video: v}}\n")


@pytest.mark.parametrize(("text", "where", "why"), [
    ("version: 2\nsteps: [1, 2", ":3:1", "did not find expected ',' or ']' (while parsing a "
                                        "flow sequence at line 2)"),
    ("\ufeff<<<<<<< HEAD\nversion: 2\n", ":1:1", "a merge left its conflict marker '<<<<<<<' "
                                              "here"),
    ("version: 2\n<<<<<<<<< ours\n", ":2:1", "a merge left its conflict marker '<<<<<<<<<' "
                                          "here"),  # git's conflict-marker-size: 9
    ("version: 2\nbackends:\n=======\n", ":3:1", "a merge left its conflict marker '=======' "
                                                 "here"),
    ("version: 2\n  ours: 1\n>>>>>>> theirs\n", ":3:1", "a merge left its conflict marker "
                                                        "'>>>>>>>' here"),
    ("version: 99\n", "", "version 99, not one this klingflow reads (1 or 2)"),
    ("- a\n- b\n", "", "it does not have a lock's shape"),
    # hand edits: plan showed 'restore (lock, task abc)', and only the run found it gone
    (ENTRY.format(task_id="abc", credits=20), "", "one.task_id is 'abc', not a task id (a "
                                                  "positive whole number) or null"),
    (ENTRY.format(task_id=-1, credits=20), "", "one.task_id is -1, not a task id (a positive "
                                               "whole number) or null"),
    (ENTRY.format(task_id=5, credits="lots"), "", "one.credits is 'lots', not credits (a whole "
                                                  "number, 0 or more) or null"),
])
def test_a_broken_lock_is_an_error_not_an_empty_lock(tmp_path: Path, text: str, where: str,
                                                     why: str) -> None:
    """Located as FILE:LINE:COL, like a pipeline's problems, when the YAML reader says where."""
    broken = tmp_path / "b.lock.yaml"
    broken.write_text(text)
    with pytest.raises(UsageError) as raised:
        read_lock(broken)
    assert str(raised.value) == (f"{broken}{where}: cannot read this lock file ({why}); it was "
                                 "left as it is. Fix it (a merge conflict?) or delete it, then "
                                 "run again")


def test_a_lock_with_a_merge_conflict_stops_plan_run_and_lock_and_is_kept(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ignoring it would pay again for every step it holds; rewriting it would lose the
    other backends' sections."""
    path = write_pipeline(isolated / "p", "merged", [frames_step("one", "a lighthouse")])
    assert run_cli(["run", str(path), "--sim", "--sim-speed", "20"], capsys)[0] == 0
    lock = lock_path(path)
    good = lock.read_text()
    conflicted = f"<<<<<<< HEAD\n{good}=======\n{good}>>>>>>> theirs\n"
    lock.write_text(conflicted)
    for command in ("plan", "run", "lock"):
        code, out, err = run_cli([command, str(path), "--sim"], capsys)
        assert (code, out) == (2, ""), command
        assert err.startswith(f"klingflow: {lock}:1:1: cannot read this lock file (a merge "
                              "left its conflict marker '<<<<<<<' here)"), err
        assert lock.read_text() == conflicted
    assert len(list((isolated / "runs" / "merged").iterdir())) == 1  # no second run


def entry(key: str, task_id: int = 1) -> LockEntry:
    return LockEntry(key=key, task_id=task_id, account="a", email="a@example.com",
                     model="kling-v2-1", mode="std", duration=5, credits=20,
                     outputs={"video": "b", "first_frame": "a"})


def test_entry_yaml_orders_outputs() -> None:
    assert list(entry("k").to_yaml()["outputs"]) == ["first_frame", "video"]


@pytest.fixture
def plan(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = write_pipeline(tmp_path, "two", [frames_step("one", "a"), frames_step("two", "b")])
    return build_plan(load_pipeline(path))


def test_each_backend_keeps_its_own_section(tmp_path: Path, plan) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "two.lock.yaml"
    write_lock(path, name="two", plan=plan, backend="useapi", entries={"one": entry("real")},
               previous=read_lock(path))
    write_lock(path, name="two", plan=plan, backend="sim",
               entries={"one": entry("sim", 7), "two": entry("sim2", 8)}, previous=read_lock(path))
    lock = read_lock(path)
    assert lock.steps("useapi") == {"one": entry("real")}  # a simulated run leaves it be
    assert lock.steps("sim") == {"one": entry("sim", 7), "two": entry("sim2", 8)}
    text = path.read_text()
    assert text.startswith("# klingflow lock file: what each step of two last produced, per "
                           "backend.\n")
    assert text.index("  sim:\n") < text.index("  useapi:\n")  # a stable order


def test_a_version_1_lock_reads_as_its_backends_section(tmp_path: Path) -> None:
    old = tmp_path / "old.lock.yaml"
    old.write_text("version: 1\npipeline: old\nbackend: useapi\nsteps:\n  one:\n"
                   "    key: k\n    task_id: 5\n    account: null\n    model: kling-v2-1\n"
                   "    mode: std\n    duration: 5\n    credits: 20\n"
                   "    outputs: {video: v}\n")
    assert read_lock(old) == Lock({"useapi": {"one": LockEntry(
        key="k", task_id=5, account=None, model="kling-v2-1", mode="std", duration=5,
        credits=20, outputs={"video": "v"})}})
