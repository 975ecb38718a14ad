"""Render a synthetic, clearly non-ImageNet image dataset: 5 classes of procedural patterns.

Each image is a pattern drawn with random colours, scale, orientation and position,
then degraded with blur, noise and a random brightness/contrast change, so that the
classes take some learning to tell apart:

* ``stripes``     a square-wave grating at a random angle and period
* ``checker``     a rotated checkerboard
* ``rings``       concentric rings around a random centre
* ``dots``        randomly scattered filled discs
* ``crosshatch``  two crossing sets of thin lines

    python bench/make_shapes.py OUT --per-class 300 --seed 0 [--size 96]

Writes OUT/<class>/<class>_<i>.png. The same seed gives the same images; use
different seeds for training and test sets.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("stripes", "checker", "rings", "dots", "crosshatch")


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    a = rng.uniform(0, 255, 3)
    b = rng.uniform(0, 255, 3)
    while np.abs(a - b).sum() < 150:  # keep the two colours distinguishable
        b = rng.uniform(0, 255, 3)
    return a, b


def _mix(mask: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return mask[..., None] * a + (1 - mask[..., None]) * b


def _grid(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by a random angle around a random point."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    cx, cy = rng.uniform(0, size, 2)
    u = (x - cx) * math.cos(theta) + (y - cy) * math.sin(theta)
    v = -(x - cx) * math.sin(theta) + (y - cy) * math.cos(theta)
    return u, v


def render(cls: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of class ``cls`` (size x size, RGB)."""
    a, b = _colours(rng)
    if cls == "stripes":
        u, _ = _grid(size, rng)
        period = rng.uniform(size / 12, size / 4)
        arr = _mix(((u / period) % 1.0 < 0.5).astype(np.float32), a, b)
    elif cls == "checker":
        u, v = _grid(size, rng)
        cell = rng.uniform(size / 10, size / 4)
        arr = _mix(((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32), a, b)
    elif cls == "rings":
        y, x = np.mgrid[0:size, 0:size].astype(np.float32)
        cx, cy = rng.uniform(-0.2 * size, 1.2 * size, 2)
        period = rng.uniform(size / 12, size / 4)
        r = np.hypot(x - cx, y - cy)
        arr = _mix(((r / period) % 1.0 < 0.5).astype(np.float32), a, b)
    elif cls == "dots":
        img = Image.new("RGB", (size, size), tuple(int(c) for c in b))
        d = ImageDraw.Draw(img)
        radius = rng.uniform(size / 30, size / 10)
        for _ in range(int(rng.integers(6, 30))):
            cx, cy = rng.uniform(0, size, 2)
            r = radius * rng.uniform(0.7, 1.3)
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(c) for c in a))
        arr = np.asarray(img, dtype=np.float32)
    elif cls == "crosshatch":
        u, v = _grid(size, rng)
        period = rng.uniform(size / 10, size / 4)
        width = rng.uniform(0.1, 0.25)
        skew = rng.uniform(math.pi / 6, math.pi / 2)  # angle between the two line sets
        v2 = u * math.cos(skew) + v * math.sin(skew)
        mask = ((u / period) % 1.0 < width) | ((v2 / period) % 1.0 < width)
        arr = _mix(mask.astype(np.float32), a, b)
    else:
        raise ValueError(f"unknown class {cls!r}")
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))
    out = np.asarray(img, dtype=np.float32)
    contrast = rng.uniform(0.4, 1.0)  # washed-out images are harder
    out = (out - out.mean()) * contrast + out.mean() + rng.uniform(-30, 30)
    out += rng.normal(0, rng.uniform(5, 35), out.shape)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")


def write_images(out: str | Path, classes: tuple[str, ...], render_one, per_class: int, seed: int = 0,
                 size: int = 96) -> Path:
    """Write ``per_class`` images of each class (``render_one(cls, size, rng)``) to OUT/<class>/<class>_<i>.png."""
    out = Path(out)
    for k, cls in enumerate(classes):
        d = out / cls
        d.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, k])
        for i in range(per_class):
            render_one(cls, size, rng).save(d / f"{cls}_{i:04d}.png")
    return out


def make_shapes(out: str | Path, per_class: int, seed: int = 0, size: int = 96) -> Path:
    """Write ``per_class`` images of each class under ``out``; returns ``out``."""
    return write_images(out, CLASSES, render, per_class, seed, size)


def cli(make, n_classes: int, doc: str, argv: list[str] | None = None) -> int:
    """The command line shared by the dataset generators: OUT --per-class --seed --size."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--per-class", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=96)
    args = p.parse_args(argv)
    make(args.out, args.per_class, args.seed, args.size)
    print(f"wrote {args.per_class * n_classes} images to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(make_shapes, len(CLASSES), __doc__))
