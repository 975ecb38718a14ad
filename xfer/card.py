"""The model card (README.md) saved next to a model and pushed with it to the Hugging Face Hub.

The card is a :class:`huggingface_hub.ModelCard`: YAML metadata (library, task, tags,
base model, dataset, metrics and a ``model-index`` with the validation accuracy) and a
Markdown body (classes, strategy and why, training arguments, per-class metrics,
confusion matrix, how to use it). It is built from ``config.json`` alone, entirely
offline: the card is never validated against the Hub.

A folder that timm loads as it is (:func:`xfer.modelconfig.timm_loadable`) is carded as
``library_name: timm`` with an ``xfer`` tag, and its card shows how to use it from timm and
from transformers too; an xfer-only one (``truncate``) says that only xfer loads it.
"""

from __future__ import annotations

import math
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .modelconfig import description, timm_loadable
from .nets.strategies import STRATEGIES

#: The Hub repo holding the very ImageNet weights each backbone starts from (torchvision's
#: ``DEFAULT`` weights, republished by timm). Only exact matches are listed: a backbone
#: missing here gets no ``base_model`` rather than a wrong one.
BASE_MODELS: dict[str, str] = {
    "vgg16": "timm/vgg16.tv_in1k",  # VGG16_Weights.IMAGENET1K_V1
    "resnet18": "timm/resnet18.tv_in1k",  # ResNet18_Weights.IMAGENET1K_V1
    "resnet50": "timm/resnet50.tv2_in1k",  # ResNet50_Weights.IMAGENET1K_V2 (torchvision's "v2 recipe")
}

#: The bundled flowers dataset (``xfer.load_dataset("flowers")``) is TensorFlow's tf_flowers.
FLOWERS_DATASET = ("tf_flowers", "TF Flowers")


def _cell(value: Any) -> str:
    """A value made safe for a Markdown table cell (class names are folder names: they may hold '|')."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _pct(value: Any) -> str:
    try:
        return f"{float(value):.1%}"
    except (TypeError, ValueError):
        return "?"


def _dataset_id(cfg: dict[str, Any]) -> tuple[str, str] | None:
    """(Hub dataset id, display name) when the training data is a known public dataset."""
    from .data import FLOWERS_CLASSES

    dataset = cfg.get("dataset") or {}
    if dataset.get("name") == "flowers" or set(cfg.get("classes") or ()) == set(FLOWERS_CLASSES):
        return FLOWERS_DATASET
    return None


def base_model(cfg: dict[str, Any]) -> str | None:
    """The Hub id of the pretrained weights the model was fine-tuned from, if any is known."""
    cfg = description(cfg)
    if cfg.get("pretrained_weights") != "imagenet":
        return None  # random ("none") or a user's file: no public base model
    strategy = STRATEGIES.get(cfg.get("strategy", ""))
    if strategy is not None and not strategy.pretrained:
        return None
    return BASE_MODELS.get(cfg.get("backbone", ""))


#: Above this many classes the card lists the confusion matrix's size instead of a table no one can read.
MAX_CARD_MATRIX = 30


def card_data(cfg: dict[str, Any], repo_id: str | None = None) -> ModelCardData:
    """The card's YAML metadata, from a model's ``config.json`` content (either format) or its description."""
    timm = timm_loadable(cfg)
    cfg = description(cfg)
    backbone, strategy = cfg.get("backbone", "unknown"), cfg.get("strategy", "unknown")
    metrics = cfg.get("metrics") or {}
    acc = metrics.get("accuracy")
    has_acc = isinstance(acc, (int, float)) and math.isfinite(acc)
    known = _dataset_id(cfg)
    name = repo_id or f"xfer-{backbone}-{strategy}"
    eval_results = None
    if has_acc:
        eval_results = [EvalResult(
            task_type="image-classification", task_name="Image Classification",
            dataset_type=known[0] if known else "imagefolder",
            dataset_name=known[1] if known else "Image folder (the user's own images)",
            dataset_split="validation", metric_type="accuracy", metric_value=round(float(acc), 4),
            metric_name="Validation accuracy",
        )]
    return ModelCardData(
        library_name="timm" if timm else "xfer",
        pipeline_tag="image-classification",
        tags=["xfer", "transfer-learning", backbone, strategy],
        base_model=base_model(cfg),
        datasets=[known[0]] if known else None,
        metrics=["accuracy"] if has_acc else None,
        model_name=name,
        eval_results=eval_results,
    )


def _metrics_lines(metrics: dict[str, Any], classes: list[str]) -> list[str]:
    """The validation metrics section: accuracy, a per-class table and the confusion matrix (none if unmeasured)."""
    acc = metrics.get("accuracy")
    if not (isinstance(acc, (int, float)) and math.isfinite(acc)):
        return []
    out = ["## Validation metrics", "",
           f"Accuracy **{acc:.1%}** on {metrics.get('num_images', '?')} held-out validation images.", "",
           "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c, v in (metrics.get("per_class") or {}).items():
        out.append(f"| {_cell(c)} | {_pct(v.get('precision'))} | {_pct(v.get('recall'))} | "
                   f"{float(v.get('f1', 0)):.2f} | {int(v.get('support', 0))} |")
    out.append("")
    cm = metrics.get("confusion_matrix")
    if cm and len(cm) == len(classes) and len(classes) > MAX_CARD_MATRIX:
        out += [f"The {len(classes)}x{len(classes)} confusion matrix is in `config.json` "
                "(`xfer.metrics.confusion_matrix`).", ""]
    elif cm and len(cm) == len(classes):
        out += ["Confusion matrix (rows: true class, columns: predicted class):", "",
                "| true \\ predicted | " + " | ".join(_cell(c) for c in classes) + " |",
                "|---|" + "---|" * len(classes)]
        for c, row in zip(classes, cm):
            out.append(f"| **{_cell(c)}** | " + " | ".join(str(int(n)) for n in row) + " |")
        out.append("")
    return out


def _body(cfg: dict[str, Any], repo_id: str | None) -> list[str]:
    timm = timm_loadable(cfg)
    cfg = description(cfg)
    backbone, strategy = cfg.get("backbone", "?"), cfg.get("strategy", "?")
    classes: list[str] = list(cfg.get("classes") or [])
    s = STRATEGIES.get(strategy)
    metrics = cfg.get("metrics") or {}
    training = cfg.get("training") or {}
    counts = (cfg.get("dataset") or {}).get("counts") or {}
    weights = cfg.get("pretrained_weights", "none")
    start = {"imagenet": "ImageNet weights", "file": "weights from a file", "none": "random weights"}.get(
        weights, str(weights))
    out = [f"# {repo_id or 'xfer image classifier'}", "",
           f"An image classifier for {len(classes)} classes, trained with xfer by transfer learning from "
           f"**{backbone}** ({start}) with the **{strategy}** strategy"
           + (f" — {s.title.lower()}: {s.summary}" if s else "."), ""]

    out += ["## Strategy", ""]
    if s:
        out += [s.explanation, ""]
    rec = cfg.get("recommendation")
    if rec and rec.get("reason"):
        out += [f"**Why {rec.get('strategy', strategy)}:** the strategy advisor chose it: {rec['reason']}", ""]
    else:
        out += ["**Why:** the strategy was chosen by the user (the advisor was not asked).", ""]

    out += ["## Classes", "", "| index | class | images in the dataset |", "|---|---|---|"]
    for i, c in enumerate(classes):
        out.append(f"| {i} | {_cell(c)} | {counts.get(c, '?')} |")
    out.append("")

    out += _metrics_lines(metrics, classes)

    if training:
        out += ["## Training arguments", "", "| argument | value |", "|---|---|"]
        out += [f"| {_cell(k)} | {_cell(v)} |" for k, v in training.items()]
        out.append("")
    pre = cfg.get("preprocessing") or {}
    if pre:
        out += [f"Input: {pre.get('crop_size', '?')} px crops of images resized to {pre.get('resize_size', '?')} px "
                f"({pre.get('interpolation', 'bilinear')}), normalised with mean {pre.get('mean')} and "
                f"std {pre.get('std')}.", ""]

    out += usage(repo_id or "<user>/<repo>", timm)
    return out


def usage(hub_id: str, timm: bool) -> list[str]:
    """The card's "How to use" section: xfer always; timm and transformers when the folder is timm-loadable.

    Each snippet is run by tests/test_interop.py against a pushed model, as it is printed here.
    """
    out = ["## How to use", ""]
    if timm:
        out += ["This folder is a timm model (weights in timm's names, preprocessing in `pretrained_cfg`), "
                "so timm and transformers load it without xfer.", "",
                "With [timm](https://github.com/huggingface/pytorch-image-models):", "", "```python",
                *TIMM_SNIPPET.format(model=f"hf-hub:{hub_id}").splitlines(), "```", "",
                "With transformers (its timm wrapper; needs `timm` installed):", "", "```python",
                *TRANSFORMERS_SNIPPET.format(model=hub_id).splitlines(), "```", "",
                "A local copy loads with `timm.create_model(\"local-dir:path/to/folder\", pretrained=True)` "
                "and `pipeline(\"image-classification\", model=\"path/to/folder\")`.", ""]
    else:
        out += ["Only xfer loads this model: its network (kept early stages and new hidden layers, the "
                "truncate strategy) has no timm equivalent.", ""]
    out += ["With xfer installed:", "", "```python", *XFER_SNIPPET.format(model=hub_id).splitlines(), "```", "",
            "Or from the command line:", "", "```bash",
            f"python -m xfer pull {hub_id} --out model", "python -m xfer predict model photo.jpg", "```", "",
            "For runtimes without PyTorch, `python -m xfer export model --format onnx --out model.onnx` writes one "
            "ONNX file with the class names and preprocessing in its metadata (`xfer push --with-onnx` uploads it "
            "as `model.onnx`).", "",
            "A local copy of this folder loads with `xfer.load_model(\"path/to/folder\")`. The weights are in "
            "`model.safetensors` (no pickle); `config.json` holds the class names, the preprocessing and what "
            "xfer needs to rebuild the network (under `\"xfer\"`).", ""]
    return out


#: Usage snippets; ``{model}`` is the Hub repo (``hf-hub:`` prefixed for timm). Kept runnable: see usage().
TIMM_SNIPPET = """\
import timm
import torch
from PIL import Image

model = timm.create_model("{model}", pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config({{}}, model=model))
labels = model.pretrained_cfg["label_names"]
with torch.no_grad():
    probs = model(transform(Image.open("photo.jpg").convert("RGB")).unsqueeze(0)).softmax(-1)[0]
top = probs.topk(min(5, len(labels)))
print({{labels[i]: round(float(p), 4) for p, i in zip(top.values, top.indices)}})"""

TRANSFORMERS_SNIPPET = """\
from transformers import pipeline

classifier = pipeline("image-classification", model="{model}")
print(classifier("photo.jpg"))  # [{{'label': ..., 'score': ...}}, ...], best first"""

XFER_SNIPPET = """\
import xfer
import xfer.hub

model = xfer.hub.pull("{model}")  # downloads config.json + model.safetensors (cached)
print(xfer.predict(model, ["photo.jpg"], k=5))  # [{{label: probability, ...}}]"""


def render_card_from_config(cfg: dict[str, Any], repo_id: str | None = None) -> str:
    """The README.md text for a model described by its ``config.json`` content."""
    card = ModelCard("---\n" + card_data(cfg, repo_id).to_yaml() + "\n---\n\n" + "\n".join(_body(cfg, repo_id)))
    return str(card)

