"""Bad and hostile input through the command line: every case of ``badinputs.py``, ``python -m xfer`` in subprocesses.

Each input ends in a correct result or a one-line ``error: ...`` that says what to do; archives never write
outside their extraction folder; the big ones (zip bombs, decompression bombs, a 24 MP photo) are run in their
own process whose peak RSS must stay well under 1.5 GB (``python -m xfer`` alone, importing torch, takes
about 1 GB here). ``-s`` prints the figures; they also go to ``test-artifacts/hostile_cli_memory.json``.

One tiny model (ResNet-18 cut after its first stage, random weights, 32 px) is trained by ``xfer train`` on
"halves" images (red above blue vs blue above red), with the usable hostile images mixed into its classes:
orientation decides the class, so an EXIF-rotated photo is only classified right if it is seen upright.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from badinputs import (
    FOLDER_NAMES,
    ZIP_NAMES,
    make_bad_folders,
    make_bad_images,
    make_bad_zips,
    make_halves_dataset,
    seed_sentinel,
    snapshot,
)
from conftest import ROOT

pytestmark = pytest.mark.slow

MAX_RSS_MB = 1536  # "well under 1.5 GB": decoding the 400 MP bomb alone would take 1.6 GB
BIG_IMAGES = ("large_photo", "png_90mp", "png_bomb", "png_header_bomb")
NOT_TRAINED_ON = set(BIG_IMAGES) - {"large_photo"}  # 90+ MP PNGs are slow to decode: predicted, not trained on
MEMORY: dict[str, float] = {}  # case -> peak RSS (MB), printed at the end of the module


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mb: float


# The CLI runs under a small Python launcher that reports its child's peak RSS. Measured from pytest directly,
# ru_maxrss would include pytest's own RSS: the child is forked from it, and Linux carries the pre-exec
# high-water mark into the child's ru_maxrss.
LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))  # KB on Linux
sys.exit(code if code >= 0 else 128 - code)
"""


def run_cli(*args: str, cache: Path, timeout: float = 300, extra_env: dict[str, str] | None = None) -> Run:
    """``python -m xfer ARGS`` in a fresh process; returns its output and its own peak RSS (with its children)."""
    (cache / "tmp").mkdir(parents=True, exist_ok=True)  # the CLI extracts zips into a temporary folder here
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XFER_CACHE_DIR": str(cache), "TMPDIR": str(cache / "tmp"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), **(extra_env or {})}
    with tempfile.TemporaryDirectory() as tmp:
        rss = Path(tmp) / "rss"
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(rss), sys.executable, "-m", "xfer", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"python -m xfer {' '.join(args)} ran past {timeout:.0f} s:\n{err[-3000:]}")
        return Run(proc.returncode, out, err, int(rss.read_text()) / 1024)


def assert_one_line_error(run: Run, pattern: str) -> str:
    """Exit status 1 and a single ``error: ...`` line on stderr that matches ``pattern``."""
    assert run.returncode == 1, (run.returncode, run.stderr[-2000:])
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "unexpected" not in errors[0], run.stderr[-2000:]
    assert re.search(pattern, errors[0], re.I), errors[0]
    return errors[0]


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hostile-cli")
    sentinel = root / "sentinel"
    before = seed_sentinel(sentinel)
    images = make_bad_images(root / "inputs" / "images")
    zips = make_bad_zips(root / "inputs" / "zips", sentinel)
    folders = make_bad_folders(root / "inputs" / "folders")
    return {"root": root, "cache": root / "cache", "sentinel": sentinel, "sentinel_before": before,
            "images": {c.name: c for c in images}, "zips": zips, "folders": folders}


@pytest.fixture(scope="module")
def trained(work) -> dict:
    """``xfer train`` on halves images with every hostile image mixed into the classes.

    Usable images go to the class they show (any class when their colours are gone); unusable ones
    are spread over both classes and must be skipped, not fatal.
    """
    data = make_halves_dataset(work["root"] / "train-data", per_class=10)
    placed: dict[str, str] = {}
    for i, (name, case) in enumerate(sorted(work["images"].items())):
        if name in NOT_TRAINED_ON:
            continue
        cls = case.expect.label or ("redtop", "bluetop")[i % 2]
        shutil.copyfile(case.path, data / cls / case.path.name)
        placed[name] = cls
    inspect = run_cli("inspect", str(data), "--json", cache=work["cache"])
    model = work["root"] / "model"
    train = run_cli("train", "--data", str(data), "--out", str(model), "--backbone", "resnet18", "--strategy",
                    "truncate", "--cut", "2", "--weights", "none", "--image-size", "32", "--epochs", "20",
                    "--lr", "0.03", "--batch-size", "8", "--no-augment", "--device", "cpu", "--json",
                    cache=work["cache"])
    MEMORY["train (with hostile images mixed in)"] = train.peak_rss_mb
    return {"data": data, "model": model, "inspect": inspect, "train": train, "placed": placed}


# --- images --------------------------------------------------------------------------------------


def test_training_skips_unusable_images_and_uses_the_rest(trained, work):
    inspect, train = trained["inspect"], trained["train"]
    assert inspect.returncode == 0, inspect.stderr
    report = json.loads(inspect.stdout)
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    unusable = {work["images"][n].path.name for n in trained["placed"] if not work["images"][n].expect.ok}
    usable = {work["images"][n].path.name for n in trained["placed"] if work["images"][n].expect.ok}
    assert set(skipped) == unusable, skipped
    for name, reason in skipped.items():
        assert "\n" not in reason and reason, name
    assert report["classes"] == ["bluetop", "redtop"]
    assert sum(report["counts"].values()) == 20 + len(usable)

    assert train.returncode == 0, train.stderr[-3000:]
    summary = json.loads(train.stdout)
    assert summary["accuracy"] >= 0.75, summary  # the orientation task was learnt despite the odd files
    assert f"{len(unusable)} files skipped" in train.stderr
    assert sorted(os.listdir(trained["model"])) == ["README.md", "config.json", "model.safetensors"]


def test_predict_every_small_image_in_one_run(trained, work):
    """Each image gets its own answer: a valid top-k (the right class where the colours survive) or an error."""
    cases = [c for n, c in work["images"].items() if n not in BIG_IMAGES]
    # The control: the upside-down EXIF photo's pixels without the tag must predict the *other* class,
    # otherwise the EXIF case proves nothing.
    exif = work["images"]["exif_rotated_180"]
    control = work["root"] / "exif3_pixels_only.png"
    with Image.open(exif.path) as im:
        Image.fromarray(np.asarray(im.convert("RGB"))).save(control)  # pixels as stored, no EXIF
    run = run_cli("predict", str(trained["model"]), *[str(c.path) for c in cases], str(control), "--json",
                  "--device", "cpu", cache=work["cache"])
    assert run.returncode == 1  # some images failed; the others were still answered
    assert "Traceback" not in run.stderr, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(c.path) for c in cases] + [str(control)]
    for case, line in zip(cases, lines):
        if case.expect.ok:
            assert "top_k" in line, (case.name, line)
            probs = {t["label"]: t["prob"] for t in line["top_k"]}
            assert set(probs) == {"redtop", "bluetop"} and abs(sum(probs.values()) - 1) < 1e-4, case.name
            if case.expect.label:
                assert line["top_k"][0]["label"] == case.expect.label, (case.name, probs)
        else:
            assert "error" in line and "\n" not in line["error"], (case.name, line)
            assert re.search(case.expect.error, line["error"], re.I), (case.name, line["error"])
            assert ": " in line["error"] and line["error"].rstrip().endswith("."), line["error"]
    assert lines[-1]["top_k"][0]["label"] == "bluetop", lines[-1]  # stored upside down: the other class


@pytest.mark.parametrize("name", BIG_IMAGES)
def test_big_images_in_bounded_memory(trained, work, name):
    case = work["images"][name]
    run = run_cli("predict", str(trained["model"]), str(case.path), "--json", "--device", "cpu",
                  cache=work["cache"])
    MEMORY[f"predict {name} ({case.note}, {case.path.stat().st_size / 1e6:.1f} MB file)"] = run.peak_rss_mb
    line = json.loads(run.stdout)
    if case.expect.ok:
        assert run.returncode == 0, run.stderr
        assert not case.expect.label or line["top_k"][0]["label"] == case.expect.label, line
    else:
        assert run.returncode == 1 and "error" in line, run.stdout
        assert re.search(case.expect.error, line["error"], re.I) and "resize the image" in line["error"], line
    assert run.peak_rss_mb < MAX_RSS_MB, f"{name}: peak RSS {run.peak_rss_mb:.0f} MB"


# --- archives ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ZIP_NAMES)
def test_inspect_every_zip(work, name):
    case = next(c for c in work["zips"] if c.name == name)
    tmpdir = work["cache"] / "tmp"
    run = run_cli("inspect", str(case.path), "--json", cache=work["cache"])
    if case.expect.big:
        MEMORY[f"inspect {case.name} ({case.note}, {case.path.stat().st_size / 1e6:.1f} MB zip)"] = run.peak_rss_mb
        assert run.peak_rss_mb < MAX_RSS_MB, f"{case.name}: peak RSS {run.peak_rss_mb:.0f} MB"
    left = list(tmpdir.glob("xfer-data-*"))  # (torch keeps its own torchinductor_* there)
    if case.expect.ok:
        assert run.returncode == 0, (case.name, run.stderr[-2000:])
        report = json.loads(run.stdout)
        assert tuple(report["classes"]) == case.expect.classes, (case.name, report["classes"])
        skipped = [s["path"] for s in report["skipped"]]
        for name in case.expect.skipped:
            assert any(p.endswith(name) for p in skipped), (case.name, name, skipped)
        # Extracted into a temporary folder of the command's own, removed when it ended.
        assert Path(report["root"]).resolve().is_relative_to(tmpdir.resolve())
        assert left == [], f"{case.name}: the extraction folder was left behind: {left}"
    else:
        assert_one_line_error(run, case.expect.error)
        assert left == [], f"{case.name}: a refused archive left {left}"  # nothing left behind
    # Nothing outside the extraction folder: the sentinel is intact and no hostile file landed anywhere else.
    assert snapshot(work["sentinel"]) == work["sentinel_before"]
    outside = [p for p in work["root"].rglob("*evil*")
               if not p.is_relative_to(work["root"] / "inputs")]
    assert outside == [], outside
    links = [p for p in work["root"].rglob("*") if p.is_symlink()]
    assert links == [], links


# --- folders and what cannot be trained ----------------------------------------------------------


@pytest.mark.parametrize("name", FOLDER_NAMES)
def test_inspect_every_folder(work, name):
    case = next(c for c in work["folders"] if c.name == name)
    run = run_cli("inspect", str(case.path), "--json", cache=work["cache"])
    if case.expect.ok:
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        assert tuple(report["classes"]) == case.expect.classes
        for name in case.expect.skipped:
            assert any(s["path"].endswith(name) for s in report["skipped"]), report["skipped"]
        if case.name == "empty_class":
            assert any("'nothing here' has 0 usable images" in w for w in report["warnings"]), report["warnings"]
    else:
        assert_one_line_error(run, case.expect.error)


def _train_args(data: Path, out: Path) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--backbone", "resnet18", "--weights", "none",
            "--image-size", "32", "--epochs", "1", "--device", "cpu"]


@pytest.mark.parametrize("kind, name", [("zips", "one_class"), ("folders", "single_image_class")])
def test_untrainable_datasets_are_refused_with_what_to_do(work, kind, name):
    case = next(c for c in work[kind] if c.name == name)
    out = work["root"] / f"never-{name}"
    run = run_cli(*_train_args(case.path, out), cache=work["cache"])
    error = assert_one_line_error(run, case.expect.train_error)
    assert ": add" in error or "add " in error, error
    assert not out.exists()


def test_baseline_memory(work):
    """What `python -m xfer` costs before touching any input: the yardstick for the figures above."""
    run = run_cli("strategies", cache=work["cache"])
    assert run.returncode == 0, run.stderr
    MEMORY["baseline: python -m xfer strategies (imports torch)"] = run.peak_rss_mb


def test_memory_figures(trained):
    """Prints the peak RSS of every big case (run with -s); the limits are asserted where they ran."""
    assert MEMORY, "run the module, not this test alone"
    print("\npeak RSS of `python -m xfer` (MB):")
    for what, mb in MEMORY.items():
        print(f"  {mb:7.0f}  {what}")
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / "hostile_cli_memory.json").write_text(json.dumps({k: round(v) for k, v in MEMORY.items()}, indent=2))

