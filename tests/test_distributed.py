"""Data-parallel training: real torchrun processes (gloo on 127.0.0.1), tiny images, random weights.

The sharding helpers are checked in-process; everything else runs ``torchrun --standalone
--nproc-per-node=2`` as a user would, and reads what the processes wrote: the saved model,
the per-rank record of training batches (``XFER_DDP_RECORD``), the weights each rank ended with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, make_color_dataset
from xfer import distributed
from xfer.data.pipeline import make_loader

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
# 24 images, val_fraction 0.25: 18 training images; batch 4 per process, 8 per step: 2 steps of 16 per epoch.
TRAIN = ["--backbone", "resnet18", "--strategy", "head", "--weights", "none", "--image-size", "32",
         "--batch-size", "4", "--no-augment", "--val-fraction", "0.25"]


def torchrun(*args: str, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "XFER_OFFLINE": "1", **(env or {})}
    for k in distributed.LAUNCH_ENV:  # a launcher around pytest itself must not leak into the children
        e.pop(k, None)
    return subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, env=e, cwd=ROOT, timeout=timeout)


def records(folder: Path) -> dict[int, dict[int, list[list[int]]]]:
    """rank → epoch → that rank's training batches (dataset indices), from the XFER_DDP_RECORD files."""
    out: dict[int, dict[int, list[list[int]]]] = {}
    for f in sorted(folder.glob("rank*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            out.setdefault(r["rank"], {}).setdefault(r["epoch"], []).append(r["indices"])
    return out


def assert_disjoint_halves(rec: dict, epochs: int, steps: int, batch: int, n_train: int) -> None:
    assert sorted(rec) == [0, 1]
    for epoch in range(1, epochs + 1):
        b0, b1 = rec[0][epoch], rec[1][epoch]
        assert len(b0) == len(b1) == steps and all(len(b) == batch for b in b0 + b1)
        seen0, seen1 = {i for b in b0 for i in b}, {i for b in b1 for i in b}
        assert not seen0 & seen1, f"epoch {epoch}: both ranks trained on {sorted(seen0 & seen1)}"
        assert len(seen0) == len(seen1) == steps * batch and seen0 | seen1 <= set(range(n_train))
    assert rec[0][1] != rec[0][2]  # a new order each epoch (set_epoch)


# --- in-process: the sharding arithmetic ---------------------------------------------------------------


def test_no_launcher_is_one_process(monkeypatch):
    for k in distributed.LAUNCH_ENV:
        monkeypatch.delenv(k, raising=False)
    assert distributed.launch() is None and not distributed.active()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.device_name("auto") == "auto" and distributed.shard_bounds(7) == (0, 7)
    t = torch.arange(6).view(3, 2)
    assert distributed.gather_rows(t, 3) is t and distributed.all_mean([1.0, 2.0]) == [1.0, 2.0]
    with distributed.process_group("cpu") as parallel, distributed.failures():
        assert parallel is False
    monkeypatch.setenv("RANK", "0"), monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0"), monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert distributed.launch() is None  # one process under torchrun: nothing changes either
    monkeypatch.setenv("WORLD_SIZE", "2"), monkeypatch.setenv("RANK", "1")
    assert distributed.launch() == distributed.Launch(1, 2, 0) and not distributed.is_main()


def test_local_batches_split_each_global_batch():
    order = list(range(23))
    parts = [distributed.local_batches(order, 4, True, (r, 2)) for r in range(2)]
    assert [len(p) for p in parts] == [2, 2]  # 23 // 8 global batches, the partial one dropped
    for k in range(2):
        assert parts[0][k] + parts[1][k] == order[8 * k : 8 * (k + 1)]  # the global batch, split in two
    few = [distributed.local_batches(list(range(5)), 4, False, (r, 2)) for r in range(2)]
    assert few == [[[0, 1, 2]], [[3, 4]]]  # one short global batch: neither rank is left without images
    assert [distributed.shard_bounds(7, r, 3) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]


def test_sharded_loader_draws_the_order_a_shuffling_loader_draws():
    from torch.utils.data import TensorDataset

    from xfer.device import select_device

    data = TensorDataset(torch.arange(18))
    dev = select_device("cpu", num_workers=0)
    alone = make_loader(data, 8, dev, shuffle=True, seed=3, drop_last=True)
    ranks = [make_loader(data, 4, dev, shuffle=True, seed=3, drop_last=True, shard=(r, 2)) for r in range(2)]
    for _ in range(3):  # epochs: the generator advances identically
        single = [x.tolist() for (x,) in alone]
        split = [[x.tolist() for (x,) in loader] for loader in ranks]
        assert len(single) == len(split[0]) == len(split[1]) == len(alone) == len(ranks[0]) == 2
        assert [a + b for a, b in zip(*split, strict=True)] == single


# --- real processes -----------------------------------------------------------------------------------


def test_torchrun_trains_one_model_on_disjoint_halves(tmp_path):
    data = make_color_dataset(tmp_path / "data", per_class=8)
    out, rec = tmp_path / "models" / "m", tmp_path / "rec"
    rec.mkdir()
    r = torchrun("-m", "xfer", "train", "--data", str(data), "--out", str(out), "--epochs", "2", *TRAIN,
                 env={distributed.RECORD_ENV: str(rec)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("epoch 1:") == 1 and r.stderr.count("saved to") == 1  # rank 0 alone reports
    assert "2 processes (torchrun): batch 4 per process, 8 per step" in r.stderr
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["m"]  # one model, no temporaries
    cfg = json.loads((out / "config.json").read_text())["xfer"]
    assert cfg["training"]["world_size"] == 2 and cfg["training"]["batch_size"] == 4
    assert len(cfg["history"]) == 2 and sum(map(sum, cfg["metrics"]["confusion_matrix"])) == 6  # whole val set
    assert_disjoint_halves(records(rec), epochs=2, steps=2, batch=4, n_train=18)

    import xfer

    model = xfer.load_model(out)
    top = xfer.predict(model, [sorted((data / "red").iterdir())[0]], k=3)[0]
    assert set(top) == {"red", "green", "blue"} and abs(sum(top.values()) - 1) < 1e-4


def test_data_parallel_fit_equals_one_process_with_the_global_batch(tmp_path):
    data = make_color_dataset(tmp_path / "data", per_class=8)
    out = tmp_path / "out"
    r = torchrun(str(ROOT / "tests" / "ddp_fit_driver.py"), str(data), str(out), "4")
    assert r.returncode == 0, r.stderr[-3000:]

    def load(name):
        return torch.load(out / f"{name}.pt", weights_only=True)

    for strategy in ("head", "finetune", "cached"):  # cached: finetune on its frozen stages' cached outputs
        r0, r1, single = load(f"{strategy}-rank0"), load(f"{strategy}-rank1"), load(f"{strategy}-single")
        for k in r0["state"]:  # DDP: every rank ends with the same weights, bit for bit
            assert torch.equal(r0["state"][k], r1["state"][k]), (strategy, k)
        def timeless(history):
            return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

        assert timeless(r0["history"]) == timeless(r1["history"]) and r0["best_epoch"] == r1["best_epoch"]
        # The validation output is the whole set's, in order: what the net gives evaluated alone.
        assert torch.equal(r0["val_targets"], single["ddp_net_alone_targets"])
        assert torch.allclose(r0["val_probs"], single["ddp_net_alone_probs"], atol=1e-6)
        assert_disjoint_halves(records(out / f"record-{strategy}"), epochs=2, steps=2, batch=4, n_train=18)
    # On cached features (head), data-parallel training is the one-process run with batch 8, to rounding.
    r0, single = load("head-rank0"), load("head-single")
    for k, v in single["state"].items():
        assert torch.allclose(r0["state"][k].float(), v.float(), atol=1e-5), k
    for a, b in zip(r0["history"], single["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5) and a["val_accuracy"] == b["val_accuracy"]
    # (finetune trains batch norms: each process normalises by its own 4 images, so it only resembles batch 8.)


def test_a_killed_rank_fails_the_run_and_saves_nothing(tmp_path):
    from xfer.data.transforms import Preprocessing
    from xfer.model import XferModel, save_model
    from xfer.nets.strategies import build_network, make_spec

    data = make_color_dataset(tmp_path / "data", per_class=8)
    out = tmp_path / "models" / "m"
    spec = make_spec("resnet18", "head", 3)
    save_model(XferModel(build_network(spec), spec, ["blue", "green", "red"], Preprocessing(32, 32)), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = torchrun("-m", "xfer", "train", "--data", str(data), "--out", str(out), "--epochs", "3", *TRAIN,
                 env={distributed.KILL_ENV: "1:3"})  # rank 1: SIGKILL when drawing its 3rd batch (epoch 2)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.startswith("error: rank 0:")]
    assert len(lines) == 1 and "nothing was saved" in lines[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr.split("error: rank 0:")[0]  # xfer's part: one line; torchrun's follows
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous model, as it was
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["m"]


def test_jpeg_and_feature_batches_shard_like_the_loader(tmp_path):
    from xfer.data.pipeline import FeatureBatches, JpegBatches
    from xfer.data.transforms import Preprocessing
    from xfer.device import select_device

    data = make_color_dataset(tmp_path / "d", per_class=6, size=20)
    items = [(p, i) for i, p in enumerate(sorted(data.glob("*/*.png")))]  # label = index: batches show the order
    pre, dev = Preprocessing(16, 16), select_device("cpu", num_workers=0)

    def epochs(cls, args, extra, batch, shard=None, n=2):
        batcher = cls(*args, batch, shuffle=True, seed=1, drop_last=True, shard=shard, **extra)
        return [[y.tolist() for _, y in batcher] for _ in range(n)]

    for cls, args in ((JpegBatches, (items, pre, [False])),
                      (FeatureBatches, (torch.randn(18, 5), torch.arange(18)))):
        extra = {"device": dev} if cls is JpegBatches else {}
        single = epochs(cls, args, extra, 8)
        split = [epochs(cls, args, extra, 4, shard=(r, 2)) for r in range(2)]
        for e in range(2):
            assert [a + b for a, b in zip(split[0][e], split[1][e], strict=True)] == single[e], cls.__name__
