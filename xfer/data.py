"""Datasets: opening images defensively, safe archive extraction, scanning, splitting.

A dataset is a folder with one sub-folder per class (or a zip of such a folder).
Every file is decoded once when the dataset is scanned; what cannot be used is
skipped and reported, never fatal. The scan's :class:`DatasetReport` is what
training, the advisor and the UI work from.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import random
import shutil
import stat
import tarfile
import tempfile
import urllib.request
import warnings
import zipfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
JUNK_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}

#: Images with more pixels than this are refused as decompression bombs (100 MP by default).
MAX_IMAGE_PIXELS = int(os.environ.get("XFER_MAX_IMAGE_PIXELS", 100_000_000))
#: Archives are refused if they would inflate past this many bytes (2 GiB by default).
MAX_EXTRACT_BYTES = int(os.environ.get("XFER_MAX_EXTRACT_BYTES", 2 * 1024**3))
#: ...or hold more entries than this.
MAX_ARCHIVE_FILES = int(os.environ.get("XFER_MAX_ARCHIVE_FILES", 100_000))
#: A member that inflates more than this ratio (and past 1 MB) is a zip bomb, not an image;
#: so is a whole archive that does (past 16 MB): many small bombs instead of one big one.
MAX_COMPRESSION_RATIO = 100
BOMB_MIN_BYTES, BOMB_MIN_TOTAL_BYTES = 1_000_000, 16_000_000

FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
FLOWERS_SHA256 = "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"
FLOWERS_CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")

ImageSource = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


# --- images -----------------------------------------------------------------------------


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max()) if arr.size else 0.0
        scale = 65535.0 if img.mode.startswith("I;16") or hi > 255 else 255.0
        arr = np.clip(arr / scale * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def _check_pixels(name: str, w: int, h: int) -> None:
    if w * h > MAX_IMAGE_PIXELS:
        raise DataError(
            f"{name}: {w}x{h} pixels is over the {MAX_IMAGE_PIXELS // 1_000_000} MP limit "
            "(a decompression bomb?): resize the image."
        )
    if w < 1 or h < 1:
        raise DataError(f"{name}: the image is empty (0 pixels).")


def _shrink(img: Image.Image, max_side: int | None) -> Image.Image:
    """Box-reduce by an integer factor while the shorter side stays >= ``max_side`` (what JPEG's
    draft mode does while decoding): a 90 MP PNG must not reach the resize as a 1 GB float tensor."""
    factor = min(img.size) // max_side if max_side else 0
    return img.reduce(factor) if factor >= 2 else img


def open_image(source: ImageSource, max_side: int | None = None) -> Image.Image:
    """Open an image from a path, bytes, a PIL image or an array, as upright 8-bit RGB.

    Handles grayscale, CMYK, palette, RGBA, 16-bit, animated (first frame) and EXIF
    orientation. ``max_side`` lets JPEG decoding skip detail that would be thrown away
    (a large photo decodes several times faster) and shrinks other large images right
    after decoding, keeping the shorter side at least ``max_side``. Raises :class:`DataError` with the
    reason when the file is not a usable image, including decompression bombs.
    """
    if isinstance(source, np.ndarray):
        arr = source
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255 if arr.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
        if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4)):
            return _to_rgb(Image.fromarray(arr.squeeze() if arr.ndim == 3 and arr.shape[2] == 1 else arr))
        raise DataError(f"An image array must be HxW or HxWx3/4, got shape {arr.shape}.")
    if isinstance(source, Image.Image):
        # A PIL image may still be lazy (the app's upload widget opens files without decoding them):
        # apply the same pixel limit, and turn a decoding failure into a DataError.
        _check_pixels("image", *source.size)
        try:
            return _shrink(_to_rgb(ImageOps.exif_transpose(source) or source), max_side)
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as e:
            raise DataError(f"image: cannot decode the image ({type(e).__name__}: {e}): "
                            "the file is damaged; export it again.") from None
    name = "image" if isinstance(source, bytes) else str(source)
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            # Pillow warns past its own limit (89 MP); ours is checked below, before any decoding.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                _check_pixels(name, *img.size)
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                if max_side and img.format == "JPEG":
                    img.draft("RGB", (max_side, max_side))
                img.load()
                img = ImageOps.exif_transpose(img) or img
                if img.mode in ("L", "RGB"):  # reduce before converting: the big copy is never made
                    img = _shrink(img, max_side)
                return _shrink(_to_rgb(img), max_side)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{name}: no such file.") from None
    except Image.DecompressionBombError:  # Pillow's hard limit (twice its own): far over ours too
        raise DataError(f"{name}: over the {MAX_IMAGE_PIXELS // 1_000_000} MP limit (a decompression bomb?): "
                        "resize the image.") from None
    except UnidentifiedImageError:
        raise DataError(f"{name}: not an image (or a format Pillow cannot read): "
                        "use a JPEG, PNG, WebP, BMP, GIF or TIFF file.") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as e:
        raise DataError(f"{name}: cannot decode the image ({type(e).__name__}: {e}): "
                        "the file is damaged; export it again.") from None


# --- archives ---------------------------------------------------------------------------


def _is_junk(part: str) -> bool:
    return part.startswith(".") or part in JUNK_NAMES


def _safe_member_path(name: str) -> PurePosixPath | None:
    """The member's relative path, or None if it is absolute or climbs out with ``..``."""
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return PurePosixPath(*parts)


def _undo(dest: Path, fresh: bool, created: list[Path]) -> None:
    """Remove what a failed extraction wrote: all of ``dest`` if it made it, else only its own files."""
    if fresh:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for path in reversed(created):  # files before the folders that hold them
        with contextlib.suppress(OSError):
            path.rmdir() if path.is_dir() else path.unlink()


def extract_zip(archive: str | os.PathLike, dest: str | os.PathLike,
                max_bytes: int = MAX_EXTRACT_BYTES, max_files: int = MAX_ARCHIVE_FILES) -> list[tuple[str, str]]:
    """Extract a zip into ``dest`` safely; return the (member, reason) pairs that were skipped.

    Never writes outside ``dest``: absolute paths, ``..`` entries and symlinks are
    skipped. Junk (``__MACOSX/``, dot files) is ignored. An archive that would inflate
    past ``max_bytes`` (counted while writing, not trusted from its headers), or that
    holds a member (or is as a whole) compressed suspiciously well, is refused from its
    headers before anything is written. Members whose names the file system refuses (too
    long) are skipped.
    """
    dest = Path(dest)
    skipped: list[tuple[str, str]] = []
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise DataError(f"{Path(archive).name} is not a zip archive: upload a .zip of one folder per class.") from None
    except OSError as e:
        raise DataError(f"Cannot read {Path(archive).name}: {e.strerror or e}.") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > max_files:
            raise DataError(f"The archive holds {len(infos)} entries, over the limit of {max_files}.")
        # Refuse from the headers before writing anything; the byte count below still guards against lies.
        for info in infos:
            if info.file_size > BOMB_MIN_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
                raise DataError(
                    f"{info.filename} inflates {info.file_size // max(info.compress_size, 1)}x "
                    "(a zip bomb?): the archive was refused."
                )
        total = sum(i.file_size for i in infos if not i.is_dir())
        packed = max(sum(i.compress_size for i in infos if not i.is_dir()), 1)
        if total > max_bytes:
            raise DataError(f"The archive inflates past the {max_bytes // 2**20} MB limit: upload less data.")
        if total > BOMB_MIN_TOTAL_BYTES and total > MAX_COMPRESSION_RATIO * packed:
            raise DataError(f"The archive inflates {total // packed}x in total (a zip bomb?): it was refused.")
        # On failure only what this call created is removed: a dest that existed keeps its other files.
        fresh = not dest.exists()
        dest.mkdir(parents=True, exist_ok=True)
        written = 0
        created: list[Path] = []
        try:
            for info in infos:
                if info.is_dir():
                    continue
                rel = _safe_member_path(info.filename)
                if rel is None:
                    skipped.append((info.filename, "unsafe path (absolute or ..), skipped"))
                    continue
                if any(_is_junk(p) for p in rel.parts):
                    continue
                if stat.S_ISLNK(info.external_attr >> 16):
                    skipped.append((info.filename, "symbolic link, skipped"))
                    continue
                if written + info.file_size > max_bytes:
                    raise DataError(f"The archive inflates past the {max_bytes // 2**20} MB limit: upload less data.")
                target = dest.joinpath(*rel.parts)
                if not target.resolve().is_relative_to(dest.resolve()):
                    skipped.append((info.filename, "unsafe path, skipped"))
                    continue
                try:
                    for d in reversed(target.relative_to(dest).parents[:-1]):
                        if not (dest / d).exists():
                            (dest / d).mkdir()
                            created.append(dest / d)
                    out = open(target, "xb")  # never overwrites: a name is written once
                    created.append(target)
                except FileExistsError:
                    skipped.append((info.filename, "a file of this name is already there, skipped"))
                    continue
                except OSError as e:
                    if e.errno not in (errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ):
                        raise
                    skipped.append((info.filename, "file name not allowed on this system, skipped"))
                    continue
                with zf.open(info) as src, out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > max_bytes:
                            raise DataError(
                                f"The archive inflates past the {max_bytes // 2**20} MB limit: upload less data."
                            )
                        out.write(chunk)
        except DataError:
            _undo(dest, fresh, created)
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as e:
            _undo(dest, fresh, created)
            raise DataError(f"The archive is damaged or unsupported ({type(e).__name__}: {e}): re-create it.") from None
    for name, reason in skipped:
        log.warning("%s: %s", name, reason)
    return skipped


# --- scanning ---------------------------------------------------------------------------


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
    return sorted(p for p in folder.iterdir() if not _is_junk(p.name))


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
            dirnames[:] = sorted(n for n in dirnames if not _is_junk(n))
            for n in sorted(filenames):
                p = Path(dirpath) / n
                if _is_junk(n):
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


# --- sources: folders, zips, the bundled flowers ----------------------------------------


def cache_dir() -> Path:
    """Where xfer keeps downloads and extracted uploads (``XFER_CACHE_DIR``, else ~/.cache/xfer)."""
    return Path(os.environ.get("XFER_CACHE_DIR") or Path.home() / ".cache" / "xfer")


def flowers_dir(download: bool = True) -> Path:
    """The bundled 5-class flower photos.

    From ``XFER_FLOWERS_DIR`` if set, else the local cache, else a download of the
    public archive (its SHA-256 is checked before anything is extracted).
    """
    env = os.environ.get("XFER_FLOWERS_DIR")
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise DataError(f"XFER_FLOWERS_DIR={env} is not a folder: point it at the flower class folders.")
        return p
    cached = cache_dir() / "flower_photos"
    if cached.is_dir():
        return cached
    if not download:
        raise DataError(f"The flower photos are not in {cached}: set XFER_FLOWERS_DIR or allow the download.")
    return _download_flowers(cached)


def _download_flowers(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".flowers-", dir=target.parent))
    try:
        archive = tmp / "flower_photos.tgz"
        log.info("downloading %s", FLOWERS_URL)
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(FLOWERS_URL, timeout=30) as r, open(archive, "wb") as out:
                while chunk := r.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except OSError as e:
            raise DataError(
                f"Could not download the flower photos ({e}): download {FLOWERS_URL}, extract it, "
                f"and set XFER_FLOWERS_DIR to its flower_photos folder (or extract it to {target})."
            ) from None
        if digest.hexdigest() != FLOWERS_SHA256:
            raise DataError(
                f"The downloaded flower archive has the wrong SHA-256 ({digest.hexdigest()[:12]}...): try again later."
            )
        with tarfile.open(archive) as tar:
            tar.extractall(tmp / "x", filter="data")
        src = find_class_root(tmp / "x")
        os.replace(src, target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_dataset(source: str | os.PathLike, work_dir: str | os.PathLike | None = None,
                 min_images: int = 1) -> DatasetReport:
    """Scan a dataset given as a folder, a ``.zip`` or ``"flowers"``.

    A zip is extracted (safely) into ``work_dir`` (a new temporary folder under the
    cache if not given); skipped archive members are added to the report.
    """
    if str(source) == "flowers":
        return scan_folder(flowers_dir(), min_images=min_images)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist: give a folder, a .zip, or 'flowers'.")
    if path.is_dir():
        return scan_folder(path, min_images=min_images)
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path.name} is neither a folder nor a zip archive: give a .zip of one folder per class.")
    created = work_dir is None
    if work_dir is None:
        base = cache_dir() / "uploads"
        base.mkdir(parents=True, exist_ok=True)
        work_dir = tempfile.mkdtemp(prefix="data-", dir=base)
    try:
        skipped = extract_zip(path, work_dir)
        report = scan_folder(work_dir, min_images=min_images)
    except DataError as e:
        if created:  # a refused or empty archive leaves nothing behind in the cache
            shutil.rmtree(work_dir, ignore_errors=True)
        # About the user's archive, not the server's extraction folder.
        raise DataError(str(e).replace(str(work_dir), path.name)) from None
    report.skipped = [Skipped(f"{path.name}:{m}", r) for m, r in skipped] + report.skipped
    return report


def build_from_files(files_by_class: dict[str, Sequence[str | os.PathLike]],
                     dest: str | os.PathLike) -> DatasetReport:
    """Make a dataset folder from files given per class (uploads), then scan it.

    Class names become folder names, so they must be usable as such.
    """
    dest = Path(dest)
    for name, files in files_by_class.items():
        clean = name.strip()
        if not clean or clean in (".", "..") or "/" in clean or "\\" in clean or _is_junk(clean):
            raise DataError(f"Class name {name!r} cannot be a folder name: use letters, digits, spaces.")
        folder = dest / clean
        folder.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(files):
            f = Path(f)
            shutil.copyfile(f, folder / f"{i:05d}-{f.name}")
    return scan_folder(dest)


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
