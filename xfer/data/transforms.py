"""Image preprocessing and the torch Dataset over a list of (file, label) pairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, v2 as T

from .images import ImageSource, open_image


#: RandomResizedCrop's range of crop areas (fraction of the image) and aspect ratios, shared
#: with the GPU pipeline (:mod:`xfer.data.pipeline`) so both paths augment alike.
@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a backbone's pretrained weights."""

    crop_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def for_size(self, image_size: int) -> "Preprocessing":
        """The same recipe at another input size, keeping the resize/crop ratio."""
        resize = round(image_size * self.resize_size / self.crop_size)
        return Preprocessing(image_size, resize, self.mean, self.std, self.interpolation)


TRAIN_SCALE = (0.35, 1.0)
TRAIN_RATIO = (3 / 4, 4 / 3)


def make_transform(pre: Preprocessing, train: bool = False, normalize: bool = True) -> Callable:
    """The eval transform (resize, centre crop, normalise) or the augmented training one
    (random resized crop and horizontal flip), with the weights' mean and std.

    ``normalize=False`` stops at the uint8 crop: a GPU then receives a quarter of the
    bytes and does the float conversion and normalisation itself (:mod:`xfer.data.pipeline`).
    """
    interp = InterpolationMode(pre.interpolation)
    if train:
        geometry = [T.RandomResizedCrop(pre.crop_size, scale=TRAIN_SCALE, ratio=TRAIN_RATIO, interpolation=interp,
                                        antialias=True),
                    T.RandomHorizontalFlip()]
    else:
        geometry = [T.Resize(pre.resize_size, interpolation=interp, antialias=True), T.CenterCrop(pre.crop_size)]
    tail = [T.ToDtype(torch.float32, scale=True), T.Normalize(mean=list(pre.mean), std=list(pre.std))]
    return T.Compose([T.ToImage(), *geometry, *(tail if normalize else []), _plain])


def _plain(x: torch.Tensor) -> torch.Tensor:
    # tv_tensors.Image -> Tensor: batches collate, pin and move as ordinary tensors.
    return x.as_subclass(torch.Tensor)


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

