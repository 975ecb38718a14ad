"""xfer.TrainingRun: typed events, Stop after the current batch, commit only on success, workers ended."""

from __future__ import annotations

import functools
import multiprocessing
import threading
import time

import pytest

import xfer
from tests.conftest import make_color_dataset
from xfer import Cancelled, Done, EpochStats, Failed, Progress, TrainConfig, TrainingRun
from xfer.data import scan_folder

CPU = xfer.select_device("cpu", num_workers=0)


def batches(n: int = 1000, seconds: float = 0.005, fail_at: int | None = None):
    """A job of ``n`` fake batches that honours the cancel flag the way fit does: after each batch."""
    seen: list[int] = []

    def job(callback, cancel):
        for step in range(1, n + 1):
            time.sleep(seconds)
            seen.append(step)
            if step == fail_at:
                raise OSError("disk full")
            callback(Progress("train", 1, 1, step, n, step / n, 100.0, None))
            if cancel.is_set():
                raise Cancelled("stopped")
        return "the model"

    return job, seen


@pytest.fixture
def colors(tmp_path) -> xfer.DatasetReport:
    return scan_folder(make_color_dataset(tmp_path / "colors", per_class=8))


def test_a_real_run_yields_typed_events_then_done_after_the_commit(colors):
    committed = []
    job = functools.partial(xfer.train, colors, backbone="resnet18", strategy="head", weights=None, image_size=32,
                            config=TrainConfig(epochs=2, batch_size=8, seed=0), device=CPU)
    run = TrainingRun(job, commit=committed.append)
    events = list(run)
    assert {type(e) for e in events} == {Progress, EpochStats, Done}
    assert [type(e) for e in events].count(EpochStats) == 2
    done = events[-1]
    assert isinstance(done, Done) and isinstance(done.model, xfer.XferModel)
    assert committed == [done.model] and run.outcome is done and not run.running
    assert run.progress == 1.0
    assert run.stop() is done  # a Stop after the end changes nothing


def test_stop_ends_the_run_after_the_current_batch_and_commits_nothing():
    job, seen = batches()
    committed = []
    run = TrainingRun(job, commit=committed.append).start()
    events = run.events()
    while not isinstance(event := next(events), Progress) or event.step < 3:
        pass
    outcome = run.stop(wait=True, timeout=30)
    assert isinstance(outcome, Failed) and outcome.stopped and isinstance(outcome.error, Cancelled)
    assert len(seen) <= event.step + 2, seen[-3:]  # the batch under way, then the flag is seen
    rest = list(events)
    assert rest[-1] is outcome and all(isinstance(e, Progress) for e in rest[:-1])
    assert committed == [] and not run.running


def test_a_stop_that_comes_after_the_job_returned_still_commits_nothing():
    release = threading.Event()
    committed = []
    run = TrainingRun(lambda callback, cancel: release.wait(30) and "model", commit=committed.append).start()
    run.stop(wait=False)
    release.set()
    assert run.wait(30).stopped and committed == []


def test_failed_carries_the_error_and_nothing_is_committed(colors):
    committed = []
    job = functools.partial(xfer.train, colors, backbone="resnet18", weights=None, image_size=32,
                            config=TrainConfig(epochs=0), device=CPU)
    events = list(TrainingRun(job, commit=committed.append))
    assert len(events) == 1 and isinstance(events[0], Failed) and not events[0].stopped
    assert isinstance(events[0].error, xfer.ConfigError) and "epochs" in str(events[0].error)
    job, _ = batches(n=5, fail_at=3)
    *progress, failed = TrainingRun(job, commit=committed.append)
    assert [e.step for e in progress] == [1, 2] and isinstance(failed.error, OSError)
    assert committed == []


def test_a_failing_commit_is_a_failed_run():
    def commit(model):
        raise OSError("disk full")

    job, _ = batches(n=2, seconds=0)
    outcome = list(TrainingRun(job, commit=commit))[-1]
    assert isinstance(outcome, Failed) and str(outcome.error) == "disk full"


def test_closing_the_iterator_stops_the_run():
    job, seen = batches()
    committed = []
    run = TrainingRun(job, commit=committed.append)
    events = iter(run)
    assert isinstance(next(events), Progress)
    events.close()  # the visitor left: Gradio closes the handler's generator
    assert run.stopping
    outcome = run.wait(30)
    assert isinstance(outcome, Failed) and outcome.stopped and committed == [] and len(seen) < 1000


def test_dataloader_workers_end_with_the_run(colors):
    """Stopped mid-epoch, its persistent workers go, although the outcome (and its error) is kept."""
    assert multiprocessing.active_children() == []
    device = xfer.select_device("cpu", num_workers=2)
    job = functools.partial(xfer.train, colors, backbone="resnet18", strategy="finetune", weights=None,
                            image_size=32, config=TrainConfig(epochs=20, batch_size=4, seed=0), device=device)
    run = TrainingRun(job)
    for event in run:
        if isinstance(event, Progress) and event.phase == "train":
            assert multiprocessing.active_children(), "the run has no workers: the test would prove nothing"
            run.stop(wait=False)
    assert run.outcome.stopped
    deadline = time.monotonic() + 30
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert multiprocessing.active_children() == []
    outcome = list(TrainingRun(functools.partial(job, config=TrainConfig(epochs=1, batch_size=4))))[-1]
    assert isinstance(outcome, Done)
    deadline = time.monotonic() + 30
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert multiprocessing.active_children() == []
