"""Pytest fixtures around :class:`HubServer` (import them from ``conftest.py``: ``from hub_fixtures import *``).

``hub_server`` starts a fresh Hub look-alike per test on ``tmp_path / "hub"`` and isolates ``huggingface_hub`` from
the developer's machine (token, cache, telemetry) so that tests behave the same everywhere and never reach
huggingface.co.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants

try:
    from hub_server import HubServer
except ImportError:  # `tests/` turned into a package: pytest then puts the repo root (not tests/) on sys.path
    from tests.hub_server import HubServer

__all__ = ["ALICE_TOKEN", "BOB_TOKEN", "HUB_TOKENS", "hf_client_isolation", "hub_server"]

ALICE_TOKEN = "hf_test_token_alice"
BOB_TOKEN = "hf_test_token_bob"
HUB_TOKENS: dict[str, str] = {ALICE_TOKEN: "alice", BOB_TOKEN: "bob"}


@pytest.fixture
def hf_client_isolation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Keep ``huggingface_hub`` away from the real machine state for one test; returns the fake HF home.

    ``huggingface_hub.constants`` values are computed from env vars at import time, so they are patched directly
    (the client reads them at call time).
    """
    home = tmp_path / "hf_home"
    # A token in the env / token file would be sent implicitly when `token=None`, and this server rejects
    # unknown tokens with 401 (as huggingface.co does), which would break "anonymous" scenarios.
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    # Default cache when a call omits `cache_dir`: never the developer's ~/.cache/huggingface.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # With telemetry on, the first `build_hf_headers()` GETs huggingface.co/api/agent-harnesses (ignoring any
    # `endpoint=`) to build the user-agent: a useless network call that may take up to 3 s when offline.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    return home


@pytest.fixture
def hub_server(tmp_path: Path, hf_client_isolation: Path) -> Iterator[HubServer]:
    """A running :class:`HubServer` with users ``alice`` (``ALICE_TOKEN``) and ``bob`` (``BOB_TOKEN``)."""
    server = HubServer(tmp_path / "hub", tokens=dict(HUB_TOKENS)).start()
    try:
        yield server
    finally:
        server.stop()
