"""Grad-CAM: where in an image the model looked for the class it predicted.

The class score's gradient with respect to the last spatial feature map of the
body weights that map's channels; the positive part of the weighted sum is the
heat map (Selvaraju et al., 2017). Works for every backbone and strategy: the
layer is found by running the body (the last module whose output is a 4-D map
wider than 1x1), and gradients flow through the activations even when the body's
weights are frozen, because the input itself asks for a gradient.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode, v2 as T

from .data import ImageSource, open_image
from .data.transforms import batch_images
from .model import XferModel

log = logging.getLogger(__name__)


def find_target_layer(body: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module]:
    """(name, module) of the last module in ``body`` whose output is a (N, C, H, W) map.

    Maps of 1x1 (after global pooling) carry no "where", so the last map wider than
    1x1 is preferred; for tiny inputs where every map has collapsed, the last 4-D one.
    """
    order: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    hooks = []
    for name, module in body.named_modules():
        if name == "":
            continue

        def record(mod, _inp, out, name=name):
            if isinstance(out, torch.Tensor) and out.ndim == 4:
                order.append((name, mod, tuple(out.shape)))

        hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            body(x)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise ValueError("The model's body produces no spatial feature map: Grad-CAM cannot be computed.")
    spatial = [o for o in order if o[2][2] * o[2][3] > 1]
    name, module, _ = (spatial or order)[-1]
    return name, module


def gradcam_map(model: XferModel, image: ImageSource, target: int | None = None) -> tuple[np.ndarray, int]:
    """The Grad-CAM heat map (H, W) in [0, 1] at the model's input size, and the class it explains.

    ``target`` is a class index; by default the predicted class.
    """
    net = model.net
    was_training = net.training
    net.eval()
    device = model.device
    x = batch_images([image], model.preprocessing).to(device)
    _, layer = find_target_layer(net.body, x)
    owner = threading.get_ident()
    store: dict[str, torch.Tensor] = {}

    def keep(_mod, _inp, out):
        # Only this thread's forward pass: a prediction running concurrently on the same
        # model (another request) passes through the same hook and must not be recorded.
        if threading.get_ident() == owner:
            out.retain_grad()
            store["act"] = out

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            # Frozen weights do not require grad; asking it of the input puts every
            # activation in the graph without touching (or training) any weight.
            x = x.detach().requires_grad_(True)
            logits = net(x).float()
            cls = int(logits.argmax(1).item()) if target is None else int(target)
            if not 0 <= cls < logits.shape[1]:
                raise ValueError(f"class index {cls} is out of range for {logits.shape[1]} classes")
            logits[0, cls].backward()
    finally:
        handle.remove()
        net.zero_grad(set_to_none=True)
        net.train(was_training)
    act = store["act"]
    grad = act.grad
    if grad is None:  # the map did not influence the score (cannot happen for a connected body)
        cam = torch.zeros(act.shape[2:])
    else:
        weights = grad[0].float().mean(dim=(1, 2), keepdim=True)
        cam = torch.relu((weights * act[0].detach().float()).sum(0))
    size = model.preprocessing.crop_size
    cam = torch.nn.functional.interpolate(cam[None, None], size=(size, size), mode="bilinear",
                                          align_corners=False)[0, 0]
    hi = float(cam.max())
    cam = cam / hi if hi > 0 else cam
    return cam.cpu().numpy(), cls


def model_view(model: XferModel, image: ImageSource, size: int) -> Image.Image:
    """The part of the image the model sees (its resize and centre crop), at ``size`` pixels."""
    p = model.preprocessing
    img = open_image(image)
    scale = size / p.crop_size
    tf = T.Compose([T.Resize(max(1, round(p.resize_size * scale)), interpolation=InterpolationMode(p.interpolation),
                             antialias=True), T.CenterCrop(size)])
    return tf(img)


def overlay(base: Image.Image, cam: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> Image.Image:
    """Blend a [0, 1] heat map (any size; resized to ``base``) over an RGB image."""
    from matplotlib import colormaps

    heat = Image.fromarray(np.uint8(np.clip(cam, 0, 1) * 255)).resize(base.size, Image.BILINEAR)
    colored = colormaps[cmap](np.asarray(heat, dtype=np.float32) / 255.0)[..., :3]
    out = (1 - alpha) * np.asarray(base.convert("RGB"), dtype=np.float32) / 255.0 + alpha * colored
    return Image.fromarray(np.uint8(np.clip(out, 0, 1) * 255), "RGB")


def gradcam(model: XferModel, image: ImageSource, target: int | None = None, size: int | None = None,
            alpha: float = 0.45) -> Image.Image:
    """The image as the model sees it, with the Grad-CAM heat map of ``target`` (default: the
    predicted class) laid over it; ``size`` pixels square (default: the model's input size,
    at least 224 so that small models stay readable)."""
    size = size or max(model.preprocessing.crop_size, 224)
    cam, _ = gradcam_map(model, image, target)
    return overlay(model_view(model, image, size), cam, alpha)


__all__: list[Any] = ["gradcam", "gradcam_map", "find_target_layer", "overlay", "model_view"]
