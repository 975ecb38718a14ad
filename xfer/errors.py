"""Exceptions raised by xfer.

Every error a user can cause is an :class:`XferError` whose message is one line
that says what went wrong and what to do. The CLI prints it; the app shows it as
a ``gr.Error``. Anything else escaping the library is a bug.
"""

from __future__ import annotations


class XferError(Exception):
    """Base class: a user-facing, one-line, actionable error."""

    def __init__(self, *args: object) -> None:
        # torch re-raises an error from a DataLoader worker as ``type(e)(message)`` with the worker's
        # whole traceback as the message; keep the one line the worker raised.
        if len(args) == 1 and isinstance(args[0], str):
            args = (_worker_message(args[0]),)
        super().__init__(*args)


def _worker_message(text: str) -> str:
    """The original message inside torch's "Caught X in DataLoader worker process N. Original Traceback ..."."""
    if not text.startswith("Caught ") or "\nOriginal Traceback" not in text:
        return text
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1].partition(": ")[2] or lines[-1]


class DataError(XferError):
    """The dataset, an archive or an image cannot be used."""


class WeightsError(XferError):
    """Pretrained weights cannot be found, fetched or loaded."""


class ModelError(XferError):
    """A saved model folder is missing, incomplete or inconsistent."""


class HubError(XferError):
    """Talking to the Hugging Face Hub failed."""


class ConfigError(XferError):
    """An argument has an unsupported value."""


class Cancelled(XferError):
    """Training was cancelled by the user; nothing was saved."""
