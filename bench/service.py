"""The classifier as a service: /classify latency (cold and warm cache) and the live webcam's updates/s.

Runs the real app (``python app.py``) on 127.0.0.1 with the local Hub look-alike (tests/hub_server.py),
an EfficientNet-Lite0 ``head`` model at 224 px (weights shipped in a pip package, trained one epoch on
a few synthetic images: the accuracy is irrelevant, the network's cost is the real one), and headless
Chromium's fake camera. Prints a table and writes bench/results/service.md. It never asserts.

    python bench/service.py [--warm N] [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, write_text

sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--warm", type=int, default=10, help="warm calls per model (median reported)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of webcam streaming measured")
    args = p.parse_args()
    os.environ.setdefault("XFER_OFFLINE", "1")
    from gradio_client import Client, handle_file
    from huggingface_hub import constants

    import xfer
    from app_server import AppServer
    from conftest import make_color_dataset
    from hub_server import HubServer
    from xfer.engine import TrainConfig

    constants.HF_HUB_DISABLE_TELEMETRY = True
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        os.environ.pop(var, None)
    tmp = Path(tempfile.mkdtemp(prefix="xfer-bench-service-"))
    data = make_color_dataset(tmp / "data", per_class=4, size=64)
    model = xfer.train(str(data), backbone="efficientnet_lite0", strategy="head", image_size=224,
                       config=TrainConfig(epochs=1, batch_size=8), device=xfer.select_device("cpu"))
    xfer.save_model(model, tmp / "models" / "lite")
    image = sorted((data / "red").iterdir())[0]
    rows: list[tuple[str, str]] = []
    with HubServer(tmp / "hub", tokens={"hf_bench_token": "alice"}) as hub:
        xfer.hub.push(tmp / "models" / "lite", "alice/lite", token="hf_bench_token", endpoint=hub.url)
        app = AppServer(tmp / "app", extra_args=["--models-dir", str(tmp / "models")],
                        env={"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp / "app-hf"), "HF_HUB_DISABLE_TELEMETRY": "1"})
        try:
            app.wait_ready()
            c = Client(app.url, verbose=False)
            for ref, what, cold_is in (("alice/lite", "Hub repo", "pull + load + predict"),
                                       ("lite", "server model by name", "load + predict")):
                t = time.perf_counter()
                c.predict(handle_file(str(image)), ref, api_name="/classify")
                cold = time.perf_counter() - t
                warm = []
                for _ in range(args.warm):
                    t = time.perf_counter()
                    c.predict(handle_file(str(image)), ref, api_name="/classify")
                    warm.append(time.perf_counter() - t)
                rows.append((f"/classify, {what}, cold ({cold_is})", f"{cold:.2f} s"))
                rows.append((f"/classify, {what}, warm (median of {args.warm})",
                             f"{statistics.median(warm) * 1000:.0f} ms (min {min(warm) * 1000:.0f} ms)"))
            rows.append(("live webcam, updates of the top-5 bars per second", f"{webcam_fps(app.url, tmp, args.seconds):.1f}"))
        finally:
            app.stop()
    table = "\n".join(["| what | measured |", "| --- | --- |", *(f"| {a} | {b} |" for a, b in rows)])
    text = (f"# The classifier as a service (bench/service.py)\n\nEfficientNet-Lite0 `head`, 224 px, CPU; "
            f"app and browser on the same shared, loaded 2-core machine (other jobs were running).\n\n{table}\n")
    print(text)
    write_text(ROOT / "bench" / "results" / "service.md", text)


def webcam_fps(url: str, tmp: Path, seconds: float) -> float:
    from playwright.sync_api import sync_playwright

    from test_live_webcam import CHROMIUM, FAKE_CAMERA, open_live

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", *FAKE_CAMERA])
        ctx = b.new_context(viewport={"width": 1280, "height": 900}, permissions=["camera"])
        page = ctx.new_page()
        page.set_default_timeout(120_000)
        open_live(page, url, tmp / "models" / "lite")
        page.wait_for_function("() => window.__updates.length >= 5")  # past the stream's start
        start = page.evaluate("() => [performance.now(), window.__updates.length]")
        time.sleep(seconds)
        end = page.evaluate("() => [performance.now(), window.__updates.length]")
        b.close()
    return (end[1] - start[1]) / ((end[0] - start[0]) / 1000)


if __name__ == "__main__":
    main()
