"""xfer studio: train an image classifier by transfer learning, in the browser.

Run ``python app.py`` (``--help`` for options). This file only wires Gradio widgets
to the ``xfer`` library; everything it shows is computed in ``xfer`` (mostly in
``xfer.ui_helpers`` and ``xfer.explain``). Nothing heavy happens at import: the
device is chosen in ``main`` and the UI is built by :func:`build_demo`.
"""

import argparse
import functools
import inspect
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr

import xfer
from xfer import ui_helpers as ui
from xfer.data import check_trainable, extract_zip, flowers_dir, scan_folder

log = logging.getLogger("xfer.app")

ASSETS = Path(__file__).resolve().parent / "assets"
MAX_UPLOAD_MB = 500  # per uploaded file; enforced by launch(max_file_size=...) and stated in the UI
PROGRESS_EVERY_S = 0.4  # how often the training progress is pushed to the browser
STOP_WAIT_S = 180  # how long Stop waits for the current batch to finish before answering


@dataclass
class AppDefaults:
    """The Train tab's initial values (tests and small machines override them from the command line)."""

    backbone: str | None = None  # None: xfer.default_backbone()
    image_size: int = 224
    weights: str = "imagenet"  # "imagenet" | "none"
    epochs: int = 5
    batch_size: int = 32
    lr: float | None = None  # None: the selected strategy's default (xfer.STRATEGIES[...].lr)
    max_per_class: int | None = None  # None: 100 on CPU (a first run that ends in minutes), all on a GPU


# --- errors reach the visitor as one readable line ---------------------------------------------------


def _as_gr_error(e: BaseException) -> gr.Error:
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, xfer.WeightsError):
        return gr.Error(f"{e} In this app you can also untick \"Start from ImageNet weights\".", print_exception=False)
    if isinstance(e, xfer.HubError) and "token" in str(e).lower():
        return gr.Error(f"{e} In this app: paste a token in the Token field.", print_exception=False)
    if isinstance(e, xfer.XferError):
        return gr.Error(str(e), print_exception=False)
    log.error("unexpected error", exc_info=e)
    return gr.Error(f"Something went wrong ({type(e).__name__}: {str(e)[:200]}). "
                    "The details are in the server log; try again or change the settings.", print_exception=False)


def ui_errors(fn: Callable) -> Callable:
    """Turn xfer errors into gr.Error (their one-line message) and anything else into a short gr.Error."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:
                raise _as_gr_error(e) from None
        return gen

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise _as_gr_error(e) from None
    return call


def _need_model(session: ui.Session) -> xfer.XferModel:
    if session.model is None:
        raise gr.Error("There is no model yet: train one in 2 · Train, or load one under \"Use another model\".",
                       print_exception=False)
    return session.model


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
            return xfer.open_image(payload.path, max_side=1024)
        except xfer.XferError as e:
            raise gr.Error(str(e).replace(str(payload.path), payload.orig_name or "the image"),
                           print_exception=False) from None

    image.preprocess = preprocess
    return image


# --- the UI -----------------------------------------------------------------------------------------


INTRO = """# xfer studio: teach a computer to recognise your images
Transfer learning reuses a network pretrained on ImageNet's millions of photos, so a few hundred of your
images are enough. Go through the tabs from left to right:
**1 Data → 2 Train → 3 Evaluate → 4 Predict → 5 Share**.
The defaults work: click **Use the bundled flowers**, then **Train**."""


def build_demo(device: xfer.DeviceInfo | None = None, defaults: AppDefaults | None = None,
               max_train_jobs: int = 1, max_upload_mb: int = MAX_UPLOAD_MB,
               allow_server_paths: bool = True) -> gr.Blocks:
    """Build the app's Blocks. ``device`` is chosen once by the caller (default: "auto");
    ``max_upload_mb`` is only stated here: pass the same limit to ``launch(max_file_size=...)``.
    ``allow_server_paths`` offers "load a model folder on this server": off for public deployments,
    where it would let visitors probe the server's files."""
    device = device or xfer.select_device("auto")
    d = defaults or AppDefaults()
    if d.backbone:
        backbone0, backbone_note = d.backbone, None
    else:
        backbone0, backbone_note = xfer.default_backbone()
    max_per_class0 = d.max_per_class if d.max_per_class is not None else (100 if device.type == "cpu" else 0)
    backbones = xfer.list_backbones()
    if backbone0 not in backbones:
        backbones.insert(0, backbone0)

    def backbone_label(name: str) -> str:
        try:
            return xfer.get_backbone(name).title
        except xfer.XferError:
            return name

    def weights_note(name: str, pretrained: bool = d.weights != "none") -> str:
        lines = [f"Note: {backbone_note}"] if backbone_note and name == backbone0 else []
        try:
            ok = xfer.pretrained_available(name)
        except xfer.XferError:
            ok = False
        if pretrained and not ok:
            lines.append(f"Note: {name}'s ImageNet weights are not on this machine yet: they are downloaded when "
                         "training starts (needs internet), or untick \"Start from ImageNet weights\" "
                         "(much less accurate).")
        return "\n\n".join(lines)

    # ---------------- handlers: data ----------------

    def data_outputs(session: ui.Session, shown_root: str | None = None) -> dict:
        report = session.report
        samples = ui.sample_items(report, per_class=4)
        session.example_paths = [p for p, _ in samples]
        gallery = ui.sample_gallery(samples)
        return {data_summary: ui.report_markdown(report, shown_root), class_counts: ui.counts_frame(report),
                data_gallery: gallery, skipped_table: ui.skipped_frame(report), examples: gallery,
                advisor_md: "The advisor is looking at your images…"}

    @ui_errors
    def on_use_flowers(session: ui.Session):
        report = scan_folder(flowers_dir())
        session.set_dataset(report)
        return data_outputs(session, "the bundled flower photos")

    @ui_errors
    def on_upload_zip(session: ui.Session, path: str | None):
        if not path:
            raise gr.Error("Choose a .zip file with one folder of images per class.", print_exception=False)
        report = xfer.load_dataset(path, work_dir=session.new_dir("zip"))
        session.set_dataset(report)
        return data_outputs(session, Path(path).name)

    @ui_errors
    def on_add_images(session: ui.Session, class_name: str, files: list[str] | None):
        root = session.workdir / "classes"
        ui.add_class_images(root, class_name, files or [])
        report = scan_folder(root)
        session.set_dataset(report)
        out = data_outputs(session, "your classes")
        out.update({new_class: "", new_images: None})
        return out

    @ui_errors
    def on_clear_classes(session: ui.Session):
        shutil.rmtree(session.workdir / "classes", ignore_errors=True)
        session.report = None
        session.example_paths = []
        return {data_summary: "Classes cleared. Load a dataset or add images per class.",
                class_counts: None, data_gallery: [], skipped_table: ui.skipped_frame(None),
                examples: [], advisor_md: ui.recommendation_markdown(None)}

    @ui_errors
    def on_recommend(session: ui.Session, max_per_class: float | None):
        if session.report is None or len(session.report.classes) < 2:
            return {advisor_md: ui.recommendation_markdown(None)}
        report = ui.cap_per_class(session.report, int(max_per_class or 0))
        try:
            measured = session.similarity
            rec = xfer.recommend(report, similarity="measure" if isinstance(measured, str) else measured, device=device)
        except xfer.XferError as e:  # the advice is optional: say why there is none, keep going
            return {advisor_md: f"The advisor could not measure your images ({e}); choose a strategy yourself."}
        session.similarity = rec.measurement  # None: nothing could be measured; not measured again
        return {strategy: rec.strategy, strategy_md: ui.strategy_markdown(rec.strategy),
                lr: ui.strategy_lr(rec.strategy, d.lr), advisor_md: ui.recommendation_markdown(rec)}

    # ---------------- handlers: training ----------------

    def eval_outputs(metrics: dict | None, evaluation: Any = None, note: str = "",
                     title: str = "Validation accuracy") -> dict:
        metrics = metrics or {}
        return {eval_summary: ui.metrics_markdown(metrics, note, title), per_class_table: ui.per_class_frame(metrics),
                confusion_plot: ui.confusion_figure(metrics.get("classes", []), metrics.get("confusion_matrix", [])),
                misclassified: ui.sample_gallery(ui.misclassified_items(evaluation))}

    @ui_errors
    def on_train(session: ui.Session, backbone: str, strategy_name: str, epochs: float, lr: float,
                 batch_size: float, image_size: float, augment: bool, pretrained: bool, max_per_class: float | None):
        if session.report is None:
            raise gr.Error("There is no dataset yet: load one in 1 · Data first.", print_exception=False)
        if session.training:
            raise gr.Error("A training run is already going on in this session: wait for it or press Stop.",
                           print_exception=False)
        report = ui.cap_per_class(session.report, int(max_per_class or 0))
        check_trainable(report)
        config = xfer.TrainConfig(epochs=int(epochs), batch_size=int(batch_size), lr=float(lr), augment=bool(augment))
        config.validate()
        cancel = threading.Event()
        session.cancel = cancel

        def job(callback):
            # Runs in the training thread. The model is committed (saved, then swapped in) only if
            # nobody pressed Stop, so a stopped run never replaces the model that is predicting.
            try:
                model = xfer.train(report, backbone=backbone, strategy=strategy_name,
                                   weights="imagenet" if pretrained else None, image_size=int(image_size),
                                   config=config, device=device, callback=callback, cancel=cancel)
                if cancel.is_set():
                    raise xfer.Cancelled("Training was stopped; the previous model is unchanged.")
                xfer.save_model(model, session.trained_model_dir)
                session.model, session.model_dir, session.model_source = (
                    model, session.trained_model_dir, "the model you just trained")
                session.last_outcome = "done"
                return model
            except xfer.Cancelled:
                session.last_outcome = "stopped"
                raise
            except BaseException:
                session.last_outcome = "error"
                raise
            finally:
                session.training = False

        history: list = []
        yield {progress_box: ui.progress_html(0.0, f"Starting on {device.name}: {report.num_images} images…"),
               train_status: f"Training {backbone} with the **{strategy_name}** strategy on {report.num_images} images "
                             f"({len(report.classes)} classes)…",
               loss_plot: None, acc_plot: None}
        last, fraction, started = 0.0, 0.0, time.perf_counter()
        # Set right before the thread starts (no yield in between), cleared by the thread when it ends.
        session.training, session.last_outcome, session.progress = True, None, 0.0
        try:
            for event in xfer.engine.stream(job):
                if isinstance(event, xfer.Progress):
                    fraction = session.progress = event.fraction
                    now = time.perf_counter()
                    if now - last >= PROGRESS_EVERY_S or event.fraction >= 1.0:
                        last = now
                        yield {progress_box: ui.progress_html(event.fraction, ui.progress_text(event))}
                elif isinstance(event, xfer.EpochStats):
                    history.append(event)
                    loss_df, acc_df = ui.history_frames(history)
                    yield {loss_plot: loss_df, acc_plot: acc_df}
                elif isinstance(event, tuple) and event[0] == "done":
                    model = event[1]
                    m = model.metrics
                    took = ui.format_duration(time.perf_counter() - started)
                    out = {progress_box: ui.progress_html(1.0, f"Done in {took} on {device.name}.", "done"),
                           train_status: (f"**Done: validation accuracy {m['accuracy']:.1%}** (best epoch "
                                          f"{model.training.get('best_epoch')} of {len(model.history)}). The model is "
                                          "saved and ready: see **3 · Evaluate**, try it in **4 · Predict**, "
                                          "download it in **5 · Share**."),
                           model_info: ui.model_markdown(model, session.model_source),
                           download_file: None}
                    out[loss_plot], out[acc_plot] = ui.history_frames(model.history)
                    out.update(eval_outputs(m, model.evaluation))
                    yield out
                elif isinstance(event, tuple) and event[0] == "error":
                    error = event[1]
                    if isinstance(error, xfer.Cancelled):
                        gr.Warning("Training stopped. The previous model is still used.")
                        yield {progress_box: ui.progress_html(fraction, "Stopped.", "stopped"),
                               train_status: stopped_text(session)}
                    else:
                        failure = _as_gr_error(error)
                        yield {progress_box: ui.progress_html(fraction, "Failed.", "failed"),
                               train_status: f"**Training failed:** {failure.message}"}
                        raise failure
        finally:
            # The visitor left or the run was cancelled from the page: stop the thread too.
            if session.training:
                cancel.set()

    def stopped_text(session: ui.Session) -> str:
        keep = ("The previous model is still used for predictions." if session.model is not None
                else "There is no trained model yet.")
        return f"**Training was stopped.** Nothing was saved from that run. {keep}"

    def on_stop(session: ui.Session):
        if not session.training:
            return {train_status: "Nothing is training right now."}
        session.cancel.set()
        deadline = time.monotonic() + STOP_WAIT_S
        while session.training and time.monotonic() < deadline:  # the run ends after its current batch
            time.sleep(0.1)
        if session.last_outcome == "done":
            return {train_status: "The run had already finished before Stop: its model is used."}
        return {train_status: stopped_text(session),
                progress_box: ui.progress_html(session.progress, "Stopped.", "stopped")}

    # ---------------- handlers: evaluate / predict / models ----------------

    @ui_errors
    def on_evaluate(session: ui.Session, max_per_class: float | None):
        model = _need_model(session)
        if session.report is None:
            raise gr.Error("Load a dataset in 1 · Data to evaluate the model on it.", print_exception=False)
        report = ui.cap_per_class(session.report, int(max_per_class or 0))
        result = xfer.evaluate(model, report, device=device)
        note = (f"Evaluated on {result.num_images} images of the current dataset (including any the model was "
                "trained on, which flatters it).")
        return eval_outputs(result.to_dict(with_files=False), result, note, "Accuracy on the current dataset")

    @ui_errors
    def on_predict(session: ui.Session, image: Any):
        model = _need_model(session)
        if image is None:
            raise gr.Error("Add an image first: upload, paste, use the webcam, or click an example.",
                           print_exception=False)
        return xfer.predict(model, [image], k=5)[0]

    @ui_errors
    def on_explain(session: ui.Session, image: Any):
        if session.model is None or image is None:
            return None
        from xfer.explain import gradcam

        return gradcam(session.model, image)

    @ui_errors
    def on_example(session: ui.Session, evt: gr.SelectData):
        paths = session.example_paths
        if evt.index is None or not 0 <= int(evt.index) < len(paths):
            return gr.skip()
        return xfer.open_image(paths[int(evt.index)], max_side=512)

    def use_model(session: ui.Session, model: xfer.XferModel, folder: Path, source: str) -> dict:
        model.to(device.device)
        session.model, session.model_dir, session.model_source = model, folder, source
        out = {model_info: ui.model_markdown(model, source), predict_label: None, gradcam_image: None,
               download_file: None}
        out.update(eval_outputs(model.metrics, None, "Metrics saved with the model (its own validation set)."))
        return out

    @ui_errors
    def on_load_model_dir(session: ui.Session, folder: str):
        folder = (folder or "").strip()
        if not allow_server_paths:
            raise gr.Error("Loading folders from the server is turned off here: upload a model .zip or use the Hub.",
                           print_exception=False)
        if not folder:
            raise gr.Error("Type the path of a model folder on the server (the folder `xfer train --out` wrote).",
                           print_exception=False)
        model = xfer.load_model(folder, device=device.device)
        return use_model(session, model, Path(folder).expanduser(), f"the model in {Path(folder).name}")

    @ui_errors
    def on_upload_model(session: ui.Session, path: str | None):
        if not path:
            raise gr.Error("Choose the .zip that *Download model* made.", print_exception=False)
        dest = session.new_dir("upload-model")
        extract_zip(path, dest)
        folder = ui.find_model_folder(dest)
        model = xfer.load_model(folder, device=device.device)
        return use_model(session, model, folder, f"the uploaded model {Path(path).name}")

    @ui_errors
    def on_download(session: ui.Session):
        model = _need_model(session)
        if session.model_dir is None:
            raise gr.Error("This model has no saved folder to download.", print_exception=False)
        name = ui.model_zip_name(model)
        return str(ui.zip_model_dir(session.model_dir, session.new_dir("download") / f"{name}.zip"))

    # ======================= Hub (owned by xfer.hub; imported lazily) =======================

    def _hub():
        try:
            from xfer import hub
        except ImportError as e:
            raise gr.Error(f"Hub support not installed ({e}): update xfer to a version with xfer.hub.",
                           print_exception=False) from None
        return hub

    @ui_errors
    def on_push(session: ui.Session, repo_id: str, private: bool, token: str):
        _need_model(session)
        repo_id = (repo_id or "").strip()
        if not repo_id:
            raise gr.Error("Type a repository id like your-name/flowers-classifier.", print_exception=False)
        if session.model_dir is None:
            raise gr.Error("This model has no saved folder to push.", print_exception=False)
        url, commit = _hub().push(session.model_dir, repo_id, token=(token or "").strip() or None,  # (url, commit_id)
                                  private=bool(private))
        return f"Pushed to [{url}]({url}) (commit `{str(commit)[:10]}`)."

    @ui_errors
    def on_pull(session: ui.Session, repo_id: str, revision: str, token: str):
        repo_id = (repo_id or "").strip()
        if not repo_id:
            raise gr.Error("Type the Hub repository id of an xfer model, like your-name/flowers-classifier.",
                           print_exception=False)
        model = _hub().pull(repo_id, revision=(revision or "").strip() or None, token=(token or "").strip() or None,
                            device=device.device)
        folder = xfer.save_model(model, session.workdir / "hub-model")  # so that it can be downloaded again
        return use_model(session, model, folder, f"{repo_id} from the Hub")

    # ======================= end of Hub handlers =======================

    # ---------------- layout ----------------

    with gr.Blocks(title="xfer studio", delete_cache=(3600, 24 * 3600)) as demo:
        session = gr.State(ui.Session(), delete_callback=lambda s: s.close())
        gr.Markdown(INTRO, elem_id="intro")
        with gr.Tabs(elem_id="steps") as tabs:
            with gr.Tab("1 · Data", id="data", elem_id="tab-data"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        gr.Markdown("### Choose your images")
                        flowers_btn = gr.Button("Use the bundled flowers (5 classes)", variant="primary",
                                                elem_id="use-flowers")
                        gr.Markdown("**or** upload a .zip with one folder of images per class "
                                    "(`flowers/daisy/*.jpg`, `flowers/roses/*.jpg`, …):")
                        zip_file = gr.File(label=f"Dataset .zip (up to {max_upload_mb} MB)",
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
                        data_summary = gr.Markdown("No dataset yet: pick one on the left.", elem_id="data-summary")
                        class_counts = gr.BarPlot(None, x="class", y="images", title="Images per class",
                                                  elem_id="class-counts", height=220, x_label_angle=-30,
                                                  y_lim=[0, None])
                        data_gallery = gr.Gallery(label="A few images of each class", columns=6, height=260,
                                                  object_fit="cover", elem_id="data-gallery", allow_preview=True)
                        with gr.Accordion("Skipped files and duplicates", open=False):
                            skipped_table = gr.Dataframe(ui.skipped_frame(None), elem_id="skipped-files",
                                                         interactive=False, wrap=True, max_height=300)
                        next_train = gr.Button("Next: 2 · Train →", size="md", elem_id="next-train")
            with gr.Tab("2 · Train", id="train", elem_id="tab-train"):
                gr.Markdown(f"Training runs on **{device.name}**.", elem_id="device-info")
                with gr.Row():
                    with gr.Column(scale=3):
                        backbone = gr.Dropdown([(backbone_label(b), b) for b in backbones], value=backbone0,
                                               label="Pretrained network (backbone)", elem_id="backbone")
                        backbone_md = gr.Markdown(weights_note(backbone0), elem_id="backbone-note")
                        advisor_md = gr.Markdown(ui.recommendation_markdown(None), elem_id="advisor")
                        strategy = gr.Radio(ui.strategy_choices(), value="head", label="Strategy", elem_id="strategy")
                        strategy_md = gr.Markdown(ui.strategy_markdown("head"), elem_id="strategy-explanation")
                    with gr.Column(scale=2):
                        with gr.Accordion("Settings", open=True):
                            epochs = gr.Slider(1, 50, value=d.epochs, step=1, label="Epochs", elem_id="epochs")
                            image_size = gr.Slider(32, 512, value=d.image_size, step=16, label="Image size (pixels)",
                                                   elem_id="image-size")
                            with gr.Row():
                                lr = gr.Number(value=ui.strategy_lr("head", d.lr), label="Learning rate",
                                               minimum=1e-6, elem_id="lr")
                                batch_size = gr.Number(value=d.batch_size, label="Batch size", precision=0,
                                                       minimum=1, maximum=1024, elem_id="batch-size")
                            max_per_class = gr.Number(
                                value=max_per_class0, precision=0, minimum=0, elem_id="max-per-class",
                                label="Use at most this many images per class (0 = all)",
                                info="A quick first run on a CPU; raise it or set 0 for the best accuracy.")
                            with gr.Row():
                                augment = gr.Checkbox(value=True, label="Augment (random crops and flips)",
                                                      elem_id="augment")
                                pretrained = gr.Checkbox(value=d.weights != "none", label="Start from ImageNet weights",
                                                         elem_id="pretrained")
                with gr.Row():
                    train_btn = gr.Button("▶ Train", variant="primary", elem_id="train-btn", scale=3)
                    stop_btn = gr.Button("■ Stop", variant="stop", elem_id="stop-btn", scale=1)
                progress_box = gr.HTML(ui.progress_html(0.0, "Not started."), elem_id="train-progress")
                train_status = gr.Markdown("Load a dataset in **1 · Data**, then press **Train**.",
                                           elem_id="train-status")
                with gr.Row():
                    # Start empty (None), never with an empty frame: Gradio's line plot takes its colour
                    # domain from the first data it draws, so the first data must hold both series.
                    loss_plot = gr.LinePlot(None, x="epoch", y="loss", color="series", title="Loss (lower is better)",
                                            elem_id="loss-plot", height=240)
                    acc_plot = gr.LinePlot(None, x="epoch", y="accuracy", color="series",
                                           title="Accuracy (higher is better)", elem_id="acc-plot", height=240,
                                           y_lim=[0, 1])
                next_evaluate = gr.Button("Next: 3 · Evaluate →", size="md", elem_id="next-evaluate")
            with gr.Tab("3 · Evaluate", id="evaluate", elem_id="tab-evaluate"):
                eval_summary = gr.Markdown(ui.metrics_markdown(None), elem_id="eval-summary")
                with gr.Row():
                    with gr.Column():
                        per_class_table = gr.Dataframe(ui.per_class_frame(None), label="Per class (validation)",
                                                       elem_id="per-class", interactive=False)
                        eval_btn = gr.Button("Evaluate the current model on the current dataset",
                                             elem_id="evaluate-btn")
                    confusion_plot = gr.Plot(label="Confusion matrix", elem_id="confusion")
                misclassified = gr.Gallery(label="Misclassified validation images (most confident mistakes first)",
                                           columns=6, height=300, object_fit="cover", elem_id="misclassified")
                next_predict = gr.Button("Next: 4 · Predict →", size="md", elem_id="next-predict")
            with gr.Tab("4 · Predict", id="predict", elem_id="tab-predict"):
                model_info = gr.Markdown(ui.model_markdown(None), elem_id="model-info")
                with gr.Row():
                    with gr.Column():
                        image_in = decoded_by_xfer(gr.Image(
                            sources=["upload", "clipboard", "webcam"], type="pil", height=300,
                            label="Your image (upload, paste or webcam)", elem_id="predict-image"))
                        predict_btn = gr.Button("Predict", variant="primary", elem_id="predict-btn")
                        examples = gr.Gallery(label="Or click an example from your dataset", columns=6, height=180,
                                              object_fit="cover", allow_preview=False, elem_id="predict-examples")
                    with gr.Column():
                        predict_label = gr.Label(num_top_classes=5, label="Top 5 classes", elem_id="predict-label")
                        gradcam_image = gr.Image(label="Where the model looked (Grad-CAM)", interactive=False,
                                                 height=300, elem_id="gradcam")
                with gr.Accordion("Use another model", open=False, elem_id="other-model"):
                    with gr.Row():
                        with gr.Column():
                            model_zip = gr.File(label=f"Upload a model .zip (up to {max_upload_mb} MB)",
                                                file_types=[".zip"], elem_id="upload-model", height=120)
                        with gr.Column(visible=allow_server_paths):
                            model_dir_box = gr.Textbox(label="…or the path of a model folder on this server",
                                                       placeholder="models/flowers", elem_id="model-dir")
                            load_dir_btn = gr.Button("Load model folder", elem_id="load-model-dir")
                        # ----- Hub: load (handlers above call xfer.hub.pull) -----
                        with gr.Column(elem_id="hub-pull"):
                            pull_repo = gr.Textbox(label="…or a model on the Hugging Face Hub",
                                                   placeholder="your-name/flowers-classifier", elem_id="pull-repo")
                            with gr.Row():
                                pull_revision = gr.Textbox(label="Revision (optional)", placeholder="main",
                                                           elem_id="pull-revision")
                                pull_token = gr.Textbox(label="Token (private repos)", type="password",
                                                        elem_id="pull-token")
                            pull_btn = gr.Button("Load from the Hub", elem_id="pull-btn")
            with gr.Tab("5 · Share", id="share", elem_id="tab-share"):
                gr.Markdown("### Download your model\nA .zip of the model folder: `model.safetensors` (weights), "
                            "`config.json` (classes, preprocessing, training settings, metrics) and `README.md` "
                            "(model card). Load it again with `xfer.load_model(folder)` or in **4 · Predict**.")
                with gr.Row():
                    download_btn = gr.Button("Download model (.zip)", variant="primary", elem_id="download-btn")
                    download_file = gr.File(label="Model .zip", interactive=False, elem_id="model-zip", height=90)
                # ----- Hub: share (handlers above call xfer.hub.push) -----
                with gr.Accordion("Share on the Hugging Face Hub", open=True, elem_id="hub-push"):
                    with gr.Row():
                        push_repo = gr.Textbox(label="Repository id", placeholder="your-name/flowers-classifier",
                                               elem_id="push-repo")
                        push_private = gr.Checkbox(value=True, label="Private repository", elem_id="push-private")
                        push_token = gr.Textbox(label="Hugging Face token (write access)", type="password",
                                                elem_id="push-token")
                    push_btn = gr.Button("Push to the Hub", elem_id="push-btn")
                    push_result = gr.Markdown(elem_id="push-result")
        gr.Markdown(f"Uploads: up to {max_upload_mb} MB per file. Your data and models stay in this session "
                    "and are deleted when you close the page.", elem_id="footer-note")

        # ---------------- events ----------------
        for button, target in ((next_train, "train"), (next_evaluate, "evaluate"), (next_predict, "predict")):
            button.click(lambda t=target: gr.Tabs(selected=t), None, tabs, queue=False, api_visibility="private")
        data_out = [data_summary, class_counts, data_gallery, skipped_table, examples, advisor_md]
        rec_out = [strategy, strategy_md, lr, advisor_md]
        eval_out = [eval_summary, per_class_table, confusion_plot, misclassified]
        model_out = [model_info, predict_label, gradcam_image, download_file, *eval_out]
        # Queue: training (and full evaluations) share one slot per device ("train", max_train_jobs);
        # data loading, prediction and the Hub each have their own so that they stay responsive meanwhile.
        data_kw = dict(concurrency_id="data", concurrency_limit=2,
                       show_progress_on=[data_summary])  # not a spinner (or an error badge) on every chart
        model_kw = dict(concurrency_id="data", concurrency_limit=2, show_progress_on=[model_info])
        predict_kw = dict(concurrency_id="predict", concurrency_limit=4)
        private = dict(api_visibility="private")

        for ev in (flowers_btn.click(on_use_flowers, [session], data_out, api_name="use_flowers", **data_kw),
                   zip_file.upload(on_upload_zip, [session, zip_file], data_out, api_name="upload_zip", **data_kw),
                   add_btn.click(on_add_images, [session, new_class, new_images], data_out + [new_class, new_images],
                                 api_name="add_images", **data_kw)):
            ev.success(on_recommend, [session, max_per_class], rec_out, show_progress="minimal",
                       concurrency_id="data", **private)
        clear_btn.click(on_clear_classes, [session], data_out, api_name="clear_classes", **data_kw)
        max_per_class.change(on_recommend, [session, max_per_class], rec_out, api_name="recommend",
                             trigger_mode="always_last", show_progress="minimal", concurrency_id="data")
        strategy.change(lambda name: (ui.strategy_markdown(name), ui.strategy_lr(name, d.lr)), [strategy],
                        [strategy_md, lr], queue=False, **private)
        gr.on([backbone.change, pretrained.change], weights_note, [backbone, pretrained], [backbone_md],
              queue=False, **private)

        train_event = train_btn.click(
            on_train, [session, backbone, strategy, epochs, lr, batch_size, image_size, augment, pretrained,
                       max_per_class],
            [progress_box, train_status, loss_plot, acc_plot, *model_out],
            api_name="train", concurrency_id="train", concurrency_limit=max_train_jobs,
            # Gradio's tracker only on the status line (it shows the queue position while another visitor's
            # run goes first); the progress bar and the curves are drawn by the handler.
            show_progress_on=[train_status])
        # The Event stops the training thread within a batch; `cancels` also drops a run still waiting in the
        # queue (and is all the page can do: Gradio's cancel alone leaves a running thread running).
        stop_btn.click(on_stop, [session], [train_status, progress_box], api_name="stop", cancels=[train_event],
                       concurrency_id="stop", concurrency_limit=None)
        eval_btn.click(on_evaluate, [session, max_per_class], eval_out, api_name="evaluate",
                       concurrency_id="train", concurrency_limit=max_train_jobs)

        predict_btn.click(on_predict, [session, image_in], [predict_label], api_name="predict", **predict_kw
                          ).success(on_explain, [session, image_in], [gradcam_image], api_name="explain",
                                    **predict_kw)
        image_in.upload(on_predict, [session, image_in], [predict_label], **predict_kw, **private
                        ).success(on_explain, [session, image_in], [gradcam_image], **predict_kw, **private)
        examples.select(on_example, [session], [image_in], **predict_kw, **private
                        ).success(on_predict, [session, image_in], [predict_label], **predict_kw, **private
                                  ).success(on_explain, [session, image_in], [gradcam_image], **predict_kw, **private)
        load_dir_btn.click(on_load_model_dir, [session, model_dir_box], model_out, api_name="load_model_dir",
                           **model_kw)
        model_zip.upload(on_upload_model, [session, model_zip], model_out, api_name="upload_model", **model_kw)
        download_btn.click(on_download, [session], [download_file], api_name="download_model",
                           concurrency_id="data", concurrency_limit=2)
        # ----- Hub events (xfer.hub is imported lazily inside the handlers) -----
        push_btn.click(on_push, [session, push_repo, push_private, push_token], [push_result], api_name="push",
                       concurrency_id="hub", concurrency_limit=2)
        pull_btn.click(on_pull, [session, pull_repo, pull_revision, pull_token], model_out, api_name="pull",
                       concurrency_id="hub", concurrency_limit=2, show_progress_on=[model_info])
    return demo


# --- command line -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="xfer studio: train an image classifier in the browser.")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="interface to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                   help="port (default: $GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    p.add_argument("--max-train-jobs", type=int, default=1,
                   help="training runs at the same time, over all visitors (default 1: one per GPU or CPU)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--max-upload-mb", type=int, default=MAX_UPLOAD_MB, help="largest upload, in MB (default 500)")
    p.add_argument("--allow-server-paths", choices=["auto", "yes", "no"], default="auto",
                   help="offer loading model folders by server path (auto: only when served on loopback, "
                        "without --share and not on a Hugging Face Space)")
    g = p.add_argument_group("initial values of the Train tab")
    g.add_argument("--default-backbone", default=None, help="default: vgg16 if its weights are here, else the fallback")
    g.add_argument("--default-image-size", type=int, default=224)
    g.add_argument("--default-weights", choices=["imagenet", "none"], default="imagenet")
    g.add_argument("--default-epochs", type=int, default=5)
    g.add_argument("--default-batch-size", type=int, default=32)
    g.add_argument("--default-max-per-class", type=int, default=None,
                   help="images per class used for training (default: 100 on CPU, all on GPU; 0 = all)")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.max_train_jobs < 1:
        raise SystemExit("--max-train-jobs must be at least 1")
    try:
        device = xfer.select_device(args.device)
    except xfer.XferError as e:
        raise SystemExit(f"error: {e}") from None
    xfer.device.configure_runtime(device)
    removed = ui.cleanup_stale_sessions()
    if removed:
        log.info("removed %d stale session folders", removed)
    defaults = AppDefaults(backbone=args.default_backbone, image_size=args.default_image_size,
                           weights=args.default_weights, epochs=args.default_epochs,
                           batch_size=args.default_batch_size, max_per_class=args.default_max_per_class)
    log.info("device: %s; at most %d training run(s) at a time", device.name, args.max_train_jobs)
    local_only = args.host in ("127.0.0.1", "localhost", "::1") and not args.share and not os.environ.get("SPACE_ID")
    allow_paths = args.allow_server_paths == "yes" or (args.allow_server_paths == "auto" and local_only)
    demo = build_demo(device, defaults, max_train_jobs=args.max_train_jobs, max_upload_mb=args.max_upload_mb,
                      allow_server_paths=allow_paths)
    ui.sessions_root().mkdir(parents=True, exist_ok=True)
    demo.queue(default_concurrency_limit=2, max_size=64).launch(
        server_name=args.host, server_port=args.port, share=args.share, max_file_size=f"{args.max_upload_mb}mb",
        allowed_paths=[str(ui.sessions_root())], css_paths=[ASSETS / "app.css"], show_error=False,
        footer_links=["api", "gradio"])


if __name__ == "__main__":
    main()
