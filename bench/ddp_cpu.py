"""Data-parallel speed-up on this machine's CPUs: ``xfer train`` in 1 process vs ``torchrun`` with N.

    python bench/ddp_cpu.py [--procs 2] [--per-class 20] [--image-size 96] [--epochs 2] [--batch 32]
                            [--strategy finetune] [--write bench/results/ddp-cpu.md]

Both arms train the same data with the same effective batch (``--batch`` in one process;
``--batch / procs`` in each of ``procs`` processes) and random weights. The lone process
uses torch's default threads (one per core); torchrun gives each of its processes one
thread (OMP_NUM_THREADS=1, its default), so both arms use the same cores. Reported: the
whole command's wall time (start-up, data scan, training, save) and ``training.seconds``
from the saved config.json (the fit alone). One run per arm: on a shared machine the
numbers carry the noise of whatever else runs; say so when quoting them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from common import ROOT, flowers_root, write_text


def subset(root: Path, per_class: int, size: int) -> Path:
    src = flowers_root()
    for cls in sorted(p.name for p in src.iterdir() if p.is_dir()):
        (root / cls).mkdir(parents=True)
        for p in sorted((src / cls).iterdir())[:per_class]:
            with Image.open(p) as im:
                im.convert("RGB").resize((size, size)).save(root / cls / p.name, quality=90)
    return root


def arm(cmd: list[str], out: Path) -> tuple[float, float]:
    env = {**os.environ, "XFER_OFFLINE": "1"}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return wall, json.loads((out / "config.json").read_text())["training"]["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32, help="effective batch (per step, all processes together)")
    ap.add_argument("--strategy", default="finetune")
    ap.add_argument("--write", type=Path, default=None, help="also write the table to this markdown file")
    a = ap.parse_args()
    if a.batch % a.procs:
        sys.exit("--batch must divide by --procs")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="xfer-ddp-bench-") as tmp:
        data = subset(Path(tmp) / "data", a.per_class, 2 * a.image_size)
        common = ["train", "--data", str(data), "--backbone", "resnet18", "--strategy", a.strategy, "--weights",
                  "none", "--image-size", str(a.image_size), "--epochs", str(a.epochs), "--no-augment"]
        one = Path(tmp) / "one"
        many = Path(tmp) / "many"
        w1, s1 = arm([sys.executable, "-m", "xfer", *common, "--batch-size", str(a.batch), "--out", str(one)], one)
        wn, sn = arm([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={a.procs}",
                      "-m", "xfer", *common, "--batch-size", str(a.batch // a.procs), "--out", str(many)], many)
    lines = [
        f"`{a.strategy}`, resnet18 (random weights), {a.image_size} px, {a.epochs} epochs, effective batch {a.batch}, "
        f"{a.per_class} flower photos per class; {os.cpu_count()} CPU cores, shared with other work while measured "
        f"(load average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after).",
        "",
        "| arm | wall (whole command) | fit (training.seconds) |",
        "|---|---|---|",
        f"| 1 process, {os.cpu_count()} threads | {w1:.1f} s | {s1:.1f} s |",
        f"| torchrun, {a.procs} processes x 1 thread | {wn:.1f} s | {sn:.1f} s |",
        f"| speed-up | {w1 / wn:.2f}x | {s1 / sn:.2f}x |",
    ]
    text = "\n".join(lines)
    print(text)
    if a.write:
        write_text(a.write, f"# Data-parallel on CPU (`python bench/ddp_cpu.py`)\n\n{text}")


if __name__ == "__main__":
    main()
