"""5 · Share: download the model folder as a .zip, push it to the Hugging Face Hub.

On a Space the tab shows *Sign in with Hugging Face* (the README header asks for OAuth with the
``write-repos`` and ``manage-repos`` scopes): Gradio hands a signed-in visitor's token to the push and
pull handlers as a ``gr.OAuthToken`` and their profile as a ``gr.OAuthProfile``, whose namespace is the
default for the repo id. Off Spaces there is no button (Gradio's mocked login would need this machine's
own Hub login, and its token is a placeholder): the token field and ``HF_TOKEN`` work as they always did,
and an OAuth token, were one handed in, is ignored. A token is never stored, logged or shown.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ... import hub
from .. import zerogpu
from ..errors import fail, ui_errors
from ..session import AppConfig, Session, model_zip_name, zip_model_dir
from ..text import md_text
from . import DATA_QUEUE, HUB_QUEUE, PRIVATE, hand_out, need_model

MOCK_TOKEN = "mock-oauth-token-for-local-dev"  # what gradio.oauth's mocked login (off Spaces) hands out
SIGN_IN = "Sign in with Hugging Face (the button above) to push, or paste a token with write access."
NO_SIGN_IN = "Paste a Hugging Face token with write access to push (this Space offers no sign-in)."


def hub_token(typed: str | None, oauth_token: gr.OAuthToken | None) -> str | bool | None:
    """The credential for a Hub call: a typed token first; on a Space the signed-in visitor's token, else
    False (no token at all: never the Space's own ``HF_TOKEN``); off Spaces None (``HF_TOKEN`` or the
    cached login, as before; an OAuth token there can only be Gradio's mock and is never sent)."""
    typed = (typed or "").strip()
    if typed:
        return typed
    if not zerogpu.on_space():
        return None
    if oauth_token is not None and oauth_token.token and oauth_token.token != MOCK_TOKEN:
        return oauth_token.token
    return False


def default_repo_id(repo_id: str | None, model_name: str, profile: gr.OAuthProfile | None) -> str:
    """``repo_id`` as typed, in the signed-in visitor's namespace when it names none (or is empty)."""
    repo_id = (repo_id or "").strip()
    if profile is None or not zerogpu.on_space() or "/" in repo_id:
        return repo_id
    return f"{profile.username}/{repo_id or model_name}"

# --- handlers -------------------------------------------------------------------------------------


@ui_errors
def on_download(session: Session) -> str:
    """The path of a fresh .zip of the session's model folder."""
    model = need_model(session)
    if session.model_dir is None:
        raise fail("This model has no saved folder to download.")
    name = model_zip_name(model)
    dest = session.new_dir("download")
    served = hand_out(zip_model_dir(session.model_dir, dest / f"{name}.zip"))
    session.discard(dest)  # what the visitor downloads is Gradio's copy, in its cache
    return served


@ui_errors
def on_push(session: Session, repo_id: str, private: bool, token: str, oauth_token: gr.OAuthToken | None = None,
            profile: gr.OAuthProfile | None = None) -> str:
    """Push the session's model; Gradio fills in ``oauth_token`` and ``profile`` for a signed-in visitor."""
    model = need_model(session)
    repo_id = default_repo_id(repo_id, model_zip_name(model), profile)
    if not repo_id:
        raise fail("Type a repository id like your-name/flowers-classifier.")
    if session.model_dir is None:
        raise fail("This model has no saved folder to push.")
    credential = hub_token(token, oauth_token)
    if credential is False:
        raise fail(SIGN_IN if zerogpu.sign_in_available() else NO_SIGN_IN)
    url, commit = hub.push(session.model_dir, repo_id, token=credential, private=bool(private))
    return f"Pushed to [{url}]({url}) (commit `{str(commit)[:10]}`)."


def on_visit(profile: gr.OAuthProfile | None) -> tuple:
    """On page load (a sign-in reloads the page): the repo id's placeholder in the visitor's namespace."""
    if profile is None or not zerogpu.on_space():
        return gr.skip(), "Not signed in: sign in to push to your own account."
    return (gr.Textbox(placeholder=f"{profile.username}/flowers-classifier"),
            f"Signed in as **{md_text(profile.username)}**: a repository id without a namespace goes to your account.")


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
    login: gr.LoginButton | None = None  # on a Space only
    signed_in: gr.Markdown | None = None


def build(config: AppConfig) -> ShareTab:
    with gr.Tab("5 · Share", id="share", elem_id="tab-share"):
        gr.Markdown("### Download your model\nA .zip of the model folder: `model.safetensors` (weights), "
                    "`config.json` (classes, preprocessing, training settings, metrics) and `README.md` "
                    "(model card). Load it again with `xfer.load_model(folder)` or in **4 · Predict**.")
        with gr.Row():
            download_btn = gr.Button("Download model (.zip)", variant="primary", elem_id="download-btn")
            download_file = gr.File(label="Model .zip", interactive=False, elem_id="model-zip", height=90)
        with gr.Accordion("Share on the Hugging Face Hub", open=True, elem_id="hub-push"):
            login = signed_in = None
            if zerogpu.sign_in_available():
                with gr.Row():
                    login = gr.LoginButton(elem_id="hf-login")
                    signed_in = gr.Markdown(elem_id="hf-signed-in")
            with gr.Row():
                push_repo = gr.Textbox(label="Repository id", placeholder="your-name/flowers-classifier",
                                       elem_id="push-repo")
                push_private = gr.Checkbox(value=True, label="Private repository", elem_id="push-private")
                push_token = gr.Textbox(label="…or a Hugging Face token (write access)" if login else
                                        "Hugging Face token (write access)", type="password", elem_id="push-token")
            push_btn = gr.Button("Push to the Hub", elem_id="push-btn")
            push_result = gr.Markdown(elem_id="push-result")
    return ShareTab(download_btn, download_file, push_repo, push_private, push_token, push_btn, push_result, login,
                    signed_in)


def wire(tab: ShareTab, session: gr.State) -> None:
    tab.download_btn.click(on_download, [session], [tab.download_file], api_name="download_model", **DATA_QUEUE)
    tab.push_btn.click(on_push, [session, tab.push_repo, tab.push_private, tab.push_token], [tab.push_result],
                       api_name="push", **HUB_QUEUE)


def wire_visit(tab: ShareTab, demo: gr.Blocks) -> None:
    """With the sign-in button: greet the signed-in visitor on page load."""
    if tab.login is not None:
        demo.load(on_visit, None, [tab.push_repo, tab.signed_in], queue=False, **PRIVATE)
