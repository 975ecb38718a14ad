"""app.py and xfer.studio without a server: what importing does, how the app is wired, how errors are shown."""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys

import gradio as gr
import pytest
import torch

import xfer
from app_server import ROOT
from xfer import studio
from xfer.presets import get_preset
from xfer.studio.errors import ui_errors
from xfer.studio.tabs import predict


def test_import_does_nothing_heavy(tmp_path):
    # No device choice, no dataset scan, no folder: just definitions.
    code = ("import sys, app, os; assert 'xfer.explain' not in sys.modules and 'xfer.studio' in sys.modules; "
            "print(sorted(os.listdir(os.environ['XFER_CACHE_DIR'])))")
    (tmp_path / "cache").mkdir()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "XFER_CACHE_DIR": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _deps(demo: gr.Blocks) -> dict[str, dict]:
    return {d["api_name"]: d for d in demo.config["dependencies"] if d.get("api_visibility") == "public"}


def test_wiring_and_queue_settings():
    demo = studio.build_demo(xfer.select_device("cpu"), studio.AppDefaults(backbone="resnet18", image_size=64),
                          max_train_jobs=2)
    deps = _deps(demo)
    assert {"use_flowers", "upload_zip", "add_images", "clear_classes", "recommend", "train", "stop", "evaluate",
            "predict", "explain", "load_model_dir", "upload_model", "download_model", "push", "pull"} <= set(deps)
    fns = {fn.api_name: fn for fn in demo.fns.values()}
    # Training runs max_train_jobs at a time (all visitors together); evaluation shares that slot.
    assert fns["train"].concurrency_id == fns["evaluate"].concurrency_id == "train"
    assert fns["train"].concurrency_limit == 2
    # Prediction and Stop never wait behind a training run.
    assert fns["predict"].concurrency_id == "predict" and fns["predict"].concurrency_limit == 4
    assert fns["stop"].concurrency_id == "stop" and fns["stop"].concurrency_limit is None
    # Stop also cancels a run still waiting in the queue.
    cancel_fns = [fn for fn in demo.fns.values() if fn.cancels]
    assert any(fns["train"]._id in fn.cancels for fn in cancel_fns)
    ids = {b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert {"use-flowers", "upload-zip", "data-summary", "class-counts", "train-btn", "stop-btn", "train-progress",
            "loss-plot", "eval-summary", "confusion", "misclassified", "predict-image", "predict-label", "gradcam",
            "download-btn", "push-btn", "pull-btn", "device-info", "advisor"} <= ids


def test_defaults_follow_the_device():
    cpu = studio.build_demo(xfer.select_device("cpu"))
    by_id = {b.elem_id: b for b in cpu.blocks.values() if getattr(b, "elem_id", None)}
    quick = get_preset("quick")  # the default preset: every image, its backbone, epochs and image size
    assert by_id["max-per-class"].value == 0 and by_id["backbone"].value == quick.backbone
    assert "CPU" in by_id["device-info"].value and by_id["preset"].value == "quick"
    assert by_id["pretrained"].value is True and by_id["epochs"].value == quick.epochs
    assert by_id["image-size"].value == quick.image_size
    gpu = studio.build_demo(dataclasses.replace(xfer.select_device("cpu"), device=torch.device("cuda")))
    by_id = {b.elem_id: b for b in gpu.blocks.values() if getattr(b, "elem_id", None)}
    assert by_id["image-size"].value == quick.on("cuda").image_size > quick.image_size  # bigger on a GPU
    assert by_id["epochs"].value == quick.on("cuda").epochs and "not measured" in by_id["preset-info"].value


def test_errors_become_one_line_messages(caplog):
    @ui_errors
    def user_mistake():
        raise xfer.DataError("x.zip is not a zip archive: upload a .zip of one folder per class.")

    @ui_errors
    def bug():
        raise KeyError("oops")

    @ui_errors
    def gen():
        yield 1
        raise xfer.WeightsError("Could not download vgg16's ImageNet weights.")

    with pytest.raises(gr.Error) as e:
        user_mistake()
    assert e.value.message == "x.zip is not a zip archive: upload a .zip of one folder per class."
    with pytest.raises(gr.Error) as e:
        bug()
    assert e.value.message.startswith("Something went wrong (KeyError") and "server log" in e.value.message
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)  # the details are logged
    g = gen()
    assert next(g) == 1
    with pytest.raises(gr.Error) as e:
        next(g)
    assert "Start from ImageNet weights" in e.value.message  # the library's advice, in this page's words


def test_command_line(monkeypatch):
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    args = studio.parse_args([])
    assert (args.host, args.port, args.share, args.max_train_jobs) == ("0.0.0.0", 7999, False, 1)
    args = studio.parse_args(["--host", "127.0.0.1", "--port", "8000", "--share", "--max-train-jobs", "3",
                           "--default-weights", "none", "--default-max-per-class", "0"])
    assert (args.host, args.port, args.share, args.max_train_jobs) == ("127.0.0.1", 8000, True, 3)
    assert args.default_weights == "none" and args.default_max_per_class == 0


def test_server_paths_can_be_turned_off(tmp_path):
    # On a public deployment, visitors must not be able to load (probe) arbitrary server folders.
    demo = studio.build_demo(xfer.select_device("cpu"), studio.AppDefaults(backbone="resnet18"), allow_server_paths=False)
    state = next(b for b in demo.blocks.values() if isinstance(b, gr.State))
    visitor = copy.deepcopy(state.value)  # what a visitor's session starts as
    with pytest.raises(gr.Error, match="turned off"):
        predict.on_load_model_dir(visitor, str(tmp_path))
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    column = by_id["model-dir"]
    while not isinstance(column, gr.Column):
        column = column.parent
    assert column.visible is False  # and the page does not offer it
    assert studio.parse_args(["--host", "0.0.0.0"]).allow_server_paths == "auto"
