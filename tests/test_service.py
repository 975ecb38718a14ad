"""xfer.service: model references, the classify cache (LRU, byte budget, private repos), and the CLI/API
that take a Hub repo id. The Hub is the local look-alike (tests/hub_server.py); models are tiny and random."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, constants

import xfer
from conftest import ROOT, make_color_dataset
from hub_fixtures import ALICE_TOKEN, BOB_TOKEN, hf_client_isolation, hub_server  # noqa: F401 (fixtures)
from hub_server import HubServer
from xfer.engine import TrainConfig
from xfer.errors import ConfigError, HubError, ModelError
from xfer.hub import push
from xfer.service import ModelCache, ModelRef, bearer_token, open_model, parse_ref, token_digest


def tiny_model(root: Path, bias_shift: float = 0.0) -> Path:
    """A 3-class colour model saved at ``root/model`` (resnet18 cut at 2 stages, random weights, 32 px)."""
    data = make_color_dataset(root / "data", per_class=4, size=32)
    model = xfer.train(str(data), backbone="resnet18", strategy="truncate", cut=2, weights=None, image_size=32,
                       config=TrainConfig(epochs=1, batch_size=8), device=xfer.select_device("cpu"))
    with torch.no_grad():  # the last class dominates: tells two revisions apart
        [m for m in model.net.head.modules() if isinstance(m, torch.nn.Linear)][-1].bias[-1].add_(bias_shift)
    xfer.save_model(model, root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("service-models")
    v1, v2 = tiny_model(tmp / "v1"), tiny_model(tmp / "v2", bias_shift=8.0)
    return {"v1": v1, "v2": v2, "image": sorted((tmp / "v1" / "data" / "red").iterdir())[0]}


def top(model_or_folder, image) -> dict[str, float]:
    return xfer.predict(model_or_folder if isinstance(model_or_folder, xfer.XferModel)
                        else xfer.load_model(model_or_folder), [image])[0]


# --- references -------------------------------------------------------------------------------------------


def test_parse_ref() -> None:
    assert parse_ref("alice/flowers") == ModelRef(repo="alice/flowers")
    assert parse_ref(" hf://alice/flowers@v2 ") == ModelRef(repo="alice/flowers", revision="v2")
    assert parse_ref("alice/flowers@refs/pr/1").revision == "refs/pr/1"
    assert parse_ref("flowers") == ModelRef(name="flowers")
    for bad in ("", "../etc", "/etc/passwd", "a/b/c", "alice/x@../../y", "..", "~root", "a b"):
        with pytest.raises(ConfigError):
            parse_ref(bad)
    assert str(parse_ref("alice/x@main")) == "alice/x@main"


def test_bearer_token_and_digest() -> None:
    assert bearer_token("Bearer hf_abc") == "hf_abc"
    assert bearer_token("bearer  hf_abc ") == "hf_abc"
    assert bearer_token("Basic dXNlcg==") is None and bearer_token(None) is None and bearer_token("Bearer") is None
    assert token_digest(None) == "" and ALICE_TOKEN not in token_digest(ALICE_TOKEN)


# --- server models by name: LRU and budget ----------------------------------------------------------------


def test_server_models_by_name_lru_and_budget(models, tmp_path: Path) -> None:
    shelf = tmp_path / "models"
    for name in ("a", "b", "c"):
        shutil.copytree(models["v1"], shelf / name)
    os.symlink(models["v2"], shelf / "outside")  # a link to a folder outside: names resolve inside only
    (tmp_path / "secret").mkdir()
    cache = ModelCache(max_models=2, models_dir=shelf)
    assert cache.classify([models["image"]], "a")[0] == pytest.approx(top(models["v1"], models["image"]))
    cache.get("b")
    cache.get("a")  # a is now the most recent: loading c drops b
    cache.get("c")
    assert cache.stats()["models"] == 2 and cache.stats()["misses"] == 3
    cache.get("a")
    assert cache.stats()["misses"] == 3  # still in memory
    cache.get("b")
    assert cache.stats()["misses"] == 4  # b was dropped and loaded again
    with pytest.raises(ModelError, match=r"no model named 'outside'.*\(it has: a, b, c\)"):
        cache.get("outside")
    with pytest.raises(ModelError, match="no model named 'secret'"):
        cache.get("secret")
    with pytest.raises(ConfigError):
        cache.get("../secret")
    with pytest.raises(ConfigError, match="does not offer"):
        ModelCache().get("a")
    small = ModelCache(models_dir=shelf)
    small.max_bytes = 1000
    with pytest.raises(ModelError, match="more than this server keeps"):
        small.get("a")
    assert small.stats()["models"] == 0


def test_a_model_saved_again_is_loaded_again(models, tmp_path: Path) -> None:
    shelf = tmp_path / "models"
    shutil.copytree(models["v1"], shelf / "m")
    cache = ModelCache(models_dir=shelf)
    first = cache.classify([models["image"]], "m")[0]
    xfer.save_model(xfer.load_model(models["v2"]), shelf / "m")
    second = cache.classify([models["image"]], "m")[0]
    assert first == pytest.approx(top(models["v1"], models["image"]))
    assert second == pytest.approx(top(models["v2"], models["image"]))


# --- Hub models: access, revisions, the cache never leaks a private model -----------------------------------


def test_hub_models_private_access_is_checked_per_caller(models, hub_server: HubServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    url = hub_server.url
    push(models["v1"], "alice/public", token=ALICE_TOKEN, endpoint=url)
    push(models["v1"], "alice/secret", token=ALICE_TOKEN, private=True, endpoint=url)
    first = HfApi(endpoint=url, token=ALICE_TOKEN).list_repo_commits("alice/secret")[0].commit_id
    push(models["v2"], "alice/secret", token=ALICE_TOKEN, endpoint=url)
    image = models["image"]
    want1, want2 = top(models["v1"], image), top(models["v2"], image)

    cache = ModelCache(endpoint=url)
    assert cache.classify([image], "alice/public")[0] == pytest.approx(want1)  # public: no token needed
    assert cache.classify([image], "alice/secret", ALICE_TOKEN)[0] == pytest.approx(want2)
    assert cache.classify([image], f"alice/secret@{first}", ALICE_TOKEN)[0] == pytest.approx(want1)
    assert cache.stats()["models"] == 3
    # alice's copies are in memory; nobody else gets them
    for token in (None, BOB_TOKEN):
        for ref in ("alice/secret", f"alice/secret@{first}"):
            with pytest.raises(HubError, match="not found|private") as e:
                cache.get(ref, token)
            assert "\n" not in str(e.value) and ALICE_TOKEN not in str(e.value)
    # The server's own login is never lent to an anonymous caller.
    monkeypatch.setenv("HF_TOKEN", ALICE_TOKEN)
    with pytest.raises(HubError):
        cache.get("alice/secret", None)
    monkeypatch.delenv("HF_TOKEN")

    # Within the access TTL a warm call asks the Hub nothing; the answer is per token.
    hub_server.clear_requests()
    cache.get("alice/secret", ALICE_TOKEN)
    assert hub_server.requests == []
    with pytest.raises(HubError, match="revision 'nope'"):
        cache.get("alice/secret@nope", ALICE_TOKEN)
    with pytest.raises(HubError, match="alice/missing was not found"):
        cache.get("alice/missing", ALICE_TOKEN)
    # Offline: a repo last seen public is still served from memory, a private one is not.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    stale = ModelCache(endpoint=url, access_ttl=0)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    stale.get("alice/public")
    stale.get("alice/secret", ALICE_TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert stale.classify([image], "alice/public")[0] == pytest.approx(want1)
    with pytest.raises(HubError, match="offline"):
        stale.get("alice/secret", ALICE_TOKEN)


def test_predict_takes_a_repo_id_and_the_cli_hf_urls(models, hub_server: HubServer, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    url = hub_server.url
    push(models["v1"], "alice/colors", token=ALICE_TOKEN, endpoint=url)
    image = models["image"]
    assert xfer.predict(str(models["v1"]), image)[0] == pytest.approx(top(models["v1"], image))
    assert open_model("hf://alice/colors", endpoint=url).classes == xfer.load_model(models["v1"]).classes
    with pytest.raises(ModelError):
        open_model(str(tmp_path / "no-such-folder"))
    with pytest.raises(HubError, match="no model folder alice/nothing here either"):
        open_model("alice/nothing", endpoint=url)

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "cli-hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT"):
        env.pop(var, None)
    # xfer.predict("user/name", ...) pulls from the Hub huggingface_hub was pointed at (HF_ENDPOINT, read at import).
    code = f"import json, xfer; print(json.dumps(xfer.predict('alice/colors', [{str(image)!r}])[0]))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, "HF_ENDPOINT": url},
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    import json

    assert json.loads(r.stdout) == pytest.approx(top(models["v1"], image))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "xfer", "predict", *args, "--device", "cpu"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)

    r = cli("hf://alice/colors", str(image), "--endpoint", url, "--json")
    assert r.returncode == 0, r.stderr
    assert '"image"' in r.stdout and next(iter(top(models["v1"], image))) in r.stdout
    r = cli(str(models["v1"]), str(image))  # a folder, as before
    assert r.returncode == 0 and r.stdout.startswith(str(image)), r.stderr
    r = cli("hf://alice/missing", str(image), "--endpoint", url)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "alice/missing" in r.stderr
