"""The strategy advisor: which of the four strategies fits a dataset, and why.

Two measured inputs decide. *Size*: the median images per class, "small" below
``SMALL_PER_CLASS``. *Domain*: one pass of an ImageNet-pretrained network over a
class-balanced sample; a linear probe, cross-validated, on its final features (what
``head`` trains on) against its early stages' pooled features (what ``truncate`` trains
on): final better means "similar" to ImageNet, early better "different"; a tie goes to
the median per-class ImageNet confidence (``SIMILAR_CONFIDENCE``). Unmeasured (no weights
offline), the domain is assumed similar.

small+similar → head, small+different → truncate, large+similar → finetune,
large+different → scratch. How the thresholds were set and checked: README, "The advisor"
(``bench/advisor.py``, ``bench/results/advisor.md``).
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from .data import DatasetReport, subsample
from .data.transforms import batch_images
from .device import DeviceInfo, select_device
from .nets.registry import get_backbone, list_backbones, pretrained_available
from .nets.strategies import backbone_network, classifier_layer, truncated_body

log = logging.getLogger(__name__)

SMALL_PER_CLASS = 1000
SIMILAR_CONFIDENCE = 0.28
#: The measuring sample: PROBE_PER_CLASS images of each class, fewer when there are many
#: classes (at most SAMPLE_IMAGES in all) but never under MIN_SAMPLE_PER_CLASS.
PROBE_PER_CLASS = 16
SAMPLE_IMAGES = 200
MIN_SAMPLE_PER_CLASS = 8  # fewer makes a class's mean confidence and the probe too noisy
#: Preferred order for measuring similarity: fast, offline-capable backbones first.
SIMILARITY_BACKBONES = ("efficientnet_lite0", "mobilenet_v3_large", "resnet18", "efficientnet_b0",
                        "resnet50", "convnext_tiny", "vgg16")


@dataclass
class SimilarityStats:
    """What one pass of a pretrained network over a sample of the images measured.

    ``score`` (the confidence rule's input): the median over classes of the per-class mean
    top-1 ImageNet confidence. ``probe``: cross-validated accuracy of a linear classifier
    on the features ``head`` trains on (the network's final ones) and on those ``truncate``
    trains on (its early stages', pooled); None when a class has too few images.
    """

    score: float
    mean: float  # mean top-1 confidence over all sampled images
    per_class: dict[str, float]
    backbone: str
    images: int
    probe: dict[str, float] | None = None
    folds: int = 0


@dataclass
class Recommendation:
    strategy: str
    reason: str
    images_per_class: float
    similarity: float | None  # the confidence score, None if not measured
    similarity_backbone: str | None = None
    probe: dict[str, float] | None = None  # {"head": acc, "truncate": acc} when measured
    measurement: SimilarityStats | None = None  # pass it back as ``similarity=`` to skip measuring again

    def to_dict(self) -> dict:
        """What a saved model's config.json and ``recommend --json`` keep (the measurement's summary)."""
        d = asdict(self)
        m = d.pop("measurement")
        d["sample_images"] = m["images"] if m else None
        return d


def similarity_backbone() -> str | None:
    """The first backbone whose ImageNet weights load without a download, if any."""
    names = set(list_backbones())
    for name in SIMILARITY_BACKBONES:
        if name in names and pretrained_available(name):
            return name
    return None


def sample_per_class(num_classes: int) -> int:
    return max(MIN_SAMPLE_PER_CLASS, min(PROBE_PER_CLASS, SAMPLE_IMAGES // max(num_classes, 1)))


@torch.no_grad()
def similarity_stats(report: DatasetReport, backbone: str | None = None, per_class: int | None = None,
                     device: DeviceInfo | None = None, seed: int = 0) -> SimilarityStats | None:
    """Measure a class-balanced sample with a pretrained network; None if no weights are at hand.

    One pass gives the ImageNet confidences and the input of the ImageNet classifier (what
    ``head`` sees); the early stages, run again and pooled as ``truncate`` pools them, give
    the other probe's features.
    """
    backbone = backbone or similarity_backbone()
    if backbone is None or not report.items:
        return None
    b = get_backbone(backbone)
    device = device or select_device("cpu")
    net = backbone_network(backbone, "imagenet").eval().to(device.device)
    early = truncated_body(backbone, net, b.default_cut).eval()
    grabbed: list[torch.Tensor] = []
    hook = classifier_layer(backbone, net).register_forward_pre_hook(lambda m, args: grabbed.append(args[0].flatten(1).float()))
    items = subsample(report.items, per_class or sample_per_class(len(report.classes)), seed=seed)
    pre = b.get_preprocessing()
    confidence: list[float] = []
    feats: dict[str, list[torch.Tensor]] = {"head": [], "truncate": []}
    try:
        for i in range(0, len(items), 16):
            x = batch_images([p for p, _ in items[i : i + 16]], pre).to(device.device)
            confidence += net(x).float().softmax(1).max(1).values.tolist()
            feats["head"].append(grabbed.pop().cpu())
            feats["truncate"].append(early(x).float().cpu())
    finally:
        hook.remove()
    labels = torch.tensor([c for _, c in items])
    by_class: dict[int, list[float]] = {}
    for label, c in zip(labels.tolist(), confidence):
        by_class.setdefault(label, []).append(c)
    class_means = {report.classes[c]: statistics.fmean(v) for c, v in sorted(by_class.items())}
    counts = torch.bincount(labels)
    folds = min(4, int(counts[counts > 0].min())) if len(by_class) > 1 else 0
    probe = ({k: probe_accuracy(torch.cat(f), labels, folds, seed) for k, f in feats.items()}
             if folds >= 2 else None)
    return SimilarityStats(float(statistics.median(class_means.values())), statistics.fmean(confidence),
                           class_means, backbone, len(items), probe, folds if probe else 0)


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, folds: int = 4, seed: int = 0,
                   weight_decay: float = 1e-3, steps: int = 100) -> float:
    """Stratified k-fold accuracy of an L2-regularised softmax regression on standardised features."""
    g = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(labels), dtype=torch.long)
    for c in labels.unique():  # deal each class's images over the folds, in random order
        idx = (labels == c).nonzero().flatten()
        fold[idx[torch.randperm(len(idx), generator=g)]] = torch.arange(len(idx)) % folds
    n_classes = int(labels.max()) + 1
    correct = 0
    for k in range(folds):
        train, test = fold != k, fold == k
        mu, sd = features[train].mean(0), features[train].std(0) + 1e-6
        xtr, xte = (features[train] - mu) / sd, (features[test] - mu) / sd
        w = torch.zeros(features.shape[1], n_classes, requires_grad=True)
        bias = torch.zeros(n_classes, requires_grad=True)
        opt = torch.optim.LBFGS([w, bias], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(xtr @ w + bias, labels[train]) + weight_decay * (w * w).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        correct += int(((xte @ w + bias).detach().argmax(1) == labels[test]).sum())
    return correct / len(labels)


def recommend(report: DatasetReport, similarity: float | SimilarityStats | Literal["measure"] | None = "measure",
              device: DeviceInfo | None = None) -> Recommendation:
    """Pick a strategy for ``report`` and say why.

    ``similarity="measure"`` measures a sample (see :func:`similarity_stats`); pass a
    :class:`SimilarityStats` (``Recommendation.measurement``) to reuse a measurement, a
    float for a confidence score alone, or None to decide on size alone.
    """
    counts = [n for n in report.counts.values() if n > 0]
    per_class = float(statistics.median(counts)) if counts else 0.0
    small = per_class < SMALL_PER_CLASS
    why_not = "it was not asked for"
    if similarity == "measure":
        similarity = similarity_stats(report, device=device)
        why_not = "no pretrained weights are available offline"
    stats = similarity if isinstance(similarity, SimilarityStats) else None
    score = stats.score if stats else similarity
    size_txt = (f"{per_class:.0f} images per class (median) is {'small' if small else 'large'} "
                f"(threshold {SMALL_PER_CLASS})")
    conf_txt = "" if score is None else f"a pretrained network is {score:.0%} confident on your images (typical class)"
    if stats is not None and stats.probe is not None:
        late, early = stats.probe["head"], stats.probe["truncate"]
        probe_txt = (f"on {stats.images} of your images, a linear classifier scores {late:.0%} on the pretrained "
                     f"network's final features and {early:.0%} on its early layers' ({stats.folds}-fold "
                     f"cross-validated)")
    # Near-ties are not sent to the confidence score: on printed digits the probe said truncate by
    # 1-2 points in 3 of 3 samples where truncate measured best, and the confidence said head.
    if stats is not None and stats.probe is not None and late != early:
        similar = late > early
        sim_txt = (f"{probe_txt}, so its {'late, ImageNet-specific' if similar else 'generic early'} features "
                   f"serve your classes better: the domain looks {'similar to' if similar else 'different from'} "
                   f"ImageNet's photos")
    elif score is not None:
        similar = score >= SIMILAR_CONFIDENCE
        tie = f"{probe_txt}, a tie; " if stats is not None and stats.probe is not None else ""
        sim_txt = (f"{tie}{conf_txt}, so the domain looks {'similar to' if similar else 'different from'} "
                   f"ImageNet's photos (threshold {SIMILAR_CONFIDENCE:.0%})")
    else:
        similar = True
        sim_txt = (f"similarity to ImageNet was not measured ({why_not}), so the pick is by size alone "
                   "and the domain is assumed similar")
    strategy = {(True, True): "head", (True, False): "truncate",
                (False, True): "finetune", (False, False): "scratch"}[(small, similar)]
    reason = f"{size_txt}; {sim_txt}."
    log.info("recommend %s: %s", strategy, reason)
    return Recommendation(strategy, reason, per_class, score, stats.backbone if stats else None,
                          stats.probe if stats else None, stats)
