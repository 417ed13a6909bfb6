"""klingflow.media.concat on real H.264 files: seams shown once, stream copy when the
parts match, one re-encode into the largest size when they differ, sound kept in sync."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from klingflow.media import (
    ConcatPart,
    MediaError,
    concat,
    extract_last_frame,
    frame_difference,
    probe,
    render_clip,
)

TONE_RATE = 44100


def _picture(width: int, height: int, colour: tuple[int, int, int]) -> Image.Image:
    """A coloured picture with a white square left of centre: aspect and padding show."""
    picture = Image.new("RGB", (width, height), colour)
    picture.paste((240, 240, 240), (width // 4, height // 4, width // 2, 3 * height // 4))
    return picture


def _frames(video: Path) -> list[np.ndarray]:
    with av.open(str(video)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def _sound(video: Path) -> tuple[np.ndarray, int]:
    """The first channel of the video's sound, and its sample rate."""
    with av.open(str(video)) as container:
        rate = container.streams.audio[0].rate
        chunks = [frame.to_ndarray()[0] for frame in container.decode(audio=0)]
    return np.concatenate(chunks), rate


def _with_tone(video: Path, out: Path, hertz: float) -> Path:
    """`video`'s packets with a mono AAC sine tone as long as the video (a clip with sound)."""
    seconds = probe(video).duration
    with av.open(str(video)) as source, av.open(str(out), "w", format="mp4") as target:
        picture = target.add_stream_from_template(source.streams.video[0])
        sound = target.add_stream("aac", rate=TONE_RATE, layout="mono")
        for packet in source.demux(source.streams.video[0]):
            if packet.size:
                packet.stream = picture
                target.mux(packet)
        count = int(seconds * TONE_RATE)
        tone = (0.5 * np.sin(2 * np.pi * hertz * np.arange(count) / TONE_RATE)).astype(np.float32)
        for start in range(0, count, 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, start:start + 1024].copy(),
                                               format="fltp", layout="mono")
            frame.sample_rate, frame.pts = TONE_RATE, start
            target.mux(sound.encode(frame))
        target.mux(sound.encode(None))
    return out


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two clips like a chained pipeline: the second starts from the first's last frame."""
    folder = tmp_path_factory.mktemp("chain")
    first, second = folder / "a.mp4", folder / "b.mp4"
    render_clip(first, start=_picture(640, 400, (200, 60, 40)),
                end=_picture(640, 400, (30, 60, 200)), duration=1, seed=1)
    last = extract_last_frame(first, folder / "a.last.png").path
    render_clip(second, start=Image.open(last), end=_picture(640, 400, (40, 180, 60)),
                duration=1, seed=2)
    return first, second


def test_a_chained_seam_is_shown_once_and_packets_are_copied(
        chain: tuple[Path, Path], tmp_path: Path) -> None:
    first, second = chain
    made = concat([ConcatPart(first), ConcatPart(second, continues=True)], tmp_path / "film.mp4")

    assert made.copied and not made.audio
    assert made.info.frames == 24 + 24 - 1
    assert made.info.duration == pytest.approx(47 / 24, abs=1e-3)
    film, a, b = _frames(tmp_path / "film.mp4"), _frames(first), _frames(second)
    assert len(film) == 47
    # a copy decodes to exactly the parts' pictures: a without its last frame, then b whole
    assert all(np.array_equal(f, p) for f, p in zip(film, a[:-1] + b, strict=True))


def test_without_a_chain_every_frame_stays(chain: tuple[Path, Path], tmp_path: Path) -> None:
    first, second = chain
    made = concat([ConcatPart(first), ConcatPart(second)], tmp_path / "film.mp4")

    assert made.copied
    assert made.info.frames == len(_frames(tmp_path / "film.mp4")) == 48


def test_a_forced_re_encode_drops_the_same_seam_frame(chain: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    first, second = chain
    made = concat([ConcatPart(first), ConcatPart(second, continues=True)], tmp_path / "film.mp4",
                  reencode=True)

    assert not made.copied
    film, a, b = _frames(tmp_path / "film.mp4"), _frames(first), _frames(second)
    assert made.info.frames == len(film) == 47
    expected = a[:-1] + b
    assert max(_mad(f, p) for f, p in zip(film, expected, strict=True)) < 3


def test_b_frames_at_a_seam_are_re_encoded_with_the_right_count(tmp_path: Path) -> None:
    """With B-frames the last frame shown is referenced by others: no copy can drop it."""
    clip = tmp_path / "b-frames.mp4"
    render_clip(clip, start=_picture(320, 192, (90, 20, 20)), end=_picture(320, 192, (20, 20, 90)),
                duration=1, preset="veryfast")

    chained = concat([ConcatPart(clip), ConcatPart(clip, continues=True)], tmp_path / "c.mp4")
    apart = concat([ConcatPart(clip), ConcatPart(clip)], tmp_path / "d.mp4")

    assert not chained.copied and chained.info.frames == len(_frames(tmp_path / "c.mp4")) == 47
    assert apart.copied and apart.info.frames == len(_frames(tmp_path / "d.mp4")) == 48


def test_mixed_sizes_fit_the_largest_with_aspect_kept(tmp_path: Path) -> None:
    """A std-like small clip and a pro-like large one: one size, the small one letterboxed."""
    small, large = tmp_path / "small.mp4", tmp_path / "large.mp4"
    render_clip(small, start=_picture(320, 192, (200, 60, 40)), end=None, duration=1,
                size=(320, 192))
    render_clip(large, start=_picture(640, 480, (30, 60, 200)), end=None, duration=1,
                size=(640, 480))

    made = concat([ConcatPart(small), ConcatPart(large)], tmp_path / "film.mp4")

    assert not made.copied
    assert (made.info.width, made.info.height, made.info.fps) == (640, 480, 24)
    film = _frames(tmp_path / "film.mp4")
    assert made.info.frames == len(film) == 48
    # 320x192 scaled by 2 is 640x384: 48 black rows above and below, the picture between
    first = film[0]
    assert first[:44].max() < 30 and first[-44:].max() < 30
    scaled = np.asarray(Image.fromarray(_frames(small)[0]).resize((640, 384)))
    assert _mad(first[48:432], scaled) < 6
    assert _mad(film[-1], _frames(large)[-1]) < 4


def test_mixed_rates_take_the_highest(tmp_path: Path) -> None:
    slow, fast = tmp_path / "slow.mp4", tmp_path / "fast.mp4"
    render_clip(slow, start=_picture(320, 192, (1, 2, 3)), end=None, duration=2, fps=12)
    render_clip(fast, start=_picture(320, 192, (3, 2, 1)), end=None, duration=1, fps=24)

    made = concat([ConcatPart(slow), ConcatPart(fast)], tmp_path / "film.mp4")

    assert made.info.fps == 24
    assert made.info.frames == len(_frames(tmp_path / "film.mp4")) == 48 + 24
    assert made.info.duration == pytest.approx(3, abs=1e-3)


def test_sound_is_kept_in_sync_with_silence_under_a_part_without(
        chain: tuple[Path, Path], tmp_path: Path) -> None:
    first, second = chain
    loud = _with_tone(first, tmp_path / "loud.mp4", 440)

    made = concat([ConcatPart(loud), ConcatPart(second, continues=True)], tmp_path / "film.mp4")

    assert made.copied and made.audio  # the pictures are still copied
    sound, rate = _sound(tmp_path / "film.mp4")
    assert rate == TONE_RATE
    seam = round(23 / 24 * rate)  # the first part keeps 23 frames
    assert len(sound) / rate == pytest.approx(47 / 24, abs=0.03)
    assert np.sqrt(np.mean(sound[: seam - 2048] ** 2)) > 0.1  # the tone under the first part
    assert np.abs(sound[seam + 2048:]).max() < 1e-3  # silence under the second


def test_sound_of_a_later_part_starts_under_its_pictures(chain: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    first, second = chain
    loud = _with_tone(second, tmp_path / "loud.mp4", 660)

    made = concat([ConcatPart(first), ConcatPart(loud)], tmp_path / "film.mp4", reencode=True)

    assert not made.copied and made.audio
    sound, rate = _sound(tmp_path / "film.mp4")
    assert np.abs(sound[: rate - 2048]).max() < 1e-3
    assert np.sqrt(np.mean(sound[rate + 2048: 2 * rate - 2048] ** 2)) > 0.1


def test_a_corrupt_part_is_a_media_error_naming_it(chain: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))

    with pytest.raises(MediaError, match=r"^broken\.mp4: not a readable video: "):
        concat([ConcatPart(chain[0]), ConcatPart(broken)], tmp_path / "film.mp4")


def test_frame_difference_is_the_mean_absolute_difference(tmp_path: Path) -> None:
    Image.new("RGB", (40, 20), (100, 100, 100)).save(tmp_path / "grey.png")
    Image.new("RGB", (40, 20), (110, 100, 70)).save(tmp_path / "other.png")
    Image.new("RGB", (80, 40), (110, 100, 70)).save(tmp_path / "bigger.png")

    assert frame_difference(tmp_path / "grey.png", tmp_path / "grey.png") == 0
    assert frame_difference(tmp_path / "grey.png", tmp_path / "other.png") == pytest.approx(40 / 3)
    assert frame_difference(tmp_path / "grey.png", tmp_path / "bigger.png") == pytest.approx(40 / 3)
