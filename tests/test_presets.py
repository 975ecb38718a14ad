"""Presets: the table, applied by the CLI, the API and the app, overridden by explicit settings, saved in config.json."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import zipfile

import gradio as gr
import pytest

import xfer
from tests.conftest import ROOT, make_color_dataset
from xfer import studio
from xfer.cli import build_parser
from xfer.data import scan_folder
from xfer.engine import TrainConfig
from xfer.presets import DEFAULT_PRESET, PRESETS, get_preset, presets_table
from xfer.studio import AppConfig, AppDefaults, Session
from xfer.studio.tabs import data, train

CPU = xfer.select_device("cpu", num_workers=0)


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "xfer", *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)


def saved_training(folder) -> dict:
    return json.loads((folder / "config.json").read_text())["xfer"]["training"]


def test_the_table():
    assert DEFAULT_PRESET == "quick" and set(PRESETS) == {"quick", "best"}
    quick, best = get_preset(None), get_preset("best")
    assert quick is PRESETS["quick"] and (quick.strategy, quick.epochs, quick.cache_views) == ("finetune", 5, 1)
    assert (quick.frozen_stages, quick.cache_frozen, quick.train_config().cache_frozen) == (7, True, True)
    assert (quick.train_config().lr, quick.train_config().body_lr, quick.train_config(body_lr=2e-4).body_lr) == (
        1e-3, 1e-3, 2e-4)
    # Another backbone gets the preset's settings for other backbones (its own recipe is sized for Lite0).
    other = quick.for_backbone("resnet18")
    assert (other.backbone, other.strategy, other.epochs, other.cache_frozen, other.frozen_stages, other.body_lr) == (
        "resnet18", "head", 15, False, None, None)
    assert quick.for_backbone("efficientnet_lite0") is quick and quick.for_backbone(None) is quick
    assert other.on("cuda").epochs == 30 and get_preset("best").for_backbone("resnet18").strategy == "finetune"
    assert (best.strategy, best.image_size, best.epochs, best.frozen_stages, best.cache_frozen) == (
        "finetune", 256, 6, 6, True)
    # best on a GPU or with another backbone: the uncached finetune, augmented images every epoch.
    assert (best.on("cuda").cache_frozen, best.on("cuda").frozen_stages, best.on("cuda").lr) == (False, None, None)
    best_other = best.for_backbone("resnet18")
    assert (best_other.epochs, best_other.cache_frozen, best_other.frozen_stages, best_other.body_lr) == (
        4, False, None, None)
    gpu_other = best_other.on("cuda")
    assert (gpu_other.image_size, gpu_other.epochs, gpu_other.frozen_stages, gpu_other.cache_frozen, gpu_other.lr) == (
        320, 10, None, False, None)
    assert quick.max_per_class is None and best.max_per_class is None  # every image
    with pytest.raises(xfer.ConfigError, match="Unknown preset 'fast': choose one of quick, best"):
        get_preset("fast")
    # On a GPU: bigger images and more epochs; a CPU keeps the table's values.
    for p in PRESETS.values():
        gpu = p.on("cuda")
        assert gpu.image_size > p.image_size and gpu.epochs > p.epochs and p.on("cpu") is p
    # Given settings replace the preset's; None means "not given".
    cfg = quick.train_config(epochs=2, lr=None, seed=3)
    assert (cfg.epochs, cfg.lr, cfg.seed, cfg.cache_views, cfg.label_smoothing) == (2, 1e-3, 3, 1, 0.1)
    assert best.train_config(cache_views=2).cache_views == 2 and best.train_config().epochs == 6
    # Frozen stages are the preset's for its own strategy and backbone only.
    assert best.frozen_for("finetune", best.backbone) == 6 and best.frozen_for("finetune", "resnet18") is None
    assert quick.expected_seconds(3130) == pytest.approx(quick.cpu_minutes * 60)
    assert quick.expected_seconds(3130, cores=4) == pytest.approx(quick.cpu_minutes * 30)
    assert quick.expected_seconds(100, "cuda") is None
    table = presets_table()
    assert "quick (default)" in table and "best" in table and "cache_views" in table
    assert presets_table(markdown=True).count("\n") == 1 + len(PRESETS)


def test_cli_options_default_to_not_given_and_help_lists_the_presets():
    parser = build_parser()
    args = parser.parse_args(["train", "--data", "d", "--out", "o"])
    assert args.preset is None
    for dest in ("backbone", "strategy", "epochs", "image_size", "lr", "body_lr", "label_smoothing", "cache_views",
                 "cache_frozen", "frozen_stages"):
        assert getattr(args, dest) is None, dest  # so that the preset's value is used
    args = parser.parse_args(["train", "--data", "d", "--out", "o", "--preset", "best", "--epochs", "2",
                              "--strategy", "auto", "--label-smoothing", "0"])
    assert (args.preset, args.epochs, args.strategy, args.label_smoothing) == ("best", 2, "auto", 0.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--data", "d", "--out", "o", "--preset", "slow"])
    help_text = cli("train", "--help").stdout
    assert "--preset {quick,best}" in help_text and "--cache-frozen, --no-cache-frozen" in help_text
    assert "quick (default): efficientnet_lite0, finetune, 5 epochs" in " ".join(help_text.split())
    listed = cli("presets")
    assert listed.returncode == 0 and "quick (default)" in listed.stdout and "on a GPU" in listed.stdout


def test_cli_train_applies_the_preset_and_explicit_flags_override_it(tmp_path):
    colors = make_color_dataset(tmp_path / "colors", per_class=6, size=24)
    r = cli("train", "--data", str(colors), "--out", str(tmp_path / "quick"), "--weights", "none")
    assert r.returncode == 0, r.stderr
    assert "preset quick: backbone efficientnet_lite0, strategy finetune, epochs 5" in r.stderr
    assert "overridden" not in r.stderr
    t = saved_training(tmp_path / "quick")
    assert (t["preset"], t["epochs"], t["image_size"], t["cache_views"], t["label_smoothing"], t["cache_frozen"],
            t["frozen_stages"]) == ("quick", 5, 224, 1, 0.1, True, 7)
    cfg = json.loads((tmp_path / "quick" / "config.json").read_text())["xfer"]
    assert (cfg["backbone"], cfg["strategy"]) == ("efficientnet_lite0", "finetune")
    # Another backbone: the preset's settings for other backbones (a frozen body's head, 15 epochs).
    r = cli("train", "--data", str(colors), "--out", str(tmp_path / "other"), "--weights", "none",
            "--backbone", "resnet18", "--image-size", "32")
    assert r.returncode == 0, r.stderr
    assert "preset quick: backbone resnet18, strategy head, epochs 15" in r.stderr
    t = saved_training(tmp_path / "other")
    assert (t["epochs"], t["cache_frozen"]) == (15, False)

    r = cli("train", "--data", str(colors), "--out", str(tmp_path / "best"), "--weights", "none", "--preset", "best",
            "--epochs", "1", "--image-size", "32", "--label-smoothing", "0", "--batch-size", "8")
    assert r.returncode == 0, r.stderr
    assert "(overridden: --epochs 1, --image-size 32, --label-smoothing 0.0)" in r.stderr
    t = saved_training(tmp_path / "best")
    assert (t["preset"], t["epochs"], t["image_size"], t["label_smoothing"], t["frozen_stages"]) == (
        "best", 1, 32, 0.0, 6)  # the flags, and the preset where no flag was given
    assert json.loads((tmp_path / "best" / "config.json").read_text())["xfer"]["strategy"] == "finetune"


def test_api_default_is_the_quick_preset(tmp_path):
    assert inspect.signature(xfer.train).parameters["preset"].default == "quick"
    report = scan_folder(make_color_dataset(tmp_path / "colors", per_class=6, size=24))
    model = xfer.train(report, backbone="resnet18", weights=None, image_size=32, device=CPU, out=tmp_path / "m")
    t = saved_training(tmp_path / "m")
    assert model.strategy == "head" and t["preset"] == "quick"
    assert (t["epochs"], t["cache_views"], t["label_smoothing"], t["image_size"]) == (15, 1, 0.1, 32)
    model = xfer.train(report, weights=None, image_size=32, device=CPU)  # the preset's own backbone and recipe
    assert (model.backbone, model.strategy, model.spec.frozen_stages) == ("efficientnet_lite0", "finetune", 7)
    assert (model.training["epochs"], model.training["cache_frozen"]) == (5, True)
    # An explicit config is used as given; preset=None is the plain defaults (the advisor, TrainConfig()).
    model = xfer.train(report, backbone="resnet18", weights=None, image_size=32, device=CPU, preset=None,
                       config=TrainConfig(epochs=1, batch_size=8))
    assert model.training["preset"] is None and model.recommendation is not None
    assert (model.training["epochs"], model.training["cache_views"]) == (1, 1)
    with pytest.raises(xfer.ConfigError, match="Unknown preset"):
        xfer.train(report, backbone="resnet18", weights=None, device=CPU, preset="fast")


# --- the app -------------------------------------------------------------------------------------


@pytest.fixture
def session(tmp_path, monkeypatch) -> Session:
    monkeypatch.setenv("XFER_CACHE_DIR", str(tmp_path / "cache"))
    return Session(AppConfig(CPU, AppDefaults(backbone="resnet18")))


@pytest.fixture
def colors_zip(tmp_path):
    root = make_color_dataset(tmp_path / "colors", per_class=6, size=24)
    dest = tmp_path / "colors.zip"
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(root.rglob("*.png")):
            zf.write(f, f.relative_to(root.parent))
    return dest


def test_train_tab_shows_the_presets_with_their_expected_time():
    demo = studio.build_demo(CPU)
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    radio = by_id["preset"]
    assert isinstance(radio, gr.Radio) and radio.value == "quick"
    assert [value for _, value in radio.choices] == ["quick", "best"]
    assert "Expected time here" in by_id["preset-info"].value and "3,130" in by_id["preset-info"].value
    quick = PRESETS["quick"]
    # The app's defaults are the quick preset's, every image included.
    assert (by_id["strategy"].value, by_id["epochs"].value, by_id["image-size"].value) == (
        quick.strategy, quick.epochs, quick.image_size)
    assert by_id["backbone"].value == quick.backbone and by_id["max-per-class"].value == 0
    assert studio.parse_args([]).default_preset == "quick"
    best = studio.build_demo(CPU, AppDefaults(preset="best"))
    assert next(b for b in best.blocks.values() if getattr(b, "elem_id", None) == "epochs").value == 6


def test_choosing_a_preset_sets_the_fields_and_on_train_uses_it(session, colors_zip):
    values = train.on_preset(session, "best")
    assert (values.strategy, values.epochs, values.image_size, values.max_per_class) == ("finetune", 6, 256, 0)
    assert values.backbone == "efficientnet_lite0" and values.lr == get_preset("best").lr
    assert values.preset_md.startswith("**best**") and "about" in values.preset_md
    data.on_upload_zip(session, str(colors_zip))
    rec = train.on_recommend(session, 0, "quick")
    assert "your 18 images" in rec.preset_md  # the expected time, for the loaded dataset
    # The fields (as the person left them) win; the preset supplies what the tab does not show.
    *_, last = train.on_train(session, "resnet18", "finetune", 1, 1e-3, 8, 32, False, False, 0, "best")
    assert last[1].startswith("**Done")
    t = session.model.training
    assert (t["preset"], t["epochs"], t["image_size"], t["label_smoothing"]) == ("best", 1, 32, 0.1)
    assert saved_training(session.trained_model_dir)["preset"] == "best"
    *_, last = train.on_train(session, "resnet18", "head", 1, 1e-3, 8, 32, False, False, 0)  # default: quick
    assert session.model.training["preset"] == "quick" and session.model.training["label_smoothing"] == 0.1


def test_the_advisor_does_not_swap_the_presets_cost_class(session, colors_zip):
    data.on_upload_zip(session, str(colors_zip))
    # A small set: head or truncate, a frozen body, like quick's recipe for the session's resnet18.
    quick = train.on_recommend(session, 0, "quick")
    assert quick.strategy in ("head", "truncate") and "(pre-selected)" in quick.advisor
    # quick's and best's own backbone: their recipes are cached finetunes.
    train.on_backbone(session, "efficientnet_lite0", True)
    for name in ("quick", "best"):
        rec = train.on_recommend(session, 0, name)
        assert not isinstance(rec.strategy, str) and f"The preset *{name}* keeps finetune" in rec.advisor
    quick, best = get_preset("quick"), get_preset("best")
    assert train._follows_advice("finetune", quick) and not train._follows_advice("head", quick)
    other = quick.for_backbone("resnet18")  # a frozen body's head: the advisor's frozen picks replace it
    assert train._follows_advice("truncate", other) and not train._follows_advice("finetune", other)
    assert not train._follows_advice("scratch", best) and not train._follows_advice("head", best)
    best_other = best.for_backbone("resnet18")  # a finetune through the images: scratch costs the same
    assert train._follows_advice("scratch", best_other) and not train._follows_advice("head", best_other)


def test_picking_another_backbone_in_the_app_gives_the_presets_settings_for_it(session):
    strategy, md, epochs, lr = train.on_pick_backbone(session, "resnet18", "quick")
    assert (strategy, epochs, lr) == ("head", 15, xfer.STRATEGIES["head"].lr) and md
    strategy, _, epochs, lr = train.on_pick_backbone(session, "efficientnet_lite0", "quick")
    assert (strategy, epochs, lr) == ("finetune", 5, get_preset("quick").lr)
    assert train.on_pick_backbone(session, "resnet18", "best")[:3:2] == ("finetune", 4)  # the uncached finetune
    assert "With another backbone: finetune, 4 epochs." in train.preset_markdown(session.config, "best")
    assert "With another backbone: head, 15 epochs." in train.preset_markdown(session.config, "quick")
