"""Which xfer networks are timm models, and the weight-name maps between the two.

A network is timm-loadable when timm builds the very same computation under another set of
parameter names: the backbone is kept whole (strategies ``head``, ``finetune``, ``scratch``,
whose head is one Linear after a dropout) and timm has the architecture with torchvision's
layers. Every map here is checked numerically by tests/test_interop.py (same outputs from xfer
and from ``timm.create_model``). ``truncate`` (early stages plus new hidden layers) has no timm
equivalent and stays xfer-only. Nothing here imports timm: saving a timm-loadable folder
needs only these renames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

HEAD_LINEAR = "head.1"  # make_head's Linear when the strategy has no hidden layers: [Dropout, Linear]


@dataclass(frozen=True)
class TimmArch:
    """How one xfer backbone maps onto a timm model."""

    name: str  # timm's model name
    classifier: str  # timm's final Linear (pretrained_cfg["classifier"])
    first_conv: str
    to_timm: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]  # xfer body+head keys -> timm keys
    from_timm: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    max_crop: int | None = None  # largest input size at which both compute the same thing
    model_args: Callable[[float], dict[str, Any]] = lambda dropout: {}


def _split_head(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    body, head = {}, {}
    for k, v in state.items():
        if k.startswith("body."):
            body[k[len("body."):]] = v
        elif k.startswith(HEAD_LINEAR + "."):
            head[k[len(HEAD_LINEAR) + 1:]] = v
        else:
            raise KeyError(f"unexpected weight {k!r} for a timm-compatible network")
    return body, head


def _resnet_to(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # torchvision's ResNet parameter names are timm's own; only the new head becomes ``fc``.
    body, head = _split_head(state)
    return {**body, **{f"fc.{k}": v for k, v in head.items()}}


def _resnet_from(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {(f"{HEAD_LINEAR}.{k[3:]}" if k.startswith("fc.") else f"body.{k}"): v for k, v in state.items()}


# torchvision's VGG classifier is Linear(512*7*7, 4096), ReLU, Dropout, Linear(4096, 4096), ReLU, Dropout, [new
# head]; timm's is the same two layers as convolutions (7x7, then 1x1) in ``pre_logits`` (its own vgg.py
# checkpoint filter does this conversion for torchvision checkpoints).
_VGG_PAIRS = (("classifier.0.", "pre_logits.fc1.", (512, 7, 7)), ("classifier.3.", "pre_logits.fc2.", (4096, 1, 1)))


def _vgg_to(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    body, head = _split_head(state)
    out = {}
    for k, v in body.items():
        for tv, tm, shape in _VGG_PAIRS:
            if k.startswith(tv):
                k = tm + k[len(tv):]
                v = v.reshape(v.shape[0], *shape) if k.endswith("weight") else v
                break
        out[k] = v
    return {**out, **{f"head.fc.{k}": v for k, v in head.items()}}


def _vgg_from(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if k.startswith("head.fc."):
            out[f"{HEAD_LINEAR}.{k[len('head.fc.'):]}"] = v
            continue
        for tv, tm, _ in _VGG_PAIRS:
            if k.startswith(tm):
                k = tv + k[len(tm):]
                v = v.reshape(v.shape[0], -1) if k.endswith("weight") else v
                break
        out[f"body.{k}"] = v
    return out


TIMM_ARCHS: dict[str, TimmArch] = {
    # ResNet's forward_head is global pool, dropout(drop_rate), fc: exactly xfer's [Dropout, Linear] head.
    "resnet18": TimmArch("resnet18", "fc", "conv1", _resnet_to, _resnet_from,
                         model_args=lambda dropout: {"drop_rate": dropout}),
    "resnet50": TimmArch("resnet50", "fc", "conv1", _resnet_to, _resnet_from,
                         model_args=lambda dropout: {"drop_rate": dropout}),
    # torchvision pools VGG's features to 7x7 (AdaptiveAvgPool2d) before the first Linear; timm pools
    # only a map smaller than 7x7 up to 7x7 and otherwise slides the 7x7 convolution over it. They agree
    # while the map is at most 7x7: inputs up to 255 px (VGG divides by 32).
    "vgg16": TimmArch("vgg16", "head.fc", "features.0", _vgg_to, _vgg_from, max_crop=255),
}


def timm_arch(backbone: str, strategy_keeps_all: bool, hidden: tuple[int, ...], crop_size: int) -> TimmArch | None:
    """The timm equivalent of a network, or None when it has none (xfer-only)."""
    arch = TIMM_ARCHS.get(backbone)
    if arch is None or not strategy_keeps_all or hidden:
        return None
    if arch.max_crop is not None and crop_size > arch.max_crop:
        return None
    return arch


def crop_pct(crop_size: int, resize_size: int) -> float:
    """timm's ``crop_pct`` for xfer's resize/crop: timm resizes to ``floor(crop / crop_pct)``, which must be
    exactly ``resize_size`` (a plain ``crop / resize`` can land a rounding error below it)."""
    pct = crop_size / resize_size
    while math.floor(crop_size / pct) < resize_size:
        pct = math.nextafter(pct, 0.0)
    return pct
