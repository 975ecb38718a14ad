"""Images and datasets: opening images defensively, safe zip extraction, scanning class folders, splitting.

``transforms`` (preprocessing) and ``pipeline`` (feeding a device) are imported by their full path:
they need torch, and the names here do not.
"""

from .archive import MAX_ARCHIVE_FILES, MAX_EXTRACT_BYTES, extract_zip, is_junk, keep_images
from .flowers import FLOWERS_CLASSES, cache_dir, flowers_dir
from .folders import (
    DatasetReport,
    Skipped,
    check_class_name,
    check_trainable,
    class_name_problem,
    find_class_root,
    lookalike_classes,
    scan_folder,
    split_dataset,
    subsample,
)
from .images import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    ImageSource,
    open_image,
    read_regular_file,
)
from .sources import load_dataset

__all__ = [
    "FLOWERS_CLASSES", "IMAGE_EXTENSIONS", "MAX_ARCHIVE_FILES", "MAX_EXTRACT_BYTES", "MAX_IMAGE_PIXELS",
    "DatasetReport", "ImageSource", "Skipped", "cache_dir", "check_class_name", "check_trainable",
    "class_name_problem", "extract_zip", "find_class_root",
    "flowers_dir", "is_junk", "keep_images", "load_dataset", "lookalike_classes", "open_image", "read_regular_file", "scan_folder",
    "split_dataset", "subsample",
]
