"""Tiny CPU runs of the bench scripts, so that they cannot rot unnoticed.

They check that each script runs end to end and reports the fields the README's
tables are made from; they measure nothing (speed is for the bench scripts alone).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT, make_color_dataset


def _run(args: list[str], **env_vars: str) -> subprocess.CompletedProcess:
    # The checkout's xfer, installed or not.
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_vars}
    # The timeout only stops a hang; a smoke run normally takes well under a minute.
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_gpu_bench_runs_on_cpu(tmp_path):
    proc = _run(["bench/gpu.py", "--device", "cpu", "--quick", "--out", str(tmp_path)])
    r = json.loads((tmp_path / "gpu.json").read_text())
    assert r["env"]["train"] + r["env"]["val"] == 24 and r["env"]["forward_gflops_per_image"] > 0
    assert r["pipeline"]["cpu"]["images"] == 24 and r["pipeline"]["cpu"]["images_per_s"] > 0
    head = r["head"]["cpu"]
    assert head["cache_images"] == 2 * r["env"]["train"] + r["env"]["val"]
    assert head["cache_images_per_s"] > 0 and len(head["epoch_seconds"]) == 2
    fine = r["finetune"]["cpu:finetune"]
    assert len(fine["epoch_seconds"]) == 2 and fine["images_per_s"] > 0 and fine["train_images_per_s"] > 0
    assert fine["peak_gpu_gib"] is None and fine["mfu"] is None  # no GPU: no GPU memory, no known peak
    md = (tmp_path / "gpu.md").read_text()
    for row in ("data pipeline alone (decode=cpu)", "head: cache pass (decode=cpu)", "finetune: epoch 2 of 2",
                "finetune: its training steps alone"):
        assert row in md, row
    assert md.strip() in proc.stdout


def test_head_vs_tutorial_bench_runs_quick(tmp_path):
    data = make_color_dataset(tmp_path / "data", per_class=5, size=48, fmt="jpg")
    out = tmp_path / "hvt.md"
    proc = _run(["bench/head_vs_tutorial.py", "--quick", "--data", str(data), "--out", str(out)])
    md = out.read_text()
    assert md.strip() in proc.stdout
    for epochs in (1, 2):
        for arm in ("tutorial (features recomputed every epoch)", "xfer head, cache_views=2 (+1 augmented view)",
                    "xfer head, default (cache_views=1)"):
            assert any(line.startswith(f"| {epochs} ") and arm in line for line in md.splitlines()), (epochs, arm)
    assert "xfer compute_features via its DataLoader" in md and "bare body forward, channels_last" in md
    r = json.loads(out.with_suffix(".json").read_text())["results"]
    assert set(r) == {"tutorial", "xfer-views2", "xfer-views1", "features"}
    assert r["tutorial"]["runs"]["2"]["seconds"] > r["tutorial"]["runs"]["1"]["seconds"] > 0
    assert r["xfer-views2"]["runs"]["1"]["num_train"] == r["tutorial"]["num_train"]  # the same split
    assert r["features"]["images_per_s"]["xfer"] > 0 and r["tutorial"]["self_mb"] > 0


def test_advisor_bench_runs_quick(tmp_path):
    out = tmp_path / "advisor.md"
    proc = _run(["bench/advisor.py", "--quick", "--domains", "shapes,digits", "--image-size", "48",
                 "--work", str(tmp_path / "work"), "--out", str(out)])
    md = out.read_text()
    assert md.strip() in proc.stdout
    rows = [line for line in md.splitlines() if line.startswith(("| shapes-20 ", "| digits-20 "))]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[8] in ("head", "truncate", "finetune", "scratch")  # the measured best
        assert cells[9] in ("head", "truncate", "finetune", "scratch") and cells[10] in ("yes", "no")
        assert sum(c.endswith("%") or c.endswith("%**") for c in cells[4:8]) == 4  # an accuracy per strategy
    assert "held-out digits: " in md and len(list((tmp_path / "work" / "digits-train-20").iterdir())) == 10


def test_finetune_step_bench_runs_quick(tmp_path):
    out = tmp_path / "step.md"
    proc = _run(["bench/finetune_step.py", "--rounds", "1", "--size", "48", "--batch", "2",
                 "--arms", "frozen=0+package-pad,frozen=0,frozen=3+unfolded,frozen=3", "--out", str(out)])
    md = out.read_text()
    assert md.strip() in proc.stdout
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in md.splitlines() if line.startswith("| frozen=")}
    assert list(rows) == ["frozen=0+package-pad", "frozen=0", "frozen=3+unfolded", "frozen=3"]
    assert rows["frozen=0+package-pad"][5:] == ["1.00", "1.00"]  # the baseline is the first arm
    # Freezing stages leaves fewer trainable parameters; the padding change leaves them as they are.
    params = {k: float(v[1].rstrip("M")) for k, v in rows.items()}
    assert params["frozen=0+package-pad"] == params["frozen=0"] > params["frozen=3"] == params["frozen=3+unfolded"] > 0
    # Batch norms are folded only where stages are frozen, and not in the +unfolded arm.
    folded = {k: int(v[2]) for k, v in rows.items()}
    assert folded == {"frozen=0+package-pad": 0, "frozen=0": 0, "frozen=3+unfolded": 0, "frozen=3": 9}


def test_cpu_runtime_bench_runs_quick(flowers_dir):
    proc = _run(["bench/cpu_runtime.py", "--rounds", "1", "--per-class", "6", "--size", "48"],
                XFER_FLOWERS_DIR=str(flowers_dir))
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "wall (s)" not in line]
    assert [r.split("|")[1].strip().split(" (")[0] for r in rows] == [
        "xfer's defaults", "OpenMP idle threads spin", "glibc malloc's default"]
    assert rows[0].split("|")[4].strip() == "1.00"  # ratios are against the first arm


def test_accuracy_bench_reports_test_split_over_seeds(tmp_path, flowers_dir):
    out = tmp_path / "acc.md"
    proc = _run(["bench/accuracy.py", "--quick", "--only", "head", "--seeds", "0,1", "--out", str(out)],
                XFER_FLOWERS_DIR=str(flowers_dir))
    md = out.read_text()
    assert md.strip() in proc.stdout
    summary = [line for line in md.splitlines() if line.startswith("| efficientnet_lite0 head | 128 ")]
    assert len(summary) == 1 and "(n=2)" in summary[0]  # mean ± sd over the two seeds
    per_run = [line for line in md.splitlines() if line.startswith("| efficientnet_lite0 head | ")
               and line.split("|")[2].strip() in ("0", "1")]
    assert len(per_run) == 2
    assert "used for nothing but the test column" in md


def test_accuracy_bench_choose_mode_never_reports_the_test_split(tmp_path, flowers_dir):
    out = tmp_path / "choose.md"
    _run(["bench/accuracy.py", "--quick", "--only", "head,best", "--seeds", "0", "--choose", "--out", str(out)],
         XFER_FLOWERS_DIR=str(flowers_dir))
    md = out.read_text()
    for label in ("efficientnet_lite0 head", "efficientnet_lite0 finetune (best: frozen stages cached)"):
        rows = [line.split("|") for line in md.splitlines() if line.startswith(f"| {label} | ")]
        assert len(rows) == 2, (label, md)  # the summary line and the one run
        assert rows[0][5].strip() == "not evaluated" and rows[1][6].strip() == "not evaluated", rows
        assert "%" in rows[0][6]  # the validation accuracy that chooses is there
    assert "| efficientnet_lite0 finetune (best: frozen stages cached) | 128 | 1 | 6 |" in md  # best's frozen stages
    assert "not evaluated in this run: --choose" in md


def _table_rows(md: str) -> list[list[str]]:
    """The cells of a markdown table's rows, header and rule left out."""
    return [line.split("|") for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]


def test_head_recipes_bench_scores_recipes_on_splits_outside_the_test_split(tmp_path, flowers_dir):
    out = tmp_path / "recipes.md"
    proc = _run(["bench/head_recipes.py", "--quick", "--round", "2", "--features", str(tmp_path / "f.pt"),
                 "--out", str(out)], XFER_FLOWERS_DIR=str(flowers_dir))
    md = out.read_text()
    assert md.strip() in proc.stdout and "Smoke check" in md
    rows = _table_rows(md)
    assert rows[0][1].strip().startswith("quick today") and rows[0][-3].strip() == "+0.00% ± 0.00%"
    assert len(rows) > 5 and all("%" in r[-4] for r in rows)  # every recipe scored
    # The second run reads the cached features instead of computing them again.
    again = _run(["bench/head_recipes.py", "--quick", "--round", "2", "--features", str(tmp_path / "f.pt")],
                 XFER_FLOWERS_DIR=str(flowers_dir))
    assert "features:" in proc.stderr and "features:" not in again.stderr


def test_tail_recipes_bench_trains_the_last_stages_on_cached_maps(tmp_path, flowers_dir):
    out = tmp_path / "tail.md"
    proc = _run(["bench/tail_recipes.py", "--quick", "--round", "2", "--maps", str(tmp_path / "maps.pt"),
                 "--out", str(out)], XFER_FLOWERS_DIR=str(flowers_dir))
    md = out.read_text()
    assert md.strip() in proc.stdout and "Smoke check" in md
    rows = _table_rows(md)
    assert rows[0][1].strip().startswith("quick today") and rows[0][8].strip() == "+0.00% ± 0.00%"
    assert {r[2].strip() for r in rows} >= {"9 of 9", "7 of 9"} and all("%" in r[7] for r in rows)
    assert "maps after 6 stages" in proc.stderr
