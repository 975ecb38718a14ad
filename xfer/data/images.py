"""Opening images defensively: any format and colour mode to RGB, upright, with a pixel limit checked before decoding."""

from __future__ import annotations

import io
import logging
import os
import stat
import warnings
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
NOT_AN_IMAGE = "not an image file"


def not_an_image(suffix: str) -> str | None:
    """None for an image file's suffix, else the reason a file with this one is skipped."""
    return None if suffix.lower() in IMAGE_EXTENSIONS else f"{NOT_AN_IMAGE} ({suffix or 'no extension'})"


JUNK_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}

#: Images with more pixels than this are refused as decompression bombs (100 MP by default).
MAX_IMAGE_PIXELS = int(os.environ.get("XFER_MAX_IMAGE_PIXELS", 100_000_000))

ImageSource = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


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


def open_regular_file(path: str | os.PathLike) -> io.BufferedReader:
    """Open ``path`` for reading in binary mode, only if it is a regular file (symlinks to one included).

    A FIFO, socket, device or folder raises :class:`DataError` instead: reading a FIFO
    with no writer blocks forever, and a device may never end. The check is on the
    opened descriptor (non-blocking open, then fstat), so the file cannot be swapped
    for a pipe between the check and the read.
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise DataError(f"{name}: no such file.") from None
    except IsADirectoryError:
        raise DataError(f"{name}: is a folder, not an image file.") from None
    except OSError as e:
        raise DataError(f"{name}: cannot be opened ({e.strerror or e}).") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a folder" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                    else "not a regular file")
            raise DataError(f"{name}: {kind}, not an image file: only regular files are read.")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: str | os.PathLike) -> bytes:
    """The bytes of ``path`` if it is a regular file; :class:`DataError` otherwise (see :func:`open_regular_file`)."""
    with open_regular_file(path) as f:
        try:
            return f.read()
        except OSError as e:
            raise DataError(f"{os.fspath(path)}: unreadable ({e.strerror or e}).") from None


def _from_array(arr: np.ndarray) -> Image.Image:
    if arr.dtype != np.uint8:
        arr = np.clip(arr * (255 if arr.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4)):
        return _to_rgb(Image.fromarray(arr.squeeze() if arr.ndim == 3 and arr.shape[2] == 1 else arr))
    raise DataError(f"An image array must be HxW or HxWx3/4, got shape {arr.shape}.")


def _from_pil(source: Image.Image, max_side: int | None) -> Image.Image:
    # A PIL image may still be lazy (the app's upload widget opens files without decoding them):
    # apply the same pixel limit, and turn a decoding failure into a DataError.
    _check_pixels("image", *source.size)
    try:
        return _shrink(_to_rgb(ImageOps.exif_transpose(source) or source), max_side)
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as e:
        raise DataError(f"image: cannot decode the image ({type(e).__name__}: {e}): "
                        "the file is damaged; export it again.") from None


def open_image(source: ImageSource, max_side: int | None = None) -> Image.Image:
    """Open an image from a path, bytes, a PIL image or an array, as upright 8-bit RGB.

    Handles grayscale, CMYK, palette, RGBA, 16-bit, animated (first frame) and EXIF
    orientation. ``max_side`` lets JPEG decoding skip detail that would be thrown away
    (a large photo decodes several times faster) and shrinks other large images right
    after decoding, keeping the shorter side at least ``max_side``. Raises :class:`DataError` with the
    reason when the file is not a usable image, including decompression bombs.
    """
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, Image.Image):
        return _from_pil(source, max_side)
    name = "image" if isinstance(source, bytes) else str(source)
    # A path is opened here, as a regular file only: Pillow would block forever on a FIFO.
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    if isinstance(source, (str, os.PathLike)):
        fp = open_regular_file(source)
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
    finally:
        if fp is not source and not isinstance(fp, io.BytesIO):  # Pillow closes only files it opened itself
            fp.close()


