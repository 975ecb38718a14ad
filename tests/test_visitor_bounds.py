"""What one visitor may hold, and all of them together (issue 15, items 5 and 7): a new dataset or model replaces
the previous one's files, a shared budget unloads the least recently used other models and refuses uploads when
the disk budget is full, a closed page frees its folder at once, and Stop drops a Train queued before it.

Handlers are called directly, as the page calls them (tiny images made in tmp_path, random weights, 32 px)."""

from __future__ import annotations

import multiprocessing
import shutil
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
import torch
from PIL import Image

import xfer
from tests.conftest import make_color_dataset
from xfer.model import XferModel, save_model
from xfer.nets.registry import get_backbone
from xfer.nets.strategies import build_network, make_spec
from xfer.studio import AppConfig, AppDefaults, Session, build_demo, visitor_session
from xfer.studio.session import zip_model_dir
from xfer.studio.tabs import data, predict, queued_at, train

CLASSES = ["blue", "green", "red"]


def config(**limits) -> AppConfig:
    return AppConfig(xfer.select_device("cpu", num_workers=0), AppDefaults(backbone="resnet18", lr=1e-2), **limits)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XFER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def colors_zip(tmp_path: Path, name: str = "colors", seed: int = 0) -> Path:
    root = make_color_dataset(tmp_path / name, per_class=6, seed=seed)
    dest = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(root.rglob("*.png")):
            zf.write(f, f.relative_to(root.parent))
    return dest


def model_zip(tmp_path: Path, name: str, seed: int = 0) -> Path:
    """A downloadable model .zip: resnet18 with random weights, 32 px, 3 classes."""
    torch.manual_seed(seed)
    spec = make_spec("resnet18", "head", len(CLASSES))
    pre = get_backbone("resnet18").get_preprocessing().for_size(32)
    folder = save_model(XferModel(build_network(spec, weights=None).eval(), spec, list(CLASSES), pre),
                        tmp_path / "models" / name)
    return zip_model_dir(folder, tmp_path / "zips" / f"{name}.zip")


def red() -> Image.Image:
    return Image.new("RGB", (40, 40), (220, 30, 30))


def subfolders(session: Session, prefix: str) -> list[Path]:
    return sorted(p for p in session.workdir.iterdir() if p.name.startswith(prefix))


def test_a_new_upload_replaces_the_previous_folder(tmp_path):
    s = Session(config())
    data.on_upload_zip(s, str(colors_zip(tmp_path, "first")))
    first = s.data_dir
    assert subfolders(s, "zip-") == [first]
    data.on_upload_zip(s, str(colors_zip(tmp_path, "second", seed=1)))
    assert not first.exists() and subfolders(s, "zip-") == [s.data_dir]
    assert all(Path(p).is_relative_to(s.data_dir) for p, _ in s.report.items)

    predict.on_upload_model(s, str(model_zip(tmp_path, "m1")))
    old_model, old_folder = s.model, s.model_dir
    predict.on_upload_model(s, str(model_zip(tmp_path, "m2", seed=1)))
    assert not old_folder.exists() and [s.model_dir.parent] == subfolders(s, "upload-model-")
    assert s.model is not old_model and s.config.budget.stats()["models"] == 1  # the old one is released


def test_a_failed_model_upload_keeps_the_previous_model_and_its_folder(tmp_path):
    s = Session(config())
    predict.on_upload_model(s, str(model_zip(tmp_path, "good")))
    model, folder = s.model, s.model_dir
    bad = tmp_path / "not-a-model.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("notes/readme.txt", "no config.json here")
    with pytest.raises(gr.Error, match="holds no xfer model"):
        predict.on_upload_model(s, str(bad))
    assert s.model is model and s.model_dir == folder and (folder / "config.json").is_file()
    assert subfolders(s, "upload-model-") == [folder.parent]  # the failed upload left nothing behind
    assert set(predict.on_predict(s, red())) == set(CLASSES)


def test_over_budget_the_least_recently_used_other_model_is_unloaded(tmp_path):
    cfg = config(max_session_models=2)
    a, b, c = Session(cfg), Session(cfg), Session(cfg)
    for i, s in enumerate((a, b, c)):
        predict.on_upload_model(s, str(model_zip(tmp_path, f"m{i}", seed=i)))
        if s is b:
            predict.on_predict(a, red())  # a was used after b: b is the least recently used
    assert b.model is None and b.model_unloaded and a.model is not None and c.model is not None
    assert cfg.budget.stats()["models"] == 2 and (b.model_dir / "config.json").is_file()  # still on disk
    top = predict.on_predict(b, red())  # loaded again from b's folder (and someone else unloaded)
    assert set(top) == set(CLASSES) and b.model is not None and cfg.budget.stats()["models"] == 2
    assert a.model is None  # a was the least recently used now

    # Unloaded, and its files gone: one line saying what happened and what to do.
    shutil.rmtree(a.model_dir)
    with pytest.raises(gr.Error, match="unloaded from memory to make room for other visitors.*upload it or train"):
        predict.on_predict(a, red())


def test_uploads_are_refused_when_the_disk_budget_is_full(tmp_path):
    cfg = config(max_sessions_disk_mb=1)
    other, s = Session(cfg), Session(cfg)
    (other.workdir / "big.bin").write_bytes(b"\0" * (2 << 20))  # another visitor's 2 MB
    cfg.budget.disk_changed(other)
    with pytest.raises(gr.Error, match=r"no room for more visitors' files right now \(2 of 1 MB in use\)"):
        data.on_upload_zip(s, str(colors_zip(tmp_path)))
    with pytest.raises(gr.Error, match="no room for more visitors' files"):
        predict.on_upload_model(s, str(model_zip(tmp_path, "m")))
    assert s.report is None and s.model is None and subfolders(s, "") == []
    other.close()  # that visitor left: their files no longer count
    assert "18 images in 3 classes" in data.on_upload_zip(s, str(colors_zip(tmp_path))).summary


def test_closing_the_page_closes_the_session_and_ends_its_run(tmp_path):
    """Gradio's unload event (the page's heartbeat ended) closes the visitor's session at once: the run
    stops and its DataLoader workers end, although the suspended training generator is never closed."""
    from gradio.state_holder import StateHolder

    demo = build_demo(xfer.select_device("cpu", num_workers=2), AppDefaults(backbone="resnet18"),
                      allow_server_paths=False)
    state = next(b for b in demo.blocks.values() if isinstance(b, gr.State))
    (unload,) = [fn for fn in demo.fns.values() if any(t[1] == "unload" for t in fn.targets)]
    holder = StateHolder()
    holder.set_blocks(demo)
    unload.fn(SimpleNamespace(session_hash="page-never-used"))  # nothing made, nothing to close
    visitor = holder["page-1"][state._id]  # what Gradio hands the page's handlers
    assert visitor_session(demo, state, "page-1") is visitor
    data.on_upload_zip(visitor, str(colors_zip(tmp_path)))
    updates = train.on_train(visitor, "resnet18", "finetune", 50, 1e-3, 4, 32, True, False, 0)
    while "epoch" not in str(next(updates)[0]):  # under way, its loaders' workers started
        pass
    assert multiprocessing.active_children(), "the run has no workers: the test would prove nothing"
    folder = visitor.workdir

    unload.fn(SimpleNamespace(session_hash="page-1"))  # the page closed; its generator stays suspended
    assert not folder.exists() and visitor.run.stopping and visitor.report is None
    assert isinstance(visitor.run.wait(60), xfer.Failed) and not visitor.training
    deadline = time.monotonic() + 30
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert multiprocessing.active_children() == []
    assert visitor.config.budget.stats() == dict(models=0, model_mb=0.0, disk_mb=0.0, sessions=0)
    updates.close()


def test_the_state_delete_callback_is_armed_by_the_page_load(tmp_path):
    """Gradio expires (and calls the delete callback of) only a State an event wrote: the page load does."""
    from gradio.state_holder import StateHolder

    demo = build_demo(xfer.select_device("cpu", num_workers=0), AppDefaults(backbone="resnet18"),
                      allow_server_paths=False)
    state = next(b for b in demo.blocks.values() if isinstance(b, gr.State))
    (load,) = [fn for fn in demo.fns.values() if any(t[1] == "load" for t in fn.targets) and fn.outputs == [state]]
    holder = StateHolder()
    holder.set_blocks(demo)
    visitor = holder["page-2"][state._id]
    holder["page-2"][state._id] = load.fn(visitor)  # what the load event does
    folder = visitor.new_dir("zip")
    holder.delete_state("page-2")  # what Gradio does when the closed page's State expires
    assert not folder.exists() and visitor.closed


def test_stop_drops_a_train_queued_before_it(tmp_path, monkeypatch):
    s = Session(config())
    data.on_upload_zip(s, str(colors_zip(tmp_path)))
    running = train.on_train(s, "resnet18", "finetune", 50, 1e-3, 4, 32, True, False, 0)  # the first Train
    while "epoch" not in str(next(running)[0]):
        pass
    second_click = time.monotonic()  # the second Train joins the queue behind the first
    assert train.on_stop(s)[0].startswith("**Training was stopped.**")
    with pytest.warns(UserWarning, match="Training stopped"):  # gr.Warning outside a page
        list(running)
    first = s.run

    monkeypatch.setattr(train, "queued_at", lambda: second_click)  # the second Train's turn comes now
    updates = list(train.on_train(s, "resnet18", "head", 1, 1e-2, 8, 32, False, False, 0))
    assert len(updates) == 1 and updates[0][1].startswith("**Not started:** Stop was pressed")
    assert s.run is first and not s.training and s.model is None

    monkeypatch.setattr(train, "queued_at", time.monotonic)  # a Train clicked after the Stop runs
    *_, last = train.on_train(s, "resnet18", "head", 1, 1e-2, 8, 32, False, False, 0)
    assert last[1].startswith("**Done") and s.model is not None


def test_queued_at_is_the_time_gradio_queued_the_event(monkeypatch):
    from gradio.context import LocalContext

    before = time.monotonic()
    assert queued_at() >= before  # outside a server: now
    blocks = SimpleNamespace(_queue=SimpleNamespace(event_ids_to_events={"e1": SimpleNamespace(enqueue_time=12.5)}))
    t1, t2 = LocalContext.blocks.set(blocks), LocalContext.event_id.set("e1")
    try:
        assert queued_at() == 12.5
    finally:
        LocalContext.event_id.reset(t2)
        LocalContext.blocks.reset(t1)


def test_a_dataset_being_trained_on_is_deleted_only_after_the_run(tmp_path):
    s = Session(config())
    data.on_upload_zip(s, str(colors_zip(tmp_path, "first")))
    first = s.data_dir
    updates = train.on_train(s, "resnet18", "finetune", 50, 1e-3, 4, 32, True, False, 0)
    while "epoch" not in str(next(updates)[0]):
        pass
    data.on_upload_zip(s, str(colors_zip(tmp_path, "second", seed=1)))  # while the run reads the first
    assert first.exists() and s.data_dir != first
    train.on_stop(s)
    with pytest.warns(UserWarning, match="Training stopped"):
        list(updates)
    assert not first.exists() and subfolders(s, "zip-") == [s.data_dir]
