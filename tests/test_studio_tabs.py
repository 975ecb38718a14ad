"""The tabs' handlers called directly, as the page calls them, without a server: a real tiny dataset and model."""

from __future__ import annotations

import zipfile
from pathlib import Path

import gradio as gr
import pytest

import xfer
from tests.conftest import make_color_dataset
from xfer.studio import AppConfig, AppDefaults, Session
from xfer.studio.tabs import data, evaluate, predict, share, train
from xfer.studio.tabs.predict import ModelValues

# The Train tab's inputs after the session: backbone, strategy, epochs, lr, batch size, image size, augment,
# ImageNet weights, images per class.
QUICK = ("resnet18", "head", 1, 1e-2, 8, 32, False, False, 0)


@pytest.fixture
def session(tmp_path, monkeypatch) -> Session:
    monkeypatch.setenv("XFER_CACHE_DIR", str(tmp_path / "cache"))
    config = AppConfig(xfer.select_device("cpu", num_workers=0), AppDefaults(backbone="resnet18", lr=1e-2))
    return Session(config)


@pytest.fixture
def colors_zip(tmp_path) -> Path:
    root = make_color_dataset(tmp_path / "colors", per_class=6)
    dest = tmp_path / "colors.zip"
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(root.rglob("*.png")):
            zf.write(f, f.relative_to(root.parent))
    return dest


def run_training(session: Session, *settings) -> list[tuple]:
    return list(train.on_train(session, *(settings or QUICK)))


def test_data_handlers(session, colors_zip, tmp_path):
    with pytest.raises(gr.Error, match="Choose a .zip"):
        data.on_upload_zip(session, None)
    values = data.on_upload_zip(session, str(colors_zip))
    assert "18 images in 3 classes" in values.summary and "colors.zip" in values.summary
    assert values.counts["images"].tolist() == [6, 6, 6] and values.examples == values.gallery
    assert len(session.example_paths) == len(values.gallery) == 12  # 4 per class, the Predict tab's examples
    rec = train.on_recommend(session, 0)
    assert rec.strategy in xfer.STRATEGIES and f"Recommended: {rec.strategy}" in rec.advisor
    reds = sorted((tmp_path / "colors" / "red").iterdir())
    *shown, class_name, images = data.on_add_images(session, "red", [str(p) for p in reds[:2]])
    assert (class_name, images) == ("", None) and "2 images in 1 class" in shown[0]
    assert "at least 2 classes" in shown[0]
    assert "advisor recommends" in train.on_recommend(session, 0).advisor  # one class: no advice
    with pytest.raises(gr.Error, match="Type a class name"):
        data.on_add_images(session, " ", [str(reds[0])])
    cleared = data.on_clear_classes(session)
    assert cleared.summary.startswith("Classes cleared") and session.report is None and cleared.examples == []


def test_train_then_evaluate_predict_download_and_load(session, colors_zip, tmp_path):
    with pytest.raises(gr.Error, match="no dataset yet"):
        run_training(session)
    with pytest.raises(gr.Error, match="no model yet"):
        evaluate.on_evaluate(session, 0)
    data.on_upload_zip(session, str(colors_zip))
    updates = run_training(session)
    assert all(len(u) == 4 + len(ModelValues._fields) for u in updates)  # every output, in build_demo's order
    assert "Training resnet18 with the **head** strategy on 18 images" in updates[0][1]
    assert any("xfer-progress" in str(u[0]) and "epoch 1/1" in str(u[0]) for u in updates)
    progress, status, loss, acc, *model = updates[-1]
    assert status.startswith("**Done: validation accuracy") and 'data-fraction="1.0000"' in progress
    assert loss["series"].tolist() == ["train", "validation"] and not session.training
    model = ModelValues(*model)
    assert "the model you just trained" in model.model_info and "Validation accuracy" in model.summary
    assert (session.trained_model_dir / "config.json").is_file() and session.model_dir == session.trained_model_dir

    result = evaluate.on_evaluate(session, 0)
    assert "Accuracy on the current dataset" in result.summary and "18 images" in result.summary
    image = xfer.open_image(sorted((tmp_path / "colors" / "green").iterdir())[0])
    top = predict.on_predict(session, image)
    assert set(top) == {"blue", "green", "red"} and abs(sum(top.values()) - 1) < 1e-4
    with pytest.raises(gr.Error, match="Add an image first"):
        predict.on_predict(session, None)
    assert predict.on_explain(session, None) is None

    zip_path = share.on_download(session)
    assert Path(zip_path).name == "xfer-resnet18-head-3classes.zip"
    with pytest.raises(gr.Error, match="Type a repository id"):
        share.on_push(session, " ", True, "")
    other = Session(session.config)  # another visitor, loading that download
    loaded = predict.on_upload_model(other, zip_path)
    assert "the uploaded model xfer-resnet18-head-3classes.zip" in loaded.model_info
    assert predict.on_predict(other, image) == pytest.approx(top, abs=1e-5)
    by_folder = predict.on_load_model_dir(Session(session.config), str(session.trained_model_dir))
    assert "Metrics saved with the model" in by_folder.summary
    with pytest.raises(gr.Error, match="turned off"):
        predict.on_load_model_dir(Session(AppConfig(session.config.device, allow_server_paths=False)),
                                  str(session.trained_model_dir))


def test_stop_keeps_the_previous_model(session, colors_zip):
    assert train.on_stop(session)[0] == "Nothing is training right now."
    data.on_upload_zip(session, str(colors_zip))
    run_training(session)
    first, first_files = session.model, (session.trained_model_dir / "model.safetensors").read_bytes()
    updates = train.on_train(session, "resnet18", "finetune", 50, 1e-3, 4, 32, True, False, 0)
    next(updates)  # started
    while "epoch" not in str(next(updates)[0]):  # under way
        pass
    with pytest.raises(gr.Error, match="already going on"):
        next(train.on_train(session, *QUICK))
    status, progress = train.on_stop(session)  # returns once the run has ended, after its current batch
    assert status.startswith("**Training was stopped.**") and "previous model is still used" in status
    assert "Stopped." in progress and not session.training
    with pytest.warns(UserWarning, match="Training stopped"):  # gr.Warning outside a page
        *_, last = updates
    assert last[1].startswith("**Training was stopped.**")
    assert session.model is first and (session.trained_model_dir / "model.safetensors").read_bytes() == first_files

    # The page's Stop also cancels the training event: its generator may be closed before on_stop runs.
    updates = train.on_train(session, "resnet18", "finetune", 50, 1e-3, 4, 32, True, False, 0)
    while "epoch" not in str(next(updates)[0]):
        pass
    updates.close()
    assert train.on_stop(session)[0].startswith("**Training was stopped.**")
    assert session.model is first and not session.training
    assert train.on_stop(session)[0] == "Nothing is training right now."  # a second click: answered once


def test_failures_are_one_line_messages(session, colors_zip):
    data.on_upload_zip(session, str(colors_zip))
    with pytest.raises(gr.Error, match="batch size must be a whole number of at least 1"):
        run_training(session, "resnet18", "head", 1, 1e-2, 0, 32, False, False, 0)
    with pytest.raises(gr.Error, match="Unknown backbone|not a known backbone|backbone"):
        run_training(session, "no-such-net", "head", 1, 1e-2, 8, 32, False, False, 0)
    assert session.model is None and not session.training
