"""The high-level Python API: train, evaluate, predict.

These compose the lower layers (data, strategies, engine, model) the way the CLI
and the app use them; each takes an already chosen device.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from . import distributed
from .data import DatasetReport, ImageSource, class_name_problem, load_dataset, split_dataset
from .device import DeviceInfo, select_device
from .errors import ConfigError, DataError
from .inference import check_batch_size, check_k, top_k
from .model import XferModel
from .modelconfig import IMAGE_SIZE_MAX, IMAGE_SIZE_MIN, MAX_CLASSES
from .nets.registry import DEFAULT_BACKBONE, get_backbone, pretrained_available
from .outputs import check_output_folder
from .presets import DEFAULT_PRESET, get_preset

if TYPE_CHECKING:
    from .engine import Callback, CancelFlag, FitState, TrainConfig
    from .evaluation import EvalReport

# The trainer, the advisor and the evaluation metrics are imported by the functions that use them:
# `xfer predict` loads a model and runs it, and pays for nothing else (bench/results/startup.md).

log = logging.getLogger(__name__)

FALLBACK_BACKBONE = "efficientnet_lite0"


def default_backbone() -> tuple[str, str | None]:
    """VGG-16 when its ImageNet weights are cached or can be downloaded now, else the offline backbone.

    Returns (name, note): the note, when not None, says that VGG-16's weights will be
    downloaded on first use, or why VGG-16 was not chosen and how to get its weights.
    """
    if pretrained_available(DEFAULT_BACKBONE):
        return DEFAULT_BACKBONE, None
    from .nets.registry import weights_downloadable

    url, path = get_backbone(DEFAULT_BACKBONE).weights_location()
    if weights_downloadable(DEFAULT_BACKBONE):
        return DEFAULT_BACKBONE, (f"VGG-16's ImageNet weights (528 MB) will be downloaded from {url} to {path} "
                                  "when a model first uses them.")
    try:
        fallback_ok = pretrained_available(FALLBACK_BACKBONE)
    except ConfigError:
        fallback_ok = False
    if not fallback_ok:
        return DEFAULT_BACKBONE, None
    return FALLBACK_BACKBONE, (
        f"VGG-16's ImageNet weights are not downloaded, so {FALLBACK_BACKBONE} (weights shipped with xfer) "
        f"is used. For VGG-16, run once with internet or put {url} at {path}."
    )


def _check_classes(report: DatasetReport) -> None:
    """The bounds a saved model's config.json is checked against: at most MAX_CLASSES classes, valid names."""
    if len(report.classes) > MAX_CLASSES:
        raise DataError(f"{len(report.classes)} classes: xfer trains at most {MAX_CLASSES}. Merge or drop classes.")
    for name in report.classes:
        if (problem := class_name_problem(name)) is not None:
            raise DataError(f"Class name {name!r} cannot be used ({problem}): rename the class.")


def _as_report(data: str | os.PathLike | DatasetReport) -> DatasetReport:
    return data if isinstance(data, DatasetReport) else load_dataset(data)


def train(data: str | os.PathLike | DatasetReport, *, backbone: str | None = None, strategy: str | None = None,
          weights: str | os.PathLike | None = "imagenet", image_size: int | None = None, val_fraction: float = 0.2,
          config: TrainConfig | None = None, device: DeviceInfo | None = None, cut: int | None = None,
          reinit: int = 0, frozen_stages: int | None = None, out: str | os.PathLike | None = None,
          callback: Callback | None = None, cancel: CancelFlag | None = None,
          preset: str | None = DEFAULT_PRESET) -> XferModel:
    """Train a classifier on ``data`` (a folder, a zip, "flowers" or a scanned report).

    ``preset`` ("quick", the default, or "best"; see :mod:`xfer.presets`) fills in what is not given:
    ``backbone``, ``strategy``, ``image_size``, ``frozen_stages`` (for its own strategy and backbone) and,
    when ``config`` is None, the hyper-parameters; on a GPU its GPU settings apply, with another backbone
    than its own its settings for other backbones (:meth:`~xfer.presets.Preset.for_backbone`). ``preset=None``: no
    preset (the default backbone, ``strategy="auto"``, 224 px, ``TrainConfig()``).
    ``strategy="auto"`` asks the advisor. ``weights`` is "imagenet", a state dict
    path, or None/"none" for random weights. ``frozen_stages``: how many leading
    backbone stages ``finetune`` keeps frozen (None: the backbone's default; 0: none).
    If ``out`` is given the model is saved there, only after training succeeded. Returns the model, with ``metrics`` from
    its best validation epoch and ``evaluation`` (incl. misclassified files).

    Under a launcher (``torchrun``: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR set) the processes
    train one model together (:mod:`xfer.distributed`): ``config.batch_size`` per process, the
    learning rate as given, ``device`` by default ``cuda:LOCAL_RANK`` (or the CPU), only rank 0
    reports to ``callback`` and saves, and every process returns the same model. A lost process
    fails every other one with :class:`~xfer.distributed.DistributedError` and nothing is saved.
    """
    return _train(data, backbone=backbone, strategy=strategy, weights=weights, image_size=image_size,
                  val_fraction=val_fraction, config=config, device=device, cut=cut, reinit=reinit,
                  frozen_stages=frozen_stages, out=out, callback=callback, cancel=cancel, preset=preset)


def train_part(data: str | os.PathLike | DatasetReport, *, resume: FitState | None, stop_after: int,
               **kwargs: Any) -> XferModel | FitState:
    """:func:`train` in parts: train up to epoch ``stop_after`` (from ``resume``, a :class:`~xfer.engine.FitState`
    of an earlier part, or from the start), with :func:`train`'s keyword arguments, the same in every part.

    Returns the :class:`~xfer.engine.FitState` to resume from while epochs remain, else the finished model (as
    :func:`train` would, saved to ``out`` if given). A resumed part builds the net without loading weights
    (the state holds them all). Used where one process may only hold the GPU for a while (ZeroGPU).
    """
    return _train(data, resume=resume, stop_after=stop_after, **kwargs)


def _train(data: str | os.PathLike | DatasetReport, *, backbone: str | None = None, strategy: str | None = None,
           weights: str | os.PathLike | None = "imagenet", image_size: int | None = None, val_fraction: float = 0.2,
           config: TrainConfig | None = None, device: DeviceInfo | None = None, cut: int | None = None,
           reinit: int = 0, frozen_stages: int | None = None, out: str | os.PathLike | None = None,
           callback: Callback | None = None, cancel: CancelFlag | None = None, resume: FitState | None = None,
           stop_after: int | None = None, preset: str | None = DEFAULT_PRESET) -> XferModel | FitState:
    from .advisor import recommend
    from .engine import TrainConfig, fit, seed_everything
    from .evaluation import metrics_from_predictions
    from .model import save_model
    from .nets.strategies import STRATEGIES, build_network, make_spec

    device = device or select_device(distributed.device_name("auto"))
    chosen = get_preset(preset).for_backbone(backbone).on(device.type) if preset is not None else None
    config = config or (chosen.train_config() if chosen else TrainConfig())
    config.validate()  # before scanning the data and building the network, not minutes later in fit
    image_size = image_size if image_size is not None else (chosen.image_size if chosen else 224)
    if not IMAGE_SIZE_MIN <= image_size <= IMAGE_SIZE_MAX:
        raise ConfigError(f"image size must be between {IMAGE_SIZE_MIN} and {IMAGE_SIZE_MAX} pixels, got {image_size}.")
    report = _as_report(data)
    _check_classes(report)
    protect = [report.root] + ([data] if isinstance(data, (str, os.PathLike)) and Path(data).exists() else [])
    if out is not None:  # now, not after minutes of training: --out inside the data would replace the images
        check_output_folder(out, protect)
    train_items, val_items = split_dataset(report, val_fraction, seed=config.seed)
    backbone = backbone or (chosen.backbone if chosen and chosen.backbone else default_backbone()[0])
    weights = None if weights in (None, "none") else weights
    rec = None
    strategy = strategy or (chosen.strategy if chosen else "auto")
    if strategy == "auto":
        rec = recommend(report, device=device)
        strategy = rec.strategy
    elif strategy not in STRATEGIES:
        raise ConfigError(f"Unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)} or auto.")
    config = config.resolved(strategy)
    if frozen_stages is None and chosen:
        frozen_stages = chosen.frozen_for(strategy, backbone)
    spec = make_spec(backbone, strategy, len(report.classes), cut=cut, frozen_stages=frozen_stages)
    # The new layers' initial weights come from the seed too: the same settings train the same model, however
    # many runs this process made before (each process of a distributed run builds the same network).
    seed_everything(config.seed)
    # A resumed part gets every weight from its state: loading ImageNet's first would only cost time.
    net = build_network(spec, weights=None if resume is not None else weights,
                        reinit=reinit if strategy == "finetune" and resume is None else 0)
    pre = get_backbone(backbone).get_preprocessing().for_size(image_size)
    with distributed.process_group(device.device), distributed.failures():
        result = fit(net, strategy, train_items, val_items, pre, config, device, callback=callback, cancel=cancel,
                     resume=resume, stop_after=stop_after)
        world = distributed.world_size()
        distributed.barrier()  # every process finished training (else this fails): only then is anything saved
    if result.state is not None:
        return result.state
    evaluation = metrics_from_predictions(result.val_output.probs, result.val_output.targets, report.classes,
                                          files=[p for p, _ in val_items])
    model = XferModel(
        net=result.net, spec=spec, classes=list(report.classes), preprocessing=pre,
        weights="none" if weights is None or strategy == "scratch" else
        ("imagenet" if str(weights) == "imagenet" else "file"),
        training={"preset": preset, **config.to_dict(), "image_size": image_size, "val_fraction": val_fraction,
                  "device": device.name, "best_epoch": result.best_epoch, "seconds": round(result.seconds, 1),
                  "stopped_early": result.stopped_early, "num_train": len(train_items),
                  "num_val": len(val_items), "world_size": world, **({"cut": spec.cut} if spec.cut else {}),
                  **({"frozen_stages": spec.frozen_stages} if spec.frozen_stages else {}),
                  **({"reinit": reinit} if reinit and strategy == "finetune" else {})},
        metrics=evaluation.to_dict(with_files=False),
        history=[vars(h) for h in result.history],
        dataset={"classes": report.classes, "counts": report.counts, "skipped": len(report.skipped)},
        recommendation=rec.to_dict() if rec else None,
    )
    model.evaluation = evaluation
    if out is not None and distributed.is_main():
        save_model(model, out, protect=protect)
    return model


def _labelled_items(model: XferModel, data: str | os.PathLike | DatasetReport | Sequence[tuple[Any, Any]]
                    ) -> list[tuple[Any, int]]:
    if isinstance(data, (str, os.PathLike, DatasetReport)):
        report = _as_report(data)
        pairs = [(p, report.classes[i]) for p, i in report.items]
    else:
        pairs = list(data)
    index = {c: i for i, c in enumerate(model.classes)}
    items, unknown = [], set()
    for source, label in pairs:
        if isinstance(label, int) and not isinstance(label, bool):
            if not 0 <= label < len(model.classes):
                raise DataError(f"Label index {label} is out of range for {len(model.classes)} classes.")
            items.append((source, label))
        elif label in index:
            items.append((source, index[label]))
        else:
            unknown.add(str(label))
    if unknown:
        raise DataError(f"Classes {sorted(unknown)} are not known to the model (it knows {model.classes}): "
                        "evaluate on data with the model's class folders.")
    if not items:
        raise DataError("There are no images to evaluate.")
    return items


def evaluate(model: XferModel, data: str | os.PathLike | DatasetReport | Sequence[tuple[Any, Any]],
             device: DeviceInfo | None = None, batch_size: int = 32) -> EvalReport:
    """Accuracy, per-class precision/recall/F1, confusion matrix and the misclassified files.

    ``data``: a dataset folder/zip/"flowers", a scanned report, or (image, class name or index) pairs.
    """
    from .data.pipeline import make_loader
    from .data.transforms import ImageDataset, make_transform
    from .engine import evaluate as run_eval
    from .evaluation import metrics_from_predictions

    check_batch_size(batch_size)
    device = device or select_device("cpu")
    items = _labelled_items(model, data)
    model.net.to(device.device)
    loader = make_loader(ImageDataset(items, make_transform(model.preprocessing), 2 * model.preprocessing.resize_size),
                         batch_size, device, shuffle=False)
    out = run_eval(model.net, loader, device)
    return metrics_from_predictions(out.probs, out.targets, model.classes, files=[s for s, _ in items])


def predict(model: XferModel | str | os.PathLike, images: Sequence[ImageSource] | ImageSource, k: int = 5,
            batch_size: int = 32) -> list[dict[str, float]]:
    """Top-k ``{label: probability}`` per image, most likely first (k capped at the number of classes).

    ``model``: a loaded model, a model folder, or a Hub repo id (``"user/name"``, ``"user/name@revision"``,
    ``"hf://user/name"``), pulled with the stored login (see :func:`xfer.service.open_model`).
    Probabilities are a softmax over all classes, so with k = number of classes they sum to 1.
    """
    check_k(k)
    check_batch_size(batch_size)
    if not isinstance(model, XferModel):
        from .service import open_model

        model = open_model(model)
    return top_k(model, images, k=k, batch_size=batch_size)
