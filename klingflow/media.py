"""Everything klingflow does with video frames, through PyAV.

Rendering (the simulator's clips), probing, first/last frame extraction (the
chaining of clips) and concatenation (the pipeline's outputs). Every failure of a
file is a `MediaError` naming the file; no raw `av` exception leaves this module.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TypeVar

import av
import numpy as np
from av.video.reformatter import (
    ColorPrimaries,
    ColorRange,
    Colorspace,
    ColorTrc,
    VideoReformatter,
)
from PIL import Image, ImageChops, ImageOps, ImageStat

from klingflow.errors import KlingflowError

_T = TypeVar("_T")
_P = TypeVar("_P")

__all__ = [
    "MOTIONS",
    "ConcatPart",
    "ConcatResult",
    "FrameResult",
    "MediaError",
    "VideoInfo",
    "concat",
    "extract_first_frame",
    "extract_frames",
    "extract_last_frame",
    "fit_image",
    "frame_difference",
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
    sha256: str  # of the PNG written


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
def _create_mp4(
    out: Path, *, options: dict[str, str] | None = None
) -> Iterator[av.container.OutputContainer]:
    """An MP4 open for writing; failing to write it is a `MediaError` naming it."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(out), mode="w", format="mp4", options=options or {}) as container:
            yield container
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(out, f"cannot write video: {_reason(exc)}") from exc


def _add_h264(
    container: av.container.OutputContainer,
    *,
    size: tuple[int, int],
    fps: int | Fraction,
    gop: int,
    preset: str,
    crf: int,
) -> av.video.stream.VideoStream:
    """An H.264 yuv420p stream tagged BT.709 limited, added to `container`."""
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
    return stream


@contextmanager
def _writer(
    out: Path, *, size: tuple[int, int], fps: int, gop: int, preset: str, crf: int
) -> Iterator[tuple[av.container.OutputContainer, av.video.stream.VideoStream]]:
    """An MP4 with one H.264 yuv420p stream tagged BT.709 limited, closed on exit."""
    with _create_mp4(out) as container:
        yield container, _add_h264(container, size=size, fps=fps, gop=gop, preset=preset, crf=crf)


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
    path: Path, *, threads: bool = True,
) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """The file's first video stream; every av failure becomes a `MediaError`.

    `threads`: let the decoder use threads. Frame extraction does not: it decodes a
    few frames, and starting the decoder's threads costs more CPU (and on 2 cores, more
    time) than they save; a run extracts many clips' frames at once anyway."""
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
        if threads:
            stream.thread_type = "AUTO"
        else:
            stream.codec_context.thread_count = 1
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


_REFORMATTERS = threading.local()


def _reformatter() -> VideoReformatter:
    """This thread's converter. `frame.to_image` makes a new one per frame, and with it a
    swscale context that starts threads of its own: per frame taken, that was two threads
    started and ~0.8 ms of CPU. A converter is not thread-safe, hence one per thread."""
    found: VideoReformatter | None = getattr(_REFORMATTERS, "converter", None)
    if found is None:
        found = _REFORMATTERS.converter = VideoReformatter()
    return found


def _to_rgb(frame: av.VideoFrame) -> av.VideoFrame:
    """The frame as rgb24, converted with its own matrix and range, on this thread alone
    (swscale's own threads cost more in handing work over than they save on one frame,
    and a run converts many clips' frames at once anyway), and with nothing else of the
    clip's attached (see below)."""
    matrix = _matrix(frame)
    rgb = _reformatter().reformat(
        frame,
        format="rgb24",
        src_colorspace=matrix,
        dst_colorspace=matrix,
        src_color_range=_range(frame),
        dst_color_range=ColorRange.JPEG,
        threads=1,
    )
    # The pixels are now plain RGB, to be shown as any untagged picture is (sRGB), as the
    # PNGs Pillow wrote were. FFmpeg's encoder writes what a frame carries as chunks: the
    # clip's BT.709 primaries and transfer as cICP, cHRM and gAMA (a browser would then
    # correct the colours a second time), and side data (HDR mastering levels, an ICC
    # profile) as mDCV, cLLI or iCCP. Side data cannot be removed, so such a frame is
    # copied into a new one; the tags are cleared (reformat's dst_color_trc and
    # dst_color_primaries keep the source's tags when asked for UNSPECIFIED).
    if len(rgb.side_data):
        rgb = av.VideoFrame.from_ndarray(rgb.to_ndarray(), format="rgb24")
    rgb.color_primaries, rgb.color_trc = ColorPrimaries.UNSPECIFIED, ColorTrc.UNSPECIFIED
    return rgb


_PNG_OPTIONS = {"pred": "mixed", "compression_level": "1"}
"""FFmpeg's PNG encoder: each row filtered as best fits it ("mixed", as Pillow and libpng
choose), zlib level 1. The same pixels as Pillow's encoder at level 1, and about the same
sizes (0 to 5% larger on the pictures tried), in less CPU: it encodes the rgb24 plane as
it is, where Pillow first copies it into 4-byte pixels (bench_media, a clip's two
frames: 23.8 -> 13.4 ms at 400x304, 356 -> 216 ms at 1080p). The bytes differ from
Pillow's; cache keys use the clip's hash, not the frame's (see verdicts.py), so a cache
made before still serves."""


def _png(rgb: av.VideoFrame, out_png: Path) -> bytes:
    """An rgb24 frame as the bytes of a PNG file (to be written at `out_png`)."""
    try:
        encoder = av.CodecContext.create("png", "w")
        encoder.width, encoder.height, encoder.pix_fmt = rgb.width, rgb.height, "rgb24"
        encoder.sample_aspect_ratio = Fraction(1, 1)  # pixels shown square, as Pillow's PNGs
        encoder.options = _PNG_OPTIONS
        packets = encoder.encode(rgb) + encoder.encode(None)
    except (av.FFmpegError, ValueError) as exc:  # ValueError: no PNG encoder in this FFmpeg
        raise MediaError(out_png, f"could not be encoded as a PNG: {_reason(exc)}") from exc
    return b"".join(bytes(packet) for packet in packets)


def _save_png(data: bytes, out_png: Path) -> str:
    """Write the PNG beside its target, then rename: readers never see half a file.
    Returns the SHA-256 of the bytes written (no second read of the file)."""
    out_png.parent.mkdir(parents=True, exist_ok=True)
    partial = out_png.with_name(out_png.name + ".part")
    with partial.open("wb") as handle:
        handle.write(data)
    partial.replace(out_png)
    return hashlib.sha256(data).hexdigest()


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
    sha256 = _save_png(_png(_to_rgb(frame), out_png), out_png)
    return FrameResult(path=out_png, pts_seconds=float(frame.time or 0.0),
                       frames_decoded=count, sha256=sha256)


def extract_first_frame(video: Path, out_png: Path) -> FrameResult:
    """The first frame shown (the decoder's first output) as a PNG."""
    with _open_video(video, threads=False) as (container, stream):
        frame = next(iter(container.decode(stream)), None)
        return _finish(video, out_png, frame, 1 if frame is not None else 0)


def extract_last_frame(video: Path, out_png: Path) -> FrameResult:
    """The frame with the largest presentation time as a PNG.

    Seeks to the last keyframe and decodes to the end; decodes the whole stream
    only when that seek fails or yields nothing. `frames_decoded` counts both.
    """
    with _open_video(video, threads=False) as (container, stream):
        frame, count = _last_from_keyframe(container, stream)
        if frame is not None:
            return _finish(video, out_png, frame, count)
    return _last_by_full_decode(video, out_png, count)


def extract_frames(video: Path, first_png: Path, last_png: Path) -> tuple[FrameResult, FrameResult]:
    """`extract_first_frame` and `extract_last_frame` from one opening of the file
    (a run takes both from every clip it collects)."""
    with _open_video(video, threads=False) as (container, stream):
        frame = next(iter(container.decode(stream)), None)
        first = _finish(video, first_png, frame, 1 if frame is not None else 0)
        frame, count = _last_from_keyframe(container, stream)
        if frame is not None:
            return first, _finish(video, last_png, frame, count)
    return first, _last_by_full_decode(video, last_png, count)


def _last_from_keyframe(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> tuple[av.VideoFrame | None, int]:
    if _seek_to_last_keyframe(container, stream):
        return _latest(container.decode(stream))
    return None, 0


def _last_by_full_decode(video: Path, out_png: Path, decoded_before: int) -> FrameResult:
    with _open_video(video, threads=False) as (container, stream):
        frame, count = _latest(container.decode(stream))
        return _finish(video, out_png, frame, decoded_before + count)


# ---- concatenation ------------------------------------------------------------------
#
# A film is its parts one after the other. Where a part continues the one before it
# (it was generated from that part's last frame), the picture at the seam is shown
# once: the earlier part's last frame is left out. That copy, not the later part's
# first frame, goes, because the last packet of a stream is one no other frame
# references, so it can be left out of a stream copy; a first frame is a keyframe the
# rest of its clip is decoded from. The picture is the same either way.


@dataclass(frozen=True, slots=True)
class ConcatPart:
    """A clip of a film. `continues`: its first frame repeats the previous part's last
    frame (it was generated from it), so the film shows that picture once."""

    path: Path
    continues: bool = False


@dataclass(frozen=True, slots=True)
class ConcatResult:
    info: VideoInfo  # the film, probed
    copied: bool  # True: every packet copied as it was; False: one re-encode
    audio: bool  # the film has a sound track (silence under parts without one)


@dataclass(frozen=True, slots=True)
class _Source:
    """What concat needs to know of one part, read once."""

    path: Path
    signature: tuple[object, ...]  # what must match for packets to be copied
    size: tuple[int, int]
    rate: Fraction
    frames: int
    audio: bool


@dataclass(frozen=True, slots=True)
class _CopyPart:
    """One part in a stream copy: its first `count` packets (in decode order), shifted."""

    path: Path
    count: int
    shift: int  # ticks added to each packet's pts and dts
    origin: float  # the part's own time (s) of its first frame


@dataclass(frozen=True, slots=True)
class _Span:
    """Where a part's pictures land in the film, in seconds of film, and their own time."""

    start: float
    length: float
    origin: float  # the part's own time of the first of them


_FILM_OPTIONS = {"movflags": "+faststart"}  # the index first: a browser plays it at once
_AUDIO_FRAME = 1024  # samples per AAC frame


def concat(parts: Sequence[ConcatPart], out: Path, *, reencode: bool = False) -> ConcatResult:
    """Join clips into one MP4, the repeated picture of each seam shown once.

    Packets are copied when every part's video stream matches (codec, size, pixel
    format, rate, time base, codec set-up) and each seam frame can be left out;
    otherwise (or with `reencode`) the video is encoded once, every part fitted into
    the largest part's size (aspect kept, black bars where needed) at the highest
    frame rate. When any part has sound the film has a sound track, rebuilt
    sample-exact under each part's pictures, silent under parts without sound.
    """
    if not parts:
        raise ValueError("concat needs at least one video")
    sources = [_source(part.path) for part in parts]
    drops = [index + 1 < len(parts) and parts[index + 1].continues
             for index in range(len(parts))]  # part i loses its last frame
    plan = None if reencode else _copy_plan(sources, drops)
    audio = any(source.audio for source in sources)
    with _create_mp4(out, options=_FILM_OPTIONS) as container:
        video: _PacketCopier | _FrameEncoder = _PacketCopier(container, plan) \
            if plan is not None else _FrameEncoder(container, sources, drops)
        track = _Soundtrack(container, _audio_rate(sources)) if audio else None
        for index, source in enumerate(sources):
            span = video.append(index)  # each part's pictures, then its sound: interleaved
            if track is not None:
                track.append(source, span)
        video.close()
        if track is not None:
            track.close()
    return ConcatResult(probe(out), copied=plan is not None, audio=audio)


def _source(path: Path) -> _Source:
    with _open_video(path) as (container, stream):
        ctx = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate or Fraction(24)
        frames = stream.frames or _count_frames(container, stream)
        signature = (ctx.name, ctx.width, ctx.height, ctx.pix_fmt, stream.time_base, rate,
                     ctx.extradata)
        return _Source(path, signature, (ctx.width, ctx.height), Fraction(rate), frames,
                       bool(container.streams.audio))


# ---- stream copy --------------------------------------------------------------------


def _packet_times(path: Path, rate: Fraction) -> tuple[list[tuple[int, int, int]], Fraction]:
    """(pts, dts, duration) of each video packet in decode order, and the time base."""
    with _open_video(path) as (container, stream):
        time_base = stream.time_base or Fraction(1, 90000)
        tick = max(1, round(1 / (rate * time_base)))
        times = [(p.pts, p.dts, p.duration or tick) for p in container.demux(stream)
                 if p.size and p.pts is not None and p.dts is not None]
    if not times:
        raise MediaError(path, "has no video packets")
    return times, time_base


def _copy_plan(sources: Sequence[_Source], drops: Sequence[bool]) -> list[_CopyPart] | None:
    """How to copy every part's packets, or None when a copy cannot make the film."""
    if any(source.signature != sources[0].signature for source in sources):
        return None
    plan, offset, last_dts = [], 0, None
    for source, drop in zip(sources, drops, strict=True):
        times, time_base = _packet_times(source.path, source.rate)
        if drop:
            if len(times) < 2 or times[-1][0] != max(pts for pts, _, _ in times):
                return None  # the last frame shown is referenced by others (B-frames)
            times = times[:-1]
        first = min(pts for pts, _, _ in times)
        shift = offset - first
        if last_dts is not None and min(dts for _, dts, _ in times) + shift <= last_dts:
            return None  # decode times would run backwards at the join
        last_dts = max(dts for _, dts, _ in times) + shift
        plan.append(_CopyPart(source.path, len(times), shift, float(first * time_base)))
        offset += max(pts + duration for pts, _, duration in times) - first
    return plan


class _PacketCopier:
    """The film's video as the parts' own packets, one part after another."""

    def __init__(self, container: av.container.OutputContainer,
                 plan: Sequence[_CopyPart]) -> None:
        self._container = container
        self._plan = plan
        with _open_video(plan[0].path) as (_, stream):
            self._stream = container.add_stream_from_template(stream)
            self._time_base = stream.time_base or Fraction(1, 90000)
        self._end = 0

    def append(self, index: int) -> _Span:
        """Copy part `index`'s planned packets; where its pictures landed."""
        part, start = self._plan[index], self._end
        with _open_video(part.path) as (container, stream):
            packets = (p for p in container.demux(stream)
                       if p.size and p.pts is not None and p.dts is not None)
            for packet in itertools.islice(packets, part.count):
                assert packet.pts is not None and packet.dts is not None
                packet.pts += part.shift
                packet.dts += part.shift
                self._end = max(self._end, packet.pts + (packet.duration or 0))
                packet.stream = self._stream
                self._container.mux(packet)
        return _Span(float(start * self._time_base), float((self._end - start) * self._time_base),
                     part.origin)

    def close(self) -> None:
        pass


# ---- one re-encode ------------------------------------------------------------------


def _film_size(sources: Sequence[_Source]) -> tuple[int, int]:
    """The largest part's size (by area, then width), made even for yuv420p."""
    width, height = max((source.size for source in sources), key=lambda s: (s[0] * s[1], s[0]))
    return width - width % 2, height - height % 2


def _inner_size(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """`size` scaled to fit inside `box` with its aspect kept, in even pixels."""
    scale = min(box[0] / size[0], box[1] / size[1])
    width = min(box[0], max(2, round(size[0] * scale / 2) * 2))
    height = min(box[1], max(2, round(size[1] * scale / 2) * 2))
    return width, height


_Yuv = tuple[np.ndarray, np.ndarray, np.ndarray]


def _conformed(frame: av.VideoFrame, box: tuple[int, int]) -> _Yuv:
    """The frame in the film's colour (BT.709 limited), fitted into `box`, black bars around."""
    width, height = _inner_size((frame.width, frame.height), box)
    yuv = frame.reformat(width=width, height=height, format="yuv420p",
                         src_colorspace=_matrix(frame), dst_colorspace=_RENDER_COLORSPACE,
                         src_color_range=_range(frame), dst_color_range=_RENDER_RANGE,
                         interpolation="BILINEAR")
    y, u, v = _plane_arrays(yuv)
    if (width, height) == box:
        return np.ascontiguousarray(y), np.ascontiguousarray(u), np.ascontiguousarray(v)
    left, top = (box[0] - width) // 4 * 2, (box[1] - height) // 4 * 2
    return (_placed(y, box, left, top, _BLACK[0]),
            _placed(u, (box[0] // 2, box[1] // 2), left // 2, top // 2, _BLACK[1]),
            _placed(v, (box[0] // 2, box[1] // 2), left // 2, top // 2, _BLACK[2]))


def _placed(plane: np.ndarray, box: tuple[int, int], left: int, top: int, fill: int) -> np.ndarray:
    canvas = np.full((box[1], box[0]), fill, dtype=np.uint8)
    canvas[top:top + plane.shape[0], left:left + plane.shape[1]] = plane
    return canvas


def _yuv_frame(planes: _Yuv, pts: int) -> av.VideoFrame:
    flat = np.concatenate([plane.reshape(-1) for plane in planes])
    frame = av.VideoFrame.from_ndarray(flat.reshape(-1, planes[0].shape[1]), format="yuv420p")
    frame.pts = pts
    return frame


class _FrameEncoder:
    """The film's video encoded once: each part fitted into one size, at one rate."""

    def __init__(self, container: av.container.OutputContainer,
                 sources: Sequence[_Source], drops: Sequence[bool]) -> None:
        self._container = container
        self._sources, self._drops = sources, drops
        self._size = _film_size(sources)
        self._rate = max(source.rate for source in sources)
        gop = 2 * max(1, round(self._rate))
        self._stream = _add_h264(container, size=self._size, fps=self._rate, gop=gop,
                                 preset="veryfast", crf=18)
        self._slot = 0

    def append(self, index: int) -> _Span:
        """Decode, fit and encode part `index` (less its last frame at a seam)."""
        part = self._sources[index]
        keep = part.frames - 1 if self._drops[index] and part.frames > 1 else part.frames
        length = max(1, round(keep * self._rate / part.rate))
        start = self._slot
        with _open_video(part.path) as (container, stream):
            decoded = itertools.islice(container.decode(stream), keep)
            first = next(decoded, None)
            if first is None:
                raise MediaError(part.path, "no frame could be decoded")
            origin = float(first.time or 0.0)
            timed = ((float(frame.time or 0.0) - origin, _conformed(frame, self._size))
                     for frame in itertools.chain((first,), decoded))
            for pts, planes in _retimed(timed, start, length, self._rate):
                self._container.mux(self._stream.encode(_yuv_frame(planes, pts)))
        self._slot = start + length
        return _Span(float(start / self._rate), float(length / self._rate), origin)

    def close(self) -> None:
        _flush(self._container, self._stream)


def _retimed(
    timed: Iterable[tuple[float, _P]], base: int, length: int, fps: Fraction | int
) -> Iterator[tuple[int, _P]]:
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


# ---- the sound track ----------------------------------------------------------------


def _audio_rate(sources: Sequence[_Source]) -> int:
    """The sample rate of the first part with sound: the film's."""
    for source in sources:
        if source.audio:
            with _open_video(source.path) as (container, _):
                return int(container.streams.audio[0].rate or 48000)
    return 48000


class _Soundtrack:
    """AAC stereo under the whole film, each part's sound placed under its pictures."""

    def __init__(self, container: av.container.OutputContainer, rate: int) -> None:
        self._container = container
        self._rate = rate
        self._stream = container.add_stream("aac", rate=rate, layout="stereo")
        self._pending = np.zeros((2, 0), dtype=np.float32)
        self._written = 0  # samples handed to the encoder

    def append(self, source: _Source, span: _Span) -> None:
        begin = round(span.start * self._rate)
        count = round((span.start + span.length) * self._rate) - begin
        if source.audio:
            samples = _fitted(_sound_of(source.path, span.origin, self._rate), count)
        else:
            samples = np.zeros((2, count), dtype=np.float32)
        self._pending = np.concatenate([self._pending, samples], axis=1)
        while self._pending.shape[1] >= _AUDIO_FRAME:
            self._encode(self._pending[:, :_AUDIO_FRAME])
            self._pending = self._pending[:, _AUDIO_FRAME:]

    def _encode(self, samples: np.ndarray) -> None:
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp",
                                           layout="stereo")
        frame.sample_rate = self._rate
        frame.pts = self._written
        self._written += samples.shape[1]
        self._container.mux(self._stream.encode(frame))

    def close(self) -> None:
        if self._pending.shape[1]:
            self._encode(self._pending)
        self._container.mux(self._stream.encode(None))


def _sound_of(path: Path, origin: float, rate: int) -> np.ndarray:
    """A part's sound as stereo float samples at `rate`, sample 0 at its time `origin`
    (silence first if its sound starts later; cut if it starts earlier)."""
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate)
    chunks: list[np.ndarray] = []
    lead: int | None = None
    with _open_video(path) as (container, _):
        for frame in container.decode(container.streams.audio[0]):
            if lead is None:
                lead = round((float(frame.time or 0.0) - origin) * rate)
            chunks.extend(out.to_ndarray() for out in resampler.resample(frame))
        chunks.extend(out.to_ndarray() for out in resampler.resample(None))
    sound = np.concatenate(chunks, axis=1) if chunks else np.zeros((2, 0), dtype=np.float32)
    if lead and lead > 0:
        return np.concatenate([np.zeros((2, lead), dtype=np.float32), sound], axis=1)
    return sound[:, -lead:] if lead else sound


def _fitted(samples: np.ndarray, count: int) -> np.ndarray:
    """Exactly `count` samples: cut, or made up with silence."""
    if samples.shape[1] >= count:
        return samples[:, :count].astype(np.float32, copy=False)
    tail = np.zeros((2, count - samples.shape[1]), dtype=np.float32)
    return np.concatenate([samples.astype(np.float32, copy=False), tail], axis=1)


# ---- comparing pictures -------------------------------------------------------------


def frame_difference(first: Path, second: Path) -> float:
    """Mean absolute difference per pixel and channel (0-255) of two pictures.

    Pictures of different sizes are compared at the smaller one's size.
    """
    try:
        with Image.open(first) as a, Image.open(second) as b:
            left, right = a.convert("RGB"), b.convert("RGB")
    except (OSError, ValueError) as exc:
        raise MediaError(first, f"cannot compare pictures: {_reason(exc)}") from exc
    if left.size != right.size:
        size = min(left.size, right.size, key=lambda s: s[0] * s[1])
        left, right = (i.resize(size, Image.Resampling.BILINEAR) for i in (left, right))
    means = ImageStat.Stat(ImageChops.difference(left, right)).mean  # per channel, in C
    return float(sum(means) / len(means))
