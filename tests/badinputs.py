"""A generator of bad and hostile inputs (images, zips, folders), each with what xfer must make of it.

Used by ``test_hostile_cli.py`` (``python -m xfer`` in subprocesses) and ``test_hostile_app.py``
(the real app through ``gradio_client``). Every input is a real file written on the fly: nothing
is committed, nothing is downloaded.

Images are "halves": the top half one colour, the bottom half another. A model trained on
``redtop`` (red above blue) vs ``bluetop`` (blue above red) must see an image the right way up
to classify it, which is what makes the EXIF-rotation case testable: its pixels are stored
upside down (or sideways) with an EXIF orientation tag that says how to show them.

Each case carries an :class:`Expect`: either a correct result (``ok``; for images with their
colours intact also the class a halves model must predict) or a one-line error containing
``error`` (a regular expression, matched case-insensitively).
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

RED = (220, 30, 30)
BLUE = (30, 40, 220)
HALVES = {"redtop": (RED, BLUE), "bluetop": (BLUE, RED)}  # class -> (top colour, bottom colour)

#: Well past any limit, but small on disk.
BOMB_SIDE = 20_000  # a valid 20000x20000 grayscale PNG (400 MP): about 400 KB
NEAR_LIMIT_SIDE = 9_500  # 90 MP: over Pillow's warning threshold (89 MP), under xfer's limit (100 MP): accepted
HEADER_BOMB_SIDE = 30_000  # a PNG whose header declares 30000x30000 (900 MP); the pixel data is cut short
LARGE_PHOTO = (6000, 4000)  # a legitimate 24 MP JPEG
ZIP_BOMB_BYTES = 1 << 30  # one member of 1 GiB of zeros: about 1 MB compressed
SPREAD_BOMB_MEMBERS = 300  # ...or many members of 1,000,000 zeros each, every one under the per-member limit


ZIP_NAMES = ("wrapper_folder", "macos_junk", "path_traversal", "absolute_paths", "symlinks", "zip_bomb",
             "spread_zip_bomb", "one_class", "not_a_zip", "non_ascii_classes", "mixed_junk", "long_name")
FOLDER_NAMES = ("empty_folder", "no_class_folders", "empty_class", "single_image_class")


@dataclass(frozen=True)
class Expect:
    """What xfer must do with an input."""

    ok: bool
    error: str | None = None  # regex the one-line error must match (when not ok)
    label: str | None = None  # images: the class a halves model must predict (None: any valid answer)
    classes: tuple[str, ...] | None = None  # datasets: the classes found
    skipped: tuple[str, ...] = ()  # datasets: file names that must be reported as skipped
    train_error: str | None = None  # datasets that scan fine but cannot be trained on
    big: bool = False  # worth a peak-memory check


@dataclass
class BadInput:
    name: str
    path: Path
    expect: Expect
    note: str = ""

    def __repr__(self) -> str:
        return f"BadInput({self.name})"


# --- images ---------------------------------------------------------------------------------------


def halves(top: tuple[int, int, int], bottom: tuple[int, int, int], size: tuple[int, int] = (40, 40),
           seed: int = 0, noise: int = 40) -> Image.Image:
    """An RGB image, ``top`` colour above ``bottom``, with pixel noise (so no two are identical)."""
    w, h = size
    rng = np.random.default_rng(seed)
    arr = np.empty((h, w, 3), np.int16)
    arr[: h // 2] = top
    arr[h // 2:] = bottom
    arr += rng.integers(-noise, noise + 1, size=arr.shape, dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def make_halves_dataset(root: Path, per_class: int = 12, size: tuple[int, int] = (40, 40), seed: int = 0,
                        classes: dict[str, tuple] | None = None) -> Path:
    """``root/redtop/*.png`` and ``root/bluetop/*.png`` (or ``classes``: name -> (top, bottom) colours)."""
    for k, (name, (top, bottom)) in enumerate((classes or HALVES).items()):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            halves(top, bottom, size, seed=seed * 1000 + k * 100 + i).save(d / f"{name}_{i:03d}.png")
    return root


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(side: int = BOMB_SIDE) -> bytes:
    """A valid ``side`` x ``side`` 8-bit grayscale PNG of zeros: tiny file, ``side``² bytes once decoded."""
    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def png_header_bomb(side: int = HEADER_BOMB_SIDE) -> bytes:
    """A PNG whose header declares ``side`` x ``side`` RGB pixels, followed by a few rows of data only."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * (3 * side + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def large_photo(size: tuple[int, int] = LARGE_PHOTO, seed: int = 0) -> bytes:
    """A legitimate large JPEG: red above blue, a gradient and mild noise (a few MB)."""
    w, h = size
    rng = np.random.default_rng(seed)
    arr = np.empty((h, w, 3), np.float32)
    arr[: h // 2] = RED
    arr[h // 2:] = BLUE
    arr += np.linspace(-25, 25, w, dtype=np.float32)[None, :, None]  # a horizontal gradient
    arr += rng.normal(0, 4, size=(h, w, 1)).astype(np.float32)
    return _jpeg(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB"))


# The inverse of each EXIF orientation: what to store so that the viewer's transform shows ``upright``.
_STORE_FOR_ORIENTATION = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
                          8: Image.Transpose.ROTATE_270}


def exif_rotated(upright: Image.Image, orientation: int) -> bytes:
    """A JPEG whose pixels are ``upright`` turned the other way, with the EXIF tag that turns them back."""
    stored = upright.transpose(_STORE_FOR_ORIENTATION[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _jpeg(stored, exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as im:  # the generator checks itself: shown upright, stored not
        assert im.getexif().get(0x0112) == orientation
        shown = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), np.float32)
        raw = np.asarray(im.convert("RGB"), np.float32)
    want = np.asarray(upright, np.float32)
    # JPEG blurs the pixel noise (mean error ~15); the wrong way up is off by ~120 (red vs blue halves).
    assert shown.shape == want.shape and np.abs(shown - want).mean() < 30
    assert raw.shape != want.shape or np.abs(raw - want).mean() > 60
    return data


def _animated_gif(frames: list[Image.Image]) -> bytes:
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def _sixteen_bit_png(img: Image.Image) -> bytes:
    arr = np.asarray(img.convert("L"), np.uint16) * 257  # full 16-bit range
    return _encoded(Image.fromarray(arr.astype(np.uint16)), "PNG")  # mode I;16


def _palette_png(img: Image.Image) -> bytes:
    p = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _encoded(p, "PNG", transparency=0)


def _rgba_png(img: Image.Image) -> bytes:
    rgba = img.convert("RGBA")
    alpha = Image.new("L", img.size, 255)
    alpha.paste(128, (0, 0, img.width // 4, img.height // 4))  # a semi-transparent corner
    rgba.putalpha(alpha)
    return _encoded(rgba, "PNG")


def _truncated_jpeg(img: Image.Image) -> bytes:
    data = _jpeg(img)
    return data[: len(data) // 2]


def image_specs() -> list[tuple[str, str, Callable[[], bytes], Expect, str]]:
    """(name, file name, bytes maker, expectation, note) for every image case."""
    red = halves(RED, BLUE, (48, 48), seed=7)
    blue = halves(BLUE, RED, (48, 48), seed=8)
    not_image = r"not an image|cannot decode|empty"
    return [
        ("truncated", "truncated.jpg", lambda: _truncated_jpeg(halves(RED, BLUE, (256, 256), seed=9)),
         Expect(False, error=r"cannot decode|truncated"), "a JPEG cut in half"),
        ("empty", "empty.jpg", lambda: b"", Expect(False, error=not_image), "0 bytes"),
        ("text_as_jpg", "notes.jpg", lambda: b"these are my holiday notes, not a photo\n" * 20,
         Expect(False, error=r"not an image"), "a text file named .jpg"),
        ("rgba_png", "rgba.png", lambda: _rgba_png(red), Expect(True, label="redtop"), "RGBA, half transparent corner"),
        ("grayscale_jpg", "gray.jpg", lambda: _jpeg(red.convert("L")), Expect(True), "8-bit grayscale"),
        ("cmyk_jpg", "cmyk.jpg", lambda: _jpeg(blue.convert("CMYK")), Expect(True, label="bluetop"), "CMYK JPEG"),
        ("palette_png", "palette.png", lambda: _palette_png(red), Expect(True, label="redtop"),
         "palette with a transparent colour"),
        ("animated_gif", "animated.gif", lambda: _animated_gif([blue, red, red]), Expect(True, label="bluetop"),
         "3 frames; the first counts"),
        ("png16", "sixteen.png", lambda: _sixteen_bit_png(red), Expect(True), "16-bit grayscale PNG"),
        ("webp", "photo.webp", lambda: _encoded(blue, "WEBP", quality=90), Expect(True, label="bluetop"), "WebP"),
        ("bmp", "photo.bmp", lambda: _encoded(red, "BMP"), Expect(True, label="redtop"), "BMP"),
        ("tiff", "photo.tiff", lambda: _encoded(blue, "TIFF"), Expect(True, label="bluetop"), "TIFF"),
        ("one_pixel", "dot.png", lambda: _encoded(Image.new("RGB", (1, 1), RED), "PNG"), Expect(True), "1x1"),
        ("large_photo", "large.jpg", large_photo, Expect(True, label="redtop", big=True), "6000x4000 JPEG"),
        ("png_90mp", "ninety_mp.png", lambda: png_bomb(NEAR_LIMIT_SIDE), Expect(True, big=True),
         f"{NEAR_LIMIT_SIDE}x{NEAR_LIMIT_SIDE} grayscale PNG, under the 100 MP limit"),
        ("png_bomb", "bomb.png", png_bomb,
         Expect(False, error=r"decompression bomb", big=True), f"valid {BOMB_SIDE}x{BOMB_SIDE} PNG"),
        ("png_header_bomb", "bomb_header.png", png_header_bomb,
         Expect(False, error=r"decompression bomb", big=True),
         f"header declares {HEADER_BOMB_SIDE}x{HEADER_BOMB_SIDE}"),
        ("exif_rotated_180", "exif3.jpg", lambda: exif_rotated(halves(RED, BLUE, (48, 40), seed=10), 3),
         Expect(True, label="redtop"), "stored upside down, EXIF orientation 3"),
        ("exif_rotated_90", "exif6.jpg", lambda: exif_rotated(halves(BLUE, RED, (48, 40), seed=11), 6),
         Expect(True, label="bluetop"), "stored sideways, EXIF orientation 6"),
    ]


IMAGE_NAMES = tuple(spec[0] for spec in image_specs())


def make_bad_images(dest: Path, only: set[str] | None = None) -> list[BadInput]:
    """Write every image case into ``dest``; returns them in a fixed order."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name, filename, make, expect, note in image_specs():
        if only is not None and name not in only:
            continue
        path = dest / filename
        path.write_bytes(make())
        out.append(BadInput(name, path, expect, note))
    return out


# --- zips --------------------------------------------------------------------------------------------


def _png(img: Image.Image) -> bytes:
    return _encoded(img, "PNG")


def _class_files(prefix: str, classes: dict[str, tuple] | None = None, n: int = 3, seed: int = 0) -> dict[str, bytes]:
    files = {}
    for k, (name, (top, bottom)) in enumerate((classes or HALVES).items()):
        for i in range(n):
            files[f"{prefix}{name}/{name}_{i}.png"] = _png(halves(top, bottom, seed=seed + 50 * k + i))
    return files


def _write_zip(path: Path, entries: dict[str, bytes], symlinks: dict[str, str] | None = None,
               dirs: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for d in dirs:
            zf.writestr(zipfile.ZipInfo(d.rstrip("/") + "/"), b"")
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # Unix: external_attr holds st_mode
            info.external_attr = 0o120777 << 16  # a symbolic link; its "content" is the target
            zf.writestr(info, target)
    return path


def zip_bomb(path: Path, size: int = ZIP_BOMB_BYTES) -> Path:
    """One member of ``size`` zeros (1 GiB by default compresses to about 1 MB), plus a real dataset."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, data in _class_files("data/").items():
            zf.writestr(name, data)
        with zf.open("data/redtop/huge.png", "w", force_zip64=True) as f:
            chunk = b"\0" * (1 << 22)
            for _ in range(size // len(chunk)):
                f.write(chunk)
    return path


def spread_zip_bomb(path: Path, members: int = SPREAD_BOMB_MEMBERS) -> Path:
    """Many members of 1,000,000 zeros each: every one passes a per-member ratio check, the total does not."""
    zeros = b"\0" * 1_000_000
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, data in _class_files("data/").items():
            zf.writestr(name, data)
        for i in range(members):
            zf.writestr(f"data/bluetop/zeros_{i:04d}.png", zeros)
    return path


def make_bad_zips(dest: Path, sentinel: Path) -> list[BadInput]:
    """Every zip case, in ``dest``. ``sentinel`` is a folder outside any extraction folder that
    hostile entries aim at (absolute paths, ``..``, symlinks): it must stay exactly as it was."""
    dest.mkdir(parents=True, exist_ok=True)
    sentinel.mkdir(parents=True, exist_ok=True)
    both = ("bluetop", "redtop")
    png = _png(halves(RED, BLUE, seed=99))
    out: list[BadInput] = []

    def add(name: str, entries: dict[str, bytes] | None, expect: Expect, note: str, **kw) -> None:
        path = dest / f"{name}.zip"
        if entries is not None:
            _write_zip(path, entries, **kw)
        out.append(BadInput(name, path, expect, note))

    add("wrapper_folder", _class_files("my photos/dataset/"), Expect(True, classes=both),
        "classes two wrapper folders down")
    add("macos_junk", {**_class_files(""), "__MACOSX/redtop/._redtop_0.png": b"\0\5\26\7junk",
                       "redtop/.DS_Store": b"\0\0\0\1Bud1", "bluetop/Thumbs.db": b"junk", ".hidden/x.png": png},
        Expect(True, classes=both), "__MACOSX, .DS_Store, Thumbs.db, dot folders")
    depth = "../" * 12
    add("path_traversal", {**_class_files("data/"), f"{depth}evil_up.png": png,
                           f"data/redtop/{depth}evil_climb.png": png,
                           f"data/{depth[:-1].replace('/', chr(92))}\\evil_backslash.png": png,
                           f"data/../../{sentinel.name}/evil_sibling.png": png},
        Expect(True, classes=both, skipped=("evil_up.png", "evil_climb.png", "evil_backslash.png",
                                            "evil_sibling.png")),
        "../ entries aiming out of the extraction folder")
    add("absolute_paths", {**_class_files("data/"), str(sentinel / "evil_abs.png"): png,
                           "/etc/xfer_evil.png": png, "C:/Windows/evil_drive.png": png},
        Expect(True, classes=both, skipped=("evil_abs.png", "xfer_evil.png", "evil_drive.png")),
        "absolute POSIX and drive paths")
    add("symlinks", _class_files("data/"),
        Expect(True, classes=("bluetop", "link_dir", "redtop"), skipped=("link_file.png", "link_dir")),
        "a file symlink to the sentinel, a folder symlink, a file written through it",
        symlinks={"data/redtop/link_file.png": str(sentinel / "victim.txt"), "data/link_dir": str(sentinel)})
    # A member written "through" the folder symlink: must become an ordinary file in a new folder.
    with zipfile.ZipFile(out[-1].path, "a") as zf:
        zf.writestr("data/link_dir/evil_through_link.png", png)
    zip_bomb(dest / "zip_bomb.zip")
    out.append(BadInput("zip_bomb", dest / "zip_bomb.zip", Expect(False, error=r"zip bomb", big=True),
                        "1 GiB of zeros in one member (~1 MB)"))
    spread_zip_bomb(dest / "spread_zip_bomb.zip")
    out.append(BadInput("spread_zip_bomb", dest / "spread_zip_bomb.zip", Expect(False, error=r"zip bomb", big=True),
                        f"{SPREAD_BOMB_MEMBERS} members of 1,000,000 zeros"))
    add("one_class", _class_files("data/", {"redtop": HALVES["redtop"]}),
        Expect(True, classes=("redtop",), train_error=r"at least 2 classes"), "a single class folder")
    (dest / "not_a_zip.zip").write_bytes(b"PK but not really\n" + b"x" * 500)
    out.append(BadInput("not_a_zip", dest / "not_a_zip.zip",
                        Expect(False, error=r"not a zip archive|neither a folder nor a zip"), "text named .zip"))
    unicode = {"Löwenzahn gelb": HALVES["redtop"], "rose rouge 🌹": HALVES["bluetop"],
               "ひまわり 花": (RED, RED)}
    add("non_ascii_classes", _class_files("Blumen/", unicode),
        Expect(True, classes=tuple(sorted(unicode))), "UTF-8 class names with spaces and emoji")
    mixed = {**_class_files("data/"), "data/redtop/readme.txt": b"hello", "data/redtop/script.py": b"print(1)",
             "data/bluetop/inner.zip": _zip_bytes({"a.png": png}), "data/bluetop/broken.png": png[:40],
             "data/redtop/fake.jpg": b"<html>not a jpeg</html>", "data/bluetop/empty.png": b""}
    add("mixed_junk", mixed, Expect(True, classes=both, skipped=("readme.txt", "script.py", "inner.zip",
                                                                 "broken.png", "fake.jpg", "empty.png")),
        "text, scripts, a nested zip, broken and empty images among the photos")
    long_name = "x" * 300 + ".png"
    add("long_name", {**_class_files("data/"), f"data/redtop/{long_name}": png},
        Expect(True, classes=both, skipped=(long_name,)), "a 300-character file name")
    assert tuple(c.name for c in out) == ZIP_NAMES
    return out


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


# --- folders ---------------------------------------------------------------------------------------


def make_bad_folders(dest: Path) -> list[BadInput]:
    """Every folder case, in ``dest``."""
    out = []
    empty = dest / "empty"
    empty.mkdir(parents=True)
    out.append(BadInput("empty_folder", empty, Expect(False, error=r"is empty"), "no files at all"))

    loose = dest / "loose"
    loose.mkdir()
    for i in range(3):
        halves(RED, BLUE, seed=i).save(loose / f"img_{i}.png")
    out.append(BadInput("no_class_folders", loose, Expect(False, error=r"no class folders"),
                        "images directly in the folder"))

    empty_class = make_halves_dataset(dest / "empty_class", per_class=3)
    (empty_class / "nothing here").mkdir()
    (empty_class / "only junk").mkdir()
    (empty_class / "only junk" / "notes.txt").write_text("no images")
    out.append(BadInput("empty_class", empty_class,
                        Expect(True, classes=("bluetop", "redtop"), skipped=("notes.txt",)),
                        "two classes plus an empty one and one with no images"))

    single = make_halves_dataset(dest / "single", per_class=3)
    (single / "lonely").mkdir()
    halves(RED, RED, seed=5).save(single / "lonely" / "only.png")
    out.append(BadInput("single_image_class", single,
                        Expect(True, classes=("bluetop", "lonely", "redtop"), train_error=r"at least 2 images"),
                        "a class with one image"))
    assert tuple(c.name for c in out) == FOLDER_NAMES
    return out


def zip_folder(folder: Path, dest: Path) -> Path:
    """Zip a folder case's contents (for the app, which takes zips), keeping empty folders: the zip's
    top level is the folder's (an empty folder gives an empty zip, loose images stay loose)."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            arc = str(f.relative_to(folder))
            if f.is_dir():
                zf.writestr(zipfile.ZipInfo(arc + "/"), b"")
            else:
                zf.write(f, arc)
    return dest


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> content; symlinks as 'LINK -> target')."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(folder))] = f"LINK -> {p.readlink()}".encode()
        elif p.is_file():
            out[str(p.relative_to(folder))] = p.read_bytes()
    return out


def seed_sentinel(sentinel: Path) -> dict[str, bytes]:
    """Fill the sentinel folder with a file hostile entries would like to overwrite; returns its snapshot."""
    sentinel.mkdir(parents=True, exist_ok=True)
    (sentinel / "victim.txt").write_text("do not touch\n")
    return snapshot(sentinel)


__all__ = ["ZIP_NAMES", "FOLDER_NAMES", "IMAGE_NAMES", "BadInput", "Expect", "HALVES", "RED", "BLUE", "halves",
           "make_halves_dataset", "make_bad_images", "make_bad_zips", "make_bad_folders", "zip_folder", "snapshot",
           "seed_sentinel", "exif_rotated", "png_bomb", "png_header_bomb", "large_photo", "zip_bomb",
           "spread_zip_bomb", "image_specs"]


if __name__ == "__main__":  # write every case to a folder, to try them by hand (in the browser, with the CLI)
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "bad-inputs")
    cases = (make_bad_images(target / "images") + make_bad_zips(target / "zips", target / "sentinel")
             + make_bad_folders(target / "folders"))
    seed_sentinel(target / "sentinel")
    for c in cases:
        outcome = ("ok" + (f" -> {c.expect.label}" if c.expect.label else "")) if c.expect.ok else \
            f"error /{c.expect.error}/"
        print(f"{c.name:<20} {str(c.path.relative_to(target)):<40} {outcome:<36} {c.note}")
