"""Image preprocessing and the torch Dataset over a list of (file, label) pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from .backbones import Preprocessing
from .data import ImageSource, open_image


def make_transform(pre: Preprocessing, train: bool = False) -> Callable:
    """The eval transform (resize, centre crop, normalise) or the augmented training one
    (random resized crop and horizontal flip), with the weights' mean and std."""
    interp = InterpolationMode(pre.interpolation)
    if train:
        geometry = [T.RandomResizedCrop(pre.crop_size, scale=(0.35, 1.0), interpolation=interp, antialias=True),
                    T.RandomHorizontalFlip()]
    else:
        geometry = [T.Resize(pre.resize_size, interpolation=interp, antialias=True), T.CenterCrop(pre.crop_size)]
    return T.Compose([
        T.ToImage(), *geometry, T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean=list(pre.mean), std=list(pre.std)),
    ])


class ImageDataset(Dataset):
    """(file, label) pairs → (normalised tensor, label)."""

    def __init__(self, items: Sequence[tuple[ImageSource, int]], transform: Callable, max_side: int | None = None):
        self.items = list(items)
        self.transform = transform
        # Decoding JPEGs at reduced scale is much faster; keep twice the crop's detail.
        self.max_side = max_side

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        source, label = self.items[i]
        return self.transform(open_image(source, max_side=self.max_side)), label


def batch_images(images: Sequence[ImageSource], pre: Preprocessing) -> torch.Tensor:
    """Open and preprocess images for inference into one (N, 3, H, W) batch."""
    t = make_transform(pre, train=False)
    return torch.stack([t(open_image(img, max_side=2 * pre.resize_size)) for img in images])


def describe(item: ImageSource) -> str:
    return str(item) if isinstance(item, (str, Path)) else type(item).__name__
