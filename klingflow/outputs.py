"""Films: each declared output made from its steps' clips once the steps are done.

An output whose parts all succeeded (paid, cached or restored) is written to
`RUN_DIR/outputs/NAME.mp4` by `media.concat`. Where two parts meet on one picture
(the later starts from the earlier's last frame, or the earlier was made to end on
the later's first frame) that picture is shown once. An output missing a part is
incomplete and names the steps it misses. Films are cached by content, like steps:
the same clips joined the same way are restored from the cache, never encoded again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from klingflow import media
from klingflow.cache import Cache
from klingflow.files import (
    canonical_hash,
    read_text_file,
    sha256_file,
    temporary_beside,
    write_atomically,
)
from klingflow.interrupts import stop_signals
from klingflow.run import StepResult
from klingflow.seams import continues
from klingflow.spec.pipeline import Output, Pipeline

FILM_FORMAT = 1
"""Part of every film's cache key: a new way of joining clips makes new films."""
OUTPUTS_DIR = "outputs"
READY, INCOMPLETE = "ready", "incomplete"
INTERRUPTED = "not made: the run was interrupted; continue with --resume"


@dataclass(frozen=True, slots=True)
class FilmPart:
    step: str
    frames: int | None  # the clip's own frame count; None when there is no clip
    seam_dropped: bool  # it starts from the previous part's last frame: shown once


@dataclass(frozen=True, slots=True)
class FilmResult:
    """One declared output after a run: made (ready), or incomplete and why."""

    name: str
    concat: tuple[str, ...]
    status: str  # ready | incomplete
    missing: tuple[str, ...]  # parts that did not succeed
    parts: tuple[FilmPart, ...]
    path: Path | None = None
    sha256: str | None = None
    duration: float | None = None
    frames: int | None = None
    method: str | None = None  # copy (packets as they were) | reencode
    cached: bool = False  # restored from the cache: nothing was encoded by this run
    error: str | None = None  # why a film whose parts all exist was not made

    def to_json(self, run_dir: Path) -> dict[str, Any]:
        return {
            "concat": list(self.concat), "status": self.status, "missing": list(self.missing),
            "path": str(self.path.relative_to(run_dir)) if self.path else None,
            "sha256": self.sha256,
            "duration": round(self.duration, 3) if self.duration is not None else None,
            "frames": self.frames, "method": self.method, "cached": self.cached,
            "error": self.error,
            "parts": [{"step": p.step, "frames": p.frames, "seam_dropped": p.seam_dropped}
                      for p in self.parts],
        }


async def make_outputs(pipeline: Pipeline, results: Mapping[str, StepResult], *,
                       run_dir: Path, cache: Cache,
                       interrupted: bool = False) -> dict[str, FilmResult]:
    """Every declared output, made in a worker thread one after another.

    After an interrupted run, or on Ctrl-C (SIGINT, SIGTERM) while films are being
    made, the films not yet made are reported incomplete with `INTERRUPTED`.
    """
    films: dict[str, FilmResult] = {}
    if not interrupted:
        async with anyio.create_task_group() as group:
            group.start_soon(_cancel_on_signal, group.cancel_scope)
            for output in pipeline.outputs.values():
                films[output.name] = await anyio.to_thread.run_sync(
                    make_output, output, pipeline, results, run_dir, cache,
                    abandon_on_cancel=True)
            group.cancel_scope.cancel()
    for output in pipeline.outputs.values():
        if output.name not in films:
            films[output.name] = _not_made(output, pipeline, results)
    return films


async def _cancel_on_signal(scope: anyio.CancelScope) -> None:
    with stop_signals() as signals:
        async for _ in signals:
            scope.cancel()
            return


def _not_made(output: Output, pipeline: Pipeline,
              results: Mapping[str, StepResult]) -> FilmResult:
    film = _incomplete(output, pipeline, results)
    return film if film.missing else replace(film, error=INTERRUPTED)


def make_output(output: Output, pipeline: Pipeline, results: Mapping[str, StepResult],
                run_dir: Path, cache: Cache) -> FilmResult:
    """One output: restored from the cache, made, or incomplete."""
    film = _incomplete(output, pipeline, results)
    if film.missing:
        return film
    clips = [results[sid].outputs["video"] for sid in output.concat]
    seams = [p.seam_dropped for p in film.parts]
    key = canonical_hash({"format": FILM_FORMAT,
                          "parts": [[c.sha256, s] for c, s in zip(clips, seams, strict=True)]})
    target = run_dir / OUTPUTS_DIR / f"{output.name}.mp4"
    record = _lookup(cache, key)
    try:
        if record is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            cache.restore(record["sha256"], target)
            return _ready(film, target, record, cached=True)
        record = _join([c.path for c in clips], seams, target)
    except media.MediaError as exc:
        return replace(film, error=f"the film could not be made: {exc}")
    cache.put_object(target, record["sha256"])
    write_atomically(_record_path(cache, key), json.dumps(record, indent=1, sort_keys=True))
    return _ready(film, target, record, cached=False)


def _incomplete(output: Output, pipeline: Pipeline,
                results: Mapping[str, StepResult]) -> FilmResult:
    """The output as far as its parts go: which are missing, their frame counts."""
    done = [sid for sid in output.concat if results[sid].status.done]
    missing = tuple(dict.fromkeys(sid for sid in output.concat if sid not in done))
    parts = tuple(
        FilmPart(sid, _frames_of(results[sid]) if sid in done else None,
                 index > 0 and continues(pipeline, sid, output.concat[index - 1]))
        for index, sid in enumerate(output.concat))
    return FilmResult(output.name, output.concat, INCOMPLETE, missing, parts)


def _frames_of(result: StepResult) -> int | None:
    video = result.outputs.get("video")
    if video is None:
        return None
    try:
        return media.probe(video.path).frames
    except media.MediaError:
        return None


def _join(clips: Sequence[Path], seams: Sequence[bool], target: Path) -> dict[str, Any]:
    """Concatenate into `target` (whole or not at all); the film's cache record."""
    partial = temporary_beside(target)
    try:
        made = media.concat([media.ConcatPart(c, s) for c, s in zip(clips, seams, strict=True)],
                            partial)
        sha = sha256_file(partial)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return {"sha256": sha, "duration": made.info.duration, "frames": made.info.frames,
            "method": "copy" if made.copied else "reencode"}


def _ready(film: FilmResult, target: Path, record: Mapping[str, Any], *,
           cached: bool) -> FilmResult:
    return replace(film, status=READY, path=target, sha256=record["sha256"],
                   duration=float(record["duration"]), frames=int(record["frames"]),
                   method=str(record["method"]), cached=cached)


def _record_path(cache: Cache, key: str) -> Path:
    folder = cache.root / OUTPUTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{key}.json"


def _lookup(cache: Cache, key: str) -> dict[str, Any] | None:
    """The cached film of `key`, when its record and its file are both there."""
    try:
        record: dict[str, Any] = json.loads(read_text_file(_record_path(cache, key)))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not {"sha256", "duration", "frames", "method"} <= set(record):
        return None
    return record if cache.object_path(str(record["sha256"])).exists() else None
