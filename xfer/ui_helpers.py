"""What the app shows, computed without any UI toolkit: per-session workspaces, tables, plots, text.

``app.py`` wires Gradio widgets to these functions; keeping them here (no gradio
import) makes them testable on their own and reusable by another front end.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
import zipfile
from html import escape
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from PIL import Image

from .data import DatasetReport, cache_dir, open_image, subsample
from .errors import DataError, ModelError
from .model import CONFIG_NAME, XferModel
from .nets.strategies import STRATEGIES

log = logging.getLogger(__name__)

THUMB_SIZE = 160


# --- per-session workspace ------------------------------------------------------------------


def sessions_root() -> Path:
    """Where per-visitor folders live: ``<cache_dir>/sessions``."""
    return cache_dir() / "sessions"


class Session:
    """One visitor's state: their dataset, their model, their cancel flag, their folder.

    Lives in a ``gr.State``; Gradio deep-copies a State's initial value for every
    visitor, so ``__deepcopy__`` hands out a fresh, empty session (threading objects
    cannot be copied, and nothing may be shared between visitors). A plain class, not a
    dataclass: Gradio serialises dataclass values field by field.
    """

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex
        self.report: DatasetReport | None = None
        self.model: XferModel | None = None
        self.model_dir: Path | None = None
        self.model_source = ""
        self.similarity: Any = "unset"  # the advisor's measurement of ``report``: SimilarityStats, None or "unset"
        self.example_paths: list[Path] = []
        self.cancel = threading.Event()
        self.training = False
        self.last_outcome: str | None = None  # of the last training run: "done", "stopped" or "error"
        self.progress = 0.0  # fraction of the current (or last) training run done
        self._workdir: Path | None = None

    def __repr__(self) -> str:
        classes = self.report.classes if self.report else None
        return f"Session({self.id[:8]}, classes={classes}, model={self.model is not None})"

    def __deepcopy__(self, memo: dict) -> "Session":
        return Session()

    @property
    def workdir(self) -> Path:
        """The session's folder, created on first use (never at page load)."""
        if self._workdir is None:
            self._workdir = sessions_root() / self.id
            self._workdir.mkdir(parents=True, exist_ok=True)
            _housekeeping()
        return self._workdir

    def new_dir(self, prefix: str) -> Path:
        """A new, empty sub-folder of the workspace (uploads never overwrite each other)."""
        d = self.workdir / f"{prefix}-{uuid.uuid4().hex[:8]}"
        d.mkdir(parents=True)
        return d

    @property
    def trained_model_dir(self) -> Path:
        """Where a model trained in this session is saved (replaced atomically on success only)."""
        return self.workdir / "model"

    def set_dataset(self, report: DatasetReport) -> None:
        self.report = report
        self.similarity = "unset"

    def close(self) -> None:
        """Stop any training and delete the session's folder."""
        self.cancel.set()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            log.info("deleted session folder %s", self._workdir)
            self._workdir = None


_LAST_CLEANUP = [0.0]  # server-wide housekeeping clock (monotonic), not visitor state
CLEANUP_EVERY_S = 3600.0


def _housekeeping() -> None:
    """At most once an hour, when a visitor's folder is first made: remove stale ones.

    Visitors whose page never closes properly (API clients, killed browsers) never trigger
    the State's delete callback; without this their folders would wait for a server restart.
    """
    now = time.monotonic()
    if now - _LAST_CLEANUP[0] < CLEANUP_EVERY_S and _LAST_CLEANUP[0]:
        return
    _LAST_CLEANUP[0] = now
    removed = cleanup_stale_sessions()
    if removed:
        log.info("removed %d stale session folders", removed)


def cleanup_stale_sessions(max_age_s: float = 24 * 3600) -> int:
    """Delete session folders untouched for ``max_age_s`` (left by a crash or a killed server)."""
    root = sessions_root()
    if not root.is_dir():
        return 0
    now, removed = time.time(), 0
    for d in root.iterdir():
        try:
            if d.is_dir() and now - d.stat().st_mtime > max_age_s:
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    return removed


# --- datasets --------------------------------------------------------------------------------


def cap_per_class(report: DatasetReport, per_class: int | None, seed: int = 0) -> DatasetReport:
    """The same dataset with at most ``per_class`` images per class (0 or None: all of them)."""
    if not per_class or per_class <= 0 or all(n <= per_class for n in report.counts.values()):
        return report
    items = sorted(subsample(report.items, int(per_class), seed=seed), key=lambda t: (t[1], str(t[0])))
    return DatasetReport(root=report.root, classes=list(report.classes), items=items,
                         skipped=report.skipped, duplicates=report.duplicates, warnings=report.warnings)


def counts_frame(report: DatasetReport | None) -> pd.DataFrame:
    """Images per class, for a bar chart."""
    counts = report.counts if report else {}
    # Explicit dtypes: an empty frame would otherwise be "object", which plots take as categories.
    return pd.DataFrame({"class": pd.Series(list(counts), dtype=str),
                         "images": pd.Series(list(counts.values()), dtype="int64")})


def skipped_frame(report: DatasetReport | None) -> pd.DataFrame:
    """Every file that was not used, and why; then the groups of identical files."""
    rows = []
    if report:
        rows = [(_short(s.path, report.root), s.reason) for s in report.skipped]
        for group in report.duplicates:
            classes = sorted({Path(p).parent.name for p in group})
            where = f"classes {', '.join(classes)}" if len(classes) > 1 else f"class {classes[0]}"
            what = f"identical files in {where}"
            rows.append((", ".join(_short(p, report.root) for p in group), what))
    return pd.DataFrame(rows, columns=["file", "reason"])


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
             f"({escape(shown_root or report.root.name)})"]
    if counts:
        lines.append(", ".join(f"{escape(c)}: {n}" for c, n in counts.items()))
    if report.skipped:
        lines.append(f"{len(report.skipped)} file{'s' * (len(report.skipped) != 1)} skipped "
                     "(see *Skipped files and duplicates* below).")
    if report.duplicates:
        cross = sum(1 for g in report.duplicates if len({Path(p).parent for p in g}) > 1)
        lines.append(f"{len(report.duplicates)} group{'s' * (len(report.duplicates) != 1)} of identical files"
                     f"{f' ({cross} across classes)' if cross else ''}.")
    lines += [f"Warning: {escape(w)}" for w in report.warnings]
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
    return f"**Recommended: {rec.strategy}** (pre-selected). {escape(rec.reason)}"


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


def history_frames(history: Sequence[Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Loss and accuracy curves in long format (epoch, value, series) for line plots."""
    loss, acc = [], []
    for h in history:
        h = h if isinstance(h, dict) else vars(h)
        loss += [(h["epoch"], h["train_loss"], "train"), (h["epoch"], h["val_loss"], "validation")]
        acc += [(h["epoch"], h["train_accuracy"], "train"), (h["epoch"], h["val_accuracy"], "validation")]
    def frame(rows: list, name: str) -> pd.DataFrame:
        # Explicit dtypes: an empty frame would otherwise be "object", which plots take as categories.
        return pd.DataFrame({"epoch": pd.Series([r[0] for r in rows], dtype="int64"),
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
        lines.append(f"Hardest class: {escape(worst[0])} (recall {worst[1]['recall']:.0%}).")
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
    ax.set_xticks(range(n), labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(classes))
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
    return (f"**Using {escape(source or 'a model')}**: {model.backbone}, strategy {model.strategy}, "
            f"{len(model.classes)} classes ({escape(classes)}), {model.image_size} px{acc_txt}.")


def find_model_folder(root: Path) -> Path:
    """The folder holding config.json in an extracted model zip (the root or one level down)."""
    if (root / CONFIG_NAME).is_file():
        return root
    found = [p.parent for p in root.glob(f"*/{CONFIG_NAME}")]
    if len(found) == 1:
        return found[0]
    raise ModelError("The zip holds no xfer model: upload the .zip made by *Download model* "
                     "(config.json, model.safetensors, README.md).")


def zip_model_dir(model_dir: Path, dest: Path) -> Path:
    """Zip a model folder (config.json, model.safetensors, README.md) into ``dest``.

    Weights are stored, not deflated: float tensors barely compress and deflating
    hundreds of MB would only cost time.
    """
    model_dir = Path(model_dir)
    if not (model_dir / CONFIG_NAME).is_file():
        raise ModelError(f"{model_dir} is not a saved model folder: train or load a model first.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w") as zf:
        for f in sorted(model_dir.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                compress = zipfile.ZIP_STORED if f.suffix == ".safetensors" else zipfile.ZIP_DEFLATED
                zf.write(f, arcname=f"{dest.stem}/{f.name}", compress_type=compress)
    tmp.replace(dest)
    return dest


def model_zip_name(model: XferModel) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in model.backbone)
    return f"xfer-{safe}-{model.strategy}-{len(model.classes)}classes"


def add_class_images(root: Path, class_name: str, files: Sequence[str | Path]) -> Path:
    """Copy uploaded images into ``root/<class_name>/`` (Teachable-Machine style); returns the folder.

    Files are numbered after those already there, so adding to a class twice never
    overwrites earlier images.
    """
    name = (class_name or "").strip()
    if not name:
        raise DataError("Type a class name first (for example: cat), then add its images.")
    if name in (".", "..") or "/" in name or "\\" in name or name.startswith(".") or len(name) > 100:
        raise DataError(f"Class name {name!r} cannot be a folder name: use letters, digits and spaces.")
    if not files:
        raise DataError(f"Drop one or more images for class {name!r} first.")
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    start = sum(1 for _ in folder.iterdir())
    for i, f in enumerate(files):
        f = Path(f)
        shutil.copyfile(f, folder / f"{start + i:05d}-{f.name}")
    return folder
