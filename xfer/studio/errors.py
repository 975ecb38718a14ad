"""Errors reach the visitor as one readable line: xfer errors keep their message, anything else is logged."""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Callable

import gradio as gr

from ..errors import HubError, WeightsError, XferError
from .text import html_text, without_server_paths

log = logging.getLogger("xfer.app")


def fail(message: str) -> gr.Error:
    """A visitor's mistake, as the one line the page shows (raise it): without server paths, and as text
    (the toast renders HTML, and the message may quote a visitor's file or class name)."""
    return gr.Error(html_text(without_server_paths(message)), print_exception=False)


def as_gr_error(e: BaseException) -> gr.Error:
    """The gr.Error a handler's exception becomes: the xfer message (with this page's advice) or a short note."""
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, WeightsError):
        return fail(f"{e} In this app you can also untick \"Start from ImageNet weights\".")
    if isinstance(e, HubError) and "token" in str(e).lower():
        return fail(f"{e} In this app: paste a token in the Token field.")
    if isinstance(e, XferError):
        return fail(str(e))
    log.error("unexpected error", exc_info=e)
    return fail(f"Something went wrong ({type(e).__name__}: {str(e)[:200]}). "
                "The details are in the server log; try again or change the settings.")


def ui_errors(fn: Callable) -> Callable:
    """Turn xfer errors into gr.Error (their one-line message) and anything else into a short gr.Error."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:
                raise as_gr_error(e) from None
        return gen

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise as_gr_error(e) from None
    return call
