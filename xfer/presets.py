"""Presets: named recipes (``quick``, ``best``) that set the training settings in one word.

A :class:`Preset` is a small table of settings: the backbone, the strategy, epochs, image size,
cached views, label smoothing, frozen stages, learning rate and the app's images-per-class cap, plus
what changes on a GPU (bigger images, more epochs: time is cheap there). ``xfer train``, the app's
Train tab and :func:`xfer.train` start from :data:`DEFAULT_PRESET`; any setting given explicitly
(a CLI flag, an API argument, a field changed in the app) overrides the preset's. The name is
saved in the model's config (``training.preset``).

Where the figures come from: ``bench/results/head-recipes.md``, ``bench/results/accuracy-quick.md`` and
``bench/results/finetune-sweep.md`` (commands there); the README's "Presets" section has the table and
what each figure was measured on.
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
    cache_views: int  # frozen bodies: 1 clean + (N-1) augmented views cached per image
    label_smoothing: float
    frozen_stages: int | None  # finetune with this preset's backbone; None: the backbone's default
    lr: float | None  # None: the strategy's default
    max_per_class: int | None  # the app's "images per class" cap; None: all. The CLI and API use all they get.
    cpu_minutes: float  # measured wall time on REFERENCE_CORES cores for REFERENCE_IMAGES images
    gpu: Mapping[str, Any] = field(default_factory=dict)

    def on(self, device_type: str) -> "Preset":
        """This preset as it runs on a device of ``device_type`` ("cpu", "cuda", "mps")."""
        return dataclasses.replace(self, **self.gpu) if device_type != "cpu" and self.gpu else self

    def train_config(self, **given: Any) -> "TrainConfig":
        """The preset's :class:`TrainConfig`; ``given`` settings that are not None replace its own."""
        from .engine import TrainConfig  # the trainer (torch) only when a run is configured: `--help` stays light

        own = dict(epochs=self.epochs, lr=self.lr, label_smoothing=self.label_smoothing, cache_views=self.cache_views)
        own.update({k: v for k, v in given.items() if v is not None})
        return TrainConfig(**own)

    def frozen_for(self, strategy: str, backbone: str) -> int | None:
        """The preset's frozen stages, for its own strategy and backbone only (another backbone has other
        stages): else None, the backbone's default."""
        return self.frozen_stages if strategy == self.strategy and backbone == self.backbone else None

    def settings(self) -> dict[str, Any]:
        """The table row: every setting by name (what ``xfer presets`` prints and the app shows)."""
        return {"backbone": self.backbone or "default", "strategy": self.strategy, "epochs": self.epochs,
                "image_size": self.image_size, "cache_views": self.cache_views,
                "label_smoothing": self.label_smoothing,
                "frozen_stages": "backbone's" if self.frozen_stages is None else self.frozen_stages,
                "lr": "strategy's" if self.lr is None else self.lr,
                "max_per_class": "all" if self.max_per_class is None else self.max_per_class}

    def describe(self) -> str:
        """One line: "quick (default): efficientnet_lite0, head, 15 epochs, 224 px, ...; on a GPU: ..."."""
        d = self.settings()
        frozen = "" if self.strategy != "finetune" else f", {d['frozen_stages']} frozen stages"
        views = (f", {self.cache_views} cached view{'s' * (self.cache_views != 1)}"
                 if self.strategy in ("head", "truncate") else "")
        gpu = ", ".join(f"{k.replace('_', ' ')} {'default' if v is None else v}" for k, v in self.gpu.items())
        return (f"{self.name}{' (default)' if self.name == DEFAULT_PRESET else ''}: {d['backbone']}, {self.strategy}, "
                f"{self.epochs} epochs, {self.image_size} px{views}, label smoothing {self.label_smoothing:g}"
                f"{frozen}, lr {d['lr']}, images per class {d['max_per_class']}; about {self.cpu_minutes:g} min "
                f"on {REFERENCE_CORES} CPU cores for {REFERENCE_IMAGES:,} images"
                + (f"; on a GPU: {gpu}" if gpu else ""))

    def expected_seconds(self, num_images: int, device_type: str = "cpu", cores: int = REFERENCE_CORES
                         ) -> float | None:
        """A rough wall time on a CPU: the measured one scaled by images and cores (None on a GPU: not measured)."""
        if device_type != "cpu":
            return None
        return self.cpu_minutes * 60 * num_images / REFERENCE_IMAGES * REFERENCE_CORES / max(1, cores)


PRESETS: dict[str, Preset] = {
    # head on cached features of one clean view, 15 epochs, label smoothing 0.1. One view, not three: on
    # repeated validation splits three were no better (bench/results/head-recipes.md) and cost three body
    # passes per image; no head recipe tried there gained a point. 0.7 min: the 3-view recipe's 1.5 min
    # times 0.44, the two recipes' ratio measured side by side (README, "Presets").
    "quick": Preset(
        "quick", "the best recipe that trains in about 2 minutes on 2 CPU cores (3,130 photos)",
        backbone="efficientnet_lite0", strategy="head", epochs=15, image_size=224, cache_views=1,
        label_smoothing=0.1, frozen_stages=None, lr=None, max_per_class=None, cpu_minutes=0.7,
        gpu={"image_size": 256, "epochs": 30, "cache_views": 5}),
    # finetune at 256 px, 4 epochs, stem and stages 1-4 frozen: 6.1 min wall / 10.9 CPU min on 2 cores
    # (bench/results/finetune-sweep.md, fifth session).
    "best": Preset(
        "best", "the most accurate recipe within 15 minutes on 2 CPU cores (3,130 photos)",
        backbone="efficientnet_lite0", strategy="finetune", epochs=4, image_size=256, cache_views=1,
        label_smoothing=0.1, frozen_stages=5, lr=None, max_per_class=None, cpu_minutes=6.1,
        gpu={"image_size": 320, "epochs": 10, "frozen_stages": None}),
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
    cols = ["preset", *next(iter(PRESETS.values())).settings(), "time (2 CPU cores, 3,130 images)", "on a GPU"]
    rows = []
    for p in PRESETS.values():
        gpu = ", ".join(f"{k} {'default' if v is None else v}" for k, v in p.gpu.items()) or "the same"
        rows.append([p.name + (" (default)" if p.name == DEFAULT_PRESET else ""), *map(str, p.settings().values()),
                     f"about {p.cpu_minutes:g} min", gpu])
    if markdown:
        return "\n".join(["| " + " | ".join(c.replace("_", " ") for c in cols) + " |", "|" + "---|" * len(cols),
                          *("| " + " | ".join(r) + " |" for r in rows)])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in [cols, *rows])
