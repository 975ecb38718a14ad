"""The command line contract: exit codes, one-line errors, JSON shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_color_dataset


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "xfer", *args], capture_output=True, text=True, env=e,
                          cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("cli")
    data = make_color_dataset(tmp / "data", per_class=6)
    out = tmp / "model"
    r = run("train", "--data", str(data), "--out", str(out), "--backbone", "resnet18", "--strategy", "head",
            "--weights", "none", "--image-size", "32", "--epochs", "2", "--batch-size", "8", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["strategy"] == "head" and 0 <= summary["accuracy"] <= 1
    assert "epoch 2:" in r.stderr and "accuracy" in r.stderr
    return data, out


def test_predict_json_lines_and_failures(trained, tmp_path):
    data, model = trained
    good = sorted((data / "red").iterdir())[0]
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    r = run("predict", str(model), str(good), str(bad), "--json", "--top-k", "5")
    assert r.returncode == 1  # one image failed
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert lines[0]["image"] == str(good)
    assert [set(t) for t in lines[0]["top_k"]] == [{"label", "prob"}] * 3  # k capped at 3 classes
    probs = [t["prob"] for t in lines[0]["top_k"]]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4
    assert lines[1]["image"] == str(bad) and "not an image" in lines[1]["error"]
    ok = run("predict", str(model), str(good))
    assert ok.returncode == 0 and str(good) in ok.stdout


def test_evaluate_json_shape(trained):
    data, model = trained
    r = run("evaluate", str(model), "--data", str(data), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"accuracy", "classes", "per_class", "confusion_matrix", "misclassified"} <= set(out)
    assert out["classes"] == ["blue", "green", "red"]
    assert sum(map(sum, out["confusion_matrix"])) == 18
    assert set(out["per_class"]["red"]) == {"precision", "recall", "f1", "support"}


def test_inspect_and_recommend(trained):
    data, _ = trained
    r = run("inspect", str(data), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["counts"] == {"blue": 6, "green": 6, "red": 6}
    r = run("recommend", str(data), "--json")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["strategy"] in {"head", "truncate", "finetune", "scratch"} and rec["reason"]


@pytest.mark.parametrize("args,fragment", [
    (["train", "--data", "/nonexistent", "--out", "/tmp/x"], "does not exist"),
    (["predict", "/nonexistent-model", "x.jpg"], "not a folder"),
    (["evaluate", "/nonexistent-model", "--data", "/tmp"], "not a folder"),
    (["inspect", "/nonexistent"], "does not exist"),
])
def test_errors_are_one_line_without_traceback(args, fragment):
    r = run(*args)
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and fragment in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_debug_shows_traceback():
    r = run("--debug", "inspect", "/nonexistent")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_single_class_dataset_is_a_clear_error(tmp_path):
    data = make_color_dataset(tmp_path / "one", classes={"red": (255, 0, 0)}, per_class=3)
    r = run("train", "--data", str(data), "--out", str(tmp_path / "m"), "--weights", "none",
            "--backbone", "resnet18", "--strategy", "head", "--image-size", "32")
    assert r.returncode == 1 and "at least 2 classes" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "m").exists()


def test_usage_error_exits_2():
    r = run("train")
    assert r.returncode == 2 and "--data" in r.stderr


def test_listing_commands():
    assert "vgg16" in run("backbones").stdout
    out = run("strategies").stdout
    assert all(s in out for s in ("head", "truncate", "finetune", "scratch"))


def test_zip_extraction_leaves_nothing_behind(trained, tmp_path):
    import shutil

    data, _ = trained
    archive = shutil.make_archive(str(tmp_path / "data"), "zip", data)
    cache = tmp_path / "cache"
    r = run("inspect", archive, "--json", env={"XFER_CACHE_DIR": str(cache)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["num_images"] == 18
    assert not cache.exists() or not any(cache.rglob("*.png"))
