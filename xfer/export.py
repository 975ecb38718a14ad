"""Export a saved model to ONNX, for runtimes without PyTorch (onnxruntime, ONNX.js, TensorRT, ...).

The file is one self-contained ONNX model (no external data file) made by torch's dynamo
exporter, with a dynamic batch dimension: input ``pixel_values`` (N, 3, S, S), float32,
already resized, centre-cropped and normalised as the metadata says; outputs ``logits`` and
``probabilities`` (softmax), both (N, classes). Its ``metadata_props`` carry everything a
runtime needs besides the graph: ``xfer_classes`` (JSON list, in output order) and
``xfer_preprocessing`` (JSON: crop_size, resize_size, mean, std, interpolation), plus the
backbone, strategy and xfer version. After export the file is run with onnxruntime (when
installed) on a random batch and compared with PyTorch; a mismatch is refused.

Needs the ``onnx`` extra: ``onnx``, ``onnxscript`` (and ``onnxruntime`` for the check).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .errors import ConfigError, ModelError
from .model import XferModel, load_model

log = logging.getLogger(__name__)

FORMATS = ("onnx",)
ONNX_NAME = "model.onnx"
INPUT_NAME, OUTPUT_NAMES = "pixel_values", ("logits", "probabilities")
MAX_BATCH = 4096  # the dynamic batch dimension's upper bound (torch.export wants one; any real batch fits)
#: onnxruntime vs PyTorch on the check batch: float32 kernels differ in summation order, not more.
CHECK_ATOL = 1e-4


class _WithProbabilities(nn.Module):
    """The classifier, returning its logits and their softmax."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(pixel_values)
        return logits, logits.softmax(-1)


def metadata(model: XferModel) -> dict[str, str]:
    """The ONNX file's ``metadata_props``: class names and preprocessing, as JSON strings."""
    p = model.preprocessing
    return {
        "xfer_classes": json.dumps(list(model.classes), ensure_ascii=False),
        "xfer_preprocessing": json.dumps({"crop_size": p.crop_size, "resize_size": p.resize_size,
                                          "mean": list(p.mean), "std": list(p.std),
                                          "interpolation": p.interpolation}),
        "xfer_backbone": model.backbone,
        "xfer_strategy": model.strategy,
        "xfer_version": __version__,
        "xfer_input": f"{INPUT_NAME}: float32 (N, 3, {p.crop_size}, {p.crop_size}), RGB in [0, 1] after resizing the "
                      f"shorter side to {p.resize_size} px ({p.interpolation}) and a centre crop, then "
                      "(x - mean) / std per channel",
        "xfer_outputs": "logits, probabilities: (N, classes), classes in the order of xfer_classes",
    }


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"ONNX export needs the onnx and onnxscript packages ({e.name} is missing): "
                          "pip install 'xfer[onnx]' (in a checkout: pip install -e '.[onnx]').") from None


def export_onnx(model: XferModel | str | os.PathLike, out: str | os.PathLike, check: bool = True) -> Path:
    """Write ``model`` (an :class:`XferModel` or a saved folder) to ``out`` as one ONNX file; returns its path.

    ``out`` must end in ``.onnx``; an existing file there is replaced atomically (a failed export
    leaves it as it was). ``check`` runs the file with onnxruntime, if installed, and raises
    :class:`ModelError` if its outputs differ from PyTorch's by more than 1e-4.
    """
    out = Path(out).expanduser()
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"{out.name}: an ONNX file's name must end in .onnx.")
    if out.is_dir():
        raise ConfigError(f"{out} is a folder: give the ONNX file to write, e.g. {out / ONNX_NAME}.")
    if not out.parent.is_dir():
        raise ConfigError(f"{out.parent} does not exist: create it first.")
    _require_onnx()
    if not isinstance(model, XferModel):
        model = load_model(model)
    size = model.image_size
    wrapped = _WithProbabilities(model.net).to("cpu").eval()
    example = torch.rand(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with torch.no_grad():
            program = torch.onnx.export(wrapped, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=list(OUTPUT_NAMES),
                                        dynamic_shapes={"pixel_values": {0: batch}}, verbose=False)
        program.model.metadata_props.update(metadata(model))
        program.model.doc_string = (f"xfer image classifier: {model.backbone} ({model.strategy}), "
                                    f"{len(model.classes)} classes")
        program.save(str(tmp), external_data=False)
        if check:
            _check(tmp, wrapped, size)
        os.replace(tmp, out)
    except (ModelError, ConfigError):
        raise
    except Exception as e:  # the exporter's own errors are long and internal: one line, the cause logged
        log.debug("ONNX export failed", exc_info=True)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelError(f"ONNX export of {model.backbone} ({model.strategy}) failed: {first}") from None
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported %s (%s) to %s", model.backbone, model.strategy, out)
    return out


def _check(path: Path, wrapped: nn.Module, size: int) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        log.warning("onnxruntime is not installed: %s was not checked against PyTorch", path.name)
        return
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0))  # not the export's batch size
    with torch.no_grad():
        expected = [t.numpy() for t in wrapped(x)]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()})
    worst = max(float(abs(g - e).max()) for g, e in zip(got, expected, strict=True))
    if not worst <= CHECK_ATOL:
        raise ModelError(f"the exported ONNX model's outputs differ from PyTorch's by {worst:.2g} "
                         f"(more than {CHECK_ATOL}): it was not written.")


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The xfer metadata of an exported ONNX file: classes (list), preprocessing (dict) and the other fields."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    return {k: json.loads(v) if k in ("xfer_classes", "xfer_preprocessing") else v for k, v in props.items()}


__all__ = ["FORMATS", "ONNX_NAME", "export_onnx", "metadata", "read_metadata"]
