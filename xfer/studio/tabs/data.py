"""1 · Data: the bundled flowers, a dataset .zip, or classes built image by image."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr

from ...data import flowers_dir, load_dataset, scan_folder
from .. import views
from ..errors import fail, ui_errors
from ..session import AppConfig, Session, add_class_images


class DataValues(NamedTuple):
    """What a data handler shows; the order of ``data_outputs`` in :func:`xfer.studio.build_demo`."""

    summary: str
    counts: Any  # DataFrame or None
    gallery: list
    skipped: Any  # DataFrame
    examples: list  # the Predict tab's examples
    advisor: str  # the Train tab's advisor line


# --- handlers -------------------------------------------------------------------------------------


def dataset_values(session: Session, shown_root: str | None = None) -> DataValues:
    report = session.report
    samples = views.sample_items(report, per_class=4)
    session.example_paths = [p for p, _ in samples]
    gallery = views.sample_gallery(samples)
    return DataValues(views.report_markdown(report, shown_root), views.counts_frame(report), gallery,
                      views.skipped_frame(report), gallery, "The advisor is looking at your images…")


@ui_errors
def on_use_flowers(session: Session) -> DataValues:
    session.set_dataset(scan_folder(flowers_dir()), None)  # not the session's files: never deleted
    return dataset_values(session, "the bundled flower photos")


@ui_errors
def on_upload_zip(session: Session, path: str | None) -> DataValues:
    if not path:
        raise fail("Choose a .zip file with one folder of images per class.")
    session.check_disk(Path(path).stat().st_size)  # extracted images are about the zip's size
    dest = session.new_dir("zip")
    try:
        report = load_dataset(path, work_dir=dest)
    except BaseException:  # a refused archive leaves nothing behind, and the previous dataset stays
        session.discard(dest)
        raise
    session.set_dataset(report, dest)  # deletes the previous dataset's folder
    return dataset_values(session, Path(path).name)


@ui_errors
def on_add_images(session: Session, class_name: str, files: list[str] | None) -> tuple:
    """The dataset values, then the emptied class name and image fields."""
    session.check_disk(sum(Path(f).stat().st_size for f in files or []))
    root = session.workdir / "classes"
    add_class_images(root, class_name, files or [])
    session.set_dataset(scan_folder(root), root)
    return (*dataset_values(session, "your classes"), "", None)


@ui_errors
def on_clear_classes(session: Session) -> DataValues:
    shutil.rmtree(session.workdir / "classes", ignore_errors=True)
    session.set_dataset(None)
    session.example_paths = []
    return DataValues("Classes cleared. Load a dataset or add images per class.", None, [],
                      views.skipped_frame(None), [], views.recommendation_markdown(None))


# --- layout ---------------------------------------------------------------------------------------


@dataclass
class DataTab:
    flowers_btn: gr.Button
    zip_file: gr.File
    new_class: gr.Textbox
    new_images: gr.File
    add_btn: gr.Button
    clear_btn: gr.Button
    summary: gr.Markdown
    counts: gr.BarPlot
    gallery: gr.Gallery
    skipped: gr.Dataframe
    next_btn: gr.Button


def build(config: AppConfig) -> DataTab:
    with gr.Tab("1 · Data", id="data", elem_id="tab-data"):
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                gr.Markdown("### Choose your images")
                flowers_btn = gr.Button("Use the bundled flowers (5 classes)", variant="primary",
                                        elem_id="use-flowers")
                gr.Markdown("**or** upload a .zip with one folder of images per class "
                            "(`flowers/daisy/*.jpg`, `flowers/roses/*.jpg`, …):")
                zip_file = gr.File(label=f"Dataset .zip (up to {config.max_upload_mb} MB)",
                                   file_types=[".zip"], elem_id="upload-zip", height=120)
                with gr.Accordion("or build classes yourself, image by image", open=False,
                                  elem_id="build-classes"):
                    new_class = gr.Textbox(label="Class name", placeholder="e.g. cat", elem_id="class-name")
                    new_images = gr.File(label="Images of this class", file_count="multiple",
                                         file_types=["image"], elem_id="class-images", height=120)
                    with gr.Row():
                        add_btn = gr.Button("Add to this class", elem_id="add-images")
                        clear_btn = gr.Button("Clear my classes", variant="secondary", elem_id="clear-classes")
            with gr.Column(scale=2):
                summary = gr.Markdown("No dataset yet: pick one on the left.", elem_id="data-summary")
                counts = gr.BarPlot(None, x="class", y="images", title="Images per class",
                                    elem_id="class-counts", height=220, x_label_angle=-30, y_lim=[0, None])
                gallery = gr.Gallery(label="A few images of each class", columns=6, height=260,
                                     object_fit="cover", elem_id="data-gallery", allow_preview=True)
                with gr.Accordion("Skipped files and duplicates", open=False):
                    skipped = gr.Dataframe(views.skipped_frame(None), elem_id="skipped-files",
                                           interactive=False, wrap=True, max_height=300)
                next_btn = gr.Button("Next: 2 · Train →", size="md", elem_id="next-train")
    return DataTab(flowers_btn, zip_file, new_class, new_images, add_btn, clear_btn, summary, counts, gallery,
                   skipped, next_btn)
