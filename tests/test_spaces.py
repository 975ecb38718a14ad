"""Hugging Face Spaces: sign in to push (OAuth), ZeroGPU's allocations and training in parts, with the real
``spaces`` and Gradio packages and no network (the Hub is tests/hub_server.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest
import spaces
import torch
from huggingface_hub import HfApi, constants

import xfer
from conftest import make_color_dataset
from hub_fixtures import ALICE_TOKEN, hf_client_isolation, hub_server  # noqa: F401 (fixtures)
from hub_server import HubServer
from xfer.allocation import (
    GpuRates,
    Part,
    cached_share,
    inference_seconds,
    part_estimate,
    plan_parts,
)
from xfer.api import train_part
from xfer.device import select_device
from xfer.engine import (
    EpochStats,
    FitState,
    TrainConfig,
    load_fit_state,
    save_fit_state,
)
from xfer.errors import ConfigError
from xfer.nets.strategies import backbone_network, make_spec
from xfer.run import Done, Failed, TrainingRun
from xfer.studio import build_demo, zerogpu
from xfer.studio.errors import ui_errors  # noqa: F401  (the handlers below raise gr.Error through it)
from xfer.studio.session import AppConfig, Session
from xfer.studio.tabs import share

CPU = select_device("cpu")
TINY = dict(backbone="resnet18", strategy="finetune", weights=None, image_size=32)


def _space(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a Space with ``hf_oauth: true`` sets (gradio.oauth reads them at import; patched there too)."""
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "someone/xfer")
    for name, value in (("OAUTH_CLIENT_ID", "test-client"), ("OAUTH_CLIENT_SECRET", "test-secret"),
                        ("OAUTH_SCOPES", "openid profile write-repos manage-repos"),
                        ("OPENID_PROVIDER_URL", "http://127.0.0.1:9")):  # never contacted: nobody signs in here
        monkeypatch.setenv(name, value)
        monkeypatch.setattr(gr.oauth, name, value)


def _off_space(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYSTEM", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)


# --- the duration rule and the plan of parts ------------------------------------------------------------


def test_duration_rule_is_overhead_plus_margin_times_images_epochs_rate() -> None:
    r = GpuRates(train_s=0.01, eval_s=0.005, head_s=0.0, overhead_s=30, margin=1.5, min_s=20)
    # finetune: epochs x (train images x train rate + val images x eval rate), area-scaled
    assert part_estimate(2, 1000, 200, "finetune", 224, rates=r) == pytest.approx(2 * (10 + 1))
    assert part_estimate(1, 1000, 200, "finetune", 448, rates=r) == pytest.approx(4 * 11)
    # a frozen body: its features once per allocation (views per training image), the head epochs nearly free
    assert part_estimate(5, 1000, 200, "head", 224, views=2, rates=r) == pytest.approx((2000 + 200) * 0.005)
    [one] = plan_parts(2, 1000, 200, "finetune", rates=r, cap_s=120)
    assert one == Part(1, 2, 30 + 33)  # ceil(30 + 1.5 * 22)
    assert inference_seconds(1) == 31  # the overhead dominates one image: ceil(30 + 1.5 / 300)
    assert inference_seconds(10**6) == 120  # the cap


def test_a_long_run_is_split_into_even_parts_under_the_cap() -> None:
    r = GpuRates(train_s=0.01, eval_s=0.01, overhead_s=30, margin=1.5)
    parts = plan_parts(10, 1500, 500, "finetune", rates=r, cap_s=120)  # 20 s an epoch: 3 epochs fit 120 s
    assert [(p.first, p.last) for p in parts] == [(1, 3), (4, 6), (7, 8), (9, 10)]
    assert all(p.seconds <= 120 for p in parts) and parts[0].seconds == 120
    assert sum(p.epochs for p in parts) == 10
    with pytest.raises(ConfigError, match="fewer images per class"):
        plan_parts(1, 10_000, 2_000, "finetune", rates=r, cap_s=120)


def test_a_cached_finetune_is_priced_as_its_cached_pass_plus_the_trained_stages() -> None:
    quick = make_spec("efficientnet_lite0", "finetune", 5, frozen_stages=7)
    assert cached_share(quick, True) == pytest.approx(2 / 9)  # Lite0's last 2 of 9 stages train
    assert cached_share(quick, False) is None  # cache_frozen off: the images go through every epoch
    assert cached_share(make_spec("efficientnet_lite0", "finetune", 5, frozen_stages=0), True) is None
    assert cached_share(make_spec("efficientnet_lite0", "head", 5), True) is None  # a frozen body: features
    r = GpuRates(train_s=0.01, eval_s=0.005, head_s=0.0, overhead_s=30, margin=1.5, min_s=20)
    # the frozen stages once per allocation (2 views per training image), then a quarter of each epoch's cost
    assert part_estimate(4, 1000, 200, "finetune", 224, views=2, rates=r, cached=0.25) == pytest.approx(
        (2000 + 200) * 0.005 + 4 * 11 * 0.25)
    # A run of 2,000 images for 10 epochs: several allocations at the whole body's price, one when cached.
    whole = plan_parts(10, 1500, 500, "finetune", 224, rates=r, cap_s=120)
    cached = plan_parts(10, 1500, 500, "finetune", 224, rates=r, cap_s=120, cached=cached_share(quick, True))
    assert len(whole) > len(cached) == 1 and cached[0].seconds < 120


def test_the_train_tab_plans_zerogpu_parts_for_the_cached_quick_preset(colors: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from xfer.data import scan_folder
    from xfer.studio.tabs import train as train_tab

    planned = []
    monkeypatch.setattr(zerogpu, "enabled", lambda: True)
    # The job itself runs under the real `spaces` wrapper in test_the_real_spaces_wrapper_forks_pickles_and_stops.
    monkeypatch.setattr(zerogpu, "training_job", lambda report, settings, parts, work: planned.append(parts)
                        or (lambda callback=None, cancel=None: None))
    monkeypatch.setattr(train_tab, "plan_parts", lambda *a, **kw: planned.append(kw["cached"]) or [Part(1, 5, 60)])
    session = Session(AppConfig(CPU))
    session.report = scan_folder(colors)
    args = (5, 1e-3, 4, 32, True, False, 0)
    run, _ = train_tab.start_run(session, "efficientnet_lite0", "finetune", *args, preset="quick")
    run.wait()
    assert planned[0] == pytest.approx(2 / 9) and planned[1] == [Part(1, 5, 60)]
    run, _ = train_tab.start_run(session, "resnet18", "head", *args, preset="quick")
    run.wait()
    assert planned[2] is None  # quick on another backbone trains a head: nothing cached


# --- training in parts: the state carried ----------------------------------------------------------------


@pytest.fixture(scope="module")
def colors(tmp_path_factory) -> Path:
    return make_color_dataset(tmp_path_factory.mktemp("spaces") / "data", per_class=6, size=32)


def test_fit_in_parts_carries_the_state_and_ends_with_the_whole_history(colors: Path, tmp_path: Path) -> None:
    config = TrainConfig(epochs=3, batch_size=4, augment=False)
    state = train_part(str(colors), resume=None, stop_after=1, config=config, device=CPU, **TINY)
    assert isinstance(state, FitState) and state.epoch == 1 and [h.epoch for h in state.history] == [1]
    steps = state.scheduler["last_epoch"]
    assert steps > 0 and state.optimizer["state"]  # the optimizer's moments and the schedule's position
    state = load_fit_state(save_fit_state(state, tmp_path / "state.pt"))  # weights_only: tensors and plain values
    state = train_part(str(colors), resume=state, stop_after=2, config=config, device=CPU, **TINY)
    assert state.epoch == 2 and state.scheduler["last_epoch"] == 2 * steps
    model = train_part(str(colors), resume=state, stop_after=3, config=config, device=CPU, **TINY)
    assert isinstance(model, xfer.XferModel)
    assert [h["epoch"] for h in model.history] == [1, 2, 3]
    assert model.training["best_epoch"] in (1, 2, 3) and model.metrics["accuracy"] >= 0
    assert model.evaluation.num_images == model.training["num_val"]


def test_a_frozen_body_trains_in_parts_too(colors: Path) -> None:
    config = TrainConfig(epochs=2, batch_size=4)
    kw = dict(TINY, strategy="truncate", cut=2)
    state = train_part(str(colors), resume=None, stop_after=1, config=config, device=CPU, **kw)
    model = train_part(str(colors), resume=state, stop_after=2, config=config, device=CPU, **kw)
    assert [h["epoch"] for h in model.history] == [1, 2]


def test_a_cached_finetune_trains_in_parts_its_frozen_stages_unchanged(colors: Path) -> None:
    # quick's recipe on Lite0 (its packaged weights, tiny images): each part computes the frozen stages' maps again.
    config = TrainConfig(epochs=2, batch_size=4, cache_frozen=True)
    kw = dict(backbone="efficientnet_lite0", strategy="finetune", weights="imagenet", image_size=32, frozen_stages=7)
    state = train_part(str(colors), resume=None, stop_after=1, config=config, device=CPU, **kw)
    model = train_part(str(colors), resume=state, stop_after=2, config=config, device=CPU, **kw)
    assert [h["epoch"] for h in model.history] == [1, 2]
    imagenet = backbone_network("efficientnet_lite0", "imagenet").state_dict()
    first, _ = model.net.split
    in_first = {id(t) for t in [*first.parameters(), *first.buffers()]}
    body = dict(model.net.body.named_parameters()) | dict(model.net.body.named_buffers())
    changed = {name for name, t in body.items() if not torch.equal(t, imagenet[name])}
    assert changed, "the last stages trained"
    assert not {name for name in changed if id(body[name]) in in_first}, "the cached stages stayed as loaded"


def test_training_job_off_zerogpu_runs_the_parts_in_process(colors: Path, tmp_path: Path) -> None:
    assert not zerogpu.enabled()
    # Off ZeroGPU the package's decorator hands the function back unchanged: these run here, on the CPU.
    assert spaces.GPU(duration=10)(share.on_push) is share.on_push
    assert not hasattr(zerogpu.train_part_on_gpu, "zerogpu")
    report = xfer.load_dataset(str(colors))
    settings = dict(TINY, config=TrainConfig(epochs=3, batch_size=4, augment=False))
    workdir = tmp_path / "parts"
    workdir.mkdir()
    run = TrainingRun(zerogpu.training_job(report, settings, [Part(1, 2, 60), Part(3, 3, 30)], workdir, CPU))
    events = list(run)
    assert isinstance(events[-1], Done), events[-1]
    assert [e.index for e in events if isinstance(e, zerogpu.Allocation)] == [1, 2]
    assert [e.epoch for e in events if isinstance(e, EpochStats)] == [1, 2, 3]
    fractions = [e.fraction for e in events if hasattr(e, "fraction")]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)  # of the whole run
    assert [h["epoch"] for h in events[-1].model.history] == [1, 2, 3]
    assert not workdir.exists()  # the state between parts is removed


def test_stop_between_events_ends_a_run_in_parts(colors: Path, tmp_path: Path) -> None:
    report = xfer.load_dataset(str(colors))
    settings = dict(TINY, config=TrainConfig(epochs=20, batch_size=4, augment=False))
    run = TrainingRun(zerogpu.training_job(report, settings, [Part(1, 10, 60), Part(11, 20, 60)], tmp_path / "w",
                                           CPU))
    for event in run:
        if isinstance(event, EpochStats) and event.epoch == 1:
            run.stop(wait=False)
    assert isinstance(run.outcome, Failed) and run.outcome.stopped


def test_evaluate_predict_gradcam_through_the_gpu_functions_off_zerogpu(colors: Path) -> None:
    model = xfer.train(str(colors), config=TrainConfig(epochs=1, batch_size=4), device=CPU, **TINY)
    report = xfer.load_dataset(str(colors))
    image = report.items[0][0]
    assert zerogpu.placement(CPU) is CPU
    assert zerogpu.predict_on_gpu(model, str(image), 2, CPU) == xfer.predict(model, [str(image)], k=2)[0]
    assert zerogpu.evaluate_on_gpu(model, report, CPU).num_images == report.num_images
    assert zerogpu.gradcam_on_gpu(model, str(image), CPU).size[0] >= 224


@pytest.mark.slow
def test_the_real_spaces_wrapper_forks_pickles_and_stops(colors: Path, tmp_path: Path) -> None:
    """SPACES_ZERO_GPU=true in a subprocess: see tests/zerogpu_driver.py for what is real and what stands in."""
    driver = Path(__file__).with_name("zerogpu_driver.py")
    proc = subprocess.run([sys.executable, str(driver), str(colors), str(tmp_path)], capture_output=True, text=True,
                          timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["enabled"] and out["wrapped"]  # detected as the package detects it; really decorated
    assert out["outcome"] == "Done", out
    assert out["allocations"] == [1, 2] and out["epochs"] == [1, 2] and out["history"] == [1, 2]
    assert out["durations"] == [41, 42]  # each part asked for its own duration
    assert out["progress"] > 0 and not out["parts_dir_left"]
    assert len(out["predict"]) == 2 and out["evaluate_images"] == 18
    assert out["model_device_after"] == "cpu"
    assert out["stop_outcome"] == "stopped"
    assert out["stop_calls"][0] == "/schedule" and "/release" in out["stop_calls"]  # the GPU went back


# --- sign in to push ----------------------------------------------------------------------------------------


def _components(demo: gr.Blocks) -> list[dict]:
    return demo.get_config_file()["components"]


def test_the_login_button_is_on_the_page_on_a_space_only(monkeypatch: pytest.MonkeyPatch) -> None:
    _space(monkeypatch)
    demo = build_demo(CPU)
    [login] = [c for c in _components(demo) if c["props"].get("elem_id") == "hf-login"]
    assert login["props"]["value"] == "Sign in with Hugging Face"  # a gr.LoginButton (its type is "button")
    assert demo.expects_oauth
    assert "/login/huggingface" in {getattr(r, "path", "") for r in demo.app.routes}  # the real route, not a mock
    _off_space(monkeypatch)
    assert not [c for c in _components(build_demo(CPU)) if c["props"].get("elem_id") == "hf-login"]


@pytest.fixture
def pushable(tmp_path: Path, colors: Path) -> Session:
    model = xfer.train(str(colors), config=TrainConfig(epochs=1, batch_size=4), device=CPU, **TINY)
    folder = xfer.save_model(model, tmp_path / "model")
    session = Session(AppConfig(CPU))
    session.use_model(model, folder, "test")
    return session


def _profile(username: str) -> gr.OAuthProfile:
    return gr.OAuthProfile({"name": username.title(), "preferred_username": username,
                            "profile": f"https://huggingface.co/{username}", "picture": ""})


def _bearers(server: HubServer) -> set[str]:
    return {r.headers.get("authorization", "") for r in server.requests}


def test_a_signed_in_visitor_pushes_with_their_token_to_their_namespace(
        hub_server: HubServer, pushable: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    _space(monkeypatch)
    monkeypatch.setattr(constants, "ENDPOINT", hub_server.url)
    token = gr.OAuthToken(token=ALICE_TOKEN, scope="openid profile write-repos manage-repos", expires_at=0)
    message = share.on_push(pushable, "", True, "", token, _profile("alice"))
    repo = "alice/" + share.model_zip_name(pushable.model)
    assert f"{hub_server.url}/{repo}" in message
    assert ALICE_TOKEN not in message
    assert HfApi(endpoint=hub_server.url, token=ALICE_TOKEN).model_info(repo).private
    assert _bearers(hub_server) == {f"Bearer {ALICE_TOKEN}"}
    # A name without a namespace goes to the visitor's account too.
    assert f"{hub_server.url}/alice/mine" in share.on_push(pushable, "mine", False, "", token, _profile("alice"))


def test_no_token_on_a_space_asks_to_sign_in_and_never_uses_the_spaces_own(
        hub_server: HubServer, pushable: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    _space(monkeypatch)
    monkeypatch.setattr(constants, "ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_TOKEN", ALICE_TOKEN)  # the Space owner's secret: not for visitors
    with pytest.raises(gr.Error, match="Sign in with Hugging Face"):
        share.on_push(pushable, "alice/x", True, "", None, None)
    assert hub_server.requests == []
    assert share.hub_token("", None) is False  # pulls go anonymously, not as the Space


def test_the_mock_login_token_is_never_sent(hub_server: HubServer, pushable: Session,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _off_space(monkeypatch)
    monkeypatch.setattr(constants, "ENDPOINT", hub_server.url)
    mock = gr.OAuthToken(token=share.MOCK_TOKEN, scope="openid profile", expires_at=0)
    # Off Spaces: the typed token as before, and HF_TOKEN when none is typed; the profile names no namespace.
    assert "alice/typed" in share.on_push(pushable, "alice/typed", True, ALICE_TOKEN, mock, _profile("alice"))
    monkeypatch.setenv("HF_TOKEN", ALICE_TOKEN)
    assert "alice/env" in share.on_push(pushable, "alice/env", True, "", mock, _profile("alice"))
    with pytest.raises(gr.Error, match="repository id"):
        share.on_push(pushable, "", True, "", mock, _profile("alice"))
    # On a Space the mock cannot appear, but were it handed in, it would still not be sent.
    _space(monkeypatch)
    with pytest.raises(gr.Error, match="Sign in"):
        share.on_push(pushable, "alice/space", True, "", mock, _profile("alice"))
    assert hub_server.requests and all(share.MOCK_TOKEN not in v for r in hub_server.requests
                                       for v in r.headers.values())
    assert _bearers(hub_server) == {f"Bearer {ALICE_TOKEN}"}


def test_the_hardware_line_names_the_device_and_what_a_gpu_would_change(monkeypatch: pytest.MonkeyPatch) -> None:
    _off_space(monkeypatch)
    assert zerogpu.device_markdown(CPU) == f"Training runs on **{CPU.name}**."
    _space(monkeypatch)
    assert "On a GPU (ZeroGPU or a dedicated one)" in zerogpu.device_markdown(CPU)
