"""Render a second non-ImageNet image dataset: the ten digits, printed in various fonts.

Kept out of the advisor's tuning (``bench/advisor.py`` tuned its thresholds on the flowers
and ``bench/make_shapes.py``'s patterns), so that it checks the rule on a domain the rule
has not seen. Each image is one digit in a random font (the system's TrueType fonts, else
Pillow's built-in one), size, rotation, position and colours, then blurred and noised.

    python bench/make_digits.py OUT --per-class 300 --seed 0 [--size 96]

Writes OUT/<digit>/<digit>_<i>.png. The same seed gives the same images; use different
seeds for training and test sets.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from make_shapes import cli, write_images

CLASSES = tuple("0123456789")
FONT_DIRS = (Path("/usr/share/fonts/truetype"), Path("/usr/share/fonts"), Path("/Library/Fonts"),
             Path("C:/Windows/Fonts"))


@lru_cache(maxsize=1)
def font_files() -> tuple[str, ...]:
    """Up to 12 TrueType fonts found on this system (sorted, so a seed gives the same images)."""
    for d in FONT_DIRS:
        if d.is_dir():
            found = sorted(str(p) for p in d.rglob("*.ttf"))
            if found:
                return tuple(found[:: max(1, len(found) // 12)][:12])
    return ()


def _font(rng: np.random.Generator, px: int) -> ImageFont.FreeTypeFont:
    files = font_files()
    if files:
        return ImageFont.truetype(files[int(rng.integers(len(files)))], px)
    return ImageFont.load_default(px)


def render(digit: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of ``digit`` (size x size, RGB)."""
    fg = rng.uniform(0, 255, 3)
    bg = rng.uniform(0, 255, 3)
    while np.abs(fg - bg).sum() < 150:
        bg = rng.uniform(0, 255, 3)
    big = size * 2  # drawn large, rotated, then scaled down: smooth edges
    glyph = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(glyph)
    font = _font(rng, int(big * rng.uniform(0.45, 0.8)))
    left, top, right, bottom = d.textbbox((0, 0), digit, font=font)
    x = (big - (right - left)) / 2 - left + rng.uniform(-0.12, 0.12) * big
    y = (big - (bottom - top)) / 2 - top + rng.uniform(-0.12, 0.12) * big
    d.text((x, y), digit, fill=255, font=font)
    glyph = glyph.rotate(rng.uniform(-25, 25), resample=Image.BICUBIC).resize((size, size), Image.BILINEAR)
    mask = np.asarray(glyph, dtype=np.float32)[..., None] / 255.0
    arr = mask * fg + (1 - mask) * bg
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))
    out = np.asarray(img, dtype=np.float32)
    out += rng.normal(0, rng.uniform(3, 25), out.shape)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")


def make_digits(out: str | Path, per_class: int, seed: int = 0, size: int = 96) -> Path:
    """Write ``per_class`` images of each digit under ``out``; returns ``out``."""
    return write_images(out, CLASSES, render, per_class, seed, size)


if __name__ == "__main__":
    raise SystemExit(cli(make_digits, len(CLASSES), __doc__))
