"""Models that travel: a saved xfer folder loads in timm and transformers as it is, exports to ONNX, and every
field of a loaded config.json is checked.

The same image files give the same probabilities through xfer, timm (``local-dir:``, and ``hf-hub:`` against the
test Hub server through the model card's own snippets), transformers' pipeline and onnxruntime. Networks have
random weights (no downloads) made decisive on purpose (a scaled head, random batch-norm statistics), so that a
wrong weight map or preprocessing shows as a large difference, and images are 64 px crops.
"""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import xfer
from conftest import ROOT
from hub_fixtures import ALICE_TOKEN, hf_client_isolation, hub_server  # noqa: F401 (fixtures)
from xfer.card import (
    TIMM_SNIPPET,
    TRANSFORMERS_SNIPPET,
    XFER_SNIPPET,
    render_card_from_config,
)
from xfer.data.transforms import Preprocessing, batch_images
from xfer.errors import ModelError
from xfer.model import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    XferModel,
    load_model,
    read_config,
    save_model,
)
from xfer.modelconfig import FORMAT, build_config
from xfer.nets.strategies import build_network, make_spec

SIZE = 64
CLASSES = ["cat", "dog", "bird"]
PIPELINE_TOL = 5e-3  # timm / transformers preprocess the files themselves (PIL resize vs torchvision's)
ONNX_TOL = 1e-4


def make_model(backbone: str = "resnet18", strategy: str = "head", size: int = SIZE, seed: int = 0,
               images: list[Path] | None = None) -> XferModel:
    """A random-weight model; given ``images``, its head is scaled so that its outputs on them are decisive and
    differ from image to image (a random network's are near-uniform or always the same class)."""
    torch.manual_seed(seed)
    spec = make_spec(backbone, strategy, len(CLASSES))
    net = build_network(spec, weights=None).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    pre = xfer.get_backbone(backbone).get_preprocessing().for_size(size)
    if images:
        with torch.no_grad():
            last = [m for m in net.head.modules() if isinstance(m, torch.nn.Linear)][-1]
            features = net.head[:-1](net.body(batch_images(images, pre)))
            logits = features @ last.weight.T
            scale = 4.0 / float((logits - logits.mean(0)).std())
            last.weight.mul_(scale)
            last.bias.copy_(-logits.mean(0) * scale)
    return XferModel(net, spec, list(CLASSES), pre, weights="none",
                     metrics={"accuracy": 0.5, "num_images": 6, "classes": list(CLASSES),
                              "confusion_matrix": [[1, 1, 0], [0, 2, 0], [1, 0, 1]]})


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real image files (PNG and JPEG, larger than the crop so that every path resizes down)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(120, 100), (90, 130), (110, 110), (140, 96)]):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * (3 + i)) % 256, (yy * (5 - i)) % 256, ((xx + yy) * (i + 1)) % 256], -1)
        noise = rng.integers(-40, 40, size=(h, w, 3))
        img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
        path = root / f"img{i}.{'jpg' if i % 2 else 'png'}"
        img.save(path, quality=95)
        paths.append(path)
    return paths


def xfer_probs(model: XferModel, images: list[Path]) -> np.ndarray:
    return xfer.predict_proba(model, images).numpy()


def assert_decisive(probs: np.ndarray) -> None:
    """The comparison means something: the model is confident on some image and not constant across them."""
    assert probs.max() > 0.6 and np.ptp(probs, axis=0).max() > 0.2, probs


def timm_probs(model_name: str, images: list[Path]) -> tuple[np.ndarray, Any]:
    import timm

    net = timm.create_model(model_name, pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=net))
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
    with torch.no_grad():
        return net(batch).softmax(-1).numpy(), net


@pytest.fixture(scope="module")
def resnet_head(tmp_path_factory: pytest.TempPathFactory, images: list[Path]) -> tuple[XferModel, Path]:
    model = make_model("resnet18", "head", images=images)
    return model, save_model(model, tmp_path_factory.mktemp("m") / "resnet18-head")


# --- timm and transformers --------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["head", "finetune", "scratch"])
def test_timm_local_dir_gives_xfer_probabilities(strategy: str, tmp_path: Path, images: list[Path]) -> None:
    model = make_model("resnet18", strategy, seed=1, images=images)
    folder = save_model(model, tmp_path / "m")
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    assert cfg["architecture"] == "resnet18" and cfg["label_names"] == CLASSES
    assert cfg["pretrained_cfg"]["input_size"] == [3, SIZE, SIZE]
    expected = xfer_probs(model, images)
    assert_decisive(expected)
    got, net = timm_probs(f"local-dir:{folder}", images)
    np.testing.assert_allclose(got, expected, atol=PIPELINE_TOL)
    assert list(net.pretrained_cfg["label_names"]) == CLASSES
    # On the very same tensors the two networks agree to float rounding: the weight map is exact.
    x = batch_images(images, model.preprocessing)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model.net(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone", ["resnet50", pytest.param("vgg16", marks=pytest.mark.slow)])
def test_timm_weight_map_is_exact(backbone: str, tmp_path: Path) -> None:
    import timm

    model = make_model(backbone, "head")
    folder = save_model(model, tmp_path / "m")
    net = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(net(x), model.net(x), atol=1e-5, rtol=1e-4)
    again = load_model(folder)  # and xfer reads its timm-named weights back exactly
    assert all(torch.equal(a, b) for a, b in zip(again.net.state_dict().values(), model.net.state_dict().values(),
                                                strict=True))


def test_vgg_pooling_agrees_with_timm_up_to_255_px() -> None:
    """Why vgg16 is timm-loadable only up to 255 px: torchvision pools the 512-channel map to 7x7 before its first
    Linear; timm pools only smaller maps up to 7x7 and slides its 7x7 convolution over larger ones."""
    from timm.models.vgg import ConvMlp

    torch.manual_seed(0)
    fc1, fc2 = torch.nn.Linear(512 * 7 * 7, 16), torch.nn.Linear(16, 16)  # torchvision's classifier.0 and .3
    mlp = ConvMlp(512, 16, kernel_size=7).eval()  # timm's pre_logits, with the weights xfer's map gives it
    with torch.no_grad():
        mlp.fc1.weight.copy_(fc1.weight.reshape(16, 512, 7, 7))
        mlp.fc1.bias.copy_(fc1.bias)
        mlp.fc2.weight.copy_(fc2.weight.reshape(16, 16, 1, 1))
        mlp.fc2.bias.copy_(fc2.bias)
    for side in range(1, 10):  # the feature map is crop // 32 pixels wide
        f = torch.randn(1, 512, side, side)
        with torch.no_grad():
            tv = torch.relu(fc2(torch.relu(fc1(torch.nn.functional.adaptive_avg_pool2d(f, 7).flatten(1)))))
            tm = mlp(f).mean((2, 3))  # timm's head then pools globally
        assert torch.allclose(tv, tm, atol=1e-5) == (side <= 7), side
    assert xfer.XferModel(None, make_spec("vgg16", "head", 3), CLASSES, Preprocessing(224, 256)).timm_loadable
    assert not xfer.XferModel(None, make_spec("vgg16", "head", 3), CLASSES, Preprocessing(256, 292)).timm_loadable


def test_transformers_pipeline_gives_xfer_labels_and_probabilities(resnet_head, images: list[Path]) -> None:
    from transformers import pipeline

    model, folder = resnet_head
    expected = xfer_probs(model, images)
    assert_decisive(expected)
    classifier = pipeline("image-classification", model=str(folder), device="cpu")
    for path, want in zip(images, expected, strict=True):
        got = {d["label"]: d["score"] for d in classifier(str(path), top_k=len(CLASSES))}
        assert set(got) == set(CLASSES)
        np.testing.assert_allclose([got[c] for c in CLASSES], want, atol=PIPELINE_TOL)


def test_truncate_stays_xfer_only(tmp_path: Path, images: list[Path]) -> None:
    model = make_model("resnet18", "truncate")
    folder = save_model(model, tmp_path / "m")
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    assert set(cfg) == {"xfer"} and cfg["xfer"]["weights_layout"] == "xfer"  # nothing for timm to misread
    np.testing.assert_array_equal(xfer_probs(load_model(folder), images), xfer_probs(model, images))
    card = (folder / "README.md").read_text()
    assert "library_name: xfer" in card and "Only xfer loads this model" in card and "timm.create_model" not in card


# --- format 1 folders ---------------------------------------------------------------------------------------


def write_v1_folder(model: XferModel, folder: Path) -> Path:
    """A model folder exactly as xfer wrote it before format 2 (config keys at the top, xfer's weight names)."""
    from safetensors.torch import save_file

    p = model.preprocessing
    cfg = {
        "format": FORMAT, "format_version": 1, "xfer_version": "0.1.0", "architecture": model.spec.to_dict(),
        "backbone": model.backbone, "strategy": model.strategy, "num_classes": len(model.classes),
        "classes": list(model.classes), "id2label": {str(i): c for i, c in enumerate(model.classes)},
        "label2id": {c: i for i, c in enumerate(model.classes)}, "image_size": p.crop_size,
        "preprocessing": {"crop_size": p.crop_size, "resize_size": p.resize_size, "mean": list(p.mean),
                          "std": list(p.std), "interpolation": p.interpolation},
        "pretrained_weights": model.weights, "training": {"epochs": 1}, "metrics": model.metrics,
        "history": [{"epoch": 1, "val_accuracy": 0.5}], "dataset": {}, "recommendation": None,
    }
    folder.mkdir(parents=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.net.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt", "xfer": FORMAT})
    (folder / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
    (folder / "README.md").write_text("# an xfer model\n")
    return folder


@pytest.mark.parametrize("strategy", ["head", "truncate"])
def test_format_1_folders_still_load(strategy: str, tmp_path: Path, images: list[Path]) -> None:
    model = make_model("resnet18", strategy)
    old = write_v1_folder(model, tmp_path / "v1")
    loaded = load_model(old)
    assert loaded.classes == CLASSES and loaded.strategy == strategy and loaded.history[0]["epoch"] == 1
    np.testing.assert_array_equal(xfer_probs(loaded, images), xfer_probs(model, images))
    assert read_config(old)["format_version"] == 1
    # Saved again, it is format 2 (and timm-loadable where it can be).
    new = json.loads((save_model(loaded, tmp_path / "v2") / CONFIG_NAME).read_text())
    assert new["xfer"]["format_version"] == 2 and ("architecture" in new) == (strategy == "head")


# --- every field of a loaded config is checked ------------------------------------------------------------


def _set(cfg: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for p in parents:
        cfg = cfg[int(p)] if p.isdigit() else cfg[p]
    cfg[int(last) if last.isdigit() else last] = value


BAD_FIELDS = {  # path in config.json -> (bad value, words the one-line error must contain)
    "xfer.preprocessing.crop_size": (100_000, "xfer.preprocessing.crop_size is 100000 px, outside 16..1024"),
    "xfer.preprocessing.resize_size": (50_000, "xfer.preprocessing.resize_size"),
    "xfer.preprocessing.mean": ([0.5, float("nan"), 0.5], "xfer.preprocessing.mean[1] must be a finite number"),
    "xfer.preprocessing.std": ([0.2, 0.0, 0.2], "xfer.preprocessing.std[1] is 0.0; a standard deviation"),
    "xfer.preprocessing.interpolation": ("lanczos9", "xfer.preprocessing.interpolation is 'lanczos9'"),
    "xfer.classes": ([], "xfer.classes must be a list of 2..1000 class names, got 0"),
    "xfer.classes.1": ("cat", "xfer.classes names 'cat' twice"),
    "xfer.classes.2": ("", "xfer.classes[2] must be a non-empty name"),
    "xfer.classes.0": ("a/b", "xfer.classes[0] must be a non-empty name of a class folder"),
    "xfer.network.dropout": (1.0, "xfer.network.dropout is 1.0, outside [0, 1)"),
    "xfer.network.strategy": ("distill", "Unknown strategy 'distill'"),
    "xfer.network.backbone": ("alexnet", "Unknown backbone 'alexnet'"),
    "xfer.network.hidden": ([10**9], "xfer.network.hidden[0] is 1000000000, outside 1..16384"),
    "xfer.metrics.confusion_matrix": ([[1] * 1000] * 1000, "xfer.metrics.confusion_matrix must be 3x3"),
    "xfer.metrics.accuracy": (7.0, "xfer.metrics.accuracy is 7.0, outside 0..1"),
    "xfer.format_version": (3, "saved by a newer xfer (format 3)"),
    "architecture": ("resnet50", "architecture is 'resnet50' but the xfer section says 'resnet18'"),
    "label_names": (["a", "b", "c"], "label_names is ['a', 'b', 'c']"),
    "pretrained_cfg.mean": ([0.5, 0.5, 0.5], "pretrained_cfg.mean is [0.5, 0.5, 0.5]"),
    "pretrained_cfg.crop_pct": (0.5, "pretrained_cfg.crop_pct is 0.5, which does not resize to 73 px"),
    "xfer.weights_layout": ("onnx", "xfer.weights_layout is 'onnx'"),
}


@pytest.mark.parametrize("field", list(BAD_FIELDS))
def test_each_bad_config_field_is_refused_in_one_line(field: str, tmp_path: Path) -> None:
    value, words = BAD_FIELDS[field]
    cfg = build_config(make_model_description())
    _set(cfg, field, value)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))  # NaN is written as JSON's NaN, which Python reads back
    for load in (read_config, load_model):
        with pytest.raises(ModelError) as exc:
            load(folder)
        msg = str(exc.value)
        assert words in msg and "\n" not in msg, msg


def make_model_description() -> dict:
    """A valid description (resnet18/head, 64 px), without building the network."""
    spec = make_spec("resnet18", "head", 3)
    model = XferModel(None, spec, list(CLASSES), xfer.get_backbone("resnet18").get_preprocessing().for_size(SIZE),
                      metrics={"accuracy": 0.5, "confusion_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]})
    return model.description()


def test_config_checks_accept_what_xfer_writes_and_bound_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    cfg = build_config(make_model_description())
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    assert read_config(folder)["classes"] == CLASSES
    cfg["xfer"]["network"]["strategy"] = "truncate"  # timm keys for a network timm cannot build
    cfg["xfer"]["strategy"] = "truncate"
    cfg["xfer"]["network"]["cut"] = 2
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="weights_layout is \"timm\" but this network has no timm equivalent"):
        read_config(folder)
    (folder / CONFIG_NAME).write_bytes(b" " * (17 * 1024**2))
    with pytest.raises(ModelError, match="larger than 16 MB"):
        read_config(folder)


def test_training_refuses_sizes_a_config_could_not_hold(color_dataset: Path) -> None:
    with pytest.raises(xfer.ConfigError, match="between 16 and 1024"):
        xfer.train(color_dataset, backbone="resnet18", strategy="head", weights=None, image_size=2048)


# --- ONNX ---------------------------------------------------------------------------------------------------


def test_onnx_export_matches_xfer_on_real_images(resnet_head, images: list[Path], tmp_path: Path) -> None:
    import onnxruntime as ort

    from xfer.export import read_metadata

    model, folder = resnet_head
    out = tmp_path / "model.onnx"
    result = subprocess.run([sys.executable, "-m", "xfer", "export", str(folder), "--format", "onnx", "--out",
                             str(out), "--json"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["classes"] == CLASSES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # self-contained, no temporaries left
    meta = read_metadata(out)
    assert meta["xfer_classes"] == CLASSES
    pre = Preprocessing(**{**meta["xfer_preprocessing"], "mean": tuple(meta["xfer_preprocessing"]["mean"]),
                           "std": tuple(meta["xfer_preprocessing"]["std"])})
    assert pre == model.preprocessing
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    expected = xfer_probs(model, images)
    for batch in (images, images[:1]):  # the batch dimension is dynamic
        logits, probs = session.run(None, {"pixel_values": batch_images(batch, pre).numpy()})
        np.testing.assert_allclose(probs, expected[: len(batch)], atol=ONNX_TOL)
    bad = subprocess.run([sys.executable, "-m", "xfer", "export", str(folder), "--out", str(tmp_path / "m.zip")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "must end in .onnx" in bad.stderr


# --- the model card: metadata and snippets that run ---------------------------------------------------------


def test_card_snippets_run_against_the_hub(hub_server, resnet_head, images: list[Path],  # noqa: F811
                                          tmp_path: Path) -> None:
    """Push with --with-onnx, then run the card's timm, transformers and xfer snippets, as printed, in a fresh
    interpreter pointed at the test Hub: each prints xfer's class names and probabilities."""
    from huggingface_hub import HfApi, ModelCard

    model, folder = resnet_head
    repo = "alice/pets"
    xfer.hub.push(folder, repo, token=ALICE_TOKEN, endpoint=hub_server.url, with_onnx=True)
    files = HfApi(endpoint=hub_server.url).list_repo_files(repo)
    assert {"config.json", "model.safetensors", "README.md", "model.onnx"} <= set(files)
    card = render_card_from_config(model.config(), repo)
    data = ModelCard(card).data
    assert data.library_name == "timm" and "xfer" in data.tags and data.pipeline_tag == "image-classification"
    snippets = [TIMM_SNIPPET.format(model=f"hf-hub:{repo}"), TRANSFORMERS_SNIPPET.format(model=repo),
                XFER_SNIPPET.format(model=repo)]
    for s in snippets:
        assert s in card
    work = tmp_path / "work"
    work.mkdir()
    Image.open(images[1]).save(work / "photo.jpg", quality=95)
    expected = dict(zip(CLASSES, xfer_probs(model, [work / "photo.jpg"])[0], strict=True))
    assert max(expected.values()) > 0.6
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub_server.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONPATH=str(ROOT), XFER_OFFLINE="1")
    runner = "import sys\nfor code in sys.argv[1:]:\n    exec(compile(code, 'snippet', 'exec'), {})\n    print('@@')\n"
    result = subprocess.run([sys.executable, "-c", runner, *snippets], capture_output=True, text=True, cwd=work,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = [chunk.strip().splitlines()[-1] for chunk in result.stdout.split("@@")[:3]]
    timm_out = ast.literal_eval(outputs[0])
    hf_out = {d["label"]: d["score"] for d in ast.literal_eval(outputs[1])}
    xfer_out = ast.literal_eval(outputs[2])[0]
    for name, got in (("timm", timm_out), ("transformers", hf_out), ("xfer", xfer_out)):
        assert set(got) == set(CLASSES), name
        for c in CLASSES:
            assert math.isclose(got[c], expected[c], abs_tol=PIPELINE_TOL), (name, c, got, expected)
