"""What a visitor controls, shown as text: class names and file names in Markdown and toasts, server paths
kept out of messages, "$" in class names on the confusion matrix (without a server: the views and handlers)."""

from __future__ import annotations

import html
import io
import re

import pytest
from markdown_it import MarkdownIt

from xfer.studio import views
from xfer.studio.session import AppConfig
from xfer.studio.tabs import train
from xfer.studio.text import html_text, md_text, without_server_paths

HOSTILE = [
    "[Session expired, sign in](https://evil.example/login)",
    "![x](https://evil.example/pixel.png)",
    "https://evil.example and www.evil.example and mail@evil.example",
    "<img src=x onerror=alert(1)> & <b>bold</b>",
    "**bold** _it_ `code` # heading | table | ~~gone~~",
    "$$\\frac{1}{0}$$ and $x$",
    "it's \"quoted\" \\ back\\slash 1. 2) - + ! {braces}",
    "café Cat\nnewline",
    "- a list item", "1. first", "2) second", "# heading", "+ plus", "===", "> quote",
]


def _visible(rendered: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", rendered)).strip()


@pytest.mark.parametrize("name", HOSTILE)
def test_class_names_are_text_in_markdown(name):
    md = MarkdownIt("commonmark").enable("table").enable("strikethrough")
    for line in (f"classes: {md_text(name)}", md_text(name)):  # mid-line, and where a line starts
        rendered = md.render(line)
        assert not re.search(r"<(a|img|strong|em|code|h\d|table|s|del|b|script|ul|ol|li|blockquote|hr)\b",
                             rendered), rendered
        assert _visible(rendered) == line.split(": ")[0] * line.startswith("classes") + (
            ": " * line.startswith("classes")) + name.replace("\n", " ")
    # GFM's extended autolinks ("https://", "www.", "a@b") and Gradio's "$$" LaTeX never see their trigger.
    assert not re.search(r"https?:|www\.|@|\$", md_text(name)), md_text(name)


def test_toast_messages_are_text():
    assert html_text("<img src=x> & 'it'") == "&lt;img src=x&gt; &amp; 'it'"


@pytest.mark.parametrize("text, shown", [
    ("Cannot read /root/.cache/xfer/sessions/ab12/upload-model-x1/model/config.json: bad.",
     "Cannot read …/config.json: bad."),
    ("put https://download.pytorch.org/models/vgg16-397923af.pth at /home/u/.cache/torch/vgg16-397923af.pth.",
     "put https://download.pytorch.org/models/vgg16-397923af.pth at …/vgg16-397923af.pth."),
    ("folder ~/.cache/xfer is not there", "folder …/xfer is not there"),
    ("'/tmp/x/my photos.zip' is not a zip", "'…/my photos.zip' is not a zip"),
    ("hf://alice/flowers@main: 3/5 files, 1.5/2 MB", "hf://alice/flowers@main: 3/5 files, 1.5/2 MB"),
])
def test_messages_carry_no_server_path(text, shown):
    assert without_server_paths(text) == shown


def test_the_backbone_note_shows_no_server_path():
    note = ("VGG-16's ImageNet weights are not downloaded, so efficientnet_lite0 is used. For VGG-16, put "
            "https://download.pytorch.org/models/vgg16-397923af.pth at /root/.cache/torch/hub/checkpoints/"
            "vgg16-397923af.pth.")
    config = AppConfig(backbone_note=note)
    shown = train.weights_note(config, config.defaults.backbone, pretrained=False)
    assert "/root" not in shown and ".cache" not in shown and "vgg16-397923af" in shown, shown


def test_confusion_matrix_names_with_dollars_are_text():
    """matplotlib would parse "$^$" as mathtext and fail when the figure is drawn (the app's generic error)."""
    fig = views.confusion_figure(["$^$", "cost $_$", "ok"], [[2, 0, 0], [0, 1, 1], [0, 0, 3]])
    fig.savefig(io.BytesIO(), format="png")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["$^$", "cost $_$", "ok"]


def test_a_huge_confusion_matrix_is_drawn_without_its_names():
    n = 500
    fig = views.confusion_figure([f"c{i}" for i in range(n)], [[int(i == j) for j in range(n)] for i in range(n)])
    fig.savefig(io.BytesIO(), format="png", dpi=30)
    assert not [t for t in fig.axes[0].get_xticklabels() if t.get_text().startswith("c")]  # numbers, not names
