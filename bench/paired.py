"""Paired comparisons of recipes outside bench/accuracy.py's test split (bench/head_recipes.py, tail_recipes.py).

Every recipe is scored on the same stratified validation splits of the photos outside the test split
(identical and near-duplicate copies kept together), so each recipe's difference from the first is paired.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch

from common import flowers_root
from xfer.data import DatasetReport, scan_folder, split_dataset
from xfer.data.folders import holdout_split

TEST_FRACTION, TEST_SEED = 0.2, 0  # bench/accuracy.py's test split: left out of everything but the scan
HOLD = 0.15  # each repeated split holds out this share (bench/accuracy.py's validation fraction)
SPLIT_SEED = 100  # split s uses seed SPLIT_SEED + s


def outside_test() -> tuple[DatasetReport, list, int, int]:
    """(the flowers outside the test split as a report, their items, how many images, the test split's size)."""
    report = scan_folder(flowers_root())
    rest, test_items = holdout_split(report, TEST_FRACTION, seed=TEST_SEED)
    return rest, rest.items, report.num_images, len(test_items)


def index_splits(rest: DatasetReport, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` (train indices, held-out indices) into ``rest.items``."""
    index = {p: i for i, (p, _) in enumerate(rest.items)}
    splits = []
    for s in range(n):
        tr, held = split_dataset(rest, HOLD, seed=SPLIT_SEED + s)
        splits.append((torch.tensor([index[p] for p, _ in tr]), torch.tensor([index[p] for p, _ in held])))
    return splits


@dataclass(frozen=True)
class Paired:
    """A recipe's scores over the splits, and their paired difference from the baseline's."""

    mean: float
    sd: float
    diff: float  # mean paired difference
    diff_se: float  # its standard error
    better: int
    worse: int

    @classmethod
    def of(cls, scores: list[float], base: list[float]) -> Paired:
        d = [a - b for a, b in zip(scores, base, strict=True)]
        return cls(statistics.fmean(scores), statistics.stdev(scores), statistics.fmean(d),
                   statistics.stdev(d) / math.sqrt(len(d)), sum(x > 0 for x in d), sum(x < 0 for x in d))

    def line(self) -> str:
        return (f"{self.mean:.2%} ± {self.sd:.2%}  vs today {self.diff:+.2%} ± {self.diff_se:.2%} "
                f"(better on {self.better}, worse on {self.worse})")

    def cells(self) -> str:
        """Markdown cells: held-out acc | vs today | better / worse."""
        return f"{self.mean:.2%} ± {self.sd:.2%} | {self.diff:+.2%} ± {self.diff_se:.2%} | {self.better} / {self.worse}"
