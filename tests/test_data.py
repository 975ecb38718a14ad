"""Datasets: defensive image opening, scanning, safe zip extraction, splitting, the flowers source."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_color_dataset
from xfer import DataError
from xfer.data import (
    DatasetReport,
    check_class_name,
    class_name_problem,
    extract_zip,
    find_class_root,
    flowers_dir,
    load_dataset,
    open_image,
    scan_folder,
    split_dataset,
    subsample,
)


def _png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA", "I;16", "1"])
def test_open_image_converts_every_mode_to_rgb(tmp_path, mode):
    img = Image.new("RGB", (20, 10), (200, 100, 50)).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        img = Image.fromarray((np.ones((10, 20)) * 40000).astype(np.uint16))
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    path = tmp_path / f"x.{fmt.lower()}"
    img.save(path, format=fmt)
    out = open_image(path)
    assert out.mode == "RGB" and out.size == (20, 10)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    arr = np.full((8, 8), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    Image.fromarray(arr).save(tmp_path / "g.png")
    px = open_image(tmp_path / "g.png").getpixel((0, 0))
    assert 120 <= px[0] <= 135


def test_rgba_transparency_composited_on_white(tmp_path):
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert open_image(tmp_path / "t.png").getpixel((0, 0)) == (255, 255, 255)


def test_animated_gif_takes_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    r, g, b = open_image(tmp_path / "a.gif").getpixel((4, 4))
    assert r > 200 and b < 50


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (30, 10), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert open_image(tmp_path / "r.jpg").size == (10, 30)


@pytest.mark.parametrize("content,fragment", [
    (b"", "not an image"),
    (b"this is text, not a jpeg", "not an image"),
])
def test_unreadable_files_raise_dataerror(tmp_path, content, fragment):
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(DataError, match=fragment):
        open_image(p)


def test_truncated_jpeg_raises_dataerror(tmp_path):
    data = _png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)), format="JPEG")
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot decode"):
        open_image(tmp_path / "t.jpg")


def test_decompression_bomb_refused_before_decoding(tmp_path, monkeypatch):
    # A real PNG whose header declares 20000x20000 pixels, compressed to a few hundred KB.
    Image.new("L", (20000, 20000)).save(tmp_path / "bomb.png", optimize=False)
    with pytest.raises(DataError, match="limit"):
        open_image(tmp_path / "bomb.png")


def test_open_image_from_bytes_array_and_pil():
    img = Image.new("RGB", (5, 6), (1, 2, 3))
    assert open_image(_png_bytes(img)).size == (5, 6)
    assert open_image(np.zeros((6, 5, 3), dtype=np.uint8)).size == (5, 6)
    assert open_image(img.convert("L")).mode == "RGB"


def test_scan_reports_classes_counts_skips_and_duplicates(tmp_path):
    root = make_color_dataset(tmp_path / "d", per_class=4)
    (root / "red" / "notes.txt").write_text("hello")
    (root / "red" / "broken.jpg").write_bytes(b"garbage")
    (root / "red" / ".DS_Store").write_bytes(b"junk")
    (root / "blue" / "copy.png").write_bytes((root / "red" / "red_000.png").read_bytes())
    (root / "empty").mkdir()
    report = scan_folder(root)
    assert report.classes == ["blue", "green", "red"]
    assert report.counts == {"blue": 5, "green": 4, "red": 4}
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert set(reasons) == {"notes.txt", "broken.jpg"}
    assert "not an image" in reasons["notes.txt"] and "not an image" in reasons["broken.jpg"]
    assert len(report.duplicates) == 1 and len(report.duplicates[0]) == 2
    assert any("empty" in w and "dropped" in w for w in report.warnings)
    assert any("more than one class" in w for w in report.warnings)
    assert all(report.classes[label] == Path(p).parent.name for p, label in report.items)


def test_one_rule_for_class_names_in_scans_and_typed_names(tmp_path):
    assert check_class_name("  tabby cat ") == "tabby cat" and class_name_problem("été") is None
    assert class_name_problem("x" * 255) is None  # a folder name's limit, in bytes
    for bad in ("", "  ", ".", "..", "a/b", "a\\b", ".hidden", "__MACOSX", "x" * 256, "é" * 128):
        assert class_name_problem(bad) is not None
        with pytest.raises(DataError, match="cannot be used"):
            check_class_name(bad)
    root = make_color_dataset(tmp_path / "d", per_class=2)
    (root / "red").rename(root / "back\\slash")  # a legal folder name on Linux, not a class name
    make_color_dataset(root, {"__MACOSX": (1, 2, 3)}, per_class=2)  # junk: ignored, as in zips
    report = scan_folder(root)
    assert report.classes == ["blue", "green"]
    assert any("back" in w and "cannot name a class" in w and "dropped" in w for w in report.warnings)
    import xfer

    bad = DatasetReport(report.root, ["blue", "a/b"], report.items)  # built by hand, not by a scan
    with pytest.raises(DataError, match="'a/b' cannot be used"):
        xfer.train(bad, backbone="resnet18", strategy="head", weights=None)


def test_scan_descends_wrapper_folder_and_rejects_loose_images(tmp_path):
    make_color_dataset(tmp_path / "wrap" / "inner", per_class=2)
    assert find_class_root(tmp_path / "wrap") == tmp_path / "wrap" / "inner"
    assert scan_folder(tmp_path / "wrap").num_images == 6
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("RGB", (8, 8)).save(loose / "a.png")
    with pytest.raises(DataError, match="no class folders"):
        scan_folder(loose)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        scan_folder(tmp_path / "empty")


def _zip(path: Path, entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return path


def test_extract_zip_skips_traversal_absolute_symlinks_and_junk(tmp_path):
    png = _png_bytes(Image.new("RGB", (8, 8), (9, 9, 9)))
    archive = _zip(tmp_path / "a.zip", {
        "data/cats/1.png": png, "data/dogs/2.png": png, "__MACOSX/data/._1.png": b"x",
        "data/cats/.DS_Store": b"x", "../evil.png": png, "/abs/evil.png": png, "data/../../evil2.png": png,
    }, symlinks={"data/cats/link.png": "/etc/passwd"})
    dest = tmp_path / "out"
    skipped = extract_zip(archive, dest)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == ["data/cats/1.png", "data/dogs/2.png"]
    assert {name for name, _ in skipped} == {"../evil.png", "/abs/evil.png", "data/../../evil2.png", "data/cats/link.png"}
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "evil2.png").exists()


def test_zip_bomb_is_refused_and_nothing_left(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/zeros.png", b"\0" * (50 * 2**20))
    assert archive.stat().st_size < 200_000
    with pytest.raises(DataError, match="zip bomb|limit"):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_size_limit_counts_bytes_written(tmp_path):
    png = _png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))
    archive = _zip(tmp_path / "a.zip", {f"c{i % 2}/{i}.png": png for i in range(10)})
    with pytest.raises(DataError, match="limit"):
        extract_zip(archive, tmp_path / "out", max_bytes=len(png) * 5)


def test_failed_extraction_into_an_existing_folder_removes_only_its_own_files(tmp_path):
    png = _png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))
    dest = tmp_path / "out"
    (dest / "c0").mkdir(parents=True)
    (dest / "c0" / "mine.png").write_bytes(b"keep me")
    (dest / "c0" / "0.png").write_bytes(b"and me")
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:  # stored: the payload can be corrupted in place
        zf.writestr("c0/1.png", png)
        zf.writestr("c1/2.png", png)
        zf.writestr("c1/3.png", b"PAYLOAD-" * 64)
    archive.write_bytes(archive.read_bytes().replace(b"PAYLOAD-" * 64, b"DAMAGED-" * 64))  # bad CRC
    with pytest.raises(DataError, match="damaged"):
        extract_zip(archive, dest)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == ["c0", "c0/0.png", "c0/mine.png"]
    assert (dest / "c0" / "0.png").read_bytes() == b"and me"
    # A name already there (or twice in the archive) is skipped, never overwritten.
    skipped = extract_zip(_zip(tmp_path / "b.zip", {"c0/0.png": png, "c1/1.png": png}), dest)
    assert skipped == [("c0/0.png", "a file of this name is already there, skipped")]
    assert (dest / "c0" / "0.png").read_bytes() == b"and me" and (dest / "c1" / "1.png").read_bytes() == png


def test_not_a_zip_is_a_clear_error(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="neither a folder nor a zip"):
        load_dataset(tmp_path / "x.zip")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "missing")


def test_load_dataset_from_zip_with_non_ascii_classes(tmp_path):
    png = _png_bytes(Image.new("RGB", (8, 8), (9, 9, 9)))
    png2 = _png_bytes(Image.new("RGB", (8, 8), (90, 9, 9)))
    archive = _zip(tmp_path / "d.zip", {"wrapper/Löwenzahn gelb/1.png": png, "wrapper/rose rouge/1.png": png2,
                                        "wrapper/rose rouge/bad.jpg": b"nope"})
    report = load_dataset(archive, work_dir=tmp_path / "work")
    assert report.classes == ["Löwenzahn gelb", "rose rouge"]
    assert any("bad.jpg" in s.path for s in report.skipped)


def test_split_is_stratified_reproducible_and_disjoint(tmp_path):
    report = scan_folder(make_color_dataset(tmp_path / "d", per_class=10))
    train, val = split_dataset(report, 0.2, seed=3)
    assert split_dataset(report, 0.2, seed=3) == (train, val)
    assert split_dataset(report, 0.2, seed=4) != (train, val)
    assert not {p for p, _ in train} & {p for p, _ in val}
    assert len(train) + len(val) == 30
    assert sorted(label for _, label in val) == [0, 0, 1, 1, 2, 2]


def test_split_errors_on_one_class_and_singleton_class(tmp_path):
    one = scan_folder(make_color_dataset(tmp_path / "one", classes={"red": (255, 0, 0)}, per_class=4))
    with pytest.raises(DataError, match="at least 2 classes"):
        split_dataset(one)
    report = scan_folder(make_color_dataset(tmp_path / "d", per_class=3))
    report.items = [it for it in report.items if it[1] != 0] + [next(it for it in report.items if it[1] == 0)]
    with pytest.raises(DataError, match="'blue' need at least 2 images"):
        split_dataset(report)


def test_subsample_takes_at_most_n_per_class(tmp_path):
    report = scan_folder(make_color_dataset(tmp_path / "d", per_class=6))
    sub = subsample(report.items, 2)
    assert sorted(label for _, label in sub) == [0, 0, 1, 1, 2, 2]


def test_flowers_source_from_setting_and_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XFER_FLOWERS_DIR", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="XFER_FLOWERS_DIR"):
        flowers_dir()
    make_color_dataset(tmp_path / "fl", per_class=2)
    monkeypatch.setenv("XFER_FLOWERS_DIR", str(tmp_path / "fl"))
    assert load_dataset("flowers").num_images == 6
    # No setting, no cache, no network: a clear error saying how to provide the photos.
    monkeypatch.delenv("XFER_FLOWERS_DIR")
    monkeypatch.setenv("XFER_CACHE_DIR", str(tmp_path / "cache"))
    import urllib.request

    def offline(*a, **k):
        raise OSError("network is unreachable")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="XFER_FLOWERS_DIR"):
        flowers_dir()
    assert not any((tmp_path / "cache").glob("flower_photos*"))


# --- only regular files, never a link out, names that look alike (issue 15, items 7 and 9) --------------------


def _bounded(fn, seconds: float = 20.0):
    """``fn()`` in a thread; fails the test (instead of hanging it) if it has not returned in time."""
    import threading

    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    return t.is_alive(), box


def _release(fifo: Path) -> None:
    """Give a reader blocked on ``fifo`` (the unfixed code) its end of file, so no thread stays stuck."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # no reader waiting
        pass


def test_open_image_reads_regular_files_only(tmp_path):
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    try:
        stuck, box = _bounded(lambda: open_image(fifo))
    finally:
        _release(fifo)
    assert not stuck, "open_image blocked on a FIFO"
    assert isinstance(box.get("error"), DataError) and "named pipe" in str(box["error"])
    with pytest.raises(DataError, match="folder"):
        open_image(tmp_path)
    good = tmp_path / "ok.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(good)
    link = tmp_path / "link.png"
    link.symlink_to(good)  # a path the user gave: a link to a regular file is read
    assert open_image(str(link)).getpixel((0, 0)) == (1, 2, 3)


def test_scan_skips_fifos(tmp_path):
    root = make_color_dataset(tmp_path / "d", per_class=3)
    fifo = root / "red" / "pipe.png"
    os.mkfifo(fifo)
    try:
        stuck, box = _bounded(lambda: scan_folder(root))
    finally:
        _release(fifo)
    assert not stuck, "the scan blocked on a FIFO"
    report = box["value"]
    assert report.counts == {"blue": 3, "green": 3, "red": 3}
    assert [(Path(s.path).name, s.reason) for s in report.skipped] == [("pipe.png", "not a regular file (a pipe, "
                                                                                    "socket or device)")]


def test_scan_never_follows_a_linked_class_folder(tmp_path):
    root = make_color_dataset(tmp_path / "d", per_class=3)
    outside = make_color_dataset(tmp_path / "outside", classes={"secret": (9, 9, 9)}, per_class=3)
    (root / "secret").symlink_to(outside / "secret", target_is_directory=True)
    (root / "green" / "more").symlink_to(outside / "secret", target_is_directory=True)
    report = scan_folder(root)
    assert report.classes == ["blue", "green", "red"] and report.counts == {"blue": 3, "green": 3, "red": 3}
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert "symbolic link" in reasons["secret"] and "symbolic link" in reasons["more"]
    assert not any("outside" in str(p) for p, _ in report.items)
    wrapper = tmp_path / "wrapper"  # a single linked folder is not descended into as a wrapper either
    wrapper.mkdir()
    (wrapper / "inner").symlink_to(root, target_is_directory=True)
    assert find_class_root(wrapper) == wrapper


def test_classes_named_alike_are_reported_and_refused_for_training(tmp_path):
    import unicodedata

    classes = {"Cat": (200, 0, 0), "cat": (0, 200, 0), unicodedata.normalize("NFC", "café"): (0, 0, 200),
               unicodedata.normalize("NFD", "café"): (200, 200, 0), "dog": (0, 200, 200)}
    root = make_color_dataset(tmp_path / "d", classes=classes, per_class=2)
    report = scan_folder(root)
    assert len(report.classes) == 5  # kept apart, as the folders are, but said
    case = [w for w in report.warnings if "'Cat' and 'cat'" in w]
    form = [w for w in report.warnings if "NFC and NFD" in w]
    assert len(case) == 1 and "letter case" in case[0] and len(form) == 1 and "rename" in form[0]
    with pytest.raises(DataError, match="rename one of the folders"):
        split_dataset(report)
    distinct = make_color_dataset(tmp_path / "ok", classes={"Cat": (200, 0, 0), "dog": (0, 0, 200)}, per_class=2)
    assert not scan_folder(distinct).warnings and split_dataset(scan_folder(distinct))
