"""How long a job holds a GPU it has to ask for in advance (ZeroGPU), and how a run is split to fit.

A ZeroGPU Space gets a GPU per call, for a duration stated up front; a longer call is aborted. The
rule: seconds = overhead + margin x (images x passes x seconds per image), capped. A training run
whose epochs do not fit one allocation is split into parts of whole epochs
(:func:`plan_parts`), trained one after the other with the state carried between them
(:func:`xfer.api.train_part`).

The per-image figures are a conservative constant, not a measurement: no GPU was available to
this project (README, "Benchmarks / GPU"). They assume VGG-16, the heaviest backbone offered, at
224 px on a ZeroGPU slice (an H200 MIG 3g.71gb, about 3/7 of an H200) at a tenth of the throughput
targets stated for a whole H200 (a ``finetune`` epoch at 1,000 images/s, the frozen-body pass at
3,000 images/s), and scale with the image area. Replace them with ``bench/gpu.py`` figures once
measured on a Space.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .errors import ConfigError
from .nets.registry import get_backbone
from .nets.strategies import NetworkSpec, get_strategy, has_split


@dataclass(frozen=True)
class GpuRates:
    """Seconds per image at 224 px (area-scaled for other sizes), and the allocation's fixed terms."""

    train_s: float = 0.01  # a training step (forward + backward) of a trained body: 100 images/s
    eval_s: float = 1 / 300  # a forward pass without gradients (validation, a frozen body's features)
    head_s: float = 0.0002  # a head epoch on cached features
    overhead_s: float = 30.0  # the worker's start, weights to the GPU, cuDNN autotuning, the first batch
    margin: float = 1.5  # on top of the estimate: a slower slice, a cold disk
    min_s: int = 20  # never ask for less


DEFAULT_RATES = GpuRates()
# The most one allocation may ask for. ZeroGPU documents a 60 s default and no maximum (its maintainers
# have named 5 minutes); the daily quotas are 2 (anonymous) and 3.5 (free account) minutes. 120 s leaves
# a signed-in visitor room for a second part and keeps queue priority (shorter asks go first).
MAX_ALLOCATION_S = int(os.environ.get("XFER_ZEROGPU_MAX_S", "120"))


@dataclass(frozen=True)
class Part:
    """Epochs ``first``..``last`` (1-based, inclusive) in one allocation of ``seconds``."""

    first: int
    last: int
    seconds: int

    @property
    def epochs(self) -> int:
        return self.last - self.first + 1


def _area(image_size: int) -> float:
    return (image_size / 224) ** 2


def _ask(estimate: float, rates: GpuRates, cap_s: int) -> int:
    return int(min(cap_s, max(rates.min_s, math.ceil(rates.overhead_s + rates.margin * estimate))))


def cached_share(spec: NetworkSpec, cache_frozen: bool) -> float | None:
    """The share of a trained body's stages that train on cached maps (``TrainConfig.cache_frozen``), or None
    where the run trains on images. By stage count: the frozen first stages, at the highest resolutions, hold
    more than their share of the compute, so this overstates the rest's (Lite0's 2 of 9 stages: 0.22, where
    their step measured about 0.1 of the whole body's on the CPU)."""
    if not (cache_frozen and has_split(spec)):
        return None
    n = get_backbone(spec.backbone).num_stages
    return (n - spec.frozen_stages) / n


def part_estimate(epochs: int, n_train: int, n_val: int, strategy: str, image_size: int = 224, views: int = 1,
                  rates: GpuRates = DEFAULT_RATES, cached: float | None = None) -> float:
    """Estimated GPU seconds (before overhead and margin) of ``epochs`` epochs in one allocation.

    A frozen body's features are computed once per allocation (``views`` per training image), then
    the head's epochs are nearly free; a trained body costs a training step per image and a
    validation pass per epoch. ``cached`` (:func:`cached_share`): the trained body's frozen stages run once
    per allocation, as a frozen body does, and each epoch costs that share of a whole body's.
    """
    a = _area(image_size)
    once = (views * n_train + n_val) * rates.eval_s * a
    if get_strategy(strategy).frozen:
        return once + epochs * (n_train + n_val) * rates.head_s
    epoch = (n_train * rates.train_s + n_val * rates.eval_s) * a
    return epochs * epoch if cached is None else once + epochs * epoch * cached


def plan_parts(epochs: int, n_train: int, n_val: int, strategy: str, image_size: int = 224, views: int = 1,
               rates: GpuRates = DEFAULT_RATES, cap_s: int = MAX_ALLOCATION_S,
               cached: float | None = None) -> list[Part]:
    """Split ``epochs`` into as few allocations as fit under ``cap_s``, as even as possible.

    Raises :class:`~xfer.ConfigError` when even one epoch does not fit one allocation (say what to
    lower instead of asking for a GPU the platform would take back mid-epoch).
    """
    if epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {epochs}.")
    budget = (cap_s - rates.overhead_s) / rates.margin  # estimate seconds one allocation holds
    one = part_estimate(1, n_train, n_val, strategy, image_size, views, rates, cached)
    if one > budget:
        raise ConfigError(
            f"One epoch on {n_train + n_val} images needs about {rates.overhead_s + rates.margin * one:.0f} s of GPU, "
            f"more than one ZeroGPU allocation ({cap_s} s): use fewer images per class or a smaller image size.")
    per = epochs
    while per > 1 and part_estimate(per, n_train, n_val, strategy, image_size, views, rates, cached) > budget:
        per -= 1
    count = math.ceil(epochs / per)
    sizes = [epochs // count + (1 if i < epochs % count else 0) for i in range(count)]
    parts, first = [], 1
    for size in sizes:
        est = part_estimate(size, n_train, n_val, strategy, image_size, views, rates, cached)
        parts.append(Part(first, first + size - 1, _ask(est, rates, cap_s)))
        first += size
    return parts


def inference_seconds(n_images: int, image_size: int = 224, rates: GpuRates = DEFAULT_RATES,
                      cap_s: int = MAX_ALLOCATION_S, backward: bool = False) -> int:
    """The allocation for a forward pass over ``n_images`` (``backward``: with gradients, as Grad-CAM)."""
    per = rates.train_s if backward else rates.eval_s
    return _ask(n_images * per * _area(image_size), rates, cap_s)
