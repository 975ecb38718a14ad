"""Datasets as folders: scanning class folders into a :class:`DatasetReport`, loading a folder or a zip, splitting."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
import stat
import unicodedata
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from ..errors import DataError
from .archive import is_junk
from .images import IMAGE_EXTENSIONS, not_an_image, open_image, read_regular_file

log = logging.getLogger(__name__)


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
    # Groups of files that look the same but are not byte-identical (resized or recompressed copies).
    near_duplicates: list[list[str]] = field(default_factory=list)
    fingerprints: dict[Path, int] = field(default_factory=dict, repr=False)  # file -> 64-bit difference hash

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
            "near_duplicates": self.near_duplicates,
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
        if self.near_duplicates:
            cross = sum(1 for g in self.near_duplicates if len({Path(p).parent for p in g}) > 1)
            lines.append(f"{len(self.near_duplicates)} groups of near-duplicate images ({cross} across classes)")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _check_file(path: Path) -> tuple[str | None, int, str | None]:
    """Decode a file cheaply; return (sha256, difference hash, None) if usable, else (None, 0, reason)."""
    try:
        data = read_regular_file(path)  # never blocks on a FIFO swapped in after the walk
    except DataError as e:
        return None, 0, str(e).removeprefix(f"{path}: ")
    if not data:
        return None, 0, "empty file"
    try:
        small = open_image(data, max_side=64)
    except DataError as e:
        return None, 0, str(e).removeprefix("image: ")
    return hashlib.sha256(data).hexdigest(), difference_hash(small), None


#: Two images whose 256-bit difference hashes differ in at most this many bits count as near-duplicates.
#: On the flower photos, resized, recompressed or slightly shifted copies differ in 0-2 bits and distinct
#: photos of similar composition (a bright flower centred on black) in 53 or more; 64-bit hashes could not
#: tell those apart (3-6 bits for distinct photos).
NEAR_DUPLICATE_BITS = 16
HASH_SIDE = 16


def difference_hash(img: Image.Image) -> int:
    """A 256-bit perceptual hash (dHash): is each pixel of a 17x16 grayscale thumbnail brighter than its right
    neighbour. Robust to resizing and recompression; compared by Hamming distance."""
    px = np.asarray(img.convert("L").resize((HASH_SIDE + 1, HASH_SIDE), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (px[:, 1:] > px[:, :-1]).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def near_duplicate_groups(hashes: dict[Path, int], max_bits: int = NEAR_DUPLICATE_BITS) -> list[list[Path]]:
    """Groups (of two or more) of files whose hashes are within ``max_bits`` of each other, transitively.

    Pigeonhole: cut the hash bits into ``max_bits + 1`` bands; two hashes that close agree exactly on at
    least one band, so only files sharing a band value are compared (near-linear, not quadratic).
    """
    paths = sorted(hashes)
    parent = list(range(len(paths)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    bands = max_bits + 1
    edges = [round(HASH_SIDE * HASH_SIDE * k / bands) for k in range(bands + 1)]
    for lo, hi in zip(edges, edges[1:]):
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, p in enumerate(paths):
            buckets[(hashes[p] >> lo) & ((1 << (hi - lo)) - 1)].append(i)
        for members in buckets.values():
            for x, i in enumerate(members):
                for j in members[x + 1:]:
                    if root(i) != root(j) and (hashes[paths[i]] ^ hashes[paths[j]]).bit_count() <= max_bits:
                        parent[root(j)] = root(i)
    groups: dict[int, list[Path]] = defaultdict(list)
    for i, p in enumerate(paths):
        groups[root(i)].append(p)
    return [g for g in groups.values() if len(g) > 1]


def _visible_children(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not is_junk(p.name))


def _is_real_dir(p: Path) -> bool:
    """A folder that is not a symbolic link: links are never followed, so a class cannot reach outside."""
    return p.is_dir() and not p.is_symlink()


def find_class_root(root: Path) -> Path:
    """Descend through single wrapper folders (``data.zip/flowers/<classes>``) to the class folders."""
    for _ in range(4):
        children = _visible_children(root)
        dirs = [p for p in children if _is_real_dir(p)]
        files = [p for p in children if p.is_file()]
        if len(dirs) == 1 and not files and any(_is_real_dir(p) for p in _visible_children(dirs[0])):
            root = dirs[0]
        else:
            break
    return root


#: The longest class name, in UTF-8 bytes: a class name is a folder name, and file systems stop there.
MAX_CLASS_NAME = 255


def class_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a class (a folder of a dataset), or None if it can.

    The one rule for class names: for folders found by a scan, names typed in the app, the
    classes :func:`xfer.train` is given and those a saved ``config.json`` lists. A class name is a
    single visible folder name (not a dot file or ``__MACOSX``-style junk) of at most
    ``MAX_CLASS_NAME`` bytes. (Names that differ only in case or Unicode form are refused as a
    set: :func:`lookalike_classes`.)
    """
    if not name.strip():
        return "it is empty"
    if "/" in name or "\\" in name or name in (".", ".."):
        return "it is not a single folder name"
    if is_junk(name):
        return "folders named like that (dot files, __MACOSX, ...) are ignored"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_CLASS_NAME:
        return f"it is longer than a folder name may be ({MAX_CLASS_NAME} bytes)"
    return None


def check_class_name(name: str) -> str:
    """``name`` without surrounding spaces, or a :class:`DataError` saying why it cannot name a class."""
    name = (name or "").strip()
    problem = class_name_problem(name)
    if problem is not None:
        raise DataError(f"Class name {name!r} cannot be used ({problem}): use letters, digits and spaces.")
    return name


def _class_folders(root: Path) -> tuple[Path, list[Path], list[Path], list[Path]]:
    """(the folder holding the classes, its class folders, the links and the images lying beside them)."""
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: give a folder (or .zip) with one sub-folder per class.")
    root = find_class_root(root)
    children = _visible_children(root)
    class_dirs = [p for p in children if _is_real_dir(p)]
    linked = [p for p in children if p.is_symlink()]
    loose = [p for p in children if p.is_file() and not p.is_symlink() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not class_dirs:
        if loose:
            raise DataError(
                f"{root} holds images but no class folders: put each class's images in a sub-folder named after the class."
            )
        raise DataError(f"{root} is empty: it needs one sub-folder of images per class.")
    return root, class_dirs, linked, loose


def _file_problem(p: Path) -> str | None:
    """Why the file ``p`` (in a class folder) is not a candidate image, or None."""
    try:
        mode = p.lstat().st_mode
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if not stat.S_ISREG(mode):  # a FIFO would block the scan forever; a device may never end
        return "not a regular file (a pipe, socket or device)"
    return not_an_image(p.suffix)


def _image_files(class_dirs: list[Path], skipped: list[Skipped]) -> list[tuple[Path, str]]:
    """(file, class name) for every file that may be an image; the others are added to ``skipped``."""
    candidates: list[tuple[Path, str]] = []
    for d in class_dirs:
        for dirpath, dirnames, filenames in os.walk(d, followlinks=False):
            for n in sorted(dirnames):
                if not is_junk(n) and (Path(dirpath) / n).is_symlink():
                    skipped.append(Skipped(str(Path(dirpath) / n), "symbolic link (links are never followed)"))
            dirnames[:] = sorted(n for n in dirnames if not is_junk(n) and not (Path(dirpath) / n).is_symlink())
            for n in sorted(filenames):
                if is_junk(n):
                    continue
                p = Path(dirpath) / n
                problem = _file_problem(p)
                if problem is None:
                    candidates.append((p, d.name))
                else:
                    skipped.append(Skipped(str(p), problem))
    return candidates


def _report_duplicates(report: DatasetReport, by_hash: dict[str, list[str]]) -> None:
    """Fill in the groups of identical and of near-duplicate files among the kept images, with warnings."""
    report.duplicates = [sorted(g) for g in by_hash.values() if len(g) > 1]
    cross = [g for g in report.duplicates if len({Path(p).parent for p in g}) > 1]
    if cross:
        report.warnings.append(f"{len(cross)} images appear in more than one class (identical files)")
    kept = {p for p, _ in report.items}
    identical = {p for g in report.duplicates for p in g}
    report.near_duplicates = [sorted(map(str, g)) for g in near_duplicate_groups(
        {p: f for p, f in report.fingerprints.items() if p in kept}) if not {str(p) for p in g} <= identical]
    near_cross = [g for g in report.near_duplicates if len({Path(p).parent for p in g}) > 1]
    if near_cross:
        report.warnings.append(f"{len(near_cross)} near-duplicate images appear in more than one class")


def scan_folder(root: str | os.PathLike, min_images: int = 1, workers: int | None = None) -> DatasetReport:
    """Scan a folder of class folders: decode every file, report what is usable."""
    root, class_dirs, linked, loose = _class_folders(Path(root))
    report = DatasetReport(root=root, classes=[], items=[])
    for p in loose:
        report.skipped.append(Skipped(str(p), "not inside a class folder"))
    for p in linked:
        report.skipped.append(Skipped(str(p), "symbolic link (links are never followed)"))
    candidates = _image_files(class_dirs, report.skipped)
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) * 2)) as pool:
        results = list(pool.map(lambda c: _check_file(c[0]), candidates))

    by_class: dict[str, list[Path]] = defaultdict(list)
    by_hash: dict[str, list[str]] = defaultdict(list)
    for (path, cls), (digest, fingerprint, reason) in zip(candidates, results):
        if reason is not None:
            report.skipped.append(Skipped(str(path), reason))
            continue
        by_class[cls].append(path)
        by_hash[digest].append(str(path))
        report.fingerprints[path] = fingerprint
    for d in class_dirs:
        n = len(by_class.get(d.name, []))
        problem = class_name_problem(d.name)
        if problem is not None:
            report.warnings.append(f"class folder {d.name!r} cannot name a class ({problem}): dropped")
        elif n < max(min_images, 1):
            report.warnings.append(
                f"class {d.name!r} has {n} usable image{'s' * (n != 1)} (needs {max(min_images, 1)}): dropped"
            )
        else:
            report.classes.append(d.name)
    for idx, cls in enumerate(report.classes):
        report.items += [(p, idx) for p in by_class[cls]]
    for group in lookalike_classes(report.classes):
        report.warnings.append(f"classes {_lookalike_text(group)}: rename one of the folders "
                               "(training refuses classes named alike)")
    _report_duplicates(report, by_hash)
    for s in report.skipped:
        log.info("skipped %s: %s", s.path, s.reason)
    return report


def lookalike_classes(classes: Iterable[str]) -> list[list[str]]:
    """Groups of class names that are equal after Unicode NFC normalisation and case folding.

    ``Cat`` and ``cat``, or ``café`` written precomposed (NFC) and decomposed (NFD, as macOS
    file names often are), are separate folders but read as one name: a model trained on both
    would show two classes with the same label.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for name in classes:
        groups[unicodedata.normalize("NFC", name).casefold()].append(name)
    return [g for g in groups.values() if len(g) > 1]


def _lookalike_text(group: list[str]) -> str:
    if len({unicodedata.normalize("NFC", c) for c in group}) == 1:
        # repr would show the same letters twice; ascii() shows how they differ
        return f"{' and '.join(map(ascii, group))} are the same name in two Unicode forms (NFC and NFD)"
    how = "letter case" if len({c.casefold() for c in group}) == 1 else "letter case and Unicode form"
    return f"{' and '.join(map(repr, group))} differ only in {how}"


def check_trainable(report: DatasetReport) -> None:
    """Raise unless the dataset has at least two classes with images, no two of them named alike."""
    if len(report.classes) < 2:
        have = f"only {report.classes[0]!r}" if report.classes else "none"
        raise DataError(
            f"Training needs at least 2 classes with images, found {have}: add a folder of images per class."
        )
    same = lookalike_classes(report.classes)
    if same:
        raise DataError(f"Classes {_lookalike_text(same[0])}: rename one of the folders (or merge them), "
                        "then train again.")


# --- splitting --------------------------------------------------------------------------


def copy_groups(report: DatasetReport) -> dict[Path, int]:
    """Each file that has a copy in the dataset (identical or near-duplicate) -> the id of its group of copies.

    Overlapping groups are merged, so a file and all its copies share one id.
    """
    group: dict[Path, int] = {}
    for gid, members in enumerate(report.duplicates + report.near_duplicates):
        paths = [Path(p) for p in members]
        ids = {group[p] for p in paths if p in group}
        for p in list(group):
            if group[p] in ids:
                group[p] = gid
        for p in paths:
            group[p] = gid
    return group


def split_dataset(report: DatasetReport, val_fraction: float = 0.2, seed: int = 0
                  ) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Stratified train/validation split, reproducible for a seed; copies of an image stay on one side.

    Each class gives about ``round(n * val_fraction)`` images (at least one) to validation and keeps at
    least one for training. Identical and near-duplicate files (:func:`copy_groups`) move as one unit,
    also across classes, so no image is validated on a copy of itself that was trained on. A class with
    a single image cannot be split: it is an error, since dropping it would silently change the label set.
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
    group = copy_groups(report)
    side: dict[int, bool] = {}  # group id -> in validation; decided by the first class that holds the group
    train, val = [], []
    for label in sorted(by_class):
        units: dict[object, list[Path]] = defaultdict(list)
        for p in sorted(by_class[label]):
            units[group.get(p, p)].append(p)
        keys = list(units)
        rng.shuffle(keys)
        # Groups already placed by another class go where they are; the rest fill validation up to its share.
        keys.sort(key=lambda k: k not in side)
        n = len(by_class[label])
        n_val = min(max(1, round(n * val_fraction)), n - 1)
        taken = 0
        for k in keys:
            if k in side:
                to_val = side[k]
            else:
                to_val = taken < n_val and taken + len(units[k]) <= n - 1  # at least one stays for training
                if isinstance(k, int):
                    side[k] = to_val
            taken += len(units[k]) * to_val
            (val if to_val else train).extend((p, label) for p in units[k])
    return train, val


def holdout_split(report: DatasetReport, test_fraction: float = 0.2, seed: int = 0
                  ) -> tuple[DatasetReport, list[tuple[Path, int]]]:
    """Set a stratified test split aside (copies kept on one side): the report of what remains, and the test items.

    Split the remaining report again (:func:`split_dataset`) for training and validation; the test items are
    for reporting only, never for choosing a recipe or an epoch.
    """
    rest, test = split_dataset(report, test_fraction, seed)
    kept = {p for p, _ in rest}
    remaining = dataclasses.replace(
        report, items=rest,
        duplicates=[g for g in report.duplicates if any(Path(p) in kept for p in g)],
        near_duplicates=[g for g in report.near_duplicates if any(Path(p) in kept for p in g)],
        fingerprints={p: f for p, f in report.fingerprints.items() if p in kept})
    return remaining, test


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
