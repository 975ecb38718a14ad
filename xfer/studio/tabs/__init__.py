"""One module per tab: ``build(config)`` lays out its components (a small dataclass), ``wire(tab, session)``
connects the events inside the tab, and module-level handlers ``(session, *values) -> values`` do the work.

The queue settings every tab shares are here, so that :func:`xfer.studio.build_demo` and the tabs agree.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from gradio.processing_utils import save_file_to_cache
from gradio.utils import get_upload_folder

from ...model import XferModel
from ..errors import fail
from ..session import Session

# Training (and full evaluations) share one slot per device ("train", max_train_jobs); data loading,
# prediction and the Hub each have their own, so that they stay responsive meanwhile.
DATA_QUEUE = dict(concurrency_id="data", concurrency_limit=2)
PREDICT_QUEUE = dict(concurrency_id="predict", concurrency_limit=4)
HUB_QUEUE = dict(concurrency_id="hub", concurrency_limit=2)
PRIVATE = dict(api_visibility="private")


def skip():
    """An output left as it is (a fresh update each time: Gradio may edit the dict it gets)."""
    return gr.skip()


def need_model(session: Session) -> XferModel:
    if session.model is None:
        raise fail("There is no model yet: train one in 2 · Train, or load one under \"Use another model\".")
    return session.model


def hand_out(path: Path) -> str:
    """A file of the session's folder as a visitor downloads it: a copy in Gradio's own file cache (served
    under a content-hash folder, as an attachment), the original removed. The visitor folders themselves
    are never served (they are not in ``allowed_paths``)."""
    served = save_file_to_cache(path, get_upload_folder())
    path.unlink(missing_ok=True)
    return served
