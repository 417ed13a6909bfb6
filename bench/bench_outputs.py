"""Benchmark of films and the review page.

Run: python bench/bench_outputs.py [--parts 20] [--seconds 5] [--size 640x384] [--steps 1000]

1. A film of N chained parts (each made from the previous one's last frame, so every
   seam drops a frame): `media.concat` by stream copy and by a forced re-encode,
   against the time to decode every frame of the parts (best of 3 for the fast ones).
2. The review page of a run of M steps (chains, failures, two films): `render_html`
   best of 3, per 100 steps; and measuring the seams of such a run (`measure_seams`).

Exits 1 if stream copy is not at least 10 times faster than the re-encode, or the page
takes 0.1 s or more per 100 steps ("well under a second per hundred steps").
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from klingflow import media
from klingflow.report.html import render_html
from klingflow.run import OutputFile, StepResult
from klingflow.seams import Seam, measure_seams

COPY_SPEEDUP_TARGET = 10.0
PAGE_TARGET_PER_100 = 0.1  # seconds


def best_of(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        action()
        times.append(time.perf_counter() - began)
    return min(times)


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---- the film -------------------------------------------------------------------------


def make_parts(folder: Path, count: int, seconds: float, size: tuple[int, int]) -> list[Path]:
    """`count` clips, each starting from the previous one's last frame (as a chain runs)."""
    colours = [(200, 60, 40), (40, 90, 200), (60, 180, 80), (220, 200, 60)]
    start = Image.new("RGB", size, colours[0])
    parts = []
    for index in range(count):
        clip = folder / f"part{index:02d}.mp4"
        end = Image.new("RGB", size, colours[(index + 1) % len(colours)])
        end.paste((240, 240, 240), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
        media.render_clip(clip, start=start, end=end, duration=seconds, size=size, seed=index)
        start = Image.open(media.extract_last_frame(clip, folder / f"part{index:02d}.png").path)
        parts.append(clip)
    return parts


def decode_all(parts: list[Path]) -> int:
    frames = 0
    for part in parts:
        with av.open(str(part)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames += sum(1 for _ in container.decode(stream))
    return frames


def bench_film(folder: Path, count: int, seconds: float, size: tuple[int, int]) -> bool:
    began = time.perf_counter()
    parts = make_parts(folder, count, seconds, size)
    print(f"film of {count} chained parts, {seconds:g} s each at {size[0]}x{size[1]}, 24 fps "
          f"(rendering them took {time.perf_counter() - began:.1f} s; {load()}):")
    chain = [media.ConcatPart(p, continues=i > 0) for i, p in enumerate(parts)]
    frames = decode_all(parts)
    decode = best_of(lambda: decode_all(parts), 3)
    copied = media.concat(chain, folder / "copy.mp4")
    copy = best_of(lambda: media.concat(chain, folder / "copy.mp4"), 3)
    began = time.perf_counter()
    encoded = media.concat(chain, folder / "reencode.mp4", reencode=True)
    reencode = time.perf_counter() - began
    assert copied.copied and not encoded.copied
    assert copied.info.frames == encoded.info.frames == frames - (count - 1)
    print(f"  decode every frame of the parts  {decode:8.3f} s  ({frames} frames)")
    print(f"  concat, stream copy              {copy:8.3f} s  ({decode / copy:.0f}x faster "
          "than decoding)")
    print(f"  concat, forced re-encode         {reencode:8.3f} s  ({reencode / decode:.1f}x the "
          f"decode; {reencode / copy:.0f}x the copy)")
    print(f"  film: {copied.info.frames} frames, {copied.info.duration:.2f} s "
          f"(= {frames} - {count - 1} seam frames)")
    ok = reencode / copy >= COPY_SPEEDUP_TARGET
    print(f"  target: copy >= {COPY_SPEEDUP_TARGET:g}x faster than re-encode: "
          f"{'ok' if ok else 'MISSED'}")
    return ok


# ---- the page ---------------------------------------------------------------------------


def fake_run(folder: Path, count: int) -> dict[str, Any]:
    """A report of `count` steps in chains of 10 over 3 accounts, every 50th step failed
    (and the rest of its chain skipped), with its files (tiny placeholders) on disk."""
    steps = [fake_step(folder, index) for index in range(count)]
    seams = [{"parent": f"s{i - 1:05d}", "parent_frame": "last_frame", "child": f"s{i:05d}",
              "child_frame": "first_frame", "difference": 1.5 + (i % 13)}
             for i in range(count) if i % 10]
    films = {f"film{n}": {"concat": [f"s{i:05d}" for i in range(n * 10, n * 10 + 10)],
                          "status": "ready", "missing": [], "path": f"outputs/film{n}.mp4",
                          "sha256": "0" * 64, "duration": 49.6, "frames": 1191,
                          "method": "copy", "cached": False, "error": None, "parts": []}
             for n in range(2)}
    for name in films:
        (folder / "outputs").mkdir(exist_ok=True)
        (folder / "outputs" / f"{name}.mp4").write_bytes(b"")
    return {"format": 1, "pipeline": {"name": "bench", "path": "bench.yaml"},
            "run_id": "20261129-000000-00001", "run_dir": str(folder), "backend": "sim",
            "status": "failed", "error": None, "started_at": stamp(0),
            "finished_at": stamp(count * 0.6), "steps": steps, "outputs": films, "seams": seams,
            "totals": {"steps": count, "by_status": {}, "credits": 20 * count,
                       "credits_by_account": {}, "tasks_created": count}}


def stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_800_000_000 + int(seconds))) + \
        f".{int(seconds * 1000) % 1000:03d}+00:00"


def fake_step(folder: Path, index: int) -> dict[str, Any]:
    sid = f"s{index:05d}"
    failed, skipped = index % 50 == 7, 7 < index % 50 < 10
    status = "failed" if failed else "skipped" if skipped else "succeeded"
    outputs = {}
    if status == "succeeded":
        for attr, suffix in (("video", ".mp4"), ("first_frame", ".first.png"),
                             ("last_frame", ".last.png")):
            (folder / f"{sid}{suffix}").write_bytes(b"")
            outputs[attr] = {"path": f"{sid}{suffix}", "sha256": "0" * 64}
    begin = index * 0.5
    return {"id": sid, "kind": "frames", "model": "kling-v2-1", "mode": "std", "duration": 5,
            "prompt": f"shot {index} of the bench <film> & more", "needs":
            [f"s{index - 1:05d}"] if index % 10 else [], "status": status, "task_id": index,
            "account": "abc"[index % 3], "attempts": 1,
            "error_category": "moderation" if failed else None,
            "error": "refused" if failed else "needs a failed step" if skipped else None,
            "queued_at": stamp(0), "ready_at": stamp(begin), "slot_at": stamp(begin + 0.2),
            "submitted_at": stamp(begin + 0.3), "finished_at": stamp(begin + 3), "credits": 20,
            "key": None, "outputs": outputs}


def photo(size: tuple[int, int], seed: int) -> Image.Image:
    """A picture that compresses like a frame: smooth colour with a little grain."""
    height, width = size[1], size[0]
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([128 + 100 * np.sin(x / width * 6), 255 * y / height,
                    128 + 100 * np.cos((x + y) / (width + height) * 9)], axis=-1)
    grain = np.random.default_rng(seed).normal(0, 3, rgb.shape)
    return Image.fromarray((rgb + grain).clip(0, 255).astype(np.uint8))


def bench_seams(folder: Path, count: int, size: tuple[int, int]) -> None:
    """The seams measured at the end of a run of `count` chained steps: real PNGs, written
    at zlib level 1, as a run's frames are."""
    photo(size, 1).save(folder / "a.png", compress_level=1)
    photo(size, 2).save(folder / "b.png", compress_level=1)
    results = {f"s{i}": StepResult(f"s{i}", status="succeeded", outputs={
        "first_frame": OutputFile(folder / "b.png", f"{i:064x}"),
        "last_frame": OutputFile(folder / "a.png", f"{i + count:064x}")}) for i in range(count)}
    seams = [Seam(f"s{i - 1}", "last_frame", f"s{i}", "first_frame") for i in range(1, count)]
    memo = folder / f"memo-{size[0]}"
    seconds = best_of(lambda: measure_seams(seams, results, memo=memo), 1)
    again = best_of(lambda: measure_seams(seams, results, memo=memo), 1)
    print(f"  measure {len(seams)} seams of {size[0]}x{size[1]} frames  {seconds:8.3f} s"
          f"  (a re-run, from the cache: {again:.3f} s)")


def bench_page(folder: Path, count: int) -> bool:
    report = fake_run(folder, count)
    page = render_html(report, folder)
    seconds = best_of(lambda: render_html(report, folder), 3)
    per_100 = seconds / count * 100
    ok = per_100 < PAGE_TARGET_PER_100
    print(f"review page of {count} steps ({load()}):")
    print(f"  render_html (best of 3)         {seconds:8.3f} s  = {per_100 * 1000:.1f} ms per "
          f"100 steps (target < {PAGE_TARGET_PER_100 * 1000:.0f} ms: {'ok' if ok else 'MISSED'})")
    print(f"  page size                       {len(page.encode()) / 1e6:8.2f} MB")
    for size in ((320, 192), (1920, 1080)):
        bench_seams(folder, count, size)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--size", default="640x384", help="WIDTHxHEIGHT of the parts")
    parser.add_argument("--steps", type=int, default=1000, help="steps of the review page")
    args = parser.parse_args(argv)
    width, height = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="klingflow-bench-") as tmp:
        film_dir, page_dir = Path(tmp) / "film", Path(tmp) / "page"
        film_dir.mkdir()
        page_dir.mkdir()
        ok = bench_film(film_dir, args.parts, args.seconds, (width, height))
        ok = bench_page(page_dir, args.steps) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
