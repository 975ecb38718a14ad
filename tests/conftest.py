"""Shared test fixtures: small real image datasets, made in tmp_path or read from ../shared."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_FLOWERS = Path(os.environ.get("XFER_FLOWERS_DIR") or ROOT.parent / "shared" / "flowers" / "train")

# Tests never touch the user's cache or the network for weights.
os.environ.setdefault("XFER_CACHE_DIR", str(ROOT / ".pytest_cache" / "xfer-cache"))
# Not even a HEAD request for VGG-16's weights (the test of that probe unsets this itself).
os.environ["XFER_OFFLINE"] = "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (real weights, browser)")


@pytest.fixture(scope="session")
def flowers_dir() -> Path:
    """The shared flower photos (5 class folders); skipped if this checkout has none beside it."""
    if not SHARED_FLOWERS.is_dir():
        pytest.skip(f"no flower photos at {SHARED_FLOWERS}")
    return SHARED_FLOWERS


def make_color_dataset(root: Path, classes: dict[str, tuple[int, int, int]] | None = None, per_class: int = 8,
                       size: int = 40, seed: int = 0, fmt: str = "png") -> Path:
    """Real image files whose class is their dominant colour (learnable in a few steps), with noise."""
    classes = classes or {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    rng = random.Random(seed)
    for name, rgb in classes.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = Image.new("RGB", (size + rng.randint(0, 8), size), rgb)
            px = img.load()
            for _ in range(size * size // 4):
                x, y = rng.randrange(img.width), rng.randrange(img.height)
                px[x, y] = tuple(min(255, max(0, c + rng.randint(-60, 60))) for c in rgb)
            img.save(d / f"{name}_{i:03d}.{fmt}")
    return root


def make_flower_subset(root: Path, source: Path, per_class: int = 6, size: int = 64,
                       classes: tuple[str, ...] = ("daisy", "roses", "tulips"), offset: int = 0) -> Path:
    """A small copy of real flower photos, downscaled (keeps tests fast); never committed."""
    for cls in classes:
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        for p in sorted((source / cls).iterdir())[offset : offset + per_class]:
            with Image.open(p) as im:
                im.convert("RGB").resize((size, size)).save(d / p.name, quality=90)
    return root


@pytest.fixture
def color_dataset(tmp_path: Path) -> Path:
    return make_color_dataset(tmp_path / "colors")


@pytest.fixture
def flower_subset(tmp_path: Path, flowers_dir: Path) -> Path:
    return make_flower_subset(tmp_path / "flowers", flowers_dir)
