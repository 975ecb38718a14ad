"""5 · Share: download the model folder as a .zip, push it to the Hugging Face Hub."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ... import hub
from ..errors import fail, ui_errors
from ..session import AppConfig, Session, model_zip_name, zip_model_dir
from . import DATA_QUEUE, HUB_QUEUE, need_model

# --- handlers -------------------------------------------------------------------------------------


@ui_errors
def on_download(session: Session) -> str:
    """The path of a fresh .zip of the session's model folder."""
    model = need_model(session)
    if session.model_dir is None:
        raise fail("This model has no saved folder to download.")
    name = model_zip_name(model)
    return str(zip_model_dir(session.model_dir, session.new_dir("download") / f"{name}.zip"))


@ui_errors
def on_push(session: Session, repo_id: str, private: bool, token: str) -> str:
    need_model(session)
    repo_id = (repo_id or "").strip()
    if not repo_id:
        raise fail("Type a repository id like your-name/flowers-classifier.")
    if session.model_dir is None:
        raise fail("This model has no saved folder to push.")
    url, commit = hub.push(session.model_dir, repo_id, token=(token or "").strip() or None, private=bool(private))
    return f"Pushed to [{url}]({url}) (commit `{str(commit)[:10]}`)."


# --- layout ---------------------------------------------------------------------------------------


@dataclass
class ShareTab:
    download_btn: gr.Button
    download_file: gr.File
    push_repo: gr.Textbox
    push_private: gr.Checkbox
    push_token: gr.Textbox
    push_btn: gr.Button
    push_result: gr.Markdown


def build(config: AppConfig) -> ShareTab:
    with gr.Tab("5 · Share", id="share", elem_id="tab-share"):
        gr.Markdown("### Download your model\nA .zip of the model folder: `model.safetensors` (weights), "
                    "`config.json` (classes, preprocessing, training settings, metrics) and `README.md` "
                    "(model card). Load it again with `xfer.load_model(folder)` or in **4 · Predict**.")
        with gr.Row():
            download_btn = gr.Button("Download model (.zip)", variant="primary", elem_id="download-btn")
            download_file = gr.File(label="Model .zip", interactive=False, elem_id="model-zip", height=90)
        with gr.Accordion("Share on the Hugging Face Hub", open=True, elem_id="hub-push"):
            with gr.Row():
                push_repo = gr.Textbox(label="Repository id", placeholder="your-name/flowers-classifier",
                                       elem_id="push-repo")
                push_private = gr.Checkbox(value=True, label="Private repository", elem_id="push-private")
                push_token = gr.Textbox(label="Hugging Face token (write access)", type="password",
                                        elem_id="push-token")
            push_btn = gr.Button("Push to the Hub", elem_id="push-btn")
            push_result = gr.Markdown(elem_id="push-result")
    return ShareTab(download_btn, download_file, push_repo, push_private, push_token, push_btn, push_result)


def wire(tab: ShareTab, session: gr.State) -> None:
    tab.download_btn.click(on_download, [session], [tab.download_file], api_name="download_model", **DATA_QUEUE)
    tab.push_btn.click(on_push, [session, tab.push_repo, tab.push_private, tab.push_token], [tab.push_result],
                       api_name="push", **HUB_QUEUE)
