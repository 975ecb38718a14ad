"""Training, progress and cancellation, saving and loading, evaluation and prediction."""

from __future__ import annotations

import json
import threading

import pytest
import torch

import xfer
from tests.conftest import make_color_dataset
from xfer import Cancelled, ModelError, TrainConfig
from xfer.data import scan_folder
from xfer.engine import EpochStats, Progress, make_optimizer
from xfer.evaluation import metrics_from_predictions
from xfer.nets.strategies import build_network, make_spec

CPU = xfer.select_device("cpu", num_workers=0)


def _train(data, **kw) -> xfer.XferModel:
    cfg = kw.pop("config", TrainConfig(epochs=3, batch_size=8, lr=3e-3, seed=0))
    kw.setdefault("backbone", "resnet18")
    kw.setdefault("strategy", "head")
    return xfer.train(data, weights=None, image_size=32, val_fraction=0.25, config=cfg, device=CPU, **kw)


@pytest.fixture
def colors(tmp_path) -> xfer.DatasetReport:
    return scan_folder(make_color_dataset(tmp_path / "colors", per_class=8))


def test_round_trip_gives_identical_predictions(colors, tmp_path):
    model = _train(colors, out=tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["README.md", "config.json", "model.safetensors"]
    top = json.loads((tmp_path / "m" / "config.json").read_text())
    # timm's keys at the top (resnet18/head is a timm model), xfer's description under "xfer".
    assert top["architecture"] == "resnet18" and top["label_names"] == ["blue", "green", "red"]
    assert top["pretrained_cfg"]["input_size"] == [3, 32, 32] and top["num_classes"] == 3
    cfg = top["xfer"]
    assert cfg["format_version"] == 2 and cfg["weights_layout"] == "timm"
    assert cfg["classes"] == ["blue", "green", "red"]
    assert cfg["backbone"] == "resnet18" and cfg["strategy"] == "head" and cfg["image_size"] == 32
    assert cfg["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert cfg["training"]["epochs"] == 3 and "accuracy" in cfg["metrics"]
    assert len(cfg["history"]) == 3
    loaded = xfer.load_model(tmp_path / "m")
    images = [p for p, _ in colors.items[:6]]
    assert torch.equal(xfer.predict_proba(model, images), xfer.predict_proba(loaded, images))
    assert xfer.predict(model, images) == xfer.predict(loaded, images)


def test_the_seed_makes_a_run_reproducible_in_one_process(colors):
    # The new layers are initialised from the seed, not from whatever the process drew before the run.
    config = lambda seed: TrainConfig(epochs=1, batch_size=8, seed=seed)  # noqa: E731
    a = _train(colors, strategy="finetune", config=config(0))
    torch.rand(100)  # anything else that draws from the global generator in between
    b = _train(colors, strategy="finetune", config=config(0))
    c = _train(colors, strategy="finetune", config=config(1))
    sa, sb, sc = (m.net.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("strategy", ["truncate", "finetune", "scratch"])
def test_every_strategy_trains_saves_and_loads(colors, tmp_path, strategy):
    model = _train(colors, strategy=strategy, config=TrainConfig(epochs=1, batch_size=8, seed=0),
                   out=tmp_path / strategy)
    loaded = xfer.load_model(tmp_path / strategy)
    images = [p for p, _ in colors.items[:4]]
    assert torch.equal(xfer.predict_proba(model, images), xfer.predict_proba(loaded, images))


def test_head_learns_an_easy_task(colors):
    model = _train(colors, config=TrainConfig(epochs=8, batch_size=8, lr=1e-2, seed=0))
    assert model.metrics["accuracy"] == 1.0
    assert model.evaluation.misclassified == []


def test_predict_topk_sorted_capped_and_normalised(colors):
    model = _train(colors, config=TrainConfig(epochs=1, batch_size=8, seed=0))
    path = colors.items[0][0]
    top = xfer.predict(model, [path], k=5)[0]
    assert list(top) == sorted(top, key=top.get, reverse=True)
    assert len(top) == 3 and abs(sum(top.values()) - 1) < 1e-5
    assert len(xfer.predict(model, path, k=2)[0]) == 2
    with pytest.raises(xfer.ConfigError):
        xfer.predict(model, [path], k=0)


def test_progress_events_and_history(colors):
    events = []
    model = _train(colors, callback=events.append, config=TrainConfig(epochs=2, batch_size=4, seed=0))
    progress = [e for e in events if isinstance(e, Progress)]
    epochs = [e for e in events if isinstance(e, EpochStats)]
    assert [e.epoch for e in epochs] == [1, 2]
    assert {p.phase for p in progress} == {"features", "train", "validate"}
    fractions = [p.fraction for p in progress]
    assert fractions == sorted(fractions) and 0 < fractions[0] and fractions[-1] == pytest.approx(1.0)
    assert all(p.images_per_s > 0 for p in progress)
    assert any(p.loss is not None and p.accuracy is not None for p in progress if p.phase == "train")
    assert progress[-1].eta_s == pytest.approx(0, abs=1e-6)
    assert len(model.history) == 2


def test_cancel_between_batches_saves_nothing(colors, tmp_path):
    first = _train(colors, out=tmp_path / "m", config=TrainConfig(epochs=1, batch_size=8, seed=0))
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    cancel = threading.Event()
    seen = []

    def on_event(e):
        seen.append(e)
        if isinstance(e, Progress) and e.phase == "train":
            cancel.set()

    with pytest.raises(Cancelled):
        _train(colors, strategy="finetune", out=tmp_path / "m", callback=on_event, cancel=cancel,
               config=TrainConfig(epochs=5, batch_size=4, seed=0))
    train_steps = [e for e in seen if isinstance(e, Progress) and e.phase == "train"]
    assert len(train_steps) == 1  # stopped right after the batch that set the flag
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert xfer.predict(xfer.load_model(tmp_path / "m"), [colors.items[0][0]]) == xfer.predict(first, [colors.items[0][0]])


def test_best_epoch_is_kept_and_early_stopping(colors):
    model = _train(colors, config=TrainConfig(epochs=30, batch_size=8, lr=1e-2, patience=2, seed=0))
    hist = model.history
    # The best accuracy; among equals, the lowest validation loss.
    best = max(range(len(hist)), key=lambda i: (hist[i]["val_accuracy"], -hist[i]["val_loss"]))
    assert model.training["best_epoch"] == hist[best]["epoch"]
    assert model.metrics["accuracy"] == hist[best]["val_accuracy"]
    assert model.training["stopped_early"] and len(hist) < 30
    first_best = min(h["epoch"] for h in hist if h["val_accuracy"] == hist[best]["val_accuracy"])
    assert len(hist) - first_best == 2  # patience: epochs without a better accuracy


def test_failed_save_leaves_previous_model(colors, tmp_path, monkeypatch):
    model = _train(colors, out=tmp_path / "m", config=TrainConfig(epochs=1, batch_size=8, seed=0))
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    def broken(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr("xfer.card.render_card_from_config", broken)  # the last file written
    with pytest.raises(OSError):
        xfer.save_model(model, tmp_path / "m")
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.")]


def test_save_refuses_to_clobber_a_foreign_folder(colors, tmp_path):
    model = _train(colors, config=TrainConfig(epochs=1, batch_size=8, seed=0))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("precious")
    with pytest.raises(xfer.ConfigError, match="so it is not replaced"):
        xfer.save_model(model, tmp_path / "docs")
    assert (tmp_path / "docs" / "thesis.tex").read_text() == "precious"


def test_load_errors_are_clear(colors, tmp_path):
    with pytest.raises(ModelError, match="not a folder"):
        xfer.load_model(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        xfer.load_model(tmp_path / "empty")
    _train(colors, out=tmp_path / "m", config=TrainConfig(epochs=1, batch_size=8, seed=0))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["xfer"]["network"]["num_classes"] = cfg["xfer"]["num_classes"] = cfg["num_classes"] = 4
    cfg["pretrained_cfg"]["num_classes"] = 4
    cfg["xfer"]["classes"].append("purple")
    cfg["label_names"].append("purple")
    cfg["xfer"]["metrics"] = {}  # else the check of the config itself (3 classes' metrics) refuses it first
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="do not match its config.json"):
        xfer.load_model(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(ModelError, match="damaged"):
        xfer.load_model(tmp_path / "m")


def test_evaluate_metrics_and_misclassified(colors, tmp_path):
    model = _train(colors, config=TrainConfig(epochs=1, batch_size=8, seed=0))
    report = xfer.evaluate(model, colors, device=CPU)
    assert report.num_images == 24 and report.classes == model.classes
    assert sum(map(sum, report.confusion_matrix)) == 24
    assert len(report.misclassified) == round((1 - report.accuracy) * 24)
    with pytest.raises(xfer.DataError, match="not known to the model"):
        xfer.evaluate(model, [(colors.items[0][0], "purple")])


def test_metrics_from_predictions_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    targets = torch.tensor([0, 1, 1, 1])
    r = metrics_from_predictions(probs, targets, ["a", "b"], files=["w", "x", "y", "z"])
    assert r.accuracy == 0.75 and r.confusion_matrix == [[1, 0], [1, 2]]
    assert r.per_class["a"]["precision"] == 0.5 and r.per_class["a"]["recall"] == 1.0
    assert r.per_class["b"]["precision"] == 1.0 and r.per_class["b"]["recall"] == pytest.approx(2 / 3)
    assert r.misclassified == [{"image": "y", "true": "b", "predicted": "a", "confidence": pytest.approx(0.6)}]


def test_auto_strategy_records_the_recommendation(colors, tmp_path):
    model = _train(colors, strategy="auto", config=TrainConfig(epochs=1, batch_size=8, seed=0))
    assert model.recommendation and model.strategy == model.recommendation["strategy"]
    assert model.strategy in xfer.STRATEGIES


def test_save_removes_leftovers_of_long_dead_saves(colors, tmp_path):
    import os
    import time

    model = _train(colors, config=TrainConfig(epochs=1, batch_size=8, seed=0))
    stale, fresh = tmp_path / ".m.tmp-dead", tmp_path / ".m.tmp-busy"
    for d in (stale, fresh):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"partial")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    xfer.save_model(model, tmp_path / "m")
    assert not stale.exists()  # killed long ago
    assert fresh.exists()  # may belong to a save still running in another process


def test_learning_rate_defaults_to_the_strategys(colors):
    from xfer.nets.strategies import STRATEGIES

    assert TrainConfig().resolved("finetune").learning_rate == STRATEGIES["finetune"].lr == 3e-3
    assert TrainConfig().resolved("head").learning_rate == STRATEGIES["head"].lr == 1e-3
    assert TrainConfig(lr=5e-4).resolved("finetune").learning_rate == 5e-4  # an explicit value wins
    assert TrainConfig(optimizer="sgd").resolved("finetune").learning_rate == 1e-2
    model = _train(colors, strategy="finetune", config=TrainConfig(epochs=1, batch_size=8, seed=0))
    assert model.training["lr"] == 3e-3 and model.history[0]["lr"] > 0
    net = build_network(make_spec("resnet18", "finetune", 3), weights=None)
    groups = make_optimizer(net, "finetune", TrainConfig()).param_groups
    assert max(g["lr"] for g in groups) == 3e-3 and min(g["lr"] for g in groups) == pytest.approx(3e-4)


@pytest.mark.parametrize("preset, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_importing_xfer_lets_idle_openmp_threads_sleep_unless_told_otherwise(preset, expected):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    # `import xfer` loads no torch (lazy names); the policy must be set before whoever imports torch next.
    out = subprocess.run([sys.executable, "-c", "import os, sys, xfer; had = 'torch' in sys.modules; import torch; "
                          "print(os.environ['OMP_WAIT_POLICY'], had)"], env=env, cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == [expected, "False"]


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's malloc only")
@pytest.mark.parametrize("setting", [None, "system"])
def test_configure_runtime_keeps_freed_memory_for_reuse_until_fit_releases_it(setting, tmp_path):
    """A freed 256 MB block stays with the process for reuse (no fresh page faults next step) until
    release_freed_memory, which fit calls at its end; XFER_HOST_MALLOC=system keeps glibc's default."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = """
import torch, xfer
from xfer.device import release_freed_memory

def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024

xfer.device.configure_runtime(xfer.select_device("cpu", num_workers=0))
on = xfer.device.keep_freed_memory()
base = rss()
x = torch.ones(64 * 2**20)  # 256 MB, every page touched
del x
kept = rss() - base
release_freed_memory()
print(on, kept, rss() - base)
"""
    env = {k: v for k, v in os.environ.items() if k != "XFER_HOST_MALLOC"}
    if setting:
        env["XFER_HOST_MALLOC"] = setting
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    on, kept, after = out.stdout.split()
    if setting == "system":
        assert on == "False" and int(kept) < 64  # glibc unmapped the block when it was freed
    else:
        assert on == "True" and int(kept) > 200 and int(after) < 64


def test_fit_gives_freed_memory_back_when_it_ends(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(xfer.engine, "release_freed_memory", lambda: calls.append("released"))
    colors = make_color_dataset(tmp_path / "c", per_class=4, size=32)
    _train(colors, strategy="finetune", config=TrainConfig(epochs=1, batch_size=8, seed=0))
    assert calls == ["released"]

    class Stop:
        def is_set(self) -> bool:
            return True

    with pytest.raises(Cancelled):
        _train(colors, strategy="finetune", config=TrainConfig(epochs=1, batch_size=8, seed=0), cancel=Stop())
    assert calls == ["released", "released"]  # also when training is stopped


def test_cache_frozen_runs_the_frozen_stages_once_per_image_and_trains_the_rest(colors):
    from xfer.data import split_dataset
    from xfer.data.pipeline import image_batches
    from xfer.data.transforms import Preprocessing
    from xfer.engine import evaluate, fit

    torch.manual_seed(0)
    net = build_network(make_spec("resnet18", "finetune", 3, frozen_stages=3))  # stem, layer1, layer2 frozen
    before = {k: v.clone() for k, v in net.state_dict().items()}
    seen = {"frozen": 0, "trained": 0}
    # Images of the run (32 px: 4x4 maps after layer2), not the 64-px probes that check the batch-norm fold.
    net.body.layer2.register_forward_hook(
        lambda m, i, o: seen.__setitem__("frozen", seen["frozen"] + len(o) * (o.shape[-1] == 4)))
    net.body.layer3.register_forward_hook(lambda m, i, o: seen.__setitem__("trained", seen["trained"] + len(o)))
    train_items, val_items = split_dataset(colors, 0.25, seed=0)
    pre = Preprocessing(32, 36)
    result = fit(net, "finetune", train_items, val_items, pre,
                 TrainConfig(epochs=3, batch_size=4, seed=0, cache_frozen=True), CPU)
    n = len(train_items) + len(val_items)
    assert n <= seen["frozen"] <= n + 1  # once per image (and one to size the cache), not once per epoch
    assert seen["trained"] >= 3 * len(val_items)  # the rest ran every epoch
    after = net.state_dict()
    frozen = ("body.conv1.", "body.bn1.", "body.layer1.", "body.layer2.")
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert not {k for k in changed if k.startswith(frozen)}  # weights and batch-norm statistics
    assert "body.layer4.1.conv2.weight" in changed and "head.1.weight" in changed
    # The validation figures are exactly the returned network's, run on the images end to end.
    out = evaluate(net, image_batches(val_items, pre, [False], 4, CPU), CPU)
    assert torch.allclose(out.probs, result.val_output.probs, atol=1e-5)


def test_cache_frozen_is_refused_when_too_large_and_ignored_without_frozen_stages(colors, monkeypatch):
    import xfer.engine

    monkeypatch.setattr(xfer.engine, "MAX_CACHE_BYTES", 1000)
    cfg = TrainConfig(epochs=1, batch_size=8, seed=0, cache_frozen=True)
    with pytest.raises(xfer.ConfigError, match="would take .* GiB .*turn cache_frozen off"):
        _train(colors, strategy="finetune", frozen_stages=2, config=cfg)
    assert _train(colors, strategy="scratch", config=cfg).training["cache_frozen"] is True  # trained on images
    with pytest.raises(xfer.ConfigError, match="cache_frozen must be true or false"):
        TrainConfig(cache_frozen="yes").validate()


@pytest.mark.parametrize("backbone,frozen", [("resnet18", 2), ("efficientnet_lite0", 3)])
def test_cache_frozen_trains_on_the_maps_the_saved_network_computes(colors, monkeypatch, backbone, frozen):
    # The training maps are computed with batch norms folded, the validation maps without: given the same images
    # both ways, they must agree (a stem's batch norm left unfolded after its conv was folded once made them
    # differ, and the rest of the body learned maps that the saved network never computes).
    import xfer.engine
    from xfer.data import split_dataset
    from xfer.data.transforms import Preprocessing
    from xfer.engine import fit

    seen = []
    real = xfer.engine.compute_features
    monkeypatch.setattr(xfer.engine, "compute_features", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    torch.manual_seed(0)
    net = build_network(make_spec(backbone, "finetune", 3, frozen_stages=frozen))
    with torch.no_grad():  # batch norms that are not the identity (as freshly initialised ones nearly are)
        for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
    items, _ = split_dataset(colors, 0.25, seed=0)
    fit(net, "finetune", items, items, Preprocessing(32, 36), TrainConfig(epochs=1, batch_size=4, cache_frozen=True),
        CPU)
    (train_maps, train_labels), (val_maps, val_labels) = seen
    assert torch.equal(train_labels, val_labels) and train_maps.shape == val_maps.shape and train_maps.ndim == 4
    assert torch.allclose(train_maps, val_maps, rtol=1e-3, atol=1e-4 * val_maps.abs().max().item())
