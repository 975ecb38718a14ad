"""/classify and the MCP server of the real app (``python app.py``), against models pushed to the local Hub
look-alike: public and private repos, with and without a token, a revision, a missing repo; the MCP tools
through the real ``mcp`` client."""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import urllib.request

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from huggingface_hub import HfApi, constants

import xfer
from app_server import AppServer
from hub_fixtures import ALICE_TOKEN, BOB_TOKEN, HUB_TOKENS
from hub_server import HubServer
from test_service import tiny_model
from xfer.hub import push

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The Hub with alice/public (v1), alice/secret (private: v1 then v2) and the app pointed at it."""
    tmp = tmp_path_factory.mktemp("service-app")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
            mp.delenv(var, raising=False)
        mp.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        mp.setattr(constants, "HF_TOKEN_PATH", str(tmp / "no-token"))
        hub = HubServer(tmp / "hub", tokens=dict(HUB_TOKENS)).start()
        v1, v2 = tiny_model(tmp / "v1"), tiny_model(tmp / "v2", bias_shift=8.0)
        push(v1, "alice/public", token=ALICE_TOKEN, endpoint=hub.url)
        push(v1, "alice/secret", token=ALICE_TOKEN, private=True, endpoint=hub.url)
        first = HfApi(endpoint=hub.url, token=ALICE_TOKEN).list_repo_commits("alice/secret")[0].commit_id
        push(v2, "alice/secret", token=ALICE_TOKEN, endpoint=hub.url)
        image = sorted((tmp / "v1" / "data" / "red").iterdir())[0]
        want = {n: xfer.predict(xfer.load_model(f), [image])[0] for n, f in (("v1", v1), ("v2", v2))}
        app = AppServer(tmp / "app", env={"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp / "app-hf"),
                                          "HF_HUB_DISABLE_TELEMETRY": "1"})
        try:
            app.wait_ready()
            yield dict(app=app, hub=hub, image=image, want=want, first=first, tmp=tmp)
        finally:
            app.stop()
            hub.stop()


def confidences(value) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in value["confidences"]}


def error_of(call) -> str:
    with pytest.raises(AppError) as e:
        call()
    return str(e.value)


def test_classify_public_private_revision_missing(world) -> None:
    url, image, want = world["app"].url, handle_file(str(world["image"])), world["want"]
    anon = Client(url, verbose=False)
    out = anon.predict(image, "alice/public", api_name="/classify")
    assert out["label"] == next(iter(want["v1"])) and confidences(out) == pytest.approx(want["v1"], abs=1e-6)

    alice = Client(url, verbose=False, headers={"Authorization": f"Bearer {ALICE_TOKEN}"})
    assert confidences(alice.predict(image, "alice/secret", api_name="/classify")) == pytest.approx(want["v2"], abs=1e-6)
    assert confidences(alice.predict(image, f"alice/secret@{world['first']}", api_name="/classify")
                       ) == pytest.approx(want["v1"], abs=1e-6)
    # the token as an argument works too
    assert confidences(anon.predict(image, "alice/secret", ALICE_TOKEN, api_name="/classify")
                       ) == pytest.approx(want["v2"], abs=1e-6)
    # alice's copy is in the server's memory now: without access, nobody gets it
    bob = Client(url, verbose=False, headers={"Authorization": f"Bearer {BOB_TOKEN}"})
    for who in (anon, bob):
        message = error_of(lambda who=who: who.predict(image, "alice/secret", api_name="/classify"))
        assert "alice/secret was not found" in message and "Authorization: Bearer" in message, message
        assert "\n" not in message.strip() and "Traceback" not in message
    message = error_of(lambda: anon.predict(image, "alice/missing", api_name="/classify"))
    assert "alice/missing was not found" in message and "\n" not in message.strip()
    assert "revision 'nope'" in error_of(lambda: alice.predict(image, "alice/secret@nope", api_name="/classify"))
    assert "not a model reference" in error_of(lambda: anon.predict(image, "../../etc", api_name="/classify"))

    batch = alice.predict([image, image], "alice/secret", api_name="/classify_batch")
    assert [confidences(b) for b in batch] == [pytest.approx(want["v2"], abs=1e-6)] * 2
    described = anon.predict("alice/public", api_name="/describe_model")
    assert described["classes"] == sorted(want["v1"]) and described["model"].startswith("alice/public@")
    assert any(b["name"] == "resnet18" for b in anon.predict(api_name="/list_backbones"))

    log = world["app"].log()
    assert ALICE_TOKEN not in log and BOB_TOKEN not in log


def test_mcp_lists_the_stateless_tools_and_classifies(world) -> None:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    url, want = world["app"].url, world["want"]
    with urllib.request.urlopen(url + "gradio_api/mcp/schema", timeout=30) as r:
        schema = {t["name"]: t for t in json.load(r)}
    assert sorted(schema) == ["classify", "classify_batch", "describe_model", "list_backbones"]
    assert "Hub repo id" in schema["classify"]["inputSchema"]["properties"]["model"]["description"]
    data_url = "data:image/png;base64," + base64.b64encode(world["image"].read_bytes()).decode()

    async def session(headers=None):
        async with streamablehttp_client(url + "gradio_api/mcp/", headers=headers) as (read, write, _):
            async with ClientSession(read, write) as s:
                await s.initialize()
                tools = [t.name for t in (await s.list_tools()).tools]
                public = await s.call_tool("classify", {"image": data_url, "model": "alice/public"})
                secret = await s.call_tool("classify", {"image": data_url, "model": "alice/secret"})
                return tools, public, secret

    tools, public, secret = asyncio.run(session())
    assert sorted(tools) == sorted(schema)
    assert not public.isError
    value = ast.literal_eval(public.content[0].text)  # the tool's text: the label value's repr
    assert confidences(value) == pytest.approx(want["v1"], abs=1e-6)
    assert secret.isError and "alice/secret was not found" in secret.content[0].text
    _, _, secret = asyncio.run(session({"Authorization": f"Bearer {ALICE_TOKEN}"}))  # the header reaches /classify
    assert not secret.isError and confidences(ast.literal_eval(secret.content[0].text)) == pytest.approx(want["v2"], abs=1e-6)
    assert ALICE_TOKEN not in world["app"].log()
