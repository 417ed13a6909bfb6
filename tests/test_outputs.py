"""klingflow.outputs and klingflow.seams: which films are made of which clips, cached by
content, incomplete when a part is missing; which steps chain from which."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from PIL import Image

from klingflow import media
from klingflow.cache import Cache
from klingflow.files import sha256_file
from klingflow.outputs import INTERRUPTED, make_output, make_outputs
from klingflow.run import OutputFile, StepResult, StepStatus
from klingflow.seams import Seam, continues, find_seams, measure_seams
from klingflow.spec import load_pipeline
from klingflow.spec.pipeline import Pipeline
from tests.runhelpers import frames_step, write_pipeline


def _pipeline(folder: Path, outputs: Mapping[str, list[str]]) -> Pipeline:
    """a; b from a's last frame; c on its own; d ending on c's first frame."""
    path = write_pipeline(folder, "films", [
        frames_step("a", "a red room"),
        frames_step("b", "the room turns blue", image="${steps.a.last_frame}"),
        frames_step("c", "a green field"),
        frames_step("d", "towards the field", image_tail="${steps.c.first_frame}"),
    ])
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    document["outputs"] = {name: {"concat": ids} for name, ids in outputs.items()}
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return load_pipeline(path)


def _clip(run_dir: Path, step_id: str, colour: tuple[int, int, int],
          start: Image.Image | None = None, status: StepStatus = StepStatus.SUCCEEDED) -> StepResult:
    """A finished step with a real 1 s clip and its frames in `run_dir`."""
    video = run_dir / f"{step_id}.mp4"
    picture = start or Image.new("RGB", (320, 192), colour)
    media.render_clip(video, start=picture, end=Image.new("RGB", (320, 192), colour), duration=1)
    first = media.extract_first_frame(video, run_dir / f"{step_id}.first.png").path
    last = media.extract_last_frame(video, run_dir / f"{step_id}.last.png").path
    outputs = {attr: OutputFile(path, sha256_file(path))
               for attr, path in (("video", video), ("first_frame", first), ("last_frame", last))}
    return StepResult(step_id, status=status, outputs=outputs)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, StepResult]:
    run_dir = tmp_path_factory.mktemp("run")
    a = _clip(run_dir, "a", (200, 40, 40))
    b = _clip(run_dir, "b", (40, 40, 200), start=Image.open(a.outputs["last_frame"].path))
    c = _clip(run_dir, "c", (40, 200, 40), status=StepStatus.CACHED)
    return {"a": a, "b": b, "c": c, "d": StepResult("d", status=StepStatus.SKIPPED)}


def _film_json(film: Any, run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = film.to_json(run_dir)
    return data


def test_a_film_is_made_once_then_restored_from_the_cache(
        tmp_path: Path, results: dict[str, StepResult], monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = _pipeline(tmp_path / "p", {"film": ["a", "b", "c"]})
    cache = Cache(tmp_path / "cache")
    first_run = tmp_path / "run1"

    film = make_output(pipeline.outputs["film"], pipeline, results, first_run, cache)

    target = first_run / "outputs" / "film.mp4"
    assert _film_json(film, first_run) == {
        "concat": ["a", "b", "c"], "status": "ready", "missing": [], "path": "outputs/film.mp4",
        "sha256": sha256_file(target), "duration": round(71 / 24, 3), "frames": 71,
        "method": "copy", "cached": False, "error": None,
        "parts": [{"step": "a", "frames": 24, "seam_dropped": False},
                  {"step": "b", "frames": 24, "seam_dropped": True},
                  {"step": "c", "frames": 24, "seam_dropped": False}]}
    assert media.probe(target).frames == 71
    assert not list(target.parent.glob(".*"))  # no temporary file left behind

    def no_encoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("an unchanged film was encoded again")

    monkeypatch.setattr(media, "concat", no_encoding)
    second_run = tmp_path / "run2"
    again = make_output(pipeline.outputs["film"], pipeline, results, second_run, cache)

    assert again.cached and again.status == "ready"
    assert (again.sha256, again.frames, again.parts) == (film.sha256, film.frames, film.parts)
    assert (second_run / "outputs" / "film.mp4").read_bytes() == target.read_bytes()


def test_a_film_made_in_another_order_is_another_film(
        tmp_path: Path, results: dict[str, StepResult]) -> None:
    pipeline = _pipeline(tmp_path / "p", {"ab": ["a", "b"], "ba": ["b", "a"]})
    cache = Cache(tmp_path / "cache")

    ab = make_output(pipeline.outputs["ab"], pipeline, results, tmp_path / "run", cache)
    ba = make_output(pipeline.outputs["ba"], pipeline, results, tmp_path / "run", cache)

    assert not ab.cached and not ba.cached
    assert (ab.frames, ba.frames) == (47, 48)  # b follows a only in ab: one seam frame
    assert [p.seam_dropped for p in ba.parts] == [False, False]


def test_a_film_missing_a_part_is_incomplete_and_names_it(
        tmp_path: Path, results: dict[str, StepResult]) -> None:
    pipeline = _pipeline(tmp_path / "p", {"film": ["c", "d", "a"]})
    run_dir = tmp_path / "run"

    film = make_output(pipeline.outputs["film"], pipeline, results, run_dir,
                       Cache(tmp_path / "cache"))

    assert _film_json(film, run_dir) == {
        "concat": ["c", "d", "a"], "status": "incomplete", "missing": ["d"], "path": None,
        "sha256": None, "duration": None, "frames": None, "method": None, "cached": False,
        "error": None,
        "parts": [{"step": "c", "frames": 24, "seam_dropped": False},
                  {"step": "d", "frames": None, "seam_dropped": False},
                  {"step": "a", "frames": 24, "seam_dropped": False}]}
    assert not (run_dir / "outputs").exists()


def test_a_part_that_cannot_be_read_is_the_film_s_error(
        tmp_path: Path, results: dict[str, StepResult]) -> None:
    pipeline = _pipeline(tmp_path / "p", {"film": ["a", "c"]})
    junk = tmp_path / "c.mp4"
    junk.write_bytes(b"\x00not an mp4\x00" * 64)
    broken = dict(results, c=StepResult("c", status=StepStatus.SUCCEEDED,
                                        outputs={"video": OutputFile(junk, sha256_file(junk))}))

    film = make_output(pipeline.outputs["film"], pipeline, broken, tmp_path / "run",
                       Cache(tmp_path / "cache"))

    assert (film.status, film.missing, film.path) == ("incomplete", (), None)
    assert film.error == ("the film could not be made: c.mp4: not a readable video: "
                          "Invalid data found when processing input")
    assert not list((tmp_path / "run").rglob("*film*"))  # no partial film left


def test_after_an_interrupted_run_no_film_is_started(
        tmp_path: Path, results: dict[str, StepResult]) -> None:
    pipeline = _pipeline(tmp_path / "p", {"film": ["a", "b"], "rest": ["d"]})

    films = anyio.run(lambda: make_outputs(pipeline, results, run_dir=tmp_path / "run",
                                           cache=Cache(tmp_path / "cache"), interrupted=True))

    assert (films["film"].status, films["film"].error) == ("incomplete", INTERRUPTED)
    assert INTERRUPTED == "not made: the run was interrupted; continue with --resume"
    assert (films["rest"].missing, films["rest"].error) == (("d",), None)
    assert not (tmp_path / "run" / "outputs").exists()


def test_every_film_is_made_after_a_run(tmp_path: Path, results: dict[str, StepResult]) -> None:
    pipeline = _pipeline(tmp_path / "p", {"film": ["a", "b"], "short": ["c"]})

    films = anyio.run(lambda: make_outputs(pipeline, results, run_dir=tmp_path / "run",
                                           cache=Cache(tmp_path / "cache")))

    assert {name: (f.status, f.frames) for name, f in films.items()} == {
        "film": ("ready", 47), "short": ("ready", 24)}


# ---- seams ------------------------------------------------------------------------------


def test_seams_are_found_through_image_and_image_tail(tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path / "p", {})

    assert find_seams(pipeline) == [Seam("a", "last_frame", "b", "first_frame"),
                                    Seam("c", "first_frame", "d", "last_frame")]
    assert continues(pipeline, "b", "a")
    assert not continues(pipeline, "a", "b")
    assert not continues(pipeline, "d", "c")  # d ends on c: nothing repeats after c
    assert continues(pipeline, "c", "d")  # ... but c after d starts on d's last picture


def test_seams_are_measured_where_both_frames_exist(
        tmp_path: Path, results: dict[str, StepResult]) -> None:
    pipeline = _pipeline(tmp_path / "p", {})
    with_failure = dict(results, a=StepResult("a", status=StepStatus.FAILED))

    measured = measure_seams(find_seams(pipeline), results)
    missing = measure_seams(find_seams(pipeline), with_failure)

    assert measured[0]["difference"] is not None and measured[0]["difference"] < 3
    assert measured[1]["difference"] is None  # d was skipped
    assert missing[0] == {"parent": "a", "parent_frame": "last_frame", "child": "b",
                          "child_frame": "first_frame", "difference": None}


def test_a_measured_seam_is_kept_for_the_next_run(
        tmp_path: Path, results: dict[str, StepResult], monkeypatch: pytest.MonkeyPatch) -> None:
    seams = find_seams(_pipeline(tmp_path / "p", {}))
    memo = tmp_path / "cache" / "seams"

    first = measure_seams(seams, results, memo=memo)

    kept = memo / (f"{results['a'].outputs['last_frame'].sha256}-"
                   f"{results['b'].outputs['first_frame'].sha256}")
    assert float(kept.read_text(encoding="utf-8")) == pytest.approx(first[0]["difference"],
                                                                    abs=0.005)
    assert len(list(memo.iterdir())) == 1  # the unmeasured seam is not kept

    def no_decoding(*args: object) -> float:
        raise AssertionError("a seam was measured again")

    monkeypatch.setattr(media, "frame_difference", no_decoding)
    assert measure_seams(seams, results, memo=memo) == first


def test_parts_of_different_sizes_make_one_re_encoded_film(
        tmp_path: Path, results: dict[str, StepResult]) -> None:
    """A std clip (smaller) beside a pro clip (larger): one film at the larger size."""
    pipeline = _pipeline(tmp_path / "p", {"film": ["a", "c"]})
    large = tmp_path / "c.mp4"
    media.render_clip(large, start=Image.new("RGB", (640, 384), (40, 200, 40)), end=None,
                      duration=1, size=(640, 384))
    mixed = dict(results, c=StepResult("c", status=StepStatus.SUCCEEDED,
                                       outputs={"video": OutputFile(large, sha256_file(large))}))

    film = make_output(pipeline.outputs["film"], pipeline, mixed, tmp_path / "run",
                       Cache(tmp_path / "cache"))

    assert (film.status, film.method, film.frames) == ("ready", "reencode", 48)
    info = media.probe(tmp_path / "run" / "outputs" / "film.mp4")
    assert (info.width, info.height, info.frames) == (640, 384, 48)
