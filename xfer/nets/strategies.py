"""The four transfer-learning strategies, as a table, and the one function that builds a network.

A strategy says what part of the pretrained backbone is kept, whether it starts
from ImageNet weights, whether it is frozen, and what new layers go on top.
:func:`build_network` turns (backbone entry, strategy row, number of classes)
into a :class:`Classifier`, composed of :func:`backbone_network`, :func:`classifier_layer` and
:func:`truncated_body`; the advisor measures with the same three, so there is one way to make a network.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from .registry import get_backbone, load_pretrained

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Strategy:
    """One row of the strategy table."""

    name: str
    title: str  # the situation it is for
    summary: str  # one line: what it does
    explanation: str  # a paragraph for the UI and the model card
    keep: str  # "all": every pretrained layer but the last classifier layer; "early": the first stages only
    pretrained: bool  # start the kept layers from ImageNet weights
    frozen: bool  # kept layers get no gradient (and their outputs can be cached)
    # A training body keeps its first stages frozen (the registry's ``finetune_frozen`` of each backbone).
    early_frozen: bool
    hidden: tuple[int, ...]  # widths of the new hidden fully connected layers
    body_lr_mult: float  # learning rate of kept layers relative to the new head
    lr: float  # default AdamW learning rate of the new head (finetune's measured: bench/results/finetune-sweep.md)


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in [
        Strategy(
            "head", "Small data, similar domain",
            "Freeze the pretrained network; train only a new final layer.",
            "Your images look like everyday photos (ImageNet's domain) and you have few of them. "
            "The pretrained network already computes features that separate such images, so it is "
            "frozen and only a new final classification layer is trained on top of it. Each image "
            "goes through the frozen network once (its features are cached), which makes this by "
            "far the fastest strategy and the hardest to overfit.",
            keep="all", pretrained=True, frozen=True, early_frozen=False, hidden=(), body_lr_mult=0.0, lr=1e-3,
        ),
        Strategy(
            "truncate", "Small data, different domain",
            "Keep only the early layers (frozen); train new fully connected layers on them.",
            "Your images differ from everyday photos (drawings, scans, microscopy, ...) and you have "
            "few of them. The late layers of a pretrained network are specialised to ImageNet's "
            "objects, but its early layers detect generic edges, colours and textures that transfer "
            "to almost anything. Only those early layers are kept, frozen, and new fully connected "
            "layers are trained on their pooled features.",
            keep="early", pretrained=True, frozen=True, early_frozen=False, hidden=(512,), body_lr_mult=0.0,
            lr=1e-3,
        ),
        Strategy(
            "finetune", "Large data, similar domain",
            "Start from the pretrained network and train all of it but its first layers, the backbone "
            "at a lower rate.",
            "You have many images of a domain close to everyday photos. Starting from the pretrained "
            "weights, the network is trained: the new final layer at the full learning rate, "
            "the pretrained layers at a tenth of it so that what they already know is adjusted, "
            "not destroyed. Its first layers, generic edge and colour detectors that work at the "
            "highest resolution, stay frozen: that saves a third of the compute or more. The most "
            "accurate strategy when there is enough data, and the slowest of the pretrained ones.",
            keep="all", pretrained=True, frozen=False, early_frozen=True, hidden=(), body_lr_mult=0.1, lr=3e-3,
        ),
        Strategy(
            "scratch", "Large data, different domain",
            "Same architecture, random initial weights, everything trained.",
            "You have many images of a domain unlike everyday photos, so ImageNet's weights bring "
            "little. The architecture is kept but every weight starts random and is trained on your "
            "data alone. It needs the most data and the most epochs.",
            keep="all", pretrained=False, frozen=False, early_frozen=False, hidden=(), body_lr_mult=1.0,
            lr=3e-3,
        ),
    ]
}


def get_strategy(name: str) -> Strategy:
    """Look up a strategy row by name."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"Unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)} or auto."
        ) from None


class Classifier(nn.Module):
    """``head(body(x))``: a (possibly frozen) pretrained body and a new head.

    ``body`` maps images to a flat feature vector; ``head`` maps features to class
    logits. A frozen body stays in eval mode (its batch-norm statistics and dropout
    are part of what was pretrained), so its outputs are deterministic and cacheable.
    ``frozen_parts`` (modules inside a training body, its first stages) are frozen and
    kept in eval mode the same way. ``split``, when set, is the body cut after those stages:
    (first, rest) with ``body(x) == rest(first(x))``, so that the frozen part's outputs can be
    cached and ``rest`` trained on them (``TrainConfig.cache_frozen``).
    """

    def __init__(self, body: nn.Module, head: nn.Module, frozen: bool,
                 frozen_parts: tuple[nn.Module, ...] = (),
                 split: tuple[nn.Module, nn.Module] | None = None) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.frozen = frozen
        # Tuples, not ModuleLists: these modules are already registered inside body, once.
        self.frozen_parts = tuple(frozen_parts)
        self.split = split
        for part in self.frozen_modules:
            part.requires_grad_(False)

    @property
    def frozen_modules(self) -> tuple[nn.Module, ...]:
        """What stays frozen and in eval mode: the whole body, or the frozen leading stages of a trained one."""
        return (self.body,) if self.frozen else self.frozen_parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        for part in self.frozen_modules:
            part.eval()
        return self


@dataclass(frozen=True)
class NetworkSpec:
    """Everything needed to rebuild a network's architecture (stored in config.json)."""

    backbone: str
    strategy: str
    num_classes: int
    cut: int | None = None  # stages kept by "truncate"
    hidden: tuple[int, ...] = ()
    dropout: float = 0.2
    frozen_stages: int = 0  # leading backbone stages that a training body keeps frozen

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NetworkSpec":
        return cls(d["backbone"], d["strategy"], int(d["num_classes"]), d.get("cut"),
                   tuple(d.get("hidden", ())), float(d.get("dropout", 0.2)), int(d.get("frozen_stages", 0)))


def make_spec(backbone: str, strategy: str, num_classes: int, cut: int | None = None,
              dropout: float = 0.2, frozen_stages: int | None = None) -> NetworkSpec:
    """Resolve defaults from the tables (the cut point, the hidden layers, the frozen stages) into a spec.

    ``frozen_stages`` applies to strategies that train the body: None takes the backbone's
    default for ``finetune`` (none for ``scratch``), 0 trains every layer.
    """
    b, s = get_backbone(backbone), get_strategy(strategy)
    if num_classes < 2:
        raise ConfigError(f"A classifier needs at least 2 classes, got {num_classes}.")
    if s.keep == "early":
        n = b.num_stages
        cut = b.default_cut if cut is None else int(cut)
        if not 1 <= cut < n:
            raise ConfigError(f"--cut for {backbone} must be between 1 and {n - 1} (it has {n} stages).")
    else:
        cut = None
    if s.frozen:  # the whole body is frozen already
        frozen_stages = 0
    elif frozen_stages is None:
        frozen_stages = b.finetune_frozen if s.early_frozen else 0
    elif frozen_stages and not s.pretrained:
        raise ConfigError(f"{strategy} starts from random weights: freezing its first stages would keep them "
                          "random. Use --frozen-stages 0, or finetune.")
    elif not 0 <= int(frozen_stages) < b.num_stages:
        raise ConfigError(f"--frozen-stages for {backbone} must be between 0 and {b.num_stages - 1} "
                          f"(it has {b.num_stages} stages).")
    return NetworkSpec(backbone, strategy, num_classes, cut, s.hidden, dropout, int(frozen_stages))


def make_head(in_features: int, hidden: tuple[int, ...], num_classes: int, dropout: float) -> nn.Sequential:
    """New fully connected layers: [dropout, linear, relu] per hidden width, then dropout, linear."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Dropout(dropout), nn.Linear(width, h), nn.ReLU(inplace=True)]
        width = h
    layers += [nn.Dropout(dropout), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)


def reinit_last_layers(body: nn.Module, n: int) -> int:
    """Re-initialise the last ``n`` layers that have parameters; returns how many were reset."""
    layers = [m for m in body.modules() if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False))]
    for m in layers[-n:] if n > 0 else []:
        m.reset_parameters()
    return min(n, len(layers))


def backbone_network(backbone: str, weights: str | Path | None = None) -> nn.Module:
    """The backbone's whole network, its 1000-class ImageNet classifier included.

    ``weights``: "imagenet", a path to a state dict of that network, or None/"none" (random).
    """
    b = get_backbone(backbone)
    if weights in (None, "none"):
        return b.make()  # the random initialisation is the initialisation
    # Structure only, then the loaded tensors become its parameters: no random initialisation
    # (about a second for VGG-16 on a CPU) that the weights would overwrite.
    net = b.make_meta()
    load_pretrained(net, backbone, weights, assign=True)
    return net


def classifier_layer(backbone: str, net: nn.Module) -> nn.Linear:
    """The final ImageNet classifier layer of ``net`` (a :func:`backbone_network`), the one a new head replaces."""
    b = get_backbone(backbone)
    last = net.get_submodule(b.head)
    if not isinstance(last, nn.Linear):
        raise ConfigError(f"Registry error: {b.name}.{b.head} is not a Linear layer.")
    return last


def truncated_body(backbone: str, net: nn.Module, cut: int) -> nn.Sequential:
    """The first ``cut`` stages of ``net`` (a :func:`backbone_network`), pooled and flattened to (N, C).

    Shares its modules with ``net``: what ``truncate`` trains a head on, and what the advisor's probe measures.
    """
    return nn.Sequential(*get_backbone(backbone).stages(net)[:cut], nn.AdaptiveAvgPool2d(1), nn.Flatten())


def split_body(backbone: str, net: nn.Module, cut: int) -> tuple[nn.Sequential, nn.Sequential] | None:
    """``net`` (a :func:`backbone_network`, its classifier layer replaced or not) cut after its first ``cut``
    stages: (first, rest), sharing their modules with ``net``, with ``rest(first(x))`` equal to what the
    network computes up to its classifier layer. None where the registry entry has no ``after_stages``.

    A cut block runs as ``nn.Sequential`` calls it: EfficientNet-Lite's stochastic depth (a training-time
    drop of residual branches) is off in ``rest``; in eval mode the outputs are the same.
    """
    b = get_backbone(backbone)
    stages = b.stages(net)
    if b.after_stages is None or not 1 <= cut < len(stages):
        return None
    return nn.Sequential(*stages[:cut]), nn.Sequential(*stages[cut:], b.after_stages(net))


def has_split(spec: NetworkSpec) -> bool:
    """Whether :func:`build_network` gives this spec's network a ``split`` (its body cut after the frozen
    stages, what ``TrainConfig.cache_frozen`` caches): a trained body with frozen first stages, of a backbone
    whose registry entry says what follows its stages."""
    return (bool(spec.frozen_stages) and not get_strategy(spec.strategy).frozen
            and get_backbone(spec.backbone).after_stages is not None)


def build_network(spec: NetworkSpec, weights: str | Path | None = None, reinit: int = 0) -> Classifier:
    """Build the network for ``spec``.

    ``weights`` is "imagenet", a path to a state dict of the full torchvision
    backbone, or None for random weights. It only matters for strategies that
    start from pretrained weights (``scratch`` ignores it).
    """
    b, s = get_backbone(spec.backbone), get_strategy(spec.strategy)
    full = backbone_network(b.name, weights if s.pretrained else None)
    if s.keep == "all":
        in_features = classifier_layer(b.name, full).in_features
        full.set_submodule(b.head, nn.Identity())
        body: nn.Module = full
    else:
        body = truncated_body(b.name, full, spec.cut)
        with torch.no_grad():
            in_features = body.eval()(torch.zeros(1, 3, 64, 64)).shape[1]
    if reinit:
        reinit_last_layers(body, reinit)
    head = make_head(in_features, spec.hidden, spec.num_classes, spec.dropout)
    early = tuple(b.stages(full)[: spec.frozen_stages]) if spec.frozen_stages and not s.frozen else ()
    split = split_body(b.name, full, spec.frozen_stages) if has_split(spec) else None
    net = Classifier(body, head, frozen=s.frozen, frozen_parts=early, split=split)
    log.info("built %s/%s: %d features -> %d classes, %d trainable parameters",
             b.name, s.name, in_features, spec.num_classes,
             sum(p.numel() for p in net.parameters() if p.requires_grad))
    return net


def param_groups(net: Classifier, strategy: str, lr: float, weight_decay: float,
                 body_lr: float | None = None) -> list[dict]:
    """Optimizer parameter groups: the head at ``lr``, a trainable body at ``body_lr`` (None: ``lr *
    body_lr_mult``; a frozen strategy's body never trains).

    Biases and normalisation weights get no weight decay, as in torchvision's references.
    """
    s = get_strategy(strategy)
    groups = []
    body = 0.0 if s.body_lr_mult == 0 else (lr * s.body_lr_mult if body_lr is None else body_lr)
    for part, part_lr in ((net.head, lr), (net.body, body)):
        params = [p for p in part.parameters() if p.requires_grad]
        if not params or part_lr == 0:
            continue
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups.append({"params": decay, "lr": part_lr, "weight_decay": weight_decay})
        if no_decay:
            groups.append({"params": no_decay, "lr": part_lr, "weight_decay": 0.0})
    return groups
