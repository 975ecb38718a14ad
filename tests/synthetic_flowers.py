"""Flower-like JPEGs for the tests: five classes named like the flower photos, made on the fly.

Each class is a drawn flower with its own shape and colours (daisy: many thin white petals round a
yellow disc; dandelion: a dense yellow pompom; roses: a red-pink spiral; sunflowers: broad yellow
petals round a large brown disc; tulips: a cup of three pointed petals on a stem), at a random place,
size and angle, over a blotchy green background, with noise and JPEG compression. The images are
photo-sized (a few hundred pixels, several aspect ratios), so that tests can decode, crop, train,
predict and explain on them as on the real photos; a small network learns them in a few epochs.

    python tests/synthetic_flowers.py OUTDIR [PER_CLASS]     # to look at them
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")
#: (width, height): common sizes among the real flower photos, scaled to keep the files small.
SIZES = ((320, 240), (240, 320), (320, 213), (240, 240), (300, 225))


def _blotches(h: int, w: int, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Smooth random field in [0, 1]: a coarse grid of random values, upsampled bicubically."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC), np.float32) / 255


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    dark = rng.uniform([20, 50, 10], [60, 90, 40])  # foliage greens, with some soil brown
    light = rng.uniform([80, 130, 40], [140, 190, 90])
    t = _blotches(h, w, rng, int(rng.integers(4, 9)))[..., None]
    return dark * (1 - t) + light * t


def _polar(h: int, w: int, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = x - cx, y - cy
    return np.hypot(dx, dy), np.arctan2(dy, dx) - angle


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    """Blend ``colour`` (a colour, or an image of colours) into ``img`` where ``mask`` (0..1) says."""
    m = np.clip(mask, 0, 1)[..., None]
    img *= 1 - m
    img += m * colour


def _edge(d: np.ndarray, soft: float = 1.5) -> np.ndarray:
    """Anti-aliased inside test: 1 where the signed distance ``d`` < 0, 0 where it is > 0."""
    return np.clip(0.5 - d / soft, 0, 1)


def _petals(rho, theta, r, n, sharp, inner=0.0):
    """A ring of ``n`` petals of length ``r``: ``sharp`` > 1 narrows them."""
    reach = r * (inner + (1 - inner) * np.abs(np.cos(n * theta / 2)) ** sharp)
    return _edge(rho - reach)


def _daisy(img, rho, theta, r, rng):
    n = int(rng.integers(16, 24))
    white = rng.uniform(215, 250) - rng.uniform(0, 15, 3)
    shade = 0.85 + 0.15 * np.cos(2 * n * theta)[..., None]  # a crease along each petal
    _paint(img, _petals(rho, theta, r, n, 0.6, 0.15), white * shade)
    disc = rng.uniform([220, 170, 0], [255, 210, 40])
    _paint(img, _edge(rho - 0.24 * r), disc * (0.8 + 0.2 * np.cos(rho / 2.0))[..., None])


def _dandelion(img, rho, theta, r, rng):
    n = int(rng.integers(70, 110))
    yellow = rng.uniform([230, 180, 0], [255, 225, 40])
    fluff = _petals(rho, theta, r * rng.uniform(0.8, 1.0), n, 0.3, 0.55)
    depth = (1 - 0.35 * (rho / r).clip(0, 1))[..., None]  # darker at the rim: a pompom
    _paint(img, fluff, yellow * depth * (0.85 + 0.15 * np.cos(n * theta))[..., None])


def _rose(img, rho, theta, r, rng):
    red = rng.uniform([160, 0, 20], [240, 60, 110])
    turns = rng.uniform(3, 5)
    spiral = 0.5 + 0.5 * np.sin(turns * 2 * np.log1p(rho / 4) * np.pi + 2 * theta)
    outline = r * (0.85 + 0.15 * np.cos(5 * theta))  # five outer petals
    _paint(img, _edge(rho - outline), red * (0.55 + 0.45 * spiral)[..., None])


def _sunflower(img, rho, theta, r, rng):
    n = int(rng.integers(18, 28))
    yellow = rng.uniform([235, 170, 0], [255, 210, 30])
    _paint(img, _petals(rho, theta, r, n, 2.5, 0.45), yellow)
    brown = rng.uniform([60, 30, 5], [100, 55, 20])
    seeds = 0.7 + 0.3 * np.cos(rho * 1.3) * np.cos(13 * theta)  # a seed-head texture
    _paint(img, _edge(rho - 0.45 * r), brown * seeds[..., None])


def _tulip(img, rho, theta, r, rng, cx, cy):
    h, w = rho.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    stem = _edge(np.abs(x - cx) - max(2.0, r * 0.06)) * (y > cy) * (y < cy + 2.2 * r)
    _paint(img, stem, np.array([40, 120, 30], np.float32))
    colour = rng.choice(np.array([[220, 30, 40], [240, 120, 20], [200, 60, 160], [140, 40, 170], [245, 200, 40]],
                                 np.float32)) + rng.uniform(-15, 15, 3)
    u, v = (x - cx) / r, (y - cy) / r  # a cup: an upright ellipse whose rim rises to three points
    rim = -0.9 + 0.35 * np.abs(np.sin(np.pi * u / 0.42))
    inside = _edge(((u / 0.65) ** 2 + (v / 0.9) ** 2 - 1) * r) * _edge((rim - v) * r)
    _paint(img, inside, colour * (0.75 + 0.25 * np.cos(u * 4.5))[..., None])  # its petals' folds


def render(cls: str, rng: np.random.Generator) -> Image.Image:
    """One flower-like image of class ``cls``."""
    w, h = SIZES[int(rng.integers(len(SIZES)))]
    img = _background(h, w, rng)
    for _ in range(int(rng.integers(1, 3))):
        r = rng.uniform(0.22, 0.38) * min(w, h)
        cx, cy = rng.uniform(r * 0.6, w - r * 0.6), rng.uniform(r * 0.6, h - r * 0.6)
        angle = rng.uniform(0, 2 * np.pi)
        rho, theta = _polar(h, w, cx, cy, angle)
        if cls == "tulips":
            _tulip(img, rho, theta, r, rng, cx, cy)
        else:
            {"daisy": _daisy, "dandelion": _dandelion, "roses": _rose, "sunflowers": _sunflower}[cls](
                img, rho, theta, r, rng)
    img = img * rng.uniform(0.75, 1.15) + rng.normal(0, 10, img.shape)  # exposure, sensor noise
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))


def make_flowers(root: Path, per_class: int = 42, seed: int = 0) -> Path:
    """``root/<class>/<class>_NNN.jpg`` for the five flower classes; the same files for the same seed."""
    for k, cls in enumerate(CLASSES):
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, k])
        for i in range(per_class):
            render(cls, rng).save(d / f"{cls}_{i:03d}.jpg", quality=int(rng.integers(80, 95)))
    return root


if __name__ == "__main__":
    out = make_flowers(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 42)
    print(f"wrote {len(list(out.rglob('*.jpg')))} images to {out}")
