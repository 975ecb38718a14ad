"""The endpoints that need no session: ``/classify``, ``/classify_batch``, ``/list_backbones``,
``/describe_model``. They are what Gradio's MCP server offers as tools (:func:`mcp_tools_without_state`
drops the session-bound ones), so their docstrings are written for an agent.

Hidden components give ``/classify`` Gradio's own image input (uploads, URLs, base64 through MCP) and
label output; the models come from one :class:`xfer.service.ModelCache` shared by every caller.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gradio as gr

from ..data import open_image
from ..errors import HubError, XferError
from ..nets.registry import get_backbone, list_backbones as registered_backbones, pretrained_available
from ..service import ModelCache, bearer_token
from .errors import fail, ui_errors
from .tabs.predict import decoded_by_xfer

log = logging.getLogger("xfer.app")

#: Stateless calls share one slot group, apart from training and from the visitors' own predictions.
CLASSIFY_QUEUE = dict(concurrency_id="classify", concurrency_limit=4)
MAX_BATCH = 32  # images per /classify_batch call


def label_value(top: dict[str, float]) -> dict[str, Any]:
    """gr.Label's value for a top-k dict, as /classify returns it: {"label", "confidences": [...]}."""
    return {"label": next(iter(top), None),
            "confidences": [{"label": k, "confidence": v} for k, v in top.items()]}


def caller_token(token: str | None, request: gr.Request | None) -> str | None:
    """The caller's token: the ``token`` argument, else an ``Authorization: Bearer`` header, else None."""
    if token and token.strip():
        return token.strip()
    headers = getattr(request, "headers", None)
    return bearer_token(headers.get("authorization")) if headers is not None else None


def _service_error(e: XferError) -> gr.Error:
    message = str(e)
    if isinstance(e, HubError) and "token" in message.lower():
        message += " Here: send the token as an Authorization: Bearer header, or pass it as `token`."
    return fail(message)


def _with_service_errors(fn):
    """xfer errors as the one line they are (with this API's advice on tokens); the rest via ui_errors."""
    import functools

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except XferError as e:
            raise _service_error(e) from None
    return ui_errors(call)


def build(cache: ModelCache) -> None:
    """Lay out the hidden inputs/outputs and register the four stateless endpoints (inside the Blocks)."""

    @_with_service_errors
    def classify(image: Any, model: str, token: str = "", request: gr.Request = None) -> dict[str, float]:
        """Classify one image with an xfer image classifier; returns the 5 most likely classes with probabilities.

        Args:
            image: The image to classify (a http(s) URL or a base64 data URL of a JPEG, PNG, WebP... image).
            model: Which classifier: a Hugging Face Hub repo id such as "user/flowers-classifier", optionally
                with a revision "user/flowers-classifier@v2" (branch, tag or commit), or the name of a model
                saved on this server. Use describe_model to see its classes first.
            token: Only for a private Hub repo: a Hugging Face token that may read it (better: send it as an
                Authorization: Bearer header). Leave empty for public models.
        Returns:
            The top class ("label") and up to 5 classes with their probabilities ("confidences").
        """
        if image is None:
            raise fail("Give the image to classify.")
        return cache.classify([image], model, caller_token(token, request), k=5)[0]

    @_with_service_errors
    def classify_batch(images: list | None, model: str, token: str = "",
                       request: gr.Request = None) -> list[dict[str, Any]]:
        """Classify several images (up to 32) with one xfer classifier; one top-5 result per image, in order.

        Args:
            images: The image files to classify.
            model: A Hugging Face Hub repo id ("user/name" or "user/name@revision"), or a model saved on this server.
            token: Only for a private Hub repo: a token that may read it (or an Authorization: Bearer header).
        Returns:
            A list with one {"label", "confidences"} per image.
        """
        paths = [getattr(p, "path", p) for p in (images or [])]
        if not paths:
            raise fail("Give at least one image to classify.")
        if len(paths) > MAX_BATCH:
            raise fail(f"{len(paths)} images: /classify_batch takes at most {MAX_BATCH} at a time.")
        opened = []
        for p in paths:
            try:
                opened.append(open_image(p, max_side=1024))
            except XferError as e:  # name the caller's file, never the server's temporary path
                raise fail(str(e).replace(str(p), Path(p).name)) from None
        return [label_value(top) for top in cache.classify(opened, model, caller_token(token, request), k=5)]

    @_with_service_errors
    def list_backbones() -> list[dict[str, Any]]:
        """The pretrained networks xfer can train a classifier on, with whether their ImageNet weights are here.

        Returns:
            One {"name", "title", "imagenet_weights_here", "notes"} per backbone, the default first.
        """
        out = []
        for name in registered_backbones():
            b = get_backbone(name)
            try:
                here = pretrained_available(name)
            except XferError:
                here = False
            out.append({"name": name, "title": b.title, "imagenet_weights_here": here, "notes": b.notes})
        return out

    @_with_service_errors
    def describe_model(model: str, token: str = "", request: gr.Request = None) -> dict[str, Any]:
        """Describe an xfer classifier: its classes, backbone, strategy, input size and validation accuracy.

        Args:
            model: A Hugging Face Hub repo id ("user/name" or "user/name@revision"), or a model saved on this server.
            token: Only for a private Hub repo: a token that may read it (or an Authorization: Bearer header).
        Returns:
            A dict with the model used (repo@commit), its classes, backbone, strategy, image_size and accuracy.
        """
        loaded, used = cache.get(model, caller_token(token, request))
        metrics = loaded.metrics or {}
        return {"model": used, "classes": list(loaded.classes), "num_classes": len(loaded.classes),
                "backbone": loaded.backbone, "strategy": loaded.strategy, "image_size": loaded.image_size,
                "pretrained_weights": loaded.weights, "accuracy": metrics.get("accuracy"),
                "num_train": (loaded.training or {}).get("num_train")}

    with gr.Column(visible=False, elem_id="service"):
        image = decoded_by_xfer(gr.Image(type="pil", label="image", sources=["upload"]))
        images = gr.File(file_count="multiple", file_types=["image"], label="images")
        model = gr.Textbox(label="model")
        token = gr.Textbox(label="token", value="", type="password")
        label = gr.Label(num_top_classes=5, label="top 5")
        results = gr.JSON(label="top 5 per image")
        trigger = gr.Button()
    kw = dict(show_progress="hidden", **CLASSIFY_QUEUE)
    trigger.click(classify, [image, model, token], [label], api_name="classify", **kw)
    trigger.click(classify_batch, [images, model, token], [results], api_name="classify_batch", **kw)
    gr.api(list_backbones, api_name="list_backbones", queue=False)
    # Through gr.api (typed, no component): the type hints are its schema.
    gr.api(describe_model, api_name="describe_model", **CLASSIFY_QUEUE)


def mcp_tools_without_state(demo: gr.Blocks) -> list[str]:
    """Keep only the endpoints without a gr.State input as MCP tools; returns the tools left.

    Gradio offers every public endpoint as a tool, but a tool's State input is always its initial value
    (an empty session), so the session-bound endpoints would do nothing useful for an agent. They stay
    public for gradio_client, whose calls keep a session.
    """
    server = getattr(demo, "mcp_server_obj", None)
    if server is None:
        return []
    kept = {}
    for tool, endpoint in server.tool_to_endpoint.items():
        fn = server.get_block_fn_from_endpoint_name(endpoint)
        if fn is not None and not any(isinstance(c, gr.State) for c in fn.inputs):
            kept[tool] = endpoint
    server.tool_to_endpoint = kept
    return sorted(kept)
