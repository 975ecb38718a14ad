"""Bad and hostile input through the app: the real server (``python app.py``) driven by ``gradio_client``.

Every case of ``badinputs.py`` goes in as a visitor would send it (an image to Predict, a zip to Data, images to
"build classes yourself", a model zip to "Use another model"). Each ends in a correct result or a one-line error
that says what to do (never Gradio's generic "the app raised an exception", never a traceback or a server path);
after each bad request a good one still succeeds; nothing is written outside the session's extraction folders;
the server's peak memory stays under 1.5 GB; the upload limit stated in the UI is the one the server enforces.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import xfer
from app_server import AppServer, client, paths_below
from badinputs import (
    FOLDER_NAMES,
    HALVES,
    IMAGE_NAMES,
    ZIP_NAMES,
    halves,
    make_bad_folders,
    make_bad_images,
    make_bad_zips,
    make_halves_dataset,
    seed_sentinel,
    snapshot,
    zip_folder,
)
from xfer.engine import TrainConfig

pytestmark = pytest.mark.slow

UPLOAD_MB = 8  # small, so that the test can send a file over it; the 24 MP photo (4.7 MB) fits
MAX_RSS_MB = 1536
GENERIC = "has not enabled verbose error reporting"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hostile-app")
    sentinel = root / "sentinel"
    before = seed_sentinel(sentinel)
    model = root / "model"
    data = make_halves_dataset(root / "halves", per_class=12)
    xfer.train(str(data), backbone="resnet18", strategy="truncate", cut=2, weights=None, image_size=32,
               config=TrainConfig(epochs=20, batch_size=8, augment=False, lr=0.03), device=xfer.select_device("cpu"),
               out=model)
    good = root / "good.png"
    halves(*HALVES["redtop"], seed=4242).save(good)
    return {"root": root, "sentinel": sentinel, "sentinel_before": before, "model": model, "good": good,
            "images": {c.name: c for c in make_bad_images(root / "inputs" / "images")},
            "zips": {c.name: c for c in make_bad_zips(root / "inputs" / "zips", sentinel)},
            "folders": {c.name: c for c in make_bad_folders(root / "inputs" / "folders")}}


@pytest.fixture(scope="module")
def server(work):
    workdir = work["root"] / "app-run"
    workdir.mkdir()
    srv = AppServer(workdir, extra_args=["--max-upload-mb", str(UPLOAD_MB)])
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()
    log = srv.log_path.read_text(errors="replace")
    # Every hostile input was handled as an XferError: nothing reached the "unexpected error" path.
    assert "unexpected error" not in log and "Traceback" not in log, log[-5000:]


@pytest.fixture(scope="module")
def probe(server, work) -> Client:
    """A visitor with a model loaded: its good request after each bad one shows the app is still up."""
    c = client(server)
    c.predict(str(work["model"]), api_name="/load_model_dir")
    return c


def still_up(probe: Client, work: dict, server: AppServer) -> None:
    assert server.proc.poll() is None, server.log()
    out = probe.predict(handle_file(str(work["good"])), api_name="/predict")
    assert out["label"] == "redtop", out


def app_error(call, pattern: str, server: AppServer) -> str:
    """The call fails with one readable line matching ``pattern``: no traceback, no server folder."""
    with pytest.raises(AppError) as info:
        call()
    message = str(info.value)
    assert GENERIC not in message, "a generic Gradio error: the input reached Gradio or the app unchecked"
    assert "\n" not in message.strip() and "Traceback" not in message and 'File "' not in message, message
    assert str(server.workdir) not in message and "/tmp/" not in message, message
    assert re.search(pattern, message, re.I), message
    return message


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def nothing_outside(work: dict, server: AppServer) -> None:
    """The sentinel is intact; hostile files exist only as uploads or inside a session's extraction folder."""
    assert snapshot(work["sentinel"]) == work["sentinel_before"]
    sessions = server.workdir / "cache" / "sessions"
    uploads = server.workdir / "gradio-tmp"
    stray = [p for p in paths_below(work["root"]) if "evil" in p.name and not p.is_relative_to(work["root"] / "inputs")
             and not p.is_relative_to(uploads)
             and not (p.is_relative_to(sessions) and re.match(r"(zip|classes)", p.relative_to(sessions).parts[1]))]
    assert stray == [], stray
    assert [p for p in paths_below(work["root"]) if p.is_symlink()] == []



# --- the upload limit -------------------------------------------------------------------------------


def test_upload_limit_is_stated_and_enforced(server, probe, work):
    with urllib.request.urlopen(server.url + "config") as r:
        config = json.load(r)
    texts = json.dumps([c.get("props", {}) for c in config["components"]])
    assert f"up to {UPLOAD_MB} MB per file" in texts  # the footer
    assert f"Dataset .zip (up to {UPLOAD_MB} MB)" in texts and f"up to {UPLOAD_MB} MB)" in texts
    assert config.get("max_file_size") == UPLOAD_MB * 1024 * 1024

    big = work["root"] / "too-big.zip"
    big.write_bytes(b"PK" + bytes(UPLOAD_MB * 2**20 + 1))
    with pytest.raises(ValueError, match="maximum file size"):  # gradio_client checks before sending...
        client(server).predict(handle_file(str(big)), api_name="/upload_zip")
    # ...and the server refuses it too, for a client that does not.
    r = httpx.post(server.url + "gradio_api/upload", files={"files": ("too-big.zip", big.read_bytes())}, timeout=60)
    assert r.status_code == 413 and "maximum" in r.text, (r.status_code, r.text[:200])
    still_up(probe, work, server)


def test_upload_filenames_cannot_escape(server, probe, work):
    """Hostile names in the multipart upload itself stay inside Gradio's upload folder."""
    for name in ("../../../../evil_upload.png", str(work["sentinel"] / "evil_upload_abs.png")):
        r = httpx.post(server.url + "gradio_api/upload", files={"files": (name, b"\x89PNG not really")}, timeout=30)
        assert r.status_code == 200, r.text
        stored = Path(r.json()[0])
        assert stored.resolve().is_relative_to((server.workdir / "gradio-tmp").resolve()), stored
    nothing_outside(work, server)
    still_up(probe, work, server)


# --- images to Predict ------------------------------------------------------------------------------


def test_predict_every_bad_image(server, probe, work):
    c = client(server)
    c.predict(str(work["model"]), api_name="/load_model_dir")
    for name in IMAGE_NAMES:
        case = work["images"][name]
        if case.expect.ok:
            out = c.predict(handle_file(str(case.path)), api_name="/predict")
            confidences = {d["label"]: d["confidence"] for d in out["confidences"]}
            assert set(confidences) == {"redtop", "bluetop"}, name
            assert sum(confidences.values()) == pytest.approx(1.0, abs=1e-4), name
            if case.expect.label:
                assert out["label"] == case.expect.label, (name, confidences)
        else:
            message = app_error(lambda: c.predict(handle_file(str(case.path)), api_name="/predict"),
                                case.expect.error, server)
            assert case.path.name in message, message  # names the visitor's file
        still_up(probe, work, server)
    # The control for the EXIF case: the same pixels without the tag are the other class.
    pixels = work["root"] / "exif3_pixels_only.png"
    with Image.open(work["images"]["exif_rotated_180"].path) as im:
        Image.fromarray(np.asarray(im.convert("RGB"))).save(pixels)
    assert c.predict(handle_file(str(pixels)), api_name="/predict")["label"] == "bluetop"
    rss = peak_rss_mb(server.proc.pid)
    print(f"\napp server peak RSS after every image case (incl. 24 MP, 90 MP, 400 MP and 900 MP ones): {rss:.0f} MB")
    assert rss < MAX_RSS_MB


# --- zips to Data -----------------------------------------------------------------------------------


def _check_dataset(out: tuple, classes: tuple[str, ...], skipped: tuple[str, ...]) -> None:
    summary, counts, _, skipped_table = out[:4]
    n = len(classes)
    assert re.search(rf"\*\*\d+ images in {n} class{'es' if n != 1 else ''}\*\*", summary), summary
    assert tuple(sorted(row[0] for row in counts["data"])) == tuple(sorted(classes)), counts
    reported = [row[0] for row in skipped_table["data"]]
    for name in skipped:
        assert any(name in r for r in reported), (name, reported)


@pytest.mark.parametrize("name", ZIP_NAMES)
def test_upload_every_bad_zip(server, probe, work, name):
    case = work["zips"][name]
    c = client(server)
    call = lambda: c.predict(handle_file(str(case.path)), api_name="/upload_zip")  # noqa: E731
    if case.expect.ok:
        _check_dataset(call(), case.expect.classes, case.expect.skipped)
        if case.expect.train_error:
            app_error(lambda: c.predict(api_name="/train"), case.expect.train_error, server)
    else:
        app_error(call, case.expect.error, server)
    nothing_outside(work, server)
    still_up(probe, work, server)
    if case.expect.big:
        assert peak_rss_mb(server.proc.pid) < MAX_RSS_MB


@pytest.mark.parametrize("name", FOLDER_NAMES)
def test_upload_every_bad_folder_as_zip(server, probe, work, name):
    case = work["folders"][name]
    archive = zip_folder(case.path, work["root"] / f"{name}.zip")
    c = client(server)
    call = lambda: c.predict(handle_file(str(archive)), api_name="/upload_zip")  # noqa: E731
    if case.expect.ok:
        out = call()
        _check_dataset(out, case.expect.classes, case.expect.skipped)
        if case.expect.train_error:
            app_error(lambda: c.predict(epochs=1, api_name="/train"), case.expect.train_error, server)
    else:
        app_error(call, case.expect.error, server)
    still_up(probe, work, server)


def test_upload_model_refuses_hostile_zips(server, probe, work):
    c = client(server)
    zips = work["zips"]
    app_error(lambda: c.predict(handle_file(str(zips["zip_bomb"].path)), api_name="/upload_model"), "zip bomb", server)
    app_error(lambda: c.predict(handle_file(str(zips["not_a_zip"].path)), api_name="/upload_model"),
              "not a zip archive", server)
    app_error(lambda: c.predict(handle_file(str(zips["path_traversal"].path)), api_name="/upload_model"),
              "holds no xfer model", server)
    nothing_outside(work, server)
    still_up(probe, work, server)


# --- images to "build classes yourself" --------------------------------------------------------------


def test_add_images_takes_the_good_skips_the_bad_and_refuses_bad_class_names(server, probe, work):
    c = client(server)
    small = [work["images"][n] for n in IMAGE_NAMES if not work["images"][n].expect.big]
    out = c.predict("redtop", [handle_file(str(i.path)) for i in small], api_name="/add_images")
    usable = sum(i.expect.ok for i in small)
    assert f"{usable} images in 1 class" in out[0], out[0]
    _check_dataset(out, ("redtop",), tuple(i.path.name for i in small if not i.expect.ok))
    for bad in ("../../evil_class", "..", "a/b", "..\\evil", ".hidden", "x" * 300):
        app_error(lambda: c.predict(bad, [handle_file(str(work["good"]))], api_name="/add_images"),
                  r"cannot be a folder name", server)
    app_error(lambda: c.predict("  ", [handle_file(str(work["good"]))], api_name="/add_images"),
              r"class name", server)
    nothing_outside(work, server)
    still_up(probe, work, server)


# --- what is served, and to whom ---------------------------------------------------------------------

SCRIPT_HTML = b"<html><body><script>document.title='owned'</script></body></html>"
SCRIPT_SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


def _model_zip(model: Path, dest: Path, extra: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(model.iterdir()):
            zf.write(f, f"model/{f.name}")
        for name, data in extra.items():
            zf.writestr(name, data)
    return dest


def _fetch_status(server: AppServer, path: Path) -> int:
    url = server.url + "gradio_api/file=" + urllib.parse.quote(str(path))
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_visitor_folders_are_never_served_and_keep_only_images_and_model_files(server, probe, work, tmp_path):
    """A zip's HTML/SVG is never written; no file of any visitor's folder is served (not even by its exact
    path); the model zip a visitor downloads comes from Gradio's own cache."""
    ds = tmp_path / "ds"
    shutil.copytree(work["root"] / "halves", ds)
    (ds / "redtop" / "evil.html").write_bytes(SCRIPT_HTML)
    (ds / "bluetop" / "evil.svg").write_bytes(SCRIPT_SVG)
    c = client(server)
    summary = c.predict(handle_file(str(zip_folder(ds, tmp_path / "ds.zip"))), api_name="/upload_zip")[0]
    assert "skipped" in summary
    upload = _model_zip(work["model"], tmp_path / "model.zip", {"model/evil.html": SCRIPT_HTML,
                                                                  "index.svg": SCRIPT_SVG})
    c.predict(handle_file(str(upload)), api_name="/upload_model")
    downloaded = Path(c.predict(api_name="/download_model"))
    with zipfile.ZipFile(downloaded) as zf:
        assert sorted(Path(n).name for n in zf.namelist()) == ["README.md", "config.json", "model.safetensors"]

    sessions = server.workdir / "cache" / "sessions"
    files = [p for p in paths_below(sessions) if p.is_file()]
    assert any(p.name == "model.safetensors" for p in files) and any(p.suffix == ".png" for p in files), files
    assert not [p for p in files if p.suffix in (".html", ".svg")], files  # kept nothing but images and models
    for p in files:  # another visitor who learned a path still gets nothing
        assert _fetch_status(server, p) == 403, p
    nothing_outside(work, server)
    still_up(probe, work, server)


def test_a_bad_model_config_is_refused_without_a_server_path(server, probe, work, tmp_path):
    cfg = json.loads((work["model"] / "config.json").read_text())
    cfg["xfer"]["preprocessing"]["crop_size"] = 100_000  # would allocate 30 GB per image
    bad = tmp_path / "bad"
    shutil.copytree(work["model"], bad)
    (bad / "config.json").write_text(json.dumps(cfg))
    c = client(server)
    message = app_error(lambda: c.predict(handle_file(str(_model_zip(bad, tmp_path / "bad.zip", {}))),
                                          api_name="/upload_model"), "size|crop|px", server)
    assert "sessions" not in message and "upload-model" not in message, message
    still_up(probe, work, server)
