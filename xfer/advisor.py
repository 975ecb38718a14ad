"""The strategy advisor: which of the four strategies fits a dataset, and why.

The rule has two measured inputs:

* **size**: the median number of images per class. Below ``SMALL_PER_CLASS`` the
  dataset is "small" (training many weights would overfit).
* **similarity to ImageNet**: how confident an ImageNet-pretrained network
  (efficientnet_lite0, whose weights ship with xfer, when available) is about *some*
  ImageNet class on a class-balanced sample of the images. Everyday photos make it
  confident; drawings, scans or synthetic textures do not. The score is the **median
  over classes of the per-class mean top-1 softmax confidence**. A plain mean over all
  images (the first version) let one class that happens to look like an ImageNet
  object dominate: procedural concentric rings are 60% "maze", so the synthetic
  patterns of ``bench/make_shapes.py`` scored 0.26 against 0.48 for the flower photos;
  with the class median they score 0.16 against 0.42 (same sample, see
  ``bench/results/advisor.md``). At or above ``SIMILAR_CONFIDENCE`` the domain is "similar".

small+similar → head, small+different → truncate, large+similar → finetune,
large+different → scratch. The thresholds were tuned against measurements by
``bench/advisor.py`` (see ``bench/results/advisor.md``) on the flowers and synthetic patterns
at 20, 100 and 300-508 images per class: at every one of those sizes a frozen body (head or
truncate) beat training the body (finetune, scratch) under CPU-sized budgets, by 4 points or
more at the largest sizes, so "large" starts above what was measured, at 1,000 images per
class (the usual rule of thumb; not measured here). The printed digits of
``bench/make_digits.py`` were kept out of the tuning, as a check. Without any pretrained
weights available offline, similarity cannot be measured and the domain is assumed similar.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import asdict, dataclass

import torch

from .backbones import get_backbone, list_backbones, load_pretrained, pretrained_available
from .data import DatasetReport, subsample
from .device import DeviceInfo, select_device
from .transforms import batch_images

log = logging.getLogger(__name__)

SMALL_PER_CLASS = 1000
SIMILAR_CONFIDENCE = 0.28
SAMPLE_IMAGES = 64
MIN_SAMPLE_PER_CLASS = 8  # fewer makes a class's mean confidence too noisy
#: Preferred order for measuring similarity: fast, offline-capable backbones first.
SIMILARITY_BACKBONES = ("efficientnet_lite0", "mobilenet_v3_large", "resnet18", "efficientnet_b0",
                        "resnet50", "convnext_tiny", "vgg16")


@dataclass
class Recommendation:
    strategy: str
    reason: str
    images_per_class: float
    similarity: float | None  # mean ImageNet top-1 confidence, None if not measured
    similarity_backbone: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def similarity_backbone() -> str | None:
    """The first backbone whose ImageNet weights load without a download, if any."""
    names = set(list_backbones())
    for name in SIMILARITY_BACKBONES:
        if name in names and pretrained_available(name):
            return name
    return None


@dataclass
class SimilarityStats:
    """Top-1 ImageNet confidences on a sample: ``score`` is what the rule uses."""

    score: float  # median over classes of the per-class mean top-1 confidence
    mean: float  # mean over all sampled images (the first version's measure)
    per_class: dict[str, float]
    backbone: str
    images: int


@torch.no_grad()
def similarity_stats(report: DatasetReport, backbone: str | None = None, sample: int = SAMPLE_IMAGES,
                     device: DeviceInfo | None = None, seed: int = 0) -> SimilarityStats | None:
    """Top-1 ImageNet confidence on a class-balanced sample; None if no weights are at hand."""
    backbone = backbone or similarity_backbone()
    if backbone is None or not report.items:
        return None
    b = get_backbone(backbone)
    device = device or select_device("cpu")
    net = b.make()
    load_pretrained(net, backbone, "imagenet")
    net.eval().to(device.device)
    per_class = max(MIN_SAMPLE_PER_CLASS, sample // max(len(report.classes), 1))
    items = subsample(report.items, per_class, seed=seed)
    pre = b.get_preprocessing()
    by_class: dict[int, list[float]] = {}
    for i in range(0, len(items), 16):
        chunk = items[i : i + 16]
        x = batch_images([p for p, _ in chunk], pre).to(device.device)
        for (_, label), c in zip(chunk, net(x).float().softmax(1).max(1).values.tolist()):
            by_class.setdefault(label, []).append(c)
    class_means = {report.classes[c]: statistics.fmean(v) for c, v in sorted(by_class.items())}
    every = [c for v in by_class.values() for c in v]
    return SimilarityStats(float(statistics.median(class_means.values())), float(statistics.fmean(every)),
                           class_means, backbone, len(every))


def measure_similarity(report: DatasetReport, backbone: str | None = None, sample: int = SAMPLE_IMAGES,
                       device: DeviceInfo | None = None, seed: int = 0) -> tuple[float, str] | None:
    """The similarity score (see :class:`SimilarityStats`) and the backbone that measured it; None if none can."""
    stats = similarity_stats(report, backbone, sample, device, seed)
    return (stats.score, stats.backbone) if stats else None


def recommend(report: DatasetReport, similarity: float | None | str = "measure",
              device: DeviceInfo | None = None) -> Recommendation:
    """Pick a strategy for ``report`` and say why.

    ``similarity="measure"`` measures it (see :func:`measure_similarity`); pass a
    float to reuse a measurement, or None to decide on size alone.
    """
    counts = [n for n in report.counts.values() if n > 0]
    per_class = float(statistics.median(counts)) if counts else 0.0
    small = per_class < SMALL_PER_CLASS
    sim_backbone, why_not = None, "it was not asked for"
    if similarity == "measure":
        measured = measure_similarity(report, device=device)
        similarity, sim_backbone = measured if measured else (None, None)
        why_not = "no pretrained weights are available offline"
    size_txt = (f"{per_class:.0f} images per class (median) is {'small' if small else 'large'} "
                f"(threshold {SMALL_PER_CLASS})")
    if similarity is None:
        similar = True
        sim_txt = (f"similarity to ImageNet was not measured ({why_not}), so the pick is by size alone "
                   "and the domain is assumed similar")
    else:
        similar = similarity >= SIMILAR_CONFIDENCE
        sim_txt = (f"a pretrained network is {similarity:.0%} confident on your images (typical class), so the domain "
                   f"looks {'similar to' if similar else 'different from'} ImageNet's photos "
                   f"(threshold {SIMILAR_CONFIDENCE:.0%})")
    strategy = {(True, True): "head", (True, False): "truncate",
                (False, True): "finetune", (False, False): "scratch"}[(small, similar)]
    reason = f"{size_txt}; {sim_txt}."
    log.info("recommend %s: %s", strategy, reason)
    return Recommendation(strategy, reason, per_class, similarity, sim_backbone)
