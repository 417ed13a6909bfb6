"""Benchmark of klingflow.media: clip rendering and last-frame extraction.

Run: python bench/bench_media.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from klingflow.media import (
    extract_first_frame,
    extract_frames,
    extract_last_frame,
    probe,
    render_clip,
)

RENDER_TARGET_S = 0.3


def picture(width: int, height: int, phase: float) -> Image.Image:
    """A smooth gradient picture, like a photo to the encoder."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack(
        [
            128 + 100 * np.sin(x / width * 6.28 + phase),
            255 * y / height,
            128 + 100 * np.cos((x + y) / (width + height) * 9 + phase),
        ],
        axis=-1,
    )
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        action()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def frames_from_last_keyframe(video: Path) -> tuple[int, int]:
    """(packets from the last keyframe on, all packets), by demuxing alone."""
    with av.open(str(video)) as container:
        keys = [packet.is_keyframe for packet in container.demux(video=0) if packet.size]
    last_key = len(keys) - 1 - keys[::-1].index(True)
    return len(keys) - last_key, len(keys)


def bench_render(folder: Path) -> None:
    start, end = picture(640, 384, 0), picture(640, 384, 2)
    cases: dict[str, dict[str, Any]] = {
        "cross-fade (start+end)": {"start": start, "end": end},
        "one image, gentle zoom/pan": {"start": start, "end": None},
        "one image, motion=spin": {"start": start, "end": None, "motion": "spin"},
    }
    print("render_clip, 5 s at 320x192, 24 fps (median of 5):")
    for label, images in cases.items():
        out = folder / "clip.mp4"
        seconds = median_seconds(partial(render_clip, out, duration=5, **images), 5)
        verdict = "ok" if seconds < RENDER_TARGET_S else "OVER"
        print(f"  {label:30s} {seconds:6.3f} s  (target < {RENDER_TARGET_S} s: {verdict})")


def bench_last_frame(folder: Path) -> None:
    video = folder / "hd.mp4"
    began = time.perf_counter()
    render_clip(
        video,
        start=picture(1920, 1080, 0),
        end=picture(1920, 1080, 2),
        duration=10,
        size=(1920, 1080),
        fps=24,
        gop=48,
    )
    rendered = time.perf_counter() - began
    info = probe(video)
    tail, total = frames_from_last_keyframe(video)
    result = extract_last_frame(video, folder / "last.png")
    seconds = median_seconds(lambda: extract_last_frame(video, folder / "last.png"), 5)
    print(f"extract_last_frame, 10 s {info.width}x{info.height} {info.fps:g} fps, gop 48:")
    print(f"  (rendering it once took {rendered:.2f} s)")
    print(f"  time (median of 5)            {seconds:6.3f} s")
    print(f"  frames decoded                {result.frames_decoded:6d}")
    print(f"  frames from last keyframe on  {tail:6d}")
    print(f"  total frames                  {total:6d}")
    print(f"  last frame at                 {result.pts_seconds:6.3f} s of {info.duration:g} s")


def cpu_ms(action: Callable[[], object], repeats: int, rounds: int = 3) -> float:
    """CPU milliseconds of one `action` (all threads of this process): warmed once
    (imports, converters), then the best mean of `rounds` rounds of `repeats` calls,
    as a busy machine's noise is not the action's."""
    action()
    best = float("inf")
    for _ in range(rounds):
        began = time.process_time()
        for _ in range(repeats):
            action()
        best = min(best, (time.process_time() - began) / repeats)
    return best * 1000


def bench_both_frames(folder: Path) -> None:
    """What a run does with every clip it collects: take its first and last frames."""
    clips = {"400x304 2 fps, gop 4 (bench_scale's size)": (folder / "cheap.mp4", 2, 4, (400, 304)),
             "1920x1080 24 fps, gop 48": (folder / "hd.mp4", 24, 48, (1920, 1080))}
    print("first and last frames as PNGs, CPU per clip (warm, best of 3 x 20):")
    for label, (video, fps, gop, size) in clips.items():
        if not video.exists():
            render_clip(video, start=picture(*size, 0), end=picture(*size, 2), duration=5,
                        size=size, fps=fps, gop=gop)
        first, last = folder / "first.png", folder / "last.png"
        one = cpu_ms(lambda: extract_frames(video, first, last), 20)  # noqa: B023
        two = cpu_ms(lambda: (extract_first_frame(video, first),  # noqa: B023
                              extract_last_frame(video, last)), 20)  # noqa: B023
        print(f"  {label:42s} extract_frames {one:6.1f} ms   "
              f"first + last apart {two:6.1f} ms")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="klingflow-bench-") as tmp:
        bench_render(Path(tmp))
        bench_last_frame(Path(tmp))
        bench_both_frames(Path(tmp))


if __name__ == "__main__":
    main()
