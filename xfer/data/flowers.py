"""The bundled 5-class flower photos: from XFER_FLOWERS_DIR, the cache, or a checked download."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from ..errors import DataError
from .folders import find_class_root

log = logging.getLogger(__name__)

FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
FLOWERS_SHA256 = "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"
FLOWERS_CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")


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


