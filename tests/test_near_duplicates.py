"""Near-duplicate photos (resized, recompressed, recoloured copies) are found and kept on one side of every split."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from xfer.data import scan_folder
from xfer.data.folders import copy_groups, holdout_split, split_dataset


def _scene(seed: int, size: int = 160) -> Image.Image:
    """A random 'photo': blurred coloured ellipses on a gradient (distinct per seed, smooth like a photo)."""
    rng = random.Random(seed)
    img = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y, r = rng.randrange(size), rng.randrange(size), rng.randrange(10, size // 2)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    return img.filter(ImageFilter.GaussianBlur(2))


def _dataset(root: Path, per_class: int = 12) -> dict[str, Path]:
    """Two classes of distinct scenes, plus copies of one scene: resized+recompressed in its own class,
    recoloured (darker) in the other class."""
    files = {}
    for c, cls in enumerate(("a", "b")):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            p = root / cls / f"{i:02d}.png"
            _scene(100 * c + i).save(p)
            files[f"{cls}{i}"] = p
    original = _scene(3)
    original.resize((97, 97)).save(root / "a" / "copy_small.jpg", quality=40)
    original.point(lambda v: int(v * 0.8)).save(root / "b" / "copy_dark.jpg", quality=85)
    files["original"] = files["a3"]
    return files


def test_resized_recompressed_and_recoloured_copies_are_grouped_distinct_scenes_are_not(tmp_path):
    files = _dataset(tmp_path / "d")
    report = scan_folder(tmp_path / "d")
    assert report.duplicates == []  # none byte-identical
    assert report.near_duplicates == [sorted([str(files["original"]), str(tmp_path / "d" / "a" / "copy_small.jpg"),
                                              str(tmp_path / "d" / "b" / "copy_dark.jpg")])]
    assert any("near-duplicate" in w and "more than one class" in w for w in report.warnings)
    assert "1 groups of near-duplicate images (1 across classes)" in report.summary()
    assert report.to_dict()["near_duplicates"] == report.near_duplicates


def test_every_split_keeps_copies_on_one_side(tmp_path):
    _dataset(tmp_path / "d")
    report = scan_folder(tmp_path / "d")
    group = copy_groups(report)
    copies = {p for p, g in group.items()}
    assert len(copies) == 3
    for seed in range(8):
        rest, test = holdout_split(report, 0.3, seed=seed)
        train, val = split_dataset(rest, 0.3, seed=seed)
        sides = [{p for p, _ in part} & copies for part in (test, train, val)]
        assert sum(bool(s) for s in sides) == 1, f"seed {seed}: copies on several sides {sides}"
        assert not {p for p, _ in test} & {p for p, _ in train + val}
        assert len(test) + len(train) + len(val) == report.num_images


def test_split_without_copies_is_unchanged_per_class_share(tmp_path):
    # Fixed seeds (not hash(), which is salted per process): their scenes are 41+ bits apart.
    for c, cls in enumerate(("x", "y")):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i in range(10):
            _scene(1000 + 100 * c + i).save(tmp_path / "d" / cls / f"{i}.png")
    report = scan_folder(tmp_path / "d")
    assert report.near_duplicates == []
    train, val = split_dataset(report, 0.2, seed=0)
    assert [sum(1 for _, lab in val if lab == c) for c in (0, 1)] == [2, 2]
    assert len(train) == 16
