"""CPU time of training under xfer's process settings, each against the runtime's own default.

Each arm is a fresh process that fine-tunes efficientnet_lite0 for one epoch on ``--per-class``
flower photos per class (224 px, the default finetune recipe) and reports wall time, CPU time
and peak memory (itself and its data-loader worker) and validation accuracy. The arms:

* ``xfer``: xfer's defaults: OpenMP's idle threads sleep (``import xfer`` sets
  ``OMP_WAIT_POLICY=PASSIVE`` before torch loads OpenMP) and glibc's malloc keeps freed memory
  for reuse (``xfer.device.configure_runtime`` calls ``keep_freed_memory``).
* ``omp-spin``: torch imported before xfer, so OpenMP keeps libgomp's default (idle threads spin).
* ``malloc-system``: ``XFER_HOST_MALLOC=system``: glibc's default, which maps every block over
  32 MB afresh and unmaps it when freed.

Arms alternate, ``--rounds`` times, since this machine is shared; ratios are against the first arm.

    python bench/cpu_runtime.py                  # 2 rounds of 3 arms, about 6 minutes on 2 cores
    python bench/cpu_runtime.py --rounds 1 --per-class 12 --size 64    # smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import flowers_root

ARMS = {
    "xfer": "xfer's defaults (idle OpenMP threads sleep, malloc keeps freed memory)",
    "omp-spin": "OpenMP idle threads spin (torch imported before xfer)",
    "malloc-system": "glibc malloc's default (XFER_HOST_MALLOC=system)",
}

CHILD = r'''
import json, resource, sys, time
if sys.argv[1] == "omp-spin":
    import torch  # loads OpenMP before xfer can set OMP_WAIT_POLICY
import xfer
from xfer.data import DatasetReport, scan_folder, subsample
from xfer.engine import TrainConfig

def usage(f):
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return f(a) + f(b)

r = scan_folder(sys.argv[4])
r = DatasetReport(r.root, r.classes, subsample(r.items, int(sys.argv[2]), seed=0))
t0, c0 = time.perf_counter(), usage(lambda u: u.ru_utime + u.ru_stime)
device = xfer.select_device("cpu")
xfer.device.configure_runtime(device)
m = xfer.train(r, backbone="efficientnet_lite0", strategy="finetune", image_size=int(sys.argv[3]),
               val_fraction=0.1, config=TrainConfig(epochs=1, seed=0), device=device)
print(json.dumps({"wall": time.perf_counter() - t0, "cpu": usage(lambda u: u.ru_utime + u.ru_stime) - c0,
                  "peak_mb": max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF,
                                 resource.RUSAGE_CHILDREN)) / 1024, "acc": m.evaluation.accuracy}))
'''


def run_arm(arm: str, flowers: Path, per_class: int, size: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "XFER_HOST_MALLOC")}
    if arm == "malloc-system":
        env["XFER_HOST_MALLOC"] = "system"
    out = subprocess.run([sys.executable, "-c", CHILD, arm, str(per_class), str(size), str(flowers)], env=env,
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"arm {arm} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--per-class", type=int, default=110)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {', '.join(ARMS)}")
    args = p.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = set(arms) - set(ARMS)
    if unknown:
        p.error(f"unknown arm(s) {', '.join(sorted(unknown))}: choose from {', '.join(ARMS)}")
    flowers = flowers_root()
    res: dict[str, list[dict]] = {arm: [] for arm in arms}
    for i in range(args.rounds):
        for arm in arms:
            r = run_arm(arm, flowers, args.per_class, args.size)
            res[arm].append(r)
            print(f"  round {i + 1} {arm}: {r['wall']:.1f}s wall, {r['cpu']:.1f}s CPU, peak {r['peak_mb']:.0f} MB, "
                  f"val acc {r['acc']:.1%}", file=sys.stderr, flush=True)

    def mean(arm: str, key: str) -> float:
        return statistics.fmean(r[key] for r in res[arm])

    base = arms[0]
    print(f"`python bench/cpu_runtime.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(" `", "`"))
    print("\n| arm | wall (s) | CPU (s) | CPU ÷ first arm's | peak memory (MB) | val acc |\n|---|---|---|---|---|---|")
    for arm in arms:
        print(f"| {ARMS[arm]} | {mean(arm, 'wall'):.1f} | {mean(arm, 'cpu'):.1f} | "
              f"{mean(arm, 'cpu') / mean(base, 'cpu'):.2f} | {mean(arm, 'peak_mb'):.0f} | {mean(arm, 'acc'):.1%} |")
    print(f"\nMeans of {args.rounds} round(s), arms alternating; one epoch of finetune on {args.per_class} images "
          f"per class at {args.size} px; peak memory is the largest resident set of the process or of its loader "
          f"worker, whichever is larger.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
