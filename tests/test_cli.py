"""The command line contract: exit codes, one-line errors, JSON shapes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_color_dataset
from xfer.errors import ConfigError
from xfer.model import load_model, save_model


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


# --- what --out may replace (issue 15, item 8) ----------------------------------------------------------------


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``python -m xfer ARGS`` in this process (fast: nothing here gets as far as training)."""
    from xfer.cli import main

    try:
        code = main(list(args))
    except SystemExit as e:  # argparse
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused(code: int, err: str, fragment: str) -> None:
    assert code == 1, err
    assert err.startswith("error: ") and fragment in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_out_never_replaces_a_folder_xfer_did_not_write(trained, tmp_path, capsys):
    data, model = trained
    train = ("train", "--data", str(data), "--backbone", "resnet18", "--strategy", "head", "--weights", "none",
             "--image-size", "32", "--epochs", "1")
    project = tmp_path / "project"  # a user's folder that happens to hold a config.json
    project.mkdir()
    (project / "config.json").write_text('{"name": "my project"}')
    (project / "notes.txt").write_text("a year of notes")
    (project / "src").mkdir()
    (project / "src" / "main.py").write_text("print('hi')")
    before = tree(project)
    assert_refused(*cli(capsys, *train, "--out", str(project))[::2], "holds files xfer did not write")
    assert tree(project) == before

    extra = tmp_path / "model-plus"  # an xfer model folder with a file of the user's in it
    shutil.copytree(model, extra)
    (extra / "results.csv").write_text("epoch,acc\n")
    before = tree(extra)
    assert_refused(*cli(capsys, *train, "--out", str(extra))[::2], "'results.csv'")
    assert tree(extra) == before

    foreign = tmp_path / "foreign"  # only xfer's file names, but not xfer's config
    foreign.mkdir()
    (foreign / "config.json").write_text('{"model_type": "bert"}')
    assert_refused(*cli(capsys, *train, "--out", str(foreign))[::2], "not an xfer model folder")
    assert (foreign / "config.json").read_text() == '{"model_type": "bert"}'

    project_before = tree(project)
    with pytest.raises(ConfigError, match="did not write"):  # the library's writer: the same rule
        save_model(load_model(model), project)
    assert tree(project) == project_before


@pytest.mark.parametrize("where", ["same", "inside", "holds", "link"])
def test_out_never_overlaps_the_data(trained, tmp_path, capsys, where):
    data, _ = trained
    copy = shutil.copytree(data, tmp_path / "photos" / "data")
    before = tree(copy)
    out = {"same": copy, "inside": copy / "red", "holds": tmp_path / "photos", "link": copy}[where]
    source = copy
    if where == "link":  # --data through a symlink, --out the real folder: resolved, both
        source = tmp_path / "link"
        source.symlink_to(copy, target_is_directory=True)
    code, _, err = cli(capsys, "train", "--data", str(source), "--out", str(out), "--backbone", "resnet18",
                       "--strategy", "head", "--weights", "none", "--image-size", "32", "--epochs", "1")
    assert_refused(code, err, "outside the data")
    assert tree(copy) == before


def test_out_replaces_its_own_model_folder(trained, tmp_path):
    _, model = trained
    again = shutil.copytree(model, tmp_path / "again")
    (again / "model.onnx").write_bytes(b"onnx")  # a file xfer writes too (export)
    assert save_model(load_model(model), again) == again.resolve()
    assert sorted(p.name for p in again.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert save_model(load_model(model), empty) == empty.resolve()


# --- values, JSON, worker errors, names (issue 15, item 9) -----------------------------------------------------


@pytest.mark.parametrize("args, fragment", [
    (["train", "--lr", "inf"], "argument --lr: must be a number above 0"),
    (["train", "--lr", "nan"], "argument --lr"),
    (["train", "--weight-decay", "nan"], "argument --weight-decay"),
    (["train", "--label-smoothing", "2"], "argument --label-smoothing: must be a number at least 0 and below 1"),
    (["train", "--workers", "-1"], "argument --workers: must be at least 0"),
    (["train", "--val-fraction", "1"], "argument --val-fraction"),
    (["evaluate", "MODEL", "--batch-size", "0"], "argument --batch-size: must be at least 1"),
    (["predict", "MODEL", "x.png", "--top-k", "0"], "argument --top-k"),
])
def test_out_of_range_values_are_one_line_usage_errors(trained, tmp_path, capsys, args, fragment):
    data, model = trained
    args = [str(model) if a == "MODEL" else a for a in args]
    if args[0] == "train":
        args += ["--data", str(data), "--out", str(tmp_path / "m"), "--backbone", "resnet18", "--strategy", "head",
                 "--weights", "none", "--image-size", "32", "--epochs", "1"]
    else:
        args += ["--data", str(data)] if args[0] == "evaluate" else []
    code, out, err = cli(capsys, *args)
    assert code == 2 and err.startswith("error: ") and fragment in err, err
    assert len(err.strip().splitlines()) == 1 and "unexpected" not in err
    assert not (tmp_path / "m").exists()


def test_library_refuses_the_same_values(trained):
    from xfer.api import evaluate
    from xfer.device import select_device
    from xfer.engine import TrainConfig

    data, model = trained
    for bad in ({"lr": float("inf")}, {"lr": float("nan")}, {"weight_decay": float("nan")},
                {"weight_decay": -1.0}, {"label_smoothing": 2.0}, {"epochs": 0}, {"patience": 0}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad).validate()
    TrainConfig(lr=0.01, weight_decay=0.0, label_smoothing=0.1).validate()
    with pytest.raises(ConfigError, match="workers"):
        select_device("cpu", num_workers=-1)
    with pytest.raises(ConfigError, match="batch size"):
        evaluate(load_model(model), str(data), device=select_device("cpu"), batch_size=0)


def strict_json(line: str):
    return json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in --json output: not JSON"))


def test_json_never_prints_nan(trained, tmp_path, capsys):
    import torch

    data, model = trained
    broken = load_model(model)
    with torch.no_grad():  # what a run with an infinite learning rate used to save
        for p in broken.net.parameters():
            p.fill_(float("nan"))
    save_model(broken, tmp_path / "nan-model")
    image = sorted((data / "red").iterdir())[0]
    code, out, err = cli(capsys, "predict", str(tmp_path / "nan-model"), str(image), "--json")
    assert code == 0, err
    assert all(t["prob"] is None for t in strict_json(out.splitlines()[0])["top_k"])
    code, out, err = cli(capsys, "evaluate", str(tmp_path / "nan-model"), "--data", str(data), "--json")
    assert code == 0, err
    strict_json(out)


def test_data_loader_worker_errors_are_one_line(trained, tmp_path, capsys, monkeypatch):
    """A worker's exception reaches the main process with the worker's traceback as its message."""
    from torch.utils.data import DataLoader

    from xfer import cli as cli_module
    from xfer.api import evaluate
    from xfer.device import select_device
    from xfer.errors import DataError

    data, model = trained
    bad = tmp_path / "gone.png"
    bad.write_bytes(b"not a png")  # passed straight to evaluate: no scan filters it out, the worker fails on it
    with pytest.raises(DataError) as exc:
        evaluate(load_model(model), [(bad, "red")], device=select_device("cpu", num_workers=1))
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message and message.startswith(str(bad)), message

    class Exploding:
        def __len__(self):
            return 1

        def __getitem__(self, i):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 30000000000 bytes")

    def explode(args):
        for _ in DataLoader(Exploding(), num_workers=1):
            pass
        return 0

    monkeypatch.setitem(cli_module.COMMANDS, "inspect", explode)
    code, _, err = cli(capsys, "inspect", str(data))
    assert code == 1 and "can't allocate memory" in err and "data loader worker" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_data_flowers_prefers_a_local_folder_and_says_so(trained, tmp_path, capsys, monkeypatch):
    data, _ = trained
    bundled = make_color_dataset(tmp_path / "bundled", classes={"a": (200, 0, 0), "b": (0, 0, 200)}, per_class=2)
    monkeypatch.setenv("XFER_FLOWERS_DIR", str(bundled))
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "inspect", "flowers", "--json")
    assert code == 0 and strict_json(out)["classes"] == ["a", "b"] and "bundled flower photos" in err, err
    shutil.copytree(data, tmp_path / "flowers")
    code, out, err = cli(capsys, "inspect", "flowers", "--json")
    assert code == 0, err
    assert strict_json(out)["classes"] == ["blue", "green", "red"]
    assert f"using the local folder {(tmp_path / 'flowers').resolve()}" in err


def test_predict_refuses_a_fifo_without_hanging(trained, tmp_path):
    data, model = trained
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    image = sorted((data / "red").iterdir())[0]
    try:
        r = subprocess.run([sys.executable, "-m", "xfer", "predict", str(model), str(fifo), str(image)],
                           capture_output=True, text=True, cwd=ROOT, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:
        pytest.fail("predict blocked on a FIFO")
    assert r.returncode == 1 and "named pipe" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert str(image) in r.stdout  # the other image was still predicted
