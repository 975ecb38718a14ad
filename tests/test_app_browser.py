"""End to end in a real browser: ``python app.py`` and headless Chromium (Playwright's sync API).

A first-time visitor's path: upload a zip of flower photos, train, read the metrics,
predict an uploaded photo (five labels with probabilities), download the model; then
Stop in the middle of a long run. Screenshots of every step go to ``test-artifacts/``.
Small data (5 classes x 8 photos at 64 px) and resnet18 with random weights keep a
training run to seconds on two CPU cores.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest

from app_server import FIVE_CLASSES, ROOT, AppServer, flower_subset, zip_folder

playwright = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def data(tmp_path_factory, flowers_dir) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("browser-data")
    upload = flower_subset(tmp / "upload" / "flowers", flowers_dir, per_class=8)
    probes = flower_subset(tmp / "probe", flowers_dir, per_class=1, offset=40, classes=("roses", "sunflowers"))
    broken = tmp / "holiday-photos.zip"
    broken.write_bytes(b"PK\x03\x04 this is not really a zip")
    return {"zip": zip_folder(upload, tmp / "flowers.zip"), "broken": broken,
            "a": next((probes / "roses").iterdir()), "b": next((probes / "sunflowers").iterdir())}


@pytest.fixture(scope="module")
def server(tmp_path_factory, data):
    srv = AppServer(tmp_path_factory.mktemp("app-browser"))
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(server.url)
    pg.wait_for_selector("#use-flowers")
    yield pg
    ctx.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def wait_text(page, selector: str, text: str) -> None:
    page.wait_for_function("([s, t]) => (document.querySelector(s)?.innerText || '').includes(t)",
                           arg=[selector, text])


def wait_number(page, elem_id: str, value: float) -> None:
    page.wait_for_function("([s, v]) => Number(document.querySelector(s)?.value) === v",
                           arg=[f"#{elem_id} input[type=number]", value])


def upload_dataset(page, zip_path: Path) -> None:
    page.set_input_files("#upload-zip input[type=file]", str(zip_path))
    wait_text(page, "#data-summary", "40 images in 5 classes")


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


def watch_progress(page) -> None:
    """Record every text the progress bar shows (a run on tiny data can be over in a second)."""
    page.evaluate("""() => {
        window.__progress = [];
        const el = document.querySelector('#train-progress');
        new MutationObserver(() => window.__progress.push(el.innerText))
            .observe(el, {subtree: true, childList: true, characterData: true});
    }""")


def train_and_wait(page) -> None:
    page.click("#train-btn")
    wait_text(page, "#train-status", "validation accuracy")


def read_label(page) -> dict[str, float]:
    """The probabilities in the Top-5 label, as drawn (each meter's exact value, by class)."""
    return page.eval_on_selector_all(
        "#predict-label [data-testid$='-confidence-set'] meter",
        "ms => Object.fromEntries(ms.map(m => [m.getAttribute('aria-label'), parseFloat(m.getAttribute('value'))]))")


def predict_upload(page, image: Path, previous: dict[str, float] | None = None) -> dict[str, float]:
    """Upload ``image`` in the Predict tab; wait until the label shows five classes (and changed)."""
    page.set_input_files("#predict-image input[type=file]", str(image))
    page.wait_for_function(
        """(prev) => {
            const ms = [...document.querySelectorAll("#predict-label [data-testid$='-confidence-set'] meter")];
            if (ms.length !== 5) return false;
            if (!prev) return true;
            return ms.some(m => prev[m.getAttribute('aria-label')] !== parseFloat(m.getAttribute('value')));
        }""", arg=previous)
    return read_label(page)


def test_first_visit_upload_train_evaluate_predict(page, data):
    # The first screen says what this is and what to do, step by step.
    intro = page.inner_text("#intro")
    assert "1 Data" in intro and "5 Share" in intro and "Use the bundled flowers" in intro
    assert [page.get_by_role("tab", name=n).count() for n in
            ("1 · Data", "2 · Train", "3 · Evaluate", "4 · Predict", "5 · Share")] == [1] * 5
    assert "500 MB" in page.inner_text("#upload-zip")  # the upload limit is stated
    shot(page, "01-start")

    upload_dataset(page, data["zip"])
    assert "daisy: 8" in page.inner_text("#data-summary")
    page.wait_for_function("document.querySelectorAll('#class-counts svg .mark-rect path').length === 5")
    page.wait_for_function("document.querySelectorAll('#data-gallery img').length >= 20")
    shot(page, "02-data")

    page.click("#next-train")  # the "Next" button leads to the next step
    page.get_by_role("tab", name="2 · Train", selected=True).wait_for()
    wait_text(page, "#advisor", "Recommended:")
    assert "cross-validated" in page.inner_text("#advisor")  # the probe's numbers are shown with the pick
    assert "CPU" in page.inner_text("#device-info")
    shot(page, "03-train-ready")
    watch_progress(page)
    train_and_wait(page)
    seen = page.evaluate("window.__progress")
    assert any(re.search(r"\d+(\.\d)? images/s · ETA", t) for t in seen), seen
    assert "Done in" in page.inner_text("#train-progress")
    page.wait_for_function("document.querySelectorAll('#loss-plot svg .mark-line path').length === 2")
    shot(page, "04-trained")

    tab(page, "3 · Evaluate")
    wait_text(page, "#eval-summary", "Validation accuracy")
    table = page.inner_text("#per-class")
    assert all(c in table for c in FIVE_CLASSES) and "precision" in table and "recall" in table
    page.wait_for_selector("#confusion img, #confusion canvas, #confusion svg")
    shot(page, "05-evaluate")

    tab(page, "4 · Predict")
    wait_text(page, "#model-info", "Using the model you just trained")
    probs = predict_upload(page, data["a"])
    assert set(probs) == set(FIVE_CLASSES)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
    shown = page.inner_text("#predict-label")
    assert len(re.findall(r"\d+%", shown)) == 5  # five percentages on the page
    page.wait_for_selector("#gradcam img")
    shot(page, "06-predict")

    tab(page, "5 · Share")
    page.click("#download-btn")
    link = page.locator("#model-zip [data-testid=download-link]").first
    link.wait_for()
    assert re.fullmatch(r"xfer-resnet18-\w+-5classes\.zip", link.get_attribute("download"))
    shot(page, "07-share")
    with page.expect_download() as download:  # the visitor leaves with their classifier
        link.click()
    with zipfile.ZipFile(download.value.path()) as zf:
        assert sorted(Path(n).name for n in zf.namelist()) == ["README.md", "config.json", "model.safetensors"]


def test_stop_keeps_the_previous_model(page, data):
    upload_dataset(page, data["zip"])
    tab(page, "2 · Train")
    wait_text(page, "#advisor", "Recommended:")
    page.get_by_label("head · Small data, similar domain").check()
    wait_number(page, "lr", 1e-3)  # the learning rate field follows the strategy's default
    set_number(page, "epochs", 1)
    train_and_wait(page)
    tab(page, "4 · Predict")
    first_a = predict_upload(page, data["a"])
    first_b = predict_upload(page, data["b"], previous=first_a)

    tab(page, "2 · Train")
    page.get_by_label("finetune · Large data, similar domain").check()
    wait_number(page, "lr", 3e-3)
    set_number(page, "epochs", 50)
    page.click("#train-btn")
    wait_text(page, "#train-progress", "epoch ")
    page.click("#stop-btn")
    wait_text(page, "#train-status", "Training was stopped")
    assert "previous model is still used" in page.inner_text("#train-status")
    shot(page, "08-stopped")

    tab(page, "4 · Predict")
    assert "Using the model you just trained" in page.inner_text("#model-info")
    again_a = predict_upload(page, data["a"], previous=first_b)
    assert again_a == first_a  # the first model still answers, unchanged


def test_broken_zip_shows_what_to_do(page, data):
    page.set_input_files("#upload-zip input[type=file]", str(data["broken"]))
    toast = page.locator("[data-testid=toast-text]", has_text="give a .zip of one folder per class").first
    toast.wait_for(state="visible")
    assert toast.inner_text().startswith("holiday-photos.zip is neither a folder nor a zip archive")
    assert "Traceback" not in page.inner_text("body")
    page.wait_for_timeout(600)  # let the toast finish sliding in for the screenshot
    shot(page, "00-broken-zip")
    assert "No dataset yet" in page.inner_text("#data-summary")
