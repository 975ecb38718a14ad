"""The training loop: small functions composed by :func:`fit`.

``fit`` reports progress through a callback (per batch :class:`Progress`, per epoch
:class:`EpochStats`) and checks a cancel flag between batches, so that a
:class:`xfer.TrainingRun` can run it in a thread and stream it. A frozen body is run once per image and the new head
is trained on the cached features. Frozen layers run with their batch norms folded
into the convolutions during training passes (:mod:`xfer.nets.fold`), never in evaluation.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from . import distributed
from .data.pipeline import FeatureBatches, image_batches, make_loader  # noqa: F401  (make_loader: public here too)
from .data.transforms import Preprocessing
from .device import DeviceInfo, release_freed_memory
from .errors import Cancelled, ConfigError
from .nets.fold import folded_batchnorm
from .nets.strategies import Classifier, get_strategy, param_groups

log = logging.getLogger(__name__)

Items = Sequence[tuple[Path, int]]


class CancelFlag(Protocol):
    def is_set(self) -> bool: ...


@dataclass
class TrainConfig:
    """Training hyper-parameters (stored in the saved model's config.json)."""

    epochs: int = 5
    batch_size: int = 32
    # None: the strategy's default for AdamW (1e-3 for frozen bodies; 3e-3 for finetune, measured 94.7% and
    # 95.5% vs 93.0% with 1e-3 on the flowers, and scratch), 1e-2 for SGD. See resolved().
    lr: float | None = None
    # A trained body's learning rate; None: lr times the strategy's body multiplier (finetune 0.1, scratch 1).
    body_lr: float | None = None
    optimizer: str = "adamw"  # "adamw" | "sgd"
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    augment: bool = True  # random resized crop + horizontal flip
    # Frozen bodies: the clean view plus (cache_views - 1) augmented ones per image. One by default:
    # extra views cost a body pass each and gave no measurable gain for `head` on the flowers
    # (20-40 images per class: +0.8, -2.4, +0.8 points with 3 views), while 1 view makes `head`
    # >10x faster than the tutorial loop at 10 epochs (bench/head_vs_tutorial.py).
    cache_views: int = 1
    # A trained body with frozen first stages (finetune): those stages run once per image (and cached view)
    # and the rest of the body trains on their cached outputs, as a head trains on a frozen body's features.
    # No fresh augmentation per epoch then; it pays where little is left to train (the last stages).
    cache_frozen: bool = False
    patience: int | None = None  # early stopping: epochs without a better validation accuracy
    seed: int = 0
    compile: bool = False  # torch.compile the trainable module (CUDA only pays off)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-2 if self.optimizer == "sgd" else 1e-3)

    def resolved(self, strategy: str) -> "TrainConfig":
        """This config with ``lr`` filled in from ``strategy``'s row when it was left to the default."""
        if self.lr is not None or self.optimizer != "adamw":
            return self
        return replace(self, lr=get_strategy(strategy).lr)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for any value training cannot use (NaN and infinity included)."""
        def number(x: object) -> bool:  # numpy scalars count too
            return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)

        def count(x: object) -> bool:
            return isinstance(x, numbers.Integral) and not isinstance(x, bool)

        if not count(self.epochs) or self.epochs < 1:
            raise ConfigError(f"epochs must be a whole number of at least 1, got {self.epochs}.")
        if not count(self.batch_size) or self.batch_size < 1:
            raise ConfigError(f"batch size must be a whole number of at least 1, got {self.batch_size}.")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"Unknown optimizer {self.optimizer!r}: use adamw or sgd.")
        # `not x > 0` alone lets infinity through, and an infinite step turns every weight into NaN.
        if not number(self.learning_rate) or not 0 < self.learning_rate <= 10:
            raise ConfigError(f"The learning rate must be a number above 0 and at most 10, got {self.learning_rate}.")
        if self.body_lr is not None and (not number(self.body_lr) or not 0 < self.body_lr <= 10):
            raise ConfigError(f"The body's learning rate must be a number above 0 and at most 10 (or None), got "
                              f"{self.body_lr}.")
        if not number(self.weight_decay) or not 0 <= self.weight_decay <= 10:
            raise ConfigError(f"The weight decay must be a number from 0 to 10, got {self.weight_decay}.")
        if not number(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"Label smoothing must be at least 0 and below 1, got {self.label_smoothing}.")
        if not count(self.cache_views) or self.cache_views < 1:
            raise ConfigError(f"cache_views must be a whole number of at least 1, got {self.cache_views}.")
        if not isinstance(self.cache_frozen, bool):
            raise ConfigError(f"cache_frozen must be true or false, got {self.cache_frozen!r}.")
        if self.patience is not None and (not count(self.patience) or self.patience < 1):
            raise ConfigError(f"patience must be a whole number of at least 1 (or None), got {self.patience}.")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lr"] = self.learning_rate
        return d


@dataclass
class Progress:
    """A per-batch progress event."""

    phase: str  # "features" (caching a frozen body's outputs) | "train" | "validate"
    epoch: int
    epochs: int
    step: int
    steps: int
    fraction: float  # of the whole run, 0..1
    images_per_s: float
    eta_s: float | None
    loss: float | None = None  # running mean over the epoch so far
    accuracy: float | None = None


@dataclass
class EpochStats:
    """A per-epoch event; the list of them is the training history."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float


@dataclass
class EvalOutput:
    loss: float
    accuracy: float
    probs: torch.Tensor  # (N, C) softmax probabilities
    targets: torch.Tensor  # (N,)


@dataclass
class FitResult:
    net: Classifier
    history: list[EpochStats]
    best_epoch: int
    best_val_accuracy: float
    seconds: float
    stopped_early: bool = False
    val_output: EvalOutput | None = field(default=None, repr=False)
    # Set when fit paused after ``stop_after`` epochs with epochs left: pass it back as ``resume``.
    state: "FitState | None" = field(default=None, repr=False)


def _cpu_tree(x):
    """``x`` with every tensor detached and copied to the CPU (dicts, lists and tuples walked)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().clone()
    if isinstance(x, dict):
        return {k: _cpu_tree(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_cpu_tree(v) for v in x)
    return x


@dataclass
class FitState:
    """Everything a paused :func:`fit` needs to go on: after ``epoch`` epochs, all on the CPU.

    The whole net's weights (a frozen body's too), the optimizer's, scheduler's and grad
    scaler's state, the history and the best epoch so far (its trainable weights and
    validation output). :meth:`to_dict` holds only tensors and plain values, so that
    ``torch.load(weights_only=True)`` reads it back (:func:`save_fit_state`).
    """

    epoch: int
    net: dict
    optimizer: dict
    scheduler: dict
    scaler: dict | None
    history: list[EpochStats]
    best_accuracy: float
    best_loss: float
    best_epoch: int
    best_state: dict | None
    best_output: EvalOutput | None
    gained: int

    def to_dict(self) -> dict:
        out = self.best_output
        return {"epoch": self.epoch, "net": self.net, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "scaler": self.scaler, "history": [asdict(h) for h in self.history],
                "best_accuracy": self.best_accuracy, "best_loss": self.best_loss, "best_epoch": self.best_epoch,
                "best_state": self.best_state, "gained": self.gained,
                "best_output": None if out is None else {"loss": out.loss, "accuracy": out.accuracy,
                                                         "probs": out.probs, "targets": out.targets}}

    @classmethod
    def from_dict(cls, d: dict) -> "FitState":
        out = d["best_output"]
        return cls(d["epoch"], d["net"], d["optimizer"], d["scheduler"], d["scaler"],
                   [EpochStats(**h) for h in d["history"]], d["best_accuracy"], d["best_loss"], d["best_epoch"],
                   d["best_state"], None if out is None else EvalOutput(**out), d["gained"])


def save_fit_state(state: FitState, path: str | Path) -> Path:
    """Write ``state`` to ``path`` (tensors and plain values only); returns the path."""
    path = Path(path)
    torch.save(state.to_dict(), path)
    return path


def load_fit_state(path: str | Path) -> FitState:
    """Read a :func:`save_fit_state` file (``weights_only``: nothing but tensors and plain values is unpickled)."""
    return FitState.from_dict(torch.load(Path(path), map_location="cpu", weights_only=True))


Callback = Callable[[object], None]


class _Clock:
    """Turns work done (images through the network) into fraction, speed and ETA."""

    def __init__(self, total_units: float, callback: Callback | None, cancel: CancelFlag | None,
                 scale: int = 1):
        self.total = total_units
        self.scale = scale  # data-parallel: each of `scale` processes does its share of the work
        self.done = 0.0
        self.start = time.perf_counter()
        self.phase_start = self.start
        self.phase_images = 0
        self.callback = callback
        self.cancel = cancel

    def new_phase(self) -> None:
        self.phase_start = time.perf_counter()
        self.phase_images = 0

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("Training was stopped; the previous model is unchanged.")

    def step(self, phase: str, epoch: int, epochs: int, step: int, steps: int, images: int,
             units: float, loss: float | None = None, acc: float | None = None) -> None:
        images, units = images * self.scale, units * self.scale
        self.done += units
        self.phase_images += images
        now = time.perf_counter()
        fraction = min(self.done / max(self.total, 1e-9), 1.0)
        elapsed = now - self.start
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        speed = self.phase_images / max(now - self.phase_start, 1e-9)
        if self.callback is not None:
            self.callback(Progress(phase, epoch, epochs, step, steps, fraction, speed, eta, loss, acc))
        self.check_cancel()


def _autocast(device: DeviceInfo):
    if device.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=device.amp_dtype)


def _to_device(x: torch.Tensor, device: DeviceInfo) -> torch.Tensor:
    x = x.to(device.device, non_blocking=device.pin_memory)
    if device.channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_one_epoch(module: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler, loss_fn: nn.Module, device: DeviceInfo,
                    on_step: Callable[[int, int, int, float, float], None] | None = None,
                    scaler: torch.amp.GradScaler | None = None) -> tuple[float, float]:
    """One pass over ``loader``; returns (mean loss, accuracy). ``on_step(step, steps, n, loss, acc)``.

    Loss and accuracy are summed on the device and ``on_step`` hears of each step one
    step late: reading a number back waits for the GPU, and waiting for the step just
    queued would leave the GPU idle while the next one is prepared.
    """
    module.train()
    total_loss = torch.zeros((), device=device.device)
    correct = torch.zeros((), dtype=torch.long, device=device.device)
    seen = 0
    steps = len(loader)
    pending = None

    def report(p) -> None:
        step, n, seen_then, loss_sum, correct_sum = p
        on_step(step, steps, n, loss_sum.item() / seen_then, correct_sum.item() / seen_then)

    for step, (x, y) in enumerate(loader, 1):
        x, y = _to_device(x, device), y.to(device.device, non_blocking=device.pin_memory)
        with _autocast(device):
            logits = module(x)
            loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = y.shape[0]
        total_loss += loss.detach() * n
        correct += (logits.detach().argmax(1) == y).sum()
        seen += n
        if on_step is not None:
            if pending is not None:
                report(pending)
            pending = (step, n, seen, total_loss.clone(), correct.clone())
    if pending is not None:
        report(pending)
    return total_loss.item() / max(seen, 1), correct.item() / max(seen, 1)


@torch.no_grad()
def evaluate(module: nn.Module, loader: DataLoader, device: DeviceInfo, loss_fn: nn.Module | None = None,
             on_step: Callable[[int, int, int], None] | None = None) -> EvalOutput:
    """Run ``module`` over ``loader`` in eval mode: loss, accuracy and all probabilities."""
    module.eval()
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    probs, targets = [], []
    total_loss = torch.zeros((), device=device.device)
    steps = len(loader)
    for step, (x, y) in enumerate(loader, 1):
        x, y = _to_device(x, device), y.to(device.device)
        with _autocast(device):
            logits = module(x).float()
        total_loss += loss_fn(logits, y) * y.shape[0]  # stays on the device: no wait per batch
        probs.append(logits.softmax(1))
        targets.append(y)
        if on_step is not None:
            on_step(step, steps, y.shape[0])
    if not probs:
        return EvalOutput(float("nan"), float("nan"), torch.empty(0, 0), torch.empty(0, dtype=torch.long))
    p, t = torch.cat(probs).cpu(), torch.cat(targets).cpu()
    return EvalOutput(total_loss.item() / len(t), (p.argmax(1) == t).float().mean().item(), p, t)


@torch.no_grad()
def compute_features(body: nn.Module, loader, device: DeviceInfo,
                     on_step: Callable[[int, int, int], None] | None = None,
                     keep_on_device: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a frozen body once over ``loader``: (features (N, ...) float32 on CPU, labels (N,)).

    Features keep the body's output shape: (N, D) for a whole body, (N, C, H, W) for its first
    stages. A loader of several views per image (x of shape (B, V, 3, S, S)) gives features
    (N, V, ...). ``keep_on_device`` leaves both on the device (for training a head there).
    """
    body.eval()
    feats, labels = [], []
    steps = len(loader)
    for step, (x, y) in enumerate(loader, 1):
        views = x.shape[1] if x.ndim == 5 else 0
        if views:
            x = x.flatten(0, 1)
        with _autocast(device):
            f = body(_to_device(x, device))
        f = f.float()
        if views:
            f = f.view(-1, views, *f.shape[1:])
        # Collected on the device and moved once at the end: a copy per batch would wait for each batch.
        feats.append(f)
        labels.append(y)
        if on_step is not None:
            on_step(step, steps, y.shape[0])
    f, y = torch.cat(feats), torch.cat([t.to(device.device) for t in labels])
    return (f, y) if keep_on_device else (f.cpu(), y.cpu())


def make_optimizer(net: Classifier, strategy: str, config: TrainConfig,
                   device: DeviceInfo | None = None) -> torch.optim.Optimizer:
    config = config.resolved(strategy)
    groups = param_groups(net, strategy, config.learning_rate, config.weight_decay, body_lr=config.body_lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.learning_rate, momentum=0.9, nesterov=True)
    # On CUDA one fused kernel updates all parameters instead of several per tensor.
    fused = device is not None and device.type == "cuda"
    return torch.optim.AdamW(groups, lr=config.learning_rate, fused=fused or None)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup: int):
    """Linear warm-up then cosine decay to zero, stepped per batch."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(total_steps - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _fold(net: nn.Module, frozen: Sequence[nn.Module], config: TrainConfig):
    # Not under torch.compile: swapping modules between epochs would recompile, and compile fuses anyway.
    if config.compile or not frozen:
        return contextlib.nullcontext(0)
    return folded_batchnorm(net, frozen)


def _whole_validation(out: EvalOutput, n_val: int, sharded: bool) -> EvalOutput:
    """The whole validation set's output on every process, and rank 0's loss and accuracy everywhere.

    ``sharded``: each process evaluated its share (:func:`xfer.distributed.shard_bounds`); the
    probabilities are gathered in the images' order, so the confusion matrix is the whole set's.
    Otherwise every process evaluated all of it (the head on gathered features). Broadcasting
    the two numbers that choose the best epoch makes that choice the same on every process.
    """
    if not distributed.active():
        return out
    if sharded:
        n = len(out.targets)
        loss_sum = distributed.all_sum([out.loss * n])[0]
        probs, targets = distributed.gather_rows(out.probs, n_val), distributed.gather_rows(out.targets, n_val)
        out = EvalOutput(loss_sum / n_val, (probs.argmax(1) == targets).float().mean().item(), probs, targets)
    loss, acc = distributed.broadcast_values([out.loss, out.accuracy])
    return replace(out, loss=loss, accuracy=acc)


def fit(net: Classifier, strategy: str, train_items: Items, val_items: Items, pre: Preprocessing,
        config: TrainConfig, device: DeviceInfo, callback: Callback | None = None,
        cancel: CancelFlag | None = None, resume: FitState | None = None,
        stop_after: int | None = None) -> FitResult:
    """Train ``net`` and return it with the weights of its best validation epoch.

    ``callback`` receives :class:`Progress` per batch and :class:`EpochStats` per
    epoch. ``cancel.is_set()`` is checked after every batch; when set, fit raises
    :class:`Cancelled` (the caller's saved model is untouched since fit saves nothing).

    Data-parallel when a process group is up (:func:`xfer.distributed.process_group`): each
    process takes ``config.batch_size`` images of every global batch of ``batch_size * world_size``
    (the learning rate is not scaled), DistributedDataParallel averages the gradients, every
    process ends with the same weights, and only rank 0 hears ``callback``.

    In parts: ``stop_after=k`` pauses after epoch k (when epochs remain and patience has not ended the
    run) and returns a result whose ``state`` is a :class:`FitState`; ``fit(..., resume=state)`` goes
    on from there with the same config and items. The learning-rate schedule, the optimizer, early
    stopping and the best epoch carry over; a frozen body's features are computed again in each
    part, and each part draws its shuffles from the seed plus the epochs done, so a run in parts is
    as good as a whole one but not bit-identical to it.
    """
    try:
        return _fit(net, strategy, train_items, val_items, pre, config, device, callback, cancel, resume,
                    stop_after)
    finally:
        # The loop's activations were kept for reuse (keep_freed_memory); now give them back.
        release_freed_memory()


def _restore_optimization(resume: FitState | None, optimizer: torch.optim.Optimizer, scheduler,
                          scaler: torch.amp.GradScaler | None) -> None:
    if resume is None:
        return
    optimizer.load_state_dict(resume.optimizer)
    scheduler.load_state_dict(resume.scheduler)
    if scaler is not None and resume.scaler:
        scaler.load_state_dict(resume.scaler)


def _tracking(resume: FitState | None, device: DeviceInfo) -> tuple:
    """(history, best accuracy, best loss, best epoch, best state, best output, last gain): fresh or resumed."""
    if resume is None:
        return [], -1.0, math.inf, 0, None, None, 0
    best_state = None if resume.best_state is None else {k: v.to(device.device) for k, v in resume.best_state.items()}
    return (list(resume.history), resume.best_accuracy, resume.best_loss, resume.best_epoch, best_state,
            resume.best_output, resume.gained)


def _cpu_output(out: EvalOutput | None) -> EvalOutput | None:
    return None if out is None else EvalOutput(out.loss, out.accuracy, out.probs.cpu(), out.targets.cpu())


#: Most memory the cached outputs of a trained body's frozen stages may take (``TrainConfig.cache_frozen``).
MAX_CACHE_BYTES = 4 * 2**30


def cached_parts(net: Classifier, config: TrainConfig) -> tuple[nn.Module, nn.Module] | None:
    """(what runs once per image, what trains on its cached outputs), or None: the images every epoch.

    A frozen body: (body, head). ``config.cache_frozen`` with a trained body that has frozen first stages:
    (those stages, the rest of the body and the head); without frozen stages the images go through it.
    """
    if net.frozen:
        return net.body, net.head
    if not config.cache_frozen or net.split is None:  # nothing frozen to cache (scratch, --frozen-stages 0)
        return None
    first, rest = net.split
    return first, nn.Sequential(rest, net.head)


def _check_cache_size(first: nn.Module, pre: Preprocessing, images: int, device: DeviceInfo) -> None:
    """Refuse (before the first image is read) a cache of feature maps larger than :data:`MAX_CACHE_BYTES`."""
    with torch.no_grad():
        probe = torch.zeros(1, 3, pre.crop_size, pre.crop_size, device=device.device)
        per_image = first.eval()(probe).numel() * 4  # cached as float32
    if per_image * images > MAX_CACHE_BYTES:
        raise ConfigError(f"Caching the frozen stages' outputs would take {per_image * images / 2**30:.1f} GiB "
                          f"(at most {MAX_CACHE_BYTES / 2**30:.0f}): freeze more stages, use fewer cached views "
                          "or smaller images, or turn cache_frozen off.")


def _feature_inputs(net: Classifier, train_items: Items, val_items: Items, pre: Preprocessing, config: TrainConfig,
                    device: DeviceInfo, head_units: float, callback: Callback | None, cancel: CancelFlag | None,
                    shard: tuple[int, int] | None, seed: int) -> tuple:
    """The frozen part runs once per image (and view); the rest then trains on its cached outputs, on the device.

    The frozen part is a frozen body (the head trains on its features) or a trained body's frozen first
    stages (the rest of the body and the head train on their feature maps; see :func:`cached_parts`).
    Returns (module to train, train batches, validation batches, clock, clock units per image).
    """
    rank, world = shard or (0, 1)
    n_train, n_val, bs, epochs = len(train_items), len(val_items), config.batch_size, config.epochs
    gbs = bs * world
    views = config.cache_views if config.augment else 1
    first, trained = cached_parts(net, config)
    if not net.frozen:
        _check_cache_size(first, pre, views * n_train + n_val, device)
    # The cached pass dominates the cost: an image in a head epoch counts 1/50 of a body pass, in an
    # epoch of a body's last stages about 1/10 (EfficientNet-Lite0's head conv and last stage, measured).
    unit = 0.02 if net.frozen else 0.1
    clock = _Clock(views * n_train + n_val + head_units * unit, callback, cancel, scale=world)
    clock.check_cancel()
    # Each process caches the features of its contiguous share of the images.
    lo, hi = distributed.shard_bounds(n_train, rank, world)
    vlo, vhi = distributed.shard_bounds(n_val, rank, world)
    # Each image is decoded once for all its views (the clean one, then augmented ones); a
    # frozen body has no gradients, so it runs in the device's larger inference batches.
    fbs = device.feature_batch or bs
    train_views = image_batches(train_items[lo:hi], pre, [False] + [True] * (views - 1), max(1, fbs // views),
                                device)
    val_views = image_batches(val_items[vlo:vhi], pre, [False], fbs, device)
    body = torch.compile(first) if config.compile else first
    total = len(train_views) + len(val_views)
    clock.new_phase()
    # Training features through the body with its batch norms folded (cheaper, same outputs to rounding);
    # validation features through the body as it is saved, so the metrics are exactly the returned model's.
    # Folded within ``first`` itself: a cut body's first part holds some batch norms in containers of its own
    # (a stem's Sequential), which folding the whole net would leave in place after their conv was folded.
    with _fold(first, (first,), config):
        f, labels = compute_features(body, train_views, device, keep_on_device=True, on_step=lambda s, S, n: clock.step(
            "features", 0, epochs, s, total, n * views, n * views))
    vf, vl = compute_features(body, val_views, device, keep_on_device=True, on_step=lambda s, S, n: clock.step(
        "features", 0, epochs, len(train_views) + s, total, n, n))
    # Every process gets all the features, in the images' order (a no-op in one process).
    f, labels = distributed.gather_rows(f, n_train), distributed.gather_rows(labels, n_train)
    vf, vl = distributed.gather_rows(vf, n_val), distributed.gather_rows(vl, n_val)
    # The head trains on the device, on cached features: one view per image drawn afresh each epoch.
    train_loader = FeatureBatches(f.transpose(0, 1) if views > 1 else f, labels, bs, shuffle=True,
                                  seed=seed, drop_last=n_train > gbs, shard=shard, views=views > 1)
    return trained, train_loader, FeatureBatches(vf, vl, 256), clock, unit


def _image_inputs(net: Classifier, train_items: Items, val_items: Items, pre: Preprocessing, config: TrainConfig,
                  device: DeviceInfo, units: float, callback: Callback | None, cancel: CancelFlag | None,
                  shard: tuple[int, int] | None, seed: int) -> tuple:
    """A trained body sees the images every epoch; each process validates its share of them."""
    rank, world = shard or (0, 1)
    bs = config.batch_size
    clock = _Clock(units, callback, cancel, scale=world)
    clock.check_cancel()
    vlo, vhi = distributed.shard_bounds(len(val_items), rank, world)
    # Workers persist across epochs; on the GPU path decoded images stay on the GPU after epoch 1.
    train_loader = image_batches(train_items, pre, [config.augment], bs, device, shuffle=True, seed=seed,
                                 drop_last=len(train_items) > bs * world, persistent=True, cache_decoded=True,
                                 shard=shard)
    eval_loader = image_batches(val_items[vlo:vhi], pre, [False], device.feature_batch or bs, device,
                                persistent=True, cache_decoded=True)
    return net, train_loader, eval_loader, clock, 1.0


def _fit(net: Classifier, strategy: str, train_items: Items, val_items: Items, pre: Preprocessing,
         config: TrainConfig, device: DeviceInfo, callback: Callback | None,
         cancel: CancelFlag | None, resume: FitState | None = None, stop_after: int | None = None) -> FitResult:
    config = config.resolved(strategy)
    config.validate()
    if not train_items or not val_items:
        raise ConfigError("Training needs at least one training and one validation image.")
    shard = (distributed.rank(), distributed.world_size()) if distributed.active() else None
    rank, world = shard or (0, 1)
    if shard and min(len(train_items), len(val_items)) < world:
        raise ConfigError(f"Training in {world} processes needs at least {world} training and {world} validation "
                          "images.")
    if rank != 0:
        callback = None  # one process reports
    done = resume.epoch if resume is not None else 0  # epochs already trained (by earlier parts)
    last = min(stop_after, config.epochs) if stop_after is not None else config.epochs
    if not done < last:
        raise ConfigError(f"Nothing to train: epochs {done + 1}..{last} of {config.epochs}.")
    if resume is not None:
        net.load_state_dict(resume.net)  # before the frozen body's features are computed from it
    # Rank r's own random stream (dropout, main-process augmentation); rank 0's is a lone process's.
    # A resumed part draws afresh (seed + epochs done): replaying the skipped epochs' draws would cost them.
    seed = config.seed + 7919 * done
    seed_everything(seed + rank)
    start = time.perf_counter()
    net.to(device.device)
    distributed.broadcast_module(net)  # the frozen body too: every rank computes its features alike
    if device.channels_last:
        net.to(memory_format=torch.channels_last)
    n_train, n_val = len(train_items), len(val_items)
    bs, epochs = config.batch_size, config.epochs
    part = last - done  # the epochs this call trains
    gbs = bs * world  # the global batch: one step of all processes together
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    per_epoch = (n_train // gbs) * gbs if n_train > gbs else n_train  # drop_last
    per_epoch += n_val

    cached = cached_parts(net, config) is not None
    prepare = _feature_inputs if cached else _image_inputs
    module, train_loader, eval_loader, clock, unit = prepare(
        net, train_items, val_items, pre, config, device, part * per_epoch, callback, cancel, shard, seed)

    optimizer = make_optimizer(net, strategy, config, device)
    total_steps = epochs * len(train_loader)
    scheduler = cosine_with_warmup(optimizer, total_steps, warmup=min(len(train_loader), max(total_steps // 20, 1)))
    scaler = torch.amp.GradScaler(device.type) if device.grad_scaler else None
    _restore_optimization(resume, optimizer, scheduler, scaler)
    step_module = torch.compile(module) if config.compile else module
    train_module = distributed.wrap(step_module, device.device)  # DDP when data-parallel

    history, best_acc, best_loss, best_epoch, best_state, best_out, gained = _tracking(resume, device)
    stopped_early = False
    for epoch in range(done + 1, last + 1):
        t0 = time.perf_counter()
        clock.new_phase()
        lr_now = optimizer.param_groups[0]["lr"]
        # On cached features the frozen part does not run: nothing to fold there.
        with _fold(net, () if cached else net.frozen_modules, config):
            train_loss, train_acc = train_one_epoch(
                train_module, train_loader, optimizer, scheduler, loss_fn, device, scaler=scaler,
                on_step=lambda s, S, n, loss, acc: clock.step("train", epoch, epochs, s, S, n, n * unit, loss, acc))
        train_loss, train_acc = distributed.all_mean([train_loss, train_acc])
        distributed.broadcast_module(module, buffers_only=True)  # rank 0's batch-norm statistics, everywhere
        clock.new_phase()
        out = evaluate(step_module, eval_loader, device, loss_fn,
                       on_step=lambda s, S, n: clock.step("validate", epoch, epochs, s, S, n, n * unit))
        out = _whole_validation(out, n_val, sharded=not cached)
        stats = EpochStats(epoch, train_loss, train_acc, out.loss, out.accuracy, lr_now, time.perf_counter() - t0)
        history.append(stats)
        log.info("epoch %d/%d: train loss %.4f acc %.3f, val loss %.4f acc %.3f (%.1fs)", epoch, epochs,
                 train_loss, train_acc, out.loss, out.accuracy, stats.seconds)
        if callback is not None:
            callback(stats)
        # Equal accuracy, lower loss wins: on a few validation images accuracy often saturates early,
        # and the first epoch to reach it is rarely the most confident model.
        if out.accuracy > best_acc:
            gained = epoch  # patience counts epochs without a better accuracy
        if out.accuracy > best_acc or (out.accuracy == best_acc and out.loss < best_loss):
            best_acc, best_loss, best_epoch, best_out = out.accuracy, out.loss, epoch, out
            # A copy on the device: no copy to the host (and wait for it) after every improving epoch.
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        if config.patience is not None and epoch - gained >= config.patience:
            stopped_early = True
            log.info("early stopping: no better validation accuracy for %d epochs", config.patience)
            break
    if not stopped_early and last < epochs:  # a pause: hand over everything the next part needs
        state = FitState(last, _cpu_tree(net.state_dict()), _cpu_tree(optimizer.state_dict()),
                         _cpu_tree(scheduler.state_dict()), _cpu_tree(scaler.state_dict()) if scaler else None,
                         history, best_acc, best_loss, best_epoch, _cpu_tree(best_state), _cpu_output(best_out),
                         gained)
        net.to(memory_format=torch.contiguous_format).eval()
        return FitResult(net, history, best_epoch, best_acc, time.perf_counter() - start, False, best_out, state)
    if best_state is not None and best_epoch != history[-1].epoch:
        module.load_state_dict(best_state)
    # Back to the default layout, so that this net and one loaded from disk compute identically.
    net.to(memory_format=torch.contiguous_format).eval()
    return FitResult(net, history, best_epoch, best_acc, time.perf_counter() - start, stopped_early, best_out)
