"""What validation catches before anything is spent: matrix sizes before expanding,
ids and names that cannot be file names, input images and URLs (issue 9)."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from klingflow.cli import main
from klingflow.spec import load_pipeline

URL = "https://x.test/a.png"


def validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    code = main(["validate", str(path)])
    out = capsys.readouterr()
    return code, out.out, [line.replace(str(path), "p.yaml") for line in out.err.splitlines()]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _values(n: int) -> str:
    return "[" + ", ".join(str(i) for i in range(n)) + "]"


# ---- matrix sizes, counted before anything is expanded ----------------------------------------


def test_a_matrix_bomb_is_refused_at_once_with_the_rest_of_its_step(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = ", ".join(f"{k}: {_values(20)}" for k in "abcdef")
    path = write(tmp_path, f"""\
version: 1
name: bomb
steps:
  - id: big
    kind: frames
    matrix: {{{keys}}}
    image: {URL}
    prompt: ${{matrix.a}} ${{matrix.b}}
    duration: 7
  - {{id: next, kind: frames, image: "${{steps.big@63999999.last_frame}}"}}
""")
    assert validate(path, capsys) == (2, "", [
        "p.yaml:6:13: steps[0] (id: big).matrix: the matrix expands to 64,000,000 steps; "
        "at most 10,000",
        "p.yaml:9:15: steps[0] (id: big).duration: 7 is not one of 5, 10 for kling-v2-1",
        "2 problems found"])


def test_matrices_are_limited_together_too(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    steps = "".join(f"  - {{id: m{n}, kind: frames, image: {URL}, prompt: '${{matrix.p}}', "
                    f"matrix: {{p: {_values(40)}, q: {_values(100)}}}}}\n" for n in range(3))
    path = write(tmp_path, f"version: 1\nname: many\nsteps:\n{steps}")
    code, out, err = validate(path, capsys)
    assert (code, out) == (2, "")
    assert err == [
        "p.yaml:6:" + str(steps.splitlines()[2].index("{p:") + 1) + ": steps[2] (id: m2).matrix: "
        "the matrices expand to 12,000 steps in all with this one (4,000); at most 10,000 in a "
        "pipeline",
        "1 problem found"]


def test_a_reference_to_an_expansion_is_checked_by_its_number(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, f"""\
version: 1
name: refs
steps:
  - {{id: m, kind: frames, image: {URL}, prompt: "${{matrix.p}}", matrix: {{p: {_values(100)}}}}}
  - {{id: a, kind: frames, image: "${{steps.m@99.last_frame}}"}}
  - {{id: b, kind: frames, image: "${{steps.m@100.last_frame}}"}}
  - {{id: c, kind: frames, image: "${{steps.m@07.last_frame}}"}}
""")
    code, _, err = validate(path, capsys)
    assert code == 2
    assert err == [
        "p.yaml:6:34: steps[2] (id: b).image: ${steps.m@100.last_frame}: 'm' has 100 "
        "expansions: m@0 .. m@99",
        "p.yaml:7:34: steps[3] (id: c).image: ${steps.m@07.last_frame}: 'm' has 100 "
        "expansions: m@0 .. m@99",
        "2 problems found"]


# ---- inputs --------------------------------------------------------------------------------------


def test_an_input_path_with_a_nul_character_is_a_located_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, 'version: 1\nname: nulls\ninputs: {hero: "a\\0.png"}\n'
                           f"steps:\n  - {{id: a, kind: frames, image: {URL}}}\n")
    assert validate(path, capsys) == (2, "", [
        "p.yaml:3:16: inputs.hero: 'a\\x00.png' is neither an http(s) URL nor a local path",
        "1 problem found"])


def _picture(size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, (20, 160, 40))
    for x in range(0, size[0], 9):  # detail, so the encoded data is not trivially small
        image.paste((x % 256, 90, 200), (x, 0, x + 4, size[1]))
    return image


def _encoded(size: tuple[int, int], kind: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    _picture(size).save(buffer, kind, **options)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` (its pixels are never decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def _with_input(tmp_path: Path, written: str) -> Path:
    return write(tmp_path, f"version: 1\nname: img\ninputs: {{hero: '{written}'}}\n"
                           "steps:\n  - {id: a, kind: frames, image: '${inputs.hero}'}\n")


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("cut.png", _encoded((800, 600), "PNG")[:-2000],
     "'cut.png' is a truncated or damaged PNG; export or download it again"),
    ("cut.jpg", _encoded((800, 600), "JPEG")[:-2000],
     "'cut.jpg' is a truncated or damaged JPEG; export or download it again"),
    ("huge.png", _png_header(20_000, 20_000),
     "'huge.png' is 20000x20000 px (400.0 megapixels); an input image is at most 89.5 "
     "megapixels: scale it down"),
    ("big.png", _png_header(12_000, 12_000),
     "'big.png' is 12000x12000 px (144.0 megapixels); an input image is at most 89.5 "
     "megapixels: scale it down"),
    ("small.jpg", _encoded((299, 400), "JPEG"),
     "'small.jpg' is 299x400 px; an input image is at least 300 px on each side"),
    ("anim.gif", _encoded((400, 400), "GIF"), "'anim.gif' is a GIF image; convert it to PNG or JPEG"),
    ("notes.png", b"just some text, not an image",
     "'notes.png' is not a PNG or JPEG image (its content is not an image)"),
])
def test_local_images_are_decoded_enough_to_be_trusted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes,
        expected: str) -> None:
    (tmp_path / name).write_bytes(content)
    assert validate(_with_input(tmp_path, name), capsys) == (
        2, "", [f"p.yaml:3:16: inputs.hero: {expected}", "1 problem found"])


def test_a_directory_is_called_a_directory(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "images").mkdir()
    assert validate(_with_input(tmp_path, "images"), capsys) == (2, "", [
        f"p.yaml:3:16: inputs.hero: 'images' is a directory, not an image file (looked for "
        f"{tmp_path.resolve() / 'images'}); name a PNG or JPEG file",
        "1 problem found"])


def test_a_named_pipe_is_not_called_missing_and_is_never_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Opening a FIFO waits for a writer: validation must say what it is, not hang."""
    os.mkfifo(tmp_path / "pipe.png")
    assert validate(_with_input(tmp_path, "pipe.png"), capsys) == (2, "", [
        f"p.yaml:3:16: inputs.hero: 'pipe.png' is a named pipe, not an image file (looked "
        f"for {tmp_path.resolve() / 'pipe.png'}); name a PNG or JPEG file",
        "1 problem found"])


def test_a_loop_of_links_is_not_called_missing(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.png").symlink_to("b.png")
    (tmp_path / "b.png").symlink_to("a.png")
    assert validate(_with_input(tmp_path, "a.png"), capsys) == (2, "", [
        f"p.yaml:3:16: inputs.hero: 'a.png' cannot be read: Too many levels of symbolic "
        f"links (looked for {tmp_path.resolve() / 'a.png'})",
        "1 problem found"])


def test_a_phone_mpo_is_a_jpeg_whatever_its_name(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Phones write JPEGs with extra frames (MPO); they are uploaded as image/jpeg."""
    buffer = io.BytesIO()
    _picture((640, 480)).save(buffer, "MPO", save_all=True,
                              append_images=[_picture((320, 240))])
    (tmp_path / "phone.MPO").write_bytes(buffer.getvalue())
    with Image.open(tmp_path / "phone.MPO") as image:
        assert image.format == "MPO"
    path = _with_input(tmp_path, "phone.MPO")
    assert validate(path, capsys) == (0, f"{path}: ok (1 steps)\n", [])
    assert load_pipeline(path).inputs["hero"].content_type == "image/jpeg"


@pytest.mark.parametrize(("url", "expected"), [
    ("https://", "'https://' is not a usable URL: it names no host; write https://HOST/PATH"),
    ("https:///a.png", "'https:///a.png' is not a usable URL: it names no host; write "
                       "https://HOST/PATH"),
    ("https://example.com/my photo.jpg", "'https://example.com/my photo.jpg' is not a usable "
                                         "URL: it holds a space; write spaces as %20"),
])
def test_url_inputs_and_image_urls_are_checked_for_form(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, expected: str) -> None:
    path = write(tmp_path, f"version: 1\nname: urls\ninputs: {{hero: '{url}'}}\n"
                           f"steps:\n  - {{id: a, kind: frames, image: '{url}'}}\n")
    code, out, err = validate(path, capsys)
    assert (code, out) == (2, "")
    assert err == [f"p.yaml:3:16: inputs.hero: {expected}",
                   f"p.yaml:5:34: steps[0] (id: a).image: {expected}",
                   "2 problems found"]


# ---- ids and names become file names ------------------------------------------------------------


def test_ids_and_names_too_long_for_file_names_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    long = "a" * 300
    path = write(tmp_path, f"version: 1\nname: {long}\nsteps:\n"
                           f"  - {{id: {long}, kind: frames, image: {URL}}}\n"
                           f"outputs:\n  {'o' * 101}: {{concat: [{long}]}}\n")
    shown = "'" + "a" * 57 + "...'"
    assert validate(path, capsys) == (2, "", [
        f"p.yaml:2:7: name: {shown} is 300 characters long; at most 100",
        f"p.yaml:4:10: steps[0] (id: {long}).id: {shown} is 300 characters long; at most 100",
        f"p.yaml:6:3: outputs.{'o' * 101}: '{'o' * 57}...' is 101 characters long; at most 100",
        "3 problems found"])


def test_names_windows_keeps_for_devices_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, f"version: 1\nname: aux\nsteps:\n"
                           f"  - {{id: con, kind: frames, image: {URL}}}\n"
                           f"  - {{id: com1x, kind: frames, image: {URL}}}\n"
                           "outputs:\n  nul: {concat: [con]}\n")
    assert validate(path, capsys) == (2, "", [
        "p.yaml:2:7: name: 'aux' cannot be a pipeline name: Windows reserves it for a device, "
        "so no file or folder may be named after it; choose another",
        "p.yaml:4:10: steps[0] (id: con).id: 'con' cannot be a step id: Windows reserves it for "
        "a device, so no file or folder may be named after it; choose another",
        "p.yaml:7:3: outputs.nul: 'nul' cannot be an output name: Windows reserves it for a "
        "device, so no file or folder may be named after it; choose another",
        "3 problems found"])


def test_a_matrix_expansion_of_the_longest_id_still_makes_file_names(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    longest = "m" * 100
    path = write(tmp_path, f"version: 1\nname: {'n' * 100}\nsteps:\n"
                           f"  - {{id: {longest}, kind: frames, image: {URL}, "
                           f"prompt: '${{matrix.p}}', matrix: {{p: {_values(100)}}}}}\n")
    code, _, err = validate(path, capsys)
    assert code == 0, err
    for suffix in (".mp4", ".first.png", ".last.png"):  # what a run writes per step
        (tmp_path / f"{longest}@99{suffix}").write_bytes(b"")
