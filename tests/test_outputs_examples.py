"""Films from real runs: `klingflow run pipelines/NAME.yaml --sim` makes every declared
output, the film decodes, its frames are the parts' frames less one per seam, and its
frames are the parts' own; an unchanged re-run encodes nothing; a failed part leaves
the film incomplete, the exit code 1 and the page saying why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from klingflow.spec import load_pipeline
from tests.conftest import EXAMPLE_FILES, ROOT
from tests.runhelpers import (
    copy_examples,
    ctrl_c_when,
    frames_step,
    journal_has_submitted,
    only_run_dir,
    read_report,
    run_cli,
    write_pipeline,
)

WITH_OUTPUTS = [p.name for p in EXAMPLE_FILES if load_pipeline(p).outputs]
FAST = ["--sim-speed", "20"]


def _frames(video: Path) -> list[np.ndarray]:
    with av.open(str(video)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _expected_frames(run_dir: Path, output: dict[str, Any]) -> list[np.ndarray]:
    """The parts' own frames, each part that meets the next on a seam without its last."""
    parts = output["parts"]
    expected: list[np.ndarray] = []
    for index, part in enumerate(parts):
        frames = _frames(run_dir / f"{part['step']}.mp4")
        assert len(frames) == part["frames"]
        dropped = index + 1 < len(parts) and parts[index + 1]["seam_dropped"]
        expected += frames[:-1] if dropped else frames
    return expected


def test_every_example_declares_a_film() -> None:
    assert len(WITH_OUTPUTS) >= 5, WITH_OUTPUTS


@pytest.mark.parametrize("name", WITH_OUTPUTS)
def test_every_example_makes_its_films(name: str, isolated: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = copy_examples(isolated) / name
    pipeline = load_pipeline(path)
    code, out, err = run_cli(["run", str(path), "--sim", *FAST,
                              "--out", str(isolated / "runs")], capsys)
    assert code == 0, out + err
    run_dir = only_run_dir(isolated / "runs", pipeline.name)
    report = read_report(run_dir)

    assert set(report["outputs"]) == set(pipeline.outputs)
    for output_name, output in report["outputs"].items():
        film = run_dir / "outputs" / f"{output_name}.mp4"
        assert (output["status"], output["path"]) == ("ready", f"outputs/{output_name}.mp4")
        assert output["concat"] == list(pipeline.outputs[output_name].concat)
        assert [p["step"] for p in output["parts"]] == output["concat"]
        seams = sum(p["seam_dropped"] for p in output["parts"])
        assert output["frames"] == sum(p["frames"] for p in output["parts"]) - seams
        frames = _frames(film)  # it decodes, every frame of it
        assert len(frames) == output["frames"]
        expected = _expected_frames(run_dir, output)
        assert all(np.array_equal(f, e) for f, e in zip(frames, expected, strict=True))
        assert output["duration"] == pytest.approx(len(frames) / 24, abs=1e-3)
        line = f"{output_name}: {report['run_dir']}/outputs/{output_name}.mp4 "
        assert line + f"({output['duration']:.1f} s)" in out
    assert out.rstrip().endswith(f"review: {report['run_dir']}/report.html")
    assert (run_dir / "report.html").is_file()


def test_the_seams_of_the_examples_are_where_the_clips_chain(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = copy_examples(isolated) / "two-accounts.yaml"
    code, out, err = run_cli(["run", str(path), "--sim", *FAST,
                              "--out", str(isolated / "runs")], capsys)
    assert code == 0, out + err
    report = read_report(only_run_dir(isolated / "runs", "two-accounts"))

    # day: dawn, bridge (from dawn's last frame, ending on dusk's first), dusk, night
    assert [p["seam_dropped"] for p in report["outputs"]["day"]["parts"]] == [
        False, True, True, False]
    seams = {(s["parent"], s["parent_frame"], s["child"], s["child_frame"]): s["difference"]
             for s in report["seams"]}
    assert set(seams) == {("dawn", "last_frame", "bridge", "first_frame"),
                          ("dusk", "first_frame", "bridge", "last_frame")}
    assert all(0 <= d < 6 for d in seams.values())  # H.264 loss, not another picture


def test_an_unchanged_re_run_encodes_no_film(isolated: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = copy_examples(isolated) / "rocket-to-city.yaml"
    argv = ["run", str(path), "--sim", *FAST, "--out", str(isolated / "runs")]
    assert run_cli(argv, capsys)[0] == 0
    assert run_cli(argv, capsys)[0] == 0

    first, second = (read_report(d) for d in sorted((isolated / "runs" / "rocket-to-city")
                                                    .iterdir()))
    made, restored = first["outputs"]["film"], second["outputs"]["film"]
    assert (made["cached"], restored["cached"]) == (False, True)
    assert {s["status"] for s in second["steps"]} == {"cached"}
    assert restored["sha256"] == made["sha256"]
    assert (restored["frames"], restored["parts"]) == (made["frames"], made["parts"])


def test_a_failed_part_leaves_the_film_incomplete(isolated: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = write_pipeline(isolated / "p", "broken-film", [
        frames_step("open", "a quiet harbour"),
        frames_step("bad", "a forbidden scene"),
        frames_step("close", "the harbour at night", image="${steps.open.last_frame}"),
    ])
    path.write_text(path.read_text(encoding="utf-8")
                    + "outputs:\n  film: {concat: [open, bad, close]}\n"
                    + "  short: {concat: [open, close]}\n", encoding="utf-8")
    code, out, err = run_cli(["run", str(path), "--sim", *FAST,
                              "--out", str(isolated / "runs")], capsys)
    run_dir = only_run_dir(isolated / "runs", "broken-film")
    report = read_report(run_dir)

    assert code == 1, out + err
    film, short = report["outputs"]["film"], report["outputs"]["short"]
    assert (film["status"], film["missing"], film["path"]) == ("incomplete", ["bad"], None)
    assert [p["frames"] for p in film["parts"]] == [72, None, 72]
    assert not (run_dir / "outputs" / "film.mp4").exists()
    assert (short["status"], short["frames"]) == ("ready", 72 + 72 - 1)  # close continues open
    assert out.rstrip().splitlines()[-1] == (
        f"film: incomplete, missing bad (failed)   short: {report['run_dir']}/outputs/short.mp4 "
        f"(6.0 s)   review: {report['run_dir']}/report.html")
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert ('<p class="alert">film film is incomplete: missing <a href="#step-bad">bad</a></p>'
            in page)
    assert '<article class="card failed problem" id="step-bad">' in page
    assert "[moderation] " in page


def test_an_interrupted_run_writes_its_page_and_resume_makes_the_film(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_pipeline(isolated / "p", "stopped", [
        frames_step("one", "a long shot"),
        frames_step("two", "what follows", image="${steps.one.last_frame}")])
    path.write_text(path.read_text(encoding="utf-8") + "outputs:\n  film: {concat: [one, two]}\n",
                    encoding="utf-8")
    runs = isolated / "runs"
    env = {**os.environ, "KLINGFLOW_HOME": str(isolated / "home"), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "klingflow", "run", str(path), "--sim", "--out", str(runs)],
        cwd=isolated, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, code, out, err = ctrl_c_when(process, lambda: journal_has_submitted(runs), wait=30,
                                    timeout=30)
    assert code == 130, out + err
    run_dir = only_run_dir(runs, "stopped")
    film = read_report(run_dir)["outputs"]["film"]
    assert (film["status"], film["path"]) == ("incomplete", None)
    assert film["missing"] == ["one", "two"]  # one was running (2 s) when Ctrl-C came
    assert "film film is incomplete" in (run_dir / "report.html").read_text(encoding="utf-8")

    code, out, err = run_cli(["run", str(path), "--sim", *FAST, "--out", str(runs),
                              "--resume"], capsys)
    assert code == 0, out + err
    film = read_report(run_dir)["outputs"]["film"]
    assert (film["status"], film["frames"]) == ("ready", 72 + 72 - 1)
    assert (run_dir / "outputs" / "film.mp4").is_file()
