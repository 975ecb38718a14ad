"""Models named by a reference, for callers without a session: ``user/name[@revision]`` on the Hub, or the
name of a model saved in a server's models folder, pulled once and kept in memory within a budget.

:class:`ModelCache` is what the app's ``/classify`` endpoint (and its MCP tool) uses; :func:`open_model`
is what ``xfer predict hf://user/name`` and ``xfer.predict("user/name", ...)`` use. No gradio here.

Private repos: the cache is keyed on (repo, commit) and every call asks the Hub, with the caller's own
token, which commit the revision is (:func:`xfer.hub.resolve`). That answer is kept for a few seconds per
(token digest, repo, revision) -- never the token itself -- so a caller without access is refused even
when another caller's copy of the model is in memory. A call without a token is anonymous: the server's
own login (``HF_TOKEN``, ``hf auth login``) is never lent to a caller.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from .errors import ConfigError, HubError, ModelError
from .inference import check_k, top_k
from .model import CONFIG_NAME, XferModel, load_model

if TYPE_CHECKING:
    from . import hub

log = logging.getLogger(__name__)

#: How many models, and how many bytes of weights, the cache keeps in memory (app flags override them).
MAX_MODELS = 4
MAX_MB = 2048
#: Seconds a "this token may read this repo at this commit" answer is reused before the Hub is asked again.
ACCESS_TTL_S = 30.0
_ACCESS_ENTRIES = 4096  # bound on remembered answers (one per caller x repo x revision)

# user/name, as the Hub spells repo ids; @revision is a branch, tag or commit (branches may hold '/').
_REPO = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_REF_RE = re.compile(rf"^(?:hf://)?(?P<repo>{_REPO})(?:@(?P<revision>[A-Za-z0-9][A-Za-z0-9._/-]{{0,199}}))?$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
HF_PREFIX = "hf://"


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: a Hub repo (``repo`` and maybe ``revision``) or a server model's ``name``."""

    repo: str | None = None
    revision: str | None = None
    name: str | None = None

    def __str__(self) -> str:
        return self.name or f"{self.repo}{'@' + self.revision if self.revision else ''}"


def parse_ref(text: str) -> ModelRef:
    """``user/name``, ``hf://user/name``, ``user/name@revision`` (Hub) or ``name`` (a server model)."""
    text = (text or "").strip() if isinstance(text, str) else ""
    if not text:
        raise ConfigError("Name the model: a Hub repo id like user/flowers-classifier (optionally "
                          "user/flowers-classifier@revision), or the name of a model saved on this server.")
    m = _REF_RE.match(text)
    if m and ".." not in text:
        return ModelRef(repo=m["repo"], revision=m["revision"])
    if _NAME_RE.match(text) and text not in (".", ".."):
        return ModelRef(name=text)
    raise ConfigError(f"{text[:100]!r} is not a model reference: give a Hub repo id like user/name or "
                      "user/name@revision, or the name of a model saved on this server.")


def open_model(source: str | os.PathLike | XferModel, *, revision: str | None = None,
               token: str | None = None, endpoint: str | None = None,
               device: torch.device | str = "cpu") -> XferModel:
    """The model ``source`` names: an XferModel as it is, a model folder, or a Hub repo (pulled).

    A folder that exists wins; ``hf://user/name`` always means the Hub; otherwise a string shaped
    like a repo id (``user/name``, ``user/name@revision``) is pulled (:func:`xfer.hub.pull`) and
    anything else is read as a folder (and fails, with one line, if it is not one).
    """
    if isinstance(source, XferModel):
        return source
    text = os.fspath(source)
    if not text.startswith(HF_PREFIX) and Path(text).expanduser().exists():
        return load_model(text, device=device)
    m = _REF_RE.match(text.strip())
    if m and ".." not in text:
        if m["revision"] and revision and m["revision"] != revision:
            raise ConfigError(f"{text} names revision {m['revision']!r} and revision={revision!r} was also given.")
        from . import hub  # huggingface_hub is imported only when a repo is pulled

        try:
            return hub.pull(m["repo"], revision=m["revision"] or revision, token=token, endpoint=endpoint,
                            device=device)
        except HubError as e:
            if text.startswith(HF_PREFIX):
                raise
            raise HubError(f"{e} (There is no model folder {text} here either.)") from None
    if text.startswith(HF_PREFIX):
        raise ConfigError(f"{text[:100]!r} is not a Hub model: write hf://user/name or hf://user/name@revision.")
    return load_model(text, device=device)


def model_bytes(model: XferModel) -> int:
    """Bytes of the model's parameters and buffers (what it holds in memory, near enough)."""
    return sum(t.numel() * t.element_size() for t in itertools.chain(model.net.parameters(), model.net.buffers()))


def token_digest(token: str | None) -> str:
    """What the cache remembers of a token: a digest, never the token ("" for anonymous)."""
    return hashlib.sha256(token.encode()).hexdigest() if token else ""


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


class ModelCache:
    """Models by reference, loaded once and kept least-recently-used within ``max_models`` and ``max_mb``.

    ``models_dir``: where server models are looked up by name (None: names are refused). Thread-safe:
    concurrent first calls for one model load it once. Hub models are only ever handed to a caller
    whose token the Hub has just (``access_ttl`` seconds) accepted for that repo.
    """

    def __init__(self, device: torch.device | str = "cpu", *, max_models: int = MAX_MODELS, max_mb: int = MAX_MB,
                 models_dir: str | os.PathLike | None = None, access_ttl: float = ACCESS_TTL_S,
                 endpoint: str | None = None) -> None:
        if max_models < 1 or max_mb < 1:
            raise ConfigError("The model cache needs room for at least one model (max_models and max_mb >= 1).")
        self.device = device
        self.max_models, self.max_bytes = max_models, max_mb * 1024 * 1024
        self.models_dir = Path(models_dir).expanduser().resolve() if models_dir is not None else None
        self.access_ttl, self.endpoint = access_ttl, endpoint
        self._models: OrderedDict[tuple, tuple[XferModel, int]] = OrderedDict()
        self._access: OrderedDict[tuple, tuple[float, hub.Revision]] = OrderedDict()
        self._public: dict[tuple, str] = {}  # (repo, revision) -> commit, for public repos only (offline use)
        self._lock = threading.Lock()
        self._loading: dict[tuple, threading.Lock] = {}
        self.hits = self.misses = 0

    # --- looking up ---------------------------------------------------------------------------------

    def get(self, ref: str | ModelRef, token: str | None = None) -> tuple[XferModel, str]:
        """The model ``ref`` names, for a caller holding ``token``; returns it and what was used (repo@commit)."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        if ref.name is not None:
            folder = self._server_folder(ref.name)
            stamp = tuple((folder / n).stat().st_mtime_ns if (folder / n).exists() else 0
                          for n in (CONFIG_NAME, "model.safetensors"))
            return self._cached(("local", str(folder), stamp), lambda: load_model(folder, device=self.device)), ref.name
        from . import hub

        rev = self._resolve(ref.repo, ref.revision, token)
        used = f"{rev.repo_id}@{rev.commit}"
        return self._cached(("hub", rev.repo_id, rev.commit), lambda: hub.pull(
            rev.repo_id, revision=rev.commit, token=token or False, endpoint=self.endpoint, device=self.device)), used

    def classify(self, images: Sequence[Any], ref: str | ModelRef, token: str | None = None,
                 k: int = 5) -> list[dict[str, float]]:
        """Top-``k`` ``{label: probability}`` per image (see :func:`xfer.predict`) with the model ``ref`` names."""
        check_k(k)
        model, _ = self.get(ref, token)
        return top_k(model, list(images), k=k)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"models": len(self._models), "bytes": sum(b for _, b in self._models.values()),
                    "hits": self.hits, "misses": self.misses}

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
            self._access.clear()
            self._public.clear()

    # --- internals ----------------------------------------------------------------------------------

    def _server_folder(self, name: str) -> Path:
        if self.models_dir is None:
            raise ConfigError(f"{name!r} would be a model saved on this server, and this server does not offer "
                              "those: give a Hub repo id like user/name.")
        folder = self._inside(name)
        if folder is None:
            here = sorted(p.name for p in self.models_dir.iterdir() if self._inside(p.name)) \
                if self.models_dir.is_dir() else []
            listing = f"it has: {', '.join(here[:10])}" if here else "it has none"
            raise ModelError(f"There is no model named {name!r} on this server ({listing}); "
                             "or give a Hub repo id like user/name.")
        return folder

    def _inside(self, name: str) -> Path | None:
        """models_dir/name if it is a model folder that resolves (links followed) inside models_dir."""
        folder = (self.models_dir / name).resolve()
        return folder if folder.parent == self.models_dir and (folder / CONFIG_NAME).is_file() else None

    def _resolve(self, repo: str, revision: str | None, token: str | None) -> hub.Revision:
        from . import hub

        key = (token_digest(token), repo.lower(), revision or "")
        now = time.monotonic()
        with self._lock:
            hit = self._access.get(key)
            if hit and hit[0] > now:
                return hit[1]
        try:
            rev = hub.resolve(repo, revision, token=token or False, endpoint=self.endpoint)
        except hub.HubUnreachable:
            # The Hub cannot say who may read what: only a repo last seen public is served from memory.
            with self._lock:
                commit = self._public.get((repo.lower(), revision or ""))
                if commit and any(k[0] == "hub" and k[2] == commit for k in self._models):
                    log.info("the Hub cannot be reached: using the public %s@%s from memory", repo, commit[:10])
                    return hub.Revision(repo, commit, False)
            raise
        with self._lock:
            self._access[key] = (now + self.access_ttl, rev)
            while len(self._access) > _ACCESS_ENTRIES:
                self._access.popitem(last=False)
            if not rev.private:
                self._public[(repo.lower(), revision or "")] = rev.commit
        return rev

    def _cached(self, key: tuple, load) -> XferModel:
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                self.hits += 1
                return self._models[key][0]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one load per model, however many callers ask for it at once
            try:
                return self._load_once(key, load)
            finally:
                with self._lock:
                    self._loading.pop(key, None)

    def _load_once(self, key: tuple, load) -> XferModel:
        with self._lock:
            if key in self._models:  # loaded by the caller this one waited for
                self.hits += 1
                self._models.move_to_end(key)
                return self._models[key][0]
        with self._lock:
            self.misses += 1
        model = load()
        model.net.eval().requires_grad_(False)
        size = model_bytes(model)
        if size > self.max_bytes:
            raise ModelError(f"This model needs {size / 2**20:.0f} MB of memory, more than this server keeps "
                             f"for classifying ({self.max_bytes / 2**20:.0f} MB).")
        with self._lock:
            self._models[key] = (model, size)
            while len(self._models) > self.max_models or sum(b for _, b in self._models.values()) > self.max_bytes:
                old, _ = self._models.popitem(last=False)
                log.info("classify cache: dropped %s", old[1])
        log.info("classify cache: loaded %s (%.1f MB)", key[1], size / 2**20)
        return model

__all__ = ["MAX_MB", "MAX_MODELS", "ModelCache", "ModelRef", "bearer_token", "model_bytes", "open_model",
           "parse_ref", "token_digest"]
