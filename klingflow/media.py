"""Everything klingflow does with video frames, through PyAV.

Rendering (the simulator's clips), probing, first/last frame extraction (the
chaining of clips) and concatenation (the pipeline's outputs). Every failure of a
file is a `MediaError` naming the file; no raw `av` exception leaves this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace
from PIL import Image, ImageOps

from klingflow.errors import KlingflowError

__all__ = [
    "MOTIONS",
    "FrameResult",
    "MediaError",
    "VideoInfo",
    "fit_image",
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


def _pose_at(t: float, motion: str | None, *, has_start: bool, has_end: bool) -> _Pose:
    """The pose at time t: identity on a frame that must equal a given image."""
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


def _move_plane(plane: Image.Image, pose: _Pose, fill: int) -> Image.Image:
    """One plane moved by `pose`: sampled at twice the size, then averaged down (fast AA)."""
    width, height = plane.size
    coeffs = _inverse_affine(pose, width, height)
    doubled = tuple(c / 2 if i in (0, 1, 3, 4) else c for i, c in enumerate(coeffs))
    big = plane.transform(
        (width * 2, height * 2),
        Image.Transform.AFFINE,
        doubled,
        resample=Image.Resampling.NEAREST,
        fillcolor=fill,
    )
    return big.reduce(2)


# ---- encoding -----------------------------------------------------------------------

# The colour the renderer writes and tags: BT.709 matrix, limited range.
_RENDER_COLORSPACE = Colorspace.ITU709
_RENDER_RANGE = ColorRange.MPEG
_AVCOL_BT709 = 1


@contextmanager
def _writer(
    out: Path, *, size: tuple[int, int], fps: int, gop: int, preset: str, crf: int
) -> Iterator[tuple[av.container.OutputContainer, av.video.stream.VideoStream]]:
    """An MP4 with one H.264 yuv420p stream tagged BT.709 limited, closed on exit."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), mode="w", format="mp4") as container:
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
        rows = np.frombuffer(plane, dtype=np.uint8).reshape(plane.height, plane.line_size)
        arrays.append(rows[:, : plane.width])
    return arrays


def _blend(first: _Planes, last: _Planes, t: float) -> _Planes:
    if t <= 0 or first is last:
        return first
    if t >= 1:
        return last
    return tuple(Image.blend(a, b, t) for a, b in zip(first, last, strict=True))  # type: ignore[return-value]


def _move(planes: _Planes, pose: _Pose) -> _Planes:
    if pose.is_identity():
        return planes
    return tuple(_move_plane(p, pose, f) for p, f in zip(planes, _BLACK, strict=True))  # type: ignore[return-value]


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
) -> Iterator[av.VideoFrame]:
    """The clip's frames: a cross-fade from start to end, moved by the motion."""
    first = _to_planes(fit_image(start or end, size))  # type: ignore[arg-type]
    last = _to_planes(fit_image(end, size)) if start and end else first
    span = max(count - 1, 1)
    for index in range(count):
        t = index / span
        pose = _pose_at(t, motion, has_start=start is not None, has_end=end is not None)
        yield _video_frame(_move(_blend(first, last, t), pose), index)


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
) -> None:
    """Write a real H.264 MP4 of `duration` seconds (`round(duration * fps)` frames).

    It cross-fades from `start` to `end`; with one image it slowly zooms and pans
    over it. Its first frame is `start` and its last frame is `end` (each fitted to
    `size` by `fit_image`) whenever given. `motion` names one of `MOTIONS`.
    `preset` is libx264's (`ultrafast` has no B-frames; `veryfast` and slower do).
    """
    if start is None and end is None:
        raise ValueError("render_clip needs a start image, an end image or both")
    if motion is not None and motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; expected one of {', '.join(MOTIONS)}")
    count = round(duration * fps)
    if count < 1 or size[0] % 2 or size[1] % 2:
        raise ValueError(f"need duration >= 1 frame and an even size, got {duration}s at {size}")
    with _writer(out, size=size, fps=fps, gop=gop, preset=preset, crf=crf) as (container, stream):
        for frame in _clip_frames(start, end, count, motion, size):
            container.mux(stream.encode(frame))
        _flush(container, stream)
