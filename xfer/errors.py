"""Exceptions raised by xfer.

Every error a user can cause is an :class:`XferError` whose message is one line
that says what went wrong and what to do. The CLI prints it; the app shows it as
a ``gr.Error``. Anything else escaping the library is a bug.
"""

from __future__ import annotations


class XferError(Exception):
    """Base class: a user-facing, one-line, actionable error."""


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
