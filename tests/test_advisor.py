"""The strategy advisor: its size rule, its similarity measure (real weights), its fallback.

On the real flower photos: test_real_photos.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import xfer
from tests.conftest import ROOT
from xfer import advisor
from xfer.data import DatasetReport, subsample


def fake_report(counts: list[int]) -> DatasetReport:
    """A report with the given images per class; nothing is read from disk by the size rule."""
    classes = [f"c{i}" for i in range(len(counts))]
    items = [(Path(f"/nowhere/c{c}/{i}.jpg"), c) for c, n in enumerate(counts) for i in range(n)]
    return DatasetReport(Path("/nowhere"), classes, items)


def load_make_shapes():
    spec = importlib.util.spec_from_file_location("make_shapes", ROOT / "bench" / "make_shapes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_shapes


@pytest.mark.parametrize("similarity, small, large", [(0.9, "head", "finetune"), (0.05, "truncate", "scratch")])
def test_size_threshold_splits_small_from_large(similarity, small, large):
    n = advisor.SMALL_PER_CLASS
    assert xfer.recommend(fake_report([n - 1] * 3), similarity=similarity).strategy == small
    assert xfer.recommend(fake_report([n] * 3), similarity=similarity).strategy == large
    # The median class decides: one huge class does not make a small dataset large.
    rec = xfer.recommend(fake_report([10, 12, 5000]), similarity=similarity)
    assert rec.strategy == small and rec.images_per_class == 12


def test_similarity_threshold():
    t = advisor.SIMILAR_CONFIDENCE
    assert xfer.recommend(fake_report([20, 20]), similarity=t).strategy == "head"
    assert xfer.recommend(fake_report([20, 20]), similarity=t - 0.01).strategy == "truncate"


def test_without_similarity_decides_on_size_alone_and_says_so():
    small = xfer.recommend(fake_report([20, 20]), similarity=None)
    large = xfer.recommend(fake_report([advisor.SMALL_PER_CLASS] * 2), similarity=None)
    assert (small.strategy, large.strategy) == ("head", "finetune")
    assert small.similarity is None and small.similarity_backbone is None
    assert "not measured" in small.reason and "size alone" in small.reason


def stats(score: float, head: float | None, truncate: float | None) -> advisor.SimilarityStats:
    probe = None if head is None else {"head": head, "truncate": truncate}
    return advisor.SimilarityStats(score, score, {}, "efficientnet_lite0", 40, probe, 4 if probe else 0)


def test_the_probe_decides_and_a_tie_falls_back_to_the_confidence():
    small, large = fake_report([20, 20]), fake_report([advisor.SMALL_PER_CLASS] * 2)
    confident, unsure = advisor.SIMILAR_CONFIDENCE + 0.2, advisor.SIMILAR_CONFIDENCE - 0.2
    # Early features better: different domain, however confident ImageNet's classifier is.
    rec = xfer.recommend(small, similarity=stats(confident, 0.60, 0.62))
    assert rec.strategy == "truncate" and rec.probe == {"head": 0.60, "truncate": 0.62}
    assert "different from" in rec.reason and "62%" in rec.reason
    assert xfer.recommend(large, similarity=stats(confident, 0.60, 0.62)).strategy == "scratch"
    # Final features better: similar, however unsure.
    assert xfer.recommend(small, similarity=stats(unsure, 0.80, 0.60)).strategy == "head"
    assert xfer.recommend(large, similarity=stats(unsure, 0.80, 0.60)).strategy == "finetune"
    # A tie, or no probe at all: the confidence score decides.
    assert xfer.recommend(small, similarity=stats(confident, 0.70, 0.70)).strategy == "head"
    rec = xfer.recommend(small, similarity=stats(unsure, 0.70, 0.70))
    assert rec.strategy == "truncate" and "a tie" in rec.reason
    assert xfer.recommend(small, similarity=stats(unsure, None, None)).strategy == "truncate"


def test_probe_accuracy_separates_signal_from_noise():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(12)
    noise = torch.randn(36, 64, generator=g)
    class_means = torch.randn(3, 64, generator=g)  # each class shifted along its own direction
    assert advisor.probe_accuracy(noise + class_means[labels], labels) == 1.0
    assert advisor.probe_accuracy(noise, labels) < 0.5  # chance is 1/3
    # A weaker shift scores lower: the probe ranks feature sets, it does not only say yes or no.
    assert advisor.probe_accuracy(noise + 0.3 * class_means[labels], labels) < 1.0


@pytest.mark.slow
def test_recommend_measures_once_keeps_a_summary_and_reuses_it(flowers_dir):
    """On photo-sized JPEGs (flower-like, drawn by the tests; the pick on the real photos is checked in
    test_real_photos.py)."""
    full = xfer.load_dataset(flowers_dir)
    report = DatasetReport(full.root, full.classes, subsample(full.items, 12, seed=0))
    rec = xfer.recommend(report)  # measures similarity with the packaged efficientnet_lite0 weights
    assert rec.similarity_backbone == "efficientnet_lite0"
    assert rec.strategy in ("head", "truncate"), rec.reason  # small data: a frozen body
    assert set(rec.probe) == {"head", "truncate"} and all(0 <= v <= 1 for v in rec.probe.values())
    assert rec.measurement.images == 60 and rec.measurement.folds == 4  # 12 per class: all of them
    saved = rec.to_dict()  # what config.json and `recommend --json` keep: a summary, not the measurement
    assert saved["sample_images"] == 60 and saved["probe"] == rec.probe and "measurement" not in saved
    again = xfer.recommend(report, similarity=rec.measurement)  # reused, not measured again
    assert (again.strategy, again.probe, again.similarity) == (rec.strategy, rec.probe, rec.similarity)


@pytest.mark.slow
def test_small_synthetic_shapes_get_truncate(tmp_path):
    make_shapes = load_make_shapes()
    report = xfer.load_dataset(make_shapes(tmp_path / "shapes", per_class=10, seed=3))
    assert len(report.classes) == 5
    stats = advisor.similarity_stats(report, "efficientnet_lite0")
    # PROBE_PER_CLASS per class, capped by the 10 there are.
    assert stats.images == 50 and set(stats.per_class) == set(report.classes)
    assert stats.score <= advisor.SIMILAR_CONFIDENCE - 0.05, stats
    assert stats.probe["truncate"] > stats.probe["head"], stats
    rec = xfer.recommend(report, similarity=stats)
    assert rec.strategy == "truncate", rec.reason
    assert "different from" in rec.reason and "early layers" in rec.reason
