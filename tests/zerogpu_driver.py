"""Run xfer's ZeroGPU functions through the real ``spaces`` wrapper on a machine without a GPU (a subprocess of
tests/test_spaces.py): ``python tests/zerogpu_driver.py DATA_DIR WORK_DIR`` prints one JSON line of findings.

What is real: the ``spaces`` package with ``SPACES_ZERO_GPU=true`` (torch patched in this process, each call
forked into its worker, arguments and results pickled across, a generator's close setting the worker's stop
event). What stands in: the ZeroGPU device API (``/schedule``, ``/allow``, ``/release``, a local HTTP server
here) and the package's CUDA initialisation in the worker (``spaces.zero.torch.init``/``move``: no GPU here).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's xfer, not an installed one
CALLS: list[tuple[str, dict]] = []


class DeviceAPI(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        CALLS.append((url.path, {k: v[0] for k, v in parse_qs(url.query).items()}))
        body = (json.dumps({"idle": False, "nvidiaIndex": 0, "nvidiaUUID": "none", "allowToken": "allow"})
                if url.path == "/schedule" else "{}").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main(data_dir: str, work: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), DeviceAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cgroup = Path(work) / "cgroup"
    cgroup.write_text("0::/xfer-test\n")
    os.environ.update(SPACES_ZERO_GPU="true", SPACES_ZERO_DEVICE_API_URL=f"http://127.0.0.1:{server.server_port}",
                      ZEROGPU_PROC_SELF_CGROUP_PATH=str(cgroup), ZEROGPU_OFFLOAD_DIR=str(Path(work) / "offload"))
    import spaces  # noqa: F401  (before anything touches CUDA, as on a Space)
    import spaces.zero.torch as zero_torch

    zero_torch.init = lambda nvidia_uuid: None  # no GPU to initialise here
    zero_torch.move = lambda callback=None: None

    from xfer.allocation import Part
    from xfer.data import load_dataset
    from xfer.engine import EpochStats, Progress, TrainConfig
    from xfer.run import Done, Failed, TrainingRun
    from xfer.studio import zerogpu

    out: dict = {"enabled": zerogpu.enabled(), "wrapped": hasattr(zerogpu.train_part_on_gpu, "zerogpu"),
                 "parent_pid": os.getpid()}
    report = load_dataset(data_dir)
    settings = dict(backbone="resnet18", strategy="finetune", weights=None, image_size=32,
                    config=TrainConfig(epochs=2, batch_size=8, augment=False))
    run = TrainingRun(zerogpu.training_job(report, settings, [Part(1, 1, 41), Part(2, 2, 42)], Path(work) / "parts"))
    events = list(run)
    done = events[-1]
    out["outcome"] = type(done).__name__
    out["allocations"] = [e.index for e in events if isinstance(e, zerogpu.Allocation)]
    out["epochs"] = [e.epoch for e in events if isinstance(e, EpochStats)]
    out["progress"] = sum(isinstance(e, Progress) for e in events)
    out["durations"] = [int(q["durationSeconds"]) for path, q in CALLS if path == "/schedule"]
    out["parts_dir_left"] = (Path(work) / "parts").exists()
    if isinstance(done, Done):
        model = done.model
        out["history"] = [h["epoch"] for h in model.history]
        image = report.items[0][0]
        out["predict"] = zerogpu.predict_on_gpu(model, str(image), 2, None)
        out["evaluate_images"] = zerogpu.evaluate_on_gpu(model, report, None).num_images
        out["model_device_after"] = str(model.device)  # the app's copy stays where it was
    else:
        out["error"] = repr(done.error)

    # Stop: the parent's flag closes the part's generator; the worker must end the run and give the GPU back.
    settings["config"] = TrainConfig(epochs=50, batch_size=4, augment=False)
    CALLS.clear()
    stop_run = TrainingRun(zerogpu.training_job(report, settings, [Part(1, 50, 43)], Path(work) / "stop"))
    seen = 0
    for event in stop_run:
        if isinstance(event, Progress):
            seen += 1
            if seen == 3:
                stop_run.stop(wait=False)
        if isinstance(event, (Done, Failed)):
            out["stop_outcome"] = "stopped" if isinstance(event, Failed) and event.stopped else repr(event)
    out["stop_calls"] = [path for path, _ in CALLS]
    print("RESULT " + json.dumps(out, default=str), flush=True)
    import multiprocessing

    for child in multiprocessing.active_children():  # the package's idle workers: they hold our stdout open
        child.kill()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
