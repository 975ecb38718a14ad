"""The app through its API: the real server (``python app.py``) driven by ``gradio_client``.

Each ``Client`` is one visitor (its own session). Tiny data (5 classes of 64-px
flower photos), resnet18 with random weights: every training run takes seconds.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app_server import FIVE_CLASSES, AppServer, client, flower_subset, zip_folder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory, flowers_dir) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("app-data")
    bundled = flower_subset(tmp / "bundled", flowers_dir, per_class=6)
    upload = flower_subset(tmp / "upload" / "flowers", flowers_dir, per_class=8, offset=10)
    probe = flower_subset(tmp / "probe", flowers_dir, per_class=1, offset=30, classes=("roses",))
    return {"bundled": bundled, "zip": zip_folder(upload, tmp / "flowers.zip"), "upload": upload,
            "image": next((probe / "roses").iterdir()), "tmp": tmp}


@pytest.fixture(scope="module")
def server(tmp_path_factory, data):
    srv = AppServer(tmp_path_factory.mktemp("app-api"), flowers=data["bundled"])
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


def error_of(call) -> str:
    with pytest.raises(AppError) as info:
        call()
    message = str(info.value)
    assert "Traceback" not in message and 'File "' not in message
    return message


def train(c: Client, **kwargs) -> list:
    """Run /train to the end; returns every update it streamed (each a tuple of outputs)."""
    job = c.submit(api_name="/train", **kwargs)
    updates = list(job)
    job.result()
    return updates


def test_endpoints_have_names(server):
    api = client(server).view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/use_flowers", "/upload_zip", "/add_images", "/train", "/stop", "/evaluate", "/predict",
                 "/explain", "/load_model_dir", "/upload_model", "/download_model", "/push", "/pull"):
        assert name in api, name
    train_params = [p["parameter_name"] for p in api["/train"]["parameters"]]
    assert train_params == ["backbone", "strategy_name", "epochs", "lr", "batch_size", "image_size", "augment",
                            "pretrained", "max_per_class", "preset"]


def test_errors_are_one_readable_line(server, data):
    c = client(server)
    broken = data["tmp"] / "broken.zip"
    broken.write_bytes(b"this is not a zip archive at all")
    assert "zip archive: give a .zip" in error_of(lambda: c.predict(handle_file(str(broken)), api_name="/upload_zip"))
    assert "no dataset yet" in error_of(lambda: c.predict(api_name="/train"))
    assert "no model yet" in error_of(lambda: c.predict(handle_file(str(data["image"])), api_name="/predict"))
    assert "no model yet" in error_of(lambda: c.predict(api_name="/download_model"))
    assert "is not a folder" in error_of(lambda: c.predict("/no/such/model", api_name="/load_model_dir"))
    # A dataset zip is not a model zip.
    assert "holds no xfer model" in error_of(lambda: c.predict(handle_file(str(data["zip"])), api_name="/upload_model"))
    # One class only: the report says so, and training refuses with what to do.
    one = zip_folder(flower_subset(data["tmp"] / "one" / "only-roses", data["upload"], per_class=3,
                                   classes=("roses",)), data["tmp"] / "one.zip")
    summary = c.predict(handle_file(str(one)), api_name="/upload_zip")[0]
    assert "3 images in 1 class" in summary and "at least 2 classes" in summary
    assert "at least 2 classes" in error_of(lambda: c.predict(api_name="/train"))
    # Settings out of range are refused with a readable message.
    c.predict(handle_file(str(data["zip"])), api_name="/upload_zip")
    assert "less than minimum value" in error_of(lambda: c.predict(lr=0, api_name="/train"))


def test_upload_train_predict_download(server, data):
    c = client(server)
    summary, counts, gallery, skipped, examples, _ = c.predict(handle_file(str(data["zip"])), api_name="/upload_zip")
    assert "40 images in 5 classes" in summary
    assert counts["data"] and sorted(row[0] for row in counts["data"]) == sorted(FIVE_CLASSES)
    assert len(gallery) == 20 and len(examples) == 20  # 4 per class

    updates = train(c, epochs=2)
    progress = [u[0] for u in updates if isinstance(u[0], str) and "images/s" in u[0]]
    assert progress, "no per-batch progress was streamed"
    assert "ETA" in progress[-1]
    final = updates[-1]
    assert "validation accuracy" in final[1] and "saved" in final[1]
    loss_plot = final[2]
    assert len(loss_plot["data"]) == 4  # 2 epochs x (train, validation)

    label = c.predict(handle_file(str(data["image"])), api_name="/predict")
    confidences = {d["label"]: d["confidence"] for d in label["confidences"]}
    assert set(confidences) == set(FIVE_CLASSES)
    assert sum(confidences.values()) == pytest.approx(1.0, abs=1e-4)
    assert label["label"] == max(confidences, key=confidences.get)
    heat = c.predict(handle_file(str(data["image"])), api_name="/explain")
    with Image.open(heat) as im:
        assert im.size == (224, 224)

    zip_path = c.predict(api_name="/download_model")
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(Path(n).name for n in zf.namelist())
        assert names == ["README.md", "config.json", "model.safetensors"]
        cfg = json.loads(zf.read(next(n for n in zf.namelist() if n.endswith("config.json"))))["xfer"]
    assert cfg["backbone"] == "resnet18" and cfg["classes"] == sorted(FIVE_CLASSES)

    # Another visitor has their own session: no model there...
    other = client(server)
    assert "no model yet" in error_of(lambda: other.predict(handle_file(str(data["image"])), api_name="/predict"))
    # ...until they upload the downloaded zip, which then predicts exactly the same.
    info = other.predict(handle_file(zip_path), api_name="/upload_model")[0]
    assert "resnet18" in info and "5 classes" in info
    again = other.predict(handle_file(str(data["image"])), api_name="/predict")
    assert {d["label"]: round(d["confidence"], 5) for d in again["confidences"]} == \
           {k: round(v, 5) for k, v in confidences.items()}

    # A model folder on the server (here: the one the first visitor's training saved) loads by its path.
    folders = [p for p in (server.workdir / "cache" / "sessions").glob("*/model") if (p / "config.json").is_file()]
    third = client(server)
    assert "resnet18" in third.predict(str(folders[0]), api_name="/load_model_dir")[0]
    assert len(third.predict(handle_file(str(data["image"])), api_name="/predict")["confidences"]) == 5

    # Evaluate the model on the whole current dataset (training and validation images together).
    summary, per_class, _, _ = c.predict(api_name="/evaluate")
    assert "on 40 images" in summary and "Evaluated on 40 images of the current dataset" in summary
    assert sorted(row[0] for row in per_class["data"]) == sorted(FIVE_CLASSES)
    assert sum(row[4] for row in per_class["data"]) == 40


def test_bundled_flowers_and_own_classes(server, data):
    c = client(server)
    summary = c.predict(api_name="/use_flowers")[0]
    assert "30 images in 5 classes" in summary  # XFER_FLOWERS_DIR: the 6-per-class subset
    roses = sorted((data["upload"] / "roses").iterdir())
    daisies = sorted((data["upload"] / "daisy").iterdir())
    out = c.predict("roses", [handle_file(str(p)) for p in roses[:3]], api_name="/add_images")
    assert "3 images in 1 class" in out[0] and "at least 2 classes" in out[0]
    out = c.predict("daisy", [handle_file(str(p)) for p in daisies[:4]], api_name="/add_images")
    assert "7 images in 2 classes" in out[0]
    assert {row[0]: row[1] for row in out[1]["data"]} == {"daisy": 4, "roses": 3}
    assert "Type a class name" in error_of(lambda: c.predict(" ", [handle_file(str(roses[0]))], api_name="/add_images"))
    assert "Classes cleared" in c.predict(api_name="/clear_classes")[0]


def test_report_lists_skipped_files_and_duplicates(server, data):
    messy = data["tmp"] / "messy" / "flowers"
    flower_subset(messy, data["upload"], per_class=3, classes=("daisy", "roses"))
    (messy / "daisy" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (messy / "roses" / "notes.txt").write_text("bought on Tuesday")
    twin = next((messy / "daisy").glob("*.jpg"))
    (messy / "roses" / "twin.jpg").write_bytes(twin.read_bytes())  # the same photo in two classes
    summary, counts, _, skipped, _, _ = client(server).predict(
        handle_file(str(zip_folder(messy, data["tmp"] / "messy.zip"))), api_name="/upload_zip")
    assert "7 images in 2 classes" in summary and "2 files skipped" in summary
    assert "1 group of identical files (1 across classes)" in summary
    reasons = {row[0]: row[1] for row in skipped["data"]}
    assert reasons["daisy/broken.jpg"].startswith("cannot decode") or "not an image" in reasons["daisy/broken.jpg"]
    assert reasons["roses/notes.txt"] == "not an image file (.txt)"
    assert any("identical files in classes daisy, roses" == r for r in reasons.values())


def test_stop_keeps_the_previous_model(server, data):
    c = client(server)
    c.predict(handle_file(str(data["zip"])), api_name="/upload_zip")
    train(c, epochs=1)
    before = c.predict(handle_file(str(data["image"])), api_name="/predict")
    first_zip = c.predict(api_name="/download_model")

    # A long run (fine-tuning the whole network for 50 epochs), stopped as soon as it is under way.
    job = c.submit(strategy_name="finetune", epochs=50, api_name="/train")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(
            isinstance(o[0], str) and "epoch" in o[0] for o in job.outputs()):
        time.sleep(0.2)
    assert not job.done(), "the long run finished before it could be stopped"
    # Meanwhile another visitor loads a model and predicts: their requests do not queue behind the training.
    other = client(server)
    other.predict(handle_file(first_zip), api_name="/upload_model")
    assert other.predict(handle_file(str(data["image"])), api_name="/predict") == before
    assert not job.done(), "the other visitor waited for the training run to end"
    t0 = time.monotonic()
    stopped = c.predict(api_name="/stop")
    assert "Training was stopped" in stopped[0] and "previous model is still used" in stopped[0]
    job.result(timeout=60)
    assert time.monotonic() - t0 < 30  # stops within a batch, not at the end of the run
    assert "Training was stopped" in job.outputs()[-1][1]

    after = c.predict(handle_file(str(data["image"])), api_name="/predict")
    assert after == before  # the first model still answers, unchanged
    with zipfile.ZipFile(c.predict(api_name="/download_model")) as zf:
        cfg = json.loads(zf.read(next(n for n in zf.namelist() if n.endswith("config.json"))))["xfer"]
    assert cfg["strategy"] == "head" and cfg["training"]["epochs"] == 1  # nothing of the stopped run was saved
    assert "Nothing is training" in c.predict(api_name="/stop")[0]


def test_share_on_the_hub_and_load_it_back(tmp_path, data):
    """The Share tab's push and the Predict tab's pull, through the real huggingface_hub client
    against the project's local Hub look-alike (tests/hub_server.py); no network."""
    hub_server = pytest.importorskip("hub_server")
    token = "hf_app_test_token"
    with hub_server.HubServer(tmp_path / "hub", tokens={token: "alice"}) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            env[var] = ""
        srv = AppServer(tmp_path / "app", env=env).wait_ready()
        try:
            c = client(srv)
            assert "no model yet" in error_of(lambda: c.predict("alice/flowers", True, token, api_name="/push"))
            c.predict(handle_file(str(data["zip"])), api_name="/upload_zip")
            train(c, epochs=1)
            before = c.predict(handle_file(str(data["image"])), api_name="/predict")
            pushed = c.predict("alice/flowers", True, token, api_name="/push")
            assert "Pushed to" in pushed and "alice/flowers" in pushed and token not in pushed

            stranger = client(srv)  # a private repo is invisible without the token; the message says what to do
            message = error_of(lambda: stranger.predict("alice/flowers", "", "", api_name="/pull"))
            assert "alice/flowers" in message and "private" in message and token not in message
            assert "Token field" in message  # the library's advice, translated to this page

            other = client(srv)
            info = other.predict("alice/flowers", "", token, api_name="/pull")[0]
            assert "alice/flowers from the Hub" in info
            assert other.predict(handle_file(str(data["image"])), api_name="/predict") == before
            with zipfile.ZipFile(other.predict(api_name="/download_model")) as zf:  # and it can be downloaded
                assert sorted(Path(n).name for n in zf.namelist()) == ["README.md", "config.json",
                                                                        "model.safetensors"]
        finally:
            srv.stop()


def test_upload_size_limit_is_enforced(tmp_path):
    srv = AppServer(tmp_path / "app", extra_args=["--max-upload-mb", "1"]).wait_ready()
    try:
        big = tmp_path / "big.zip"
        with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr("photos/a/noise.bin", os.urandom(1_500_000))
        c = client(srv)
        # The page (and gradio_client) know the limit and refuse before sending...
        with pytest.raises(ValueError, match="exceeds the maximum file size of 1048576 bytes"):
            c.predict(handle_file(str(big)), api_name="/upload_zip")
        # ...and the server refuses it anyway.
        with open(big, "rb") as f:
            r = httpx.post(srv.url + "gradio_api/upload", files={"files": ("big.zip", f, "application/zip")},
                           timeout=60)
        assert r.status_code == 413
        assert "up to 1 MB" in c.view_api(print_info=False, return_format="dict")["named_endpoints"][
            "/upload_zip"]["parameters"][0]["label"]
    finally:
        srv.stop()
