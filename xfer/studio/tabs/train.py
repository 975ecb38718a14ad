"""2 · Train: a preset, backbone, strategy (the advisor's pick pre-selected when it fits the preset), settings,
the run's progress and curves."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from html import escape
from typing import Any, Iterator, NamedTuple

import gradio as gr
import torch

from ...advisor import recommend
from ...allocation import cached_share, plan_parts
from ...api import train
from ...data import DatasetReport, check_trainable, split_dataset
from ...engine import EpochStats, Progress
from ...errors import XferError
from ...model import XferModel, save_model
from ...nets.registry import get_backbone, list_backbones, pretrained_available
from ...nets.strategies import STRATEGIES, make_spec
from ...presets import DEFAULT_PRESET, PRESETS, REFERENCE_CORES, REFERENCE_IMAGES, Preset, get_preset
from ...run import Done, Failed, TrainingRun
from .. import views, zerogpu
from ..errors import as_gr_error, fail, ui_errors
from ..session import AppConfig, Session, cap_per_class
from ..text import md_text, without_server_paths
from . import PRIVATE, queued_at, skip
from .evaluate import eval_values
from .predict import ModelValues

PROGRESS_EVERY_S = 0.4  # how often the training progress is pushed to the browser
STOP_WAIT_S = 180  # how long Stop waits for the current batch to finish before answering
KEEP = object()  # in train_update: this output stays as it is
EPOCHS_MAX = 50  # the Epochs slider's end, and the curves' epoch axis


class RecValues(NamedTuple):
    strategy: Any
    strategy_md: Any
    lr: Any
    advisor: str
    preset_md: Any = None  # the preset's settings and expected time for this dataset


class PresetValues(NamedTuple):
    """What choosing a preset sets in the tab."""

    backbone: str
    strategy: str
    strategy_md: str
    epochs: int
    image_size: int
    lr: float
    max_per_class: int
    preset_md: str


def device_preset(config: AppConfig, name: str | None, backbone: str | None = None) -> Preset:
    """The preset ``name`` as it trains ``backbone`` (None: its own) on the app's device (a GPU's bigger images
    and more epochs)."""
    return get_preset(name).for_backbone(backbone).on(config.device.type)


def preset_markdown(config: AppConfig, name: str | None, num_images: int | None = None) -> str:
    """The preset's settings, and how long it should take on this device for ``num_images`` images."""
    p = device_preset(config, name)
    d = p.settings()
    bits = [d["backbone"], p.strategy, f"{p.epochs} epochs", f"{p.image_size} px"]
    if STRATEGIES[p.strategy].frozen:
        bits.append(f"{p.cache_views} cached view{'s' * (p.cache_views != 1)} per image")
    elif p.strategy == "finetune":
        bits.append(f"{d['frozen_stages']} frozen stages" + (" (computed once per image)" if p.cache_frozen else ""))
    bits += [f"label smoothing {p.label_smoothing:g}", f"learning rate: {d['lr']}",
             f"images per class: {d['max_per_class']}"]
    n = num_images or REFERENCE_IMAGES
    whose = "your" if num_images else "a flowers-sized set of"
    seconds = p.expected_seconds(n, config.device.type, torch.get_num_threads())
    when = (f"Expected time here: about **{views.format_duration(seconds)}** for {whose} {n:,} images "
            f"(measured: {p.cpu_minutes:g} min for {REFERENCE_IMAGES:,} photos on {REFERENCE_CORES} CPU cores; "
            "scaled by images and cores, longer when the machine is busy)." if seconds is not None else
            f"On {config.device.name}: {p.name} uses bigger images and more epochs than on a CPU (time is cheap "
            "there); its time on a GPU is not measured.")
    other = get_preset(name).elsewhere_preset().on(config.device.type) if p.elsewhere else None
    elsewhere = (f" With another backbone: {other.strategy}, {other.epochs} epochs." if other is not None else "")
    return f"**{p.name}**: {escape(' · '.join(map(str, bits)))}.{elsewhere}\n\n{when}"


def _cost_class(strategy: str, preset: Preset) -> str:
    """"frozen" (features once, cheap epochs), "cached" (a finetune on its frozen stages' cached outputs, as the
    preset runs it) or "trained" (every epoch through the body)."""
    if STRATEGIES[strategy].frozen:
        return "frozen"
    return "cached" if preset.cache_frozen and strategy == preset.strategy else "trained"


def _follows_advice(advice: str, preset: Preset) -> bool:
    """The advisor's pick replaces the preset's strategy only within its cost class (see :func:`_cost_class`):
    the preset's epochs and image size are sized for its own (a finetune run through the images with 15
    epochs would take an hour on a CPU; a head with 5 would stop short)."""
    return _cost_class(advice, preset) == _cost_class(preset.strategy, preset)


def train_update(progress: Any = KEEP, status: Any = KEEP, loss: Any = KEEP, acc: Any = KEEP,
                 model: ModelValues | None = None) -> tuple:
    """One update of ``train_outputs`` (see build_demo): this tab's four outputs, then the :class:`ModelValues`.

    KEEP (and a missing ``model``) leave those outputs as they are."""
    own = tuple(skip() if v is KEEP else v for v in (progress, status, loss, acc))
    return (*own, *(model if model is not None else (skip() for _ in ModelValues._fields)))


# --- handlers: the advisor, the strategy, the backbone -----------------------------------------------


@ui_errors
def on_recommend(session: Session, max_per_class: float | None, preset: str | None = None) -> RecValues:
    """The advisor's pick (pre-selected when it fits the preset, see :func:`_follows_advice`) and the preset's
    expected time for the dataset."""
    if session.report is None or len(session.report.classes) < 2:
        return RecValues(skip(), skip(), skip(), views.recommendation_markdown(None), skip())
    report = cap_per_class(session.report, int(max_per_class or 0))
    preset_md = preset_markdown(session.config, preset, report.num_images)
    try:
        measured = session.similarity
        rec = recommend(report, similarity="measure" if isinstance(measured, str) else measured,
                        device=session.config.device)
    except XferError as e:  # the advice is optional: say why there is none, keep going
        return RecValues(skip(), skip(), skip(),
                         f"The advisor could not measure your images ({e}); choose a strategy yourself.", preset_md)
    session.similarity = rec.measurement  # None: nothing could be measured; not measured again
    chosen = device_preset(session.config, preset, session.backbone or session.config.defaults.backbone)
    if not _follows_advice(rec.strategy, chosen):
        return RecValues(skip(), skip(), skip(),
                         f"**Recommended: {rec.strategy}.** {md_text(rec.reason)} The preset *{chosen.name}* keeps "
                         f"{chosen.strategy} (its settings are sized for it): choose {rec.strategy} under Strategy "
                         "to follow the advice, and set its epochs.", preset_md)
    return RecValues(rec.strategy, views.strategy_markdown(rec.strategy),
                     views.strategy_lr(rec.strategy, _fixed_lr(session.config, chosen)),
                     views.recommendation_markdown(rec), preset_md)


def _fixed_lr(config: AppConfig, preset: Preset) -> float | None:
    """The learning rate the app was started with, else the preset's; None: the strategy's."""
    return config.defaults.lr if config.defaults.lr is not None else preset.lr


def on_preset(session: Session, name: str) -> PresetValues:
    """Choosing a preset sets the tab's fields to its settings (the person can still change each)."""
    p = device_preset(session.config, name)
    backbone = p.backbone or session.config.defaults.backbone
    cap = int(p.max_per_class or 0)
    report = cap_per_class(session.report, cap) if session.report is not None else None
    return PresetValues(backbone, p.strategy, views.strategy_markdown(p.strategy), p.epochs, p.image_size,
                        views.strategy_lr(p.strategy, _fixed_lr(session.config, p)), cap,
                        preset_markdown(session.config, name, report.num_images if report else None))


def on_strategy(session: Session, name: str) -> tuple[str, float]:
    """The strategy's explanation and learning rate."""
    return views.strategy_markdown(name), views.strategy_lr(name, session.config.defaults.lr)


def weights_note(config: AppConfig, name: str, pretrained: bool) -> str:
    """Why this backbone was the default, and whether its ImageNet weights must be downloaded first."""
    lines = [f"Note: {without_server_paths(config.backbone_note)}"] if config.backbone_note and name == config.defaults.backbone else []
    try:
        ok = pretrained_available(name)
    except XferError:
        ok = False
    if pretrained and not ok:
        lines.append(f"Note: {name}'s ImageNet weights are not on this machine yet: they are downloaded when "
                     "training starts (needs internet), or untick \"Start from ImageNet weights\" "
                     "(much less accurate).")
    return "\n\n".join(lines)


def on_backbone(session: Session, name: str, pretrained: bool) -> str:
    """The weights note; remembers the backbone (the advisor's pick depends on the preset's recipe for it)."""
    session.backbone = name if isinstance(name, str) else None
    return weights_note(session.config, name, pretrained)


def on_pick_backbone(session: Session, name: str, preset: str | None = DEFAULT_PRESET) -> tuple:
    """A backbone the person picked: the preset's strategy (and its text), epochs and learning rate for it (a
    preset's recipe is sized for its own backbone; another one gets the preset's settings for other backbones)."""
    p = device_preset(session.config, preset, name)
    return p.strategy, views.strategy_markdown(p.strategy), p.epochs, views.strategy_lr(p.strategy,
                                                                                      _fixed_lr(session.config, p))


# --- handlers: a training run ---------------------------------------------------------------------


def _commit(session: Session, model: XferModel) -> None:
    # In the run's thread, only when the run finished and nobody pressed Stop: the model that was
    # predicting stays until this one is saved.
    save_model(model, session.trained_model_dir)
    session.use_model(model, session.trained_model_dir, "the model you just trained")


def start_run(session: Session, backbone: str, strategy_name: str, epochs: float, lr: float, batch_size: float,
              image_size: float, augment: bool, pretrained: bool, max_per_class: float | None,
              preset: str | None = DEFAULT_PRESET) -> tuple[TrainingRun, DatasetReport]:
    """Check the inputs, start this session's training run (it commits its model on success); returns it and
    the dataset it trains on. The fields win; ``preset`` supplies what the tab does not show (cached views,
    label smoothing, frozen stages) and is saved as ``training.preset``."""
    if session.report is None:
        raise fail("There is no dataset yet: load one in 1 · Data first.")
    if session.training:
        raise fail("A training run is already going on in this session: wait for it or press Stop.")
    report = cap_per_class(session.report, int(max_per_class or 0))
    check_trainable(report)
    chosen = device_preset(session.config, preset, backbone)
    config = chosen.train_config(epochs=int(epochs), batch_size=int(batch_size), lr=float(lr), augment=bool(augment))
    config.validate()
    settings = dict(backbone=backbone, strategy=strategy_name, weights="imagenet" if pretrained else None,
                    image_size=int(image_size), config=config, preset=chosen.name)
    if zerogpu.enabled():  # one GPU allocation per part of whole epochs (xfer.allocation)
        n_train, n_val = (len(s) for s in split_dataset(report, 0.2, seed=config.seed))
        spec = make_spec(backbone, strategy_name, len(report.classes),
                         frozen_stages=chosen.frozen_for(strategy_name, backbone))
        parts = plan_parts(config.epochs, n_train, n_val, strategy_name, int(image_size),
                           config.cache_views if config.augment else 1, cached=cached_share(spec, config.cache_frozen))
        job = zerogpu.training_job(report, settings, parts, session.new_dir("zerogpu"))
    else:
        job = functools.partial(train, report, device=session.config.device, **settings)
    session.run = TrainingRun(job, commit=functools.partial(_commit, session), name=f"xfer-train-{session.id[:8]}")
    return session.run.start(), report


def trains_on(session: Session) -> str:
    return "ZeroGPU" if zerogpu.enabled() else session.config.device.name


def _done_update(session: Session, model: XferModel, seconds: float) -> tuple:
    m = model.metrics
    status = (f"**Done: validation accuracy {m['accuracy']:.1%}** (best epoch {model.training.get('best_epoch')} "
              f"of {len(model.history)}). The model is saved and ready: see **3 · Evaluate**, try it in "
              "**4 · Predict**, download it in **5 · Share**.")
    loss, acc = views.history_frames(model.history)
    model_values = ModelValues(views.model_markdown(model, session.model_source), skip(), skip(), None,
                               *eval_values(m, model.evaluation))
    return train_update(views.progress_html(1.0, f"Done in {views.format_duration(seconds)} on {trains_on(session)}.",
                                            "done"), status, loss, acc, model_values)


@ui_errors
def on_train(session: Session, backbone: str, strategy_name: str, epochs: float, lr: float, batch_size: float,
             image_size: float, augment: bool, pretrained: bool, max_per_class: float | None,
             preset: str | None = DEFAULT_PRESET) -> Iterator[tuple]:
    """Start a run with the Train tab's settings and stream :func:`train_update` tuples until it ends.

    A Train that joined the queue before this session's last Stop (clicked twice, then Stop) does not start:
    it says so and ends."""
    if queued_at() < session.stopped_at:
        yield train_update(views.progress_html(0.0, "Not started: Stop was pressed after this Train was queued.",
                                               "stopped"),
                           "**Not started:** Stop was pressed after this Train was clicked. Press **Train** again "
                           "to start a new run.")
        return
    run, report = start_run(session, backbone, strategy_name, epochs, lr, batch_size, image_size, augment,
                            pretrained, max_per_class, preset)
    try:
        yield train_update(views.progress_html(0.0, f"Starting on {trains_on(session)}: {report.num_images} "
                                                    "images…"),
                           f"Training {backbone} with the **{strategy_name}** strategy on {report.num_images} images "
                           f"({len(report.classes)} classes), preset *{get_preset(preset).name}*…", None, None)
        history: list[EpochStats] = []
        last, started = 0.0, time.perf_counter()
        for event in run:
            if isinstance(event, Progress):
                now = time.perf_counter()
                if now - last >= PROGRESS_EVERY_S or event.fraction >= 1.0:
                    last = now
                    yield train_update(views.progress_html(event.fraction, views.progress_text(event)))
            elif isinstance(event, EpochStats):
                history.append(event)
                yield train_update(KEEP, KEEP, *views.history_frames(history))
            elif isinstance(event, zerogpu.Allocation):
                yield train_update(KEEP, allocation_text(event, backbone, strategy_name, report))
            elif isinstance(event, Done):
                yield _done_update(session, event.model, time.perf_counter() - started)
            elif isinstance(event, Failed) and event.stopped:
                gr.Warning("Training stopped. The previous model is still used.")
                yield train_update(views.progress_html(run.progress, "Stopped.", "stopped"), stopped_text(session))
            elif isinstance(event, Failed):
                failure = as_gr_error(event.error)
                yield train_update(views.progress_html(run.progress, "Failed.", "failed"),
                                   f"**Training failed:** {failure.message}")
                raise failure
    finally:
        if run.running:  # the visitor left or the page cancelled the run: stop the thread too
            run.stop(wait=False)
        else:
            session.sweep()  # the dataset folders this run read, if they were replaced meanwhile


def allocation_text(a: "zerogpu.Allocation", backbone: str, strategy_name: str, report: DatasetReport) -> str:
    """The status line of a ZeroGPU run as each of its GPU allocations starts."""
    p = a.part
    where = (f"one GPU allocation (up to {p.seconds} s)" if a.count == 1 else
             f"GPU allocation {a.index} of {a.count}: epochs {p.first}–{p.last}, up to {p.seconds} s (a run longer "
             "than one allocation is trained in parts, the state carried between them)")
    return (f"Training {backbone} with the **{strategy_name}** strategy on {report.num_images} images "
            f"({len(report.classes)} classes) on ZeroGPU, {where}…")


def stopped_text(session: Session) -> str:
    keep = ("The previous model is still used for predictions." if session.model is not None
            else "There is no trained model yet.")
    return f"**Training was stopped.** Nothing was saved from that run. {keep}"


def on_stop(session: Session) -> tuple:
    """(status, progress bar): waits for the run to end after its current batch. A Train queued before this
    Stop never starts (see :func:`on_train`)."""
    session.stopped_at = max(session.stopped_at, queued_at())
    run = session.run
    # A run already asked to stop still gets its answer: the click's `cancels` may have closed the training
    # generator (which stops the run) before this handler started.
    if run is None or session.stop_answered is run or not (run.running or run.stopping):
        return "Nothing is training right now.", skip()
    outcome = run.stop(wait=True, timeout=STOP_WAIT_S)
    if outcome is not None:  # ended: a later click has nothing to stop
        session.stop_answered = run
    if isinstance(outcome, Done):
        return "The run had already finished before Stop: its model is used.", skip()
    return stopped_text(session), views.progress_html(run.progress, "Stopped.", "stopped")


# --- layout ---------------------------------------------------------------------------------------


@dataclass
class TrainTab:
    preset: gr.Radio
    preset_md: gr.Markdown
    backbone: gr.Dropdown
    backbone_note: gr.Markdown
    advisor: gr.Markdown
    strategy: gr.Radio
    strategy_md: gr.Markdown
    epochs: gr.Slider
    image_size: gr.Slider
    lr: gr.Number
    batch_size: gr.Number
    max_per_class: gr.Number
    augment: gr.Checkbox
    pretrained: gr.Checkbox
    train_btn: gr.Button
    stop_btn: gr.Button
    progress: gr.HTML
    status: gr.Markdown
    loss_plot: gr.LinePlot
    acc_plot: gr.LinePlot
    next_btn: gr.Button

    @property
    def settings(self) -> list:
        """The inputs of :func:`on_train` after the session, in its order."""
        return [self.backbone, self.strategy, self.epochs, self.lr, self.batch_size, self.image_size, self.augment,
                self.pretrained, self.max_per_class, self.preset]

    @property
    def preset_outputs(self) -> list:
        """What :func:`on_preset` sets, in :class:`PresetValues`' order."""
        return [self.backbone, self.strategy, self.strategy_md, self.epochs, self.image_size, self.lr,
                self.max_per_class, self.preset_md]


def _backbone_choices(default: str) -> list[tuple[str, str]]:
    names = list_backbones()
    if default not in names:
        names.insert(0, default)

    def label(name: str) -> str:
        try:
            return get_backbone(name).title
        except XferError:
            return name

    return [(label(b), b) for b in names]


def _presets(config: AppConfig) -> tuple:
    """The preset radio and what the chosen one sets."""
    name = get_preset(config.defaults.preset).name
    preset = gr.Radio([(f"{p.name} · {p.summary}", p.name) for p in PRESETS.values()], value=name,
                      label="Preset (sets the fields below; change any of them after)", elem_id="preset")
    preset_md = gr.Markdown(preset_markdown(config, name), elem_id="preset-info")
    return preset, preset_md


def _choices(config: AppConfig) -> tuple:
    """The network and strategy column."""
    d = config.defaults
    p = device_preset(config, d.preset, d.backbone)
    backbone = gr.Dropdown(_backbone_choices(d.backbone), value=d.backbone, label="Pretrained network (backbone)",
                           elem_id="backbone")
    backbone_note = gr.Markdown(weights_note(config, d.backbone, d.weights != "none"), elem_id="backbone-note")
    advisor = gr.Markdown(views.recommendation_markdown(None), elem_id="advisor")
    strategy = gr.Radio(views.strategy_choices(), value=p.strategy, label="Strategy", elem_id="strategy")
    strategy_md = gr.Markdown(views.strategy_markdown(p.strategy), elem_id="strategy-explanation")
    return backbone, backbone_note, advisor, strategy, strategy_md


def _settings(config: AppConfig) -> tuple:
    """The settings column: epochs, image size, learning rate, batch size, images per class, augment, weights."""
    d = config.defaults
    p = device_preset(config, d.preset, d.backbone)
    with gr.Accordion("Settings", open=True):
        epochs = gr.Slider(1, EPOCHS_MAX, value=d.epochs or p.epochs, step=1, label="Epochs", elem_id="epochs")
        image_size = gr.Slider(32, 512, value=d.image_size or p.image_size, step=16, label="Image size (pixels)",
                               elem_id="image-size")
        with gr.Row():
            lr = gr.Number(value=views.strategy_lr(p.strategy, _fixed_lr(config, p)), label="Learning rate",
                           minimum=1e-6, elem_id="lr")
            batch_size = gr.Number(value=d.batch_size, label="Batch size", precision=0, minimum=1, maximum=1024,
                                   elem_id="batch-size")
        max_per_class = gr.Number(value=config.max_per_class, precision=0, minimum=0, elem_id="max-per-class",
                                  label="Use at most this many images per class (0 = all)",
                                  info="Lower it for a faster, less accurate first run.")
        with gr.Row():
            augment = gr.Checkbox(value=True, label="Augment (random crops and flips)", elem_id="augment")
            pretrained = gr.Checkbox(value=d.weights != "none", label="Start from ImageNet weights",
                                     elem_id="pretrained")
    return epochs, image_size, lr, batch_size, max_per_class, augment, pretrained


def build(config: AppConfig) -> TrainTab:
    with gr.Tab("2 · Train", id="train", elem_id="tab-train"):
        gr.Markdown(zerogpu.device_markdown(config.device), elem_id="device-info")
        presets = _presets(config)
        with gr.Row():
            with gr.Column(scale=3):
                choices = _choices(config)
            with gr.Column(scale=2):
                settings = _settings(config)
        with gr.Row():
            train_btn = gr.Button("▶ Train", variant="primary", elem_id="train-btn", scale=3)
            stop_btn = gr.Button("■ Stop", variant="stop", elem_id="stop-btn", scale=1)
        progress = gr.HTML(views.progress_html(0.0, "Not started."), elem_id="train-progress")
        status = gr.Markdown("Load a dataset in **1 · Data**, then press **Train**.", elem_id="train-status")
        with gr.Row():
            # Start empty (None), never with an empty frame: Gradio's line plot takes its colour
            # domain from the first data it draws, so the first data must hold both series.
            # The epoch axis is categorical, in epoch order: whole epochs only (views.history_frames).
            epoch_axis = dict(x="epoch", color="series", sort=views.epoch_order(EPOCHS_MAX), height=240)
            loss_plot = gr.LinePlot(None, y="loss", title="Loss (lower is better)", elem_id="loss-plot",
                                    **epoch_axis)
            acc_plot = gr.LinePlot(None, y="accuracy", title="Accuracy (higher is better)", elem_id="acc-plot",
                                   y_lim=[0, 1], **epoch_axis)
        next_btn = gr.Button("Next: 3 · Evaluate →", size="md", elem_id="next-evaluate")
    return TrainTab(*presets, *choices, *settings, train_btn, stop_btn, progress, status, loss_plot, acc_plot, next_btn)


def wire(tab: TrainTab, session: gr.State) -> None:
    """Events inside the tab that need no queue: the strategy's text and learning rate, the weights note."""
    tab.preset.change(on_preset, [session, tab.preset], tab.preset_outputs, queue=False, **PRIVATE)
    tab.strategy.change(on_strategy, [session, tab.strategy], [tab.strategy_md, tab.lr], queue=False, **PRIVATE)
    gr.on([tab.backbone.change, tab.pretrained.change], on_backbone, [session, tab.backbone, tab.pretrained],
          [tab.backbone_note], queue=False, **PRIVATE)
    # Only a backbone the person picks (not one a preset sets): it gets the preset's settings for it.
    tab.backbone.input(on_pick_backbone, [session, tab.backbone, tab.preset],
                       [tab.strategy, tab.strategy_md, tab.epochs, tab.lr], queue=False, **PRIVATE)
