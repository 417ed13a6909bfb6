"""Local input images: present, PNG or JPEG by content, at least 300 px, at most 10 MB."""

from __future__ import annotations

from pathlib import Path

MIN_SIDE = 300
MAX_BYTES = 10 * 1024 * 1024
FORMATS = ("PNG", "JPEG")


def image_problem(path: Path, written: str) -> str | None:
    """Why the file at `path` cannot be uploaded as an image, or None."""
    if not path.is_file():
        return f"{written!r} does not exist (looked for {path}); fix the path, relative to the pipeline file"
    size = path.stat().st_size
    if size > MAX_BYTES:
        return f"{written!r} is {size / 1024 / 1024:.1f} MB; an input image is at most 10 MB"
    from PIL import Image, UnidentifiedImageError  # only pipelines with local files need it

    try:
        with Image.open(path) as image:
            found, (width, height) = image.format, image.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
        return f"{written!r} is not a PNG or JPEG image (its content is not an image)"
    if found not in FORMATS:
        return f"{written!r} is a {found} image; convert it to PNG or JPEG"
    if min(width, height) < MIN_SIDE:
        return f"{written!r} is {width}x{height} px; an input image is at least {MIN_SIDE} px on each side"
    return None
