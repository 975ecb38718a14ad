"""Hugging Face Spaces: where the app runs (CPU, ZeroGPU, a dedicated GPU) and the ZeroGPU glue.

On a ZeroGPU Space (``spaces.config.Config.zero_gpu``: ``SPACES_ZERO_GPU=true``) CUDA exists only
inside functions decorated with ``@spaces.GPU``, and each call runs in a forked worker process: its
arguments and results are pickled across, so the functions here take and return plain values (a
dataset report, a model, settings), never the visitor's :class:`~xfer.studio.session.Session`. The
app itself keeps every model on the CPU there; each function moves its own copy to the GPU. The
worker is a daemonic process, which may not start DataLoader workers: the device is chosen inside
with ``num_workers=0``. Training asks for a GPU per part of whole epochs
(:func:`xfer.allocation.plan_parts`), the state carried on disk between parts, and stops through
the generator's close (the worker's stop event), not only the parent's flag.

Everywhere else ``spaces.GPU`` returns the function itself (and without the ``spaces`` package the
decorator here does the same): nothing changes, the functions run in-process on the app's device.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from ..allocation import Part, inference_seconds
from ..api import evaluate as run_evaluate, predict as run_predict, train_part
from ..device import DeviceInfo, select_device
from ..engine import EpochStats, FitState, Progress, load_fit_state, save_fit_state
from ..errors import Cancelled
from ..model import XferModel, load_model, save_model
from ..run import STOPPED_MESSAGE, Done, Failed, TrainingRun

log = logging.getLogger(__name__)

STOP_WAIT_S = 120  # how long a closed GPU part waits for its current batch before giving the GPU back


def enabled() -> bool:
    """Whether this is a ZeroGPU Space, the way the ``spaces`` package decides it."""
    try:
        from spaces.config import Config
    except ImportError:  # not installed: not ZeroGPU (the package is what makes CUDA appear there)
        return False
    return bool(Config.zero_gpu)


def on_space() -> bool:
    """Whether the app runs on a Hugging Face Space (as Gradio decides it for its OAuth: SYSTEM and SPACE_ID)."""
    return os.environ.get("SYSTEM") == "spaces" and bool(os.environ.get("SPACE_ID"))


def sign_in_available() -> bool:
    """On a Space whose header asks for OAuth (``hf_oauth: true``: the Space then sets ``OAUTH_CLIENT_ID``).
    Without it Gradio refuses to build a page with a login button there."""
    return on_space() and bool(os.environ.get("OAUTH_CLIENT_ID"))


def gpu(duration: int | Callable[..., int]) -> Callable[[Callable], Callable]:
    """``@spaces.GPU(duration=...)`` (a no-op off ZeroGPU, by the package's design); the identity without it."""
    try:
        import spaces
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


def _inside(device: DeviceInfo | None) -> DeviceInfo:
    # None: chosen here, in the ZeroGPU worker, where CUDA is real; no loader workers in a daemonic process.
    return device if device is not None else select_device("auto", num_workers=0)


def device_markdown(device: DeviceInfo) -> str:
    """The Train tab's line on the hardware: which device trains, and on a CPU Space what a GPU would change."""
    if enabled():
        return ("Training runs on **ZeroGPU**: an NVIDIA H200 slice lent to each run for a stated time. A longer "
                "run is trained in several GPU allocations, one after the other, and says so. Each visitor has a "
                "daily GPU quota (more when signed in with Hugging Face).")
    line = f"Training runs on **{device.name}**."
    if device.type == "cpu" and on_space():
        line += (" This Space has no GPU: `head` trains in minutes on the capped images, `finetune` and `scratch` "
                 "are slow. On a GPU (ZeroGPU or a dedicated one) a `finetune` epoch takes seconds, so every "
                 "image and the more accurate strategies become practical.")
    return line


# --- training in parts -----------------------------------------------------------------------------------


@dataclass
class Allocation:
    """A training event: part ``index`` of ``count`` (its epochs and the GPU seconds asked for) starts."""

    index: int
    count: int
    part: Part


@dataclass
class _Paused:
    state_path: str


@dataclass
class _Finished:
    model_dir: str
    evaluation: Any


@dataclass
class _PartFailed:
    error: BaseException


def _part_seconds(report, settings: dict, resume_path: str | None, part: Part, out_dir: str,
                  device: DeviceInfo | None) -> int:
    return part.seconds


@gpu(duration=_part_seconds)
def train_part_on_gpu(report, settings: dict, resume_path: str | None, part: Part, out_dir: str,
                      device: DeviceInfo | None) -> Iterator[Any]:
    """Train epochs up to ``part.last`` (from the state file ``resume_path``, else from the start) with
    :func:`xfer.api.train_part`'s ``settings``; yields its Progress and EpochStats, then where to go on
    from: a state file in ``out_dir``, or the finished model saved there (and its evaluation). Errors are
    yielded, not raised: across the ZeroGPU worker only a ``gr.Error`` keeps its message."""
    device = _inside(device)
    resume = load_fit_state(resume_path) if resume_path else None
    # torch.compile stays off: ZeroGPU does not support it, and one part would not pay its compile time.
    settings = {**settings, "config": replace(settings["config"], compile=False)}
    run = TrainingRun(functools.partial(train_part, report, resume=resume, stop_after=part.last, device=device,
                                        **settings), name="xfer-gpu-part")
    try:
        for event in run:
            if isinstance(event, Done):
                try:
                    if isinstance(event.model, FitState):
                        result: Any = _Paused(str(save_fit_state(event.model, Path(out_dir) / f"state-{part.last}.pt")))
                    else:
                        model = event.model.to("cpu")
                        result = _Finished(str(save_model(model, Path(out_dir) / "model")), model.evaluation)
                except Exception as e:  # a full disk, say: its message, not the worker's bare "RuntimeError"
                    result = _PartFailed(e)
                yield result
            elif isinstance(event, Failed):
                yield _PartFailed(event.error)
            else:
                yield event
    finally:  # closed (Stop, a visitor who left): end the run before the GPU goes back
        if run.running:
            run.stop(wait=True, timeout=STOP_WAIT_S)


def training_job(report, settings: dict, parts: list[Part], workdir: Path,
                 device: DeviceInfo | None = None) -> Callable[..., XferModel]:
    """A :class:`~xfer.run.TrainingRun` job that trains ``parts`` one GPU allocation after the other.

    Call it in the Gradio handler: the request's context (the visitor, for ZeroGPU's quota) is
    captured here and the job runs in it. The job reports an :class:`Allocation` before each part,
    the parts' events with the fraction and ETA of the whole run, and checks ``cancel`` after every
    event: a Stop closes the part's generator, which ends the run in the worker too. ``workdir``
    holds the state between parts and is removed at the end.
    """
    context = contextvars.copy_context()
    epochs = parts[-1].last

    def run_parts(callback: Callable[[object], None], cancel) -> XferModel:
        resume, started = None, time.perf_counter()
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            for i, part in enumerate(parts, 1):
                if cancel.is_set():
                    raise Cancelled(STOPPED_MESSAGE)
                callback(Allocation(i, len(parts), part))
                outcome = _one_part(report, settings, resume, part, workdir, device, epochs, started, callback,
                                    cancel)
                if isinstance(outcome, _Finished):  # the last part, or patience ended the run early
                    model = load_model(outcome.model_dir)
                    model.evaluation = outcome.evaluation
                    return model
                resume = outcome.state_path
            raise RuntimeError("the last training part returned no model")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def job(callback: Callable[[object], None], cancel) -> XferModel:
        return context.run(run_parts, callback, cancel)

    return job


def _one_part(report, settings, resume, part: Part, workdir: Path, device, epochs: int, started: float,
              callback, cancel) -> _Paused | _Finished:
    gen = train_part_on_gpu(report, settings, resume, part, str(workdir), device)
    try:
        for item in gen:
            if isinstance(item, Progress):
                fraction = (part.first - 1 + item.fraction * part.epochs) / epochs
                elapsed = time.perf_counter() - started
                eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
                callback(replace(item, fraction=fraction, eta_s=eta))
            elif isinstance(item, EpochStats):
                callback(item)
            elif isinstance(item, _PartFailed):
                raise item.error
            elif isinstance(item, (_Paused, _Finished)):
                return item
            if cancel.is_set():
                raise Cancelled(STOPPED_MESSAGE)
        raise RuntimeError("a training part ended without a result")
    finally:
        gen.close()  # on ZeroGPU: sets the worker's stop event, and the part's generator is closed there


# --- evaluation, prediction, Grad-CAM ---------------------------------------------------------------------


def _size(model: XferModel) -> int:
    return model.preprocessing.crop_size


@gpu(duration=lambda model, data, device: inference_seconds(len(data.items), _size(model)))
def evaluate_on_gpu(model: XferModel, data, device: DeviceInfo | None):
    """:func:`xfer.evaluate` of ``model`` on the report ``data`` (on the GPU on ZeroGPU)."""
    return run_evaluate(model, data, device=_inside(device))


@gpu(duration=lambda model, image, k, device: inference_seconds(1, _size(model)))
def predict_on_gpu(model: XferModel, image: Any, k: int, device: DeviceInfo | None) -> dict[str, float]:
    """The top-``k`` classes of one image; ``device`` None: move the model to the worker's device first."""
    if device is None:
        model.to(_inside(None).device)
    return run_predict(model, [image], k=k)[0]


@gpu(duration=lambda model, image, device: inference_seconds(1, _size(model), backward=True))
def gradcam_on_gpu(model: XferModel, image: Any, device: DeviceInfo | None):
    """:func:`xfer.explain.gradcam` of one image (the heat map as a PIL image)."""
    from ..explain import (
        gradcam,  # only when asked: it is the one module that needs more than torch
    )

    if device is None:
        model.to(_inside(None).device)
    return gradcam(model, image)


def space_storage() -> None:
    """On a Space with persistent storage (``/data``), keep downloaded ImageNet weights there (``TORCH_HOME``,
    when not set): they survive restarts. Visitors' sessions stay on the ephemeral disk (``~/.cache/xfer``),
    which is wiped with the Space; a session folder under ``/data`` would outlive it, so that is warned of."""
    if not on_space():
        return
    data = Path("/data")
    if "TORCH_HOME" not in os.environ and data.is_dir() and os.access(data, os.W_OK):
        os.environ["TORCH_HOME"] = str(data / "torch")
        log.info("ImageNet weights are kept in %s (persistent storage)", os.environ["TORCH_HOME"])
    from ..data import cache_dir

    if str(cache_dir().resolve()).startswith(str(data) + os.sep):
        log.warning("XFER_CACHE_DIR is on the persistent disk: visitors' uploads would outlive the Space")


def prefetch_weights(backbone: str) -> None:
    """On a Space, download ``backbone``'s ImageNet weights in the background at start-up (hash-checked by
    torchvision), so that the first visitor's *Train* does not wait for them. VGG-16's weights are not on the
    Hub (``preload_from_hub`` cannot fetch them; see the README's Space section)."""
    import threading

    from ..nets.registry import imagenet_state_dict, pretrained_available

    try:
        if pretrained_available(backbone):
            return
    except Exception:  # an unknown name: nothing to fetch
        return

    def fetch() -> None:
        try:
            imagenet_state_dict(backbone)
            log.info("prefetched %s's ImageNet weights", backbone)
        except Exception as e:  # the first Train downloads them (or says why it cannot)
            log.warning("could not prefetch %s's weights: %s", backbone, e)

    threading.Thread(target=fetch, name="xfer-prefetch", daemon=True).start()


def placement(device: DeviceInfo) -> DeviceInfo | None:
    """The ``device`` argument for the functions above: None on ZeroGPU (chosen in the worker), else ``device``."""
    return None if enabled() else device
