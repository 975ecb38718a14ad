"""Choose the `quick` preset's head recipe by repeated validation splits, never touching the test split.

A `head` run spends nearly all its time computing the frozen body's features; the head itself trains on
them in about a second. So this script computes the features once, for the photos that
``bench/accuracy.py`` does *not* set aside as its test split (same fraction, same seed), and then trains
many head recipes on repeated stratified splits of them (copies kept together, as xfer splits):

* views: the clean crop plus N-1 augmented ones (random resized crop + flip), as ``--cache-views N``;
* evaluation views: the clean crop, its mirror image (test-time flip), a larger test size;
* epochs, label smoothing, weight decay, dropout, learning rate, mixup of features.

Every recipe is scored on the same splits, so differences between recipes are paired. The test split's
photos are scanned (to draw the same split) but never go through the network; the recipe chosen goes to
``bench/accuracy.py`` for the test figure.

    python bench/head_recipes.py --out bench/results/head-recipes.md    # features ~20 min on 2 cores, recipes ~10
    python bench/head_recipes.py --round 2 --out bench/results/head-recipes-2.md  # combinations (features cached)
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
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
from xfer.nets.strategies import build_network, make_head, make_spec

BACKBONE = "efficientnet_lite0"
TRAIN_SIZE = 224
EVAL_SIZES = (224, 256, 288)


@torch.no_grad()
def extract(items, size: int, views: list[bool], flip: bool, body: nn.Module, device) -> torch.Tensor:
    """Features (V, N, D) of ``items``: one row per view (and, with ``flip``, its mirror after it)."""
    pre = get_backbone(BACKBONE).get_preprocessing().for_size(max(16, size))
    loader = image_batches(items, pre, views, max(1, 64 // len(views)), device)
    out = []
    for x, _ in loader:
        if x.ndim == 4:
            x = x.unsqueeze(1)
        b, v = x.shape[:2]
        x = x.flatten(0, 1)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        f = body(x).flatten(1)
        f = f.view(2, b, v, -1).permute(1, 2, 0, 3).reshape(b, v * 2, -1) if flip else f.view(b, v, -1)
        out.append(f)
    return torch.cat(out).transpose(0, 1).contiguous()


def features(items, aug_views: int, device, log, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """The cached views by name: clean{S} and flip{S} for each of EVAL_SIZES, and aug (aug_views, N, D).
    ``scale`` < 1 computes every size smaller (a smoke check); the names keep the nominal sizes."""
    net = build_network(make_spec(BACKBONE, "head", 5), weights="imagenet")
    body = net.body.eval()
    feats = {}
    for size in EVAL_SIZES:
        t = time.perf_counter()
        clean = extract(items, round(size * scale), [False], True, body, device)
        feats[f"clean{size}"], feats[f"flip{size}"] = clean[0], clean[1]
        log(f"  clean + flipped at {size} px: {time.perf_counter() - t:.0f} s")
    t = time.perf_counter()
    feats["aug"] = extract(items, round(TRAIN_SIZE * scale), [True] * aug_views, False, body, device)
    log(f"  {aug_views} augmented views at {TRAIN_SIZE} px: {time.perf_counter() - t:.0f} s")
    return feats


@dataclass(frozen=True)
class Recipe:
    name: str
    views: int = 3  # clean + (views - 1) augmented, as cache_views
    epochs: int = 15
    lr: float = 1e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    dropout: float = 0.2
    mixup: float = 0.0  # Beta(a, a) mixing of features and targets; 0: none
    eval_size: int = 224
    eval_flip: bool = False  # average the probabilities of the crop and its mirror
    batch_size: int = 32
    # The cached views the head trains on, by name (e.g. ("clean256", "flip256")); None: clean224 + views-1 augmented.
    train_views: tuple[str, ...] | None = None

    def cost(self) -> float:
        """Body passes per training image, in 224-px passes (what the features cost a run)."""
        if self.train_views is None:
            return float(self.views)
        return sum((int(v[-3:]) / TRAIN_SIZE) ** 2 if v[-3:].isdigit() else 1.0 for v in self.train_views)


def train_head(r: Recipe, f: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    """xfer's head loop on cached features: AdamW, cosine with warm-up, one view per image drawn per epoch."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = make_head(f.shape[-1], (), int(y.max()) + 1, r.dropout)
    head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    n = len(y)
    steps_per = n // r.batch_size
    sched = cosine_with_warmup(opt, r.epochs * steps_per, warmup=min(steps_per, max(r.epochs * steps_per // 20, 1)))
    beta = torch.distributions.Beta(r.mixup, r.mixup) if r.mixup > 0 else None
    for _ in range(r.epochs):
        order = torch.randperm(n, generator=g)
        pick = torch.randint(0, f.shape[0], (n,), generator=g)
        for k in range(steps_per):
            idx = order[k * r.batch_size:(k + 1) * r.batch_size]
            x, t = f[pick[idx], idx], y[idx]
            if beta is None:
                loss = F.cross_entropy(head(x), t, label_smoothing=r.label_smoothing)
            else:
                lam = float(beta.sample())
                perm = torch.randperm(len(idx), generator=g)
                out = head(lam * x + (1 - lam) * x[perm])
                loss = (lam * F.cross_entropy(out, t, label_smoothing=r.label_smoothing)
                        + (1 - lam) * F.cross_entropy(out, t[perm], label_smoothing=r.label_smoothing))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


@torch.no_grad()
def score(r: Recipe, feats: dict[str, torch.Tensor], labels: torch.Tensor, train_idx, held_idx, seed: int) -> float:
    if r.train_views is None:
        train_views = torch.cat([feats["clean224"][None], feats["aug"][: r.views - 1]])
    else:
        train_views = torch.stack([feats[v] if v in feats else feats["aug"][int(v[3:])] for v in r.train_views])
    train_views = train_views[:, train_idx]
    with torch.enable_grad():
        head = train_head(r, train_views, labels[train_idx], seed)
    probs = head(feats[f"clean{r.eval_size}"][held_idx]).softmax(1)
    if r.eval_flip:
        probs = (probs + head(feats[f"flip{r.eval_size}"][held_idx]).softmax(1)) / 2
    return (probs.argmax(1) == labels[held_idx]).float().mean().item()


def recipes(round_: int = 1) -> list[Recipe]:
    """Round 1: one change at a time from today's recipe. Round 2: combinations of round 1's gains, and
    cheaper training views (clean crops and their mirrors at larger sizes instead of random crops)."""
    base = Recipe("quick today: 3 views, 15 epochs")
    out = [base]
    add = lambda name, **kw: out.append(dataclasses.replace(base, name=name, **kw))  # noqa: E731
    if round_ == 2:
        tuned = dict(eval_flip=True, label_smoothing=0.2, epochs=30)
        add("3 views + flip, smoothing 0.2, 30 ep", **tuned)
        add("3 views + flip at 256 px, smoothing 0.2, 30 ep", eval_size=256, **tuned)
        add("2 views + flip, smoothing 0.2, 30 ep", views=2, **tuned)
        add("1 view + flip, smoothing 0.2, 30 ep", views=1, **tuned)
        for size in (224, 256, 288):
            add(f"{size} px: clean + mirror views, flip at test", eval_size=size, eval_flip=True,
                train_views=(f"clean{size}", f"flip{size}"))
            add(f"{size} px: clean + mirror views, flip, smoothing 0.2, 30 ep", eval_size=size,
                train_views=(f"clean{size}", f"flip{size}"), **tuned)
        add("224 px: clean + mirror + 2 augmented, flip, smoothing 0.2, 30 ep",
            train_views=("clean224", "flip224", "aug0", "aug1"), **tuned)
        add("256 px clean + mirror, 224 px 2 augmented, flip at 256, smoothing 0.2, 30 ep", eval_size=256,
            train_views=("clean256", "flip256", "aug0", "aug1"), **tuned)
        return out
    for v in (1, 2, 5, 8):
        add(f"{v} views", views=v)
    add("flip at test", eval_flip=True)
    add("test at 256 px", eval_size=256)
    add("test at 288 px", eval_size=288)
    add("test at 256 px + flip", eval_size=256, eval_flip=True)
    for e in (30, 60):
        add(f"{e} epochs", epochs=e)
    add("lr 3e-3", lr=3e-3)
    add("lr 3e-4, 30 epochs", lr=3e-4, epochs=30)
    add("weight decay 0.05", weight_decay=0.05)
    add("weight decay 0.5", weight_decay=0.5)
    add("no label smoothing", label_smoothing=0.0)
    add("label smoothing 0.2", label_smoothing=0.2)
    add("dropout 0", dropout=0.0)
    add("dropout 0.5", dropout=0.5)
    add("mixup 0.2", mixup=0.2)
    add("mixup 0.4, 30 epochs", mixup=0.4, epochs=30)
    add("8 views, 30 epochs", views=8, epochs=30)
    add("5 views + flip", views=5, eval_flip=True)
    add("8 views, 30 epochs + flip", views=8, epochs=30, eval_flip=True)
    add("8 views, 30 ep, 256 px + flip", views=8, epochs=30, eval_size=256, eval_flip=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", type=Path, default=Path("/tmp/xfer-head-features.pt"),
                   help="cache of the computed features (reused when it exists)")
    p.add_argument("--aug-views", type=int, default=7, help="augmented views per image to compute (default 7)")
    p.add_argument("--splits", type=int, default=6, help="repeated validation splits per recipe (default 6)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke check: images at a quarter of the nominal sizes, 2 augmented views, 2 splits")
    p.add_argument("--round", type=int, default=1, choices=(1, 2), help="which list of recipes (see recipes())")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown to this file")
    args = p.parse_args(argv)
    scale = 0.25 if args.quick else 1.0
    if args.quick:
        args.aug_views, args.splits = 2, 2
    logging.basicConfig(level=logging.WARNING)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    device = xfer.select_device("cpu")
    xfer.device.configure_runtime(device)
    rest, items, num_images, n_test = outside_test()
    log(f"{num_images} images; {n_test} set aside as bench/accuracy.py's test split (not used); "
        f"recipes scored on {args.splits} splits of the other {len(items)}")
    key = {"paths": [str(p) for p, _ in items], "scale": scale, "aug_views": args.aug_views}
    cached = torch.load(args.features, weights_only=True) if args.features.exists() else None
    if cached is not None and all(cached.get(k) == v for k, v in key.items()):
        feats = cached["feats"]
    else:
        if cached is not None:
            log(f"  {args.features} holds features of other images or settings: computing them again")
        t = time.perf_counter()
        feats = features(items, args.aug_views, device, log, scale)
        log(f"features: {time.perf_counter() - t:.0f} s")
        torch.save({**key, "feats": feats}, args.features)
    labels = torch.tensor([label for _, label in items])
    splits = index_splits(rest, args.splits)
    rows = []
    base_scores = None
    for r in recipes(args.round):
        if r.views - 1 > feats["aug"].shape[0]:
            continue
        t = time.perf_counter()
        scores = [score(r, feats, labels, tr, held, seed=s) for s, (tr, held) in enumerate(splits)]
        base_scores = base_scores or scores
        stats = Paired.of(scores, base_scores)
        rows.append((r, stats))
        log(f"  {r.name:34s} {stats.line()}  {time.perf_counter() - t:.0f} s")
    held_n = len(splits[0][1])
    lines = [
        "## Head recipes for the `quick` preset, scored on repeated validation splits",
        "",
        f"`python bench/head_recipes.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(" `", "`"),
        "",
        ("**Smoke check (--quick): images at a quarter of the nominal sizes; the figures mean nothing.** "
         if args.quick else "") +
        f"{BACKBONE} features (packaged ImageNet weights) of the {len(items)} flower photos outside "
        f"bench/accuracy.py's test split ({n_test} photos, never used here); each recipe trains a head "
        f"on {len(items) - held_n} and is scored on {held_n} held-out photos, on the same {args.splits} stratified "
        f"splits (copies kept together; seeds 100..{99 + args.splits}). \"vs today\": the mean paired difference "
        "from the current quick recipe ± its standard error, and on how many splits it was better / worse. "
        "Accuracy is the last epoch's (no epoch picked on the held-out photos).",
        "",
        "| recipe | training views | body passes per image (224-px equivalents) | epochs | lr | wd | smoothing "
        "| dropout | mixup | test-time | held-out acc (mean ± sd) | vs today | better / worse |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r, stats in rows:
        tt = f"{r.eval_size} px" + (" + flip" if r.eval_flip else "")
        views = ", ".join(r.train_views) if r.train_views else f"clean224 + {r.views - 1} augmented"
        lines.append(f"| {r.name} | {views} | {r.cost():.2g} | {r.epochs} | {r.lr:g} | {r.weight_decay:g} | {r.label_smoothing:g} "
                     f"| {r.dropout:g} | {r.mixup:g} | {tt} | {stats.cells()} |")
    return publish(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
