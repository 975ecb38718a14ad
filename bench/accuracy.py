"""Test accuracy of the four strategies on the real flower photos, on a split that nobody tunes on.

The protocol (so that the figures cannot fool themselves):

* a stratified **test split** (``--test-fraction``, 20%; fixed seed ``TEST_SEED``) is set aside first, with
  every identical or near-duplicate copy of a photo on the same side (``xfer.data.folders.holdout_split``);
  it is used for nothing but the final figure;
* each run trains on the rest, and picks its best epoch on a 15% validation split carved from the rest;
  recipes are chosen on that validation accuracy (and by cross-checking seeds), never on the test split;
* every recipe runs with several seeds (``--seeds``, default 0,1,2: training order, augmentation and the
  validation split change; the test split does not) and the table reports the test accuracy's mean and
  spread (sample standard deviation) beside the validation accuracy that chose the epoch.

    python bench/accuracy.py                      # the full run (hours on 2 cores)
    python bench/accuracy.py --quick              # smoke check: 40 images per class, small budgets, 1 seed
    python bench/accuracy.py --only head --seeds 0,1,2 --out bench/results/accuracy.md
    python bench/accuracy.py --only finetune --set finetune.epochs=4 --set finetune.frozen_stages=5
    python bench/accuracy.py --only head --backbone efficientnet_lite2 --set head.size=260
    python bench/accuracy.py --only finetune --choose --set finetune.size=224   # validation only: to choose

``--choose`` never evaluates the test photos (the test column says "not evaluated"): candidates are compared
on their validation accuracy over seeds, and only the chosen one is then run without it.

The seed tutorial's recipe (VGG-16 with classifier[6] replaced, SGD lr 0.001, 2 epochs,
inputs only scaled to [0, 1]) is run for comparison when VGG-16's ImageNet weights
are in the torch hub cache; otherwise the table says that it was not run, and why.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import xfer  # before torch: xfer sets OpenMP's wait policy, read when torch loads

# isort: split
import torch

from common import flowers_root, write_text
from xfer.data import DatasetReport, scan_folder, split_dataset, subsample
from xfer.data.folders import holdout_split
from xfer.data.transforms import Preprocessing
from xfer.engine import TrainConfig, fit
from xfer.evaluation import metrics_from_predictions
from xfer.nets.registry import get_backbone, pretrained_available
from xfer.nets.strategies import build_network, make_spec
from xfer.presets import PRESETS

BACKBONE = "efficientnet_lite0"
VAL_FRACTION = 0.15  # of what the test split leaves: picks the best epoch
TEST_FRACTION = 0.2
TEST_SEED = 0  # the test split is the same for every run and seed
SEED = 0

# (strategy, image size, TrainConfig) per run; tuned on this data (see the README).
# finetune also keeps its first FINETUNE_FROZEN stages frozen (the registry's default is 3).
FULL = {
    # The quick preset's recipe until the ninth session (its recipe for other backbones since). One cached
    # view: three were no better on repeated validation splits (bench/head_recipes.py) and cost three body
    # passes per image.
    "head": (224, TrainConfig(epochs=15, lr=1e-3, label_smoothing=0.1, cache_views=1, seed=SEED)),
    "truncate": (224, TrainConfig(epochs=20, lr=1e-3, label_smoothing=0.1, cache_views=3, seed=SEED)),
    # lr is the new head's; the body trains at lr * body_lr_mult (0.1) = 3e-4. With the stem and stages
    # 1-4 frozen (and their batch norms folded) a step costs 0.7 of one with stages 1-2 frozen (the default),
    # which pays for 256-px images within the 15 CPU minutes: 95.7% and 96.4% vs 94.5-95.5% at 224 px.
    # All recipes measured: bench/results/finetune-sweep.md. The best preset's recipe until the eleventh session.
    "finetune": (256, TrainConfig(epochs=4, lr=3e-3, label_smoothing=0.1, seed=SEED)),
    "scratch": (160, TrainConfig(epochs=4, lr=3e-3, label_smoothing=0.1, seed=SEED)),
    # The presets' own recipes, read from xfer/presets.py (on a CPU, for their own backbone): quick's
    # (ninth session, chosen with bench/tail_recipes.py) and best's (eleventh, chosen with --choose:
    # bench/results/best-choice.md), both finetunes on cached frozen stages.
    **{name: (PRESETS[name].image_size, PRESETS[name].train_config(seed=SEED)) for name in ("quick", "best")},
}
FINETUNE_FROZEN = 5
#: Runs whose name is not their strategy, and the frozen stages of each run that trains a body.
STRATEGY = {name: PRESETS[name].strategy for name in ("quick", "best")}
FROZEN = {"finetune": FINETUNE_FROZEN, **{name: PRESETS[name].frozen_stages for name in STRATEGY}}
QUICK = {
    "head": (128, TrainConfig(epochs=30, cache_views=1, augment=False, seed=SEED)),
    "truncate": (128, TrainConfig(epochs=30, cache_views=1, augment=False, seed=SEED)),
    "finetune": (128, TrainConfig(epochs=1, seed=SEED)),
    "scratch": (128, TrainConfig(epochs=1, seed=SEED)),
    "quick": (128, TrainConfig(epochs=1, cache_frozen=True, seed=SEED)),
    "best": (128, TrainConfig(epochs=1, cache_frozen=True, seed=SEED)),
}


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the data loader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Row:
    name: str
    strategy: str
    image_size: int
    epochs: int
    frozen_stages: int = 0
    seed: int = 0
    test_accuracy: float | None = None
    accuracy: float | None = None
    last_accuracy: float | None = None
    best_epoch: int | None = None
    recall: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    cpu: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    note: str = ""


def measure(name: str, strategy: str, image_size: int, config: TrainConfig, run) -> Row:
    """Time ``run()``, which returns (validation evaluation, history, best epoch, frozen stages, test accuracy)."""
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), cpu_seconds()
    evaluation, history, best_epoch, frozen, test_acc = run()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    row = Row(name, strategy, image_size, config.epochs, frozen, config.seed, test_acc, evaluation.accuracy,
              history[-1]["val_accuracy"], best_epoch, {c: m["recall"] for c, m in evaluation.per_class.items()},
              wall, cpu, (load0, os.getloadavg()[0]))
    test = "not evaluated" if test_acc is None else f"{test_acc:.1%}"
    print(f"  {name} seed {config.seed}: test acc {test}, val acc {row.accuracy:.1%} (last epoch "
          f"{row.last_accuracy:.1%}), {wall:.0f}s wall, {cpu:.0f}s CPU, load {row.load[0]:.1f}->{row.load[1]:.1f}",
          file=sys.stderr, flush=True)
    return row


def run_lite(report: DatasetReport, test_items, strategy: str, image_size: int, config: TrainConfig, device,
             frozen_stages: int | None = None, backbone: str = BACKBONE, name: str | None = None) -> Row:
    """One run trained on ``report``; ``test_items`` None: the test photos are not evaluated (``--choose``)."""
    def run():
        model = xfer.train(report, backbone=backbone, strategy=strategy, weights="imagenet",
                           image_size=image_size, val_fraction=VAL_FRACTION, config=config, device=device,
                           frozen_stages=frozen_stages)
        test = None if test_items is None else xfer.evaluate(model, test_items, device=device).accuracy
        return model.evaluation, model.history, model.training["best_epoch"], model.spec.frozen_stages, test

    label = f"{backbone} {strategy}" + (f" ({name}: frozen stages cached)" if config.cache_frozen else "")
    return measure(label, strategy, image_size, config, run)


def run_tutorial(train_items, val_items, classes, device, quick: bool) -> Row:
    """The seed tutorial: VGG-16, classifier[6] replaced, SGD lr 0.001, 2 epochs, no normalisation."""
    config = TrainConfig(epochs=2, optimizer="sgd", lr=1e-3, weight_decay=0.0, augment=False, cache_views=1,
                         seed=SEED)
    size = 128 if quick else 224
    if not pretrained_available("vgg16"):
        url, path = get_backbone("vgg16").weights_location()
        return Row("tutorial: vgg16 (classifier[6] replaced)", "head", size, 2,
                   note=f"not run: VGG-16's ImageNet weights are not at {path} and this machine has no internet "
                        f"(download {url} there to include it)")
    # No normalisation: inputs only scaled to [0, 1], as in the tutorial.
    pre = Preprocessing(size, round(size * 256 / 224), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear")

    def run():
        net = build_network(make_spec("vgg16", "head", len(classes), dropout=0.0), weights="imagenet")
        result = fit(net, "head", train_items, val_items, pre, config, device)
        ev = metrics_from_predictions(result.val_output.probs, result.val_output.targets, classes)
        return ev, [vars(h) for h in result.history], result.best_epoch, 0, None

    return measure("tutorial: vgg16 (classifier[6] replaced)", "head", size, config, run)


def _spread(values: list[float]) -> str:
    if not values:
        return ""
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"**{mean:.1%}** ± {sd:.1%} (n={len(values)})"


def summary_table(rows: list[Row]) -> str:
    """One line per recipe: test accuracy over seeds (mean ± sample sd), validation accuracy, time per run."""
    head = ["recipe", "size", "epochs", "frozen stages", "test acc (mean ± sd over seeds)", "val acc (mean)",
            "wall per run", "CPU per run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    recipes: dict[str, list[Row]] = {}
    for r in rows:
        recipes.setdefault(r.name, []).append(r)
    for name, group in recipes.items():
        ran = [r for r in group if r.accuracy is not None]
        if not ran:
            lines.append(f"| {name} | {group[0].image_size} | {group[0].epochs} | | {group[0].note} | | | |")
            continue
        tests = [r.test_accuracy for r in ran if r.test_accuracy is not None]
        lines.append("| " + " | ".join([
            name, str(ran[0].image_size), str(ran[0].epochs), str(ran[0].frozen_stages),
            _spread(tests) or "not evaluated", f"{statistics.fmean(r.accuracy for r in ran):.1%}",
            f"{statistics.fmean(r.wall for r in ran) / 60:.1f} min",
            f"{statistics.fmean(r.cpu for r in ran) / 60:.1f} min"]) + " |")
    return "\n".join(lines)


def table(rows: list[Row], classes: list[str]) -> str:
    head = ["run", "seed", "size", "epochs", "frozen stages", "test acc", "val acc (best epoch)",
            "val acc (last epoch)", *[f"val recall {c}" for c in classes], "wall", "CPU", "load 1-min before→after"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.accuracy is None:
            lines.append(f"| {r.name} | | {r.image_size} | {r.epochs} | | {r.note} |" + " |" * (len(head) - 6))
            continue
        lines.append("| " + " | ".join([
            r.name, str(r.seed), str(r.image_size), str(r.epochs), str(r.frozen_stages),
            "not evaluated" if r.test_accuracy is None else f"**{r.test_accuracy:.1%}**",
            f"{r.accuracy:.1%} (ep {r.best_epoch})", f"{r.last_accuracy:.1%}",
            *[f"{r.recall.get(c, 0):.0%}" for c in classes],
            f"{r.wall / 60:.1f} min", f"{r.cpu / 60:.1f} min", f"{r.load[0]:.1f}→{r.load[1]:.1f}"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="40 images per class, tiny budgets, one seed (a smoke check)")
    p.add_argument("--only", default="head,quick,truncate,finetune,best,scratch,tutorial",
                   help="comma-separated runs (head,quick,truncate,finetune,best,scratch,tutorial; quick and best: "
                        "those presets' cached finetunes; finetune: the uncached one, best's on a GPU)")
    p.add_argument("--seeds", default=None, help="comma-separated training seeds (default 0,1,2; --quick: 0)")
    p.add_argument("--backbone", default=BACKBONE, help=f"backbone of every run (default {BACKBONE})")
    p.add_argument("--test-fraction", type=float, default=TEST_FRACTION,
                   help=f"share of each class set aside as the test split (default {TEST_FRACTION})")
    p.add_argument("--set", action="append", default=[], metavar="STRATEGY.FIELD=VALUE",
                   help="override a run's setting, e.g. finetune.size=192, finetune.lr=3e-3 or "
                        "finetune.frozen_stages=0 (repeatable)")
    p.add_argument("--choose", action="store_true",
                   help="validation only: the test photos are set aside but never evaluated (for choosing recipes)")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = xfer.select_device("cpu")
    xfer.device.configure_runtime(device)
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    report = scan_folder(flowers_root())
    if args.quick:
        report = DatasetReport(report.root, report.classes, subsample(report.items, 40, seed=SEED))
    rest, test_items = holdout_split(report, args.test_fraction, seed=TEST_SEED)
    train_items, val_items = split_dataset(rest, VAL_FRACTION, seed=SEED)
    print(f"{report.num_images} images, {len(report.classes)} classes; test split {len(test_items)} "
          f"(stratified {args.test_fraction:.0%}, seed {TEST_SEED}, copies kept together); of the rest "
          f"{len(train_items)} train / {len(val_items)} validation per seed", file=sys.stderr)
    plan = plan_runs(args)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    rows: list[Row] = []

    def render(done: bool) -> str:
        return markdown(args, argv, report, test_items, train_items, val_items, seeds, rows, done)

    for name in [s for s in plan if s in only]:
        size, config, frozen = plan[name]
        for seed in seeds:
            rows.append(run_lite(rest, None if args.choose else test_items, STRATEGY.get(name, name), size,
                                 replace(config, seed=seed), device, frozen, args.backbone, name))
            if args.out:  # partial results survive an interrupted run
                write_text(args.out, render(False))
    if "tutorial" in only:
        rows.append(run_tutorial(train_items, val_items, report.classes, device, args.quick))
    md = render(True)
    print(md)
    if args.out:
        write_text(args.out, md)
    return 0


def plan_runs(args) -> dict[str, tuple[int, TrainConfig, int | None]]:
    """(image size, TrainConfig, frozen stages) per strategy, with ``--set`` overrides applied."""
    plan = {s: (size, config, FROZEN.get(s) if not args.quick or s in STRATEGY else None)
            for s, (size, config) in (QUICK if args.quick else FULL).items()}
    for item in args.set:
        key, _, value = item.partition("=")
        strategy, _, fld = key.partition(".")
        size, config, frozen = plan[strategy]
        if fld == "size":
            size = int(value)
        elif fld == "frozen_stages":
            frozen = int(value)
        else:
            current = getattr(config, fld)
            kind = type(current) if current is not None else int if value.isdigit() else float
            config = replace(config, **{fld: kind(value) if kind is not bool else value.lower() in ("1", "true")})
        plan[strategy] = (size, config, frozen)
    return plan


def markdown(args, argv, report, test_items, train_items, val_items, seeds, rows: list[Row], done: bool) -> str:
    return "\n".join([
        f"## Test accuracy on the flower photos ({'quick' if args.quick else 'full'} run{'' if done else ', IN PROGRESS'})",
        "",
        f"`python bench/accuracy.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(" `", "`"),
        "",
        f"{report.num_images} images; a test split of {len(test_items)} (stratified {args.test_fraction:.0%}, seed "
        f"{TEST_SEED}, identical and near-duplicate copies kept on one side) used for nothing but the test column"
        f"{' (not evaluated in this run: --choose)' if args.choose else ''}; "
        f"each run trains on {len(train_items)} and picks its epoch on {len(val_items)} validation images carved "
        f"from the rest (seeds {', '.join(map(str, seeds))}); backbone {args.backbone} with its packaged ImageNet "
        f"weights (except scratch); torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}).",
        "",
        summary_table(rows),
        "",
        "Per run:",
        "",
        table(rows, report.classes),
        "",
        "Validation accuracy is that of the epoch xfer keeps (the best on that validation split), so it is "
        "optimistic; the test accuracy is the honest figure. Load average > CPU count means the cores were "
        "shared with other work during the run, which inflates wall time.",
    ])


if __name__ == "__main__":
    raise SystemExit(main())
