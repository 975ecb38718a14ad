"""Metrics for a trained model: accuracy, per-class precision/recall/F1, confusion matrix,
and the misclassified files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch


@dataclass
class EvalReport:
    """The evaluation of a model on a labelled set of images."""

    accuracy: float
    classes: list[str]
    per_class: dict[str, dict[str, float]]  # class -> precision, recall, f1, support
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class
    misclassified: list[dict[str, Any]] = field(default_factory=list)  # image, true, predicted, confidence
    num_images: int = 0

    def to_dict(self, with_files: bool = True) -> dict[str, Any]:
        d = {"accuracy": self.accuracy, "num_images": self.num_images, "classes": self.classes,
             "per_class": self.per_class, "confusion_matrix": self.confusion_matrix}
        if with_files:
            d["misclassified"] = self.misclassified
        return d

    def summary(self) -> str:
        width = max(len(c) for c in self.classes)
        lines = [f"accuracy {self.accuracy:.1%} on {self.num_images} images",
                 f"  {'class':<{width}}  precision  recall    f1  support"]
        for c, m in self.per_class.items():
            lines.append(f"  {c:<{width}}  {m['precision']:9.1%}  {m['recall']:6.1%}  {m['f1']:4.2f}  {int(m['support']):7d}")
        return "\n".join(lines)


def metrics_from_predictions(probs: torch.Tensor, targets: torch.Tensor, classes: Sequence[str],
                             files: Sequence[Any] | None = None) -> EvalReport:
    """Compute an :class:`EvalReport` from softmax outputs and true labels."""
    c = len(classes)
    preds = probs.argmax(1) if probs.numel() else torch.empty(0, dtype=torch.long)
    cm = torch.zeros(c, c, dtype=torch.long)
    for t, p in zip(targets.tolist(), preds.tolist()):
        cm[t, p] += 1
    per_class = {}
    for i, name in enumerate(classes):
        tp = cm[i, i].item()
        predicted, actual = cm[:, i].sum().item(), cm[i, :].sum().item()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    n = int(targets.numel())
    accuracy = float(cm.diag().sum().item() / n) if n else float("nan")
    wrong = []
    if files is not None:
        for i in (preds != targets).nonzero().flatten().tolist():
            wrong.append({"image": str(files[i]), "true": classes[int(targets[i])],
                          "predicted": classes[int(preds[i])], "confidence": float(probs[i, preds[i]])})
        wrong.sort(key=lambda w: -w["confidence"])  # the most confident mistakes first
    return EvalReport(accuracy, list(classes), per_class, cm.tolist(), wrong, n)
