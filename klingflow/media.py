"""Everything klingflow does with video frames, through PyAV.

Rendering (the simulator's clips), probing, first/last frame extraction (the
chaining of clips) and concatenation (the pipeline's outputs). Every failure of a
file is a `MediaError` naming the file; no raw `av` exception leaves this module.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace
from PIL import Image, ImageOps

from klingflow.errors import KlingflowError

_T = TypeVar("_T")

__all__ = [
    "MOTIONS",
    "FrameResult",
    "MediaError",
    "VideoInfo",
    "concat",
    "extract_first_frame",
    "extract_last_frame",
    "fit_image",
    "probe",
    "render_clip",
]


class MediaError(KlingflowError):
    """A video file that cannot be used: unreadable, corrupt, or without a video stream."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path.name}: {problem}")


@dataclass(frozen=True, slots=True)
class VideoInfo:
    width: int
    height: int
    duration: float
    frames: int
    fps: float
    codec: str


@dataclass(frozen=True, slots=True)
class FrameResult:
    path: Path
    pts_seconds: float
    frames_decoded: int


# ---- images -----------------------------------------------------------------------


def fit_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` as RGB, scaled to cover `size` and centre-cropped to it (no distortion)."""
    rgb = image.convert("RGB")
    if rgb.size == size:
        return rgb
    return ImageOps.fit(rgb, size, method=Image.Resampling.BILINEAR)


# ---- motion: a pose per instant, identity at t = 0 --------------------------------


@dataclass(frozen=True, slots=True)
class _Pose:
    """An affine pose about the frame centre: scale x/y, rotation, shift (fractions of size)."""

    sx: float = 1.0
    sy: float = 1.0
    degrees: float = 0.0
    dx: float = 0.0
    dy: float = 0.0

    def damped(self, k: float) -> _Pose:
        """The pose moved `k` of the way from identity (k = 0: identity)."""
        return _Pose(
            1 + (self.sx - 1) * k, 1 + (self.sy - 1) * k, self.degrees * k, self.dx * k, self.dy * k
        )

    def is_identity(self) -> bool:
        return self == _IDENTITY

    def then(self, other: _Pose) -> _Pose:
        """This pose with `other` added on top (scales multiply, the rest add up)."""
        return _Pose(self.sx * other.sx, self.sy * other.sy, self.degrees + other.degrees,
                     self.dx + other.dx, self.dy + other.dy)


_IDENTITY = _Pose()


def _pulse_scale(t: float) -> float:
    return 1 + 0.15 * math.sin(2 * math.pi * 2 * t)


def _shake(t: float) -> _Pose:
    return _Pose(dx=0.03 * math.sin(2 * math.pi * 9 * t), dy=0.03 * math.sin(2 * math.pi * 13 * t))


# Each effect's visible motion as a function of time t in [0, 1]; all give identity at 0.
MOTIONS: dict[str, Callable[[float], _Pose]] = {
    "rise": lambda t: _Pose(dy=-0.35 * t),
    "spin": lambda t: _Pose(degrees=360.0 * t),
    "pulse": lambda t: _Pose(sx=_pulse_scale(t), sy=_pulse_scale(t)),
    "shake": _shake,
    "zoom": lambda t: _Pose(sx=1 + 0.6 * t, sy=1 + 0.6 * t),
    "squash": lambda t: _Pose(
        sx=1 + 0.25 * math.sin(math.pi * 2 * t), sy=1 - 0.25 * math.sin(math.pi * 2 * t)
    ),
}


def _gentle(t: float) -> _Pose:
    """The slow zoom and pan given to a clip with one image and no named motion."""
    return _Pose(sx=1 + 0.08 * t, sy=1 + 0.08 * t, dx=0.02 * t, dy=-0.01 * t)


def variation(seed: int) -> _Pose:
    """A small drift of its own for each generation: no two tasks give the same clip."""
    rng = random.Random(seed)
    zoom = rng.uniform(0.0, 0.06)
    return _Pose(sx=1 + zoom, sy=1 + zoom, degrees=rng.uniform(-3, 3),
                 dx=rng.uniform(-0.04, 0.04), dy=rng.uniform(-0.04, 0.04))


def _pose_at(t: float, motion: str | None, *, has_start: bool, has_end: bool,
             drift: _Pose = _IDENTITY) -> _Pose:
    """The pose at time t: identity on a frame that must equal a given image."""
    return _base_pose(t, motion, has_start=has_start, has_end=has_end).then(
        drift.damped(math.sin(math.pi * t) if has_end else t))


def _base_pose(t: float, motion: str | None, *, has_start: bool, has_end: bool) -> _Pose:
    if motion is not None:
        pose = MOTIONS[motion](t)
        return pose.damped(math.sin(math.pi * t)) if has_end else pose
    if has_start and has_end:
        return _IDENTITY
    return _gentle(t if has_start else 1 - t)


def _inverse_affine(pose: _Pose, width: int, height: int) -> tuple[float, ...]:
    """PIL AFFINE coefficients mapping an output pixel back to its source pixel."""
    cx, cy = width / 2, height / 2
    rad = math.radians(pose.degrees)
    cos, sin = math.cos(rad), math.sin(rad)
    # source = S^-1 R^-1 (output - centre - shift) + centre
    a, b = cos / pose.sx, sin / pose.sx
    d, e = -sin / pose.sy, cos / pose.sy
    ox, oy = -cx - pose.dx * width, -cy - pose.dy * height
    return (a, b, a * ox + b * oy + cx, d, e, d * ox + e * oy + cy)


def _move_plane(plane: Image.Image, pose: _Pose, fill: int, *, supersample: int) -> Image.Image:
    """One plane moved by `pose`, sampled `supersample` times finer then averaged (fast AA)."""
    width, height = plane.size
    k = supersample
    coeffs = _inverse_affine(pose, width, height)
    finer = tuple(c / k if i in (0, 1, 3, 4) else c for i, c in enumerate(coeffs))
    moved = plane.transform(
        (width * k, height * k),
        Image.Transform.AFFINE,
        finer,
        resample=Image.Resampling.NEAREST,
        fillcolor=fill,
    )
    return moved.reduce(k) if k > 1 else moved


# ---- encoding -----------------------------------------------------------------------

# The colour the renderer writes and tags: BT.709 matrix, limited range.
_RENDER_COLORSPACE = Colorspace.ITU709
_RENDER_RANGE = ColorRange.MPEG
_AVCOL_BT709 = 1


@contextmanager
def _create_mp4(out: Path) -> Iterator[av.container.OutputContainer]:
    """An MP4 open for writing; failing to write it is a `MediaError` naming it."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(out), mode="w", format="mp4") as container:
            yield container
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(out, f"cannot write video: {_reason(exc)}") from exc


@contextmanager
def _writer(
    out: Path, *, size: tuple[int, int], fps: int, gop: int, preset: str, crf: int
) -> Iterator[tuple[av.container.OutputContainer, av.video.stream.VideoStream]]:
    """An MP4 with one H.264 yuv420p stream tagged BT.709 limited, closed on exit."""
    with _create_mp4(out) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        ctx = stream.codec_context
        ctx.gop_size = gop
        ctx.thread_count = 0
        ctx.colorspace = ctx.color_primaries = ctx.color_trc = _AVCOL_BT709
        ctx.color_range = _RENDER_RANGE
        stream.options = {
            "preset": preset,
            "crf": str(crf),
            "x264-params": f"keyint={gop}:scenecut=0",
        }
        yield container, stream


_Planes = tuple[Image.Image, Image.Image, Image.Image]
_BLACK = (16, 128, 128)  # Y, U, V of black in limited range


def _to_planes(image: Image.Image) -> _Planes:
    """An RGB image as its Y, U, V planes (yuv420p, the renderer's colour)."""
    yuv = av.VideoFrame.from_image(image).reformat(
        format="yuv420p",
        src_colorspace=_RENDER_COLORSPACE,
        dst_colorspace=_RENDER_COLORSPACE,
        src_color_range=ColorRange.JPEG,
        dst_color_range=_RENDER_RANGE,
    )
    y, u, v = (np.ascontiguousarray(plane) for plane in _plane_arrays(yuv))
    return Image.fromarray(y), Image.fromarray(u), Image.fromarray(v)


def _plane_arrays(frame: av.VideoFrame) -> list[np.ndarray]:
    """The visible part of each plane of a planar 8-bit frame."""
    arrays = []
    for plane in frame.planes:
        rows = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(
            plane.height, plane.line_size
        )
        arrays.append(rows[:, : plane.width])
    return arrays


def _blend(first: _Planes, last: _Planes, t: float) -> _Planes:
    if t <= 0 or first is last:
        return first
    if t >= 1:
        return last
    return tuple(Image.blend(a, b, t) for a, b in zip(first, last, strict=True))  # type: ignore[return-value]


def _move(planes: _Planes, pose: _Pose) -> _Planes:
    """Luma antialiased (2x2 samples); half-size chroma sampled once, which the eye forgives."""
    if pose.is_identity():
        return planes
    y, u, v = planes
    return (
        _move_plane(y, pose, _BLACK[0], supersample=2),
        _move_plane(u, pose, _BLACK[1], supersample=1),
        _move_plane(v, pose, _BLACK[2], supersample=1),
    )


def _video_frame(planes: _Planes, pts: int) -> av.VideoFrame:
    flat = np.concatenate([np.asarray(p).reshape(-1) for p in planes])
    frame = av.VideoFrame.from_ndarray(flat.reshape(-1, planes[0].width), format="yuv420p")
    frame.pts = pts
    return frame


def _flush(container: av.container.OutputContainer, stream: av.video.stream.VideoStream) -> None:
    container.mux(stream.encode(None))


# ---- rendering ----------------------------------------------------------------------


def _clip_frames(
    start: Image.Image | None,
    end: Image.Image | None,
    count: int,
    motion: str | None,
    size: tuple[int, int],
    drift: _Pose,
) -> Iterator[av.VideoFrame]:
    """The clip's frames: a cross-fade from start to end, moved by the motion."""
    only = start if start is not None else end
    assert only is not None  # render_clip checked
    first = _to_planes(fit_image(only, size))
    last = _to_planes(fit_image(end, size)) if start is not None and end is not None else first
    span = max(count - 1, 1)
    for index in range(count):
        t = index / span
        pose = _pose_at(t, motion, has_start=start is not None, has_end=end is not None,
                        drift=drift)
        yield _video_frame(_move(_blend(first, last, t), pose), index)


def _prefetched(items: Iterator[_T], depth: int = 6) -> Iterator[_T]:
    """`items` made on one worker thread up to `depth` ahead: drawing overlaps encoding.

    (Pillow and libx264 release the GIL.) An error raised while making an item is
    raised here; leaving early waits only for the few items already asked for.
    """
    done = object()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="klingflow-frames") as pool:
        ahead = deque(pool.submit(next, items, done) for _ in range(depth))
        while (item := ahead.popleft().result()) is not done:
            ahead.append(pool.submit(next, items, done))
            yield item  # type: ignore[misc]


def render_clip(
    out: Path,
    *,
    start: Image.Image | None,
    end: Image.Image | None,
    duration: float,
    motion: str | None = None,
    size: tuple[int, int] = (320, 192),
    fps: int = 24,
    gop: int = 48,
    preset: str = "ultrafast",
    crf: int = 18,
    seed: int | None = None,
) -> None:
    """Write a real H.264 MP4 of `duration` seconds (`round(duration * fps)` frames).

    It cross-fades from `start` to `end`; with one image it slowly zooms and pans
    over it. Its first frame is `start` and its last frame is `end` (each fitted to
    `size` by `fit_image`) whenever given. `motion` names one of `MOTIONS`.
    `preset` is libx264's (`ultrafast` has no B-frames; `veryfast` and slower do).
    A `seed` adds a small drift of its own (zoom, turn, pan) between the frames
    that must match an image, as a real generation never repeats itself.
    """
    if start is None and end is None:
        raise ValueError("render_clip needs a start image, an end image or both")
    if motion is not None and motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; expected one of {', '.join(MOTIONS)}")
    count = round(duration * fps)
    if count < 1 or size[0] % 2 or size[1] % 2:
        raise ValueError(f"need duration >= 1 frame and an even size, got {duration}s at {size}")
    with _writer(out, size=size, fps=fps, gop=gop, preset=preset, crf=crf) as (container, stream):
        drift = variation(seed) if seed is not None else _IDENTITY
        for frame in _prefetched(_clip_frames(start, end, count, motion, size, drift)):
            container.mux(stream.encode(frame))
        _flush(container, stream)


# ---- reading ------------------------------------------------------------------------


@contextmanager
def _open_video(
    path: Path,
) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """The file's first video stream; every av failure becomes a `MediaError`."""
    try:
        container = av.open(str(path))
    except FileNotFoundError as exc:
        raise MediaError(path, "no such file") from exc
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(path, f"not a readable video: {_reason(exc)}") from exc
    with container:
        if not container.streams.video:
            raise MediaError(path, "has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            yield container, stream
        except av.FFmpegError as exc:
            raise MediaError(path, f"corrupt video data: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def _count_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> int:
    return sum(1 for packet in container.demux(stream) if packet.size)


def probe(video: Path) -> VideoInfo:
    """Size, duration, frame count, frame rate and codec of the first video stream.

    A stream without timing (raw H.264) gets its duration from frames / fps.
    """
    with _open_video(video) as (container, stream):
        ctx = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        frames = stream.frames or _count_frames(container, stream)
        duration = _duration(container, stream) or (frames / fps if fps else 0.0)
        return VideoInfo(ctx.width, ctx.height, duration, frames, fps, ctx.name)


# ---- colour: each stream converted with its own matrix and range -------------------

# AVColorSpace (what the stream says) -> the swscale matrix that decodes it.
_MATRIX_BY_AVCOL: dict[int, Colorspace] = {
    1: Colorspace.ITU709,
    4: Colorspace.FCC,
    5: Colorspace.ITU601,  # BT.470BG
    6: Colorspace.SMPTE170M,  # BT.601 525
    7: Colorspace.SMPTE240M,
    9: Colorspace.BT2020,  # BT.2020 non-constant luminance
    10: Colorspace.BT2020,
}


def _matrix(frame: av.VideoFrame) -> Colorspace:
    """The frame's matrix; untagged video is BT.709 when HD, BT.601 otherwise (as players do)."""
    tagged = _MATRIX_BY_AVCOL.get(int(frame.colorspace))
    if tagged is not None:
        return tagged
    return Colorspace.ITU709 if frame.height >= 720 else Colorspace.ITU601


def _range(frame: av.VideoFrame) -> ColorRange:
    """Full range when tagged so (or a yuvj format), else limited: the H.264 default."""
    if int(frame.color_range) == ColorRange.JPEG or frame.format.name.startswith("yuvj"):
        return ColorRange.JPEG
    return ColorRange.MPEG


def _to_image(frame: av.VideoFrame) -> Image.Image:
    matrix = _matrix(frame)
    return frame.to_image(
        src_colorspace=matrix,
        dst_colorspace=matrix,
        src_color_range=_range(frame),
        dst_color_range=ColorRange.JPEG,
    )


def _save_png(image: Image.Image, out_png: Path) -> None:
    """Write the PNG beside its target, then rename: readers never see half a file."""
    out_png.parent.mkdir(parents=True, exist_ok=True)
    partial = out_png.with_name(out_png.name + ".part")
    image.save(partial, format="PNG", compress_level=1)
    partial.replace(out_png)


# ---- first and last frames ----------------------------------------------------------


def _pts(frame: av.VideoFrame) -> int:
    return frame.pts if frame.pts is not None else -(2**62)


def _latest(frames: Iterable[av.VideoFrame]) -> tuple[av.VideoFrame | None, int]:
    """The frame with the largest presentation time, and how many frames were decoded."""
    best: av.VideoFrame | None = None
    count = 0
    for frame in frames:
        count += 1
        if best is None or _pts(frame) >= _pts(best):
            best = frame
    return best, count


def _seek_to_last_keyframe(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> bool:
    """Position the demuxer on the last keyframe at or before the stream's end."""
    start = stream.start_time or 0
    end = start + stream.duration if stream.duration else 2**62
    try:
        container.seek(end, backward=True, any_frame=False, stream=stream)
    except av.FFmpegError:
        return False
    return True


def _finish(video: Path, out_png: Path, frame: av.VideoFrame | None, count: int) -> FrameResult:
    if frame is None:
        raise MediaError(video, "no frame could be decoded")
    _save_png(_to_image(frame), out_png)
    return FrameResult(path=out_png, pts_seconds=float(frame.time or 0.0), frames_decoded=count)


def extract_first_frame(video: Path, out_png: Path) -> FrameResult:
    """The first frame shown (the decoder's first output) as a PNG."""
    with _open_video(video) as (container, stream):
        frame = next(iter(container.decode(stream)), None)
        return _finish(video, out_png, frame, 1 if frame is not None else 0)


def extract_last_frame(video: Path, out_png: Path) -> FrameResult:
    """The frame with the largest presentation time as a PNG.

    Seeks to the last keyframe and decodes to the end; decodes the whole stream
    only when that seek fails or yields nothing. `frames_decoded` counts both.
    """
    with _open_video(video) as (container, stream):
        frame, count = None, 0
        if _seek_to_last_keyframe(container, stream):
            frame, count = _latest(container.decode(stream))
        if frame is not None:
            return _finish(video, out_png, frame, count)
    with _open_video(video) as (container, stream):
        frame, full_count = _latest(container.decode(stream))
        return _finish(video, out_png, frame, count + full_count)


# ---- concatenation ------------------------------------------------------------------


def _signature(video: Path) -> tuple[object, ...]:
    """What must match for clips to be joined without re-encoding."""
    with _open_video(video) as (_, stream):
        ctx = stream.codec_context
        return (ctx.name, ctx.width, ctx.height, ctx.pix_fmt, stream.time_base, ctx.extradata)


def _copy_packets(
    video: Path,
    output: av.container.OutputContainer,
    out_stream: av.video.stream.VideoStream,
    offset: int,
) -> int:
    """Append `video`'s packets shifted by `offset` ticks; return the offset after it."""
    with _open_video(video) as (container, stream):
        timed = [
            (p, p.pts, p.dts)
            for p in container.demux(stream)
            if p.pts is not None and p.dts is not None
        ]
        if not timed:
            raise MediaError(video, "has no video packets")
        first = min(pts for _, pts, _ in timed)
        end = max(pts + (packet.duration or 0) for packet, pts, _ in timed)
        for packet, pts, dts in timed:
            packet.pts, packet.dts = pts + offset - first, dts + offset - first
            packet.stream = out_stream
            output.mux(packet)
        return offset + end - first


def _remux(videos: Sequence[Path], out: Path) -> None:
    with _create_mp4(out) as output:
        with _open_video(videos[0]) as (_, template):
            out_stream = output.add_stream_from_template(template)
        offset = 0
        for video in videos:
            offset = _copy_packets(video, output, out_stream, offset)


def _reencode(videos: Sequence[Path], out: Path, *, size: tuple[int, int], fps: int) -> None:
    """Decode every clip, fit it to `size` and encode one stream at `fps`, clip after clip."""
    with _writer(out, size=size, fps=fps, gop=2 * fps, preset="veryfast", crf=18) as (
        container,
        stream,
    ):
        base = 0
        for video in videos:
            with _open_video(video) as (source, source_stream):
                length = round(_duration(source, source_stream) * fps)
                timed = (
                    (float(frame.time or 0.0), _to_planes(fit_image(_to_image(frame), size)))
                    for frame in source.decode(source_stream)
                )
                for pts, planes in _retimed(timed, base, length, fps):
                    container.mux(stream.encode(_video_frame(planes, pts)))
            base += length
        _flush(container, stream)


def _retimed(
    timed: Iterable[tuple[float, _Planes]], base: int, length: int, fps: int
) -> Iterator[tuple[int, _Planes]]:
    """Fill the output slots base..base+length-1, each with the latest frame shown by then.

    A slower source has its frames repeated, a faster one has frames dropped.
    """
    slot, end, held = base, base + length, None
    for seconds, planes in timed:
        due = min(base + round(seconds * fps), end)
        while held is not None and slot < due:
            yield slot, held
            slot += 1
        held = planes
    while held is not None and slot < end:
        yield slot, held
        slot += 1


def concat(videos: Sequence[Path], out: Path) -> VideoInfo:
    """Join clips into one MP4: packets copied when every stream matches, else re-encoded."""
    if not videos:
        raise ValueError("concat needs at least one video")
    out.parent.mkdir(parents=True, exist_ok=True)
    signatures = [_signature(video) for video in videos]
    if all(signature == signatures[0] for signature in signatures):
        _remux(videos, out)
    else:
        first = probe(videos[0])
        _reencode(videos, out, size=(first.width, first.height), fps=round(first.fps) or 24)
    return probe(out)
