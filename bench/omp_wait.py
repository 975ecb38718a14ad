"""CPU time of training with OpenMP's idle threads sleeping (xfer's default) vs spinning (libgomp's default).

Each arm is a fresh process that fine-tunes efficientnet_lite0 for one epoch on 110 flower
photos per class (224 px, the default finetune recipe) and reports wall time, CPU time (itself and
its data-loader worker) and validation accuracy. ``OMP_WAIT_POLICY`` is read once, when torch
loads OpenMP: the "spin" arm imports torch before xfer, so xfer's setting comes too late, exactly
as for a user who does the same. Arms alternate, ``--rounds`` times, since this machine is shared.

    python bench/omp_wait.py               # 2 rounds, about 4 minutes on 2 cores
    python bench/omp_wait.py --rounds 1 --per-class 20    # smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import json, resource, sys, time
if sys.argv[1] == "spin":
    import torch  # loads OpenMP before xfer can set OMP_WAIT_POLICY
sys.path[:0] = [sys.argv[3], sys.argv[3] + "/bench"]
import xfer
from common import flowers_root
from xfer.data import DatasetReport, scan_folder, subsample
from xfer.engine import TrainConfig

def cpu():
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

r = scan_folder(flowers_root())
r = DatasetReport(r.root, r.classes, subsample(r.items, int(sys.argv[2]), seed=0))
t0, c0 = time.perf_counter(), cpu()
m = xfer.train(r, backbone="efficientnet_lite0", strategy="finetune", image_size=224, val_fraction=0.1,
               config=TrainConfig(epochs=1, seed=0), device=xfer.select_device("cpu"))
print(json.dumps({"wall": time.perf_counter() - t0, "cpu": cpu() - c0, "acc": m.evaluation.accuracy}))
'''


def run_arm(arm: str, per_class: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", CHILD, arm, str(per_class), str(ROOT)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--per-class", type=int, default=110)
    args = p.parse_args(argv)
    res: dict[str, list[dict]] = {"spin": [], "passive": []}
    for i in range(args.rounds):
        for arm in res:
            res[arm].append(run_arm(arm, args.per_class))
            r = res[arm][-1]
            print(f"  round {i + 1} {arm}: {r['wall']:.1f}s wall, {r['cpu']:.1f}s CPU, val acc {r['acc']:.1%}",
                  file=sys.stderr, flush=True)
    print(f"| OpenMP idle threads | wall (s) | CPU (s) | CPU ÷ spin's |\n|---|---|---|---|")
    base = statistics.fmean(r["cpu"] for r in res["spin"])
    for arm, label in (("spin", "spin (libgomp default: torch imported first)"), ("passive", "sleep (xfer's default)")):
        wall = statistics.fmean(r["wall"] for r in res[arm])
        cpu = statistics.fmean(r["cpu"] for r in res[arm])
        print(f"| {label} | {wall:.1f} | {cpu:.1f} | {cpu / base:.2f} |")
    print(f"\n{args.rounds} round(s), arms alternating; one epoch of finetune on {args.per_class} images per class.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
