"""xfer.ui_helpers: what the app shows, tested without a browser (real files, a real tiny model)."""

from __future__ import annotations

import copy
import os
import time
import zipfile

import pytest
import torch
from PIL import Image

import xfer
from xfer import ui_helpers as ui
from xfer.data import extract_zip, scan_folder
from xfer.engine import EpochStats, Progress
from xfer.errors import DataError, ModelError


def test_session_copies_are_fresh_and_private(tmp_path, monkeypatch):
    monkeypatch.setenv("XFER_CACHE_DIR", str(tmp_path))
    template = ui.Session()
    a, b = copy.deepcopy(template), copy.deepcopy(template)  # what gr.State does per visitor
    assert a.id != b.id and a.cancel is not b.cancel
    assert not (tmp_path / "sessions").exists()  # nothing is created until a folder is needed
    a.cancel.set()
    assert not b.cancel.is_set()
    d = a.new_dir("zip")
    assert d.is_dir() and d.parent == tmp_path / "sessions" / a.id
    assert a.new_dir("zip") != d
    a.close()
    assert not (tmp_path / "sessions" / a.id).exists() and a.cancel.is_set()


def test_cleanup_stale_sessions(tmp_path, monkeypatch):
    monkeypatch.setenv("XFER_CACHE_DIR", str(tmp_path))
    old, new = ui.Session(), ui.Session()
    old.workdir, new.workdir  # noqa: B018  (reading .workdir makes the folder)
    past = time.time() - 3 * 24 * 3600
    os.utime(old.workdir, (past, past))
    assert ui.cleanup_stale_sessions(max_age_s=24 * 3600) == 1
    assert not old.workdir.exists() and new.workdir.exists()
    # A running server does it too, at most hourly, when a new visitor's folder is made.
    stale = tmp_path / "sessions" / "left-by-an-api-client"
    stale.mkdir()
    os.utime(stale, (past, past))
    monkeypatch.setattr(ui, "_LAST_CLEANUP", [time.monotonic() - ui.CLEANUP_EVERY_S - 1])
    ui.Session().workdir  # noqa: B018  (reading .workdir makes the folder, and may clean up)
    assert not stale.exists() and new.workdir.exists()
    stale.mkdir()
    os.utime(stale, (past, past))
    ui.Session().workdir  # noqa: B018  (within the hour: left for the next round)
    assert stale.exists()


def test_report_views(color_dataset):
    (color_dataset / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    (color_dataset / "blue" / "copy.png").write_bytes((color_dataset / "red" / "red_000.png").read_bytes())
    report = scan_folder(color_dataset)
    counts = ui.counts_frame(report)
    assert counts.to_dict("list") == {"class": ["blue", "green", "red"], "images": [9, 8, 8]}
    skipped = ui.skipped_frame(report)
    assert list(skipped.columns) == ["file", "reason"]
    assert "red/broken.jpg" in skipped["file"].tolist()  # relative to the dataset, not the server's folders
    assert any("across classes" in r or "classes blue, red" in r for r in skipped["reason"])
    md = ui.report_markdown(report, "colors.zip")
    assert "25 images in 3 classes" in md and "1 file skipped" in md and "identical" in md
    assert "colors.zip" in md and str(color_dataset) not in md
    one_class = scan_folder(color_dataset / "red" / "..", min_images=100)
    assert "at least 2 classes" in ui.report_markdown(one_class)


def test_cap_per_class(color_dataset):
    report = scan_folder(color_dataset)
    capped = ui.cap_per_class(report, 3)
    assert capped.counts == {"blue": 3, "green": 3, "red": 3}
    assert ui.cap_per_class(report, 3).items == capped.items  # reproducible
    assert ui.cap_per_class(report, 0) is report and ui.cap_per_class(report, 100) is report
    assert report.num_images == 24  # the original is untouched


def test_gallery_thumbnails(color_dataset):
    report = scan_folder(color_dataset)
    items = ui.sample_items(report, per_class=2)
    assert [c for _, c in items] == ["blue", "blue", "green", "green", "red", "red"]
    gallery = ui.sample_gallery(items + [(color_dataset / "missing.png", "gone")], size=32)
    assert len(gallery) == 6  # a file that vanished is left out, not an error
    assert all(isinstance(im, Image.Image) and max(im.size) <= 32 for im, _ in gallery)


def test_progress_and_history():
    p = Progress("train", 2, 5, 3, 10, 0.42, 12.5, 75.0, 0.91, 0.6)
    text = ui.progress_text(p)
    assert text == "epoch 2/5 · training 3/10 · 42% · 12.5 images/s · ETA 1m15s · loss 0.910 · acc 60%"
    assert "ETA ?" in ui.progress_text(Progress("features", 0, 5, 1, 10, 0.0, 0.0, None))
    html = ui.progress_html(0.42, "a <b>", "running")
    assert 'width:42.0%' in html and "a &lt;b&gt;" in html
    assert ui.format_duration(3725) == "1h02m"
    hist = [EpochStats(1, 1.0, 0.5, 1.2, 0.4, 1e-3, 1.0), {"epoch": 2, "train_loss": 0.5, "train_accuracy": 0.8,
                                                            "val_loss": 0.7, "val_accuracy": 0.7}]
    loss, acc = ui.history_frames(hist)
    assert loss.to_dict("list") == {"epoch": [1, 1, 2, 2], "loss": [1.0, 1.2, 0.5, 0.7],
                                    "series": ["train", "validation"] * 2}
    assert acc["accuracy"].tolist() == [0.5, 0.4, 0.8, 0.7]


def test_metrics_views():
    assert ui.confusion_figure([], []) is None
    metrics = {"accuracy": 0.75, "num_images": 8, "classes": ["a", "b"], "confusion_matrix": [[3, 1], [1, 3]],
               "per_class": {"a": {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4},
                             "b": {"precision": 0.75, "recall": 0.5, "f1": 0.6, "support": 4}}}
    fig = ui.confusion_figure(metrics["classes"], metrics["confusion_matrix"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    assert sorted(t.get_text() for t in ax.texts) == ["1", "1", "3", "3"]
    md = ui.metrics_markdown(metrics)
    assert "75.0%" in md and "Hardest class: b" in md
    assert ui.per_class_frame(metrics)["recall"].tolist() == [0.75, 0.5]
    assert "No evaluation yet" in ui.metrics_markdown(None)


def test_add_class_images(tmp_path, color_dataset):
    root = tmp_path / "classes"
    reds = sorted((color_dataset / "red").iterdir())
    ui.add_class_images(root, " red ", reds[:3])
    ui.add_class_images(root, "red", reds[:2])  # same names again: kept, not overwritten
    ui.add_class_images(root, "blue", sorted((color_dataset / "blue").iterdir())[:2])
    report = scan_folder(root)
    assert report.counts == {"blue": 2, "red": 5}
    for bad in ("", "  ", "..", "a/b", ".hidden"):
        with pytest.raises(DataError):
            ui.add_class_images(root, bad, reds[:1])
    with pytest.raises(DataError, match="Drop one or more images"):
        ui.add_class_images(root, "green", [])


def test_model_zip_round_trip(tmp_path, color_dataset):
    model = xfer.train(color_dataset, backbone="resnet18", strategy="head", weights=None, image_size=32,
                       config=xfer.TrainConfig(epochs=1, batch_size=8), device=xfer.select_device("cpu", num_workers=0),
                       out=tmp_path / "model")
    name = ui.model_zip_name(model)
    assert name == "xfer-resnet18-head-3classes"
    z = ui.zip_model_dir(tmp_path / "model", tmp_path / "dl" / f"{name}.zip")
    with zipfile.ZipFile(z) as zf:
        assert sorted(zf.namelist()) == [f"{name}/README.md", f"{name}/config.json", f"{name}/model.safetensors"]
        assert zf.getinfo(f"{name}/model.safetensors").compress_type == zipfile.ZIP_STORED
    extract_zip(z, tmp_path / "up")
    loaded = xfer.load_model(ui.find_model_folder(tmp_path / "up"))
    img = sorted((color_dataset / "green").iterdir())[0]
    assert torch.allclose(xfer.predict_proba(loaded, [img]), xfer.predict_proba(model, [img]), atol=1e-6)
    assert "resnet18" in ui.model_markdown(loaded, "x") and "3 classes" in ui.model_markdown(loaded, "x")
    with pytest.raises(ModelError):
        ui.find_model_folder(tmp_path / "dl")
    with pytest.raises(ModelError):
        ui.zip_model_dir(tmp_path / "dl", tmp_path / "x.zip")


def test_learning_rate_field_follows_the_strategy_unless_fixed():
    assert ui.strategy_lr("finetune") == xfer.STRATEGIES["finetune"].lr == 3e-3
    assert ui.strategy_lr("truncate") == 1e-3 and ui.strategy_lr(None) == 1e-3
    assert ui.strategy_lr("finetune", fixed=5e-4) == 5e-4
