"""Presets: named recipes (``quick``, ``best``) that set the training settings in one word.

A :class:`Preset` is a small table of settings: the backbone, the strategy, epochs, image size,
cached views (and whether a trained body's frozen stages are cached), label smoothing, frozen stages,
learning rates and the app's images-per-class cap, plus what changes on a GPU (bigger images, more
epochs: time is cheap there) and with another backbone than the preset's own (its recipe is sized for
its backbone). ``xfer train``, the app's Train tab and :func:`xfer.train` start from
:data:`DEFAULT_PRESET`; any setting given explicitly (a CLI flag, an API argument, a field changed in
the app) overrides the preset's. The name is saved in the model's config (``training.preset``).

Where the figures come from: ``bench/results/tail-recipes.md``, ``bench/results/head-recipes.md``,
``bench/results/accuracy-quick.md``, ``bench/results/best-choice.md`` and ``bench/results/accuracy-best.md``
(commands there); the README's "Presets" section has the table and what each figure was measured on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from .errors import ConfigError

if TYPE_CHECKING:
    from .engine import TrainConfig

#: The reference data set and machine the presets' times are measured on.
REFERENCE_IMAGES = 3130  # the flower photos
REFERENCE_CORES = 2


@dataclass(frozen=True)
class Preset:
    """One recipe. ``None`` means "the usual default": the strategy's learning rate, the backbone's
    frozen stages, every image. ``gpu`` holds the settings that replace these on a GPU."""

    name: str
    summary: str
    backbone: str | None  # None: xfer.default_backbone()
    strategy: str
    epochs: int
    image_size: int
    cache_views: int  # frozen parts: 1 clean + (N-1) augmented views cached per image
    label_smoothing: float
    frozen_stages: int | None  # finetune with this preset's backbone; None: the backbone's default
    lr: float | None  # None: the strategy's default
    body_lr: float | None  # a trained body's; None: lr times the strategy's body multiplier
    max_per_class: int | None  # the app's "images per class" cap; None: all. The CLI and API use all they get.
    cpu_minutes: float  # measured wall time on REFERENCE_CORES cores for REFERENCE_IMAGES images
    gpu: Mapping[str, Any] = field(default_factory=dict)
    cache_frozen: bool = False  # a trained body's frozen first stages run once per image (TrainConfig.cache_frozen)
    # The settings that replace these with another backbone than the preset's own (its recipe is sized for
    # its backbone: another one's stages, cost and memory differ); "gpu" in it replaces ``gpu``.
    elsewhere: Mapping[str, Any] = field(default_factory=dict)

    def on(self, device_type: str) -> "Preset":
        """This preset as it runs on a device of ``device_type`` ("cpu", "cuda", "mps"). Call it after
        :meth:`for_backbone`, whose settings carry their own GPU ones."""
        return dataclasses.replace(self, **self.gpu) if device_type != "cpu" and self.gpu else self

    def for_backbone(self, backbone: str | None) -> "Preset":
        """This preset as it trains ``backbone`` (None: its own): its ``elsewhere`` settings for another one."""
        if backbone is None or self.backbone is None or backbone == self.backbone or not self.elsewhere:
            return self
        return dataclasses.replace(self.elsewhere_preset(), backbone=backbone)

    def elsewhere_preset(self) -> "Preset":
        """This preset as it trains a backbone other than its own (its ``elsewhere`` settings; backbone None)."""
        return dataclasses.replace(self, backbone=None, elsewhere={}, **self.elsewhere)

    def train_config(self, **given: Any) -> "TrainConfig":
        """The preset's :class:`TrainConfig`; ``given`` settings that are not None replace its own."""
        from .engine import TrainConfig  # the trainer (torch) only when a run is configured: `--help` stays light

        own = dict(epochs=self.epochs, lr=self.lr, body_lr=self.body_lr, label_smoothing=self.label_smoothing,
                   cache_views=self.cache_views, cache_frozen=self.cache_frozen)
        own.update({k: v for k, v in given.items() if v is not None})
        return TrainConfig(**own)

    def frozen_for(self, strategy: str, backbone: str) -> int | None:
        """The preset's frozen stages, for its own strategy and backbone only (another backbone has other
        stages): else None, the backbone's default."""
        return self.frozen_stages if strategy == self.strategy and backbone == self.backbone else None

    def settings(self) -> dict[str, Any]:
        """The table row: every setting by name (what ``xfer presets`` prints and the app shows)."""
        return {"backbone": self.backbone or "default", "strategy": self.strategy, "epochs": self.epochs,
                "image_size": self.image_size, "cache_views": self.cache_views, "cache_frozen": self.cache_frozen,
                "label_smoothing": self.label_smoothing,
                "frozen_stages": "backbone's" if self.frozen_stages is None else self.frozen_stages,
                "lr": "strategy's" if self.lr is None else self.lr,
                "body_lr": "strategy's" if self.body_lr is None else self.body_lr,
                "max_per_class": "all" if self.max_per_class is None else self.max_per_class}

    def describe(self) -> str:
        """One line: "quick (default): efficientnet_lite0, head, 15 epochs, 224 px, ...; on a GPU: ..."."""
        d = self.settings()
        frozen = "" if self.strategy != "finetune" else (
            f", {d['frozen_stages']} frozen stages" + (" (their outputs cached)" if self.cache_frozen else ""))
        views = (f", {self.cache_views} cached view{'s' * (self.cache_views != 1)}"
                 if self.strategy in ("head", "truncate") or self.cache_frozen else "")
        body = f", body lr {self.body_lr:g}" if self.body_lr is not None else ""
        gpu = _changes(self.gpu)
        other = _changes({k: v for k, v in self.elsewhere.items() if k != "gpu"})
        return (f"{self.name}{' (default)' if self.name == DEFAULT_PRESET else ''}: {d['backbone']}, {self.strategy}, "
                f"{self.epochs} epochs, {self.image_size} px{views}, label smoothing {self.label_smoothing:g}"
                f"{frozen}, lr {d['lr']}{body}, images per class {d['max_per_class']}; about {self.cpu_minutes:g} min "
                f"on {REFERENCE_CORES} CPU cores for {REFERENCE_IMAGES:,} images"
                + (f"; on a GPU: {gpu}" if gpu else "") + (f"; another backbone: {other}" if other else ""))

    def expected_seconds(self, num_images: int, device_type: str = "cpu", cores: int = REFERENCE_CORES
                         ) -> float | None:
        """A rough wall time on a CPU: the measured one scaled by images and cores (None on a GPU: not measured)."""
        if device_type != "cpu":
            return None
        return self.cpu_minutes * 60 * num_images / REFERENCE_IMAGES * REFERENCE_CORES / max(1, cores)


def _changes(settings: Mapping[str, Any]) -> str:
    """'image size 256, epochs 30': a preset's GPU or other-backbone settings in words."""
    return ", ".join(f"{k.replace('_', ' ')} {'default' if v is None else v}" for k, v in settings.items())


PRESETS: dict[str, Preset] = {
    # finetune with the stem and MBConv stages 1-6 frozen, their outputs cached once per image (one clean view):
    # the last MBConv stage, the head conv and the new head train on those 7x7 maps for 5 epochs, all at 1e-3.
    # Chosen on repeated validation splits outside the test split (bench/results/tail-recipes.md): +2.6 points
    # over the frozen body's head that quick was until the ninth session, which no head recipe came near
    # (bench/results/head-recipes.md). Another backbone gets that head recipe: this one is sized for Lite0.
    # 2.0 min: the whole `xfer train --data flowers` command on the tenth session's 2 cores, beside the old best's
    # 12.1 (bench/results/quick-cli.md).
    "quick": Preset(
        "quick", "the best recipe that trains in about 2 minutes on 2 CPU cores (3,130 photos)",
        backbone="efficientnet_lite0", strategy="finetune", epochs=5, image_size=224, cache_views=1,
        label_smoothing=0.1, frozen_stages=7, lr=1e-3, body_lr=1e-3, max_per_class=None, cpu_minutes=2.0,
        cache_frozen=True, gpu={"image_size": 256, "epochs": 10, "cache_views": 5},
        elsewhere={"strategy": "head", "epochs": 15, "frozen_stages": None, "cache_frozen": False, "body_lr": None,
                   "gpu": {"image_size": 256, "epochs": 30, "cache_views": 5}}),
    # quick's way at a larger scale: 256 px, the stem and MBConv stages 1-5 frozen and cached, stages 6-7, the
    # head conv and the new head trained for 6 epochs at 1e-3. Chosen (eleventh session) among four recipes on
    # their validation accuracy over 3 seeds, the test photos never evaluated (bench/results/best-choice.md):
    # 95.4% against 94.8% for the uncached 256-px finetune that best was until then, at 2/3 of its CPU time.
    # On a GPU and with another backbone: an uncached finetune (augmented images each epoch) with the old best's
    # settings there. 5.9 min: the whole command took 2.90x quick's side by side (4:24 and 1:31,
    # bench/results/quick-cli.md), times quick's 2:03.
    "best": Preset(
        "best", "the most accurate recipe measured, about 6 minutes on 2 CPU cores (3,130 photos)",
        backbone="efficientnet_lite0", strategy="finetune", epochs=6, image_size=256, cache_views=1,
        label_smoothing=0.1, frozen_stages=6, lr=1e-3, body_lr=1e-3, max_per_class=None, cpu_minutes=5.9,
        cache_frozen=True,
        gpu={"image_size": 320, "epochs": 10, "frozen_stages": None, "cache_frozen": False, "lr": None,
             "body_lr": None},
        elsewhere={"epochs": 4, "frozen_stages": None, "cache_frozen": False, "lr": None, "body_lr": None,
                   "gpu": {"image_size": 320, "epochs": 10}}),
}
DEFAULT_PRESET = "quick"


def get_preset(name: str | None) -> Preset:
    """The preset called ``name`` (None: :data:`DEFAULT_PRESET`); a ConfigError names the choices."""
    name = DEFAULT_PRESET if name is None else name
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}: choose one of {', '.join(PRESETS)}.")
    return PRESETS[name]


def presets_table(markdown: bool = False) -> str:
    """Every preset's settings, one row each, and what changes on a GPU (plain text, or a Markdown table)."""
    cols = ["preset", *next(iter(PRESETS.values())).settings(), "time (2 CPU cores, 3,130 images)", "on a GPU",
            "another backbone"]
    rows = []
    for p in PRESETS.values():
        other = _changes({k: v for k, v in p.elsewhere.items() if k != "gpu"}) or "the same"
        rows.append([p.name + (" (default)" if p.name == DEFAULT_PRESET else ""), *map(str, p.settings().values()),
                     f"about {p.cpu_minutes:g} min", _changes(p.gpu) or "the same", other])
    if markdown:
        return "\n".join(["| " + " | ".join(c.replace("_", " ") for c in cols) + " |", "|" + "---|" * len(cols),
                          *("| " + " | ".join(r) + " |" for r in rows)])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in [cols, *rows])
