"""Running a loaded model on images: probabilities and top-k labels.

The lowest layer of prediction, shared by :func:`xfer.predict` (which also resolves folders and
Hub repo ids) and the service's model cache; it imports neither of them.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import torch

from .data import ImageSource
from .data.transforms import batch_images
from .errors import ConfigError
from .model import XferModel


def check_batch_size(batch_size: object) -> None:
    """Raise :class:`ConfigError` unless ``batch_size`` is a whole number of at least 1."""
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"The batch size must be a whole number of at least 1, got {batch_size}.")


def check_k(k: object) -> None:
    """Raise :class:`ConfigError` unless ``k`` (how many labels to return) is a whole number of at least 1."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ConfigError(f"k must be a whole number of at least 1, got {k}.")


@torch.no_grad()
def predict_proba(model: XferModel, images: Sequence[ImageSource], batch_size: int = 32) -> torch.Tensor:
    """Softmax probabilities, (N, C), for images given as paths, bytes, PIL images or arrays."""
    check_batch_size(batch_size)
    model.net.eval()
    dev = model.device
    out = []
    for i in range(0, len(images), batch_size):
        x = batch_images(images[i : i + batch_size], model.preprocessing).to(dev)
        out.append(model.net(x).float().softmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, len(model.classes))


def top_k(model: XferModel, images: Sequence[ImageSource] | ImageSource, k: int = 5,
          batch_size: int = 32) -> list[dict[str, float]]:
    """Top-k ``{label: probability}`` per image, most likely first (k capped at the number of classes)."""
    if not isinstance(images, (list, tuple)):
        images = [images]
    check_k(k)
    probs = predict_proba(model, images, batch_size)
    k = min(int(k), len(model.classes))
    results = []
    for row in probs:
        top = row.topk(k)
        results.append({model.classes[i]: float(p) for p, i in zip(top.values.tolist(), top.indices.tolist())})
    return results
