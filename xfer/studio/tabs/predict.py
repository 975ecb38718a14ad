"""4 · Predict: the top-5 classes and a Grad-CAM heat map, live webcam predictions, and loading another model
(zip, folder, Hub)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import gradio as gr

from ... import hub
from ...api import predict
from ...data import extract_zip, open_image
from ...errors import XferError
from ...model import LEGACY_WEIGHTS_NAME, XferModel, load_model, save_model
from ...outputs import MODEL_FOLDER_FILES
from .. import views, zerogpu
from ..errors import fail, ui_errors
from ..session import AppConfig, Session, find_model_folder
from . import PREDICT_QUEUE, PRIVATE, need_model
from .evaluate import eval_values
from .share import hub_token

# The live webcam: a stream holds one slot of its own group for as long as it runs (at most
# LIVE_TIME_LIMIT_S), so LIVE_STREAMS visitors can watch at once, never queued behind training or
# behind other visitors' predictions. The page sends a frame every LIVE_EVERY_S; a frame that arrives
# while the previous one is being classified replaces the one waiting (Gradio keeps only the latest),
# so a slow server shows fewer updates, never a backlog.
LIVE_QUEUE = dict(concurrency_id="webcam", concurrency_limit=2)
LIVE_EVERY_S = 0.25
LIVE_TIME_LIMIT_S = 60


class ModelValues(NamedTuple):
    """What changes when the session's model changes, in the order of ``model_outputs`` in build_demo."""

    model_info: str
    label: Any
    gradcam: Any
    download: Any  # the Share tab's model .zip
    summary: str  # the Evaluate tab's four outputs from here on
    per_class: Any
    confusion: Any
    misclassified: list


# --- handlers -------------------------------------------------------------------------------------


@ui_errors
def on_predict(session: Session, image: Any) -> dict[str, float]:
    model = need_model(session)
    if image is None:
        raise fail("Add an image first: upload, paste, use the webcam, or click an example.")
    return zerogpu.predict_on_gpu(model, image, 5, zerogpu.placement(session.config.device))


@ui_errors
def on_live_frame(session: Session, frame: Any):
    """One webcam frame: the top 5 with the session's current model (the bars update in place)."""
    if frame is None:
        return gr.skip()
    return predict(need_model(session), [frame], k=5)[0]


@ui_errors
def on_explain(session: Session, image: Any):
    model = session.loaded_model() if image is not None else None
    if model is None:
        return None
    return zerogpu.gradcam_on_gpu(model, image, zerogpu.placement(session.config.device))


@ui_errors
def on_example(session: Session, evt: gr.SelectData):
    paths = session.example_paths
    if evt.index is None or not 0 <= int(evt.index) < len(paths):
        return gr.skip()
    return open_image(paths[int(evt.index)], max_side=512)


def use_model(session: Session, model: XferModel, folder: Path, source: str) -> ModelValues:
    model.to(session.config.device.device)
    session.use_model(model, folder, source)
    return ModelValues(views.model_markdown(model, source), None, None, None,
                       *eval_values(model.metrics, None, "Metrics saved with the model (its own validation set)."))


@ui_errors
def on_load_model_dir(session: Session, folder: str) -> ModelValues:
    folder = (folder or "").strip()
    if not session.config.allow_server_paths:
        raise fail("Loading folders from the server is turned off here: upload a model .zip or use the Hub.")
    if not folder:
        raise fail("Type the path of a model folder on the server (the folder `xfer train --out` wrote).")
    model = load_model(folder, device=session.config.device.device)
    return use_model(session, model, Path(folder).expanduser(), f"the model in {Path(folder).name}")


def _model_file(rel: PurePosixPath) -> str | None:
    """A model zip's files that are kept: a model folder's own (:data:`xfer.outputs.MODEL_FOLDER_FILES`, at the
    zip's root or one folder down), nothing else. A legacy pytorch_model.bin is kept for the loader to refuse or
    read safely, as it does in a folder."""
    if (rel.name in MODEL_FOLDER_FILES or rel.name == LEGACY_WEIGHTS_NAME) and len(rel.parts) <= 2:
        return None
    return "not a file of a saved model, not extracted"


@ui_errors
def on_upload_model(session: Session, path: str | None) -> ModelValues:
    if not path:
        raise fail("Choose the .zip that *Download model* made.")
    session.check_disk(Path(path).stat().st_size)
    dest = session.new_dir("upload-model")
    try:
        extract_zip(path, dest, keep=_model_file)
        folder = find_model_folder(dest)
        model = load_model(folder, device=session.config.device.device)
    except BaseException:  # a failure loses nothing: the previous model and its folder stay, this one goes
        session.discard(dest)
        raise
    return use_model(session, model, folder, f"the uploaded model {Path(path).name}")


@ui_errors
def on_pull(session: Session, repo_id: str, revision: str, token: str,
            oauth_token: gr.OAuthToken | None = None) -> ModelValues:
    """Pull a model; a signed-in visitor's token (on a Space) reads their private repos (see share.hub_token)."""
    repo_id = (repo_id or "").strip()
    if not repo_id:
        raise fail("Type the Hub repository id of an xfer model, like your-name/flowers-classifier.")
    session.check_disk()
    model = hub.pull(repo_id, revision=(revision or "").strip() or None, token=hub_token(token, oauth_token),
                     device=session.config.device.device)
    folder = save_model(model, session.workdir / "hub-model")  # so that it can be downloaded again
    return use_model(session, model, folder, f"{repo_id} from the Hub")


# --- layout ---------------------------------------------------------------------------------------


def decoded_by_xfer(image: gr.Image) -> gr.Image:
    """Make an image input hand its upload to xfer.open_image instead of letting Gradio decode it: the pixel
    limit is checked before decoding (a decompression bomb costs nothing) and a file that is no usable image
    (text, empty, truncated) becomes a one-line gr.Error naming the file, not a generic "the app raised an
    exception". (An instance attribute, not a gr.Image subclass: Gradio writes a .pyi next to any module
    that subclasses its components, which fails on a read-only file system.)"""

    def preprocess(payload):
        if payload is None or payload.path is None:
            return gr.Image.preprocess(image, payload)
        try:
            return open_image(payload.path, max_side=1024)
        except XferError as e:
            raise fail(str(e).replace(str(payload.path), payload.orig_name or "the image")) from None

    image.preprocess = preprocess
    return image


@dataclass
class PredictTab:
    model_info: gr.Markdown
    image: gr.Image
    predict_btn: gr.Button
    examples: gr.Gallery
    label: gr.Label
    gradcam: gr.Image
    model_zip: gr.File
    model_dir: gr.Textbox
    load_dir_btn: gr.Button
    pull_repo: gr.Textbox
    pull_revision: gr.Textbox
    pull_token: gr.Textbox
    pull_btn: gr.Button
    webcam: gr.Image


def build(config: AppConfig) -> PredictTab:
    with gr.Tab("4 · Predict", id="predict", elem_id="tab-predict"):
        model_info = gr.Markdown(views.model_markdown(None), elem_id="model-info")
        with gr.Row():
            with gr.Column():
                image = decoded_by_xfer(gr.Image(
                    sources=["upload", "clipboard", "webcam"], type="pil", height=300,
                    label="Your image (upload, paste or webcam)", elem_id="predict-image"))
                predict_btn = gr.Button("Predict", variant="primary", elem_id="predict-btn")
                examples = gr.Gallery(label="Or click an example from your dataset", columns=6, height=180,
                                      object_fit="cover", allow_preview=False, elem_id="predict-examples")
                with gr.Accordion("Live webcam: predictions as you move", open=False, elem_id="live"):
                    webcam = decoded_by_xfer(gr.Image(
                        sources=["webcam"], streaming=True, type="pil", height=240,
                        label=f"Start the webcam: the top 5 update a few times a second (for "
                              f"{LIVE_TIME_LIMIT_S} s at a time)", elem_id="live-webcam"))
            with gr.Column():
                label = gr.Label(num_top_classes=5, label="Top 5 classes", elem_id="predict-label")
                gradcam = gr.Image(label="Where the model looked (Grad-CAM)", interactive=False,
                                   height=300, elem_id="gradcam")
        with gr.Accordion("Use another model", open=False, elem_id="other-model"):
            with gr.Row():
                with gr.Column():
                    model_zip = gr.File(label=f"Upload a model .zip (up to {config.max_upload_mb} MB)",
                                        file_types=[".zip"], elem_id="upload-model", height=120)
                with gr.Column(visible=config.allow_server_paths):
                    model_dir = gr.Textbox(label="…or the path of a model folder on this server",
                                           placeholder="models/flowers", elem_id="model-dir")
                    load_dir_btn = gr.Button("Load model folder", elem_id="load-model-dir")
                with gr.Column(elem_id="hub-pull"):
                    pull_repo = gr.Textbox(label="…or a model on the Hugging Face Hub",
                                           placeholder="your-name/flowers-classifier", elem_id="pull-repo")
                    with gr.Row():
                        pull_revision = gr.Textbox(label="Revision (optional)", placeholder="main",
                                                   elem_id="pull-revision")
                        pull_token = gr.Textbox(label="Token (private repos)", type="password",
                                                elem_id="pull-token")
                    pull_btn = gr.Button("Load from the Hub", elem_id="pull-btn")
    return PredictTab(model_info, image, predict_btn, examples, label, gradcam, model_zip, model_dir,
                      load_dir_btn, pull_repo, pull_revision, pull_token, pull_btn, webcam)


def wire(tab: PredictTab, session: gr.State) -> None:
    """Prediction events inside the tab: the button, a new upload, a click on an example, the live webcam."""
    predict_in, explain = [session, tab.image], dict(fn=on_explain, inputs=[session, tab.image],
                                                     outputs=[tab.gradcam], **PREDICT_QUEUE)
    tab.predict_btn.click(on_predict, predict_in, [tab.label], api_name="predict", **PREDICT_QUEUE
                          ).success(api_name="explain", **explain)
    tab.image.upload(on_predict, predict_in, [tab.label], **PREDICT_QUEUE, **PRIVATE
                     ).success(**explain, **PRIVATE)
    tab.examples.select(on_example, [session], [tab.image], **PREDICT_QUEUE, **PRIVATE
                        ).success(on_predict, predict_in, [tab.label], **PREDICT_QUEUE, **PRIVATE
                                  ).success(**explain, **PRIVATE)
    # trigger_mode stays "multiple" (a stream's default): the page then sends each new frame into the running
    # stream, where the server keeps only the latest. "always_last" would make the page wait for the first
    # frame's answer and start a new stream for the next one: one update, then nothing until time_limit.
    tab.webcam.stream(on_live_frame, [session, tab.webcam], [tab.label], stream_every=LIVE_EVERY_S,
                      time_limit=LIVE_TIME_LIMIT_S, show_progress="hidden", **LIVE_QUEUE, **PRIVATE)
