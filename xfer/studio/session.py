"""The app's per-visitor state and files: settings, the Session, housekeeping, the session's datasets and zips.

No gradio here: the tabs keep a :class:`Session` in a ``gr.State``; tests build one directly.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..data import DatasetReport, cache_dir, subsample
from ..device import DeviceInfo, select_device
from ..errors import DataError, ModelError
from ..model import CONFIG_NAME, XferModel
from ..presets import DEFAULT_PRESET, get_preset
from ..run import TrainingRun

log = logging.getLogger(__name__)

MAX_UPLOAD_MB = 500  # per uploaded file; enforced by launch(max_file_size=...) and stated in the UI


@dataclass
class AppDefaults:
    """The Train tab's initial values (tests and small machines override them from the command line).

    None: the preset's value (:mod:`xfer.presets`, on this device)."""

    preset: str = DEFAULT_PRESET
    backbone: str | None = None  # None: the preset's, else xfer.default_backbone()
    image_size: int | None = None
    weights: str = "imagenet"  # "imagenet" | "none"
    epochs: int | None = None
    batch_size: int = 32
    lr: float | None = None  # None: the preset's, else the selected strategy's (xfer.STRATEGIES[...].lr)
    max_per_class: int | None = None  # None: the preset's (0: all)


@dataclass
class AppConfig:
    """What every visitor's handlers share: the device, the initial values and the app's limits.

    ``backbone_note`` says why the initial backbone was chosen (see :func:`xfer.default_backbone`);
    :func:`xfer.studio.build_demo` fills it in once, so that no handler probes for weights again.
    """

    device: DeviceInfo = field(default_factory=lambda: select_device("cpu"))
    defaults: AppDefaults = field(default_factory=AppDefaults)
    max_train_jobs: int = 1
    max_upload_mb: int = MAX_UPLOAD_MB
    allow_server_paths: bool = True
    backbone_note: str | None = None

    @property
    def max_per_class(self) -> int:
        """The initial "images per class" cap: the preset's (0: all), unless given."""
        d = self.defaults.max_per_class
        return d if d is not None else (get_preset(self.defaults.preset).max_per_class or 0)


# --- per-session workspace ------------------------------------------------------------------


def sessions_root() -> Path:
    """Where per-visitor folders live: ``<cache_dir>/sessions``."""
    return cache_dir() / "sessions"


class Session:
    """One visitor's state: their dataset, their model, their training run, their folder.

    Lives in a ``gr.State``; Gradio deep-copies a State's initial value for every
    visitor, so ``__deepcopy__`` hands out a fresh, empty session sharing only the app's
    :class:`AppConfig` (nothing else may be shared between visitors). A plain class, not a
    dataclass: Gradio serialises dataclass values field by field.
    """

    def __init__(self, config: AppConfig | None = None) -> None:
        self.config = config or AppConfig()
        self.id = uuid.uuid4().hex
        self.report: DatasetReport | None = None
        self.model: XferModel | None = None
        self.model_dir: Path | None = None
        self.model_source = ""
        self.similarity: Any = "unset"  # the advisor's measurement of ``report``: SimilarityStats, None or "unset"
        self.example_paths: list[Path] = []
        self.run: TrainingRun | None = None  # the current (or last) training run
        self.stop_answered: TrainingRun | None = None  # the run whose Stop has been answered (once)
        self._workdir: Path | None = None

    def __repr__(self) -> str:
        classes = self.report.classes if self.report else None
        return f"Session({self.id[:8]}, classes={classes}, model={self.model is not None})"

    def __deepcopy__(self, memo: dict) -> "Session":
        return Session(self.config)

    @property
    def training(self) -> bool:
        """Whether a training run of this session is under way."""
        return self.run is not None and self.run.running

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

    def use_model(self, model: XferModel, folder: Path | None, source: str) -> None:
        """Make ``model`` (saved in ``folder``) the one this session predicts with."""
        self.model, self.model_dir, self.model_source = model, folder, source

    def close(self) -> None:
        """Stop any training and delete the session's folder."""
        if self.run is not None:
            self.run.stop(wait=False)
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


# --- datasets and model files ---------------------------------------------------------------


def cap_per_class(report: DatasetReport, per_class: int | None, seed: int = 0) -> DatasetReport:
    """The same dataset with at most ``per_class`` images per class (0 or None: all of them)."""
    if not per_class or per_class <= 0 or all(n <= per_class for n in report.counts.values()):
        return report
    items = sorted(subsample(report.items, int(per_class), seed=seed), key=lambda t: (t[1], str(t[0])))
    return DatasetReport(root=report.root, classes=list(report.classes), items=items,
                         skipped=report.skipped, duplicates=report.duplicates, warnings=report.warnings,
                         near_duplicates=report.near_duplicates)


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
