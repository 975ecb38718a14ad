"""xfer.studio.session and .views: the app's state and what it shows, without a browser (real files, a real tiny model)."""

from __future__ import annotations

import copy
import os
import time
import zipfile

import pandas as pd
import pytest
import torch
from PIL import Image

import xfer
from xfer.data import extract_zip, scan_folder
from xfer.engine import EpochStats, Progress
from xfer.errors import DataError, ModelError
from xfer.studio import session, views


def test_session_copies_are_fresh_and_private(tmp_path, monkeypatch):
    monkeypatch.setenv("XFER_CACHE_DIR", str(tmp_path))
    template = session.Session(session.AppConfig(allow_server_paths=False))
    a, b = copy.deepcopy(template), copy.deepcopy(template)  # what gr.State does per visitor
    assert a.id != b.id and a.id != template.id
    assert a.config is template.config and not a.config.allow_server_paths  # the app's settings, shared
    assert not (tmp_path / "sessions").exists()  # nothing is created until a folder is needed
    a.run = xfer.TrainingRun(lambda callback, cancel: cancel.wait(60))
    a.run.start()
    assert a.training and not b.training and b.run is None
    d = a.new_dir("zip")
    assert d.is_dir() and d.parent == tmp_path / "sessions" / a.id
    assert a.new_dir("zip") != d
    a.close()  # the visitor left: their run is asked to stop, their folder goes
    assert not (tmp_path / "sessions" / a.id).exists() and a.run.stopping
    assert isinstance(a.run.wait(60), xfer.Failed) and not a.training


def test_cleanup_stale_sessions(tmp_path, monkeypatch):
    monkeypatch.setenv("XFER_CACHE_DIR", str(tmp_path))
    old, new = session.Session(), session.Session()
    _ = old.workdir, new.workdir  # made (and dated) now
    past = time.time() - 3 * 24 * 3600
    os.utime(old.workdir, (past, past))
    assert session.cleanup_stale_sessions(max_age_s=24 * 3600) == 1
    assert not old.workdir.exists() and new.workdir.exists()
    # A running server does it too, at most hourly, when a new visitor's folder is made.
    stale = tmp_path / "sessions" / "left-by-an-api-client"
    stale.mkdir()
    os.utime(stale, (past, past))
    monkeypatch.setattr(session, "_LAST_CLEANUP", [time.monotonic() - session.CLEANUP_EVERY_S - 1])
    _ = session.Session().workdir
    assert not stale.exists() and new.workdir.exists()
    stale.mkdir()
    os.utime(stale, (past, past))
    _ = session.Session().workdir  # within the hour: left for the next round
    assert stale.exists()


def test_report_views(color_dataset):
    (color_dataset / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    (color_dataset / "blue" / "copy.png").write_bytes((color_dataset / "red" / "red_000.png").read_bytes())
    report = scan_folder(color_dataset)
    counts = views.counts_frame(report)
    assert counts.to_dict("list") == {"class": ["blue", "green", "red"], "images": [9, 8, 8]}
    skipped = views.skipped_frame(report)
    assert list(skipped.columns) == ["file", "reason"]
    assert "red/broken.jpg" in skipped["file"].tolist()  # relative to the dataset, not the server's folders
    assert any("across classes" in r or "classes blue, red" in r for r in skipped["reason"])
    md = views.report_markdown(report, "colors.zip")
    assert "25 images in 3 classes" in md and "1 file skipped" in md and "identical" in md
    assert "colors.zip" in md and str(color_dataset) not in md
    one_class = scan_folder(color_dataset / "red" / "..", min_images=100)
    assert "at least 2 classes" in views.report_markdown(one_class)


def test_cap_per_class(color_dataset):
    report = scan_folder(color_dataset)
    capped = session.cap_per_class(report, 3)
    assert capped.counts == {"blue": 3, "green": 3, "red": 3}
    assert session.cap_per_class(report, 3).items == capped.items  # reproducible
    assert session.cap_per_class(report, 0) is report and session.cap_per_class(report, 100) is report
    assert report.num_images == 24  # the original is untouched


def test_gallery_thumbnails(color_dataset):
    report = scan_folder(color_dataset)
    items = views.sample_items(report, per_class=2)
    assert [c for _, c in items] == ["blue", "blue", "green", "green", "red", "red"]
    gallery = views.sample_gallery(items + [(color_dataset / "missing.png", "gone")], size=32)
    assert len(gallery) == 6  # a file that vanished is left out, not an error
    assert all(isinstance(im, Image.Image) and max(im.size) <= 32 for im, _ in gallery)


def test_progress_and_history():
    p = Progress("train", 2, 5, 3, 10, 0.42, 12.5, 75.0, 0.91, 0.6)
    text = views.progress_text(p)
    assert text == "epoch 2/5 · training 3/10 · 42% · 12.5 images/s · ETA 1m15s · loss 0.910 · acc 60%"
    assert "ETA ?" in views.progress_text(Progress("features", 0, 5, 1, 10, 0.0, 0.0, None))
    html = views.progress_html(0.42, "a <b>", "running")
    assert 'width:42.0%' in html and "a &lt;b&gt;" in html
    assert views.format_duration(3725) == "1h02m"
    hist = [EpochStats(1, 1.0, 0.5, 1.2, 0.4, 1e-3, 1.0), {"epoch": 2, "train_loss": 0.5, "train_accuracy": 0.8,
                                                            "val_loss": 0.7, "val_accuracy": 0.7}]
    loss, acc = views.history_frames(hist)
    # Whole epochs: a category per epoch (a numeric axis would tick at 1.5), drawn in epoch order.
    assert loss.to_dict("list") == {"epoch": ["1", "1", "2", "2"], "loss": [1.0, 1.2, 0.5, 0.7],
                                    "series": ["train", "validation"] * 2}
    assert acc["accuracy"].tolist() == [0.5, 0.4, 0.8, 0.7]
    assert views.epoch_order(12)[:3] == ["1", "2", "3"] and views.epoch_order(12)[-1] == "12"
    assert pd.api.types.is_string_dtype(views.history_frames([])[0]["epoch"])  # strings even when empty


def test_epoch_axis_of_the_curves_is_whole_epochs():
    from xfer import studio

    demo = studio.build_demo(xfer.select_device("cpu"), studio.AppDefaults(backbone="resnet18"))
    plots = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None) in ("loss-plot", "acc-plot")}
    hist = [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5}
            for e in range(1, 11)]
    for plot in plots.values():
        assert plot.x == "epoch" and plot.sort == views.epoch_order(50)  # "10" after "9", not after "1"
        shown = plot.postprocess(views.history_frames(hist)[0])
        assert shown.datatypes["epoch"] == "nominal"  # one tick per epoch, none between
        assert sorted({row[0] for row in shown.data}, key=plot.sort.index) == [str(e) for e in range(1, 11)]


def _scene(seed: int, size: int = 96) -> Image.Image:
    """A smooth random picture (distinct per seed), like a photo to the difference hash."""
    import random

    from PIL import ImageDraw, ImageFilter

    rng = random.Random(seed)
    img = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y, r = rng.randrange(size), rng.randrange(size), rng.randrange(8, size // 2)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    return img.filter(ImageFilter.GaussianBlur(2))


def test_report_shows_near_duplicates_within_and_across_classes(tmp_path):
    for c, cls in enumerate(("cats", "dogs")):
        (tmp_path / cls).mkdir()
        for i in range(6):
            _scene(100 * c + i).save(tmp_path / cls / f"{i}.png")
    _scene(2).resize((70, 70)).save(tmp_path / "cats" / "small.jpg", quality=50)  # within cats
    _scene(104).point(lambda v: int(v * 0.85)).save(tmp_path / "cats" / "dark.jpg", quality=80)  # a dog in cats
    report = scan_folder(tmp_path)
    assert len(report.near_duplicates) == 2
    md = views.report_markdown(report, "pets.zip")
    assert "2 groups of near-duplicate images" in md and "(1 across classes)" in md
    reasons = dict(zip(*views.skipped_frame(report).to_dict("list").values(), strict=True))
    assert reasons["cats/2.png, cats/small.jpg"] == "near-duplicates (resized or recompressed copies) in class cats"
    assert reasons["cats/dark.jpg, dogs/4.png"] == ("near-duplicates (resized or recompressed copies) in classes "
                                                     "cats, dogs")
    assert str(tmp_path) not in md and all(str(tmp_path) not in f for f in reasons)
    capped = session.cap_per_class(report, 3)
    assert capped.near_duplicates == report.near_duplicates  # the Train tab's cap keeps the report's groups


def test_metrics_views():
    assert views.confusion_figure([], []) is None
    metrics = {"accuracy": 0.75, "num_images": 8, "classes": ["a", "b"], "confusion_matrix": [[3, 1], [1, 3]],
               "per_class": {"a": {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4},
                             "b": {"precision": 0.75, "recall": 0.5, "f1": 0.6, "support": 4}}}
    fig = views.confusion_figure(metrics["classes"], metrics["confusion_matrix"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    assert sorted(t.get_text() for t in ax.texts) == ["1", "1", "3", "3"]
    md = views.metrics_markdown(metrics)
    assert "75.0%" in md and "Hardest class: b" in md
    assert views.per_class_frame(metrics)["recall"].tolist() == [0.75, 0.5]
    assert "No evaluation yet" in views.metrics_markdown(None)


def test_add_class_images(tmp_path, color_dataset):
    root = tmp_path / "classes"
    reds = sorted((color_dataset / "red").iterdir())
    session.add_class_images(root, " red ", reds[:3])
    session.add_class_images(root, "red", reds[:2])  # same names again: kept, not overwritten
    session.add_class_images(root, "blue", sorted((color_dataset / "blue").iterdir())[:2])
    report = scan_folder(root)
    assert report.counts == {"blue": 2, "red": 5}
    for bad in ("", "  ", "..", "a/b", ".hidden"):
        with pytest.raises(DataError):
            session.add_class_images(root, bad, reds[:1])
    with pytest.raises(DataError, match="Drop one or more images"):
        session.add_class_images(root, "green", [])


def test_model_zip_round_trip(tmp_path, color_dataset):
    model = xfer.train(color_dataset, backbone="resnet18", strategy="head", weights=None, image_size=32,
                       config=xfer.TrainConfig(epochs=1, batch_size=8), device=xfer.select_device("cpu", num_workers=0),
                       out=tmp_path / "model")
    name = session.model_zip_name(model)
    assert name == "xfer-resnet18-head-3classes"
    z = session.zip_model_dir(tmp_path / "model", tmp_path / "dl" / f"{name}.zip")
    with zipfile.ZipFile(z) as zf:
        assert sorted(zf.namelist()) == [f"{name}/README.md", f"{name}/config.json", f"{name}/model.safetensors"]
        assert zf.getinfo(f"{name}/model.safetensors").compress_type == zipfile.ZIP_STORED
    extract_zip(z, tmp_path / "up")
    loaded = xfer.load_model(session.find_model_folder(tmp_path / "up"))
    img = sorted((color_dataset / "green").iterdir())[0]
    assert torch.allclose(xfer.predict_proba(loaded, [img]), xfer.predict_proba(model, [img]), atol=1e-6)
    assert "resnet18" in views.model_markdown(loaded, "x") and "3 classes" in views.model_markdown(loaded, "x")
    with pytest.raises(ModelError):
        session.find_model_folder(tmp_path / "dl")
    with pytest.raises(ModelError):
        session.zip_model_dir(tmp_path / "dl", tmp_path / "x.zip")


def test_learning_rate_field_follows_the_strategy_unless_fixed():
    assert views.strategy_lr("finetune") == xfer.STRATEGIES["finetune"].lr == 3e-3
    assert views.strategy_lr("truncate") == 1e-3 and views.strategy_lr(None) == 1e-3
    assert views.strategy_lr("finetune", fixed=5e-4) == 5e-4
