"""The app's per-visitor state and files: settings, the Session, housekeeping, the session's datasets and zips.

No gradio here: the tabs keep a :class:`Session` in a ``gr.State``; tests build one directly.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import threading
import time
import uuid
import weakref
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..data import DatasetReport, cache_dir, subsample
from ..device import DeviceInfo, select_device
from ..errors import DataError, ModelError, XferError
from ..model import CONFIG_NAME, XferModel, load_model
from ..presets import DEFAULT_PRESET, get_preset
from ..run import TrainingRun

log = logging.getLogger(__name__)

MAX_UPLOAD_MB = 500  # per uploaded file; enforced by launch(max_file_size=...) and stated in the UI
# All visitors together (see VisitorBudget): sized for a free CPU Space (16 GB of memory, 50 GB of disk).
MAX_SESSION_MODELS = 8  # models loaded in memory for predictions, over all sessions
MAX_SESSION_MODEL_MB = 2048  # their parameters and buffers, in MB
MAX_SESSIONS_DISK_MB = 5000  # the visitors' folders (uploads, extractions, pulls, trained models), in MB


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
    max_session_models: int = MAX_SESSION_MODELS
    max_session_model_mb: int = MAX_SESSION_MODEL_MB
    max_sessions_disk_mb: int = MAX_SESSIONS_DISK_MB
    #: The one budget every session of this app shares (made from the three limits above).
    budget: "VisitorBudget" = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.budget = VisitorBudget(self.max_session_models, self.max_session_model_mb, self.max_sessions_disk_mb)

    @property
    def max_per_class(self) -> int:
        """The initial "images per class" cap: the preset's (0: all), unless given."""
        d = self.defaults.max_per_class
        return d if d is not None else (get_preset(self.defaults.preset).max_per_class or 0)


# --- per-session workspace ------------------------------------------------------------------


def sessions_root() -> Path:
    """Where per-visitor folders live: ``<cache_dir>/sessions``."""
    return cache_dir() / "sessions"


class ServerFull(XferError):
    """A new upload was refused: the visitors' files together already fill the app's disk budget."""


UNLOADED_GONE = ("Your model was unloaded from memory to make room for other visitors, and its files are gone: "
                 "upload it or train it again.")


def folder_bytes(folder: Path | None) -> int:
    """Bytes of the files under ``folder`` (0 if it does not exist); links are not followed."""
    total, stack = 0, [folder] if folder is not None else []
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for e in entries:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(Path(e.path))
                        elif e.is_file(follow_symlinks=False):
                            total += e.stat(follow_symlinks=False).st_size
                    except OSError:  # removed meanwhile
                        continue
        except OSError:
            continue
    return total


def model_bytes(model: XferModel) -> int:
    """Bytes of the model's parameters and buffers (what it holds in memory, near enough)."""
    net = model.net
    return sum(t.numel() * t.element_size() for t in itertools.chain(net.parameters(), net.buffers()))


class VisitorBudget:
    """What all the sessions of one app hold together: models in memory (a count and MB) and files on disk.

    Contracts: after :meth:`model_loaded` at most ``max_models`` session models, of at most ``max_model_mb`` MB
    together, are in memory, unless the newest alone exceeds them (it is kept: the visitor who loaded it is
    using it); the least recently used *other* sessions' models are unloaded first (their files stay: the next
    use reloads them, :meth:`Session.loaded_model`). :meth:`check_disk` refuses (raises :class:`ServerFull`)
    what would take the visitors' files over ``max_disk_mb``. Sessions are held weakly (one Gradio drops
    without its delete callback is not kept alive here). Thread-safe: handlers and training threads call it.
    """

    def __init__(self, max_models: int = MAX_SESSION_MODELS, max_model_mb: int = MAX_SESSION_MODEL_MB,
                 max_disk_mb: int = MAX_SESSIONS_DISK_MB) -> None:
        self.max_models, self.max_model_mb, self.max_disk_mb = int(max_models), int(max_model_mb), int(max_disk_mb)
        self._lock = threading.RLock()
        self._sessions: weakref.WeakValueDictionary[str, Session] = weakref.WeakValueDictionary()
        self._model_bytes: dict[str, int] = {}  # session id -> bytes of its loaded model
        self._model_ids: dict[str, int] = {}  # session id -> id() of that model (unload only that one)
        self._last_used: dict[str, float] = {}  # session id -> monotonic time its model was last used
        self._disk: dict[str, int] = {}  # session id -> bytes of its folder, as last measured

    def __repr__(self) -> str:
        s = self.stats()
        return f"VisitorBudget({s['models']} models, {s['model_mb']:.0f} MB in memory, {s['disk_mb']:.0f} MB on disk)"

    def stats(self) -> dict[str, float]:
        """models (loaded), model_mb and disk_mb (all sessions), sessions (known)."""
        with self._lock:
            return dict(models=len(self._model_bytes), model_mb=sum(self._model_bytes.values()) / 2**20,
                        disk_mb=sum(self._disk.values()) / 2**20, sessions=len(self._sessions))

    # --- models -------------------------------------------------------------------------------

    def model_loaded(self, session: "Session", model: XferModel) -> None:
        """``model`` is ``session``'s model in memory now: count it, and unload other sessions' models (least
        recently used first) while over budget. Call it holding no session's lock (it takes the victims')."""
        victims: list[tuple[Session, int]] = []
        with self._lock:
            self._sessions[session.id] = session
            self._model_bytes[session.id] = model_bytes(model)
            self._model_ids[session.id] = id(model)
            self._last_used[session.id] = time.monotonic()
            while (len(self._model_bytes) > self.max_models
                   or sum(self._model_bytes.values()) > self.max_model_mb * 2**20):
                others = [sid for sid in self._model_bytes if sid != session.id]
                if not others:  # the newest alone is over budget: it stays, its visitor is using it
                    break
                victim_id = min(others, key=lambda sid: self._last_used.get(sid, 0.0))
                model_id = self._model_ids.get(victim_id, 0)
                self._forget_model(victim_id)
                victim = self._sessions.get(victim_id)
                if victim is not None:
                    victims.append((victim, model_id))
        for victim, model_id in victims:  # outside the budget's lock: a session's lock is taken before it
            victim.unload_model(model_id)
            log.info("unloaded session %s's model to stay within %s", victim.id[:8], self)

    def model_used(self, session: "Session") -> None:
        """The session's model was just used (least recently used models are unloaded first)."""
        with self._lock:
            if session.id in self._model_bytes:
                self._last_used[session.id] = time.monotonic()

    def model_released(self, session: "Session") -> None:
        with self._lock:
            self._forget_model(session.id)

    def _forget_model(self, session_id: str) -> None:
        self._model_bytes.pop(session_id, None)
        self._model_ids.pop(session_id, None)
        self._last_used.pop(session_id, None)

    # --- disk ---------------------------------------------------------------------------------

    def disk_changed(self, session: "Session") -> int:
        """Measure the session's folder again (after it gained or lost files); returns its bytes."""
        n = folder_bytes(session._workdir)
        with self._lock:
            self._sessions[session.id] = session
            self._disk[session.id] = n
        return n

    def check_disk(self, session: "Session", incoming_bytes: int = 0) -> None:
        """Raise :class:`ServerFull` if ``incoming_bytes`` more would take the visitors' files over budget."""
        self.disk_changed(session)
        with self._lock:
            used = sum(self._disk.values())
        limit = self.max_disk_mb * 2**20
        if used + max(0, int(incoming_bytes)) > limit:
            log.warning("refused an upload of %d bytes: %s", incoming_bytes, self)
            raise ServerFull(f"The server has no room for more visitors' files right now ({used / 2**20:,.0f} of "
                             f"{self.max_disk_mb:,} MB in use): try again later, or with a smaller file.")

    def forget(self, session: "Session") -> None:
        """The session closed: it holds nothing any more."""
        with self._lock:
            self._forget_model(session.id)
            self._disk.pop(session.id, None)
            self._sessions.pop(session.id, None)


class Session:
    """One visitor's state: their dataset, their model, their training run, their folder.

    Lives in a ``gr.State``; Gradio deep-copies a State's initial value for every
    visitor, so ``__deepcopy__`` hands out a fresh, empty session sharing only the app's
    :class:`AppConfig` (and through it the :class:`VisitorBudget`; nothing else may be shared between
    visitors). A plain class, not a dataclass: Gradio serialises dataclass values field by field.

    Files: a new dataset (:meth:`set_dataset`) or model (:meth:`use_model`) deletes the previous one's
    folder when that folder is inside the session's workspace (never a server folder, never the folder of
    what is current); a dataset a running training reads is deleted only once the run has ended.
    """

    def __init__(self, config: AppConfig | None = None) -> None:
        self.config = config or AppConfig()
        self.id = uuid.uuid4().hex
        self.report: DatasetReport | None = None
        self.data_dir: Path | None = None  # the current dataset's folder, when it is the session's own
        self.model: XferModel | None = None
        self.model_dir: Path | None = None
        self.model_source = ""
        self.model_unloaded = False  # the budget unloaded ``model``; ``model_dir`` still names its files
        self.similarity: Any = "unset"  # the advisor's measurement of ``report``: SimilarityStats, None or "unset"
        self.example_paths: list[Path] = []
        self.backbone: str | None = None  # the Train tab's backbone as last changed (None: the app's default)
        self.run: TrainingRun | None = None  # the current (or last) training run
        self.stop_answered: TrainingRun | None = None  # the run whose Stop has been answered (once)
        self.stopped_at = float("-inf")  # monotonic time of the last Stop: a Train queued before it never starts
        self._workdir: Path | None = None
        self._stale: list[Path] = []  # folders to delete once no training run reads them
        self._lock = threading.RLock()  # the page's handlers and the training thread swap state concurrently
        self.closed = False

    def __repr__(self) -> str:
        classes = self.report.classes if self.report else None
        return f"Session({self.id[:8]}, classes={classes}, model={self.model is not None})"

    def __deepcopy__(self, memo: dict) -> "Session":
        return Session(self.config)

    @property
    def budget(self) -> VisitorBudget:
        return self.config.budget

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

    def check_disk(self, incoming_bytes: int = 0) -> None:
        """Raise :class:`ServerFull` (a one-line message) if the app's disk budget has no room for this upload."""
        self.budget.check_disk(self, incoming_bytes)

    def set_dataset(self, report: DatasetReport | None, folder: Path | None = None) -> None:
        """Make ``report`` (its files in ``folder``; None: not the session's own) the session's dataset; the
        previous dataset's folder is deleted (once no training run reads it)."""
        with self._lock:
            previous, self.data_dir = self.data_dir, Path(folder) if folder is not None else None
            self.report = report
            self.similarity = "unset"
            if previous is not None and previous != self.data_dir:
                self._discard(previous, deferred=self.training)
            self._sweep()
            self.budget.disk_changed(self)

    def use_model(self, model: XferModel, folder: Path | None, source: str) -> None:
        """Make ``model`` (saved in ``folder``) the one this session predicts with; the previous model is
        released and its folder deleted when it was the session's own and differs from ``folder``."""
        with self._lock:
            previous = self.model_dir
            self.model, self.model_dir, self.model_source = model, folder, source
            self.model_unloaded = False
            if previous is not None and folder is not None and Path(previous) != Path(folder):
                self._discard(previous)
        self.budget.model_loaded(self, model)  # outside the lock: it may unload other sessions' models
        self.budget.disk_changed(self)

    def unload_model(self, model_id: int | None = None) -> None:
        """Free the model's memory (only if it is still the model whose ``id()`` is ``model_id``, when given),
        keeping ``model_dir``: :meth:`loaded_model` loads it again."""
        with self._lock:
            if self.model is not None and (model_id is None or id(self.model) == model_id):
                self.model, self.model_unloaded = None, True

    def loaded_model(self) -> XferModel | None:
        """The session's model, loaded again from its folder if the budget unloaded it (None: no model).

        Raises :class:`~xfer.errors.ModelError` (one line) when it was unloaded and its files are gone."""
        with self._lock:
            model, reloaded = self.model, False
            if model is None and self.model_unloaded and self.model_dir is not None:
                if not (Path(self.model_dir) / CONFIG_NAME).is_file():
                    raise ModelError(UNLOADED_GONE)
                try:
                    model = load_model(self.model_dir, device=self.config.device.device)
                except XferError as e:
                    raise ModelError(f"{UNLOADED_GONE} ({e})") from None
                log.info("session %s: reloaded its model from %s", self.id[:8], self.model_dir)
                self.model, self.model_unloaded, reloaded = model, False, True
        if reloaded:
            self.budget.model_loaded(self, model)
        elif model is not None:
            self.budget.model_used(self)
        return model

    def _unit(self, folder: Path) -> Path | None:
        """The workspace's top-level folder holding ``folder`` (one per upload, extraction, pull or kind of
        file: a model found one level down in an extracted zip goes with its zip's folder); None: not the
        session's own (a server folder, the bundled flowers) or the workspace itself."""
        if self._workdir is None:
            return None
        try:
            rel = Path(folder).resolve().relative_to(self._workdir.resolve())
        except (ValueError, OSError):
            return None
        return self._workdir / rel.parts[0] if rel.parts else None

    def _discard(self, folder: Path, deferred: bool = False) -> None:
        """Delete the session's own upload that holds ``folder``, unless something current lives in it."""
        unit = self._unit(folder)
        if unit is None:
            return
        current = [self._unit(p) for p in (self.data_dir, self.model_dir) if p is not None]
        if unit in current:
            return
        if deferred:
            self._stale.append(unit)
            return
        shutil.rmtree(unit, ignore_errors=True)
        log.info("session %s: deleted %s", self.id[:8], unit)
        self.budget.disk_changed(self)

    def _sweep(self) -> None:
        """Delete the folders that waited for a training run to end."""
        if self._stale and not self.training:
            stale, self._stale = self._stale, []
            for folder in stale:
                self._discard(folder)

    def sweep(self) -> None:
        """Delete what waited for this session's training run, once it has ended."""
        with self._lock:
            self._sweep()

    def discard(self, folder: Path | None) -> None:
        """Delete a folder of this session that holds nothing kept (a failed upload's, an older download's)."""
        if folder is not None:
            with self._lock:
                self._discard(folder)

    def close(self) -> None:
        """Stop any training (its DataLoader workers end with it), release the model and delete the folder.

        Idempotent: Gradio may call it from both the page's unload event and the State's delete callback."""
        self.closed = True
        if self.run is not None:  # before the lock: a committing run holds its own lock and wants this one
            self.run.stop(wait=False)
        with self._lock:
            self.model, self.model_unloaded, self.report = None, False, None
            self.budget.forget(self)
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
