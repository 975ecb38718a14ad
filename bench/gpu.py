"""Issue 7's benchmark: xfer on a GPU. VGG-16 at 224 px, random weights, a flowers-sized set.

Measures, for each JPEG decoding path ("gpu": nvJPEG + preprocessing on the GPU;
"cpu": DataLoader workers with Pillow, normalisation on the GPU):

* the data pipeline alone: images/s of decoded, cropped, normalised batches on the device;
* ``head``: the frozen-body cache pass (clean view + one augmented view per training
  image, plus the validation images) in images/s, and the head epochs after it;
* ``finetune``: seconds per epoch (training + validation) and images/s, end to end;
* peak GPU memory (``torch.cuda.max_memory_allocated``) and MFU: model FLOPs
  (2 per multiply-add, counted on the network; training = 3 × forward) per second
  over the chip's dense bf16 peak (790 TFLOP/s, as measured on this workplace's H200s).

Targets (issue 7): finetune epoch of 3,130 images ≤ 3 s end to end, cache pass ≥ 3,000 images/s.

    python bench/gpu.py --out OUT                  # on a CUDA machine (see bench/run_gpu.sh)
    python bench/gpu.py --device cpu --quick       # tiny CPU run: checks the script works

``--data DIR`` takes a folder of class folders and repeats its images up to
``--images``; without it, JPEGs of the flower photos' sizes are generated.
Results go to OUT/gpu.json and OUT/gpu.md.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

import xfer
from common import loadavg, peak_rss_mb, table
from xfer.data import DatasetReport, load_dataset, split_dataset
from xfer.data.pipeline import image_batches
from xfer.engine import EpochStats, Progress, TrainConfig, fit
from xfer.nets.registry import get_backbone
from xfer.nets.strategies import build_network, make_spec

#: Dense bf16 matrix rate measured on this workplace's H200s (a plain 8192³ matmul, KINDS.md).
PEAK_TFLOPS = {"H200": 790.0, "H100": 790.0}
#: The flower photos' most common sizes (w, h), from a sample of 300, with their counts.
FLOWER_SIZES = [((320, 240), 46), ((500, 333), 43), ((320, 213), 24), ((240, 240), 22), ((500, 375), 17),
                ((500, 332), 11), ((180, 240), 11)]


# --- data ---------------------------------------------------------------------------------


def synthetic_jpegs(root: Path, unique: int, classes: int = 5, seed: int = 0, scale: float = 1.0) -> Path:
    """JPEGs of the flower photos' sizes and roughly their file sizes: smooth colour fields with noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [s for s, n in FLOWER_SIZES for _ in range(n)]
    for k in range(unique):
        w, h = sizes[int(rng.integers(len(sizes)))]
        w, h = max(8, int(w * scale)), max(8, int(h * scale))
        coarse = rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-24, 25, (h, w, 3), dtype=np.int16)
        d = root / f"class{k % classes}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(d / f"img{k:05d}.jpg", quality=90)
    return root


def dataset(args) -> tuple[list, list, str]:
    """(train items, val items, description): ``--images`` items, repeating the source files as needed."""
    if args.data:
        report = load_dataset(args.data)
        what = f"{report.num_images} photos from {args.data}"
    else:
        tmp = Path(tempfile.mkdtemp(prefix="xfer-gpu-"))
        atexit.register(shutil.rmtree, tmp, True)
        root = synthetic_jpegs(tmp, args.unique, scale=args.image_scale)
        report = load_dataset(root)
        what = f"{report.num_images} generated JPEGs of the flower photos' sizes"
    base = list(report.items)
    items = [base[i % len(base)] for i in range(args.images)]
    if args.images > len(base):
        what += f", repeated to {args.images}"
    rep = DatasetReport(root=report.root, classes=report.classes, items=items)
    train, val = split_dataset(rep, 0.2, seed=0)
    return train, val, what


# --- measuring ----------------------------------------------------------------------------


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device.device)


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device.device)


def peak_gib(device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device.device) / 2**30, 2) if device.type == "cuda" else None


def forward_flops(backbone: str, size: int) -> float:
    """FLOPs of one image's forward pass (2 per multiply-add), counted on the meta device."""
    net = get_backbone(backbone).make_meta().eval()
    macs = [0]

    def hook(m, inp, out):
        if isinstance(m, torch.nn.Conv2d):
            macs[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, torch.nn.Linear):
            macs[0] += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        net(torch.empty(1, 3, size, size, device="meta"))
    for h in handles:
        h.remove()
    return 2.0 * macs[0]


def mfu(flops: float, seconds: float, peak_tflops: float | None) -> float | None:
    return round(flops / seconds / (peak_tflops * 1e12), 4) if peak_tflops and seconds > 0 else None


def pipeline_alone(items, pre, device, batch: int) -> dict:
    """Images/s of the loader alone: decoded, cropped, normalised batches on the device."""
    loader = image_batches(items, pre, [False], batch, device)
    warm = image_batches(items[: min(batch, len(items))], pre, [False], batch, device)
    for _ in warm:  # first-use costs: nvJPEG handle, CUDA kernels, worker start-up is counted below
        pass
    sync(device)
    t = time.perf_counter()
    n = 0
    for _x, y in loader:
        n += len(y)
    sync(device)
    dt = time.perf_counter() - t
    out = {"images": n, "seconds": round(dt, 3), "images_per_s": round(n / dt, 1)}
    if hasattr(loader, "gpu_decode"):
        out["nvjpeg"] = loader.gpu_decode  # False: nvJPEG failed and Pillow took over
    return out


def pipeline_check(items, pre, device) -> dict | None:
    """How far the GPU-decoded batch is from the CPU path's, in normalised units (a sanity check)."""
    if device.type != "cuda":
        return None
    from dataclasses import replace

    few = items[:32]
    gpu = torch.cat([x.float() for x, _ in image_batches(few, pre, [False], 32, replace(device, decode="gpu"))])
    cpu = torch.cat([x.float() for x, _ in image_batches(few, pre, [False], 32, replace(device, decode="cpu"))])
    d = (gpu - cpu).abs()
    return {"mean_abs_diff": round(d.mean().item(), 4), "max_abs_diff": round(d.max().item(), 3)}


def warm_up(args, device, pre) -> None:
    """One feature batch through the body, so the CUDA context and cuDNN's autotuning at that shape stay
    out of the timings (nvJPEG starts in pipeline_check); each fit still pays for its other shapes."""
    if device.type != "cuda":
        return
    net = build_network(make_spec(args.backbone, "head", 5), weights=None).to(device.device)
    net.to(memory_format=torch.channels_last)
    x = torch.randn(device.feature_batch or 32, 3, pre.crop_size, pre.crop_size, device=device.device)
    with torch.no_grad(), torch.autocast("cuda", dtype=device.amp_dtype):
        net.body(x.contiguous(memory_format=torch.channels_last))
    sync(device)
    del net, x
    torch.cuda.empty_cache()


def run_fit(args, strategy: str, train, val, pre, device, epochs: int, compile_: bool = False) -> dict:
    """fit() with timestamps from its callback: the end of the cache pass, and of each epoch's training
    steps (the loop reports a step once its loss is back, so that is when the step finished)."""
    marks: dict[str, float] = {}
    train_end: dict[int, float] = {}
    epoch_end: dict[int, float] = {}
    stats: list[EpochStats] = []

    def callback(ev) -> None:
        if isinstance(ev, Progress) and ev.phase == "features" and ev.step == ev.steps:
            sync(device)  # the feature loop queues work without waiting for it: wait once, at its end
        now = time.perf_counter()
        if isinstance(ev, Progress):
            if ev.phase == "features":
                marks["features_end"] = now
            elif ev.phase == "train":
                train_end[ev.epoch] = now
        elif isinstance(ev, EpochStats):
            stats.append(ev)
            epoch_end[ev.epoch] = now

    num_classes = 1 + max(label for _, label in train + val)
    # Every layer trains (frozen_stages=0): the MFU below counts a training image as 3 forward passes.
    net = build_network(make_spec(args.backbone, strategy, num_classes, frozen_stages=0), weights=None)
    config = TrainConfig(epochs=epochs, batch_size=args.batch, cache_views=2, compile=compile_)
    reset_peak(device)
    t0 = time.perf_counter()
    result = fit(net, strategy, train, val, pre, config, device, callback=callback)
    total = time.perf_counter() - t0
    out = {"seconds_total": round(total, 2), "epoch_seconds": [round(s.seconds, 3) for s in stats],
           "val_accuracy": round(result.best_val_accuracy, 3), "peak_gpu_gib": peak_gib(device)}
    del net, result
    if device.type == "cuda":
        torch.cuda.empty_cache()
    out["_marks"] = {k: v - t0 for k, v in marks.items()}
    last = len(stats)
    if last in train_end:  # the last epoch without its validation pass (the time after its last step)
        out["last_train_seconds"] = round(stats[-1].seconds - (epoch_end[last] - train_end[last]), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    p.add_argument("--data", help="folder of class folders (default: generated JPEGs)")
    p.add_argument("--images", type=int, default=3130, help="images in the set (default 3130, the flowers' train split)")
    p.add_argument("--unique", type=int, default=400, help="generated JPEGs before repetition (default 400)")
    p.add_argument("--image-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--backbone", default=None, help="default vgg16 (resnet18 with --quick)")
    p.add_argument("--batch", type=int, default=32, help="training batch size (default 32, TrainConfig's)")
    p.add_argument("--feature-batch", type=int, default=None, help="frozen-body batch (default: the device's, 256 on CUDA)")
    p.add_argument("--decode", default="both", choices=["both", "gpu", "cpu"], help="JPEG paths to measure on CUDA")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers for decode=cpu (default: the device's)")
    p.add_argument("--epochs", type=int, default=2, help="finetune epochs (the first includes warm-up costs)")
    p.add_argument("--head-epochs", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also run finetune with TrainConfig.compile")
    p.add_argument("--peak-tflops", type=float, default=None, help="the chip's dense bf16 peak (default: known chips)")
    p.add_argument("--quick", action="store_true",
                   help="resnet18, 32 px, 24 small images, 2 epochs: checks the script works")
    p.add_argument("--out", default=None, help="folder for gpu.json and gpu.md")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.images, args.unique, args.image_scale = 32, 24, 12, 0.25
        args.epochs, args.head_epochs = 2, 2
        args.backbone = args.backbone or "resnet18"
    args.backbone = args.backbone or "vgg16"

    probe = xfer.select_device(args.device, num_workers=args.workers, feature_batch=args.feature_batch)
    xfer.device.configure_runtime(probe)  # process-wide, the same for every decode mode
    modes = ["cpu"] if probe.type != "cuda" else (["gpu", "cpu"] if args.decode == "both" else [args.decode])
    devices = {m: xfer.select_device(args.device, num_workers=args.workers, decode=m if probe.type == "cuda" else "auto",
                                     feature_batch=args.feature_batch) for m in modes}
    pre = get_backbone(args.backbone).get_preprocessing().for_size(args.size)
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in probe.name), None)
    train, val, what = dataset(args)
    f_fwd = forward_flops(args.backbone, args.size)
    env = {"device": probe.name, "torch": torch.__version__, "python": platform.python_version(),
           "cpus": os.cpu_count(), "load": loadavg(), "peak_tflops": peak, "data": what,
           "train": len(train), "val": len(val), "size": args.size, "backbone": args.backbone, "batch": args.batch,
           "feature_batch": probe.feature_batch or args.batch, "workers": probe.num_workers,
           "forward_gflops_per_image": round(f_fwd / 1e9, 2)}
    print(json.dumps(env), flush=True)
    warm_up(args, probe, pre)

    results: dict = {"env": env, "pipeline": {}, "head": {}, "finetune": {}}
    results["pipeline_check"] = pipeline_check(train, pre, probe)
    for mode, device in devices.items():
        results["pipeline"][mode] = pipeline_alone(train + val, pre, device, device.feature_batch or args.batch)
        print(mode, "pipeline", results["pipeline"][mode], flush=True)

        h = run_fit(args, "head", train, val, pre, device, args.head_epochs)
        cache_images = 2 * len(train) + len(val)
        t_cache = h["_marks"].get("features_end", h["seconds_total"])
        h.update({"cache_images": cache_images, "cache_seconds": round(t_cache, 2),
                  "cache_images_per_s": round(cache_images / t_cache, 1),
                  "cache_mfu": mfu(cache_images * f_fwd, t_cache, peak),
                  "head_epochs_seconds": round(sum(h["epoch_seconds"]), 3)})
        results["head"][mode] = h
        print(mode, "head", {k: v for k, v in h.items() if k != "_marks"}, flush=True)

        variants = [("finetune", False)] + ([("finetune+compile", True)] if args.compile else [])
        for name, comp in variants:
            f = run_fit(args, "finetune", train, val, pre, device, args.epochs, compile_=comp)
            n_train = (len(train) // args.batch) * args.batch if len(train) > args.batch else len(train)
            last = f["epoch_seconds"][-1]
            f.update({"train_images_per_epoch": n_train, "val_images": len(val),
                      "last_epoch_seconds": last,
                      "images_per_s": round((n_train + len(val)) / last, 1),
                      "mfu": mfu(n_train * 3 * f_fwd + len(val) * f_fwd, last, peak)})
            if "last_train_seconds" in f:
                ts = f["last_train_seconds"]
                f.update({"train_images_per_s": round(n_train / ts, 1), "train_mfu": mfu(n_train * 3 * f_fwd, ts, peak)})
            results["finetune"][f"{mode}:{name}"] = f
            print(mode, name, {k: v for k, v in f.items() if k != "_marks"}, flush=True)
    results["host_peak_rss"] = peak_rss_mb()
    text = render(results)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu.json").write_text(json.dumps(results, indent=1) + "\n")
        (out / "gpu.md").write_text(text + "\n")
    return 0


def render(r: dict) -> str:
    env = r["env"]
    pct = lambda v: "—" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    gib = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
    rows = []
    for mode, p in r["pipeline"].items():
        rows.append([f"data pipeline alone (decode={mode})", p["images"], f"{p['seconds']:.2f}",
                     f"{p['images_per_s']:.0f}", "—", "—"])
    for mode, h in r["head"].items():
        rows.append([f"head: cache pass (decode={mode})", h["cache_images"], f"{h['cache_seconds']:.2f}",
                     f"{h['cache_images_per_s']:.0f}", pct(h["cache_mfu"]), gib(h["peak_gpu_gib"])])
        rows.append([f"head: {len(h['epoch_seconds'])} head epochs (decode={mode})", env["train"] + env["val"],
                     f"{h['head_epochs_seconds']:.2f}", "—", "—", "—"])
    for key, f in r["finetune"].items():
        mode, name = key.split(":")
        rows.append([f"{name}: epoch {len(f['epoch_seconds'])} of {len(f['epoch_seconds'])} (decode={mode})",
                     f["train_images_per_epoch"] + f["val_images"], f"{f['last_epoch_seconds']:.2f}",
                     f"{f['images_per_s']:.0f}", pct(f["mfu"]), gib(f["peak_gpu_gib"])])
        if "train_images_per_s" in f:
            rows.append([f"{name}: its training steps alone (decode={mode})", f["train_images_per_epoch"],
                         f"{f['last_train_seconds']:.2f}", f"{f['train_images_per_s']:.0f}", pct(f["train_mfu"]), "—"])
        rows.append([f"{name}: all {len(f['epoch_seconds'])} epochs incl. set-up (decode={mode})", "—",
                     f"{f['seconds_total']:.2f}", "—", "—", "—"])
    check = r.get("pipeline_check")
    lines = [
        f"## xfer on {env['device']} ({env['backbone']}, {env['size']} px, random weights)",
        "",
        f"Data: {env['data']}; {env['train']} train + {env['val']} val. Training batch {env['batch']}, "
        f"feature batch {env['feature_batch']}, {env['workers']} loader workers for decode=cpu. "
        f"Forward {env['forward_gflops_per_image']} GFLOP/image (2 per multiply-add; training counted 3×). "
        f"MFU against {env['peak_tflops'] or '(unknown)'} TFLOP/s dense bf16. torch {env['torch']}, "
        f"{env['cpus']} CPUs, load {env['load']}.",
        "",
        table(["what", "images", "seconds", "images/s", "MFU", "peak GPU GiB"], rows),
    ]
    if check:
        lines += ["", f"GPU vs CPU preprocessing of the same 32 images (normalised units): mean |Δ| "
                      f"{check['mean_abs_diff']}, max |Δ| {check['max_abs_diff']}."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
