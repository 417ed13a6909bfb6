"""Every example pipeline runs on the simulator with the README's command.

`klingflow run pipelines/NAME.yaml --sim` (through `main`, on copies of the
examples in a temporary directory): exit 0, one decodable clip per step with the
planned duration, and every chained seam continuous (the frame a step starts or
ends on is the frame of the clip it references).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from klingflow import media
from klingflow.plan import build_plan
from klingflow.spec import load_pipeline
from klingflow.spec.pipeline import Template
from tests.conftest import EXAMPLE_FILES
from tests.runhelpers import (
    PIPELINES,
    copy_examples,
    mean_abs_diff,
    only_run_dir,
    read_report,
    run_cli,
    steps_of,
)

EXAMPLES = [p.name for p in EXAMPLE_FILES]
SEAM_TOLERANCE = 6.0  # mean abs difference per channel (0..255): H.264 loss, not another picture
FRAME_FILES = {"last_frame": ".last.png", "first_frame": ".first.png"}


def test_every_example_is_covered() -> None:
    assert len(EXAMPLES) >= 5, EXAMPLES


def _seams(pipeline_path: Path) -> list[tuple[str, str, str, str]]:
    """(step, its own frame file suffix, referenced step, referenced frame suffix) per chain."""
    pipeline = load_pipeline(pipeline_path)
    seams = []
    for step in pipeline.steps:
        for field, own in (("image", ".first.png"), ("image_tail", ".last.png")):
            value = step.params.get(field)
            if not isinstance(value, Template):
                continue
            for ref in value.refs:
                if ref.scope == "steps" and ref.attr in FRAME_FILES:
                    seams.append((step.id, own, ref.name, FRAME_FILES[ref.attr]))
    return seams


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_on_the_simulator(name: str, isolated: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    pipelines = copy_examples(isolated)
    path = pipelines / name
    code, out, err = run_cli(["run", str(path), "--sim", "--sim-speed", "20",
                              "--out", str(isolated / "runs")], capsys)
    assert code == 0, out + err

    plan = build_plan(load_pipeline(path))
    run_dir = only_run_dir(isolated / "runs", plan.name)
    report = read_report(run_dir)
    assert report["status"] == "succeeded"
    assert report["backend"] == "sim"
    steps = steps_of(report)
    assert set(steps) == {s.id for s in plan.steps}
    for planned in plan.steps:
        step = steps[planned.id]
        assert step["status"] == "succeeded", step
        assert step["task_id"] is not None and step["error"] is None
        clip = run_dir / step["outputs"]["video"]["path"]
        info = media.probe(clip)
        assert info.frames > 0 and info.codec == "h264"
        assert info.duration == pytest.approx(planned.duration, abs=0.1), planned.id
        for attr in ("first_frame", "last_frame"):
            assert (run_dir / step["outputs"][attr]["path"]).stat().st_size > 0

    seams = _seams(path)
    for step_id, own, ref_id, ref_suffix in seams:
        diff = mean_abs_diff(run_dir / f"{step_id}{own}", run_dir / f"{ref_id}{ref_suffix}")
        assert diff < SEAM_TOLERANCE, (step_id, own, ref_id, ref_suffix, diff)
    if name == "two-accounts.yaml":  # the tolerance tells two different photos apart
        assert mean_abs_diff(run_dir / "dawn.first.png",
                             run_dir / "night.first.png") > SEAM_TOLERANCE
    # no run directory, cache or lock file leaked outside the temporary directory
    assert not (PIPELINES / name.replace(".yaml", ".lock.yaml")).exists()


def test_seams_are_found_in_the_chained_examples() -> None:
    """The seam check above is not vacuous: the chained examples have chains."""
    seams = _seams(PIPELINES / "rocket-to-city.yaml")
    assert ("climb", ".first.png", "launch", ".last.png") in seams
    assert ("orbit", ".first.png", "climb", ".last.png") in seams
    bridge = _seams(PIPELINES / "two-accounts.yaml")
    assert ("bridge", ".last.png", "dusk", ".first.png") in bridge

