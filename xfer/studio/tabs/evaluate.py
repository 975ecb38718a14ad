"""3 · Evaluate: accuracy, per-class precision and recall, the confusion matrix, the mistakes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import gradio as gr

from .. import views, zerogpu
from ..errors import fail, ui_errors
from ..session import AppConfig, Session, cap_per_class
from . import need_model


class EvalValues(NamedTuple):
    """The Evaluate tab's outputs, in the order of ``eval_outputs`` in :func:`xfer.studio.build_demo`."""

    summary: str
    per_class: Any  # DataFrame
    confusion: Any  # matplotlib Figure or None
    misclassified: list


# --- handlers -------------------------------------------------------------------------------------


def eval_values(metrics: dict | None, evaluation: Any = None, note: str = "",
                title: str = "Validation accuracy") -> EvalValues:
    metrics = metrics or {}
    return EvalValues(views.metrics_markdown(metrics, note, title), views.per_class_frame(metrics),
                      views.confusion_figure(metrics.get("classes", []), metrics.get("confusion_matrix", [])),
                      views.sample_gallery(views.misclassified_items(evaluation)))


@ui_errors
def on_evaluate(session: Session, max_per_class: float | None) -> EvalValues:
    model = need_model(session)
    if session.report is None:
        raise fail("Load a dataset in 1 · Data to evaluate the model on it.")
    report = cap_per_class(session.report, int(max_per_class or 0))
    result = zerogpu.evaluate_on_gpu(model, report, zerogpu.placement(session.config.device))
    note = (f"Evaluated on {result.num_images} images of the current dataset (including any the model was "
            "trained on, which flatters it).")
    return eval_values(result.to_dict(with_files=False), result, note, "Accuracy on the current dataset")


# --- layout ---------------------------------------------------------------------------------------


@dataclass
class EvaluateTab:
    summary: gr.Markdown
    per_class: gr.Dataframe
    eval_btn: gr.Button
    confusion: gr.Plot
    misclassified: gr.Gallery
    next_btn: gr.Button

    @property
    def outputs(self) -> list:
        """Components in :class:`EvalValues` order."""
        return [self.summary, self.per_class, self.confusion, self.misclassified]


def build(config: AppConfig) -> EvaluateTab:
    with gr.Tab("3 · Evaluate", id="evaluate", elem_id="tab-evaluate"):
        summary = gr.Markdown(views.metrics_markdown(None), elem_id="eval-summary")
        with gr.Row():
            with gr.Column():
                per_class = gr.Dataframe(views.per_class_frame(None), label="Per class (validation)",
                                         elem_id="per-class", interactive=False)
                eval_btn = gr.Button("Evaluate the current model on the current dataset", elem_id="evaluate-btn")
            confusion = gr.Plot(label="Confusion matrix", elem_id="confusion")
        misclassified = gr.Gallery(label="Misclassified validation images (most confident mistakes first)",
                                   columns=6, height=300, object_fit="cover", elem_id="misclassified")
        next_btn = gr.Button("Next: 4 · Predict →", size="md", elem_id="next-predict")
    return EvaluateTab(summary, per_class, eval_btn, confusion, misclassified, next_btn)
