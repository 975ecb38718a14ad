"""Share models through the Hugging Face Hub: :func:`push` a saved model folder, :func:`pull` one back.

A model on the Hub is exactly a saved xfer folder: ``config.json`` (enough to rebuild
the network), ``model.safetensors`` and the ``README.md`` model card. Nothing else
is uploaded or downloaded; pickled weights (``pytorch_model.bin``) are never fetched,
let alone loaded. Downloads go through the Hugging Face cache, so a pulled model loads
again offline (``HF_HUB_OFFLINE=1``).

The token comes from the ``token`` argument, else ``HF_TOKEN``, else the cached
``hf auth login`` (huggingface_hub resolves the last two). It is never logged, written
or shown: it is scrubbed from every error message. The Hub address is ``endpoint=``,
else ``HF_ENDPOINT`` (read by huggingface_hub at import).

Every call is bounded: each request waits at most ``XFER_HUB_TIMEOUT`` seconds (default 30)
to connect or for the next bytes, and a whole push or pull, retries included, at most
``XFER_HUB_DEADLINE`` seconds (default 900); past either, a :class:`HubError` says so.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, NamedTuple, TypeVar

import torch

from .errors import ConfigError, HubError, ModelError, XferError
from .export import ONNX_NAME, export_onnx
from .model import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    XferModel,
    expected_weight_shapes,
    load_model,
    read_config,
    write_model_folder,
)
from .outputs import check_output_folder

log = logging.getLogger(__name__)

#: The files of a model repo; the only ones pushed and the only ones pulled.
HUB_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)

# User access tokens are "hf_" and 34 letters/digits; shorter hf_ words (hf_hub_download) are left alone.
_TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{20,}")


#: Seconds a request waits to connect, or for the Hub's next bytes (``XFER_HUB_TIMEOUT``).
DEFAULT_TIMEOUT = 30.0
#: Seconds a whole push or pull may take, retries included (``XFER_HUB_DEADLINE``): a 528 MB VGG-16 at 1 MB/s fits.
DEFAULT_DEADLINE = 900.0

T = TypeVar("T")


class Revision(NamedTuple):
    """What a revision of a repo is, as the Hub told one caller: the canonical id, the commit, private or not."""

    repo_id: str
    commit: str
    private: bool


class HubUnreachable(HubError):
    """The Hub could not be asked (offline mode, no connection): nothing was refused."""


class PushResult(NamedTuple):
    """Where a push landed: the repo's URL and the id of the commit that holds the model."""

    url: str
    commit_id: str


# --- errors ------------------------------------------------------------------------------------------------


def _endpoint(endpoint: str | None) -> str:
    from huggingface_hub import constants

    return (endpoint or constants.ENDPOINT).rstrip("/")


def _secrets(token: str | None) -> list[str]:
    """Every token value that could leak into a message: the argument, the env vars, the cached login."""
    values = [token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    try:
        from huggingface_hub import get_token

        values.append(get_token())
    except Exception:  # no cached login, unreadable token file: nothing to hide
        pass
    return [v for v in values if isinstance(v, str) and len(v) >= 4]


def _scrub(text: str, token: str | None) -> str:
    """``text`` with every known token, and anything shaped like one, masked."""
    for secret in _secrets(token):
        text = text.replace(secret, "***")
    return _TOKEN_RE.sub("hf_***", text)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def _network_error(e: BaseException) -> bool:
    import httpx2  # huggingface_hub's HTTP client

    return isinstance(e, (httpx2.TransportError, ConnectionError, TimeoutError))


def _timed_out(e: BaseException) -> bool:
    import httpx2  # huggingface_hub's HTTP client

    return isinstance(e, (httpx2.TimeoutException, TimeoutError))


def _explain_http(e: BaseException, *, action: str, repo_id: str, token: str | None, endpoint: str,
                  login: str) -> str:
    """:func:`_explain` for an HTTP error status from the Hub."""
    status = _status(e)
    if status == 401:
        if token or _secrets(None):
            return (f"The Hub rejected the token (401 Unauthorized) while trying to {action} {repo_id}: "
                    f"check it, or {login} again.")
        return f"You must be logged in to {action} {repo_id} (401 Unauthorized): {login}."
    if status == 403:
        return (f"The token may not {action} {repo_id} (403 Forbidden): use a token with write access to "
                f"the '{repo_id.split('/')[0]}' namespace, or push to your own namespace.")
    if status is not None and status >= 500:
        return (f"The Hub at {endpoint} failed (HTTP {status}) while trying to {action} {repo_id}: "
                "nothing local was changed; try again later.")
    server = getattr(e, "server_message", None) or _first_line(e)
    return f"The Hub refused to {action} {repo_id} (HTTP {status}: {server})."


def _explain(e: BaseException, *, action: str, repo_id: str, revision: str | None, token: str | None,
             endpoint: str) -> str:
    """One line saying what went wrong talking to the Hub and what to do about it."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    login = "pass --token (token=), set HF_TOKEN or run `hf auth login`"
    # snapshot_download reports "not in the cache" and hides why the Hub could not be asked: use the cause.
    if isinstance(e, LocalEntryNotFoundError) and e.__cause__ is not None:
        cause = e.__cause__
        if not isinstance(cause, OfflineModeIsEnabled):
            return _explain(cause, action=action, repo_id=repo_id, revision=revision, token=token,
                            endpoint=endpoint).rstrip(".") + f" (no cached copy of {repo_id}{_at(revision)} either)."
        e = cause
    if isinstance(e, OfflineModeIsEnabled) or (isinstance(e, LocalEntryNotFoundError) and _offline()):
        if action == "pull":
            return (f"{repo_id}{_at(revision)} is not in the local Hugging Face cache and offline mode is on "
                    "(HF_HUB_OFFLINE=1): pull it once with a connection, or unset HF_HUB_OFFLINE.")
        return f"Offline mode is on (HF_HUB_OFFLINE=1): unset HF_HUB_OFFLINE to {action}."
    if isinstance(e, HFValidationError):
        return f"{repo_id!r} is not a valid Hub repo id: use 'user/name' (letters, digits, '-', '_', '.')."
    if isinstance(e, GatedRepoError):
        return f"{repo_id} is gated: accept its access conditions on the Hub with your account, then {login}."
    if isinstance(e, RevisionNotFoundError):
        return f"{repo_id} has no revision {revision!r}: give a branch, tag or commit id that exists."
    if isinstance(e, RepositoryNotFoundError):
        who = "the token given cannot see it" if token or _secrets(None) else "no token was given"
        return (f"Repository {repo_id} was not found on {endpoint}, or it is private and {who}: "
                f"check the id, or {login} with access to it.")
    if isinstance(e, RemoteEntryNotFoundError):
        return (f"{repo_id}{_at(revision)} lists a file the Hub cannot serve ({_first_line(e)}): "
                "push the model again, or pull another revision.")
    if isinstance(e, HfHubHTTPError):
        return _explain_http(e, action=action, repo_id=repo_id, token=token, endpoint=endpoint, login=login)
    if isinstance(e, LocalEntryNotFoundError):
        return (f"Could not reach the Hub at {endpoint} and {repo_id}{_at(revision)} is not in the local cache: "
                "check your connection (or HF_ENDPOINT) and try again.")
    if _timed_out(e):
        return (f"The Hub at {endpoint} did not answer within {_seconds('XFER_HUB_TIMEOUT', DEFAULT_TIMEOUT):g} s "
                f"while trying to {action} {repo_id}: check your connection (or HF_ENDPOINT) and try again later; "
                "XFER_HUB_TIMEOUT sets the wait.")
    if _network_error(e):
        return (f"Could not reach the Hub at {endpoint} to {action} {repo_id} ({type(e).__name__}: "
                f"{_first_line(e)}): check your connection (or HF_ENDPOINT) and try again.")
    return f"Could not {action} {repo_id}: {type(e).__name__}: {_first_line(e)}."


def _hub_error(e: BaseException, *, action: str, repo_id: str, revision: str | None, token: str | None,
               endpoint: str) -> HubError:
    message = _explain(e, action=action, repo_id=repo_id, revision=revision, token=token, endpoint=endpoint)
    return HubError(_scrub(" ".join(message.split()), token))


def _at(revision: str | None) -> str:
    return f" (revision {revision})" if revision else ""


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


# --- timeouts ----------------------------------------------------------------------------------------------


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a number of seconds above 0, got {text!r}.")
    return value


_request_timeout = DEFAULT_TIMEOUT  # what _fill_timeouts gives every request that has no timeout of its own


def _fill_timeouts(request: Any) -> None:
    """An httpx2 request hook: every timeout the request leaves open (None) becomes ``_request_timeout``."""
    given = dict(request.extensions.get("timeout") or {})
    for kind in ("connect", "read", "write", "pool"):
        if given.get(kind) is None:
            given[kind] = min(_request_timeout, 10.0) if kind == "connect" else _request_timeout
    request.extensions["timeout"] = given


def _bound_requests(timeout: float) -> None:
    """Make every request of huggingface_hub's shared HTTP client time out after ``timeout`` seconds.

    huggingface_hub 2.x builds its httpx2 client with ``timeout=None``, and many calls pass
    ``timeout=None`` explicitly (repo_info, create_repo, the commit), which overrides any
    client default: a Hub that accepts the connection and never answers would hold the call
    forever. A request hook fills in each timeout left open; timeouts that huggingface_hub or
    the application set (downloads: ``HF_HUB_DOWNLOAD_TIMEOUT``) are kept. Installed at every
    call, since the client is rebuilt after ``close_session()`` and in forked children.
    """
    global _request_timeout
    from huggingface_hub.utils import get_session

    _request_timeout = timeout
    client = get_session()
    hooks = client.event_hooks
    if _fill_timeouts not in hooks["request"]:
        client.event_hooks = {**hooks, "request": [*hooks["request"], _fill_timeouts]}


def _bounded(call: Callable[[], T], *, action: str, repo_id: str, endpoint: str) -> T:
    """Run ``call`` (the Hub requests of one push or pull) with per-request timeouts and a total deadline.

    The deadline covers what per-request timeouts cannot: huggingface_hub's retries, and a
    server that sends a byte now and then. ``call`` runs in a daemon thread; past the deadline
    the caller gets a HubError at once and the thread ends at its next timeout.
    """
    timeout = _seconds("XFER_HUB_TIMEOUT", DEFAULT_TIMEOUT)
    deadline = _seconds("XFER_HUB_DEADLINE", DEFAULT_DEADLINE)
    _bound_requests(timeout)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as e:  # handed to the caller's thread
            outcome["error"] = e

    worker = threading.Thread(target=run, name=f"xfer-hub-{action}", daemon=True)
    worker.start()
    worker.join(deadline)
    if worker.is_alive():
        after = (" (it may still complete: look at the repo before pushing again)" if action == "push" else "")
        raise HubError(f"The Hub at {endpoint} did not finish the {action} of {repo_id} within {deadline:g} s"
                       f"{after}: check your connection (or HF_ENDPOINT) and try again; XFER_HUB_DEADLINE "
                       "sets the limit.")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# --- push --------------------------------------------------------------------------------------------------


def _check_weights(folder: Path, cfg: dict[str, Any]) -> None:
    """Refuse to publish weights that would not load: compare the safetensors header with the network.

    Only the header is read and the network is built on the meta device, so this is cheap even for VGG-16.
    """
    from safetensors import SafetensorError, safe_open

    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise ModelError(f"{folder} has no {WEIGHTS_NAME}: save the model again with xfer before pushing it.")
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{path} is damaged ({_first_line(e)}): save the model again before pushing it.") from None
    expected = expected_weight_shapes(cfg)
    if shapes != expected:
        net = cfg["network"]
        wrong = sorted(set(shapes) ^ set(expected)) or [k for k in expected if shapes[k] != expected[k]]
        raise ModelError(f"The weights in {folder} do not match its config.json ({net['backbone']}, "
                         f"{net['strategy']}, {net['num_classes']} classes; first difference: {wrong[0]}): "
                         "save the model again.")


def _stage(folder: Path, cfg: dict[str, Any], repo_id: str, staging: Path) -> None:
    """The three model files to upload, in ``staging``; the model folder itself is never written to."""
    from .card import render_card_from_config

    for name in (CONFIG_NAME, WEIGHTS_NAME):
        try:  # a hard link costs nothing, even for 500 MB of VGG-16 weights; the upload only reads it
            os.link(folder / name, staging / name)
        except OSError:
            shutil.copyfile(folder / name, staging / name)
    # The card names the repo (title, how-to-use snippet), so it is rendered for this push.
    (staging / CARD_NAME).write_text(render_card_from_config(cfg, repo_id), encoding="utf-8")


def push(model_dir: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False,
         commit_message: str | None = None, endpoint: str | None = None, with_onnx: bool = False) -> PushResult:
    """Upload a saved model folder to the Hub as one commit; returns the repo URL and the commit id.

    Creates ``repo_id`` if needed (``private`` applies only then) and commits exactly
    ``model.safetensors``, ``config.json`` and a ``README.md`` card naming the repo, plus
    ``model.onnx`` (:func:`xfer.export.export_onnx`) with ``with_onnx``.
    The local folder is only read. Raises :class:`ModelError` if ``model_dir`` is not a
    valid xfer model and :class:`HubError` for anything the Hub or the network refuses.
    """
    from huggingface_hub import HfApi

    folder = Path(model_dir).expanduser()
    cfg = read_config(folder)
    _check_weights(folder, cfg)
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise ConfigError("Give the Hub repo to push to as 'user/name'.")
    repo_id = repo_id.strip()
    ep = _endpoint(endpoint)
    message = commit_message or (f"Upload {cfg['backbone']} classifier ({cfg['strategy']} strategy, "
                                 f"{len(cfg['classes'])} classes) with xfer")
    api = HfApi(endpoint=ep, token=token)

    try:
        with tempfile.TemporaryDirectory(prefix="xfer-push-") as staging:
            if with_onnx:  # before the repo is created: a failed export leaves nothing on the Hub
                export_onnx(folder, Path(staging) / ONNX_NAME)

            def send() -> tuple[Any, Any]:  # the Hub's part, within the deadline (the export is local work)
                repo = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
                _stage(folder, cfg, repo.repo_id, Path(staging))
                return repo, api.upload_folder(repo_id=repo.repo_id, repo_type="model", folder_path=staging,
                                               allow_patterns=[*HUB_FILES, *([ONNX_NAME] if with_onnx else [])],
                                               commit_message=message)

            repo, info = _bounded(send, action="push", repo_id=repo_id, endpoint=ep)
    except XferError:
        raise
    except Exception as e:
        raise _hub_error(e, action="push", repo_id=repo_id, revision=None, token=token, endpoint=ep) from None
    url = str(repo)
    log.info("pushed %s to %s (commit %s)", folder, url, info.oid)
    return PushResult(url=url, commit_id=info.oid)


# --- pull --------------------------------------------------------------------------------------------------


def _snapshot(repo_id: str, revision: str | None, token: str | None, cache_dir: str | os.PathLike | None,
              endpoint: str | None) -> Path:
    """:func:`_fetch` within the Hub deadline."""
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise ConfigError("Give the Hub repo to pull as 'user/name'.")
    return _bounded(lambda: _fetch(repo_id, revision, token, cache_dir, endpoint), action="pull",
                    repo_id=repo_id.strip(), endpoint=_endpoint(endpoint))


def _fetch(repo_id: str, revision: str | None, token: str | None, cache_dir: str | os.PathLike | None,
           endpoint: str | None) -> Path:
    """Download (or find in the cache) the repo's model files; returns the snapshot folder.

    The Hub is asked first whether this token may read ``revision``: snapshot_download alone
    answers a refusal (private repo, wrong token) with the cached copy when there is one, which
    on a shared machine (the app) would hand one user's private model to another. The cache
    stands in only when the Hub cannot be reached (offline mode, no connection).
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    if not isinstance(repo_id, str) or not repo_id.strip():
        raise ConfigError("Give the Hub repo to pull as 'user/name'.")
    repo_id = repo_id.strip()
    ep = _endpoint(endpoint)
    unreachable: Exception | None = None
    try:
        HfApi(endpoint=ep, token=token).repo_info(repo_id, repo_type="model", revision=revision)
    except Exception as e:
        if not (isinstance(e, OfflineModeIsEnabled) or _network_error(e)):
            raise _hub_error(e, action="pull", repo_id=repo_id, revision=revision, token=token,
                             endpoint=ep) from None
        log.info("the Hub cannot be reached (%s): looking for %s in the cache", type(e).__name__, repo_id)
        unreachable = e
    try:
        path = snapshot_download(repo_id, repo_type="model", revision=revision, token=token,
                                 cache_dir=None if cache_dir is None else str(cache_dir), endpoint=ep,
                                 allow_patterns=list(HUB_FILES), library_name="xfer",
                                 local_files_only=unreachable is not None)
    except Exception as e:
        if unreachable is not None and isinstance(e, LocalEntryNotFoundError):
            e.__cause__ = unreachable  # say why the Hub was not asked, not just "not in the cache"
        raise _hub_error(e, action="pull", repo_id=repo_id, revision=revision, token=token, endpoint=ep) from None
    return Path(path)


def resolve(repo_id: str, revision: str | None = None, token: str | bool | None = None,
            endpoint: str | None = None) -> Revision:
    """Ask the Hub, with ``token``, which commit ``revision`` (default: the main branch) of ``repo_id`` is.

    This is the access check: it succeeds only if ``token`` may read the repo (``token=False``:
    anonymously, never with a stored login). Raises :class:`HubUnreachable` when the Hub cannot be
    asked and :class:`HubError` (one line) when it refuses: a missing or private repo, a wrong revision.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    if not isinstance(repo_id, str) or not repo_id.strip():
        raise ConfigError("Give the Hub repo as 'user/name'.")
    repo_id = repo_id.strip()
    ep = _endpoint(endpoint)
    try:
        info = _bounded(lambda: HfApi(endpoint=ep, token=token).model_info(repo_id, revision=revision),
                        action="pull", repo_id=repo_id, endpoint=ep)
    except XferError:  # the deadline passed
        raise
    except Exception as e:
        error = _hub_error(e, action="pull", repo_id=repo_id, revision=revision,
                           token=token if isinstance(token, str) else None, endpoint=ep)
        if isinstance(e, OfflineModeIsEnabled) or _network_error(e):
            raise HubUnreachable(str(error)) from None
        raise error from None
    return Revision(info.id or repo_id, info.sha, bool(info.private))


def _load_snapshot(folder: Path, repo_id: str, revision: str | None, device: torch.device | str) -> XferModel:
    """Load a pulled snapshot, turning every way it can be unusable into one clear HubError."""
    where = f"{repo_id}{_at(revision)}"
    if not (folder / CONFIG_NAME).is_file():
        raise HubError(f"{where} is not an xfer model: it has no {CONFIG_NAME} (xfer models are pushed "
                       "with `xfer push`).")
    try:
        read_config(folder)
    except XferError as e:
        raise HubError(f"{where} is not a usable xfer model: {_relabel(e, folder, repo_id)}") from None
    if not (folder / WEIGHTS_NAME).is_file():
        raise HubError(f"{where} has no {WEIGHTS_NAME}: xfer loads only safetensors weights from the Hub "
                       "(pickled pytorch_model.bin files are never downloaded). Push the model again with xfer.")
    try:
        return load_model(folder, device=device)
    except XferError as e:
        raise HubError(f"{where} is not a usable xfer model: {_relabel(e, folder, repo_id)}") from None


def _relabel(e: BaseException, folder: Path, repo_id: str) -> str:
    """An error about the cache's snapshot folder, worded about the repo instead."""
    return str(e).replace(str(folder), repo_id)


def pull(repo_id: str, revision: str | None = None, token: str | None = None,
         cache_dir: str | os.PathLike | None = None, endpoint: str | None = None,
         device: torch.device | str = "cpu") -> XferModel:
    """Download a model pushed with :func:`push` (or use the cached copy) and load it, ready for ``xfer.predict``.

    ``revision`` is a branch, tag or commit id (default: the latest on ``main``). Only
    ``config.json``, ``model.safetensors`` and ``README.md`` are fetched, through the
    Hugging Face cache (``cache_dir``, default ``HF_HUB_CACHE``); with
    ``HF_HUB_OFFLINE=1`` the cached copy is used. Raises :class:`HubError` with a
    one-line reason for a missing or private repo, a wrong revision, no connection, or a
    repo that is not a loadable xfer model.
    """
    folder = _snapshot(repo_id, revision, token, cache_dir, endpoint)
    model = _load_snapshot(folder, repo_id.strip(), revision, device)
    log.info("pulled %s at commit %s", repo_id, folder.name)
    return model


def pull_to(repo_id: str, out_dir: str | os.PathLike, revision: str | None = None, token: str | None = None,
            cache_dir: str | os.PathLike | None = None, endpoint: str | None = None) -> Path:
    """Pull a model and write it as an ordinary model folder at ``out_dir``; returns the folder.

    The download is checked by loading it first, then copied into a temporary sibling
    folder that replaces ``out_dir`` by renames: a failed pull leaves an existing
    ``out_dir`` exactly as it was. ``out_dir`` must be new, empty or an xfer model folder
    (:func:`xfer.outputs.check_output_folder`), else :class:`ConfigError`.
    """
    check_output_folder(out_dir)  # before the download: a folder that is not a model is never replaced
    folder = _snapshot(repo_id, revision, token, cache_dir, endpoint)
    _load_snapshot(folder, repo_id.strip(), revision, "cpu")
    out = _replace_folder(folder, Path(out_dir))
    log.info("pulled %s at commit %s into %s", repo_id, folder.name, out)
    return out


def _replace_folder(src: Path, out_dir: Path) -> Path:
    """Copy the model files of ``src`` into ``out_dir`` atomically (as :func:`xfer.save_model` does)."""
    def copy(tmp: Path) -> None:
        for name in HUB_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)  # follows the cache's symlinks: real files in out

    return write_model_folder(out_dir, copy)


__all__ = ["HUB_FILES", "HubUnreachable", "PushResult", "Revision", "push", "pull", "pull_to", "resolve"]
