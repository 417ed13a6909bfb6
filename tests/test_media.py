"""klingflow.media against real H.264 files: rendering, probing, frames, colour, concat."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from klingflow.errors import KlingflowError
from klingflow.files import sha256_file
from klingflow.media import (
    MOTIONS,
    ConcatPart,
    MediaError,
    concat,
    extract_first_frame,
    extract_frames,
    extract_last_frame,
    fit_image,
    probe,
    render_clip,
)

SIZE = (320, 192)


def _picture(width: int, height: int, phase: int) -> Image.Image:
    """A smooth, structured test picture (codecs keep it; comparisons can see it)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 128 + 100 * np.sin(x / width * 6.28 + phase)
    green = 255 * y / height
    blue = 128 + 100 * np.cos((x + y) / (width + height) * 9 + phase)
    square = (abs(x - width / 3) < width / 8) & (abs(y - height / 2) < height / 5)
    rgb = np.stack([red, green, blue], axis=-1)
    rgb[square] = (240, 240, 40) if phase else (30, 30, 200)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def _mad(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    """Mean absolute difference on 0-255."""
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())


def _frames(video: Path) -> list[np.ndarray]:
    with av.open(str(video)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _packets(video: Path) -> list[av.Packet]:
    with av.open(str(video)) as container:
        return [packet for packet in container.demux(video=0) if packet.size]


def _frames_from_last_keyframe(video: Path) -> int:
    """Counted independently of media.py: packets in decode order from the last keyframe on."""
    packets = _packets(video)
    last_key = max(index for index, packet in enumerate(packets) if packet.is_keyframe)
    return len(packets) - last_key


def _pts_in_decode_order(video: Path) -> list[int]:
    return [packet.pts for packet in _packets(video) if packet.pts is not None]


def _largest_pts_seconds(video: Path) -> float:
    with av.open(str(video)) as container:
        time_base = container.streams.video[0].time_base
    assert time_base is not None
    return float(max(_pts_in_decode_order(video)) * time_base)


@pytest.fixture(scope="module")
def start() -> Image.Image:
    return _picture(640, 400, 0)


@pytest.fixture(scope="module")
def end() -> Image.Image:
    return _picture(480, 288, 2)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, start: Image.Image, end: Image.Image) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    render_clip(folder / "five.mp4", start=start, end=end, duration=5)
    render_clip(folder / "ten.mp4", start=start, end=end, duration=10)
    return folder


# ---- render_clip ---------------------------------------------------------------------


@pytest.mark.parametrize(("name", "seconds"), [("five.mp4", 5), ("ten.mp4", 10)])
def test_rendered_clip_has_the_requested_duration_and_decodes(
    clips: Path, name: str, seconds: int
) -> None:
    info = probe(clips / name)

    assert (info.width, info.height, info.codec) == (*SIZE, "h264")
    assert info.duration == pytest.approx(seconds, abs=1e-3)
    assert info.frames == seconds * 24
    assert info.fps == 24
    assert len(_frames(clips / name)) == seconds * 24


def test_clip_starts_on_start_and_ends_on_end(
    clips: Path, tmp_path: Path, start: Image.Image, end: Image.Image
) -> None:
    first = extract_first_frame(clips / "five.mp4", tmp_path / "first.png")
    last = extract_last_frame(clips / "five.mp4", tmp_path / "last.png")

    assert first.pts_seconds == 0
    assert last.pts_seconds == pytest.approx(5 - 1 / 24)
    assert _mad(Image.open(first.path), fit_image(start, SIZE)) < 6
    assert _mad(Image.open(last.path), fit_image(end, SIZE)) < 6
    assert _mad(Image.open(last.path), fit_image(start, SIZE)) > 20  # it did morph


def test_one_image_gets_a_gentle_motion_and_stays_on_its_side(
    tmp_path: Path, start: Image.Image, end: Image.Image
) -> None:
    render_clip(tmp_path / "from.mp4", start=start, end=None, duration=5)
    render_clip(tmp_path / "to.mp4", start=None, end=end, duration=5)
    from_frames, to_frames = _frames(tmp_path / "from.mp4"), _frames(tmp_path / "to.mp4")

    assert _mad(from_frames[0], fit_image(start, SIZE)) < 6
    assert _mad(to_frames[-1], fit_image(end, SIZE)) < 6
    assert _mad(from_frames[0], from_frames[-1]) > 5
    assert _mad(to_frames[0], to_frames[-1]) > 5


@pytest.mark.parametrize("motion", sorted(MOTIONS))
def test_motion_visibly_changes_frames(
    clips: Path, tmp_path: Path, start: Image.Image, end: Image.Image, motion: str
) -> None:
    render_clip(tmp_path / "moved.mp4", start=start, end=end, duration=5, motion=motion)
    still, moved = _frames(clips / "five.mp4"), _frames(tmp_path / "moved.mp4")

    assert max(_mad(a, b) for a, b in zip(still[20:100:10], moved[20:100:10], strict=True)) > 8
    assert _mad(moved[0], fit_image(start, SIZE)) < 6
    assert _mad(moved[-1], fit_image(end, SIZE)) < 6


def test_images_of_any_size_and_mode_are_fitted(tmp_path: Path) -> None:
    grey = _picture(301, 517, 1).convert("L")
    rgba = _picture(99, 61, 0).convert("RGBA")
    render_clip(tmp_path / "odd.mp4", start=grey, end=rgba, duration=1, size=(160, 96), fps=12)

    info = probe(tmp_path / "odd.mp4")
    assert (info.width, info.height, info.frames) == (160, 96, 12)


def test_render_needs_an_image_and_a_known_motion(tmp_path: Path, start: Image.Image) -> None:
    with pytest.raises(ValueError, match="needs a start image, an end image or both"):
        render_clip(tmp_path / "x.mp4", start=None, end=None, duration=5)
    with pytest.raises(ValueError, match="unknown motion 'wobble'"):
        render_clip(tmp_path / "x.mp4", start=start, end=None, duration=5, motion="wobble")


# ---- last frame: from the last keyframe, largest pts --------------------------------


def test_last_frame_decodes_only_from_the_last_keyframe(clips: Path, tmp_path: Path) -> None:
    video = clips / "ten.mp4"
    tail, total = _frames_from_last_keyframe(video), len(_packets(video))

    result = extract_last_frame(video, tmp_path / "last.png")

    assert tail < total  # the file has several keyframes, so a seek saves work
    assert 1 <= result.frames_decoded <= tail
    assert result.pts_seconds == pytest.approx(_largest_pts_seconds(video))
    assert _mad(Image.open(result.path), _frames(video)[-1]) < 1


def test_last_frame_with_b_frames_is_the_largest_pts(
    tmp_path: Path, start: Image.Image, end: Image.Image
) -> None:
    video = tmp_path / "bframes.mp4"
    render_clip(video, start=start, end=end, duration=5, preset="veryfast", gop=48)
    pts_in_decode_order = _pts_in_decode_order(video)
    assert pts_in_decode_order != sorted(pts_in_decode_order)  # frames really arrive out of order

    result = extract_last_frame(video, tmp_path / "last.png")

    assert result.pts_seconds == pytest.approx(_largest_pts_seconds(video))
    assert result.frames_decoded <= _frames_from_last_keyframe(video)
    assert _mad(Image.open(result.path), fit_image(end, SIZE)) < 6


def _remuxed(video: Path, out: Path, container_format: str) -> Path:
    with av.open(str(video)) as source, av.open(str(out), "w", format=container_format) as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(video=0):
            if packet.dts is not None:
                packet.stream = stream
                target.mux(packet)
    return out


def test_last_frame_falls_back_to_a_full_decode_when_the_seek_yields_nothing(
    clips: Path, tmp_path: Path, end: Image.Image
) -> None:
    """MPEG-TS: the seek to the end succeeds but decodes nothing."""
    video = _remuxed(clips / "five.mp4", tmp_path / "five.ts", "mpegts")

    result = extract_last_frame(video, tmp_path / "last.png")

    assert result.frames_decoded == 120
    assert result.pts_seconds == pytest.approx(_largest_pts_seconds(video))
    assert _mad(Image.open(result.path), fit_image(end, SIZE)) < 6


def test_last_frame_falls_back_to_a_full_decode_when_the_seek_fails(
    clips: Path, tmp_path: Path, end: Image.Image
) -> None:
    """Raw H.264 cannot seek (and has no timestamps: the last frame decoded is the last)."""
    video = _remuxed(clips / "five.mp4", tmp_path / "five.h264", "h264")

    result = extract_last_frame(video, tmp_path / "last.png")

    assert result.frames_decoded == 120
    assert _mad(Image.open(result.path), fit_image(end, SIZE)) < 6
    assert probe(video).frames == 120


@pytest.mark.parametrize("container_format", ["mp4", "mpegts", "h264"])
def test_both_frames_from_one_opening_are_the_two_extractions(
    clips: Path, tmp_path: Path, container_format: str
) -> None:
    """A run takes both frames at once; after the first frame, it must still seek (or
    fall back to a full decode) exactly as `extract_last_frame` does."""
    video = _remuxed(clips / "five.mp4", tmp_path / f"five.{container_format}", container_format)
    first = extract_first_frame(video, tmp_path / "first.png")
    last = extract_last_frame(video, tmp_path / "last.png")

    both = extract_frames(video, tmp_path / "both.first.png", tmp_path / "both.last.png")

    assert both == (replace(first, path=both[0].path), replace(last, path=both[1].path))
    assert Image.open(both[0].path).tobytes() == Image.open(first.path).tobytes()
    assert Image.open(both[1].path).tobytes() == Image.open(last.path).tobytes()


def test_a_frame_comes_with_the_hash_of_the_file_written(clips: Path, tmp_path: Path) -> None:
    """A run keys and stores a frame by this hash without reading the file back."""
    frames = extract_frames(clips / "five.mp4", tmp_path / "f.png", tmp_path / "l.png")

    assert [frame.sha256 for frame in frames] == [sha256_file(frame.path) for frame in frames]
    assert frames[0].sha256 != frames[1].sha256
    assert not list(tmp_path.glob("*.part"))


# ---- colour: each stream's own matrix and range -------------------------------------

ORANGE = (220, 110, 40)
# (AVColorSpace, AVColorRange, Kr, Kb, full range)
BT709_LIMITED = (1, 1, 0.2126, 0.0722, False)
BT601_FULL = (5, 2, 0.299, 0.114, True)


def _ycbcr(rgb: tuple[int, int, int], kr: float, kb: float, full: bool) -> tuple[int, int, int]:
    """Textbook RGB -> Y'CbCr, written out here so the test does not trust swscale."""
    r, g, b = (c / 255 for c in rgb)
    y = kr * r + (1 - kr - kb) * g + kb * b
    cb, cr = (b - y) / (2 * (1 - kb)), (r - y) / (2 * (1 - kr))
    if full:
        return round(255 * y), round(128 + 255 * cb), round(128 + 255 * cr)
    return round(16 + 219 * y), round(128 + 224 * cb), round(128 + 224 * cr)


def _solid_clip(path: Path, rgb: tuple[int, int, int], tags: tuple, *,
                primaries_and_transfer: int | None = None) -> tuple[int, int, int]:
    colorspace, color_range, kr, kb, full = tags
    yuv = _ycbcr(rgb, kr, kb, full)
    width, height = 64, 48
    planes = np.concatenate(
        [
            np.full(width * height, yuv[0]),
            np.full(width * height // 4, yuv[1]),
            np.full(width * height // 4, yuv[2]),
        ]
    ).astype(np.uint8)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(24))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        ctx = stream.codec_context
        ctx.colorspace, ctx.color_range = colorspace, color_range
        if primaries_and_transfer is not None:
            ctx.color_primaries = ctx.color_trc = primaries_and_transfer
        stream.options = {"crf": "4"}
        for pts in range(24):
            frame = av.VideoFrame.from_ndarray(planes.reshape(-1, width), format="yuv420p")
            frame.pts = pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return yuv


@pytest.mark.parametrize("tags", [BT709_LIMITED, BT601_FULL], ids=["bt709-limited", "bt601-full"])
def test_colours_come_back_with_the_streams_own_matrix_and_range(
    tmp_path: Path, tags: tuple
) -> None:
    video = tmp_path / "solid.mp4"
    _solid_clip(video, ORANGE, tags)

    last = extract_last_frame(video, tmp_path / "last.png")
    first = extract_first_frame(video, tmp_path / "first.png")

    for result in (first, last):
        mean = np.asarray(Image.open(result.path), dtype=np.float32).reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - ORANGE).max() <= 3, mean


def _chunks(png: Path) -> list[bytes]:
    """The chunk types of a PNG file, in order."""
    data, types, at = png.read_bytes(), [], 8
    while at < len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        types.append(data[at + 4:at + 8])
        at += 12 + length
    return types


COLOUR_CHUNKS = {b"cICP", b"cHRM", b"gAMA", b"sRGB", b"iCCP", b"mDCV", b"cLLI"}


def test_frames_of_a_clip_tagged_bt709_are_plain_pngs_browsers_show_as_decoded(
    tmp_path: Path,
) -> None:
    """Kling's clips (and the simulator's) say BT.709 primaries and transfer. The frame is
    already converted to RGB: a colour chunk copied from those tags (cICP, cHRM, gAMA)
    would make a browser correct its colours a second time on the review page."""
    video = tmp_path / "tagged.mp4"
    _solid_clip(video, ORANGE, BT709_LIMITED, primaries_and_transfer=1)
    with av.open(str(video)) as container:
        frame = next(container.decode(video=0))
        assert (int(frame.color_primaries), int(frame.color_trc)) == (1, 1)  # really tagged

    frames = extract_frames(video, tmp_path / "first.png", tmp_path / "last.png")

    for result in frames:
        chunks = _chunks(result.path)
        assert chunks[0] == b"IHDR" and b"IDAT" in chunks
        assert not COLOUR_CHUNKS & set(chunks), chunks
        with Image.open(result.path) as image:
            assert image.mode == "RGB" and image.info.get("aspect", (1, 1)) == (1, 1)
            mean = np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - ORANGE).max() <= 3, mean


HDR10 = ("hdr10=1:master-display=G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)"
         "L(10000000,1):max-cll=1000,400:colorprim=bt2020:transfer=smpte2084:"
         "colormatrix=bt2020nc")


def test_frames_of_an_hdr_clip_carry_none_of_its_side_data(tmp_path: Path) -> None:
    """An HDR10 clip's frames come with mastering levels as side data, which FFmpeg's PNG
    encoder would write as mDCV and cLLI chunks: the PNG is plain RGB, as any other."""
    video = tmp_path / "hdr.mp4"
    with av.open(str(video), "w", format="mp4") as container:
        stream = container.add_stream("libx265", rate=Fraction(24))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p10le"
        stream.options = {"x265-params": HDR10, "log-level": "error"}
        picture = np.full((48, 64, 3), ORANGE, dtype=np.uint8)
        for pts in range(4):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(
                format="yuv420p10le")
            frame.pts = pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with av.open(str(video)) as container:
        assert len(next(container.decode(video=0)).side_data)  # really carries some

    for result in extract_frames(video, tmp_path / "first.png", tmp_path / "last.png"):
        chunks = _chunks(result.path)
        assert not COLOUR_CHUNKS & set(chunks), chunks
        with Image.open(result.path) as image:
            assert image.mode == "RGB" and image.size == (64, 48)


def _rgb(yuv: tuple[int, int, int], kr: float, kb: float, full: bool) -> np.ndarray:
    """The inverse of `_ycbcr`."""
    y, cb, cr = (
        (yuv[0] / 255, (yuv[1] - 128) / 255, (yuv[2] - 128) / 255)
        if full
        else ((yuv[0] - 16) / 219, (yuv[1] - 128) / 224, (yuv[2] - 128) / 224)
    )
    r, b = y + 2 * (1 - kr) * cr, y + 2 * (1 - kb) * cb
    g = (y - kr * r - kb * b) / (1 - kr - kb)
    return np.array([r, g, b]) * 255


@pytest.mark.parametrize(
    ("tags", "other"), [(BT709_LIMITED, BT601_FULL), (BT601_FULL, BT709_LIMITED)]
)
def test_decoding_with_the_other_tags_would_be_visibly_wrong(tags: tuple, other: tuple) -> None:
    """Guard for the test above: one hard-coded conversion could not pass both cases."""
    yuv = _ycbcr(ORANGE, *tags[2:])
    assert np.abs(_rgb(yuv, *tags[2:]) - ORANGE).max() < 1
    assert np.abs(_rgb(yuv, *other[2:]) - ORANGE).max() > 15


# ---- errors ---------------------------------------------------------------------------


def test_corrupt_file_is_a_media_error_naming_it(tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not a video" * 50)

    for read in (probe, lambda p: extract_last_frame(p, tmp_path / "x.png")):
        with pytest.raises(MediaError) as caught:
            read(broken)
        assert (
            str(caught.value)
            == "broken.mp4: not a readable video: Invalid data found when processing input"
        )
    assert isinstance(caught.value, KlingflowError)
    assert caught.value.path == broken


def test_truncated_clip_is_a_media_error(clips: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.mp4"
    cut.write_bytes((clips / "five.mp4").read_bytes()[:5000])

    with pytest.raises(MediaError, match=r"^cut\.mp4: "):
        extract_last_frame(cut, tmp_path / "x.png")


def test_missing_file_and_no_video_stream(tmp_path: Path) -> None:
    audio = tmp_path / "tone.wav"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))

    with pytest.raises(MediaError) as missing:
        probe(tmp_path / "gone.mp4")
    with pytest.raises(MediaError) as no_video:
        extract_first_frame(audio, tmp_path / "x.png")
    assert str(missing.value) == "gone.mp4: no such file"
    assert str(no_video.value) == "tone.wav: has no video stream"


# ---- concat ---------------------------------------------------------------------------


def test_concat_of_two_clips_has_the_summed_duration(clips: Path, tmp_path: Path) -> None:
    info = concat([ConcatPart(clips / "five.mp4"), ConcatPart(clips / "ten.mp4")],
                  tmp_path / "film.mp4").info

    assert info.duration == pytest.approx(15, abs=1e-3)
    assert info.frames == 360
    assert len(_frames(tmp_path / "film.mp4")) == 360


def test_concat_of_different_sizes_re_encodes_to_the_largest(
    clips: Path, tmp_path: Path, start: Image.Image
) -> None:
    small = tmp_path / "small.mp4"
    render_clip(small, start=start, end=None, duration=2, size=(160, 96), fps=12)

    info = concat([ConcatPart(small), ConcatPart(clips / "five.mp4")], tmp_path / "film.mp4").info

    assert (info.width, info.height) == SIZE
    assert info.duration == pytest.approx(7, abs=0.05)
    assert len(_frames(tmp_path / "film.mp4")) == info.frames
    last = extract_last_frame(tmp_path / "film.mp4", tmp_path / "last.png")
    assert last.pts_seconds == pytest.approx(7 - 1 / 24, abs=0.05)


def test_frames_made_ahead_keep_order_and_errors() -> None:
    from klingflow.media import _prefetched

    def items(fail_at: int | None) -> Iterator[int]:
        for number in range(20):
            if number == fail_at:
                raise RuntimeError("drawing failed")
            yield number

    assert list(_prefetched(items(None), depth=3)) == list(range(20))
    made: list[int] = []
    with pytest.raises(RuntimeError, match="drawing failed"):
        made.extend(_prefetched(items(7), depth=3))
    assert made == list(range(7))


def test_unwritable_output_is_a_media_error(tmp_path: Path, start: Image.Image) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")

    with pytest.raises(MediaError, match=r"^clip\.mp4: cannot write video: "):
        render_clip(blocker / "clip.mp4", start=start, end=None, duration=1)


def test_a_seed_makes_each_clip_its_own_while_seams_still_match(tmp_path: Path) -> None:
    start = Image.new("RGB", (400, 304), (200, 60, 40))
    start.paste((30, 160, 220), (100, 80, 300, 220))
    end = Image.new("RGB", (400, 304), (20, 40, 90))
    clips = []
    for seed in (1, 2):
        out = tmp_path / f"seed{seed}.mp4"
        render_clip(out, start=start, end=end, duration=1, size=(400, 304), seed=seed)
        clips.append(out)
    assert clips[0].read_bytes() != clips[1].read_bytes()
    for clip in clips:
        first = extract_first_frame(clip, clip.with_suffix(".first.png")).path
        last = extract_last_frame(clip, clip.with_suffix(".last.png")).path
        assert _mad(Image.open(first), fit_image(start, (400, 304))) < 6
        assert _mad(Image.open(last), fit_image(end, (400, 304))) < 6


def test_a_frame_that_cannot_be_encoded_is_a_media_error_naming_the_png(
    clips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not "corrupt video data": the clip (paid for) is fine; the PNG could not be made."""
    monkeypatch.setattr("klingflow.media._PNG_OPTIONS", {"pred": "no such filter"})

    with pytest.raises(MediaError) as raised:
        extract_frames(clips / "five.mp4", tmp_path / "first.png", tmp_path / "last.png")

    assert str(raised.value).startswith("first.png: could not be encoded as a PNG: ")
    assert not list(tmp_path.glob("*.png*"))
