"""Input images, checked before anything is spent.

A local file must be a whole PNG or JPEG (a phone's MPO is a JPEG with extra frames),
at least 300 px on each side, at most 10 MB (the limits of POST /assets) and at most
MAX_PIXELS. Its header is read, then the file is read through to its end (PNG
chunks and checksums; a JPEG decoded at 1/8 scale), so a truncated or damaged file
is found without decoding a large picture in full. A URL must be http(s) with a host
and no spaces.
"""

from __future__ import annotations

import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from klingflow.files import special_kind

MIN_SIDE = 300
MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 89_478_485
"""klingflow's own limit (Kling publishes none but 10 MB): Pillow's decompression-bomb
threshold, about 9,459 x 9,459; a bigger picture takes gigabytes to decode."""
CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "MPO": "image/jpeg"}
"""Format (as Pillow reads the content) -> the Content-Type the upload sends."""


@dataclass(frozen=True, slots=True)
class ImageCheck:
    """What a local input is: its problem, or the Content-Type it is uploaded as."""

    problem: str | None
    content_type: str | None = None


def check_image(path: Path, written: str) -> ImageCheck:
    """Whether the file at `path` can be uploaded as an input image, and as what."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return ImageCheck(f"{written!r} does not exist (looked for {path}); fix the path, "
                          "relative to the pipeline file")
    except OSError as exc:  # a loop of symbolic links, a folder that cannot be searched
        return ImageCheck(f"{written!r} cannot be read: {exc.strerror or exc} (looked for "
                          f"{path})")
    if stat.S_ISDIR(found.st_mode):
        return ImageCheck(f"{written!r} is a directory, not an image file (looked for "
                          f"{path}); name a PNG or JPEG file")
    if not stat.S_ISREG(found.st_mode):  # reading a named pipe would wait for a writer
        return ImageCheck(f"{written!r} is {special_kind(found.st_mode)}, not an image file "
                          f"(looked for {path}); name a PNG or JPEG file")
    size = found.st_size
    if size > MAX_BYTES:
        return ImageCheck(f"{written!r} is {size / 1024 / 1024:.1f} MB; an input image is at "
                          "most 10 MB")
    return _check_content(path, written)


def _check_content(path: Path, written: str) -> ImageCheck:
    from PIL import Image, UnidentifiedImageError  # only pipelines with local files need it

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                found, (width, height) = image.format or "", image.size
                problem = _shape_problem(written, found, width, height) or \
                    _whole_problem(image, written, found)
    except Image.DecompressionBombError:
        problem = _too_many_pixels(written, *_size_of_bomb(path))
    except UnidentifiedImageError:
        problem = f"{written!r} is not a PNG or JPEG image (its content is not an image)"
    except OSError as exc:
        problem = f"{written!r} cannot be read: {exc.strerror or exc}"
    return ImageCheck(problem, None if problem else CONTENT_TYPES[found])


def _shape_problem(written: str, found: str, width: int, height: int) -> str | None:
    if found not in CONTENT_TYPES:
        return f"{written!r} is a {found or 'non-PNG, non-JPEG'} image; convert it to PNG or JPEG"
    if width * height > MAX_PIXELS:
        return _too_many_pixels(written, width, height)
    if min(width, height) < MIN_SIDE:
        return (f"{written!r} is {width}x{height} px; an input image is at least {MIN_SIDE} px "
                "on each side")
    return None


def _whole_problem(image: object, written: str, found: str) -> str | None:
    """Read to the end: PNG chunks and checksums (verify), a JPEG decoded at 1/8 scale."""
    try:
        if found == "PNG":
            image.verify()  # type: ignore[attr-defined]
        else:
            image.draft("RGB", (image.width // 8, image.height // 8))  # type: ignore[attr-defined]
            image.load()  # type: ignore[attr-defined]
    except (OSError, SyntaxError, ValueError, EOFError):
        kind = "JPEG" if found == "MPO" else found
        return f"{written!r} is a truncated or damaged {kind}; export or download it again"
    return None


def _too_many_pixels(written: str, width: int, height: int) -> str:
    if not width:
        return (f"{written!r} has more than {MAX_PIXELS:,} pixels; an input image is at most "
                f"{MAX_PIXELS / 1e6:.1f} megapixels: scale it down")
    return (f"{written!r} is {width}x{height} px ({width * height / 1e6:.1f} megapixels); an "
            f"input image is at most {MAX_PIXELS / 1e6:.1f} megapixels: scale it down")


def _size_of_bomb(path: Path) -> tuple[int, int]:
    """The size in a header Pillow refused to open (too many pixels); (0, 0) if unknown."""
    from PIL import JpegImagePlugin, PngImagePlugin

    for reader in (PngImagePlugin.PngImageFile, JpegImagePlugin.JpegImageFile):
        try:
            with path.open("rb") as handle:
                width, height = reader(handle).size
                return width, height
        except (OSError, SyntaxError, ValueError):
            continue
    return 0, 0


def is_http_url(text: str) -> bool:
    """Whether `text` is written as an http(s) URL; a scheme is case-insensitive, so
    HTTPS://HOST/PATH is one (RFC 3986)."""
    return text[:8].lower().startswith(("http://", "https://"))


def url_problem(text: str) -> str | None:
    """Why `text`, an http(s) URL, cannot be sent as an image URL; None if it can."""
    if any(c.isspace() for c in text):
        return f"{text!r} is not a usable URL: it holds a space; write spaces as %20"
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError as exc:
        return f"{text!r} is not a usable URL: {exc}"
    if parts.username is not None or parts.password is not None:
        shown = parts._replace(netloc=f"***@{parts.netloc.rpartition('@')[2]}").geturl()
        return (f"{shown!r} holds credentials (user:password@), which would be sent to the "
                "service and kept in klingflow's files; give a URL without them (a "
                "presigned URL works)")
    if not host:
        return f"{text!r} is not a usable URL: it names no host; write https://HOST/PATH"
    return None
