"""Push and pull through the app: the real server (``python app.py``) driven by ``gradio_client``, talking to the
local Hub server (``hub_server``) through ``HF_ENDPOINT``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from huggingface_hub import HfApi

import xfer
from app_server import AppServer
from conftest import make_color_dataset
from hub_fixtures import ALICE_TOKEN, hf_client_isolation, hub_server  # noqa: F401 (fixtures)
from hub_server import HubServer
from xfer.device import select_device
from xfer.engine import TrainConfig
from xfer.hub import pull, push

pytestmark = pytest.mark.slow


def _tiny_model(root: Path, bias_shift: float = 0.0) -> Path:
    data = make_color_dataset(root / "data", per_class=4, size=32)
    out = root / "model"
    model = xfer.train(str(data), backbone="resnet18", strategy="truncate", cut=2, weights=None, image_size=32,
                       config=TrainConfig(epochs=1, batch_size=8), device=select_device("cpu"))
    with torch.no_grad():
        [m for m in model.net.head.modules() if isinstance(m, torch.nn.Linear)][-1].bias.add_(bias_shift)
    xfer.save_model(model, out)
    return out


def _label(output) -> tuple[str, dict[str, float]]:
    """gr.Label's API value: {"label": top class, "confidences": [{"label", "confidence"}, ...]}."""
    return output["label"], {c["label"]: c["confidence"] for c in output["confidences"]}


def test_push_and_pull_through_the_app(hub_server: HubServer, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    v1 = _tiny_model(tmp_path / "v1")
    v2 = _tiny_model(tmp_path / "v2", bias_shift=5.0)  # the last class dominates: a different model
    image = sorted((tmp_path / "v1" / "data" / "red").iterdir())[0]
    expected = {name: xfer.predict(xfer.load_model(folder), [image], k=3)[0] for name, folder in (("v1", v1), ("v2", v2))}
    assert expected["v1"] != expected["v2"]

    # The app's huggingface_hub reads these at import: they point it at the local Hub, away from ~/.cache.
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "app_hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    (tmp_path / "app").mkdir()
    app = AppServer(tmp_path / "app")
    try:
        app.wait_ready()
        c = Client(app.url, verbose=False, download_files=str(tmp_path / "downloads"))
        c.predict(str(v1), api_name="/load_model_dir")
        message = c.predict("alice/from-app", True, ALICE_TOKEN, api_name="/push")
        assert f"{hub_server.url}/alice/from-app" in message, message
        api = HfApi(endpoint=hub_server.url, token=ALICE_TOKEN)
        first = api.list_repo_commits("alice/from-app")[0].commit_id
        assert re.search(rf"commit `{first[:10]}`", message), message
        assert api.model_info("alice/from-app").private
        assert torch.equal(xfer.predict_proba(pull("alice/from-app", token=ALICE_TOKEN, endpoint=hub_server.url),
                                              [image]),
                           xfer.predict_proba(xfer.load_model(v1), [image]))

        push(v2, "alice/from-app", token=ALICE_TOKEN, endpoint=hub_server.url)  # a second revision
        visitor = Client(app.url, verbose=False, download_files=str(tmp_path / "downloads"))  # a new session
        for revision, name in (("", "v2"), (first, "v1")):
            visitor.predict("alice/from-app", revision, ALICE_TOKEN, api_name="/pull")
            top, confidences = _label(visitor.predict(handle_file(str(image)), api_name="/predict"))
            assert top == next(iter(expected[name]))
            assert confidences == pytest.approx(expected[name], abs=1e-6)

        with pytest.raises(AppError) as exc:
            visitor.predict("alice/from-app", "", "", api_name="/pull")  # private, and no token this time
        message = str(exc.value)
        assert "token" in message and "Traceback" not in message and "\n" not in message.strip()
    finally:
        app.stop()
    log = app.log_path.read_text(errors="replace")
    assert ALICE_TOKEN not in log
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and ALICE_TOKEN.encode() in p.read_bytes()]
