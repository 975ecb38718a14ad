"""A trained model: the network plus everything needed to use it, and its folder on disk.

The folder holds ``model.safetensors``, ``config.json`` and a ``README.md`` model card.
``config.json`` is a timm config (for networks timm builds identically, whose weights are
then saved in timm's names) with xfer's own description (network, class names,
preprocessing, training arguments, metrics) under ``"xfer"``: see :mod:`xfer.modelconfig`.
Loading rebuilds the network from ``config.json`` alone, after checking every field, and
never unpickles. Folders of the previous format (1) load too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from . import __version__
from .data.transforms import Preprocessing
from .errors import ModelError, XferError
from .modelconfig import FORMAT, FORMAT_VERSION, MAX_CONFIG_BYTES, build_config, description, timm_equivalent, validate
from .nets.strategies import Classifier, NetworkSpec, build_network
from .outputs import check_output_folder

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"  # read only with torch.load(weights_only=True)


@dataclass
class XferModel:
    """A network with its class names, preprocessing and provenance."""

    net: Classifier
    spec: NetworkSpec
    classes: list[str]
    preprocessing: Preprocessing
    weights: str = "none"  # what the body started from: "imagenet", "none" or "file"
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    dataset: dict[str, Any] = field(default_factory=dict)
    recommendation: dict[str, Any] | None = None
    evaluation: Any = field(default=None, repr=False, compare=False)  # EvalReport of the last validation; not saved

    @property
    def backbone(self) -> str:
        return self.spec.backbone

    @property
    def strategy(self) -> str:
        return self.spec.strategy

    @property
    def image_size(self) -> int:
        return self.preprocessing.crop_size

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: torch.device | str) -> "XferModel":
        self.net.to(device)
        return self

    def description(self) -> dict[str, Any]:
        """xfer's description of the model: the ``"xfer"`` section of config.json."""
        p = self.preprocessing
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "xfer_version": __version__,
            "network": self.spec.to_dict(),
            "backbone": self.spec.backbone,
            "strategy": self.spec.strategy,
            "num_classes": len(self.classes),
            "classes": list(self.classes),
            "image_size": p.crop_size,
            "preprocessing": {"crop_size": p.crop_size, "resize_size": p.resize_size, "mean": list(p.mean),
                              "std": list(p.std), "interpolation": p.interpolation},
            "pretrained_weights": self.weights,
            "training": self.training,
            "metrics": self.metrics,
            "history": self.history,
            "dataset": self.dataset,
            "recommendation": self.recommendation,
        }

    def config(self) -> dict[str, Any]:
        """The content of config.json (format 2: timm's keys where timm can load it, and ``"xfer"``)."""
        return build_config(self.description())

    @property
    def timm_loadable(self) -> bool:
        """True if the saved folder loads in timm and transformers (see :mod:`xfer.nets.timm_map`)."""
        return timm_equivalent(self.description()) is not None

    @classmethod
    def from_config(cls, cfg: dict[str, Any], net: Classifier) -> "XferModel":
        """The model described by config.json content (either format) or a description, around ``net``."""
        d = description(cfg)
        p = d["preprocessing"]
        return cls(
            net=net,
            spec=NetworkSpec.from_dict(d["network"]),
            classes=list(d["classes"]),
            preprocessing=Preprocessing(int(p["crop_size"]), int(p["resize_size"]), tuple(p["mean"]),
                                        tuple(p["std"]), p.get("interpolation", "bilinear")),
            weights=d.get("pretrained_weights", "none"),
            training=d.get("training", {}),
            metrics=d.get("metrics", {}),
            history=d.get("history", []),
            dataset=d.get("dataset", {}),
            recommendation=d.get("recommendation"),
        )


def to_file_layout(state: dict[str, torch.Tensor], desc: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's state dict under the names ``model.safetensors`` uses for this description."""
    arch = timm_equivalent(desc) if desc.get("weights_layout") == "timm" else None
    return arch.to_timm(state) if arch else state


def from_file_layout(state: dict[str, torch.Tensor], desc: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A ``model.safetensors`` state dict under xfer's names (timm's renamed back when the folder has them).

    Raises ValueError when the tensors cannot be the timm network the description names.
    """
    if desc.get("weights_layout") != "timm":
        return state
    arch = timm_equivalent(desc)
    try:
        return arch.from_timm(state)
    except (KeyError, RuntimeError) as e:  # a stray name; a tensor that cannot take the layer's shape
        raise ValueError(f"they are not the timm {arch.name} it names ({str(e)[:150]})") from None


def expected_weight_shapes(desc: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Names and shapes ``model.safetensors`` must hold for a (validated) description.

    The network is built on the meta device: no memory, no initialisation, even for VGG-16.
    """
    spec = NetworkSpec.from_dict(desc["network"])
    with torch.device("meta"):
        state = build_network(spec, weights=None).state_dict()
        return {k: tuple(v.shape) for k, v in to_file_layout(state, desc).items()}


def _write_files(model: XferModel, folder: Path) -> None:
    from safetensors.torch import save_file

    from .card import render_card_from_config  # here, not at the top: it imports huggingface_hub

    config = model.config()
    state = to_file_layout(model.net.state_dict(), config["xfer"])
    save_file(_tensors_to_write(state), str(folder / WEIGHTS_NAME), metadata={"format": "pt", "xfer": FORMAT})
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / CARD_NAME).write_text(render_card_from_config(config), encoding="utf-8")


def _tensors_to_write(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict as safetensors writes it straight from memory: on the CPU, contiguous
    (channels_last weights are repacked) and sharing no storage; only tensors that are not so
    already are copied (a copy of every tensor was 537 MB more memory and time for VGG-16)."""
    out, seen = {}, set()
    for k, v in state.items():
        v = v.detach().to("cpu").contiguous()
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen and v.numel():  # safetensors refuses tensors that share memory
            v = v.clone()
        seen.add(ptr)
        out[k] = v
    return out


def _recover_interrupted_save(out: Path) -> None:
    """Put the previous model back if a save was killed between its two renames.

    In that instant ``out`` does not exist and the last good model sits in ``.<name>.old-*/model``.
    """
    if out.exists() or not out.parent.is_dir():
        return
    try:
        candidates = sorted(((p.stat().st_mtime, p) for p in out.parent.glob(f".{out.name}.old-*/model")
                             if (p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file()), reverse=True)
        if candidates:
            old = candidates[0][1]
            os.replace(old, out)
            shutil.rmtree(old.parent, ignore_errors=True)
            log.warning("restored %s: the save that was replacing it had been interrupted", out)
    except OSError:  # raced with another process saving or restoring it: leave it to that one
        return


STALE_SAVE_SECONDS = 3600  # a temporary save folder this old belongs to a save that was killed


def _remove_stale_temporaries(out: Path) -> None:
    """Delete ``.<name>.tmp-*`` / ``.<name>.old-*`` siblings left by saves killed long ago."""
    now = time.time()
    for p in list(out.parent.glob(f".{out.name}.tmp-*")) + list(out.parent.glob(f".{out.name}.old-*")):
        try:
            if now - p.stat().st_mtime > STALE_SAVE_SECONDS:
                shutil.rmtree(p, ignore_errors=True)
                log.info("removed %s, left by an interrupted save", p)
        except OSError:
            continue


def write_model_folder(out_dir: str | os.PathLike, write: Callable[[Path], None],
                       protect: Sequence[str | os.PathLike] = ()) -> Path:
    """Fill a model folder atomically: a failure or a kill leaves any previous model intact.

    ``write(tmp)`` writes the files into a temporary sibling folder, which then replaces
    ``out_dir`` with two renames; the old folder is deleted only after the new one is in
    place (and put back by the next save or load if a kill fell between the renames).
    Only a new or empty folder or exactly an xfer model folder is replaced, and never one
    that overlaps a path in ``protect`` (:func:`xfer.outputs.check_output_folder`).
    """
    out = Path(out_dir).expanduser().resolve()
    _recover_interrupted_save(out)
    check_output_folder(out, protect)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out)  # after recovery, which may need an .old-* folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a model folder is an ordinary folder
    try:
        write(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "model")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def save_model(model: XferModel, out_dir: str | os.PathLike, protect: Sequence[str | os.PathLike] = ()) -> Path:
    """Save ``model`` as a folder (model.safetensors, config.json, README.md), atomically.

    ``out_dir`` must be new, empty or an xfer model folder, outside every path in ``protect``
    (see :func:`xfer.outputs.check_output_folder`); anything else is a :class:`ConfigError`.
    """
    out = write_model_folder(out_dir, lambda tmp: _write_files(model, tmp), protect)
    log.info("saved model to %s", out)
    return out


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """Read a model folder's config.json, check every field, and return xfer's description of the model.

    The description is format 2's ``"xfer"`` section (a format-1 file's keys, converted: see
    :func:`xfer.modelconfig.description`). Raises :class:`ModelError` with one line naming the
    field that is missing, out of bounds or inconsistent (:func:`xfer.modelconfig.validate`).
    """
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise ModelError(f"{folder} is not a folder: give the folder that `xfer train --out` wrote.")
    if not path.is_file():
        raise ModelError(f"{folder} has no {CONFIG_NAME}: it is not an xfer model folder.")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelError(f"{path} is larger than {MAX_CONFIG_BYTES // 1024**2} MB: it is not an xfer model config.")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ModelError(f"{path} is not valid JSON ({str(e)[:200]}).") from None
    return validate(cfg, str(path))


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    st = folder / WEIGHTS_NAME
    if st.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(st))
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelError(f"{st} is damaged ({e}): save or download the model again.") from None
    legacy = folder / LEGACY_WEIGHTS_NAME
    if legacy.is_file():
        try:  # weights_only: tensors and plain containers only; no code can run.
            with warnings.catch_warnings():  # torch's remarks about the pickle would spoil the one-line error
                warnings.simplefilter("ignore")
                return torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelError(f"{legacy} could not be read safely ({type(e).__name__}): it is refused.") from None
    raise ModelError(f"{folder} has no {WEIGHTS_NAME}: the model folder is incomplete.")


def load_model(folder: str | os.PathLike, device: torch.device | str = "cpu") -> XferModel:
    """Rebuild a saved model from its folder (config.json + model.safetensors)."""
    folder = Path(folder).expanduser()
    _recover_interrupted_save(folder.absolute())
    desc = read_config(folder)
    spec = NetworkSpec.from_dict(desc["network"])
    state = _read_weights(folder)
    try:
        state = from_file_layout(state, desc)
    except ValueError as e:
        raise ModelError(f"The weights in {folder} do not match its config.json: {e}.") from None
    # Build on the meta device: no time is spent initialising weights that are replaced anyway.
    with torch.device("meta"):
        net = build_network(spec, weights=None)
    try:
        # clone(): fresh, aligned storage; tensors viewing into the file's buffer can take other
        # kernel paths and give last-bit differences from the model that was saved.
        net.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelError(
            f"The weights in {folder} do not match its config.json ({spec.backbone}, {spec.strategy}, "
            f"{spec.num_classes} classes): {_first_mismatch(str(e))}."
        ) from None
    if any(p.is_meta for p in net.parameters()) or any(b.is_meta for b in net.buffers()):
        raise ModelError(f"The weights in {folder} are incomplete for {spec.backbone}.")
    net.to(device).eval()
    return XferModel.from_config(desc, net)


def _first_mismatch(message: str) -> str:
    for line in message.splitlines():
        line = line.strip()
        if line.startswith(("size mismatch", "Missing key", "Unexpected key")):
            return line[:200]
    return message.strip().splitlines()[0][:200] if message.strip() else "mismatch"


__all__ = ["XferModel", "expected_weight_shapes", "save_model", "load_model", "read_config", "XferError"]
