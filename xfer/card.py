"""The model card (README.md) written next to a saved model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .strategies import get_strategy

if TYPE_CHECKING:
    from .model import XferModel


def render_card(model: "XferModel", repo_id: str | None = None) -> str:
    """Markdown with YAML front matter in the Hugging Face model card format."""
    s = get_strategy(model.strategy)
    m = model.metrics or {}
    acc = m.get("accuracy")
    tags = ["xfer", "transfer-learning", "image-classification", model.backbone, f"strategy-{model.strategy}"]
    yaml = ["---", "library_name: xfer", "pipeline_tag: image-classification", "tags:"]
    yaml += [f"- {t}" for t in tags]
    if acc is not None:
        yaml += ["metrics:", "- accuracy"]
    yaml.append("---")
    body = [f"# {repo_id or 'xfer image classifier'}", "",
            f"An image classifier for {len(model.classes)} classes, fine-tuned with "
            f"[xfer](https://github.com/) from **{model.backbone}** using the **{s.name}** strategy "
            f"({s.title.lower()}): {s.summary}", ""]
    if model.recommendation:
        body += [f"Why this strategy: {model.recommendation.get('reason', '')}", ""]
    body += ["## Classes", "", ", ".join(f"`{c}`" for c in model.classes), ""]
    if acc is not None:
        body += ["## Validation metrics", "", f"Accuracy: **{acc:.1%}** on {m.get('num_images', '?')} images.", "",
                 "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for c, v in m.get("per_class", {}).items():
            body.append(f"| {c} | {v['precision']:.1%} | {v['recall']:.1%} | {v['f1']:.2f} | {int(v['support'])} |")
        body.append("")
    if model.training:
        body += ["## Training", "", "| argument | value |", "|---|---|"]
        body += [f"| {k} | {v} |" for k, v in model.training.items()]
        body.append("")
    body += ["## Use", "", "```python", "import xfer", "model = xfer.load_model(\"path/to/this/folder\")",
             "print(xfer.predict(model, [\"photo.jpg\"], k=5))", "```", ""]
    return "\n".join(yaml + body)
