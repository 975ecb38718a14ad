"""The layout of a model folder's ``config.json``, and the checks every loaded one must pass.

Format 2 (written now) is a timm config with xfer's own description under ``"xfer"``::

    {"architecture": "resnet18", "num_classes": 5, "label_names": [...], "model_args": {...},
     "pretrained_cfg": {"input_size": [3, 224, 224], "crop_pct": ..., "mean": ..., ...},
     "xfer": {"format": "xfer-image-classifier", "format_version": 2, "network": {...}, "classes": [...],
              "preprocessing": {...}, "weights_layout": "timm", "training": {...}, "metrics": {...}, ...}}

The timm keys (and ``model.safetensors`` in timm's parameter names, ``weights_layout: "timm"``)
are written only for networks timm builds identically (:mod:`xfer.nets.timm_map`); the others
(``truncate``) have the ``"xfer"`` section alone and weights in xfer's names. Format 1 had the
description's keys at the top level (``architecture`` being the network spec) and xfer's weight
names; it is still read.

:func:`description` turns either layout into the description (format 2's ``"xfer"`` section);
:func:`validate` checks every field against the bounds training uses, so a config.json from a
download or an upload cannot ask for a 100,000 px image or a million-cell confusion matrix.
"""

from __future__ import annotations

import math
from typing import Any

from .data.folders import MAX_CLASS_NAME, class_name_problem
from .errors import ModelError
from .nets.timm_map import TimmArch, crop_pct, timm_arch

FORMAT = "xfer-image-classifier"
FORMAT_VERSION = 2

#: Input sizes training accepts (``xfer.train(image_size=...)``); a loaded model must lie in them too.
IMAGE_SIZE_MIN, IMAGE_SIZE_MAX = 16, 1024
#: Most classes a model may have (training refuses more); bounds the confusion matrix at 1000x1000.
MAX_CLASSES = 1000
MAX_HIDDEN_LAYERS, MAX_HIDDEN_WIDTH = 4, 16384
MAX_HISTORY = 10_000  # epochs recorded in "history"
MAX_CONFIG_BYTES = 16 * 1024**2
#: Interpolations the eval transform (torchvision on tensors) and timm both implement.
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
PRETRAINED_WEIGHTS = ("imagenet", "none", "file")
WEIGHTS_LAYOUTS = ("timm", "xfer")


class _Bad(Exception):
    """A field that fails a check: (field path, what is wrong)."""


def _fail(field: str, problem: str) -> None:
    raise _Bad(field, problem)


def description(cfg: dict[str, Any]) -> dict[str, Any]:
    """xfer's description of a model, from config.json content of either format (not validated).

    Format 2: the ``"xfer"`` section. Format 1: the top-level keys, with ``architecture`` renamed
    ``network``, ``format_version`` 1 and ``weights_layout`` ``"xfer"``. A description is returned as is.
    """
    if isinstance(cfg.get("xfer"), dict):
        return cfg["xfer"]
    if "network" in cfg:  # already a description
        return cfg
    desc = {k: v for k, v in cfg.items() if k not in ("architecture", "id2label", "label2id")}
    desc["network"] = cfg.get("architecture")
    desc["format_version"] = 1
    desc["weights_layout"] = "xfer"
    return desc


def is_xfer_config(cfg: Any) -> bool:
    """True if ``cfg`` (parsed config.json) claims to be an xfer model of any format."""
    if not isinstance(cfg, dict):
        return False
    section = cfg.get("xfer")
    return (isinstance(section, dict) and section.get("format") == FORMAT) or cfg.get("format") == FORMAT


def timm_equivalent(desc: dict[str, Any]) -> TimmArch | None:
    """The timm model a (valid) description's network is, or None when it is xfer-only."""
    from .nets.strategies import STRATEGIES

    net = desc.get("network") or {}
    strategy = STRATEGIES.get(net.get("strategy", ""))
    crop = (desc.get("preprocessing") or {}).get("crop_size", 0)
    return timm_arch(net.get("backbone", ""), strategy is not None and strategy.keep == "all",
                     tuple(net.get("hidden") or ()), int(crop))


def timm_loadable(cfg: dict[str, Any]) -> bool:
    """True if the folder this config (or description) belongs to loads in timm and transformers as it is."""
    return description(cfg).get("weights_layout") == "timm"


def timm_keys(desc: dict[str, Any], arch: TimmArch) -> dict[str, Any]:
    """The top-level keys timm (``create_model("local-dir:..."/"hf-hub:...")``) and transformers' TimmWrapper read."""
    p, net = desc["preprocessing"], desc["network"]
    return {
        "architecture": arch.name,
        "num_classes": len(desc["classes"]),
        "label_names": list(desc["classes"]),
        "model_args": arch.model_args(float(net.get("dropout", 0.2))),
        "pretrained_cfg": {
            "input_size": [3, p["crop_size"], p["crop_size"]],
            "interpolation": p["interpolation"],
            "crop_pct": crop_pct(p["crop_size"], p["resize_size"]),
            "crop_mode": "center",
            "mean": list(p["mean"]),
            "std": list(p["std"]),
            "num_classes": len(desc["classes"]),
            "classifier": arch.classifier,
            "first_conv": arch.first_conv,
            "fixed_input_size": False,
        },
    }


def build_config(desc: dict[str, Any]) -> dict[str, Any]:
    """config.json content (format 2) for a description; sets its ``weights_layout``."""
    arch = timm_equivalent(desc)
    desc = {**desc, "format": FORMAT, "format_version": FORMAT_VERSION,
            "weights_layout": "timm" if arch else "xfer"}
    return {**(timm_keys(desc, arch) if arch else {}), "xfer": desc}


# --- validation --------------------------------------------------------------------------------------------


def _int(field: str, value: Any, lo: int, hi: int, unit: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(field, f"must be a whole number, got {_show(value)}")
    if not lo <= value <= hi:
        _fail(field, f"is {value}{unit}, outside {lo}..{hi}{unit}")
    return value


def _float(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(field, f"must be a finite number, got {_show(value)}")
    return float(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_classes(classes: Any) -> list[str]:
    if not isinstance(classes, list) or not 2 <= len(classes) <= MAX_CLASSES:
        n = len(classes) if isinstance(classes, list) else _show(classes)
        _fail("classes", f"must be a list of 2..{MAX_CLASSES} class names, got {n}")
    for i, c in enumerate(classes):
        problem = class_name_problem(c) if isinstance(c, str) else "it is not a string"
        if problem is not None:
            _fail(f"classes[{i}]", f"must be a non-empty name of a class folder (at most {MAX_CLASS_NAME} bytes), "
                                   f"got {_show(c)}: {problem}")
    if len(set(classes)) != len(classes):
        dup = next(c for i, c in enumerate(classes) if c in classes[:i])
        _fail("classes", f"names {_show(dup)} twice")
    return classes


def _check_network(net: Any, n_classes: int) -> None:
    from .errors import ConfigError
    from .nets.registry import get_backbone
    from .nets.strategies import get_strategy

    if not isinstance(net, dict):
        _fail("network", f"must be an object describing the network, got {_show(net)}")
    for key in ("backbone", "strategy"):
        if not isinstance(net.get(key), str):
            _fail(f"network.{key}", f"is missing or not a name ({_show(net.get(key))})")
    try:
        backbone, strategy = get_backbone(net["backbone"]), get_strategy(net["strategy"])
    except ConfigError as e:
        _fail("network", str(e).rstrip("."))
    if net.get("num_classes") != n_classes:
        _fail("network.num_classes", f"is {_show(net.get('num_classes'))} but there are {n_classes} class names")
    stages = backbone.num_stages
    cut = net.get("cut")
    if strategy.keep == "early":
        _int("network.cut", cut, 1, stages - 1, f" stages of {backbone.name}'s {stages}")
    elif cut is not None:
        _fail("network.cut", f"must be null for the {strategy.name} strategy, got {_show(cut)}")
    hidden = net.get("hidden", [])
    if not isinstance(hidden, list) or len(hidden) > MAX_HIDDEN_LAYERS:
        _fail("network.hidden", f"must be a list of at most {MAX_HIDDEN_LAYERS} layer widths, got {_show(hidden)}")
    for i, h in enumerate(hidden):
        _int(f"network.hidden[{i}]", h, 1, MAX_HIDDEN_WIDTH)
    dropout = _float("network.dropout", net.get("dropout", 0.2))
    if not 0.0 <= dropout < 1.0:
        _fail("network.dropout", f"is {dropout}, outside [0, 1)")
    _int("network.frozen_stages", net.get("frozen_stages", 0), 0, stages - 1)


def _check_preprocessing(p: Any) -> None:
    if not isinstance(p, dict):
        _fail("preprocessing", f"must be an object, got {_show(p)}")
    crop = _int("preprocessing.crop_size", p.get("crop_size"), IMAGE_SIZE_MIN, IMAGE_SIZE_MAX, " px")
    # A model resizes a little above its crop (224 -> 256); twice the crop bounds the decoded image too.
    _int("preprocessing.resize_size", p.get("resize_size"), crop, 2 * crop, " px")
    for key in ("mean", "std"):
        values = p.get(key)
        if not isinstance(values, list) or len(values) != 3:
            _fail(f"preprocessing.{key}", f"must be 3 numbers (one per RGB channel), got {_show(values)}")
        for i, v in enumerate(values):
            v = _float(f"preprocessing.{key}[{i}]", v)
            if key == "std" and not v > 0:
                _fail(f"preprocessing.std[{i}]", f"is {v}; a standard deviation must be positive")
            if abs(v) > 1e3:
                _fail(f"preprocessing.{key}[{i}]", f"is {v}, not a pixel statistic (|value| <= 1000)")
    if p.get("interpolation", "bilinear") not in INTERPOLATIONS:
        _fail("preprocessing.interpolation", f"is {_show(p.get('interpolation'))}; use one of "
                                             f"{', '.join(INTERPOLATIONS)}")


def _check_metrics(m: Any, classes: list[str]) -> None:
    if not isinstance(m, dict):
        _fail("metrics", f"must be an object, got {_show(m)}")
    if "accuracy" in m and m["accuracy"] is not None:
        acc = _float("metrics.accuracy", m["accuracy"])
        if not 0.0 <= acc <= 1.0:
            _fail("metrics.accuracy", f"is {acc}, outside 0..1")
    if "num_images" in m:
        _int("metrics.num_images", m["num_images"], 0, 10**12)
    if "classes" in m and m["classes"] != classes:
        _fail("metrics.classes", "differ from the model's class names")
    per_class = m.get("per_class", {})
    if not isinstance(per_class, dict) or not set(per_class) <= set(classes):
        _fail("metrics.per_class", "must map the model's class names to their metrics")
    for c, values in per_class.items():
        if not isinstance(values, dict):
            _fail(f"metrics.per_class[{_show(c)}]", "must be an object of numbers")
        for k, v in values.items():
            _float(f"metrics.per_class[{_show(c)}].{k}", v)
    cm = m.get("confusion_matrix")
    if cm is not None and cm != []:
        n = len(classes)
        if not isinstance(cm, list) or len(cm) != n or any(not isinstance(r, list) or len(r) != n for r in cm):
            _fail("metrics.confusion_matrix", f"must be {n}x{n} (one row and column per class)")
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for r in cm for v in r):
            _fail("metrics.confusion_matrix", "must hold counts (whole numbers >= 0)")


def _check_timm_keys(cfg: dict[str, Any], desc: dict[str, Any]) -> None:
    """A format-2 config's timm keys must say exactly what the description says (timm reads only those)."""
    arch = timm_equivalent(desc)
    layout = desc.get("weights_layout")
    if layout not in WEIGHTS_LAYOUTS:
        _fail("!xfer.weights_layout", f"is {_show(layout)}; expected one of {', '.join(WEIGHTS_LAYOUTS)}")
    if layout == "xfer":
        stray = [k for k in ("architecture", "pretrained_cfg") if k in cfg]
        if stray:
            _fail("!" + stray[0], "is set but the weights are in xfer's names (weights_layout \"xfer\"), which timm "
                            "cannot load")
        return
    if arch is None:
        _fail("!xfer.weights_layout", "is \"timm\" but this network has no timm equivalent")
    expected = timm_keys(desc, arch)
    for key in ("architecture", "num_classes", "label_names"):
        if cfg.get(key) != expected[key]:
            _fail("!" + key, f"is {_show(cfg.get(key))} but the xfer section says {_show(expected[key])}")
    pc = cfg.get("pretrained_cfg")
    if not isinstance(pc, dict):
        _fail("!pretrained_cfg", "is missing: timm and transformers need it")
    want = expected["pretrained_cfg"]
    for key in ("input_size", "interpolation", "crop_mode", "mean", "std", "classifier"):
        if pc.get(key) != want[key]:
            _fail(f"!pretrained_cfg.{key}", f"is {_show(pc.get(key))} but the xfer section implies {_show(want[key])}")
    pct, p = pc.get("crop_pct"), desc["preprocessing"]
    if (not isinstance(pct, (int, float)) or isinstance(pct, bool) or not 0 < pct <= 1
            or math.floor(p["crop_size"] / pct) != p["resize_size"]):
        _fail("!pretrained_cfg.crop_pct", f"is {_show(pct)}, which does not resize to {p['resize_size']} px as the "
                                         "xfer section says")
    if pc.get("num_classes", len(desc["classes"])) != len(desc["classes"]):
        _fail("!pretrained_cfg.num_classes", f"is {_show(pc.get('num_classes'))}, not {len(desc['classes'])}")


def _check_records(desc: dict[str, Any]) -> None:
    """The free-form records (training arguments, dataset, recommendation, history) have the right shape."""
    for key in ("training", "dataset"):
        if not isinstance(desc.get(key, {}), dict):
            _fail(key, "must be an object")
    if desc.get("recommendation") is not None and not isinstance(desc["recommendation"], dict):
        _fail("recommendation", "must be an object or null")
    history = desc.get("history", [])
    if not isinstance(history, list) or len(history) > MAX_HISTORY or any(not isinstance(h, dict) for h in history):
        _fail("history", f"must be a list of at most {MAX_HISTORY} epoch records")


def validate(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """Check parsed config.json content (either format) field by field; returns its description.

    Raises :class:`ModelError` with one line naming the field, for anything training could not
    have written: an unknown format, backbone, strategy or interpolation; an image size outside
    training's range; mean/std that are not 3 finite numbers (std > 0); class names that are not
    2..1000 distinct non-empty strings; dropout outside [0, 1); metrics whose confusion matrix is
    not classes x classes; timm keys that disagree with the xfer section.
    """
    if not is_xfer_config(cfg):
        raise ModelError(f"{where} is not an xfer model config (no \"format\": \"{FORMAT}\").")
    desc = description(cfg)
    version = desc.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelError(f"{where}: format_version {_show(version)} is not a format version: the file is damaged.")
    if version > FORMAT_VERSION:
        raise ModelError(f"{where} was saved by a newer xfer (format {version}): upgrade xfer.")
    if version == 2 and not isinstance(cfg.get("xfer"), dict):
        raise ModelError(f"{where}: format 2 keeps xfer's description under \"xfer\", which is missing.")
    try:
        classes = _check_classes(desc.get("classes"))
        _check_network(desc.get("network"), len(classes))
        net = desc["network"]
        for key in ("backbone", "strategy"):
            if key in desc and desc[key] != net[key]:
                _fail(key, f"is {_show(desc[key])} but network.{key} is {_show(net[key])}")
        if "num_classes" in desc and desc["num_classes"] != len(classes):
            _fail("num_classes", f"is {_show(desc['num_classes'])} but there are {len(classes)} class names")
        _check_preprocessing(desc.get("preprocessing"))
        if "image_size" in desc and desc["image_size"] != desc["preprocessing"]["crop_size"]:
            _fail("image_size", f"is {_show(desc['image_size'])} but preprocessing.crop_size is "
                                f"{desc['preprocessing']['crop_size']}")
        if desc.get("pretrained_weights", "none") not in PRETRAINED_WEIGHTS:
            _fail("pretrained_weights", f"is {_show(desc.get('pretrained_weights'))}; expected one of "
                                        f"{', '.join(PRETRAINED_WEIGHTS)}")
        _check_metrics(desc.get("metrics", {}), classes)
        _check_records(desc)
        if version >= 2:
            _check_timm_keys(cfg, desc)
        elif desc["weights_layout"] != "xfer":
            _fail("weights_layout", "must be \"xfer\" in format 1")
    except _Bad as bad:
        field, problem = bad.args
        # "!" marks a top-level (timm) key; the others live in format 2's "xfer" section.
        field = field[1:] if field.startswith("!") else ("xfer." if version >= 2 else "") + field
        raise ModelError(f"{where}: {field} {problem}. The file is damaged or was not written by xfer: "
                         "save or download the model again.") from None
    return desc


__all__ = ["FORMAT", "FORMAT_VERSION", "IMAGE_SIZE_MAX", "IMAGE_SIZE_MIN", "INTERPOLATIONS", "MAX_CLASSES",
           "build_config", "description", "is_xfer_config", "timm_equivalent", "timm_keys", "timm_loadable",
           "validate"]
