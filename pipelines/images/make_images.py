"""Draw the example pipelines' input images (run from anywhere: `python make_images.py`).

Small, visually distinct pictures, at least 300 px on each side, a few KB each, so
the simulator's clips show which input went where.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SIZE = (480, 360)


def gradient(top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    """A vertical sky-like gradient."""
    image = Image.new("RGB", SIZE)
    draw = ImageDraw.Draw(image)
    for y in range(SIZE[1]):
        t = y / (SIZE[1] - 1)
        draw.line([(0, y), (SIZE[0], y)],
                  fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
    return image


def hero() -> Image.Image:
    """A rocket on its pad at dusk."""
    image = gradient((22, 34, 86), (247, 150, 70))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 300, 480, 360], fill=(40, 36, 30))
    draw.polygon([(240, 90), (266, 150), (266, 280), (214, 280), (214, 150)], fill=(235, 235, 240))
    draw.polygon([(214, 240), (190, 290), (214, 280)], fill=(200, 40, 40))
    draw.polygon([(266, 240), (290, 290), (266, 280)], fill=(200, 40, 40))
    draw.ellipse([229, 170, 251, 192], fill=(70, 140, 220))
    draw.rectangle([200, 280, 280, 300], fill=(90, 90, 95))
    return image


def skyline() -> Image.Image:
    """A city skyline silhouette under a golden sky."""
    image = gradient((255, 196, 110), (180, 80, 120))
    draw = ImageDraw.Draw(image)
    draw.ellipse([330, 60, 400, 130], fill=(255, 236, 180))
    towers = [(0, 230), (40, 180), (85, 250), (120, 120), (165, 200), (205, 90), (250, 170),
              (300, 140), (345, 215), (385, 110), (430, 190)]
    for x, top in towers:
        draw.rectangle([x, top, x + 42, 360], fill=(28, 22, 40))
        for wy in range(top + 12, 350, 22):
            draw.rectangle([x + 8, wy, x + 14, wy + 8], fill=(255, 214, 120))
    return image


def moon() -> Image.Image:
    """A crescent moon over dark water."""
    image = gradient((5, 10, 30), (30, 50, 90))
    draw = ImageDraw.Draw(image)
    draw.ellipse([170, 60, 310, 200], fill=(240, 240, 220))
    draw.ellipse([205, 45, 345, 185], fill=(10, 18, 44))
    draw.rectangle([0, 260, 480, 360], fill=(12, 26, 52))
    for y in range(270, 360, 14):
        draw.line([(200, y), (280, y)], fill=(150, 150, 130), width=2)
    return image


def forest() -> Image.Image:
    """Pine trees on a green hill under a pale sky."""
    image = gradient((190, 220, 240), (120, 170, 110))
    draw = ImageDraw.Draw(image)
    draw.ellipse([-120, 250, 600, 520], fill=(60, 110, 60))
    for x in range(20, 480, 70):
        draw.polygon([(x, 150 + x % 40), (x - 30, 280), (x + 30, 280)], fill=(20, 70, 40))
        draw.rectangle([x - 5, 280, x + 5, 300], fill=(80, 50, 30))
    return image


def main() -> None:
    hero().quantize(64).save(HERE / "hero.png", optimize=True)
    moon().quantize(32).save(HERE / "moon.png", optimize=True)
    skyline().save(HERE / "skyline.jpg", quality=70, optimize=True)
    forest().save(HERE / "forest.jpg", quality=70, optimize=True)


if __name__ == "__main__":
    main()
