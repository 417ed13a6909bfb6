"""`plan` says what `run` will do: a `needs:` edge orders steps, it does not change requests;
a step that never ran, or whose upstream is new, is `new`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.runhelpers import (
    frames_step,
    read_report,
    run_cli,
    steps_of,
    write_pipeline,
)


def _plan(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, tuple[str, str | None]]:
    code, out, err = run_cli(["plan", str(path), "--sim", "--json"], capsys)
    assert code == 0, err
    return {s["id"]: (s["cache"]["verdict"], s["cache"]["reason"])
            for s in json.loads(out)["steps"]}


def _run(path: Path, runs: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    code, out, err = run_cli(["run", str(path), "--sim", "--sim-speed", "10", "--json",
                              "--out", str(runs)], capsys)
    assert code == 0, err
    report = json.loads(out)
    read_report(Path(report["run_dir"]))
    return {sid: s["status"] for sid, s in steps_of(report).items()}


def _steps(a_prompt: str) -> list[dict[str, object]]:
    return [frames_step("a", a_prompt),
            frames_step("b", "the second shot", needs=["a"]),
            frames_step("c", "from b's last frame", image="${steps.b.last_frame}")]


def test_a_needs_edge_does_not_make_its_dependents_run_again(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_pipeline(isolated / "p", "tied", _steps("a calm sea"))
    assert _plan(path, capsys) == {"a": ("will run", "new"), "b": ("will run", "new"),
                                   "c": ("will run", "new")}  # never run: all new
    assert set(_run(path, isolated / "runs", capsys).values()) == {"succeeded"}
    write_pipeline(isolated / "p", "tied", _steps("a stormy sea"))
    assert _plan(path, capsys) == {"a": ("will run", "changed: prompt"),
                                   "b": ("cached", None), "c": ("cached", None)}
    assert _run(path, isolated / "runs", capsys) == {  # what the plan said
        "a": "succeeded", "b": "cached", "c": "cached"}


def test_a_step_whose_upstream_is_new_is_new(isolated: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = write_pipeline(isolated / "p", "rewired", _steps("a calm sea"))
    _run(path, isolated / "runs", capsys)
    write_pipeline(isolated / "p", "rewired", [
        *_steps("a calm sea")[:2], frames_step("x", "a new shot"),
        frames_step("c", "from b's last frame", image="${steps.x.last_frame}")])
    assert _plan(path, capsys) == {"a": ("cached", None), "b": ("cached", None),
                                   "x": ("will run", "new"), "c": ("will run", "new")}
