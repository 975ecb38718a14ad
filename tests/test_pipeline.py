"""The device-feeding pipeline (xfer.data.pipeline) and the engine's use of it, on the CPU.

The nvJPEG path is the same code as the CPU-decoding JpegBatches here (only the
decode call's device differs); the CUDA-only test at the end runs where there is a GPU.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import xfer
from tests.conftest import make_color_dataset
from xfer.data import open_image, pipeline
from xfer.data.pipeline import DeviceLoader, FeatureBatches, JpegBatches, image_batches, make_loader
from xfer.data.transforms import ImageDataset, Preprocessing, make_transform
from xfer.engine import TrainConfig, compute_features, fit, train_one_epoch
from xfer.errors import ConfigError
from xfer.nets.strategies import build_network, make_spec

CPU = xfer.select_device("cpu", num_workers=0)
PRE = Preprocessing(crop_size=32, resize_size=36)


def _items(root: Path) -> list[tuple[Path, int]]:
    classes = sorted(p.name for p in root.iterdir())
    return [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).iterdir())]


@pytest.fixture
def jpeg_items(tmp_path) -> list[tuple[Path, int]]:
    return _items(make_color_dataset(tmp_path / "jpg", per_class=5, size=48, fmt="jpg"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pillow_exif_transpose(orientation):
    arr = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "PNG", exif=exif)  # lossless, so the comparison is exact
    want = np.asarray(open_image(buf.getvalue()))
    got = pipeline._orient(torch.from_numpy(arr).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert got.shape == want.shape
    assert (got == want).all()


def test_read_sends_only_plain_jpegs_to_the_jpeg_decoder(tmp_path):
    rgb = Image.fromarray(np.full((20, 30, 3), 120, np.uint8))
    exif = rgb.getexif()
    exif[0x0112] = 6
    rgb.save(tmp_path / "a.jpg", exif=exif)
    rgb.save(tmp_path / "b.png")
    rgb.convert("CMYK").save(tmp_path / "c.jpg")
    data, orientation, arr = pipeline._read(tmp_path / "a.jpg", False, 100)
    assert data is not None and orientation == 6 and arr is None
    for name in ("b.png", "c.jpg"):  # not a JPEG / a CMYK JPEG: decoded by Pillow, as RGB
        data, _, arr = pipeline._read(tmp_path / name, False, 100)
        assert data is None and arr.shape == (20, 30, 3)
    data, _, arr = pipeline._read(tmp_path / "a.jpg", True, 100)  # nvJPEG unavailable: Pillow for all
    assert data is None and arr.shape == (30, 20, 3)  # upright: orientation 6 applied


def test_jpeg_batches_match_the_cpu_transform_on_photos(flowers_dir):
    items = [(p, 0) for p in sorted((flowers_dir / "roses").iterdir())[:6]]
    pre = Preprocessing()  # 224 px: no draft decoding, so both paths see full-size pixels
    x = torch.cat([b for b, _ in JpegBatches(items, pre, [False], 4, CPU)])
    ref = torch.stack([ImageDataset(items, make_transform(pre), 2 * pre.resize_size)[i][0] for i in range(6)])
    assert x.shape == ref.shape == (6, 3, 224, 224)
    assert x.is_contiguous(memory_format=torch.channels_last)
    diff = (x - ref).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.1  # rounding and resampler differences only


def test_jpeg_batches_views_order_and_drop_last(jpeg_items):
    clean = torch.cat([x for x, _ in JpegBatches(jpeg_items, PRE, [False], 4, CPU)])
    batches = list(JpegBatches(jpeg_items, PRE, [False, True, True], 4, CPU))
    x = torch.cat([b for b, _ in batches])
    y = torch.cat([b for _, b in batches])
    assert x.shape == (15, 3, 3, 32, 32)
    assert torch.equal(y, torch.tensor([label for _, label in jpeg_items]))
    assert torch.allclose(x[:, 0], clean, atol=1e-6)  # the first view is the eval transform
    assert (x[:, 1] - x[:, 0]).abs().mean() > 0.01 and (x[:, 2] - x[:, 1]).abs().mean() > 0.01

    def labels(seed):
        return torch.cat([y for _, y in JpegBatches(jpeg_items, PRE, [True], 4, CPU, shuffle=True, seed=seed)])

    assert torch.equal(labels(1), labels(1)) and not torch.equal(labels(1), labels(2))
    dropped = JpegBatches(jpeg_items, PRE, [False], 4, CPU, drop_last=True)
    assert len(dropped) == 3 == len(list(dropped))


def test_jpeg_batches_cache_decoded_images(jpeg_items, monkeypatch):
    reads = []
    real = pipeline._read
    monkeypatch.setattr(pipeline, "_read", lambda *a: reads.append(a[0]) or real(*a))
    loader = JpegBatches(jpeg_items, PRE, [False], 4, CPU, cache_decoded=True)
    first = torch.cat([x for x, _ in loader])
    assert len(reads) == 15
    second = torch.cat([x for x, _ in loader])
    assert len(reads) == 15  # nothing read or decoded again
    assert torch.equal(first, second)


def test_jpeg_batches_fall_back_to_pillow_when_the_decoder_fails(jpeg_items, monkeypatch):
    import torchvision.io

    def broken(*a, **k):
        raise RuntimeError("decode_jpegs_cuda: torchvision not compiled with nvJPEG support")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", broken)
    loader = JpegBatches(jpeg_items, PRE, [False], 4, CPU)
    x = torch.cat([b for b, _ in loader])
    assert not loader.gpu_decode
    ref = torch.stack([ImageDataset(jpeg_items, make_transform(PRE), 2 * PRE.resize_size)[i][0] for i in range(15)])
    assert (x - ref).abs().max() < 0.05


def test_uint8_batches_normalised_on_the_device_equal_the_float_path(jpeg_items):
    u8 = make_loader(ImageDataset(jpeg_items, make_transform(PRE, normalize=False)), 8, CPU, shuffle=False)
    x = torch.cat([b for b, _ in DeviceLoader(u8, CPU, PRE)])
    ref = torch.cat([b for b, _ in image_batches(jpeg_items, PRE, [False], 8, CPU)])
    assert next(iter(u8))[0].dtype == torch.uint8
    assert torch.allclose(x, ref, atol=1e-5)


def test_multi_view_loader_and_features_per_view(jpeg_items):
    loader = image_batches(jpeg_items, PRE, [False, True], 4, CPU)
    x, y = next(iter(loader))
    assert x.shape == (4, 2, 3, 32, 32)
    body = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())  # feature = mean colour
    f, labels = compute_features(body, loader, CPU)
    assert f.shape == (15, 2, 3) and labels.shape == (15,) and f.device.type == "cpu"
    clean, _ = compute_features(body, image_batches(jpeg_items, PRE, [False], 4, CPU), CPU)
    assert torch.allclose(f[:, 0], clean, atol=1e-5)


def test_feature_batches_draw_one_view_per_image_each_pass():
    v, n = 3, 10
    feats = torch.arange(v).view(v, 1, 1).float() * 100 + torch.arange(n).view(1, n, 1).float()  # 100*view + index
    batches = FeatureBatches(feats, torch.arange(n), 4, shuffle=True, seed=0, drop_last=True, views=True)
    assert len(batches) == 2
    seen_views = set()
    for _ in range(5):
        rows = [(x.squeeze(1), y) for x, y in batches]
        x = torch.cat([r[0] for r in rows])
        y = torch.cat([r[1] for r in rows])
        assert len(y) == 8 and len(set(y.tolist())) == 8
        assert torch.equal(x % 100, y.float())  # each feature row belongs to its label's image
        seen_views |= set((x // 100).long().tolist())
    assert seen_views == {0, 1, 2}
    plain = FeatureBatches(feats[0], torch.arange(n), 4)
    assert torch.equal(torch.cat([x for x, _ in plain]).squeeze(1), torch.arange(n).float())


def test_train_one_epoch_reports_every_step_once_in_order():
    torch.manual_seed(0)
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    head = nn.Linear(4, 3)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    calls = []
    loss, acc = train_one_epoch(head, FeatureBatches(x, y, 6), opt, None, nn.CrossEntropyLoss(), CPU,
                                on_step=lambda *a: calls.append(a))
    assert [c[:3] for c in calls] == [(1, 4, 6), (2, 4, 6), (3, 4, 6), (4, 4, 2)]
    assert calls[-1][3] == pytest.approx(loss) and calls[-1][4] == pytest.approx(acc)
    assert 0 <= acc <= 1


def test_select_device_decode_and_feature_batch():
    assert xfer.select_device("cpu").decode == "cpu"
    assert xfer.select_device("cpu", feature_batch=64).feature_batch == 64
    with pytest.raises(ConfigError, match="CUDA"):
        xfer.select_device("cpu", decode="gpu")
    with pytest.raises(ConfigError, match="decode"):
        xfer.select_device("cpu", decode="nvjpeg")


def test_head_training_on_several_views_is_reproducible(tmp_path):
    items = _items(make_color_dataset(tmp_path / "c", per_class=6, size=40, fmt="jpg"))
    train, val = items[::2], items[1::2]
    device = replace(CPU, feature_batch=9)  # 3 images x 3 views per body batch

    def run():
        torch.manual_seed(0)  # the random backbone is built before fit seeds anything
        net = build_network(make_spec("resnet18", "head", 3), weights=None)
        res = fit(net, "head", train, val, PRE, TrainConfig(epochs=3, batch_size=4, cache_views=3), device)
        return res.net.head[-1].weight.detach().clone(), res

    w1, res = run()
    w2, _ = run()
    assert torch.equal(w1, w2)
    assert len(res.history) == 3 and res.val_output.probs.shape == (len(val), 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_decoding_matches_the_cpu_path_on_cuda(flowers_dir):  # pragma: no cover - GPU machines only
    items = [(p, 0) for p in sorted((flowers_dir / "daisy").iterdir())[:16]]
    pre = Preprocessing()
    cuda = xfer.select_device("cuda", decode="gpu")
    loader = JpegBatches(items, pre, [False], 8, cuda)
    x = torch.cat([b for b, _ in loader]).cpu()
    ref = torch.cat([b for b, _ in image_batches(items, pre, [False], 8, replace(cuda, decode="cpu"))]).cpu()
    assert loader.gpu_decode
    assert (x - ref).abs().mean() < 0.02
