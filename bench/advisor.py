"""Is the strategy advisor's pick the strategy that measures best? Datasets of different size and domain.

Datasets (test sets are never trained on):

* ``flowers-N``: the flower photos (ImageNet-like natural photos), N images per class
  (``full`` = all) from the 80% outside ``bench/accuracy.py``'s test split (stratified 20%, seed 0,
  identical and near-duplicate copies on one side: ``xfer.data.folders.holdout_split``), tested on it.
* ``shapes-N``: procedural patterns rendered by ``bench/make_shapes.py`` (a domain unlike
  ImageNet's), N per class; tested on 100 other images per class (another seed).
* ``digits-N``: printed digits rendered by ``bench/make_digits.py`` (10 classes), N per class;
  tested on 50 other images per class. Held out: the advisor's thresholds were tuned on
  the flowers and shapes only, so this domain checks the rule on data it was not fitted to.

For each dataset the advisor (``xfer.recommend``: size and measured similarity) picks a
strategy, then all four strategies are trained with short budgets with efficientnet_lite0
and evaluated on the test set. On 20-100 images per class one run's accuracy moves by
several points with the draw and even with the thread count (float summation order), so
sub-sampled sets are drawn ``--repeats`` times (with matching training seeds) and averaged. Prints a markdown table: test accuracy per strategy, the
measured best, the advisor's pick, and whether the pick is the best or within 1 point.

    python bench/advisor.py                          # flowers and shapes at 20, 100 and 300/full per class
    python bench/advisor.py --quick                  # 20 per class only, tiny budgets (smoke check)
    python bench/advisor.py --sizes 20,full --out bench/results/advisor.md
    python bench/advisor.py --domains digits        # only the held-out domain
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import xfer  # before torch: xfer sets OpenMP's wait policy, read when torch loads

# isort: split
import torch

from common import flowers_root, publish, write_text
from make_digits import make_digits
from make_shapes import make_shapes
from xfer import advisor
from xfer.data import DatasetReport, scan_folder, split_dataset, subsample
from xfer.data.folders import holdout_split
from xfer.engine import TrainConfig
from xfer.nets.strategies import STRATEGIES

BACKBONE = "efficientnet_lite0"
SEED = 0
LARGE_SHAPES = 300  # per class, the "full" shapes set
TEST_FRACTION = 0.2  # of the flowers: bench/accuracy.py's test split


def budget(strategy: str, n_train: int, quick: bool) -> TrainConfig:
    """Short budgets. Frozen bodies: features once (2 views), many cheap head epochs. Trained bodies:
    at least 3 epochs and about 1500 image passes (so tiny sets get more epochs)."""
    if strategy in ("head", "truncate"):
        return TrainConfig(epochs=10 if quick else 30, batch_size=16, lr=1e-3, label_smoothing=0.1,
                           cache_views=1 if quick else 2, augment=not quick, seed=SEED)
    epochs = 1 if quick else max(3, math.ceil(1500 / max(n_train, 1)))
    # lr=None: the strategy's default (3e-3 for both; finetune's body at 3e-4).
    return TrainConfig(epochs=epochs, batch_size=16 if n_train < 400 else 32, lr=None, label_smoothing=0.1,
                       seed=SEED)


#: Rendered domains: (generator, test images per class). Their "full" size is LARGE_SHAPES per class.
RENDERED = {"shapes": (make_shapes, 100), "digits": (make_digits, 50)}
HELD_OUT = ("digits",)  # not used to tune the advisor's thresholds


def datasets(work: Path, sizes: list[str], domains: list[str]) -> list[tuple[str, DatasetReport, list, str]]:
    """(name, full training pool, test items, "full" or images per class) per dataset."""
    out = []
    if "flowers" in domains:
        # The same test split as bench/accuracy.py's; the pool keeps its copy groups for xfer's own splits.
        pool_report, test = holdout_split(scan_folder(flowers_root()), TEST_FRACTION, seed=SEED)
        for s in sizes:
            out.append((f"flowers-{s}", pool_report, test, s))
    # Only as many training images as the largest size asked for are rendered.
    n_train = max(LARGE_SHAPES if s == "full" else int(s) for s in sizes)
    for domain, (make, n_test) in RENDERED.items():
        if domain not in domains:
            continue
        train_dir, test_dir = work / f"{domain}-train-{n_train}", work / f"{domain}-test-{n_test}"
        if not train_dir.is_dir():
            make(train_dir, n_train, seed=0)
        if not test_dir.is_dir():
            make(test_dir, n_test, seed=1)
        train, test = scan_folder(train_dir), scan_folder(test_dir)
        for s in sizes:
            out.append((f"{domain}-{LARGE_SHAPES if s == 'full' else s}", train, test.items, s))
    return out


def draw(pool: DatasetReport, size: str, seed: int) -> DatasetReport:
    """The training set for one repeat: all of the pool, or ``size`` images per class drawn with ``seed``."""
    if size == "full":
        return pool
    return DatasetReport(pool.root, pool.classes, sorted(subsample(pool.items, int(size), seed=seed)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="20 per class, tiny budgets: checks that it all runs")
    p.add_argument("--sizes", default=None, help="images per class, comma-separated; 'full' = all (default 20,100,full)")
    p.add_argument("--repeats", type=int, default=3,
                   help="sub-sampled sets: draws (and training seeds) averaged; the full sets run once")
    p.add_argument("--domains", default="flowers,shapes,digits", help="comma-separated: flowers, shapes, digits")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "xfer-bench-shapes",
                   help="where the rendered images go (reused if present)")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown to this file")
    p.add_argument("--rescore", type=Path, default=None, metavar="TABLE",
                   help="train nothing: run only the advisor (on each dataset's first draw) and score its picks "
                        "against the accuracies in TABLE, a markdown file written by an earlier full run")
    p.add_argument("--samples", type=int, default=1,
                   help="with --rescore: also measure on this many other samples (seeds) of each dataset, to "
                        "show how much the pick depends on which images the advisor happened to see")
    args = p.parse_args(argv)
    if args.rescore:
        return rescore(args, argv)
    logging.basicConfig(level=logging.WARNING)
    sizes = (args.sizes or ("20" if args.quick else "20,100,full")).split(",")
    repeats = 1 if args.quick else args.repeats
    device = xfer.select_device("cpu")
    xfer.device.configure_runtime(device)
    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    rows, hits = [], 0
    for name, pool, test, size in datasets(args.work, sizes, args.domains.split(",")):
        test_pairs = [(p, pool.classes[c]) for p, c in test]
        runs = 1 if size == "full" else repeats
        accs: dict[str, list[float]] = {s: [] for s in STRATEGIES}
        secs: dict[str, float] = {s: 0.0 for s in STRATEGIES}
        for seed in range(runs):
            report = draw(pool, size, seed)
            if seed == 0:  # the advisor sees the first draw, as a user would see their one dataset
                stats = advisor.similarity_stats(report, BACKBONE)
                rec = advisor.recommend(report, similarity=stats)
            train_n = len(split_dataset(report, 0.2, seed=seed)[0])
            for strategy in STRATEGIES:
                t0 = time.perf_counter()
                config = replace(budget(strategy, train_n, args.quick), seed=seed)
                model = xfer.train(report, backbone=BACKBONE, strategy=strategy, image_size=args.image_size,
                                   val_fraction=0.2, config=config, device=device)
                accs[strategy].append(xfer.evaluate(model, test_pairs, device=device).accuracy)
                secs[strategy] += time.perf_counter() - t0
                print(f"  {name} #{seed} {strategy}: test acc {accs[strategy][-1]:.1%} "
                      f"({time.perf_counter() - t0:.0f}s, load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
        mean = {s: statistics.fmean(v) for s, v in accs.items()}
        best = max(mean, key=mean.get)
        ok = pick_ok(mean, rec.strategy)
        hits += ok
        rows.append((name, stats, rec, accs, secs, best, ok))
        if args.out:  # partial results survive an interrupted run
            write_text(args.out, markdown(args, argv, rows, hits, t_start, load_start, done=False))
    md = markdown(args, argv, rows, hits, t_start, load_start, done=True)
    print(md)
    if args.out:
        write_text(args.out, md)
    return 0


def measured_table(path: Path) -> dict[str, dict[str, str]]:
    """{dataset: {column: cell}} from the first table of a markdown file this script wrote."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in path.read_text().splitlines() if line.startswith("| ")]
    return {cells[0]: dict(zip(rows[0], cells)) for cells in rows[1:]}


def rescore(args, argv) -> int:
    """The advisor's current picks against accuracies measured earlier (nothing is trained)."""
    table = measured_table(args.rescore)
    strat = list(STRATEGIES)
    sizes = (args.sizes or "20,100,full").split(",")
    lines = [f"## Strategy advisor vs measurement (advisor re-run on accuracies from `{args.rescore.name}`)", "",
             f"`python bench/advisor.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(" `", "`"), "",
             f"The accuracy columns are copied from `{args.rescore}` (measured there, not re-measured); the advisor "
             f"was re-run on each dataset's first draw. Advisor: {rule_text()}", "",
             *table_header(("other samples: probe → pick",) if args.samples > 1 else ())]
    results, others = [], []
    for name, pool, _test, size in datasets(args.work, sizes, args.domains.split(",")):
        if name not in table:
            continue
        report = draw(pool, size, 0)
        stats = advisor.similarity_stats(report, BACKBONE)
        rec = advisor.recommend(report, similarity=stats)
        mean = {st: float(table[name][st].strip("*").split("%")[0]) / 100 for st in strat}
        best = max(mean, key=mean.get)
        ok = pick_ok(mean, rec.strategy)
        results.append((name, ok))
        extra = []
        for seed in range(1, args.samples):
            other = advisor.similarity_stats(report, BACKBONE, seed=seed)
            pick = advisor.recommend(report, similarity=other).strategy
            others.append(pick_ok(mean, pick))
            extra.append(f"{probe_cell(other)} → {pick}")
        lines.append(f"| {name} | {rec.images_per_class:.0f} | {probe_cell(stats)} | {stats.score:.2f} | "
                     + " | ".join(table[name][st] for st in strat) + f" | {best} | {rec.strategy} | "
                     f"{'yes' if ok else 'no'} |" + (f" {'; '.join(extra)} |" if extra else ""))
        print(f"  {name}: {probe_cell(stats)}, confidence {stats.score:.2f} -> {rec.strategy} "
              f"({'ok' if ok else 'not the best'})", file=sys.stderr, flush=True)
    held = [ok for name, ok in results if name.split("-")[0] in HELD_OUT]
    tuned = [ok for name, ok in results if name.split("-")[0] not in HELD_OUT]
    lines += ["", f"The advisor's pick is the measured best or within 1 point of it on **{sum(ok for _, ok in results)} "
              f"of {len(results)}** datasets (flowers and shapes: {sum(tuned)} of {len(tuned)}; digits: "
              f"{sum(held)} of {len(held)})."]
    if others:
        lines += ["", f"On the other samples (seeds 1–{args.samples - 1} of the advisor's sample of each dataset's first "
                      f"draw), its pick is the best or within 1 point in **{sum(others)} of {len(others)}** cases."]
    return publish(lines, args.out)


def table_header(extra: tuple[str, ...] = ()) -> list[str]:
    cols = ["dataset", "images/class", "probe: final / early features", "confidence (class median)",
            *STRATEGIES, "measured best", "advisor", "pick ok", *extra]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def pick_ok(mean: dict[str, float], pick: str) -> bool:
    """The pick is the measured best or within 1 point of it."""
    return mean[pick] >= max(mean.values()) - 0.01


def rule_text() -> str:
    return (f"small < {advisor.SMALL_PER_CLASS} images/class; similar when the linear probe on the final "
            f"features beats the early features' (4-fold cross-validated, {advisor.PROBE_PER_CLASS} images "
            f"per class), different when it loses, and on a tie when the confidence is ≥ "
            f"{advisor.SIMILAR_CONFIDENCE:.2f}.")


def probe_cell(stats) -> str:
    return f"{stats.probe['head']:.0%} / {stats.probe['truncate']:.0%}" if stats.probe else "–"


def markdown(args, argv, rows, hits: int, t_start: float, load_start: float, done: bool) -> str:
    strat = list(STRATEGIES)
    lines = [
        f"## Strategy advisor vs measurement ({'quick' if args.quick else 'full'} run"
        f"{'' if done else ', IN PROGRESS'})", "",
        f"`python bench/advisor.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(" `", "`"), "",
        f"{BACKBONE}, images {args.image_size} px, short budgets (see `budget()`); accuracy on held-out test sets "
        f"(flowers: bench/accuracy.py's test split, 20% stratified with copies kept together, 626 photos, never "
        f"tuned on; shapes: 500 and digits: 500 images of another seed). Sub-sampled sets: mean over "
        f"{1 if args.quick else args.repeats} draws and training seeds (min–max in brackets); full sets: one run. "
        f"Advisor: {rule_text()}", "",
        *table_header(),
    ]
    for name, stats, rec, accs, _secs, best, ok in rows:
        cells = []
        for s in strat:
            m = statistics.fmean(accs[s])
            cell = f"{m:.1%}" + (f" ({min(accs[s]):.0%}–{max(accs[s]):.0%})" if len(accs[s]) > 1 else "")
            cells.append(f"**{cell}**" if s == best else cell)
        lines.append(f"| {name} | {rec.images_per_class:.0f} | {probe_cell(stats)} | {stats.score:.2f} | "
                     + " | ".join(cells) + f" | {best} | {rec.strategy} | {'yes' if ok else 'no'} |")
    total = time.perf_counter() - t_start
    held = [r for r in rows if r[0].split("-")[0] in HELD_OUT]
    tuned = [r for r in rows if r not in held]
    split = (f" (the datasets its thresholds were tuned on: {sum(r[6] for r in tuned)} of {len(tuned)}; "
             f"held-out {', '.join(HELD_OUT)}: {sum(r[6] for r in held)} of {len(held)})") if held and tuned else ""
    lines += ["", f"The advisor's pick is the measured best or within 1 point of it on **{hits} of {len(rows)}** "
              f"datasets{split}.", "",
              "Per-class similarity (first draw): " + "; ".join(
                  f"{r[0]}: " + ", ".join(f"{c} {v:.2f}" for c, v in r[1].per_class.items()) for r in rows), "",
              "Time per dataset, all repeats (s): " + "; ".join(
                  f"{r[0]}: " + ", ".join(f"{s} {r[4][s]:.0f}" for s in strat) for r in rows),
              "", f"Total {total / 60:.0f} min wall, load average {load_start:.1f} at the start and "
              f"{os.getloadavg()[0]:.1f} at the end on {os.cpu_count()} CPUs, torch {torch.__version__}."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
