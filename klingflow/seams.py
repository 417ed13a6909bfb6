"""Seams: where one step's clip takes a frame of another, and how well they meet.

A step chains from another when its `image` or `image_tail` is that step's
`${steps.ID.last_frame}` or `${steps.ID.first_frame}`. The frame the child was
made from and the child's own frame at that end should show the same picture; the
mean absolute difference of the two (0-255 per pixel and channel) measures it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from klingflow import media
from klingflow.files import read_text_file, write_atomically
from klingflow.run import OutputFile, StepResult
from klingflow.spec.pipeline import Pipeline, Step, Template

SEAM_WARNING = 8.0
"""A seam whose frames differ by more than this (mean, 0-255) is shown with a warning:
H.264 loss stays well under it, another picture goes well over it."""

_CHILD_FRAME = {"image": "first_frame", "image_tail": "last_frame"}
_WORKERS = 4  # PNG decoding releases the GIL: a few threads measure many seams faster


@dataclass(frozen=True, slots=True)
class Seam:
    """`child`'s `child_frame` was made from `parent`'s `parent_frame`."""

    parent: str
    parent_frame: str  # first_frame | last_frame
    child: str
    child_frame: str  # first_frame (from `image`) | last_frame (from `image_tail`)

    def to_json(self, difference: float | None) -> dict[str, object]:
        return {"parent": self.parent, "parent_frame": self.parent_frame, "child": self.child,
                "child_frame": self.child_frame,
                "difference": None if difference is None else round(difference, 2)}


def find_seams(pipeline: Pipeline) -> list[Seam]:
    """Every chained pair of the pipeline, in step order."""
    return [seam for step in pipeline.steps for seam in _seams_of(step)]


def _seams_of(step: Step) -> list[Seam]:
    seams: list[Seam] = []
    for field, child_frame in _CHILD_FRAME.items():
        value = step.params.get(field)
        if not isinstance(value, Template):
            continue
        seams.extend(Seam(ref.name, str(ref.attr), step.id, child_frame) for ref in value.refs
                     if ref.scope == "steps" and ref.attr in ("first_frame", "last_frame"))
    return seams


def continues(pipeline: Pipeline, later: str, earlier: str) -> bool:
    """Whether, in a film where `later` follows `earlier`, the picture where they meet
    repeats: `later` starts from `earlier`'s last frame, or `earlier` was made to end
    on `later`'s first frame (its image_tail)."""
    return (Seam(earlier, "last_frame", later, "first_frame") in _seams_of(pipeline.step(later))
            or Seam(later, "first_frame", earlier, "last_frame")
            in _seams_of(pipeline.step(earlier)))


def measure_seams(seams: Sequence[Seam], results: Mapping[str, StepResult], *,
                  memo: Path | None = None) -> list[dict[str, object]]:
    """Each seam as report JSON, with the difference of its two frames (None when a
    frame is missing: a step that failed or did not run).

    With `memo` (a folder), each difference is kept there by the two frames' hashes,
    so an unchanged re-run decodes no frame again (two 1080p PNGs cost ~50 ms).
    """
    with ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="klingflow-seams") as pool:
        differences = list(pool.map(lambda seam: _difference(seam, results, memo), seams))
    return [seam.to_json(diff) for seam, diff in zip(seams, differences, strict=True)]


def _difference(seam: Seam, results: Mapping[str, StepResult],
                memo: Path | None) -> float | None:
    parent, child = results.get(seam.parent), results.get(seam.child)
    if parent is None or child is None:
        return None
    if not parent.status.done or not child.status.done:
        return None
    first, second = parent.outputs.get(seam.parent_frame), child.outputs.get(seam.child_frame)
    if first is None or second is None:
        return None
    kept = memo / f"{first.sha256}-{second.sha256}" if memo and first.sha256 and second.sha256 \
        else None
    if kept is not None:
        with contextlib.suppress(OSError, ValueError):
            return float(read_text_file(kept))
    return _measure(first, second, kept)


def _measure(first: OutputFile, second: OutputFile, kept: Path | None) -> float | None:
    try:
        difference = media.frame_difference(first.path, second.path)
    except media.MediaError:
        return None
    if kept is not None:
        kept.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(kept, repr(difference))
    return difference
