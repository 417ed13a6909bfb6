"""Images the simulator reads: uploaded assets and the stand-ins for external URLs."""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

PATTERN_SIZE = (640, 384)


def decode(data: bytes) -> Image.Image:
    """Bytes of a PNG/JPEG -> an RGB image; raises OSError/ValueError if not an image."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB")


def pattern_image(url: str) -> Image.Image:
    """A distinct picture for an external URL: two colours and stripes from its hash."""
    seed = hashlib.sha256(url.encode()).digest()
    width, height = PATTERN_SIZE
    first = np.array(list(seed[0:3]), dtype=np.float32)
    second = np.array(list(seed[3:6]), dtype=np.float32)
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    blend = (x + y) / 2
    pixels = first * (1 - blend) + second * blend
    period = 24 + seed[6] % 40
    stripes = ((np.arange(width)[None, :] + np.arange(height)[:, None]) // period) % 2
    pixels[stripes == 1] = 255 - pixels[stripes == 1]
    return Image.fromarray(pixels.astype(np.uint8), "RGB")
