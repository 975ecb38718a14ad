"""load_dataset: a dataset given as a folder, a .zip of class folders, or "flowers"."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from ..errors import DataError
from .archive import extract_zip, keep_images
from .flowers import cache_dir, flowers_dir
from .folders import DatasetReport, Skipped, scan_folder
from .images import NOT_AN_IMAGE


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
        skipped = extract_zip(path, work_dir, keep=keep_images)  # a dataset is images: nothing else is written
        report = scan_folder(work_dir, min_images=min_images)
    except DataError as e:
        if created:  # a refused or empty archive leaves nothing behind in the cache
            shutil.rmtree(work_dir, ignore_errors=True)
        # About the user's archive, not the server's extraction folder.
        raise DataError(str(e).replace(str(work_dir), path.name)) from None
    # A non-image is listed where it would have been in the extracted folder (as a folder's scan lists it);
    # anything else the archive refused, by its name in the archive.
    report.skipped = [Skipped(str(Path(work_dir, m)) if r.startswith(NOT_AN_IMAGE) else f"{path.name}:{m}", r)
                      for m, r in skipped] + report.skipped
    return report
