"""Text that a visitor controls, or that must not tell a visitor about the server, made safe to show.

Class names, file names and error messages reach Markdown components and toasts (which render HTML);
neither may turn a visitor's string into a link, an image fetched from elsewhere, markup or math, and
no message may carry a server path (it names folders that other visitors could guess).
"""

from __future__ import annotations

import re
from html import escape

# What starts markup anywhere in a line (CommonMark lets any ASCII punctuation be backslash-escaped), and
# what starts it at a line's start (a list, a heading rule, a numbered list). ':' '@' '$' are written as
# entities, and the '.' of "www.": GFM autolinks "https://...", "www." and "a@b.c" in plain text, and
# Gradio's Markdown renders "$$...$$" as LaTeX; entities keep the characters, not their meaning.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]#|~^])")
_MD_LINE_START = re.compile(r"^(\s*)([-+=]|\d+(?=[.)]))")
_ENTITIES = {":": "&#58;", "@": "&#64;", "$": "&#36;"}
_WWW = re.compile(r"(www)\.", re.IGNORECASE)

# An absolute POSIX path (or a "~/" one): not right after a word character, ':' or '/', which keeps
# URLs (https://host/path), hf://user/name and fractions like 3/5 out.
_PATH = re.compile(r"(?<![\w:/~.-])(?:~|/(?=[\w.~-]))[^\s'\"`()<>,;]*")


def md_text(value: object) -> str:
    """``value`` as literal text inside Markdown (and the HTML it becomes): nothing in it is markup."""
    s = _MD_SPECIAL.sub(r"\\\1", str(value).replace("\n", " ").replace("\r", " "))
    s = _MD_LINE_START.sub(lambda m: m.group(1) + ("\\" + m.group(2) if not m.group(2).isdigit()
                                                  else m.group(2) + "\\"), s, count=1)
    # HTML last, and the entities with it: a backslash before their '#' would break them.
    s = "".join(_ENTITIES.get(c) or escape(c, quote=False) for c in s)
    return _WWW.sub(r"\1&#46;", s)


def html_text(value: object) -> str:
    """``value`` as literal text inside HTML (a toast renders its message as sanitised HTML)."""
    return escape(str(value), quote=False)


def without_server_paths(text: str) -> str:
    """``text`` with every absolute path replaced by its last part ("…/name"): a visitor may see the name
    of their own file, never where the server keeps it."""
    def short(m: re.Match) -> str:
        path = m.group(0).rstrip(".")
        tail = m.group(0)[len(path):]
        name = path.rstrip("/").rsplit("/", 1)[-1]
        return ("…/" + name if name and name != "~" else "…") + tail
    return _PATH.sub(short, text)
