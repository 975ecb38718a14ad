"""Can `quick` train the last stages of the body, not just the head, within its budget? Scored on repeated
validation splits, never touching the test split.

A `head` run caches the frozen body's pooled features. Here the body is cut earlier: the output of its first
``cut`` stages is cached once per image (a feature map, not a vector), and the remaining stages, starting from
their ImageNet weights, train together with a new head on those maps. The cost over `head` is the tail's
forward and backward passes on 7x7 or 14x14 maps each epoch; the images still go through the body once.

The photos are those outside ``bench/accuracy.py``'s test split (same fraction and seed, as in
``bench/head_recipes.py``); every recipe is scored on the same stratified splits (copies kept together), so
the differences from `quick`'s head are paired.

    python bench/tail_recipes.py --out bench/results/tail-recipes.md   # maps ~3 min on 2 cores, recipes ~40
    python bench/tail_recipes.py --round 2 --out bench/results/tail-recipes-2.md   # maps cached: ~20 min
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import xfer  # before torch: xfer sets OpenMP's wait policy, read when torch loads

# isort: split
import torch
import torch.nn.functional as F
from torch import nn

from common import publish
from paired import Paired, index_splits, outside_test
from xfer.data.pipeline import image_batches
from xfer.engine import cosine_with_warmup
from xfer.nets.registry import get_backbone
from xfer.nets.strategies import backbone_network, make_head

BACKBONE = "efficientnet_lite0"
FIRST_CUT = 6  # maps cached after the stem and MBConv stages 1-5 (112 channels at 14x14 for 224 px)


@torch.no_grad()
def extract(items, size: int, stages: nn.Module, device, flip: bool) -> torch.Tensor:
    """The frozen prefix's maps (N, C, H, W) of each image's clean crop (mirrored with ``flip``)."""
    pre = get_backbone(BACKBONE).get_preprocessing().for_size(size)
    out = []
    for x, _ in image_batches(items, pre, [False], 64, device):
        out.append(stages(x.flip(-1) if flip else x))
    return torch.cat(out)


@dataclass(frozen=True)
class Recipe:
    name: str
    cut: int = 9  # stages frozen (their output cached); 9: the whole body, i.e. `head`
    epochs: int = 15
    lr: float = 1e-3  # the head's
    body_lr: float = 1e-4  # the trained stages'
    label_smoothing: float = 0.1
    weight_decay: float = 1e-4
    mirror: bool = False  # also train on the mirror images' maps (a second body pass per image)
    batch_size: int = 32


def tail_module(net: nn.Module, cut: int, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """(the stages from ``cut`` on, then pooling: a copy with ImageNet weights), a new head."""
    import copy

    stages = get_backbone(BACKBONE).stages(net)
    tail = copy.deepcopy(nn.Sequential(*stages[cut:], nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    return tail, make_head(1280, (), num_classes, 0.2)


def train_and_score(r: Recipe, net: nn.Module, maps: dict[int, torch.Tensor], labels: torch.Tensor,
                    train_idx: torch.Tensor, held_idx: torch.Tensor, seed: int) -> tuple[float, float]:
    """Held-out accuracy of the last epoch, and the seconds the training took."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    tail, head = tail_module(net, r.cut, int(labels.max()) + 1)
    frozen = r.cut >= 9
    tail.requires_grad_(not frozen)
    x_all = maps[r.cut]
    views = [x_all[0]] + ([x_all[1]] if r.mirror else [])
    decay = lambda m: [p for p in m.parameters() if p.requires_grad and p.ndim > 1]  # noqa: E731
    flat = lambda m: [p for p in m.parameters() if p.requires_grad and p.ndim <= 1]  # noqa: E731
    groups = [{"params": decay(head), "lr": r.lr, "weight_decay": r.weight_decay},
              {"params": flat(head), "lr": r.lr, "weight_decay": 0.0}]
    if not frozen:
        groups += [{"params": decay(tail), "lr": r.body_lr, "weight_decay": r.weight_decay},
                   {"params": flat(tail), "lr": r.body_lr, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups)
    n = len(train_idx)
    steps_per = n // r.batch_size
    sched = cosine_with_warmup(opt, r.epochs * steps_per, warmup=min(steps_per, max(r.epochs * steps_per // 20, 1)))
    y = labels[train_idx]
    t0 = time.perf_counter()
    for _ in range(r.epochs):
        tail.train(not frozen)
        head.train()
        order = torch.randperm(n, generator=g)
        pick = torch.randint(0, len(views), (n,), generator=g)
        for k in range(steps_per):
            idx = order[k * r.batch_size:(k + 1) * r.batch_size]
            x = torch.stack([views[int(v)][int(i)] for v, i in zip(pick[idx], train_idx[idx])])
            loss = F.cross_entropy(head(tail(x)), y[idx], label_smoothing=r.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - t0
    tail.eval()
    head.eval()
    with torch.no_grad():
        preds = torch.cat([head(tail(x_all[0][held_idx[i:i + 256]])).argmax(1) for i in range(0, len(held_idx), 256)])
    return (preds == labels[held_idx]).float().mean().item(), seconds


def recipes(round_: int = 1) -> list[Recipe]:
    """Round 1: where to cut, epochs, the body's learning rate. Round 2: around round 1's best (cut 7, 5 epochs,
    body 3e-4) with the finetune strategy's own learning rates (head 3e-3, body 0.1x), which a preset can use."""
    base = Recipe("quick today: head, 15 epochs")
    out = [base]
    add = lambda name, **kw: out.append(dataclasses.replace(base, name=name, **kw))  # noqa: E731
    if round_ == 2:
        tuned = dict(cut=7, lr=3e-3, body_lr=3e-4)
        add("cut 7, 5 ep, head lr 3e-3 (finetune's lrs)", epochs=5, **tuned)
        add("cut 7, 4 ep, finetune's lrs", epochs=4, **tuned)
        add("cut 7, 7 ep, finetune's lrs", epochs=7, **tuned)
        add("cut 7, 5 ep, finetune's lrs, smoothing 0.2", epochs=5, label_smoothing=0.2, **tuned)
        add("cut 8, 5 ep, finetune's lrs", epochs=5, cut=8, lr=3e-3, body_lr=3e-4)
        return out
    add("head conv trained (cut 8), 5 ep", cut=8, epochs=5, body_lr=3e-4)
    add("stage 7 + head conv (cut 7), 3 ep", cut=7, epochs=3, body_lr=3e-4)
    add("stage 7 + head conv (cut 7), 5 ep, body lr 1e-4", cut=7, epochs=5)
    add("stage 7 + head conv (cut 7), 5 ep", cut=7, epochs=5, body_lr=3e-4)
    add("stage 7 + head conv (cut 7), 5 ep, body lr 1e-3", cut=7, epochs=5, body_lr=1e-3)
    add("stage 7 + head conv (cut 7), 10 ep", cut=7, epochs=10, body_lr=3e-4)
    add("stage 7 + head conv (cut 7), 5 ep, + mirror maps", cut=7, epochs=5, body_lr=3e-4, mirror=True)
    add("stages 6-7 + head conv (cut 6), 5 ep", cut=6, epochs=5, body_lr=3e-4)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--maps", type=Path, default=Path("/tmp/xfer-tail-maps.pt"),
                   help="cache of the computed maps (reused when it exists)")
    p.add_argument("--splits", type=int, default=6, help="repeated validation splits per recipe (default 6)")
    p.add_argument("--quick", action="store_true", help="a smoke check: 64-px images, 2 splits, 1 epoch")
    p.add_argument("--round", type=int, default=1, choices=(1, 2), help="which list of recipes (see recipes())")
    p.add_argument("--only", default=None, help="comma-separated recipe numbers (0: today's head) to run")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown to this file")
    args = p.parse_args(argv)
    size = 64 if args.quick else 224
    if args.quick:
        args.splits = 2
    logging.basicConfig(level=logging.WARNING)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    device = xfer.select_device("cpu")
    xfer.device.configure_runtime(device)
    rest, items, num_images, n_test = outside_test()
    log(f"{num_images} images; {n_test} set aside as bench/accuracy.py's test split (not used); "
        f"recipes scored on {args.splits} splits of the other {len(items)}")
    net = backbone_network(BACKBONE, "imagenet").eval()
    stages = get_backbone(BACKBONE).stages(net)
    key = {"paths": [str(p) for p, _ in items], "size": size}
    cached = torch.load(args.maps, weights_only=True) if args.maps.exists() else None
    if cached is not None and all(cached.get(k) == v for k, v in key.items()):
        base_maps = cached["maps"]
    else:
        t = time.perf_counter()
        prefix = nn.Sequential(*stages[:FIRST_CUT])
        base_maps = torch.stack([extract(items, size, prefix, device, flip) for flip in (False, True)])
        log(f"maps after {FIRST_CUT} stages, clean + mirror: {time.perf_counter() - t:.0f} s, {tuple(base_maps.shape)}")
        torch.save({**key, "maps": base_maps}, args.maps)
    maps = {FIRST_CUT: base_maps}
    with torch.no_grad():
        for cut in range(FIRST_CUT + 1, 10):
            stage = stages[cut - 1]
            maps[cut] = torch.stack([torch.cat([stage(v[i:i + 256]) for i in range(0, len(v), 256)])
                                     for v in maps[cut - 1]])
    labels = torch.tensor([label for _, label in items])
    splits = index_splits(rest, args.splits)
    todo = recipes(args.round)
    if args.only:
        todo = [todo[int(i)] for i in args.only.split(",")]
    if args.quick:
        todo = [dataclasses.replace(r, epochs=1) for r in todo]
    rows, base_scores = [], None
    for r in todo:
        t = time.perf_counter()
        runs = [train_and_score(r, net, maps, labels, tr, held, seed=s) for s, (tr, held) in enumerate(splits)]
        scores = [a for a, _ in runs]
        base_scores = base_scores or scores
        stats, train_s = Paired.of(scores, base_scores), statistics.fmean(s for _, s in runs)
        rows.append((r, stats, train_s))
        log(f"  {r.name:50s} {stats.line()}; training {train_s:.0f} s per run  {time.perf_counter() - t:.0f} s")
    held_n = len(splits[0][1])
    lines = [
        "## Training the body's last stages on cached maps, scored on repeated validation splits",
        "",
        f"`python bench/tail_recipes.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(" `", "`"),
        "",
        ("**Smoke check (--quick): 64-px images, 1 epoch; the figures mean nothing.** " if args.quick else "") +
        f"{BACKBONE} (packaged ImageNet weights): the output of its first stages is cached once per photo "
        f"({size} px clean crop; its mirror image too for the recipes that say so), for the {len(items)} photos "
        f"outside bench/accuracy.py's test split ({n_test} photos, never used here). The later stages "
        f"train on those maps from their ImageNet weights, with a new head; each recipe trains on "
        f"{len(items) - held_n} and is scored on {held_n} held-out photos, on the same {args.splits} splits "
        f"(seeds 100..{99 + args.splits}). \"vs today\": mean paired difference from `quick`'s head ± its standard "
        "error. Accuracy is the last epoch's. Training seconds: the tail and head's epochs alone, per run, on "
        "this machine (the maps cost one body pass per photo, as `head`'s features do).",
        "",
        "| recipe | stages frozen (cached) | epochs | head lr | body lr | mirror maps | held-out acc (mean ± sd) "
        "| vs today | better / worse | training s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r, stats, train_s in rows:
        lines.append(f"| {r.name} | {r.cut} of 9 | {r.epochs} | {r.lr:g} | {r.body_lr if r.cut < 9 else 0:g} "
                     f"| {'yes' if r.mirror else 'no'} | {stats.cells()} | {train_s:.0f} |")
    return publish(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
