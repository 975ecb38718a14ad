"""xfer.hub and `python -m xfer push/pull` against a real local Hub server, through the real huggingface_hub client.

One tiny model (ResNet-18, random weights, 32 px, 12 colour images, 1 epoch) is trained per module; every test
gets a fresh server (``hub_server``) and an isolated Hugging Face home/cache (``hf_client_isolation``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import time as real_time
from pathlib import Path
from typing import Any

import huggingface_hub.utils._http as hf_http
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants

import xfer
from conftest import ROOT, make_color_dataset
from hub_fixtures import ALICE_TOKEN, BOB_TOKEN, hf_client_isolation, hub_server  # noqa: F401 (fixtures)
from hub_server import HubServer
from xfer.device import select_device
from xfer.engine import TrainConfig
from xfer.hub import HUB_FILES, pull, pull_to, push
from xfer.model import load_model, read_config, save_model

REPO = "alice/colors"


# --- shared model ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A saved tiny model, a second (changed) version of it, and images to compare predictions on."""
    root = tmp_path_factory.mktemp("hubmodel")
    data = make_color_dataset(root / "data", per_class=4, size=32)
    # ResNet-18 cut after its first stage (truncate): a complete xfer model whose weights weigh 0.8 MB, not 45,
    # so that each upload (base64 inside the commit request, as the test server asks) stays quick.
    xfer.train(str(data), backbone="resnet18", strategy="truncate", cut=2, weights=None, image_size=32,
               config=TrainConfig(epochs=1, batch_size=8), device=select_device("cpu"), out=root / "v1")
    v2 = load_model(root / "v1")
    with torch.no_grad():  # another model with the same architecture: the head moved
        last = [m for m in v2.net.head.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.bias.add_(torch.tensor([3.0, -1.0, 0.5]))
    save_model(v2, root / "v2")
    images = [sorted((data / c).iterdir())[0] for c in ("red", "green", "blue")]
    probs = {v: xfer.predict_proba(load_model(root / v), images) for v in ("v1", "v2")}
    assert not torch.allclose(probs["v1"], probs["v2"])  # the two versions are distinguishable
    return {"root": root, "v1": root / "v1", "v2": root / "v2", "images": images, "probs": probs}


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def files_containing(root: Path, needle: str) -> list[Path]:
    data = needle.encode()
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and data in p.read_bytes()]


def assert_one_line(err: BaseException) -> str:
    msg = str(err)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


@pytest.fixture
def no_backoff_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep huggingface_hub's retries (5 of them) but skip their 1+2+4+8+8 s of sleeping."""

    class _NoSleepTime:
        def __getattr__(self, name: str) -> Any:
            return getattr(real_time, name)

        @staticmethod
        def sleep(seconds: float) -> None:
            pass

    monkeypatch.setattr(hf_http, "time", _NoSleepTime())


def upload_raw(server: HubServer, repo_id: str, files: dict[str, bytes], tmp: Path) -> str:
    """Publish arbitrary files with the plain huggingface_hub client (repos that xfer would never push)."""
    src = tmp / f"raw-{repo_id.replace('/', '_')}"
    src.mkdir()
    for name, content in files.items():
        (src / name).write_bytes(content)
    api = HfApi(endpoint=server.url, token=ALICE_TOKEN)
    api.create_repo(repo_id, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=src).oid


# --- round trip --------------------------------------------------------------------------------------------


def test_push_pull_roundtrip_and_revisions(hub_server: HubServer, trained: dict, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    monkeypatch.setattr(constants, "HF_DEBUG", True)  # also log every request as a curl command
    hf_logger = logging.getLogger("huggingface_hub")  # may not propagate to the root logger: attach directly
    hf_logger.addHandler(caplog.handler)
    try:
        before = digest(trained["v1"])
        first = push(trained["v1"], REPO, token=ALICE_TOKEN, endpoint=hub_server.url)
        assert first.url == f"{hub_server.url}/{REPO}" and len(first.commit_id) == 40
        assert digest(trained["v1"]) == before  # pushing only reads the folder

        # Exactly the three model files, in one commit.
        api = HfApi(endpoint=hub_server.url, token=ALICE_TOKEN)
        assert sorted(api.list_repo_files(REPO)) == sorted([".gitattributes", *HUB_FILES])
        commits = api.list_repo_commits(REPO)
        assert commits[0].commit_id == first.commit_id and len(commits) == 2  # + the repo's initial commit

        model = pull(REPO, cache_dir=tmp_path / "cache1", endpoint=hub_server.url)
        assert torch.equal(xfer.predict_proba(model, trained["images"]), trained["probs"]["v1"])
        assert model.classes == ["blue", "green", "red"] and model.backbone == "resnet18"

        # The card was rendered for the repo and parses as a Hub model card.
        readme = next((tmp_path / "cache1").rglob("README.md")).read_text()
        card = ModelCard(readme)
        assert card.data.library_name == "xfer" and card.data.pipeline_tag == "image-classification"
        assert {"transfer-learning", "resnet18", "truncate"} <= set(card.data.tags)
        assert card.data.base_model is None  # random initial weights: no base model
        assert card.data.eval_results[0].metric_type == "accuracy"
        assert f'xfer.hub.pull("{REPO}")' in readme

        second = push(trained["v2"], REPO, token=ALICE_TOKEN, endpoint=hub_server.url)
        assert second.commit_id != first.commit_id
        latest = pull(REPO, cache_dir=tmp_path / "cache2", endpoint=hub_server.url)
        assert torch.equal(xfer.predict_proba(latest, trained["images"]), trained["probs"]["v2"])
        old = pull(REPO, revision=first.commit_id, cache_dir=tmp_path / "cache2", endpoint=hub_server.url)
        assert torch.equal(xfer.predict_proba(old, trained["images"]), trained["probs"]["v1"])
    finally:
        hf_logger.removeHandler(caplog.handler)

    assert "authenticated: True" in caplog.text and "pushed" in caplog.text  # the debug logs were captured
    assert "hf_test_token" not in caplog.text
    assert not files_containing(tmp_path, ALICE_TOKEN)  # caches, server storage
    assert not files_containing(trained["root"], ALICE_TOKEN)  # model folders


def test_offline_pull_from_cache(hub_server: HubServer, trained: dict, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    push(trained["v1"], REPO, token=ALICE_TOKEN, endpoint=hub_server.url)
    pull(REPO, endpoint=hub_server.url)  # into the default cache (HF_HUB_CACHE of the isolated HF home)
    hub_server.clear_requests()
    # huggingface_hub checks constants.HF_HUB_OFFLINE on every request (what HF_HUB_OFFLINE=1 sets at import).
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = pull(REPO, endpoint=hub_server.url)
    assert torch.equal(xfer.predict_proba(model, trained["images"]), trained["probs"]["v1"])
    assert hub_server.requests == []  # served from the cache alone

    with pytest.raises(xfer.HubError) as exc:
        pull(REPO, cache_dir=tmp_path / "empty-cache", endpoint=hub_server.url)
    assert "HF_HUB_OFFLINE" in assert_one_line(exc.value)


# --- access control and tokens ---------------------------------------------------------------------------


def test_private_repo_needs_the_right_token(hub_server: HubServer, trained: dict, tmp_path: Path) -> None:
    push(trained["v1"], "alice/secret", token=ALICE_TOKEN, private=True, endpoint=hub_server.url)
    model = pull("alice/secret", token=ALICE_TOKEN, cache_dir=tmp_path / "c", endpoint=hub_server.url)
    assert torch.equal(xfer.predict_proba(model, trained["images"]), trained["probs"]["v1"])
    # The same cache now holds the model; it must not be handed to anyone the Hub refuses (the app shares it).
    cases = {
        "missing": None,
        "wrong": "hf_not_a_valid_token_0000",
        "someone else's": BOB_TOKEN,
    }
    for label, token in cases.items():
        with pytest.raises(xfer.HubError) as exc:
            pull("alice/secret", token=token, cache_dir=tmp_path / "c", endpoint=hub_server.url)
        msg = assert_one_line(exc.value)
        assert "token" in msg and "hf auth login" in msg, (label, msg)
        if token:
            assert token not in msg

    # Pushing needs a token too, and one for the repo's namespace.
    with pytest.raises(xfer.HubError, match="logged in"):
        push(trained["v1"], "alice/other", endpoint=hub_server.url)
    with pytest.raises(xfer.HubError, match="403") as exc:
        push(trained["v1"], "bob/stolen", token=ALICE_TOKEN, endpoint=hub_server.url)
    assert ALICE_TOKEN not in str(exc.value)


def test_missing_repo_and_revision(hub_server: HubServer, trained: dict, tmp_path: Path) -> None:
    with pytest.raises(xfer.HubError, match="alice/nothing-here was not found") as exc:
        pull("alice/nothing-here", cache_dir=tmp_path / "c", endpoint=hub_server.url)
    assert_one_line(exc.value)
    push(trained["v1"], REPO, token=ALICE_TOKEN, endpoint=hub_server.url)
    with pytest.raises(xfer.HubError, match="no revision 'v9'") as exc:
        pull(REPO, revision="v9", cache_dir=tmp_path / "c", endpoint=hub_server.url)
    assert_one_line(exc.value)
    hub_server.clear_requests()
    with pytest.raises(xfer.ModelError, match="not an xfer model"):
        push(tmp_path, REPO, token=ALICE_TOKEN, endpoint=hub_server.url)  # a folder that is no model
    broken = copy_model(trained["v1"], tmp_path / "broken")
    cfg = json.loads((broken / "config.json").read_text())
    cfg["xfer"]["classes"] += ["purple"]
    cfg["xfer"]["num_classes"] = cfg["xfer"]["network"]["num_classes"] = 4
    cfg["xfer"]["metrics"] = {}  # 3 classes' metrics would be refused first, by the check of the config itself
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(xfer.ModelError, match="do not match its config.json"):
        push(broken, REPO, token=ALICE_TOKEN, endpoint=hub_server.url)  # never publish what cannot load
    assert hub_server.requests == []


def test_card_metadata_offline(trained: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from xfer.card import render_card_from_config

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # any request while rendering would raise
    cfg = read_config(trained["v1"])
    flowers = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    cfg.update(backbone="vgg16", strategy="head", pretrained_weights="imagenet", classes=flowers,
               recommendation={"strategy": "head", "reason": "few images per class, similar to ImageNet"})
    cfg["metrics"] = {"accuracy": 0.9, "num_images": 10, "confusion_matrix": [[2, 0, 0, 0, 0]] * 5,
                      "per_class": {c: {"precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 2} for c in flowers}}
    text = render_card_from_config(cfg, "alice/flowers")
    card = ModelCard(text)
    assert card.data.base_model == "timm/vgg16.tv_in1k" and card.data.datasets == ["tf_flowers"]
    assert card.data.tags == ["xfer", "transfer-learning", "vgg16", "head"] and card.data.metrics == ["accuracy"]
    result = card.data.eval_results[0]
    assert (result.dataset_type, result.dataset_split, result.metric_value) == ("tf_flowers", "validation", 0.9)
    assert card.data.model_name == "alice/flowers"
    for part in ("few images per class, similar to ImageNet", "| **tulips** | 2 | 0 | 0 | 0 | 0 |",
                 "| roses | 100.0% | 50.0% | 0.67 | 2 |", "| batch_size | 8 |", 'xfer.hub.pull("alice/flowers")'):
        assert part in text, part

    cfg.update(strategy="scratch")  # random initial weights: no base model, whatever the backbone
    assert ModelCard(render_card_from_config(cfg)).data.base_model is None
    cfg.update(strategy="head", backbone="efficientnet_b0")  # no exact Hub copy of these weights: none claimed
    assert ModelCard(render_card_from_config(cfg)).data.base_model is None


def test_token_is_scrubbed_from_error_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    from xfer.hub import _hub_error

    monkeypatch.setenv("HF_TOKEN", "secret-env-value-123")
    leaky = RuntimeError(f"failed with Authorization: Bearer {ALICE_TOKEN} and secret-env-value-123")
    msg = str(_hub_error(leaky, action="push", repo_id=REPO, revision=None, token=ALICE_TOKEN,
                         endpoint="http://127.0.0.1:1"))
    assert ALICE_TOKEN not in msg and "secret-env-value-123" not in msg and "***" in msg
    # A token the code was never told about is still masked by its shape.
    unknown = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"
    msg = str(_hub_error(RuntimeError(f"{unknown} leaked in hf_hub_download"), action="pull", repo_id=REPO,
                         revision=None, token=None, endpoint="http://127.0.0.1:1"))
    assert unknown not in msg and "hf_hub_download" in msg


# --- repos that are not (valid) xfer models ----------------------------------------------------------------


@pytest.mark.parametrize("files, expected", [
    ({"README.md": b"# just a readme\n"}, "has no config.json"),
    ({"config.json": b'{"model_type": "bert", "hidden_size": 8}', "model.safetensors": b"x" * 16},
     "not a usable xfer model"),
], ids=["no-config", "foreign-config"])
def test_pull_refuses_foreign_repos(hub_server: HubServer, tmp_path: Path, files: dict, expected: str) -> None:
    upload_raw(hub_server, "alice/foreign", files, tmp_path)
    with pytest.raises(xfer.HubError, match=expected) as exc:
        pull("alice/foreign", cache_dir=tmp_path / "c", endpoint=hub_server.url)
    assert_one_line(exc.value)


@pytest.mark.parametrize("change", ["classes", "backbone"])
def test_pull_config_disagreeing_with_weights(hub_server: HubServer, trained: dict, tmp_path: Path,
                                              change: str) -> None:
    cfg = read_config(trained["v1"])
    if change == "classes":
        cfg["classes"] = cfg["classes"] + ["purple"]
        cfg["num_classes"] = cfg["network"]["num_classes"] = 4
        cfg["metrics"] = {}
    else:
        cfg["backbone"] = cfg["network"]["backbone"] = "mobilenet_v3_large"
        cfg["network"]["cut"] = 4  # a valid cut for MobileNetV3 (2 would be too, but say it)
    upload_raw(hub_server, "alice/mismatch", {
        "config.json": json.dumps({"xfer": cfg}).encode(),
        "model.safetensors": (trained["v1"] / "model.safetensors").read_bytes(),
    }, tmp_path)
    with pytest.raises(xfer.HubError, match="do not match its config.json") as exc:
        pull("alice/mismatch", cache_dir=tmp_path / "c", endpoint=hub_server.url)
    msg = assert_one_line(exc.value)
    assert "alice/mismatch" in msg and str(tmp_path) not in msg  # about the repo, not the cache's folders


class _Exploit:
    """Unpickling this creates the marker file: what a malicious pytorch_model.bin would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_weights_are_never_fetched_or_run(hub_server: HubServer, trained: dict, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    upload_raw(hub_server, "alice/pickled", {
        "config.json": (trained["v1"] / "config.json").read_bytes(),
        "pytorch_model.bin": pickle.dumps({"state_dict": _Exploit(marker)}),
    }, tmp_path)
    hub_server.clear_requests()
    with pytest.raises(xfer.HubError, match="no model.safetensors") as exc:
        pull("alice/pickled", cache_dir=tmp_path / "c", endpoint=hub_server.url)
    assert_one_line(exc.value)
    assert not marker.exists()
    assert not any("pytorch_model.bin" in r.path for r in hub_server.requests)  # not even downloaded
    assert not list((tmp_path / "c").rglob("pytorch_model.bin"))


# --- failures mid-way ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, match, times", [
    ("500", "/commit/", 6),  # the commit POST is retried 5 times by huggingface_hub: fail them all
    ("drop", "/commit/", 6),
])
def test_failed_push_leaves_model_untouched_and_retry_works(hub_server: HubServer, trained: dict, tmp_path: Path,
                                                            no_backoff_sleep: None, mode: str, match: str,
                                                            times: int) -> None:
    model_dir = copy_model(trained["v1"], tmp_path / "model")
    before = digest(model_dir)
    hub_server.fail_next(times, mode=mode, match=match)
    with pytest.raises(xfer.HubError) as exc:
        push(model_dir, REPO, token=ALICE_TOKEN, endpoint=hub_server.url)
    msg = assert_one_line(exc.value)
    assert ("HTTP 500" in msg) if mode == "500" else ("Could not reach the Hub" in msg)
    assert ALICE_TOKEN not in msg
    assert digest(model_dir) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left beside the model

    hub_server.clear_faults()
    result = push(model_dir, REPO, token=ALICE_TOKEN, endpoint=hub_server.url)
    model = pull(REPO, revision=result.commit_id, cache_dir=tmp_path / "c", endpoint=hub_server.url)
    assert torch.equal(xfer.predict_proba(model, trained["images"]), trained["probs"]["v1"])


@pytest.mark.parametrize("mode, match", [("500", "/revision/"), ("drop", "model.safetensors")])
def test_failed_pull_leaves_out_dir_untouched_and_retry_works(hub_server: HubServer, trained: dict, tmp_path: Path,
                                                              mode: str, match: str) -> None:
    push(trained["v2"], REPO, token=ALICE_TOKEN, endpoint=hub_server.url)
    out = copy_model(trained["v1"], tmp_path / "out")  # an older model already in the target folder
    before = digest(out)
    hub_server.fail_next(1, mode=mode, match=match)
    with pytest.raises(xfer.HubError) as exc:
        pull_to(REPO, out, cache_dir=tmp_path / "c", endpoint=hub_server.url)
    assert_one_line(exc.value)
    assert digest(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary folder left behind

    assert pull_to(REPO, out, cache_dir=tmp_path / "c", endpoint=hub_server.url) == out.resolve()
    assert sorted(os.listdir(out)) == sorted(HUB_FILES)
    assert torch.equal(xfer.predict_proba(load_model(out), trained["images"]), trained["probs"]["v2"])


# --- the command line ------------------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xfer", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_push_then_offline_pull_without_token_leak(hub_server: HubServer, trained: dict,
                                                       tmp_path: Path) -> None:
    cache = tmp_path / "cli_cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_ENDPOINT=hub_server.url, HF_HOME=str(tmp_path / "cli_home"), HF_HUB_CACHE=str(cache),
               HF_HUB_DISABLE_TELEMETRY="1", HF_TOKEN=ALICE_TOKEN, PYTHONPATH=str(ROOT),
               HF_HUB_VERBOSITY="debug", HF_DEBUG="1")
    model_dir = copy_model(trained["v1"], tmp_path / "model")

    # --debug: debug logs on stderr, which must not show the token either.
    pushed = run_cli("--debug", "push", str(model_dir), "alice/cli", "--private", "--json", env=env)
    assert pushed.returncode == 0, pushed.stderr
    result = json.loads(pushed.stdout)
    assert result["url"] == f"{hub_server.url}/alice/cli" and len(result["commit_id"]) == 40

    # Fill the CLI's cache in-process (one subprocess less), then pull with HF_HUB_OFFLINE=1 and no server.
    pull("alice/cli", token=ALICE_TOKEN, cache_dir=cache, endpoint=hub_server.url)
    hub_server.stop()
    offline = run_cli("--debug", "pull", "alice/cli", "--revision", result["commit_id"], "--out",
                      str(tmp_path / "pulled"), env={**env, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr
    assert "resnet18, truncate strategy, 3 classes" in offline.stdout
    assert sorted(os.listdir(tmp_path / "pulled")) == sorted(HUB_FILES)
    assert torch.equal(xfer.predict_proba(load_model(tmp_path / "pulled"), trained["images"]),
                       trained["probs"]["v1"])

    assert "authenticated: True" in pushed.stderr  # huggingface_hub's debug log of each request is there
    for proc in (pushed, offline):
        assert ALICE_TOKEN not in proc.stdout + proc.stderr
    assert not files_containing(tmp_path, ALICE_TOKEN)  # model folders, HF caches, the server's storage


def test_cli_errors_are_one_line(hub_server: HubServer, trained: dict, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The CLI's own code in-process (the subprocess runs above cost seconds each)."""
    from xfer.cli import main

    model_dir = copy_model(trained["v1"], tmp_path / "model")
    before = digest(model_dir)
    assert main(["push", str(model_dir), "bob/x", "--token", ALICE_TOKEN, "--endpoint", hub_server.url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "403" in err and ALICE_TOKEN not in err
    assert digest(model_dir) == before

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["pull", "alice/never-pulled", "--out", str(tmp_path / "out"), "--endpoint", hub_server.url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "HF_HUB_OFFLINE" in err, err
    assert not (tmp_path / "out").exists()


# --- a Hub that never answers (issue 15, item 6) ----------------------------------------------------------------


class StuckHub:
    """A TCP server on 127.0.0.1 that accepts connections and then never answers ("silent"), or answers
    200 with a body it sends one byte every 0.3 s ("drip": no read ever times out)."""

    def __init__(self, mode: str) -> None:
        import socket
        import threading

        self.mode, self.conns, self.closed = mode, [], threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.mode == "drip":
                threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn) -> None:
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
            while not self.closed.wait(0.3):
                conn.sendall(b" ")
        except OSError:
            pass

    def close(self) -> None:
        self.closed.set()
        for c in [self.sock, *self.conns]:  # the unfixed client, still waiting, gets its end of file
            c.close()


def bounded(fn, seconds: float):
    import threading

    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    start = real_time.monotonic()
    t.start()
    t.join(seconds)
    return t.is_alive(), box, real_time.monotonic() - start


@pytest.mark.parametrize("mode, fragment", [("silent", "did not answer within 1 s"),
                                            ("drip", "did not finish the {action} of alice/colors within 3 s")])
def test_a_hub_that_never_answers_fails_in_seconds(trained: dict, tmp_path: Path, hf_client_isolation: Path,
                                                   monkeypatch: pytest.MonkeyPatch, mode: str, fragment: str) -> None:
    monkeypatch.setenv("XFER_HUB_TIMEOUT", "1")
    monkeypatch.setenv("XFER_HUB_DEADLINE", "3")
    out = copy_model(trained["v1"], tmp_path / "out")
    before = digest(out)
    hub = StuckHub(mode)
    try:
        calls = {"push": lambda: push(trained["v2"], REPO, token=ALICE_TOKEN, endpoint=hub.url),
                 "pull": lambda: pull_to(REPO, out, cache_dir=tmp_path / "c", endpoint=hub.url)}
        for action, call in calls.items():
            stuck, box, seconds = bounded(call, 20)
            assert not stuck, f"{action} was still waiting for the Hub after 20 s"
            err = box.get("error")
            assert isinstance(err, xfer.HubError), box
            assert fragment.format(action=action) in assert_one_line(err) and hub.url in str(err)
            assert seconds < 10, f"{action} took {seconds:.1f} s"
    finally:
        hub.close()
    assert digest(out) == before


def test_pull_to_never_replaces_a_folder_it_did_not_write(hub_server: HubServer, trained: dict,
                                                          tmp_path: Path) -> None:
    push(trained["v1"], REPO, token=ALICE_TOKEN, endpoint=hub_server.url)
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text('{"name": "my project"}')
    (project / "notes.txt").write_text("notes")
    before = digest(project)
    with pytest.raises(xfer.ConfigError, match="did not write") as exc:
        pull_to(REPO, project, cache_dir=tmp_path / "c", endpoint=hub_server.url)
    assert_one_line(exc.value)
    assert digest(project) == before
    fresh = pull_to(REPO, tmp_path / "fresh", cache_dir=tmp_path / "c", endpoint=hub_server.url)
    assert pull_to(REPO, fresh, cache_dir=tmp_path / "c", endpoint=hub_server.url) == fresh  # its own: replaced
