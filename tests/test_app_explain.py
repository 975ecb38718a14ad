"""Grad-CAM (xfer.explain) on real networks and real flower photos, random weights, tiny inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xfer.data.transforms import batch_images
from xfer.explain import find_target_layer, gradcam, gradcam_map
from xfer.model import XferModel
from xfer.nets.registry import get_backbone, list_backbones
from xfer.nets.strategies import build_network, make_spec


def make_model(backbone: str = "resnet18", strategy: str = "head", size: int = 64, classes: int = 3) -> XferModel:
    torch.manual_seed(0)
    spec = make_spec(backbone, strategy, classes)
    net = build_network(spec, weights=None).eval()
    pre = get_backbone(backbone).get_preprocessing().for_size(size)
    return XferModel(net=net, spec=spec, classes=[f"c{i}" for i in range(classes)], preprocessing=pre)


@pytest.fixture
def photos(flowers_dir: Path) -> list[Path]:
    return [sorted((flowers_dir / c).iterdir())[0] for c in ("daisy", "roses", "sunflowers")]


def test_overlay_size_and_content(photos):
    model = make_model()
    out = gradcam(model, photos[0])
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    assert out.size == (224, 224)  # small models are shown at 224 px at least
    assert gradcam(model, photos[0], size=96).size == (96, 96)
    # The overlay is the photo tinted by the heat map: not a flat image, not the photo itself.
    arr = np.asarray(out, dtype=np.float32)
    assert arr.std() > 5


def test_frozen_head_model_gets_a_map_and_stays_untouched(photos):
    model = make_model("resnet18", "head")
    assert model.net.frozen and not any(p.requires_grad for p in model.net.body.parameters())
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    x = batch_images([photos[0]], model.preprocessing)
    with torch.no_grad():
        logits_before = model.net(x)
    cam, cls = gradcam_map(model, photos[0])
    assert cam.shape == (64, 64) and cam.dtype == np.float32
    assert 0.0 <= cam.min() and cam.max() == pytest.approx(1.0)
    assert cls == int(logits_before.argmax())
    # Nothing was trained or left behind: same weights, no grads, body still frozen, eval mode.
    assert all(torch.equal(before[k], v) for k, v in model.net.state_dict().items())
    assert all(p.grad is None for p in model.net.parameters())
    assert not any(p.requires_grad for p in model.net.body.parameters())
    assert not model.net.training
    with torch.no_grad():
        assert torch.equal(model.net(x), logits_before)


def test_map_depends_on_the_image(photos):
    model = make_model()
    a, _ = gradcam_map(model, photos[0], target=0)
    b, _ = gradcam_map(model, photos[1], target=0)
    assert np.abs(a - b).mean() > 0.05
    # ...and is deterministic for the same image.
    a2, _ = gradcam_map(model, photos[0], target=0)
    np.testing.assert_allclose(a, a2, atol=1e-6)


def test_equals_class_activation_map_for_a_linear_head(photos):
    """With global pooling then one linear layer, Grad-CAM is exactly CAM (Zhou et al.):
    relu(sum_k w[c, k] * A_k). Checks the gradient weighting, not just that a map comes out."""
    model = make_model("resnet18", "head", size=128)
    net = model.net
    x = batch_images([photos[2]], model.preprocessing)
    acts = {}
    h = net.body.layer4.register_forward_hook(lambda m, i, o: acts.setdefault("a", o.detach()))
    with torch.no_grad():
        net(x)
    h.remove()
    w = net.head[-1].weight.detach()  # (classes, 512)
    for c in range(3):
        cam = torch.relu(torch.einsum("k,khw->hw", w[c], acts["a"][0]))
        cam = torch.nn.functional.interpolate(cam[None, None], size=(128, 128), mode="bilinear",
                                              align_corners=False)[0, 0]
        expected = (cam / cam.max()).numpy() if cam.max() > 0 else cam.numpy()
        got, cls = gradcam_map(model, photos[2], target=c)
        assert cls == c
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_target_layer_is_the_last_spatial_map():
    x = torch.zeros(1, 3, 64, 64)
    name, _ = find_target_layer(make_model("resnet18").net.body, x)
    assert name == "layer4"  # not avgpool, whose output is 1x1
    truncated = make_model("resnet18", "truncate").net.body  # stem + layer1..3, then pool and flatten
    name, module = find_target_layer(truncated, x)
    assert module is truncated[len(truncated) - 3]  # the last kept stage
    # At 32 px layer4's map is 1x1; the last map that still has a "where" is chosen.
    name, _ = find_target_layer(make_model("resnet18").net.body, torch.zeros(1, 3, 32, 32))
    assert name.startswith("layer3")


@pytest.mark.parametrize("strategy", ["head", "truncate", "finetune", "scratch"])
def test_all_strategies(strategy, photos):
    model = make_model("resnet18", strategy)
    cam, _ = gradcam_map(model, photos[0])
    assert cam.shape == (64, 64) and np.isfinite(cam).all()


FAST = {"resnet18", "mobilenet_v3_large"}


@pytest.mark.parametrize("backbone", [pytest.param(b, marks=() if b in FAST else pytest.mark.slow)
                                      for b in list_backbones()])
def test_all_backbones(backbone, photos):
    model = make_model(backbone, "head", size=64)
    cam, _ = gradcam_map(model, photos[1])
    assert cam.shape == (64, 64) and np.isfinite(cam).all()
    assert gradcam(model, photos[1]).size == (224, 224)
