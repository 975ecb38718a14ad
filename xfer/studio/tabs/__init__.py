"""One module per tab: ``build(config)`` lays out its components (a small dataclass), ``wire(tab, session)``
connects the events inside the tab, and module-level handlers ``(session, *values) -> values`` do the work.

The queue settings every tab shares are here, so that :func:`xfer.studio.build_demo` and the tabs agree.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import gradio as gr
from gradio.processing_utils import save_file_to_cache
from gradio.utils import get_upload_folder

from ...errors import XferError
from ...model import XferModel
from ..errors import fail
from ..session import Session

# Training (and full evaluations) share one slot per device ("train", max_train_jobs); data loading,
# prediction and the Hub each have their own, so that they stay responsive meanwhile.
DATA_QUEUE = dict(concurrency_id="data", concurrency_limit=2)
PREDICT_QUEUE = dict(concurrency_id="predict", concurrency_limit=4)
HUB_QUEUE = dict(concurrency_id="hub", concurrency_limit=2)
PRIVATE = dict(api_visibility="private")

log = logging.getLogger(__name__)


def skip():
    """An output left as it is (a fresh update each time: Gradio may edit the dict it gets)."""
    return gr.skip()


def need_model(session: Session) -> XferModel:
    """The session's model, loaded again if the app's budget unloaded it; a one-line gr.Error if there is none
    (or its files are gone)."""
    try:
        model = session.loaded_model()
    except XferError as e:
        raise fail(str(e)) from None
    if model is None:
        raise fail("There is no model yet: train one in 2 · Train, or load one under \"Use another model\".")
    return model


def queued_at() -> float:
    """When the event being handled joined Gradio's queue (on the ``time.monotonic()`` clock, as Gradio's
    queue records it); now outside a server (tests call handlers directly) or if Gradio does not say.

    This is what lets Stop drop a Train that was clicked before it but waited in the queue: Gradio's own
    ``cancels`` only reaches the event the page started last."""
    try:
        from gradio.context import LocalContext

        event_id, blocks = LocalContext.event_id.get(None), LocalContext.blocks.get(None)
        queue = getattr(blocks, "_queue", None)
        event = queue.event_ids_to_events.get(event_id) if event_id and queue is not None else None
        if event is not None:
            return float(event.enqueue_time)
    except Exception as e:  # a Gradio without these internals: fall back to the handler's start
        log.debug("no enqueue time from gradio: %s", e)
    return time.monotonic()


def hand_out(path: Path) -> str:
    """A file of the session's folder as a visitor downloads it: a copy in Gradio's own file cache (served
    under a content-hash folder, as an attachment), the original removed. The visitor folders themselves
    are never served (they are not in ``allowed_paths``)."""
    served = save_file_to_cache(path, get_upload_folder())
    path.unlink(missing_ok=True)
    return served
