"""Shared test fixtures: small real image datasets, made in tmp_path.

The suite needs no downloaded photos: ``flowers_dir`` is a flower-like dataset the tests draw
themselves (tests/synthetic_flowers.py). Only tests/test_real_photos.py reads the real flower
photos (``REAL_FLOWERS``), and skips, saying how to provide them, where they are absent.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from PIL import Image

from synthetic_flowers import make_flowers

ROOT = Path(__file__).resolve().parents[1]
#: The real flower photos (5 class folders), for the few tests that measure on them: XFER_FLOWERS_DIR,
#: else ../shared/flowers/train beside the checkout. XFER_TEST_NO_SHARED=1 hides them, to run the
#: suite as on a fresh clone.
REAL_FLOWERS = None if os.environ.get("XFER_TEST_NO_SHARED") else Path(
    os.environ.get("XFER_FLOWERS_DIR") or ROOT.parent / "shared" / "flowers" / "train")

# Tests never touch the user's cache or the network for weights.
os.environ.setdefault("XFER_CACHE_DIR", str(ROOT / ".pytest_cache" / "xfer-cache"))
# Not even a HEAD request for VGG-16's weights (the test of that probe unsets this itself).
os.environ["XFER_OFFLINE"] = "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (real weights, browser)")


@pytest.fixture(autouse=True)
def _seeded():
    """Every test's own body starts from the same random state, so that a test that draws (random inputs
    compared within a tolerance, random init) passes or fails the same way on every run and on CI. Module-
    and session-scoped fixtures run before it (xfer.train seeds itself from its config)."""
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def flowers_dir(tmp_path_factory) -> Path:
    """A flower-like dataset: 5 class folders named like the flower photos' (daisy, dandelion, roses,
    sunflowers, tulips), 42 JPEGs each, photo-sized; drawn once per session, the same every run."""
    return make_flowers(tmp_path_factory.mktemp("flowers-like") / "flowers")


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


@pytest.fixture
def no_downloads(monkeypatch):
    """Any attempt to fetch weights from the internet fails the test."""
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError(f"tried to download {args[:1]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture
def color_dataset(tmp_path: Path) -> Path:
    return make_color_dataset(tmp_path / "colors")
