"""A small, stdlib-only, Hugging Face Hub-compatible HTTP server for offline tests.

The goal is to let the *real* ``huggingface_hub`` client (``HfApi``, ``create_repo``, ``upload_folder``,
``snapshot_download``, ``hf_hub_download``, ``model_info``, ``list_repo_files``, ``list_repo_refs``...) talk to
``127.0.0.1`` instead of huggingface.co, so that upload/download code paths are exercised end to end without
network access. Only model repos (``namespace/name``) are supported.

What was verified against ``huggingface_hub==2.4.0`` (see ``tests/test_hub_server.py``):

* Pass the server URL explicitly: ``HfApi(endpoint=server.url)``, ``snapshot_download(..., endpoint=server.url)``,
  ``hf_hub_download(..., endpoint=server.url)``. ``snapshot_download`` forwards ``endpoint`` to every call it makes
  (``repo_info``, ``list_repo_tree`` and one ``hf_hub_download`` per file). ``huggingface_hub.constants.ENDPOINT`` is
  read from ``HF_ENDPOINT`` at import time only, so setting the env var later has no effect in-process.
* The one call that ignores ``endpoint=``: the first ``build_hf_headers()`` of a process (unless telemetry is
  disabled) fetches ``{constants.ENDPOINT}/api/agent-harnesses`` (i.e. huggingface.co) with a 3 s timeout to build
  the user-agent. ``tests/hub_fixtures.py`` sets ``constants.HF_HUB_DISABLE_TELEMETRY = True`` to skip it. The server
  answers that route anyway, for subprocesses started with ``HF_ENDPOINT`` pointing at it.
* Offline mode can be toggled at runtime: every request goes through an httpx event hook that calls
  ``constants.is_offline_mode()``, which reads the module global ``constants.HF_HUB_OFFLINE`` on each call, so
  ``monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)`` makes every request raise
  ``OfflineModeIsEnabled`` and ``snapshot_download`` / ``hf_hub_download`` fall back to the cache.
* Xet: ``hf_xet`` is installed, so ``upload_folder`` goes through the "pipelined" uploader and downloads would use
  Xet for any file whose ``HEAD /resolve`` response carries ``X-Xet-Hash`` (or whose tree entry has ``xetHash``).
  This server never sends Xet headers and answers ``uploadMode: "regular"`` to every ``preupload`` request, so
  all content travels base64-encoded inside the NDJSON commit payload and downloads are plain HTTP GETs.
* Retries: ``upload_folder`` (pipelined) POSTs the commit with ``http_backoff`` (5 retries on 408/429/5xx and on
  network errors, sleeping 1+2+4+8+8 s), ``create_commit``/``upload_file`` POST it once. ``preupload`` and tree
  listings are always retried; ``HEAD /resolve`` is not retried during ``hf_hub_download`` (it falls back to the
  cache), the file GET is retried on network errors only.
* Errors mimic the Hub: unknown/invisible repo -> ``X-Error-Code: RepoNotFound`` (401 for anonymous requests, 404
  otherwise), unknown revision -> ``RevisionNotFound``, missing file -> ``EntryNotFound``. An unknown token is
  rejected on *every* endpoint with 401 ``Invalid credentials in Authorization header`` (as huggingface.co does),
  which the client raises as a plain ``HfHubHTTPError`` (not ``RepositoryNotFoundError``). ``hf_raise_for_status``
  only maps an error-code-less 401 to ``RepositoryNotFoundError`` for ``https://`` URLs, hence the explicit codes.
* Like huggingface.co, ``create_repo`` makes an initial commit containing a ``.gitattributes`` file, so downloads
  of a repo include it.

Storage: blobs are content-addressed by their git blob id under ``root/blobs/`` and each repo's metadata (branches,
tags, commits with their full file maps, so that every old revision stays resolvable) lives in
``root/repos/<namespace>/<name>/repo.json``. A new ``HubServer`` on the same ``root`` sees the same repos. Tokens
are only kept in memory (they are never written to ``root``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import threading
import traceback
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["HubServer", "RecordedRequest"]

# Same content as the ".gitattributes" the Hub puts in the initial commit of a new repo (shortened).
_INITIAL_GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pth filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    b"*.onnx filter=lfs diff=lfs merge=lfs -text\n"
    b"*.zip filter=lfs diff=lfs merge=lfs -text\n"
)

_REPO_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_FULL_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_SHORT_SHA_RE = re.compile(r"^[0-9a-f]{7,39}$")
_INVALID_TOKEN_MESSAGE = "Invalid credentials in Authorization header"


class RecordedRequest(NamedTuple):
    """One request seen by the server. ``headers`` keys are lower-cased (HTTP header names are case-insensitive)."""

    method: str
    path: str
    headers: dict[str, str]


class _HubError(Exception):
    """An HTTP error answered the way huggingface.co does (status, ``X-Error-Code``, ``X-Error-Message``)."""

    def __init__(
        self,
        status: int,
        message: str,
        error_code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers = headers or {}
        self.extra = extra or {}  # additional JSON body fields


class _Fault:
    """A pending fault-injection rule (see :meth:`HubServer.fail_next`)."""

    def __init__(self, remaining: int, mode: str, match: str) -> None:
        self.remaining = remaining
        self.mode = mode
        self.match = match


def _now() -> str:
    # The client's `parse_datetime` expects exactly '%Y-%m-%dT%H:%M:%S.%fZ'.
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _git_blob_id(content: bytes) -> str:
    # Same algorithm as `git hash-object` (and `huggingface_hub.utils.sha.git_hash`): the client compares it with
    # the `oid` returned by `preupload` to skip unchanged files.
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _validate_path_in_repo(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or parts[0] == ".git":
        raise _HubError(400, f"Invalid path in repo: {path!r}")
    return path


class _Store:
    """Repos, commits and blobs persisted under ``root``. All public methods hold ``self.lock``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repos_dir = root / "repos"
        self.blobs_dir = root / "blobs"
        self.repos_dir.mkdir(parents=True, exist_ok=True)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        # One re-entrant lock for the whole store: test repos are tiny, correctness beats concurrency here.
        self.lock = threading.RLock()
        self.repos: dict[str, dict[str, Any]] = {}
        for meta in sorted(self.repos_dir.glob("*/*/repo.json")):
            data = json.loads(meta.read_text(encoding="utf-8"))
            self.repos[data["id"]] = data

    # -- blobs --------------------------------------------------------------------------------------------------

    def put_blob(self, content: bytes) -> str:
        oid = _git_blob_id(content)
        path = self.blobs_dir / oid
        if not path.exists():
            tmp = path.with_name(f"{oid}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(content)
            os.replace(tmp, path)  # atomic: concurrent readers never see a partial blob
        return oid

    def read_blob(self, oid: str) -> bytes:
        return (self.blobs_dir / oid).read_bytes()

    # -- repos --------------------------------------------------------------------------------------------------

    def _save(self, repo: dict[str, Any]) -> None:
        path = self.repos_dir / repo["id"] / "repo.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"repo.json.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(repo, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)

    def get(self, repo_id: str) -> dict[str, Any] | None:
        with self.lock:
            return self.repos.get(repo_id)

    def create(self, repo_id: str, *, private: bool, author: str) -> dict[str, Any]:
        with self.lock:
            now = _now()
            repo: dict[str, Any] = {
                "id": repo_id,
                "private": private,
                "gated": False,
                "createdAt": now,
                "branches": {},
                "tags": {},
                "commits": {},
            }
            oid = self.put_blob(_INITIAL_GITATTRIBUTES)
            files = {".gitattributes": {"oid": oid, "size": len(_INITIAL_GITATTRIBUTES)}}
            sha = self._new_commit(repo, parents=[], files=files, title="initial commit", message="", author="system")
            repo["branches"]["main"] = sha
            self.repos[repo_id] = repo
            self._save(repo)
            return repo

    def delete(self, repo_id: str) -> None:
        with self.lock:
            self.repos.pop(repo_id, None)
            meta = self.repos_dir / repo_id / "repo.json"
            meta.unlink(missing_ok=True)
            try:
                meta.parent.rmdir()
            except OSError:
                pass

    def update(self, repo: dict[str, Any]) -> None:
        with self.lock:
            self._save(repo)

    @staticmethod
    def _new_commit(
        repo: dict[str, Any],
        *,
        parents: list[str],
        files: dict[str, dict[str, Any]],
        title: str,
        message: str,
        author: str,
    ) -> str:
        date = _now()
        # Not a real git commit id, but a unique 40-hex sha1 derived from the commit content (the client only
        # checks the format, e.g. `REGEX_COMMIT_HASH` to decide whether a revision is a commit hash).
        seed = json.dumps([parents, files, title, message, author, date, uuid.uuid4().hex], sort_keys=True)
        sha = hashlib.sha1(seed.encode()).hexdigest()
        repo["commits"][sha] = {
            "id": sha,
            "parents": parents,
            "files": files,
            "title": title,
            "message": message,
            "authors": [author],
            "date": date,
        }
        return sha

    def resolve(self, repo: dict[str, Any], revision: str) -> str:
        """Branch, tag, full commit sha or unambiguous short sha -> commit sha."""
        with self.lock:
            if revision in repo["branches"]:
                return repo["branches"][revision]
            if revision in repo["tags"]:
                return repo["tags"][revision]
            if _FULL_SHA_RE.match(revision) and revision in repo["commits"]:
                return revision
            if _SHORT_SHA_RE.match(revision):
                candidates = [sha for sha in repo["commits"] if sha.startswith(revision)]
                if len(candidates) == 1:
                    return candidates[0]
        raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def commit(
        self,
        repo: dict[str, Any],
        *,
        branch: str,
        operations: list[dict[str, Any]],
        title: str,
        message: str,
        author: str,
        parent_commit: str | None,
    ) -> str:
        with self.lock:
            head = repo["branches"][branch]
            if parent_commit is not None and not head.startswith(parent_commit):
                # Same status as the Hub when `parent_commit` is not the branch head anymore.
                raise _HubError(412, "A commit has happened since. Please refresh and try again.")
            files = {path: dict(info) for path, info in repo["commits"][head]["files"].items()}
            for op in operations:
                kind, value = op.get("key"), op.get("value") or {}
                if kind == "file":
                    path = _validate_path_in_repo(value.get("path", ""))
                    raw = value.get("content", "")
                    encoding = value.get("encoding", "utf-8")
                    content = base64.b64decode(raw) if encoding == "base64" else str(raw).encode("utf-8")
                    files[path] = {"oid": self.put_blob(content), "size": len(content)}
                elif kind == "deletedFile":
                    path = value.get("path", "")
                    if path not in files:
                        raise _HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                elif kind == "deletedFolder":
                    prefix = value.get("path", "").rstrip("/") + "/"
                    doomed = [p for p in files if p.startswith(prefix)]
                    if not doomed:
                        raise _HubError(404, f"A folder with this name doesn't exist: {prefix}", "EntryNotFound")
                    for path in doomed:
                        del files[path]
                elif kind == "lfsFile":
                    # Never happens with this server (preupload always answers "regular"); refusing loudly is
                    # better than committing a pointer to content we never received.
                    raise _HubError(400, "LFS/Xet uploads are not supported by the test Hub server")
                else:
                    raise _HubError(400, f"Unknown commit operation: {kind!r}")
            sha = self._new_commit(
                repo, parents=[head], files=files, title=title, message=message, author=author
            )
            repo["branches"][branch] = sha
            self._save(repo)
            return sha


class _ThreadingServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` that remembers its open connections so ``stop()`` can cut keep-alive ones."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], hub: HubServer) -> None:
        self.hub = hub
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_all_connections(self) -> None:
        # Without this, the client's pooled keep-alive connections would still be served by handler threads of a
        # "stopped" server, and offline/server-down tests would silently keep working.
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keep-alive like the real Hub (every response carries a Content-Length).
    protocol_version = "HTTP/1.1"
    server: _ThreadingServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature from the base class
        pass  # keep pytest output clean; `HubServer.requests` is the log

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._handle("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self, method: str) -> None:
        hub = self.server.hub
        hub._record(RecordedRequest(method, self.path, {k.lower(): v for k, v in self.headers.items()}))
        # Read the body before any injected fault so that a "drop" looks like a server dying mid-request
        # (client sees "Server disconnected without sending a response"), not like a half-sent request.
        body = self._read_body()
        fault = hub._take_fault(self.path)
        if fault == "drop":
            self.close_connection = True
            return
        if fault is not None:
            self.send_json(int(fault), {"error": f"Injected failure ({fault})"}, method=method)
            return
        try:
            hub._route(self, method, body)
        except _HubError as err:
            headers = dict(err.headers)
            headers["X-Error-Message"] = err.message
            if err.error_code:
                headers["X-Error-Code"] = err.error_code
            self.send_json(err.status, {**err.extra, "error": err.message}, headers=headers, method=method)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as err:  # pragma: no cover - surfaced to the client as a 500 to ease debugging
            traceback.print_exc()
            self.send_json(500, {"error": f"Test Hub server bug: {err!r}"}, method=method)

    def send_bytes(
        self,
        status: int,
        body: bytes,
        *,
        headers: dict[str, str] | None = None,
        content_type: str = "application/octet-stream",
        method: str = "GET",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))  # also for HEAD: the client reads the size from it
        for key, value in (headers or {}).items():
            # http.server encodes header values as latin-1: escape anything else (e.g. a unicode path in a message).
            self.send_header(key, value.encode("ascii", "backslashreplace").decode("ascii"))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def send_json(
        self, status: int, payload: Any, *, headers: dict[str, str] | None = None, method: str = "GET"
    ) -> None:
        self.send_bytes(
            status,
            json.dumps(payload).encode("utf-8"),
            headers=headers,
            content_type="application/json; charset=utf-8",
            method=method,
        )


class HubServer:
    """Hugging Face Hub look-alike serving model repos from ``root`` on ``http://127.0.0.1:<free port>``.

    Args:
        root: directory where repos and blobs are stored (created if missing).
        tokens: valid access tokens mapped to the user name they authenticate (e.g. ``{"hf_x": "alice"}``).
            Repos can only be created in (and written to) the namespace of the token's user; private repos are
            only visible to that user.

    Usage::

        with HubServer(tmp_path / "hub", tokens={"hf_test_token": "alice"}) as server:
            api = HfApi(endpoint=server.url, token="hf_test_token")
            api.create_repo("alice/demo")
            server.fail_next(1, mode="500", match="/commit/")  # next commit POST answers HTTP 500

    Attributes:
        url: base URL (``http://127.0.0.1:PORT``), set by :meth:`start`.
        requests: copy of the request log, as :class:`RecordedRequest` ``(method, path, headers)`` tuples.
    """

    def __init__(self, root: Path, tokens: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.tokens: dict[str, str] = dict(tokens or {})
        self.url: str = ""
        self._store = _Store(self.root)
        self._httpd: _ThreadingServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._log: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        """Start serving in a background thread. After :meth:`stop`, restarts on the same port when possible."""
        if self._httpd is not None:
            return self
        try:
            httpd = _ThreadingServer(("127.0.0.1", self._port), self)
        except OSError:
            httpd = _ThreadingServer(("127.0.0.1", 0), self)
        self._httpd = httpd
        self._port = httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self._port}"
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection (the URL then refuses connections)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.close_all_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- test helpers -------------------------------------------------------------------------------------------

    def fail_next(self, n: int = 1, mode: str = "500", match: str = "") -> None:
        """Make the next ``n`` requests whose raw path (with query string) contains ``match`` fail.

        ``mode`` is ``"drop"`` (close the connection without answering: the client gets a connection error) or an
        HTTP status code as a string (``"500"``, ``"503"``, ``"429"``...) answered with a JSON error body. Rules
        are consumed in the order they were added; the request still appears in :attr:`requests`.
        """
        if n < 1:
            raise ValueError("n must be >= 1")
        if mode != "drop" and not (mode.isdigit() and 400 <= int(mode) <= 599):
            raise ValueError(f"mode must be 'drop' or an HTTP error status code, got {mode!r}")
        with self._lock:
            self._faults.append(_Fault(n, mode, match))

    def clear_faults(self) -> None:
        """Forget every pending :meth:`fail_next` rule."""
        with self._lock:
            self._faults.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._log.append(request)

    def _take_fault(self, raw_path: str) -> str | None:
        with self._lock:
            for fault in self._faults:
                if fault.match in raw_path:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault.mode
        return None

    # -- auth ---------------------------------------------------------------------------------------------------

    def _user(self, handler: _Handler) -> str | None:
        header = handler.headers.get("Authorization")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        user = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise _HubError(401, _INVALID_TOKEN_MESSAGE)
        return user

    def _readable_repo(self, repo_id: str, user: str | None) -> dict[str, Any]:
        repo = self._store.get(repo_id)
        if repo is None or (repo["private"] and user != repo_id.split("/")[0]):
            # Hub behaviour: a repo you cannot see does not exist; anonymous callers get a 401.
            raise _HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def _writable_repo(self, repo_id: str, user: str | None) -> dict[str, Any]:
        repo = self._readable_repo(repo_id, user)
        if user is None:
            raise _HubError(401, "You must be authenticated to write to a repo")
        if user != repo_id.split("/")[0]:
            raise _HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    # -- routing ------------------------------------------------------------------------------------------------

    def _route(self, h: _Handler, method: str, body: bytes) -> None:
        split = urlsplit(h.path)
        query = parse_qs(split.query)
        # Unquote segment by segment: the client quotes revisions and tree paths with safe="" (so "/" -> %2F).
        seg = [unquote(s) for s in split.path.split("/")[1:]]
        user = self._user(h)

        if seg[:1] == ["api"]:
            rest = seg[1:]
            if rest == ["whoami-v2"] and method == "GET":
                if user is None:
                    raise _HubError(401, _INVALID_TOKEN_MESSAGE)
                return h.send_json(200, self._whoami(user))
            if rest == ["agent-harnesses"] and method in ("GET", "HEAD"):
                # Fetched by the client to build its user-agent; an empty registry means "no agent detected".
                return h.send_json(200, {"standardEnvVars": [], "harnesses": {}}, method=method)
            if rest == ["validate-yaml"] and method == "POST":
                return self._validate_yaml(h, body)
            if rest == ["repos", "create"] and method == "POST":
                return self._create_repo(h, body, user)
            if rest == ["repos", "delete"] and method in ("POST", "DELETE"):
                return self._delete_repo(h, body, user)
            if len(rest) >= 3 and rest[0] in ("datasets", "spaces", "kernels"):
                raise _HubError(404, "The test Hub server only hosts model repos", "RepoNotFound")
            if len(rest) >= 3 and rest[0] == "models":
                return self._model_api(h, method, f"{rest[1]}/{rest[2]}", rest[3:], query, body, user)
        elif len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve_file(h, method, f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]), user)
        elif len(seg) >= 6 and seg[0] in ("datasets", "spaces", "kernels") and seg[3] == "resolve":
            raise _HubError(404, "The test Hub server only hosts model repos", "RepoNotFound")
        raise _HubError(404, f"Unknown endpoint: {method} {split.path}")

    def _model_api(
        self,
        h: _Handler,
        method: str,
        repo_id: str,
        rest: list[str],
        query: dict[str, list[str]],
        body: bytes,
        user: str | None,
    ) -> None:
        action = rest[0] if rest else None
        if action is None and method == "GET":
            repo = self._readable_repo(repo_id, user)
            return h.send_json(200, self._repo_info(repo, "main", blobs=_truthy(query, "blobs")))
        if action == "revision" and len(rest) >= 2 and method == "GET":
            repo = self._readable_repo(repo_id, user)
            return h.send_json(200, self._repo_info(repo, "/".join(rest[1:]), blobs=_truthy(query, "blobs")))
        if action == "tree" and len(rest) >= 2 and method == "GET":
            repo = self._readable_repo(repo_id, user)
            path = "/".join(rest[2:]).strip("/")
            return h.send_json(200, self._tree(repo, rest[1], path, recursive=_truthy(query, "recursive")))
        if action == "paths-info" and len(rest) >= 2 and method == "POST":
            repo = self._readable_repo(repo_id, user)
            return h.send_json(200, self._paths_info(repo, "/".join(rest[1:]), h, body))
        if action == "preupload" and len(rest) >= 2 and method == "POST":
            repo = self._writable_repo(repo_id, user)
            return h.send_json(200, self._preupload(repo, "/".join(rest[1:]), body))
        if action == "commit" and len(rest) >= 2 and method == "POST":
            repo = self._writable_repo(repo_id, user)
            assert user is not None
            return h.send_json(200, self._commit(repo, "/".join(rest[1:]), query, body, user))
        if action == "refs" and method == "GET":
            repo = self._readable_repo(repo_id, user)
            return h.send_json(200, self._refs(repo, include_prs=_truthy(query, "include_prs")))
        if action == "commits" and method == "GET":
            repo = self._readable_repo(repo_id, user)
            return h.send_json(200, self._commits(repo, "/".join(rest[1:]) or "main"))
        if action == "branch" and len(rest) >= 2 and method in ("POST", "DELETE"):
            repo = self._writable_repo(repo_id, user)
            return h.send_json(200, self._branch(repo, method, "/".join(rest[1:]), body))
        if action == "tag" and len(rest) >= 2 and method in ("POST", "DELETE"):
            repo = self._writable_repo(repo_id, user)
            return h.send_json(200, self._tag(repo, method, "/".join(rest[1:]), body))
        if action == "settings" and method == "PUT":
            repo = self._writable_repo(repo_id, user)
            return h.send_json(200, self._settings(repo, body))
        raise _HubError(404, f"Unknown endpoint: {method} /api/models/{repo_id}/{'/'.join(rest)}")

    # -- endpoints ----------------------------------------------------------------------------------------------

    @staticmethod
    def _whoami(user: str) -> dict[str, Any]:
        return {
            "type": "user",
            "id": hashlib.sha1(user.encode()).hexdigest()[:24],
            "name": user,
            "fullname": user,
            "email": f"{user}@example.com",
            "emailVerified": True,
            "isPro": False,
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
        }

    @staticmethod
    def _validate_yaml(h: _Handler, body: bytes) -> None:
        content = str(_json_body(body).get("content", ""))
        lines = content.splitlines()
        # Minimal check mirroring the Hub's most common failure: front matter opened but never closed.
        if lines and lines[0].strip() == "---" and not any(line.strip() == "---" for line in lines[1:]):
            return h.send_json(400, {"errors": [{"message": "YAML front matter is not closed"}], "warnings": []})
        return h.send_json(200, {"errors": [], "warnings": []})

    def _create_repo(self, h: _Handler, body: bytes, user: str | None) -> None:
        payload = _json_body(body)
        if user is None:
            raise _HubError(401, "You must be authenticated to create a repo")
        if payload.get("type", "model") not in (None, "model"):
            raise _HubError(400, "The test Hub server only hosts model repos")
        name = str(payload.get("name") or "")
        namespace = payload.get("organization") or user
        if not _REPO_NAME_RE.match(name) or "--" in name or ".." in name:
            raise _HubError(400, f"Invalid repo name: {name!r}")
        if namespace != user:
            raise _HubError(403, f"You don't have the rights to create a repo under {namespace!r}")
        repo_id = f"{namespace}/{name}"
        visibility = payload.get("visibility")
        private = visibility == "private" if visibility is not None else bool(payload.get("private", False))
        with self._store.lock:
            if self._store.get(repo_id) is not None:
                # `create_repo(exist_ok=True)` swallows the 409 and then reads "url" from this body.
                raise _HubError(409, "You already created this model repo", extra={"url": f"{self.url}/{repo_id}"})
            self._store.create(repo_id, private=private, author=user)
        return h.send_json(200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _delete_repo(self, h: _Handler, body: bytes, user: str | None) -> None:
        payload = _json_body(body)
        if payload.get("type", "model") not in (None, "model"):
            raise _HubError(404, "The test Hub server only hosts model repos", "RepoNotFound")
        repo_id = f"{payload.get('organization') or user}/{payload.get('name')}"
        self._writable_repo(repo_id, user)
        self._store.delete(repo_id)
        return h.send_json(200, {})

    def _repo_info(self, repo: dict[str, Any], revision: str, *, blobs: bool) -> dict[str, Any]:
        sha = self._store.resolve(repo, revision)
        commit = repo["commits"][sha]
        siblings = []
        for path, info in sorted(commit["files"].items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=info["size"], blobId=info["oid"])
            siblings.append(sibling)
        namespace = repo["id"].split("/")[0]
        return {
            "_id": hashlib.sha1(repo["id"].encode()).hexdigest()[:24],
            "id": repo["id"],
            "modelId": repo["id"],
            "author": namespace,
            "sha": sha,
            "lastModified": commit["date"],
            "createdAt": repo["createdAt"],
            "private": repo["private"],
            "gated": repo.get("gated", False),
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "library_name": None,
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(info["size"] for info in commit["files"].values()),
        }

    @staticmethod
    def _folder_oid(files: dict[str, dict[str, Any]], folder: str) -> str:
        prefix = folder + "/" if folder else ""
        listing = sorted((p, i["oid"]) for p, i in files.items() if p.startswith(prefix))
        return hashlib.sha1(json.dumps(listing).encode()).hexdigest()

    def _entry(self, files: dict[str, dict[str, Any]], path: str) -> dict[str, Any] | None:
        if path in files:
            return {"type": "file", "oid": files[path]["oid"], "size": files[path]["size"], "path": path}
        if any(p.startswith(path + "/") for p in files):
            return {"type": "directory", "oid": self._folder_oid(files, path), "size": 0, "path": path}
        return None

    def _tree(self, repo: dict[str, Any], revision: str, path: str, *, recursive: bool) -> list[dict[str, Any]]:
        sha = self._store.resolve(repo, revision)
        files = repo["commits"][sha]["files"]
        if path:
            entry = self._entry(files, path)
            if entry is None or entry["type"] != "directory":
                raise _HubError(
                    404, f"{path} does not exist on {revision}", "EntryNotFound", {"X-Repo-Commit": sha}
                )
        prefix = path + "/" if path else ""
        names: set[str] = set()
        for file_path in files:
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix) :].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, depth + 1):
                names.add(prefix + "/".join(parts[:i]))
        entries = [self._entry(files, name) for name in sorted(names)]
        # Folders first, like the Hub.
        return sorted((e for e in entries if e), key=lambda e: (e["type"] != "directory", e["path"]))

    def _paths_info(self, repo: dict[str, Any], revision: str, h: _Handler, body: bytes) -> list[dict[str, Any]]:
        sha = self._store.resolve(repo, revision)
        files = repo["commits"][sha]["files"]
        if "json" in h.headers.get("Content-Type", ""):
            paths = _json_body(body).get("paths", [])
        else:  # `get_paths_info` sends a form-encoded body: paths=a&paths=b&expand=False
            paths = parse_qs(body.decode("utf-8")).get("paths", [])
        entries = [self._entry(files, str(p).strip("/")) for p in paths]
        return [e for e in entries if e is not None]

    def _preupload(self, repo: dict[str, Any], revision: str, body: bytes) -> dict[str, Any]:
        sha = self._store.resolve(repo, revision)
        files = repo["commits"][sha]["files"]
        answer = []
        for item in _json_body(body).get("files", []):
            path = str(item.get("path", ""))
            answer.append(
                {
                    "path": path,
                    # Always "regular": answering "lfs" makes hf_xet-enabled clients upload through Xet/LFS
                    # storage that this server does not implement.
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    # Lets the client skip files whose content did not change (git blob id comparison).
                    "oid": files[path]["oid"] if path in files else None,
                }
            )
        return {"files": answer, "commitOid": sha}

    def _commit(
        self, repo: dict[str, Any], revision: str, query: dict[str, list[str]], body: bytes, user: str
    ) -> dict[str, Any]:
        if _truthy(query, "create_pr"):
            raise _HubError(400, "Pull requests are not supported by the test Hub server")
        if revision not in repo["branches"]:
            self._store.resolve(repo, revision)  # raises RevisionNotFound for unknown revisions
            raise _HubError(400, f"Can only commit to a branch, got {revision!r}")
        lines = [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]
        header = next((line.get("value", {}) for line in lines if line.get("key") == "header"), None)
        if header is None:
            raise _HubError(400, "Missing commit header line")
        title = str(header.get("summary") or "").strip()
        if not title:
            raise _HubError(400, "Commit summary is required")
        sha = self._store.commit(
            repo,
            branch=revision,
            operations=[line for line in lines if line.get("key") != "header"],
            title=title,
            message=str(header.get("description") or ""),
            author=user,
            parent_commit=header.get("parentCommit"),
        )
        return {
            "success": True,
            "commitOid": sha,
            "commitUrl": f"{self.url}/{repo['id']}/commit/{sha}",
            "commitMessage": title,
            "hookOutput": "",
            "pullRequestUrl": None,
        }

    @staticmethod
    def _refs(repo: dict[str, Any], *, include_prs: bool) -> dict[str, Any]:
        def ref(name: str, kind: str, sha: str) -> dict[str, str]:
            return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": sha}

        answer: dict[str, Any] = {
            "branches": [ref(n, "heads", s) for n, s in sorted(repo["branches"].items())],
            "tags": [ref(n, "tags", s) for n, s in sorted(repo["tags"].items())],
            "converts": [],
        }
        if include_prs:
            answer["pullRequests"] = []
        return answer

    def _commits(self, repo: dict[str, Any], revision: str) -> list[dict[str, Any]]:
        sha: str | None = self._store.resolve(repo, revision)
        history = []
        while sha is not None:
            commit = repo["commits"][sha]
            history.append(
                {
                    "id": sha,
                    "title": commit["title"],
                    "message": commit["message"],
                    "authors": [{"user": a} for a in commit["authors"]],
                    "date": commit["date"],
                }
            )
            sha = commit["parents"][0] if commit["parents"] else None
        return history

    def _branch(self, repo: dict[str, Any], method: str, branch: str, body: bytes) -> dict[str, Any]:
        with self._store.lock:
            if method == "DELETE":
                if branch not in repo["branches"]:
                    raise _HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
                if branch == "main":
                    raise _HubError(403, "Cannot delete the default branch")
                del repo["branches"][branch]
            else:
                if branch in repo["branches"]:
                    raise _HubError(409, f"Reference already exists: refs/heads/{branch}")
                start = _json_body(body).get("startingPoint") or "main"
                repo["branches"][branch] = self._store.resolve(repo, start)
            self._store.update(repo)
        return {}

    def _tag(self, repo: dict[str, Any], method: str, name: str, body: bytes) -> dict[str, Any]:
        with self._store.lock:
            if method == "DELETE":
                if name not in repo["tags"]:
                    raise _HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
                del repo["tags"][name]
            else:  # POST /tag/{revision} with {"tag": name}
                tag = str(_json_body(body).get("tag") or "")
                if not tag:
                    raise _HubError(400, "Missing tag name")
                if tag in repo["tags"]:
                    raise _HubError(409, f"Reference already exists: refs/tags/{tag}")
                repo["tags"][tag] = self._store.resolve(repo, name)
            self._store.update(repo)
        return {}

    def _settings(self, repo: dict[str, Any], body: bytes) -> dict[str, Any]:
        payload = _json_body(body)
        with self._store.lock:
            if "visibility" in payload:
                repo["private"] = payload["visibility"] == "private"
            elif "private" in payload:
                repo["private"] = bool(payload["private"])
            if "gated" in payload:
                repo["gated"] = payload["gated"]
            self._store.update(repo)
        return {}

    def _resolve_file(
        self, h: _Handler, method: str, repo_id: str, revision: str, path: str, user: str | None
    ) -> None:
        repo = self._readable_repo(repo_id, user)
        sha = self._store.resolve(repo, revision)
        info = repo["commits"][sha]["files"].get(path)
        if info is None:
            # X-Repo-Commit on the 404 lets the client cache the non-existence (`.no_exist/<sha>/<path>`).
            raise _HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        content = self._store.read_blob(info["oid"])
        headers = {
            "X-Repo-Commit": sha,
            # Quoted git blob id, like the Hub for non-LFS files; the client uses it as the cache blob name.
            "ETag": f'"{info["oid"]}"',
            "Accept-Ranges": "bytes",
        }
        status, start, end = 200, 0, len(content)
        range_header = h.headers.get("Range")
        if range_header:
            parsed = _parse_range(range_header, len(content))
            if parsed is None:
                headers["Content-Range"] = f"bytes */{len(content)}"
                return h.send_bytes(416, b"", headers=headers, method=method)
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(content)}"
        return h.send_bytes(status, content[start:end], headers=headers, method=method)


def _truthy(query: dict[str, list[str]], key: str) -> bool:
    values = query.get(key)
    return bool(values) and values[-1].lower() in ("1", "true", "yes")


def _json_body(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    try:
        data = json.loads(body)
    except ValueError as err:
        raise _HubError(400, f"Invalid JSON body: {err}") from err
    if not isinstance(data, dict):
        raise _HubError(400, "JSON body must be an object")
    return data


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Single ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range -> half-open ``(start, end)``, or None if invalid."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.groups()
    if not first:
        start, end = max(size - int(last), 0), size
    else:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
    if start >= size or start >= end:
        return None
    return start, end
