"""Feeding a device: batches of images (or cached features) on the device, ready for the network.

Three ways to make image batches, chosen by :func:`image_batches` from the
:class:`~xfer.device.DeviceInfo`:

* CPU (and MPS): a ``DataLoader`` whose workers decode with Pillow and normalise.
  The compute is the bottleneck there; one worker keeps up.
* CUDA, ``decode="cpu"``: the workers stop at uint8 crops (a quarter of the bytes of
  float32), batches are pinned and copied on a side stream while the previous batch
  computes, and the float conversion and normalisation run on the GPU.
* CUDA, ``decode="gpu"``: no workers. File bytes are read ahead by threads, JPEGs are
  decoded in batches by nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``, the
  chip's hardware decoder where it has one), then resized, cropped, flipped and
  normalised on the GPU. Files nvJPEG cannot take (PNG, CMYK, ...) go through Pillow.
  Decoded images can be kept on the GPU so later epochs skip decoding.

All yield ``(x, y)`` with ``y`` a long tensor of labels; ``x`` is (B, 3, S, S), or
(B, V, 3, S, S) when several views of each image are asked for (the frozen-body
cache: the clean view plus augmented ones, from one decode).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import random
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from .. import distributed
from ..device import DeviceInfo
from .images import MAX_IMAGE_PIXELS, ImageSource, open_image, read_regular_file
from .transforms import (
    TRAIN_RATIO,
    TRAIN_SCALE,
    ImageDataset,
    Preprocessing,
    make_transform,
)

log = logging.getLogger(__name__)

Items = Sequence[tuple[ImageSource, int]]


class DeviceNormalize:
    """uint8 (or 0..255 float) pixels → the weights' normalisation, as float32 on the device."""

    def __init__(self, pre: Preprocessing, device: torch.device):
        mean = torch.tensor(pre.mean, dtype=torch.float32, device=device)
        std = torch.tensor(pre.std, dtype=torch.float32, device=device)
        # (x / 255 - mean) / std == x * scale + shift, one fused kernel after the cast.
        self.scale = (1.0 / (255.0 * std)).view(3, 1, 1)
        self.shift = (-mean / std).view(3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x.float(), self.scale)


class MultiViewDataset(Dataset):
    """(file, label) → (V, 3, S, S) views of one decode (one transform per view), label."""

    def __init__(self, items: Items, transforms: Sequence, max_side: int | None = None):
        self.items = list(items)
        self.transforms = list(transforms)
        self.max_side = max_side

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        source, label = self.items[i]
        img = open_image(source, max_side=self.max_side)
        return torch.stack([t(img) for t in self.transforms]), label


class ShardedBatchSampler(Sampler[list[int]]):
    """One rank's batches of a data-parallel epoch (:func:`xfer.distributed.local_batches`).

    The epoch's order is drawn from ``generator`` exactly as a shuffling DataLoader
    draws it (a RandomSampler on the same generator), so every rank draws the same order,
    and the union of the ranks' batches at each step is the batch one process with a
    ``world_size`` times larger batch would take. Each pass is the next epoch (as
    ``DistributedSampler.set_epoch`` would make it).
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, generator: torch.Generator, drop_last: bool,
                 shard: tuple[int, int]):
        self.order = RandomSampler(range(n), generator=generator) if shuffle else range(n)
        self.n, self.batch_size, self.drop_last, self.shard = n, batch_size, drop_last, shard
        self.epoch = 0

    def __len__(self) -> int:
        return distributed.num_batches(self.n, self.batch_size * self.shard[1], self.drop_last)

    def __iter__(self) -> Iterator[list[int]]:
        self.epoch += 1
        for batch in distributed.local_batches(list(self.order), self.batch_size, self.drop_last, self.shard):
            distributed.note_batch(self.epoch, batch)
            yield list(batch)


def _reseed_worker(rank: int, worker_id: int) -> None:
    # DataLoader seeds worker k with base_seed + k, and every rank draws the same base seed (its generator
    # also orders the epoch): offset by rank so that the ranks' random crops and flips differ.
    seed = (torch.initial_seed() + 1_000_003 * rank) % 2**63
    torch.manual_seed(seed)
    random.seed(seed)


def make_loader(dataset, batch_size: int, device: DeviceInfo, shuffle: bool, seed: int = 0,
                drop_last: bool = False, persistent: bool = False,
                shard: tuple[int, int] | None = None) -> DataLoader:
    """A DataLoader with the device's workers and pinning.

    ``persistent`` keeps the workers between epochs: starting 8-16 of them costs
    about a second, which is a third of a GPU epoch on a few thousand images.
    ``shard=(rank, world_size)``: this rank's part of each global batch of ``batch_size * world_size``
    (:class:`ShardedBatchSampler`); ``drop_last`` then applies to the global batches.
    """
    from torch.utils.data import TensorDataset

    workers = 0 if isinstance(dataset, TensorDataset) else device.num_workers
    g = torch.Generator().manual_seed(seed)
    common = dict(num_workers=workers, pin_memory=device.pin_memory, generator=g,
                  persistent_workers=persistent and workers > 0, prefetch_factor=4 if workers else None)
    if shard is not None:
        batches = ShardedBatchSampler(len(dataset), batch_size, shuffle, g, drop_last, shard)
        init = functools.partial(_reseed_worker, shard[0]) if workers else None
        return DataLoader(dataset, batch_sampler=batches, worker_init_fn=init, **common)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, **common)


class DeviceLoader:
    """Wraps a loader of uint8 batches: copies each to the GPU on a side stream while the
    previous batch computes, then converts and normalises it there."""

    def __init__(self, loader: DataLoader, device: DeviceInfo, pre: Preprocessing):
        self.loader = loader
        self.device = device
        self.normalize = DeviceNormalize(pre, device.device)

    def __len__(self) -> int:
        return len(self.loader)

    def _prepare(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device.device
        x = x.to(dev, non_blocking=True)
        y = y.to(dev, non_blocking=True)
        if x.ndim == 4 and self.device.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)  # on uint8: the cheapest place to transpose
        return self.normalize(x), y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.device.type != "cuda":
            for x, y in self.loader:
                yield self._prepare(x, y)
            return
        side = torch.cuda.Stream(self.device.device)
        it = iter(self.loader)

        def fetch():
            try:
                x, y = next(it)
            except StopIteration:
                return None
            with torch.cuda.stream(side):
                return self._prepare(x, y)

        nxt = fetch()
        while nxt is not None:
            main = torch.cuda.current_stream(self.device.device)
            main.wait_stream(side)
            x, y = nxt
            # Allocated on the side stream, used on the main one: keep the allocator from reusing them early.
            x.record_stream(main)
            y.record_stream(main)
            nxt = fetch()  # the next copy overlaps this batch's compute
            yield x, y


# --- decoding on the GPU ---------------------------------------------------------------------


def _crop_box(h: int, w: int, rng: random.Random) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, height, width), as torchvision draws it."""
    area = h * w
    log_ratio = (math.log(TRAIN_RATIO[0]), math.log(TRAIN_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*TRAIN_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, h - ch), rng.randint(0, w - cw), ch, cw
    ratio = w / h
    if ratio < TRAIN_RATIO[0]:
        cw, ch = w, int(round(w / TRAIN_RATIO[0]))
    elif ratio > TRAIN_RATIO[1]:
        ch, cw = h, int(round(h * TRAIN_RATIO[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1-8) to a (C, H, W) tensor, as PIL's exif_transpose does."""
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-1).flip(-2)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-1, -2)
    if orientation == 6:
        return img.transpose(-1, -2).flip(-1)
    if orientation == 7:
        return img.transpose(-1, -2).flip(-1).flip(-2)
    if orientation == 8:
        return img.transpose(-1, -2).flip(-2)
    return img


def _read(source: ImageSource, pil: bool, max_side: int) -> tuple[bytes | None, int, np.ndarray | None]:
    """(JPEG bytes for nvJPEG, their EXIF orientation, None), or (None, 1, HxWx3 uint8 decoded by Pillow).

    Runs in a reader thread: file reads and Pillow both release the GIL. Pillow takes
    what nvJPEG cannot (not a JPEG, CMYK, over the pixel limit, not a file) or all of
    it when ``pil`` (nvJPEG unavailable).
    """
    data = None
    if isinstance(source, (str, Path, bytes)) and not pil:
        data = source if isinstance(source, bytes) else read_regular_file(source)  # never a FIFO
        if data[:3] == b"\xff\xd8\xff":
            try:
                with Image.open(io.BytesIO(data)) as im:  # parses the header, decodes nothing
                    w, h = im.size
                    if im.mode in ("RGB", "L") and 0 < w * h <= MAX_IMAGE_PIXELS:
                        orientation = im.getexif().get(0x0112, 1)
                        return data, int(orientation) if orientation in range(1, 9) else 1, None
            except Exception:  # Pillow's pass below gives the real error message
                pass
    img = open_image(data if data is not None else source, max_side=max_side)
    return None, 1, np.array(img)  # a writable copy, as torch.from_numpy wants


class JpegBatches:
    """Image batches decoded and preprocessed on ``device`` (nvJPEG on CUDA).

    ``views`` holds one flag per view: False for the eval transform (resize, centre
    crop), True for the augmented one (random resized crop, horizontal flip); with
    more than one view, x is (B, V, 3, S, S). ``cache_decoded`` keeps decoded images
    on the device (up to ``cache_bytes``) so that later epochs skip decoding.
    On a CPU device the same code decodes with libjpeg, which is how it is tested.
    ``shard=(rank, world_size)``: this rank's part of each global batch, as in :func:`make_loader`.
    """

    def __init__(self, items: Items, pre: Preprocessing, views: Sequence[bool], batch_size: int,
                 device: DeviceInfo, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                 cache_decoded: bool = False, cache_bytes: int = 4 * 2**30, read_threads: int = 4,
                 shard: tuple[int, int] | None = None):
        self.items = list(items)
        self.pre = pre
        self.views = list(views) or [False]
        self.batch_size = batch_size
        self.device = device
        self.shuffle, self.drop_last = shuffle, drop_last
        self.order_gen = torch.Generator().manual_seed(seed)
        self.shard, self.epoch = shard, 0
        # Every rank draws the same order; the crops and flips differ by rank (rank 0's are a lone process's).
        self.rng = random.Random(seed + 1_000_003 * (shard[0] if shard else 0))
        self.normalize = DeviceNormalize(pre, device.device)
        self.labels = torch.tensor([label for _, label in self.items], dtype=torch.long)
        self.cache: dict[int, torch.Tensor] | None = {} if cache_decoded else None
        self.cache_bytes, self.cached_bytes = cache_bytes, 0
        self.read_threads = read_threads
        self.gpu_decode = True  # off once nvJPEG fails wholesale (a torchvision built without it): Pillow then
        # nvJPEG writes its outputs from a stream of its own. Allocating them on a stream of ours (and marking
        # them used by the main one) keeps the caching allocator from handing nvJPEG a block that queued
        # main-stream kernels still read.
        self.decode_stream = torch.cuda.Stream(device.device) if device.type == "cuda" else None

    def __len__(self) -> int:
        n = len(self.items)
        if self.shard is not None:
            return distributed.num_batches(n, self.batch_size * self.shard[1], self.drop_last)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.items)
        order = torch.randperm(n, generator=self.order_gen) if self.shuffle else torch.arange(n)
        self.epoch += 1
        if self.shard is not None:
            batches = [b.tolist() for b in distributed.local_batches(order, self.batch_size, self.drop_last,
                                                                    self.shard)]
        else:
            batches = [order[i : i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
            if self.drop_last and batches and len(batches[-1]) < self.batch_size:
                batches.pop()
        with ThreadPoolExecutor(self.read_threads, thread_name_prefix="xfer-read") as pool:
            ahead: deque = deque()

            def submit(k: int) -> None:
                if k < len(batches):
                    idx = batches[k]
                    todo = [i for i in idx if self.cache is None or i not in self.cache]
                    pil, side = not self.gpu_decode, 2 * self.pre.resize_size
                    ahead.append((idx, [(i, pool.submit(_read, self.items[i][0], pil, side)) for i in todo]))

            for k in range(min(3, len(batches))):
                submit(k)
            for k in range(len(batches)):
                idx, reads = ahead.popleft()
                if self.shard is not None:
                    distributed.note_batch(self.epoch, idx)
                submit(k + 3)
                decoded = self._decode([(i, f.result()) for i, f in reads])
                images = [self.cache[i] if i not in decoded else decoded[i] for i in idx] if self.cache is not None \
                    else [decoded[i] for i in idx]
                yield self._assemble(images), self.labels[idx].to(self.device.device, non_blocking=True)

    def _decode(self, reads: list[tuple[int, tuple[bytes | None, int, np.ndarray | None]]]
                ) -> dict[int, torch.Tensor]:
        """Index → uint8 (3, H, W) on the device, upright."""
        dev = self.device.device
        out: dict[int, torch.Tensor] = {}
        jpeg = [(i, data, o) for i, (data, o, _) in reads if data is not None]
        if jpeg and self.gpu_decode:
            from torchvision.io import ImageReadMode, decode_jpeg

            try:
                with warnings.catch_warnings(), self._decoding():
                    warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points to torchcodec
                    imgs = decode_jpeg([torch.frombuffer(bytearray(d), dtype=torch.uint8) for _, d, _ in jpeg],
                                       mode=ImageReadMode.RGB, device=dev)
                for (i, _, o), img in zip(jpeg, self._hand_over(imgs)):
                    out[i] = _orient(img, o)
            except RuntimeError as e:
                # One bad file fails the batch: redo it one by one; what still fails goes to Pillow.
                log.info("batched JPEG decode failed (%s); decoding this batch one image at a time", e)
                if not self._decode_singly(jpeg, out) and len(jpeg) > 1:  # all failed: the decoder, not a file
                    self.gpu_decode = False
                    log.warning("JPEG decoding on %s is unavailable (%s): decoding with Pillow", dev, e)
        for i, (data, _, arr) in reads:
            if i in out:
                continue
            if arr is None:  # nvJPEG refused it
                arr = np.array(open_image(data, max_side=2 * self.pre.resize_size))
            out[i] = torch.from_numpy(arr).permute(2, 0, 1).to(dev, non_blocking=True)
        if self.cache is not None:
            for i, img in out.items():
                if self.cached_bytes + img.numel() <= self.cache_bytes:
                    self.cache[i] = img
                    self.cached_bytes += img.numel()
        return out

    def _decode_singly(self, jpeg: list, out: dict[int, torch.Tensor]) -> bool:
        from torchvision.io import ImageReadMode, decode_jpeg

        worked = False
        for i, d, o in jpeg:
            try:
                with warnings.catch_warnings(), self._decoding():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    img = decode_jpeg(torch.frombuffer(bytearray(d), dtype=torch.uint8), mode=ImageReadMode.RGB,
                                      device=self.device.device)
                out[i] = _orient(self._hand_over([img])[0], o)
                worked = True
            except RuntimeError:
                pass
        return worked

    def _decoding(self):
        """Decode under our own stream on CUDA (see ``decode_stream``)."""
        return torch.cuda.stream(self.decode_stream) if self.decode_stream is not None else contextlib.nullcontext()

    def _hand_over(self, imgs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Order the decoded images before the main stream's use of them, and tell the allocator about that use."""
        if self.decode_stream is not None:
            main = torch.cuda.current_stream(self.device.device)
            main.wait_stream(self.decode_stream)
            for img in imgs:
                img.record_stream(main)
        return imgs

    def _assemble(self, images: list[torch.Tensor]) -> torch.Tensor:
        s, resize = self.pre.crop_size, self.pre.resize_size
        mode = "bicubic" if self.pre.interpolation == "bicubic" else "bilinear"
        v, dev = len(self.views), self.device.device
        if v == 1:  # written straight into the layout the network wants
            fmt = torch.channels_last if self.device.channels_last else torch.contiguous_format
            out = torch.empty((len(images), 3, s, s), device=dev, memory_format=fmt).unsqueeze(1)
        else:
            out = torch.empty((len(images), v, 3, s, s), device=dev)
        for b, img in enumerate(images):
            h, w = img.shape[-2:]
            x = img.unsqueeze(0).float()
            for k, train in enumerate(self.views):
                if train:
                    top, left, ch, cw = _crop_box(h, w, self.rng)
                    crop = F.interpolate(x[..., top : top + ch, left : left + cw], size=(s, s), mode=mode,
                                         antialias=True, align_corners=False)[0]
                    if self.rng.random() < 0.5:
                        crop = crop.flip(-1)
                else:
                    # Resize(resize_size) then CenterCrop(crop_size), with torchvision's rounding.
                    short, long = (h, w) if h <= w else (w, h)
                    new_long = int(resize * long / short)
                    nh, nw = (resize, new_long) if h <= w else (new_long, resize)
                    r = F.interpolate(x, size=(nh, nw), mode=mode, antialias=True, align_corners=False)[0]
                    if nh < s or nw < s:  # CenterCrop pads small images with zeros
                        r = F.pad(r, [max(s - nw, 0) // 2, (max(s - nw, 0) + 1) // 2,
                                      max(s - nh, 0) // 2, (max(s - nh, 0) + 1) // 2])
                        nh, nw = r.shape[-2:]
                    top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
                    crop = r[:, top : top + s, left : left + s]
                out[b, k].copy_(crop)
        # CPU transforms round to uint8 after resizing; match that before normalising.
        out = self.normalize(out.round_().clamp_(0, 255))
        return out[:, 0] if v == 1 else out


def image_batches(items: Items, pre: Preprocessing, views: Sequence[bool], batch_size: int, device: DeviceInfo,
                  shuffle: bool = False, seed: int = 0, drop_last: bool = False, persistent: bool = False,
                  cache_decoded: bool = False, shard: tuple[int, int] | None = None):
    """The right loader for ``device``: an iterable of (x, y) batches with ``len()``.

    ``views`` as in :class:`JpegBatches`. On CPU and MPS, x is still on the host
    (the training loop moves it); on CUDA it is on the GPU, normalised. ``shard`` as in :func:`make_loader`.
    """
    views = list(views) or [False]
    if device.type == "cuda" and device.decode == "gpu":
        return JpegBatches(items, pre, views, batch_size, device, shuffle=shuffle, seed=seed, drop_last=drop_last,
                           cache_decoded=cache_decoded, shard=shard)
    on_gpu = device.type == "cuda"
    tfs = [make_transform(pre, train=t, normalize=not on_gpu) for t in views]
    max_side = 2 * pre.resize_size
    dataset = ImageDataset(items, tfs[0], max_side) if len(tfs) == 1 else MultiViewDataset(items, tfs, max_side)
    loader = make_loader(dataset, batch_size, device, shuffle=shuffle, seed=seed, drop_last=drop_last,
                         persistent=persistent, shard=shard)
    return DeviceLoader(loader, device, pre) if on_gpu else loader


class FeatureBatches:
    """Cached features, already on the device, in batches: no DataLoader, no per-item Python.

    ``features`` is (N, ...) (vectors or feature maps), or with ``views`` (V, N, ...): each pass
    draws one of the V views per image (a fresh draw per epoch), so the head sees augmented
    features without re-running the body.
    ``shard=(rank, world_size)``: every rank holds all the features and draws the same order;
    it takes its part of each global batch (:func:`xfer.distributed.local_batches`).
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False, shard: tuple[int, int] | None = None,
                 views: bool = False):
        self.features = features if views else features.unsqueeze(0)
        self.labels = labels.to(self.features.device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.gen = torch.Generator().manual_seed(seed)
        self.shard, self.epoch = shard, 0

    def __len__(self) -> int:
        n = len(self.labels)
        if self.shard is not None:
            return distributed.num_batches(n, self.batch_size * self.shard[1], self.drop_last)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        v, n = self.features.shape[:2]
        dev = self.features.device
        order = (torch.randperm(n, generator=self.gen) if self.shuffle else torch.arange(n)).to(dev)
        pick = torch.randint(0, v, (n,), generator=self.gen).to(dev) if v > 1 else None
        if self.shard is not None:
            batches = distributed.local_batches(order, self.batch_size, self.drop_last, self.shard)
        else:
            batches = [order[k * self.batch_size : (k + 1) * self.batch_size] for k in range(len(self))]
        self.epoch += 1
        for idx in batches:
            if self.shard is not None:
                distributed.note_batch(self.epoch, idx)
            x = self.features[pick[idx], idx] if pick is not None else self.features[0, idx]
            yield x, self.labels[idx]
