"""Datasets as folders: scanning class folders into a :class:`DatasetReport`, loading a folder or a zip, splitting."""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import DataError

log = logging.getLogger(__name__)

from .archive import is_junk
from .images import IMAGE_EXTENSIONS, open_image


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class DatasetReport:
    """What a scan found: the usable images, by class, and everything that was not used."""

    root: Path
    classes: list[str]
    items: list[tuple[Path, int]]  # (file, class index), sorted
    skipped: list[Skipped] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)  # groups of byte-identical files
    warnings: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(label for _, label in self.items)
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}

    @property
    def num_images(self) -> int:
        return len(self.items)

    def to_dict(self) -> dict:
        return {
            "root": str(self.root),
            "classes": self.classes,
            "counts": self.counts,
            "num_images": self.num_images,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "duplicates": self.duplicates,
            "warnings": self.warnings,
        }

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [f"{self.num_images} images in {len(self.classes)} classes ({self.root})"]
        width = max((len(c) for c in self.classes), default=0)
        lines += [f"  {name:<{width}}  {n}" for name, n in self.counts.items()]
        if self.skipped:
            lines.append(f"{len(self.skipped)} files skipped:")
            lines += [f"  {s.path}: {s.reason}" for s in self.skipped[:20]]
            if len(self.skipped) > 20:
                lines.append(f"  ... and {len(self.skipped) - 20} more")
        if self.duplicates:
            cross = sum(1 for g in self.duplicates if len({Path(p).parent for p in g}) > 1)
            lines.append(f"{len(self.duplicates)} groups of identical files ({cross} across classes)")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _check_file(path: Path) -> tuple[str | None, str | None]:
    """Decode a file cheaply; return (sha256, None) if usable, else (None, reason)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return None, f"unreadable ({e.strerror or e})"
    if not data:
        return None, "empty file"
    try:
        open_image(data, max_side=64)
    except DataError as e:
        return None, str(e).removeprefix("image: ")
    return hashlib.sha256(data).hexdigest(), None


def _visible_children(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not is_junk(p.name))


def find_class_root(root: Path) -> Path:
    """Descend through single wrapper folders (``data.zip/flowers/<classes>``) to the class folders."""
    for _ in range(4):
        children = _visible_children(root)
        dirs = [p for p in children if p.is_dir()]
        files = [p for p in children if p.is_file()]
        if len(dirs) == 1 and not files and any(p.is_dir() for p in _visible_children(dirs[0])):
            root = dirs[0]
        else:
            break
    return root


def scan_folder(root: str | os.PathLike, min_images: int = 1, workers: int | None = None) -> DatasetReport:
    """Scan a folder of class folders: decode every file, report what is usable."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: give a folder (or .zip) with one sub-folder per class.")
    root = find_class_root(root)
    children = _visible_children(root)
    class_dirs = [p for p in children if p.is_dir()]
    loose = [p for p in children if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not class_dirs:
        if loose:
            raise DataError(
                f"{root} holds images but no class folders: put each class's images in a sub-folder named after the class."
            )
        raise DataError(f"{root} is empty: it needs one sub-folder of images per class.")
    report = DatasetReport(root=root, classes=[], items=[])
    for p in loose:
        report.skipped.append(Skipped(str(p), "not inside a class folder"))

    candidates: list[tuple[Path, str]] = []
    for d in class_dirs:
        for dirpath, dirnames, filenames in os.walk(d, followlinks=False):
            dirnames[:] = sorted(n for n in dirnames if not is_junk(n))
            for n in sorted(filenames):
                p = Path(dirpath) / n
                if is_junk(n):
                    continue
                if p.is_symlink():
                    report.skipped.append(Skipped(str(p), "symbolic link"))
                elif p.suffix.lower() not in IMAGE_EXTENSIONS:
                    report.skipped.append(Skipped(str(p), f"not an image file ({p.suffix or 'no extension'})"))
                else:
                    candidates.append((p, d.name))

    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) * 2)) as pool:
        results = list(pool.map(lambda c: _check_file(c[0]), candidates))

    by_class: dict[str, list[Path]] = defaultdict(list)
    by_hash: dict[str, list[str]] = defaultdict(list)
    for (path, cls), (digest, reason) in zip(candidates, results):
        if reason is not None:
            report.skipped.append(Skipped(str(path), reason))
            continue
        by_class[cls].append(path)
        by_hash[digest].append(str(path))
    for d in class_dirs:
        n = len(by_class.get(d.name, []))
        if n < max(min_images, 1):
            report.warnings.append(
                f"class {d.name!r} has {n} usable image{'s' * (n != 1)} (needs {max(min_images, 1)}): dropped"
            )
            continue
        report.classes.append(d.name)
    for idx, cls in enumerate(report.classes):
        report.items += [(p, idx) for p in by_class[cls]]
    report.duplicates = [sorted(g) for g in by_hash.values() if len(g) > 1]
    cross = [g for g in report.duplicates if len({Path(p).parent for p in g}) > 1]
    if cross:
        report.warnings.append(f"{len(cross)} images appear in more than one class (identical files)")
    for s in report.skipped:
        log.info("skipped %s: %s", s.path, s.reason)
    return report


def check_trainable(report: DatasetReport) -> None:
    """Raise unless the dataset has at least two classes with images."""
    if len(report.classes) < 2:
        have = f"only {report.classes[0]!r}" if report.classes else "none"
        raise DataError(
            f"Training needs at least 2 classes with images, found {have}: add a folder of images per class."
        )


# --- splitting --------------------------------------------------------------------------


def split_dataset(report: DatasetReport, val_fraction: float = 0.2, seed: int = 0
                  ) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Stratified train/validation split, reproducible for a seed.

    Each class gives ``round(n * val_fraction)`` images (at least one) to validation
    and keeps at least one for training. A class with a single image cannot be
    split: it is an error, since dropping it would silently change the label set.
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}.")
    check_trainable(report)
    rng = random.Random(seed)
    by_class: dict[int, list[Path]] = defaultdict(list)
    for path, label in report.items:
        by_class[label].append(path)
    too_small = [report.classes[c] for c, paths in sorted(by_class.items()) if len(paths) < 2]
    if too_small:
        raise DataError(
            f"Class{'es' * (len(too_small) > 1)} {', '.join(map(repr, too_small))} "
            "need at least 2 images to be split into training and validation: add images or remove the class."
        )
    train, val = [], []
    for label in sorted(by_class):
        paths = sorted(by_class[label])
        rng.shuffle(paths)
        n_val = min(max(1, round(len(paths) * val_fraction)), len(paths) - 1)
        val += [(p, label) for p in paths[:n_val]]
        train += [(p, label) for p in paths[n_val:]]
    return train, val


def subsample(items: Iterable[tuple[Path, int]], per_class: int, seed: int = 0) -> list[tuple[Path, int]]:
    """At most ``per_class`` items of each class, chosen reproducibly."""
    rng = random.Random(seed)
    by_class: dict[int, list[Path]] = defaultdict(list)
    for p, label in items:
        by_class[label].append(p)
    out = []
    for label in sorted(by_class):
        paths = sorted(by_class[label])
        rng.shuffle(paths)
        out += [(p, label) for p in paths[:per_class]]
    return out
