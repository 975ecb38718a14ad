"""CPU cost of one `finetune` training step: how many leading stages are frozen, whether their batch norms are
folded into the convolutions (as `xfer.fit` does), and how "same" padding is done.

Builds the backbone (efficientnet_lite0 by default, with its packaged ImageNet weights;
others with random weights, which cost the same) for `finetune` once per arm, 5 classes, then
times forward + backward + AdamW step on one fixed random batch (224 px, batch 32,
channels_last, as `xfer.fit` runs on CPU). The arms take turns step by step, in one process,
so that a shared machine's drift hits them alike; the first round is a warm-up. Prints each
arm's wall and CPU seconds per step and its ratio to the first arm.

    python bench/finetune_step.py                     # 8 rounds, about 3 minutes on 2 cores
    python bench/finetune_step.py --rounds 2 --size 64 --batch 4   # smoke check
    python bench/finetune_step.py --arms frozen=5+unfolded,frozen=5 --out bench/results/finetune-step.md
    python bench/finetune_step.py --backbone vgg16 --arms frozen=0,frozen=2 --size 128 --batch 8
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import sys
import time
from pathlib import Path

import xfer  # noqa: F401  (before torch: xfer sets OpenMP's wait policy)

# isort: split
import torch
from torch import nn

from common import publish
from xfer.engine import TrainConfig, make_optimizer
from xfer.nets.fold import folded_batchnorm
from xfer.nets.registry import pretrained_available
from xfer.nets.strategies import build_network, make_spec

ARMS = "frozen=0+package-pad,frozen=0,frozen=3+unfolded,frozen=3,frozen=5+unfolded,frozen=5"


def make_arm(backbone: str, arm: str) -> nn.Module:
    """``frozen=N`` (leading stages frozen, their batch norms folded as in ``xfer.fit``), optionally
    ``+unfolded`` (batch norms left as they are) and ``+package-pad`` (efficientnet_lite0 with the
    package's own convolutions, which pad with F.pad)."""
    opts = arm.split("+")
    frozen = int(opts[0].partition("=")[2])
    weights = "imagenet" if pretrained_available(backbone) else None
    net = build_network(make_spec(backbone, "finetune", 5, frozen_stages=frozen), weights=weights)
    if "package-pad" in opts:
        from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding

        from xfer.nets.lite import SamePadConv2d

        for m in net.modules():
            if isinstance(m, SamePadConv2d):
                m.__class__ = Conv2dDynamicSamePadding
    return net.train().to(memory_format=torch.channels_last)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--arms", default=ARMS, help=f"comma-separated (default {ARMS}); the first is the baseline")
    p.add_argument("--rounds", type=int, default=8, help="timed steps per arm, after one warm-up round")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--out", type=Path, default=None, help="also write the markdown to this file")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    nets = [make_arm(args.backbone, a) for a in arms]
    opts = [make_optimizer(n, "finetune", TrainConfig()) for n in nets]
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (args.batch,))
    folds = contextlib.ExitStack()
    folded = [folds.enter_context(folded_batchnorm(net, net.frozen_parts)) if "unfolded" not in a.split("+") else 0
              for a, net in zip(arms, nets)]
    wall = [0.0] * len(arms)
    cpu = [0.0] * len(arms)
    for r in range(args.rounds + 1):
        for i, (net, opt) in enumerate(zip(nets, opts)):
            t0, c0 = time.perf_counter(), cpu_seconds()
            loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if r:  # round 0 warms up (allocator, oneDNN primitives)
                wall[i] += time.perf_counter() - t0
                cpu[i] += cpu_seconds() - c0
        print(f"round {r}/{args.rounds}", file=sys.stderr, flush=True)
    n = max(args.rounds, 1)
    lines = [
        f"## `finetune` step cost, {args.backbone} ({args.size} px, batch {args.batch})",
        "",
        f"`python bench/finetune_step.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(" `", "`"),
        "",
        f"{args.rounds} timed steps per arm, arms interleaved step by step; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}).",
        "",
        "| arm | trainable parameters | batch norms folded | wall s/step | CPU s/step | wall vs first | CPU vs first |",
        "|---|---|---|---|---|---|---|",
    ]
    folds.close()
    for arm, net, k, w, c in zip(arms, nets, folded, wall, cpu):
        trainable = sum(q.numel() for q in net.parameters() if q.requires_grad)
        lines.append(f"| {arm} | {trainable / 1e6:.2f}M | {k} | {w / n:.3f} | {c / n:.3f} | "
                     f"{w / wall[0]:.2f} | {c / cpu[0]:.2f} |")
    return publish(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
