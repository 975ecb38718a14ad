"""Tests of ``tests/hub_server.py`` driven by the real ``huggingface_hub`` client (offline, no torch)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time as real_time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import httpx2  # the HTTP library huggingface_hub 2.x is built on (a fork of httpx, not `requests`)
import huggingface_hub.utils._http as hf_http
import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

import hub_fixtures
from hub_fixtures import ALICE_TOKEN, BOB_TOKEN
from hub_server import HubServer

# Make the fixtures visible to this module (redundant, and harmless, once conftest.py imports hub_fixtures).
hub_server = hub_fixtures.hub_server
hf_client_isolation = hub_fixtures.hf_client_isolation

REPO = "alice/demo"
README = "---\nlicense: mit\ntags:\n- image-classification\n---\n# Demo model\n"
BINARY = bytes(range(256)) * 8 + b"\x00\xff\x00end"  # NULs and non-UTF-8 bytes must survive the round trip


def _make_folder(root: Path) -> dict[str, bytes]:
    files = {
        "README.md": README.encode(),
        "model.bin": BINARY,
        "config/labels.json": json.dumps({"0": "cat", "1": "dog"}).encode(),
        "notes/ünïcode name #1.txt": "é".encode(),  # URL quoting of paths
    }
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    return files


def _read_tree(folder: str | Path) -> dict[str, bytes]:
    base = Path(folder)
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def _git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@pytest.fixture
def alice(hub_server: HubServer) -> HfApi:
    return HfApi(endpoint=hub_server.url, token=ALICE_TOKEN)


@pytest.fixture
def uploaded(alice: HfApi, tmp_path: Path) -> tuple[str, dict[str, bytes]]:
    """``alice/demo`` with one uploaded folder; returns (commit sha, uploaded files)."""
    alice.create_repo(REPO)
    src = tmp_path / "src"
    files = _make_folder(src)
    info = alice.upload_folder(repo_id=REPO, folder_path=src, commit_message="first upload")
    return info.oid, files


@pytest.fixture
def no_backoff_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip `http_backoff` sleeps (1+2+4+8+8 s over 5 retries) without touching `time.sleep` globally."""

    class _NoSleepTime:
        def __getattr__(self, name: str) -> Any:
            return getattr(real_time, name)

        @staticmethod
        def sleep(seconds: float) -> None:
            pass

    monkeypatch.setattr(hf_http, "time", _NoSleepTime())


def test_create_repo_exist_ok_and_namespace_rules(hub_server: HubServer, alice: HfApi) -> None:
    url = alice.create_repo(REPO)
    assert url.repo_id == REPO and url.endpoint == hub_server.url

    with pytest.raises(HfHubHTTPError) as exc:
        alice.create_repo(REPO)
    assert exc.value.response.status_code == 409
    assert alice.create_repo(REPO, exist_ok=True).repo_id == REPO

    bob = HfApi(endpoint=hub_server.url, token=BOB_TOKEN)
    with pytest.raises(HfHubHTTPError) as exc:
        bob.create_repo("alice/other")
    assert exc.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as exc:
        HfApi(endpoint=hub_server.url, token=False).create_repo("alice/anon")
    assert exc.value.response.status_code == 401

    assert alice.whoami()["name"] == "alice"
    assert bob.whoami()["name"] == "bob"
    # Like the Hub, a new repo starts with an "initial commit" holding a .gitattributes file.
    assert alice.list_repo_files(REPO) == [".gitattributes"]

    alice.delete_repo(REPO)
    with pytest.raises(RepositoryNotFoundError):
        alice.model_info(REPO)
    alice.delete_repo(REPO, missing_ok=True)


def test_upload_folder_then_snapshot_download_roundtrip(
    hub_server: HubServer, uploaded: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    sha, files = uploaded
    assert re.fullmatch(r"[0-9a-f]{40}", sha)

    path = snapshot_download(REPO, endpoint=hub_server.url, cache_dir=tmp_path / "cache", token=False)
    assert Path(path).name == sha  # snapshots/<commit sha>
    downloaded = _read_tree(path)
    assert set(downloaded) == set(files) | {".gitattributes"}
    for rel, content in files.items():
        assert downloaded[rel] == content, rel

    single = hf_hub_download(
        REPO, "config/labels.json", endpoint=hub_server.url, cache_dir=tmp_path / "other_cache", token=False
    )
    assert Path(single).read_bytes() == files["config/labels.json"]

    log = hub_server.requests
    commits = [r for r in log if r.method == "POST" and "/commit/" in r.path]
    assert len(commits) == 1
    assert commits[0].headers["authorization"] == f"Bearer {ALICE_TOKEN}"
    assert any(r.path == "/api/validate-yaml" for r in log)  # README.md front matter was validated
    # Everything went through plain HTTP: no Xet token / LFS batch endpoints were ever asked for.
    assert not [r for r in log if "xet" in r.path.lower() or ".git/info/lfs" in r.path]
    # Downloads were anonymous (token=False) and the cache is keyed by the git blob id (ETag).
    downloads = [r for r in log if "/resolve/" in r.path]
    assert downloads and all("authorization" not in r.headers for r in downloads)
    blobs = Path(tmp_path / "cache" / "models--alice--demo" / "blobs")
    assert _git_blob_id(BINARY) in {p.name for p in blobs.iterdir()}


def test_second_commit_keeps_old_revision_downloadable(
    hub_server: HubServer, alice: HfApi, uploaded: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    first_sha, files = uploaded
    second = alice.upload_file(path_or_fileobj=b"v2 weights", path_in_repo="model.bin", repo_id=REPO)
    assert second.oid != first_sha and len(second.oid) == 40
    assert alice.model_info(REPO).sha == second.oid
    assert alice.list_repo_refs(REPO).branches[0].target_commit == second.oid
    assert [c.commit_id for c in alice.list_repo_commits(REPO)][:2] == [second.oid, first_sha]

    cache = tmp_path / "cache"
    new = hf_hub_download(REPO, "model.bin", endpoint=hub_server.url, cache_dir=cache)
    old = hf_hub_download(REPO, "model.bin", revision=first_sha, endpoint=hub_server.url, cache_dir=cache)
    assert Path(new).read_bytes() == b"v2 weights"
    assert Path(old).read_bytes() == files["model.bin"]

    old_snapshot = snapshot_download(REPO, revision=first_sha, endpoint=hub_server.url, cache_dir=tmp_path / "c2")
    assert _read_tree(old_snapshot)["model.bin"] == files["model.bin"]
    assert alice.model_info(REPO, revision=first_sha).sha == first_sha

    # Re-uploading identical content makes no new commit: `preupload` returns each file's current git oid.
    again = alice.upload_file(path_or_fileobj=b"v2 weights", path_in_repo="model.bin", repo_id=REPO)
    assert again.oid == second.oid


def test_model_info_tree_and_paths_info(alice: HfApi, uploaded: tuple[str, dict[str, bytes]]) -> None:
    sha, files = uploaded
    info = alice.model_info(REPO, files_metadata=True)
    assert info.id == REPO and info.sha == sha and info.private is False
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert set(siblings) == set(files) | {".gitattributes"}
    assert siblings["model.bin"].size == len(BINARY)
    assert siblings["model.bin"].blob_id == _git_blob_id(BINARY)

    assert sorted(alice.list_repo_files(REPO)) == sorted(set(files) | {".gitattributes"})
    top = {e.path: type(e).__name__ for e in alice.list_repo_tree(REPO)}
    assert top == {
        "config": "RepoFolder",
        "notes": "RepoFolder",
        ".gitattributes": "RepoFile",
        "README.md": "RepoFile",
        "model.bin": "RepoFile",
    }
    assert [e.path for e in alice.list_repo_tree(REPO, path_in_repo="config")] == ["config/labels.json"]

    paths = alice.get_paths_info(REPO, ["model.bin", "config", "missing.txt"])
    assert [(p.path, type(p).__name__) for p in paths] == [("model.bin", "RepoFile"), ("config", "RepoFolder")]
    assert alice.file_exists(REPO, "model.bin") and not alice.file_exists(REPO, "missing.txt")


def test_private_repo_requires_owner_token(hub_server: HubServer, alice: HfApi, tmp_path: Path) -> None:
    alice.create_repo("alice/secret", private=True)
    alice.upload_file(path_or_fileobj=b"top secret", path_in_repo="weights.bin", repo_id="alice/secret")
    url = hub_server.url

    anonymous = HfApi(endpoint=url, token=False)
    bob = HfApi(endpoint=url, token=BOB_TOKEN)
    for api in (anonymous, bob):  # 401 for anonymous, 404 for another user: both "repo not found"
        with pytest.raises(RepositoryNotFoundError):
            api.model_info("alice/secret")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/secret", "weights.bin", endpoint=url, cache_dir=tmp_path / "c", token=False)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("alice/secret", endpoint=url, cache_dir=tmp_path / "c", token=BOB_TOKEN)
    with pytest.raises(RepositoryNotFoundError):
        bob.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="alice/secret")

    # An unknown token is refused everywhere with 401 "Invalid credentials" (huggingface.co does the same): the
    # client raises a plain HfHubHTTPError for it, not RepositoryNotFoundError.
    with pytest.raises(HfHubHTTPError) as exc:
        HfApi(endpoint=url, token="hf_wrong").model_info("alice/secret")
    assert exc.value.response.status_code == 401 and not isinstance(exc.value, RepositoryNotFoundError)
    with pytest.raises(HfHubHTTPError):
        hf_hub_download("alice/secret", "weights.bin", endpoint=url, cache_dir=tmp_path / "c", token="hf_wrong")

    assert alice.model_info("alice/secret").private is True
    path = hf_hub_download("alice/secret", "weights.bin", endpoint=url, cache_dir=tmp_path / "c", token=ALICE_TOKEN)
    assert Path(path).read_bytes() == b"top secret"

    # Public repo: everybody reads, only the owner writes.
    alice.update_repo_settings("alice/secret", private=False)
    assert anonymous.model_info("alice/secret").private is False
    with pytest.raises(HfHubHTTPError) as exc:
        bob.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="alice/secret")
    assert exc.value.response.status_code == 403


def test_missing_repo_revision_and_file_errors(
    hub_server: HubServer, alice: HfApi, uploaded: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    with pytest.raises(RepositoryNotFoundError):
        alice.model_info("alice/nope")
    with pytest.raises(RevisionNotFoundError):
        alice.model_info(REPO, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "model.bin", revision="0" * 40, endpoint=hub_server.url, cache_dir=tmp_path)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "missing.bin", endpoint=hub_server.url, cache_dir=tmp_path)


def test_resolve_headers_and_range_requests(hub_server: HubServer, uploaded: tuple[str, dict[str, bytes]]) -> None:
    sha, _ = uploaded
    url = f"{hub_server.url}/{REPO}/resolve/main/model.bin"
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as resp:
        assert resp.headers["X-Repo-Commit"] == sha
        assert resp.headers["ETag"] == f'"{_git_blob_id(BINARY)}"'
        assert int(resp.headers["Content-Length"]) == len(BINARY)
        # Any X-Xet-* header would make the client download through Xet storage, which this server can't serve.
        assert not [h for h in resp.headers if h.lower().startswith("x-xet")]
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=10-19"})) as resp:
        assert resp.status == 206 and resp.read() == BINARY[10:20]
        assert resp.headers["Content-Range"] == f"bytes 10-19/{len(BINARY)}"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=-4"})) as resp:
        assert resp.read() == BINARY[-4:]
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(urllib.request.Request(url, headers={"Range": f"bytes={len(BINARY)}-"}))
    assert exc.value.code == 416


def test_injected_500_on_commit_then_retry(
    hub_server: HubServer, alice: HfApi, uploaded: tuple[str, dict[str, bytes]], tmp_path: Path, no_backoff_sleep: None
) -> None:
    sha, _ = uploaded
    # `upload_file`/`create_commit` POST the commit once: a single 500 is enough to fail.
    hub_server.fail_next(1, mode="500", match="/commit/")
    with pytest.raises(HfHubHTTPError) as exc:
        alice.upload_file(path_or_fileobj=b"new", path_in_repo="new.txt", repo_id=REPO)
    assert exc.value.response.status_code == 500
    assert alice.model_info(REPO).sha == sha  # nothing was committed
    retried = alice.upload_file(path_or_fileobj=b"new", path_in_repo="new.txt", repo_id=REPO)
    assert retried.oid != sha

    # `upload_folder` (pipelined uploader, hf_xet installed) retries the commit POST 5 times on 5xx.
    src = tmp_path / "more"
    src.mkdir()
    (src / "extra.txt").write_text("extra")
    hub_server.clear_requests()
    hub_server.fail_next(10, mode="500", match="/commit/")
    with pytest.raises(HfHubHTTPError):
        alice.upload_folder(repo_id=REPO, folder_path=src)
    assert sum("/commit/" in r.path for r in hub_server.requests) == 6
    hub_server.clear_faults()
    hub_server.fail_next(2, mode="503", match="/commit/")  # transient: absorbed by the client's retries
    info = alice.upload_folder(repo_id=REPO, folder_path=src)
    assert "extra.txt" in alice.list_repo_files(REPO, revision=info.oid)


def test_dropped_connection_raises_connection_error(
    hub_server: HubServer, alice: HfApi, uploaded: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    sha, _ = uploaded
    hub_server.fail_next(1, mode="drop", match="/commit/")
    with pytest.raises(httpx2.RemoteProtocolError, match="disconnected"):
        alice.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
    assert alice.model_info(REPO).sha == sha

    # A dropped HEAD /resolve is not turned into a cache fallback: the raw transport error propagates.
    hub_server.fail_next(1, mode="drop", match="/resolve/")
    with pytest.raises(httpx2.TransportError):
        hf_hub_download(REPO, "model.bin", endpoint=hub_server.url, cache_dir=tmp_path / "c")
    # The next attempt (no fault left) works.
    path = hf_hub_download(REPO, "model.bin", endpoint=hub_server.url, cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == BINARY


def test_offline_mode_serves_cached_snapshot(
    hub_server: HubServer, uploaded: tuple[str, dict[str, bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, files = uploaded
    cache = tmp_path / "cache"
    online = snapshot_download(REPO, endpoint=hub_server.url, cache_dir=cache)

    # HF_HUB_OFFLINE is read at import time, but the client checks `constants.HF_HUB_OFFLINE` on every request.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    seen = len(hub_server.requests)
    assert snapshot_download(REPO, endpoint=hub_server.url, cache_dir=cache) == online
    assert len(hub_server.requests) == seen  # not a single request reached the server
    hub_server.stop()
    offline = snapshot_download(REPO, endpoint=hub_server.url, cache_dir=cache)
    assert offline == online and _read_tree(offline)["model.bin"] == files["model.bin"]
    cached = hf_hub_download(REPO, "README.md", endpoint=hub_server.url, cache_dir=cache)
    assert Path(cached).read_text() == README

    # Even without offline mode, an unreachable server (connection refused) falls back to the cache...
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert snapshot_download(REPO, endpoint=hub_server.url, cache_dir=cache) == online
    # ...but only for what is cached.
    with pytest.raises(LocalEntryNotFoundError):
        snapshot_download(REPO, endpoint=hub_server.url, cache_dir=tmp_path / "empty")


def test_env_var_configuration_in_subprocess(hub_server: HubServer, alice: HfApi, tmp_path: Path) -> None:
    """HF_ENDPOINT / HF_HUB_OFFLINE / HF_TOKEN must be set before `huggingface_hub` is imported: use a subprocess."""
    alice.create_repo("alice/private-env", private=True)
    alice.upload_file(path_or_fileobj=b"env!", path_in_repo="w.bin", repo_id="alice/private-env")
    script = (
        "from huggingface_hub import snapshot_download; from pathlib import Path; "
        "p = snapshot_download('alice/private-env'); print((Path(p) / 'w.bin').read_text())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env |= {
        "HF_ENDPOINT": hub_server.url,
        "HF_TOKEN": ALICE_TOKEN,
        "HF_HOME": str(tmp_path / "home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    online = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert online.returncode == 0, online.stderr
    assert online.stdout.strip() == "env!"
    assert any(r.headers.get("authorization") == f"Bearer {ALICE_TOKEN}" for r in hub_server.requests)

    hub_server.stop()
    offline = subprocess.run(
        [sys.executable, "-c", script], env=env | {"HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=60
    )
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.strip() == "env!"


def test_state_persists_across_server_restarts(
    hub_server: HubServer, uploaded: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    sha, files = uploaded
    hub_server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{hub_server.url}/api/models/{REPO}", timeout=2)
    with HubServer(hub_server.root, tokens={ALICE_TOKEN: "alice"}) as reopened:
        api = HfApi(endpoint=reopened.url, token=ALICE_TOKEN)
        assert api.model_info(REPO).sha == sha
        path = hf_hub_download(REPO, "model.bin", revision=sha, endpoint=reopened.url, cache_dir=tmp_path / "c")
        assert Path(path).read_bytes() == files["model.bin"]
    # Tokens are kept in memory only.
    assert not [p for p in hub_server.root.rglob("*") if p.is_file() and ALICE_TOKEN.encode() in p.read_bytes()]
