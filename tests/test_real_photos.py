"""What needs the real flower photos: the packaged ImageNet weights and the advisor on real flowers,
and how well a frozen network separates them.

Everything else runs on images the tests make (tests/synthetic_flowers.py). These tests read the
5-class flower photos (TensorFlow's flower_photos, CC-BY 2.0) from XFER_FLOWERS_DIR, else from
../shared/flowers/train beside the checkout, and are skipped, as one, where neither is there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import xfer
from tests.conftest import REAL_FLOWERS
from xfer import advisor
from xfer.data import DatasetReport, scan_folder, subsample
from xfer.data.transforms import Preprocessing, batch_images
from xfer.engine import TrainConfig
from xfer.nets.registry import get_backbone, load_pretrained

if REAL_FLOWERS is None or not REAL_FLOWERS.is_dir():
    where = "XFER_TEST_NO_SHARED is set" if REAL_FLOWERS is None else f"no flower photos at {REAL_FLOWERS}"
    pytest.skip(f"{where}: set XFER_FLOWERS_DIR to the folder of their 5 class folders (daisy, dandelion, roses, "
                "sunflowers, tulips) or put them at ../shared/flowers/train; `python -m xfer inspect flowers` "
                "downloads them to ~/.cache/xfer/flower_photos", allow_module_level=True)

LITE = "efficientnet_lite0"
IMAGENET_STATS = Preprocessing(224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")


@pytest.fixture(scope="module")
def real_flowers() -> Path:
    return REAL_FLOWERS


def test_shared_flowers_scan(real_flowers):
    report = scan_folder(real_flowers)
    assert report.classes == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert report.num_images > 3000
    assert isinstance(report, DatasetReport) and "daisy" in report.summary()


@pytest.mark.slow
def test_packaged_weights_see_daisies_as_imagenet_daisies(real_flowers, no_downloads):
    """Checks the weights, the class order and the [-1, 1] input scaling against the usual ImageNet mean/std."""
    b = get_backbone(LITE)
    net = b.make()
    load_pretrained(net, LITE, "imagenet")
    net.eval()
    daisy = b.get_categories().index("daisy")
    files = sorted((real_flowers / "daisy").iterdir())[:30]
    with torch.no_grad():
        p_half = net(batch_images(files, b.get_preprocessing())).softmax(1)
        p_imagenet = net(batch_images(files, IMAGENET_STATS)).softmax(1)
    top1 = (p_half.argmax(1) == daisy).float().mean().item()
    assert top1 >= 0.8, f"only {top1:.0%} of daisies classified as ImageNet 'daisy'"
    # The packaged scaling fits the weights better than the usual ImageNet statistics.
    assert p_half[:, daisy].mean() > p_imagenet[:, daisy].mean() + 0.03


@pytest.mark.slow
def test_head_on_real_flowers_reaches_80_percent(real_flowers, no_downloads):
    """30 photos per class to train, 20 other photos per class to check: the whole pipeline is right
    (normalisation, label order, feature caching) only if frozen ImageNet features separate them."""
    full = xfer.load_dataset(real_flowers)
    assert len(full.classes) == 5
    by_class: dict[int, list[Path]] = {}
    for path, label in subsample(full.items, 60, seed=0):
        by_class.setdefault(label, []).append(path)
    # 40 per class go to train(), which keeps 25% (10) aside to pick the best epoch: 30 train the head.
    given = [(p, c) for c, ps in by_class.items() for p in ps[:40]]
    held_out = [(p, full.classes[c]) for c, ps in by_class.items() for p in ps[40:60]]
    assert not {p for p, _ in given} & {p for p, _ in held_out}
    report = DatasetReport(full.root, full.classes, sorted(given))
    model = xfer.train(report, backbone=LITE, strategy="head", image_size=224, val_fraction=0.25,
                       config=TrainConfig(epochs=60, batch_size=16, lr=3e-3, augment=False, cache_views=1),
                       device=xfer.select_device("cpu"))
    assert model.training["num_train"] == 150
    result = xfer.evaluate(model, held_out)
    assert result.num_images == 100
    print(result.summary())  # shown with pytest -rP: the margin over the threshold
    assert result.accuracy >= 0.8, result.summary()


@pytest.mark.slow
def test_small_flower_subset_gets_head(real_flowers):
    full = xfer.load_dataset(real_flowers)
    report = DatasetReport(full.root, full.classes, subsample(full.items, 12, seed=0))
    rec = xfer.recommend(report)  # measures similarity with the packaged efficientnet_lite0 weights
    assert rec.similarity_backbone == "efficientnet_lite0"
    assert rec.similarity >= advisor.SIMILAR_CONFIDENCE + 0.05, rec.reason
    assert rec.strategy == "head", rec.reason
    assert rec.probe["head"] >= rec.probe["truncate"] + 0.05, rec.reason
    assert rec.measurement.images == 60 and rec.measurement.folds == 4  # 12 per class: all of them
    saved = rec.to_dict()  # what config.json and `recommend --json` keep: a summary, not the measurement
    assert saved["sample_images"] == 60 and saved["probe"] == rec.probe and "measurement" not in saved
    again = xfer.recommend(report, similarity=rec.measurement)  # reused, not measured again
    assert (again.strategy, again.probe, again.similarity) == (rec.strategy, rec.probe, rec.similarity)
