"""What the app shows, computed without any UI toolkit: tables, plots, Markdown, the progress bar.

The tabs in :mod:`xfer.studio.tabs` hand these values to Gradio components; nothing here
imports gradio, so each view is testable on its own.
"""

from __future__ import annotations

import logging
from html import escape
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from PIL import Image

from ..data import DatasetReport, open_image, subsample
from ..errors import DataError
from ..model import XferModel
from ..nets.strategies import STRATEGIES
from .text import md_text

log = logging.getLogger(__name__)

THUMB_SIZE = 160
MAX_TICKS = 60  # classes named on the confusion matrix's axes


# --- datasets --------------------------------------------------------------------------------


def counts_frame(report: DatasetReport | None) -> pd.DataFrame:
    """Images per class, for a bar chart."""
    counts = report.counts if report else {}
    # Explicit dtypes: an empty frame would otherwise be "object", which plots take as categories.
    return pd.DataFrame({"class": pd.Series(list(counts), dtype=str),
                         "images": pd.Series(list(counts.values()), dtype="int64")})


def skipped_frame(report: DatasetReport | None) -> pd.DataFrame:
    """Every file that was not used, and why; then the groups of identical files, then of near-duplicates
    (resized or recompressed copies), each with the classes it spans."""
    rows = []
    if report:
        rows = [(_short(s.path, report.root), s.reason) for s in report.skipped]
        for groups, what in ((report.duplicates, "identical files"),
                             (report.near_duplicates, "near-duplicates (resized or recompressed copies)")):
            for group in groups:
                classes = sorted({Path(p).parent.name for p in group})
                where = f"classes {', '.join(classes)}" if len(classes) > 1 else f"class {classes[0]}"
                rows.append((", ".join(_short(p, report.root) for p in group), f"{what} in {where}"))
    return pd.DataFrame(rows, columns=["file", "reason"])


def _groups_line(groups: list[list[str]], what: str) -> str:
    """ "3 groups of identical files (1 across classes)." """
    cross = sum(1 for g in groups if len({Path(p).parent for p in g}) > 1)
    return (f"{len(groups)} group{'s' * (len(groups) != 1)} of {what}"
            f"{f' ({cross} across classes)' if cross else ' (all within a class)'}.")


def _short(path: str, root: Path) -> str:
    """A path relative to the dataset folder (visitors need not see the server's folders)."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return Path(path).name if "/" in path and ":" not in path else path


def report_markdown(report: DatasetReport, shown_root: str | None = None) -> str:
    """The dataset report as a few lines of Markdown."""
    counts = report.counts
    n = len(report.classes)
    lines = [f"**{report.num_images} images in {n} class{'es' * (n != 1)}** "
             f"({md_text(shown_root or report.root.name)})"]
    if counts:
        lines.append(", ".join(f"{md_text(c)}: {n}" for c, n in counts.items()))
    if report.skipped:
        lines.append(f"{len(report.skipped)} file{'s' * (len(report.skipped) != 1)} skipped "
                     "(see *Skipped files and duplicates* below).")
    if report.duplicates:
        lines.append(_groups_line(report.duplicates, "identical files"))
    if report.near_duplicates:
        lines.append(_groups_line(report.near_duplicates, "near-duplicate images (resized or recompressed "
                                                          "copies; kept on one side of the validation split)"))
    lines += [f"Warning: {md_text(w)}" for w in report.warnings]
    if len(report.classes) < 2:
        lines.append("**Training needs at least 2 classes: add another class.**")
    else:
        lines.append("Next: **2 · Train**.")
    return "\n\n".join(lines)


def thumbnail(source: Any, size: int = THUMB_SIZE) -> Image.Image:
    """A small RGB copy of an image (served to the browser instead of the original file)."""
    img = open_image(source, max_side=2 * size)
    img.thumbnail((size, size))
    return img


def sample_items(report: DatasetReport, per_class: int = 4, seed: int = 0) -> list[tuple[Path, str]]:
    """A few files of each class, with their class name, class by class."""
    return [(p, report.classes[i]) for p, i in subsample(report.items, per_class, seed=seed)]


def sample_gallery(items: Sequence[tuple[Path, str]], size: int = THUMB_SIZE) -> list[tuple[Image.Image, str]]:
    """Thumbnails with captions; a file that cannot be opened any more is left out."""
    out = []
    for path, caption in items:
        try:
            out.append((thumbnail(path, size), caption))
        except DataError as e:
            log.warning("gallery: %s", e)
    return out


# --- strategies and the advisor --------------------------------------------------------------


def strategy_choices() -> list[tuple[str, str]]:
    """(label, value) pairs for a radio: "head: Small data, similar domain"."""
    return [(f"{s.name} · {s.title}", s.name) for s in STRATEGIES.values()]


def strategy_markdown(name: str | None) -> str:
    s = STRATEGIES.get(name or "")
    if s is None:
        return ""
    return f"**{s.name}: {s.summary}**\n\n{s.explanation}"


def strategy_lr(name: str | None, fixed: float | None = None) -> float:
    """The learning rate field's value for a strategy: ``fixed`` if the app was given one, else the strategy's."""
    if fixed is not None:
        return fixed
    s = STRATEGIES.get(name or "")
    return s.lr if s is not None else STRATEGIES["head"].lr


def recommendation_markdown(rec: Any | None) -> str:
    if rec is None:
        return "The advisor recommends a strategy once a dataset is loaded."
    return f"**Recommended: {rec.strategy}** (pre-selected). {md_text(rec.reason)}"


# --- training progress ---------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


_PHASES = {"features": "computing features", "train": "training", "validate": "validating"}


def progress_text(event: Any) -> str:
    """One line about a :class:`xfer.Progress` event."""
    epoch = f"epoch {event.epoch}/{event.epochs} · " if event.epoch else ""
    extra = f" · loss {event.loss:.3f} · acc {event.accuracy:.0%}" if event.loss is not None else ""
    return (f"{epoch}{_PHASES.get(event.phase, event.phase)} {event.step}/{event.steps} · "
            f"{event.fraction:.0%} · {event.images_per_s:.1f} images/s · ETA {format_duration(event.eta_s)}{extra}")


def progress_html(fraction: float, text: str, state: str = "running") -> str:
    """A progress bar (plain HTML, styled by the app's CSS) with a line of text under it."""
    pct = max(0.0, min(1.0, fraction)) * 100
    return (f'<div class="xfer-progress xfer-{state}" data-fraction="{fraction:.4f}">'
            f'<div class="xfer-bar"><div class="xfer-fill" style="width:{pct:.1f}%"></div></div>'
            f'<div class="xfer-progress-text">{escape(text)}</div></div>')


def epoch_order(max_epochs: int) -> list[str]:
    """The epoch axis's categories in order ("1", "2", ...): a line plot's ``sort`` for :func:`history_frames`."""
    return [str(e) for e in range(1, max_epochs + 1)]


def history_frames(history: Sequence[Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Loss and accuracy curves in long format (epoch, value, series) for line plots.

    The epoch is a category ("1", "2", ...; order them with :func:`epoch_order`), not a number: a numeric
    axis gets ticks between epochs (1.5, 2.5) that no run has."""
    loss, acc = [], []
    for h in history:
        h = h if isinstance(h, dict) else vars(h)
        loss += [(h["epoch"], h["train_loss"], "train"), (h["epoch"], h["val_loss"], "validation")]
        acc += [(h["epoch"], h["train_accuracy"], "train"), (h["epoch"], h["val_accuracy"], "validation")]
    def frame(rows: list, name: str) -> pd.DataFrame:
        # Explicit dtypes: an empty frame would otherwise be "object", which plots take as categories.
        return pd.DataFrame({"epoch": pd.Series([str(int(r[0])) for r in rows], dtype=str),
                             name: pd.Series([r[1] for r in rows], dtype="float64"),
                             "series": pd.Series([r[2] for r in rows], dtype=str)})

    return frame(loss, "loss"), frame(acc, "accuracy")


# --- evaluation ----------------------------------------------------------------------------------


def metrics_markdown(metrics: dict[str, Any] | None, note: str = "", title: str = "Validation accuracy") -> str:
    if not metrics or metrics.get("accuracy") is None:
        return "No evaluation yet: train a model in **2 · Train** (or load one in **4 · Predict**)."
    per = metrics.get("per_class", {})
    worst = min(per.items(), key=lambda kv: kv[1]["recall"], default=None)
    lines = [f"**{title}: {metrics['accuracy']:.1%}** on {metrics.get('num_images', '?')} images."]
    if worst is not None and len(per) > 1:
        lines.append(f"Hardest class: {md_text(worst[0])} (recall {worst[1]['recall']:.0%}).")
    if note:
        lines.append(note)
    return "\n\n".join(lines)


def per_class_frame(metrics: dict[str, Any] | None) -> pd.DataFrame:
    rows = [(c, round(m["precision"], 3), round(m["recall"], 3), round(m["f1"], 3), int(m["support"]))
            for c, m in (metrics or {}).get("per_class", {}).items()]
    return pd.DataFrame(rows, columns=["class", "precision", "recall", "f1", "images"])


def confusion_figure(classes: Sequence[str], matrix: Sequence[Sequence[int]]):
    """A confusion matrix plot (rows: true class, columns: predicted), or None without data.

    Uses matplotlib's object API, not pyplot: figures made in server threads are never
    registered with a global figure manager.
    """
    if not classes or not matrix:
        return None
    import numpy as np
    from matplotlib.figure import Figure

    m = np.asarray(matrix, dtype=float)
    n = len(classes)
    side = min(3.0 + 0.55 * n, 12.0)
    fig = Figure(figsize=(side + 1.2, side), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="Blues", vmin=0)
    # Class names are text, never mathtext: a "$" in one would make matplotlib parse (and fail on) it.
    # Past MAX_TICKS classes the names are unreadable anyway and laying them out costs seconds.
    if n <= MAX_TICKS:
        ax.set_xticks(range(n), labels=list(classes), rotation=45, ha="right", parse_math=False)
        ax.set_yticks(range(n), labels=list(classes), parse_math=False)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 30:
        hi = m.max() if m.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=9,
                        color="white" if hi and m[i, j] > hi / 2 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def misclassified_items(evaluation: Any, limit: int = 24) -> list[tuple[str, str]]:
    """(file, "true → predicted (confidence)") for the most confident mistakes."""
    if evaluation is None:
        return []
    return [(w["image"], f"true: {w['true']} → predicted: {w['predicted']} ({w['confidence']:.0%})")
            for w in evaluation.misclassified[:limit]]


# --- models ------------------------------------------------------------------------------------


def model_markdown(model: XferModel | None, source: str = "") -> str:
    """What the Predict tab is using."""
    if model is None:
        return ("**No model yet.** Train one in **2 · Train**, or load a saved one under "
                "*Use another model* below.")
    acc = (model.metrics or {}).get("accuracy")
    acc_txt = f", validation accuracy {acc:.1%}" if acc is not None else ""
    classes = ", ".join(model.classes[:12]) + (" …" if len(model.classes) > 12 else "")
    return (f"**Using {md_text(source or 'a model')}**: {model.backbone}, strategy {model.strategy}, "
            f"{len(model.classes)} classes ({md_text(classes)}), {model.image_size} px{acc_txt}.")
