"""The live webcam on the Predict tab, in headless Chromium with its fake camera: after *Record*, the top-5
bars update several times while the stream runs, with the session's model (a moving test pattern, so each
frame's probabilities differ)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app_server import AppServer
from test_service import tiny_model

playwright = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
FAKE_CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


def open_live(page, url: str, model_dir: Path) -> None:
    """Load ``model_dir`` into the page's session (server folder) and start the live webcam."""
    page.goto(url)
    page.wait_for_selector("#use-flowers")
    page.get_by_role("tab", name="4 · Predict").click()
    page.click("#other-model .label-wrap")
    page.fill("#model-dir textarea", str(model_dir))
    page.click("#load-model-dir")
    page.wait_for_function("() => (document.querySelector('#model-info')?.innerText || '').includes('model')")
    page.click("#live .label-wrap")
    page.click("#live-webcam [title='grant webcam access'] button")
    page.wait_for_selector("#live-webcam button[aria-label='capture photo']")
    page.evaluate("""() => {  // every distinct set of bars the page draws, with when
        window.__updates = [];
        const el = document.querySelector('#predict-label');
        const read = () => JSON.stringify([...el.querySelectorAll('meter')].map(m => m.getAttribute('value')));
        new MutationObserver(() => {
            const v = read(), u = window.__updates;
            if (v !== '[]' && (!u.length || u[u.length - 1].v !== v)) u.push({t: performance.now(), v});
        }).observe(el, {subtree: true, childList: true, attributes: true, characterData: true});
    }""")
    page.click("#live-webcam button[aria-label='capture photo']")  # Record: the stream starts


def live_updates(page, seconds: float) -> list[dict]:
    """The label's distinct updates during ``seconds`` of streaming: [{t (ms), v (meter values)}]."""
    time.sleep(seconds)
    return page.evaluate("() => window.__updates")


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", *FAKE_CAMERA])
        yield b
        b.close()


def test_webcam_predictions_update_live(browser, tmp_path: Path) -> None:
    model_dir = tiny_model(tmp_path / "m")
    app = AppServer(tmp_path / "app")
    try:
        app.wait_ready()
        ctx = browser.new_context(viewport={"width": 1280, "height": 900}, permissions=["camera"])
        page = ctx.new_page()
        page.set_default_timeout(120_000)
        open_live(page, app.url, model_dir)
        # The first frames wait in the page until the stream has started (seconds on a loaded machine);
        # from then on each frame's answer redraws the bars.
        page.wait_for_function("() => window.__updates.length >= 1")
        page.wait_for_function("() => window.__updates.length >= 5", timeout=60_000)
        updates = page.evaluate("() => window.__updates")
        assert len({u["v"] for u in updates}) >= 5  # five different sets of bars: they move by themselves
        labels = page.eval_on_selector_all("#predict-label [data-testid$='-confidence-set'] meter",
                                           "ms => ms.map(m => m.getAttribute('aria-label'))")
        assert sorted(labels) == ["blue", "green", "red"]
        ctx.close()
    finally:
        app.stop()
    assert "Traceback" not in app.log_path.read_text(errors="replace")
