"""Many visitors at once: the real app (``python app.py``) driven by ``gradio_client``, one ``Client`` per visitor.

* 20 visitors predict at the same moment while another visitor's training run is going on: every request
  succeeds; their latency (p50/p95/max) is printed (``-s``) and written to ``test-artifacts/concurrency.json``
  with the app's per-event concurrency settings. This is a record, not a speed test: nothing asserts a time.
* Two visitors press Train at the same moment: the queue runs one training at a time (``--max-train-jobs 1``)
  and each visitor ends up with their own model (their own classes).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path

import pytest
from gradio_client import handle_file
from gradio_client.utils import Status

import xfer
from app_server import ROOT, AppServer, client
from badinputs import HALVES, halves, make_halves_dataset
from conftest import make_color_dataset
from xfer.engine import TrainConfig

pytestmark = pytest.mark.slow

N_PREDICTORS = 20
OTHER_CLASSES = {"cyan": (20, 200, 200), "magenta": (200, 20, 200), "yellow": (220, 220, 20)}


def zip_dir(folder: Path, dest: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder.parent))
    return dest


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("concurrency")
    halves_dir = make_halves_dataset(root / "halves" / "halves", per_class=12)
    colors_dir = make_color_dataset(root / "colors" / "colors", classes=OTHER_CLASSES, per_class=8, size=40)
    model = root / "model"
    xfer.train(str(halves_dir), backbone="resnet18", strategy="truncate", cut=2, weights=None, image_size=32,
               config=TrainConfig(epochs=20, batch_size=8, augment=False, lr=0.03), device=xfer.select_device("cpu"),
               out=model)
    image = root / "redtop.png"
    halves(*HALVES["redtop"], seed=777).save(image)
    return {"root": root, "model": model, "image": image, "zip_halves": zip_dir(halves_dir, root / "halves.zip"),
            "zip_colors": zip_dir(colors_dir, root / "colors.zip")}


@pytest.fixture(scope="module")
def server(work):
    workdir = work["root"] / "app-run"
    workdir.mkdir()
    srv = AppServer(workdir)  # --max-train-jobs 1, as deployed by default
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: with 20 values, p95 is the 19th)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


def wait_until_training(job, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(isinstance(o[0], str) and "epoch" in o[0] for o in job.outputs()):
            return
        assert not job.done(), f"the training run ended before it was under way: {job.outputs()[-1:]}"
        time.sleep(0.2)
    raise TimeoutError("training did not start")


def app_settings() -> dict:
    """Per-event concurrency as xfer.studio builds it (the queue's own settings are in xfer.studio.launch)."""
    from xfer import studio

    demo = studio.build_demo(xfer.select_device("cpu"), studio.AppDefaults(backbone="resnet18", weights="none"))
    return {fn.api_name: {"concurrency_id": fn.concurrency_id, "concurrency_limit": fn.concurrency_limit}
            for fn in demo.fns.values() if fn.api_name in {"train", "evaluate", "predict", "explain", "stop",
                                                           "upload_zip", "push", "pull"}}


def test_20_predictions_while_a_model_trains(server, work):
    predictors = [client(server) for _ in range(N_PREDICTORS)]
    for c in predictors:  # each visitor has the model loaded before the burst
        c.predict(str(work["model"]), api_name="/load_model_dir")
    idle = []
    for _ in range(3):
        t0 = time.perf_counter()
        predictors[0].predict(handle_file(str(work["image"])), api_name="/predict")
        idle.append(time.perf_counter() - t0)

    trainer = client(server)
    trainer.predict(handle_file(str(work["zip_halves"])), api_name="/upload_zip")
    job = trainer.submit(strategy_name="finetune", epochs=50, image_size=128, api_name="/train")  # stopped at the end
    try:
        wait_until_training(job)
        barrier = threading.Barrier(N_PREDICTORS)
        results: list[tuple[float, object]] = [None] * N_PREDICTORS  # type: ignore[list-item]

        def visit(i: int) -> None:
            barrier.wait()
            t0 = time.perf_counter()
            try:
                out = predictors[i].predict(handle_file(str(work["image"])), api_name="/predict")
            except Exception as e:  # recorded, asserted below
                out = e
            results[i] = (time.perf_counter() - t0, out)

        threads = [threading.Thread(target=visit, args=(i,)) for i in range(N_PREDICTORS)]
        t_burst = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        burst = time.perf_counter() - t_burst
        training_during_burst = not job.done()
    finally:
        stopped = trainer.predict(api_name="/stop")
        job.result(timeout=240)

    failures = [out for _, out in results if not isinstance(out, dict)]
    assert failures == [], failures[:3]
    assert all(out["label"] == "redtop" for _, out in results), [out["label"] for _, out in results]
    assert training_during_burst, "the training run was over before the predictions: they did not overlap"
    assert "Training was stopped" in stopped[0]

    latencies = [lat for lat, _ in results]
    figures = {
        "predictors": N_PREDICTORS,
        "p50_s": round(percentile(latencies, 50), 3),
        "p95_s": round(percentile(latencies, 95), 3),
        "max_s": round(max(latencies), 3),
        "mean_s": round(statistics.mean(latencies), 3),
        "burst_wall_s": round(burst, 3),
        "idle_single_predict_s": round(statistics.median(idle), 3),
        "during": "resnet18 finetune training at 128 px (another visitor), 2 CPU threads",
        "latency_includes": "gradio_client upload of a 40x40 PNG + queue wait + predict",
        "app_event_settings": app_settings(),
        "queue": "demo.queue(default_concurrency_limit=2, max_size=64) in xfer.studio.launch",
    }
    print(f"\n{N_PREDICTORS} concurrent predictions during training: p50 {figures['p50_s']:.2f} s, "
          f"p95 {figures['p95_s']:.2f} s, max {figures['max_s']:.2f} s (idle single request "
          f"{figures['idle_single_predict_s']:.2f} s; burst took {figures['burst_wall_s']:.1f} s)")
    out_dir = ROOT / "test-artifacts"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "concurrency.json").write_text(json.dumps(figures, indent=2) + "\n")


def test_two_sessions_train_in_turn_and_keep_their_own_models(server, work):
    a, b = client(server), client(server)
    a.predict(handle_file(str(work["zip_halves"])), api_name="/upload_zip")
    b.predict(handle_file(str(work["zip_colors"])), api_name="/upload_zip")
    job_a = a.submit(epochs=2, api_name="/train")
    job_b = b.submit(epochs=2, api_name="/train")
    # Watch both: one waits in the queue while the other trains.
    seen_waiting = False
    running = {Status.PROCESSING, Status.ITERATING, Status.PROGRESS}
    deadline = time.monotonic() + 600
    while not (job_a.done() and job_b.done()) and time.monotonic() < deadline:
        sa, sb = job_a.status().code, job_b.status().code
        if (sa in running and sb == Status.IN_QUEUE) or (sb in running and sa == Status.IN_QUEUE):
            seen_waiting = True
        time.sleep(0.05)
    final_a, final_b = job_a.result(timeout=60), job_b.result(timeout=60)
    assert seen_waiting, "the second training run never waited in the queue"
    assert "validation accuracy" in final_a[1].lower() and "validation accuracy" in final_b[1].lower()

    label_a = a.predict(handle_file(str(work["image"])), api_name="/predict")
    label_b = b.predict(handle_file(str(work["image"])), api_name="/predict")
    assert {c["label"] for c in label_a["confidences"]} == set(HALVES)
    assert {c["label"] for c in label_b["confidences"]} == set(OTHER_CLASSES)
