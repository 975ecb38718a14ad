"""xfer studio: the Gradio app, and the only part of xfer that imports gradio.

:func:`build_demo` lays out the five tabs (each built by its module in :mod:`xfer.studio.tabs`)
and wires the events that cross tabs, in one place; :func:`launch` serves it with the app's
queue settings. ``app.py`` parses the command line (:func:`parse_args`), chooses the device,
and calls these two. Nothing heavy happens at import.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import warnings
from pathlib import Path

import gradio as gr

from ..api import default_backbone
from ..device import DeviceInfo, select_device
from ..presets import PRESETS, get_preset
from ..service import MAX_MB, MAX_MODELS, ModelCache
from . import service
from .errors import ui_errors
from .session import (
    MAX_SESSION_MODEL_MB,
    MAX_SESSION_MODELS,
    MAX_SESSIONS_DISK_MB,
    MAX_UPLOAD_MB,
    AppConfig,
    AppDefaults,
    Session,
    VisitorBudget,
    cleanup_stale_sessions,
    sessions_root,
)
from .tabs import DATA_QUEUE, HUB_QUEUE, PRIVATE, data, evaluate, predict, share, train

__all__ = ["AppConfig", "AppDefaults", "Session", "VisitorBudget", "build_demo", "launch", "parse_args", "ui_errors"]

log = logging.getLogger("xfer.app")

CSS = Path(__file__).resolve().parents[2] / "assets" / "app.css"  # the checkout's assets/ (the Space's too)

INTRO = """# xfer studio: teach a computer to recognise your images
Transfer learning reuses a network pretrained on ImageNet's millions of photos, so a few hundred of your
images are enough. Go through the tabs from left to right:
**1 Data → 2 Train → 3 Evaluate → 4 Predict → 5 Share**.
The defaults work: click **Use the bundled flowers**, then **Train**."""


def app_config(device: DeviceInfo, defaults: AppDefaults | None, max_train_jobs: int, max_upload_mb: int,
               allow_server_paths: bool, max_session_models: int = MAX_SESSION_MODELS,
               max_session_model_mb: int = MAX_SESSION_MODEL_MB,
               max_sessions_disk_mb: int = MAX_SESSIONS_DISK_MB) -> AppConfig:
    """The settings every handler reads (with the visitors' shared budget); the default backbone (and why) is
    found out here, once."""
    d, note = defaults or AppDefaults(), None
    preset = get_preset(d.preset)  # a wrong --default-preset fails here, at start-up
    if not d.backbone:
        backbone, note = (preset.backbone, None) if preset.backbone else default_backbone()
        d = dataclasses.replace(d, backbone=backbone)
    return AppConfig(device, d, max_train_jobs, max_upload_mb, allow_server_paths, note, max_session_models,
                     max_session_model_mb, max_sessions_disk_mb)


def build_demo(device: DeviceInfo | None = None, defaults: AppDefaults | None = None, max_train_jobs: int = 1,
               max_upload_mb: int = MAX_UPLOAD_MB, allow_server_paths: bool = True,
               models_dir: str | os.PathLike | None = "models", cache_models: int = MAX_MODELS,
               cache_mb: int = MAX_MB, session_models: int = MAX_SESSION_MODELS,
               session_model_mb: int = MAX_SESSION_MODEL_MB, sessions_disk_mb: int = MAX_SESSIONS_DISK_MB) -> gr.Blocks:
    """Build the app's Blocks. ``device`` is chosen once by the caller (default: "auto");
    ``max_upload_mb`` is only stated here: pass the same limit to ``launch(max_file_size=...)``.
    ``allow_server_paths`` offers "load a model folder on this server": off for public deployments,
    where it would let visitors probe the server's files. With it, ``/classify`` also takes the name of a
    model in ``models_dir``; its models stay in memory within ``cache_models`` and ``cache_mb``. The visitors'
    sessions together keep at most ``session_models`` models (``session_model_mb`` MB) in memory and
    ``sessions_disk_mb`` MB of files (``config.budget``, a :class:`VisitorBudget`)."""
    config = app_config(device or select_device("auto"), defaults, max_train_jobs, max_upload_mb, allow_server_paths,
                        session_models, session_model_mb, sessions_disk_mb)
    cache = ModelCache(config.device.device, max_models=cache_models, max_mb=cache_mb,
                       models_dir=models_dir if allow_server_paths else None)
    with gr.Blocks(title="xfer studio", delete_cache=(3600, 24 * 3600)) as demo:
        session = gr.State(Session(config), delete_callback=lambda s: s.close())
        gr.Markdown(INTRO, elem_id="intro")
        with gr.Tabs(elem_id="steps") as tabs:
            data_tab, train_tab = data.build(config), train.build(config)
            eval_tab, predict_tab, share_tab = evaluate.build(config), predict.build(config), share.build(config)
        gr.Markdown(f"Uploads: up to {max_upload_mb} MB per file. Your data and models stay in this session "
                    "and are deleted when you close the page.", elem_id="footer-note")
        for button, target in ((data_tab.next_btn, "train"), (train_tab.next_btn, "evaluate"),
                               (eval_tab.next_btn, "predict")):
            button.click(lambda t=target: gr.Tabs(selected=t), None, tabs, queue=False, **PRIVATE)
        train.wire(train_tab, session)
        predict.wire(predict_tab, session)
        share.wire(share_tab, session)
        share.wire_visit(share_tab, demo)
        _wire_data(session, data_tab, train_tab, predict_tab)
        model_outputs = [predict_tab.model_info, predict_tab.label, predict_tab.gradcam, share_tab.download_file,
                         *eval_tab.outputs]
        _wire_training(session, config, train_tab, eval_tab, model_outputs)
        _wire_models(session, predict_tab, model_outputs)
        service.build(cache)  # /classify and the other endpoints without a session (the MCP tools)
        _wire_session_end(demo, session)
    return demo


def _wire_session_end(demo: gr.Blocks, session: gr.State) -> None:
    """A visitor's session is closed (run stopped, model released, folder deleted) as soon as their page
    closes or reloads (Gradio's unload: the page's heartbeat connection ended), not when Gradio expires the
    State an hour later; the State's delete callback stays as the fallback."""
    # Gradio arms a State's expiry (and so its delete callback) only once an event has written the State;
    # the tabs only read the session, so the page's load writes it back once.
    demo.load(lambda s: s, [session], [session], queue=False, show_progress="hidden", **PRIVATE)

    def close_visitor(request: gr.Request) -> None:
        visitor = visitor_session(demo, session, getattr(request, "session_hash", None))
        if visitor is not None:
            log.info("page closed: closing session %s", visitor.id[:8])
            visitor.close()

    demo.unload(close_visitor)


def visitor_session(demo: gr.Blocks, session: gr.State, session_hash: str | None) -> Session | None:
    """The Session that the page ``session_hash`` holds in ``session`` (None: none made yet, or no server).

    Reads Gradio's state holder without creating anything: a page that never used its session has none."""
    holder = getattr(demo, "state_holder", None)
    data = getattr(holder, "session_data", {}).get(session_hash) if session_hash else None
    value = getattr(data, "state_data", {}).get(session._id) if data is not None else None
    return value if isinstance(value, Session) else None


def _wire_data(session: gr.State, d: data.DataTab, t: train.TrainTab, p: predict.PredictTab) -> None:
    """Loading data updates the Predict tab's examples and asks the advisor (Train tab) for a strategy."""
    data_outputs = [d.summary, d.counts, d.gallery, d.skipped, p.examples, t.advisor]  # data.DataValues
    rec_outputs = [t.strategy, t.strategy_md, t.lr, t.advisor, t.preset_md]  # train.RecValues
    data_kw = dict(**DATA_QUEUE, show_progress_on=[d.summary])  # not a spinner (or an error badge) on every chart
    for ev in (d.flowers_btn.click(data.on_use_flowers, [session], data_outputs, api_name="use_flowers", **data_kw),
               d.zip_file.upload(data.on_upload_zip, [session, d.zip_file], data_outputs, api_name="upload_zip",
                                 **data_kw),
               d.add_btn.click(data.on_add_images, [session, d.new_class, d.new_images],
                               data_outputs + [d.new_class, d.new_images], api_name="add_images", **data_kw)):
        ev.success(train.on_recommend, [session, t.max_per_class, t.preset], rec_outputs, show_progress="minimal",
                   concurrency_id="data", **PRIVATE)
    d.clear_btn.click(data.on_clear_classes, [session], data_outputs, api_name="clear_classes", **data_kw)
    t.max_per_class.change(train.on_recommend, [session, t.max_per_class, t.preset], rec_outputs, api_name="recommend",
                           trigger_mode="always_last", show_progress="minimal", concurrency_id="data")


def _wire_training(session: gr.State, config: AppConfig, t: train.TrainTab, e: evaluate.EvaluateTab,
                   model_outputs: list) -> None:
    """Train, Stop and Evaluate: one slot group per device ("train", max_train_jobs, over all visitors)."""
    slots = dict(concurrency_id="train", concurrency_limit=config.max_train_jobs)
    train_event = t.train_btn.click(
        train.on_train, [session, *t.settings], [t.progress, t.status, t.loss_plot, t.acc_plot, *model_outputs],
        api_name="train", **slots,
        # Gradio's tracker only on the status line (it shows the queue position while another visitor's
        # run goes first); the progress bar and the curves are drawn by the handler.
        show_progress_on=[t.status])
    # Stop ends the run after its current batch; `cancels` also drops a run still waiting in the queue
    # (and is all the page can do: Gradio's cancel alone leaves a running thread running).
    t.stop_btn.click(train.on_stop, [session], [t.status, t.progress], api_name="stop", cancels=[train_event],
                     concurrency_id="stop", concurrency_limit=None)
    e.eval_btn.click(evaluate.on_evaluate, [session, t.max_per_class], e.outputs, api_name="evaluate", **slots)


def _wire_models(session: gr.State, p: predict.PredictTab, model_outputs: list) -> None:
    """A model from a folder, a zip or the Hub replaces the session's model and its Evaluate and Share views."""
    model_kw = dict(**DATA_QUEUE, show_progress_on=[p.model_info])
    p.load_dir_btn.click(predict.on_load_model_dir, [session, p.model_dir], model_outputs, api_name="load_model_dir",
                         **model_kw)
    p.model_zip.upload(predict.on_upload_model, [session, p.model_zip], model_outputs, api_name="upload_model",
                       **model_kw)
    p.pull_btn.click(predict.on_pull, [session, p.pull_repo, p.pull_revision, p.pull_token], model_outputs,
                     api_name="pull", **HUB_QUEUE, show_progress_on=[p.model_info])


# --- serving ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The app's command line (``python app.py --help``)."""
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
    g = p.add_argument_group("initial values of the Train tab (not given: the preset's)")
    g.add_argument("--default-preset", choices=list(PRESETS), default=AppDefaults.preset,
                   help=f"the preset selected at first (default {AppDefaults.preset}; `python -m xfer presets`)")
    g.add_argument("--default-backbone", default=None, help="default: the preset's")
    g.add_argument("--default-image-size", type=int, default=None)
    g.add_argument("--default-weights", choices=["imagenet", "none"], default="imagenet")
    g.add_argument("--default-epochs", type=int, default=None)
    g.add_argument("--default-batch-size", type=int, default=32)
    g.add_argument("--default-max-per-class", type=int, default=None,
                   help="images per class used for training (default: the preset's, all; 0 = all)")
    s = p.add_argument_group("/classify and the MCP tools (no session)")
    s.add_argument("--models-dir", default="models",
                   help="where /classify finds server models by name, when server paths are allowed (default: models)")
    s.add_argument("--classify-cache-models", type=int, default=MAX_MODELS,
                   help=f"models /classify keeps in memory (default {MAX_MODELS})")
    s.add_argument("--classify-cache-mb", type=int, default=MAX_MB,
                   help=f"memory for those models, in MB (default {MAX_MB})")
    s.add_argument("--no-mcp", dest="mcp", action="store_false", help="do not serve the MCP server")
    v = p.add_argument_group("all visitors' sessions together (least recently used models are unloaded first)")
    v.add_argument("--session-models", type=int, default=MAX_SESSION_MODELS,
                   help=f"visitors' models kept in memory (default {MAX_SESSION_MODELS})")
    v.add_argument("--session-model-mb", type=int, default=MAX_SESSION_MODEL_MB,
                   help=f"memory for those models, in MB (default {MAX_SESSION_MODEL_MB})")
    v.add_argument("--sessions-disk-mb", type=int, default=MAX_SESSIONS_DISK_MB,
                   help=f"disk for visitors' uploads and models, in MB; uploads beyond it are refused "
                        f"(default {MAX_SESSIONS_DISK_MB})")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def defaults_from(args: argparse.Namespace) -> AppDefaults:
    return AppDefaults(preset=args.default_preset, backbone=args.default_backbone, image_size=args.default_image_size,
                       weights=args.default_weights, epochs=args.default_epochs,
                       batch_size=args.default_batch_size, max_per_class=args.default_max_per_class)


def server_paths_allowed(args: argparse.Namespace) -> bool:
    """--allow-server-paths: "auto" only when served on loopback, without --share and not on a Space."""
    local_only = args.host in ("127.0.0.1", "localhost", "::1") and not args.share and not os.environ.get("SPACE_ID")
    return args.allow_server_paths == "yes" or (args.allow_server_paths == "auto" and local_only)


def launch(demo: gr.Blocks, args: argparse.Namespace) -> None:
    """Serve ``demo`` with the app's queue (2 events at a time by default, 64 waiting) until interrupted."""
    removed = cleanup_stale_sessions()
    if removed:
        log.info("removed %d stale session folders", removed)
    sessions_root().mkdir(parents=True, exist_ok=True)
    mcp = getattr(args, "mcp", True)
    with warnings.catch_warnings():  # about the session-bound tools, which are dropped right after
        warnings.filterwarnings("ignore", message=".*gr.State input.*")
        demo.queue(default_concurrency_limit=2, max_size=64).launch(
            server_name=args.host, server_port=args.port, share=args.share, max_file_size=f"{args.max_upload_mb}mb",
            # Visitors' folders are never served, not even a file a handler returns by mistake: what
            # the app hands out is copied into Gradio's cache first (tabs.hand_out, PIL images).
            blocked_paths=[str(sessions_root())], css_paths=[CSS] if CSS.is_file() else None, show_error=False,
            footer_links=["api", "gradio"], mcp_server=mcp, prevent_thread_lock=True)
    if mcp:
        log.info("MCP tools: %s", ", ".join(service.mcp_tools_without_state(demo)))
    demo.block_thread()
