"""Issue 2's benchmark: the seed tutorial's loop against xfer's ``head`` strategy, side by side.

The tutorial (the loop xfer replaces) keeps VGG-16's convolutional features frozen
but runs every image through them again in every epoch, trains the whole classifier
(fc6, fc7, a new fc8) with SGD (lr 0.001, momentum 0.9, batch 20), feeds unnormalised
``ToTensor()`` images from an ``ImageFolder`` and evaluates after each epoch. xfer's
``head`` runs the frozen body once per image and view (``TrainConfig.cache_views``)
and trains only the new final layer on the cached features.

Every arm runs in its own subprocess (its own peak RSS), one after the other, with
the load average printed beside it: the CPU may be shared, so compare the ratio of
arms run side by side, not absolute seconds. Random weights (``weights=None``): the
timings are those of the real thing, the accuracies are only a sanity column.

    python bench/head_vs_tutorial.py                 # 224 px, 60 train + 20 val flower photos
    python bench/head_vs_tutorial.py --quick         # 32 px, tiny, one process: checks that it runs
    python bench/head_vs_tutorial.py --whole --train 32 --val 8 --epochs 10   # whole processes, as the user waits

``--whole`` times what the user waits for instead: ``python -m xfer train`` from spawn to exit
against the tutorial as a script (import, build, loop, save), interleaved over ``--rounds``, with
CPU time and peak memory of each process tree; then ``--help``, ``backbones`` and ``predict``.
``--baseline DIR`` adds the same xfer commands run from another checkout (e.g. before a change).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from common import (
    ROOT,
    SHARED_FLOWERS,
    balanced_subset,
    class_folders,
    emit,
    loadavg,
    peak_rss_mb,
    run_arm,
    table,
    write_text,
)

SCRIPT = Path(__file__).resolve()


def subset(args) -> tuple[list[str], list, list]:
    """The same train/val split for every arm: xfer's own stratified split of a balanced subset."""
    from xfer.data import DatasetReport, split_dataset

    root = Path(args.data)
    classes = [p.name for p in class_folders(root)]
    items = balanced_subset(root, args.train + args.val)
    report = DatasetReport(root=root, classes=classes, items=items)
    train, val = split_dataset(report, args.val / (args.train + args.val), seed=0)
    return classes, train, val


# --- the arms (each runs in a subprocess) --------------------------------------------------


def arm_tutorial(args) -> dict:
    """The seed tutorial's loop, as written there: ImageFolder, ToTensor, SGD on the classifier."""
    classes, train, val = subset(args)
    with tempfile.TemporaryDirectory(prefix="xfer-bench-") as tmp:
        for split, items in (("train", train), ("val", val)):  # an ImageFolder tree of links, nothing copied
            for path, label in items:
                d = Path(tmp) / split / classes[label]
                d.mkdir(parents=True, exist_ok=True)
                (d / path.name).symlink_to(path.resolve())
        runs, _ = _tutorial_loop(args, Path(tmp), len(classes))
    return {"arm": "tutorial", "runs": runs, "num_train": len(train), "num_val": len(val), **peak_rss_mb()}


def _tutorial_loop(args, tmp: Path, num_classes: int, stamps: dict | None = None,
                   t_spawn: float = 0.0) -> tuple[dict, object]:
    import torch
    import torchvision
    from torch import nn
    from torchvision import transforms

    torch.manual_seed(0)
    s = args.size
    t0 = time.perf_counter()
    model = torchvision.models.vgg16(weights=None)
    for p in model.features.parameters():
        p.requires_grad = False
    model.classifier[6] = nn.Linear(4096, num_classes)
    if stamps is not None:
        stamps["built"] = time.time() - t_spawn
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.classifier.parameters(), lr=0.001, momentum=0.9)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(s), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor()])
    val_tf = transforms.Compose([transforms.Resize(round(s * 256 / 224)), transforms.CenterCrop(s),
                                 transforms.ToTensor()])
    loaders = {
        "train": torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(str(tmp / "train"), train_tf),
                                             batch_size=20, shuffle=True, num_workers=args.tutorial_workers),
        "val": torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(str(tmp / "val"), val_tf),
                                           batch_size=20, shuffle=False, num_workers=args.tutorial_workers),
    }
    cumulative, accs = [], []
    for _epoch in range(max(args.epochs)):
        model.train()
        for x, y in loaders["train"]:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = n = 0
        with torch.no_grad():
            for x, y in loaders["val"]:
                correct += (model(x).argmax(1) == y).sum().item()
                n += len(y)
        cumulative.append(time.perf_counter() - t0)
        accs.append(correct / n)
    if stamps is not None:
        stamps["trained"] = time.time() - t_spawn
    # No schedule and no early stopping: an E-epoch run is exactly the first E epochs of this one.
    return {str(e): {"seconds": round(cumulative[e - 1], 2), "val_accuracy": round(accs[e - 1], 3)}
            for e in args.epochs}, model


def arm_xfer(args) -> dict:
    """xfer.train(strategy="head"), once per epoch count, in this one process."""
    import xfer
    from xfer.data import DatasetReport
    from xfer.engine import TrainConfig

    classes, train, val = subset(args)
    report = DatasetReport(root=Path(args.data), classes=classes, items=sorted(train + val, key=lambda t: str(t[0])))
    device = xfer.select_device("cpu")
    xfer.device.configure_runtime(device)
    runs = {}
    for e in args.epochs:
        events = []
        t0 = time.perf_counter()
        model = xfer.train(report, backbone=args.backbone, strategy="head", weights=None, image_size=args.size,
                           val_fraction=args.val / (args.train + args.val), device=device,
                           config=TrainConfig(epochs=e, cache_views=args.cache_views, seed=0),
                           callback=events.append)
        seconds = time.perf_counter() - t0
        feats = [ev for ev in events if isinstance(ev, xfer.Progress) and ev.phase == "features"]
        runs[str(e)] = {"seconds": round(seconds, 2), "val_accuracy": round(model.metrics["accuracy"], 3),
                        "feature_images_per_s": round(feats[-1].images_per_s, 2) if feats else None,
                        "num_train": model.training["num_train"], "num_val": model.training["num_val"]}
        del model  # or the next run's network is built beside this one, and the peak RSS counts both
    return {"arm": f"xfer-views{args.cache_views}", "runs": runs, **peak_rss_mb()}


def arm_features(args) -> dict:
    """The backbone pass: xfer's compute_features through its loader (incl. decoding) against a
    bare channels_last forward loop over pre-made tensors; plus the layout and grad-mode knobs."""
    import torch

    import xfer
    from xfer.data.pipeline import image_batches
    from xfer.data.transforms import ImageDataset, make_transform
    from xfer.engine import compute_features
    from xfer.nets.registry import get_backbone
    from xfer.nets.strategies import build_network, make_spec

    classes, train, _ = subset(args)
    items = train[: args.profile_images]
    device = xfer.select_device("cpu")
    xfer.device.configure_runtime(device)
    pre = get_backbone(args.backbone).get_preprocessing().for_size(args.size)
    net = build_network(make_spec(args.backbone, "head", len(classes)), weights=None)
    body = net.body.eval()
    bs = 32
    ds = ImageDataset(items, make_transform(pre), 2 * pre.resize_size)
    nchw = [torch.stack([ds[i][0] for i in range(k, min(k + bs, len(ds)))]) for k in range(0, len(ds), bs)]
    nhwc = [x.contiguous(memory_format=torch.channels_last) for x in nchw]
    n = len(items)

    def bare(batches, layout, mode) -> float:
        body.to(memory_format=layout)
        ctx = torch.inference_mode if mode == "inference_mode" else torch.no_grad
        t = time.perf_counter()
        with ctx():
            for x in batches:
                body(x)
        return n / (time.perf_counter() - t)

    def through_xfer() -> float:
        body.to(memory_format=torch.channels_last)
        t = time.perf_counter()
        compute_features(body, image_batches(items, pre, [False], bs, device), device)
        return n / (time.perf_counter() - t)

    def loader_only() -> float:
        t = time.perf_counter()
        for _ in image_batches(items, pre, [False], bs, device):
            pass
        return n / (time.perf_counter() - t)

    with torch.no_grad():  # warm-up: first-call allocations and oneDNN primitive creation
        body.to(memory_format=torch.channels_last)(nhwc[0][:2])
        body.to(memory_format=torch.contiguous_format)(nchw[0][:2])
    rates: dict[str, list[float]] = {k: [] for k in ("bare_nhwc", "xfer", "bare_nchw", "bare_nhwc_inference_mode")}
    for _ in range(args.profile_rounds):  # interleaved, so a change in load hits every variant alike
        rates["bare_nhwc"].append(bare(nhwc, torch.channels_last, "no_grad"))
        rates["xfer"].append(through_xfer())
        rates["bare_nchw"].append(bare(nchw, torch.contiguous_format, "no_grad"))
        rates["bare_nhwc_inference_mode"].append(bare(nhwc, torch.channels_last, "inference_mode"))
    return {"arm": "features", "images": n, "batch": bs, "rounds": args.profile_rounds,
            "images_per_s": {k: round(statistics.median(v), 2) for k, v in rates.items()},
            "loader_only_images_per_s": round(loader_only(), 1), "torch_threads": torch.get_num_threads(),
            "loader_workers": device.num_workers, **peak_rss_mb()}


# --- whole processes: what the user waits for ------------------------------------------------


def arm_tutorial_process(args) -> dict:
    """The tutorial as a script the user runs: import, build, the loop, save the weights, exit.

    Imports nothing from xfer (the parent made the ImageFolder tree), so its process pays
    exactly what a tutorial script pays. Phases are stamped against the parent's spawn time.
    """
    t0 = float(os.environ.get("XFER_BENCH_SPAWN", time.time()))
    stamps = {"python_up": time.time() - t0}
    import torch
    import torchvision  # noqa: F401
    stamps["imported"] = time.time() - t0
    folder = Path(args.folder)
    num_classes = len([p for p in (folder / "train").iterdir() if p.is_dir()])
    runs, model = _tutorial_loop(args, folder, num_classes, stamps=stamps, t_spawn=t0)
    torch.save(model.state_dict(), folder / "tutorial_model.pth")  # the tutorial saves its trained model
    stamps["saved"] = time.time() - t0
    return {"arm": "tutorial-process", "runs": runs, "stamps": {k: round(v, 2) for k, v in stamps.items()}}


def _tree_pss_kb(pid: int) -> int:
    """Proportional set size of ``pid`` and its descendants, summed (KB; 0 if gone): pages a
    forked loader worker shares with its parent count once, not twice as a sum of RSS would."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(ln.split()[1]) for ln in f if ln.startswith("Pss:"))
        except (OSError, StopIteration, ValueError):
            pass
        todo += children.get(p, [])
    return total


def time_process(cmd: Sequence[str], cwd: Path) -> dict:
    """Run ``cmd`` as the user would: wall time from spawn to exit, CPU time (user + sys, incl.
    its reaped children), the largest single-process RSS (the kernel's high-water mark) and the
    peak of the summed PSS of its process tree (sampled every 50 ms: loader workers included)."""
    import subprocess
    import threading

    env = {**os.environ, "XFER_BENCH_SPAWN": repr(time.time())}
    env.pop("PYTHONPATH", None)  # the cwd's xfer, as `python -m xfer` run there imports it
    with tempfile.TemporaryFile("w+") as out:
        t = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak[0] = max(peak[0], _tree_pss_kb(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, ru = os.wait4(proc.pid, 0)  # not proc.wait(): wait4 also returns the child's rusage
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        sys.stderr.write(text[-4000:])
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed with exit code {proc.returncode}")
    return {"wall_s": round(wall, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
            "max_process_rss_mb": round(ru.ru_maxrss / 1024), "tree_pss_mb": round(peak[0] / 1024),
            "output": text[-3000:]}


def _xfer_train_cmd(args, data: Path, out: Path, val_fraction: float) -> list[str]:
    return [sys.executable, "-m", "xfer", "train", "--data", str(data), "--out", str(out),
            "--backbone", args.backbone, "--strategy", "head", "--weights", "none", "--epochs", str(max(args.epochs)),
            "--image-size", str(args.size), "--val-fraction", f"{val_fraction:.6f}", "--seed", "0",
            *args.xfer_args.split()]


def whole(args) -> int:
    """``--whole``: the user's wait, process start to exit, for `python -m xfer train` against the
    tutorial as a script, interleaved round by round; then the small commands' start-up."""
    import re
    import shutil

    from xfer.data import load_dataset, split_dataset

    root = Path(args.data)
    classes = [p.name for p in class_folders(root)]
    items = balanced_subset(root, args.train + args.val)
    val_fraction = args.val / (args.train + args.val)
    epochs = max(args.epochs)
    roots = {"xfer": Path(args.xfer_root).resolve()}
    if args.baseline:
        roots["baseline"] = Path(args.baseline).resolve()
    results: dict[str, list] = {"train": [], "commands": []}
    with tempfile.TemporaryDirectory(prefix="xfer-bench-whole-") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        for path, label in items:  # copies, not links: xfer does not follow links out of a dataset folder
            (data / classes[label]).mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, data / classes[label] / path.name)
        report = load_dataset(data)
        train, val = split_dataset(report, val_fraction, seed=0)  # the split `xfer train` makes of this folder
        tut = tmp / "tutorial"
        for split, its in (("train", train), ("val", val)):
            for path, label in its:
                (tut / split / report.classes[label]).mkdir(parents=True, exist_ok=True)
                (tut / split / report.classes[label] / path.name).symlink_to(path)
        tutorial_cmd = [sys.executable, str(SCRIPT), "--arm", "tutorial-process", "--folder", str(tut),
                        "--size", str(args.size), "--epochs", str(epochs), "--tutorial-workers",
                        str(args.tutorial_workers)]
        for r in range(args.rounds):
            order = ["tutorial", *roots] if r % 2 else [*roots, "tutorial"]  # alternate who goes first
            for arm in order:
                before = loadavg()
                print(f"round {r + 1}: {arm} (load {before}) ...", file=sys.stderr, flush=True)
                if arm == "tutorial":
                    m = time_process(tutorial_cmd, ROOT)
                    res = json.loads([ln for ln in m.pop("output").splitlines()
                                      if ln.startswith("BENCH-RESULT ")][-1][len("BENCH-RESULT "):])
                    m["fit_s"] = res["runs"][str(epochs)]["seconds"]
                    m["stamps"] = res["stamps"]
                else:
                    m = time_process(_xfer_train_cmd(args, data, tmp / f"out-{arm}", val_fraction), roots[arm])
                    found = re.search(r"best epoch \d+, ([\d.]+)s", m.pop("output"))
                    m["fit_s"] = float(found.group(1)) if found else None
                m.update(arm=arm, round=r + 1, load=f"{before} → {loadavg()}")
                results["train"].append(m)
                print(f"  {json.dumps(m)}", file=sys.stderr, flush=True)  # kept if a later arm is cut short
        image = str(val[0][0])
        commands = {"--help": ["--help"], "backbones": ["backbones"]}
        for arm in roots:
            commands[f"predict ({arm}'s model)"] = ["predict", str(tmp / f"out-{arm}"), image]
        for r in range(args.rounds):
            for name, argv in commands.items():
                for arm, cwd in roots.items():
                    if name.startswith("predict") and f"({arm}'s" not in name and len(roots) > 1:
                        continue  # each version predicts with the model it saved
                    m = time_process([sys.executable, "-m", "xfer", *argv], cwd)
                    m.pop("output")
                    m.update(arm=arm, command=name, round=r + 1, load=loadavg())
                    results["commands"].append(m)
    text = whole_report(args, results, len(train), len(val))
    print(text)
    if args.out != "-":
        out = Path(args.out)
        write_text(out, text)
        out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1) + "\n")
    return 0


def whole_report(args, results: dict, num_train: int, num_val: int) -> str:
    train = results["train"]
    rows = []
    for m in train:
        rows.append([m["round"], m["arm"], f"{m['wall_s']:.1f}", f"{m['cpu_s']:.1f}",
                     "—" if m["fit_s"] is None else f"{m['fit_s']:.1f}", m["max_process_rss_mb"], m["tree_pss_mb"],
                     m["load"]])
    arms = sorted({m["arm"] for m in train if m["arm"] != "tutorial"})
    ratio_rows = []
    for arm in arms:
        per_round = []
        for r in sorted({m["round"] for m in train}):
            t = next(m for m in train if m["round"] == r and m["arm"] == "tutorial")
            x = next(m for m in train if m["round"] == r and m["arm"] == arm)
            per_round.append((t["wall_s"] / x["wall_s"], t["cpu_s"] / x["cpu_s"],
                              t["fit_s"] / x["fit_s"] if x["fit_s"] else float("nan")))
        med = [statistics.median(v[i] for v in per_round) for i in range(3)]
        ratio_rows.append([arm, " / ".join(f"{v[0]:.1f}×" for v in per_round), f"{med[0]:.1f}×",
                           " / ".join(f"{v[1]:.1f}×" for v in per_round), f"{med[1]:.1f}×", f"{med[2]:.1f}×"])
    crows = []
    for m in results["commands"]:
        crows.append([m["round"], m["arm"], m["command"], f"{m['wall_s']:.2f}", f"{m['cpu_s']:.2f}",
                      m["max_process_rss_mb"], m["load"]])
    cmd = (f"python bench/head_vs_tutorial.py --whole --train {args.train} --val {args.val} --size {args.size} "
           f"--epochs {max(args.epochs)} --rounds {args.rounds}" + (" --baseline DIR" if args.baseline else "")
           + (" --quick" if args.quick else ""))
    stamps = [m["stamps"] for m in train if m["arm"] == "tutorial"][-1]
    return "\n".join([
        f"## Whole processes: `xfer train` against the tutorial script ({args.backbone}, {args.size} px, "
        f"random weights, {max(args.epochs)} epochs of head)",
        "",
        f"Command: `{cmd}`  ",
        f"Data: {num_train} training + {num_val} validation flower photos, the split `xfer train` makes of the "
        f"folder (the tutorial gets the same images as ImageFolder trees). CPU: {os.cpu_count()} cores, shared: "
        "arms run interleaved (the first alternates each round); read the ratios. Wall: spawn to exit, what the "
        "user waits for. CPU: user + sys of the process and its children (less sensitive to other users' load). "
        "fit: the training itself as each reports it (xfer's `fit`; the tutorial's loop, from building the "
        "network to the last epoch's evaluation). The tutorial script ends with `torch.save(state_dict)`.",
        "",
        table(["round", "arm", "wall s", "CPU s", "fit s", "max process RSS MB", "process tree PSS MB (sum)",
               "load"], rows),
        "",
        table(["arm", "wall ratio per round", "wall ratio (median)", "CPU ratio per round", "CPU ratio (median)",
               "fit-only ratio (median)"], ratio_rows),
        "",
        f"Tutorial script's phases (last round, seconds since spawn): {stamps}",
        "",
        "### Start-up of the small commands (`python -m xfer ...`, whole process)",
        "",
        table(["round", "arm", "command", "wall s", "CPU s", "max RSS MB", "load"], crows),
    ])


ARMS = {"tutorial": arm_tutorial, "xfer": arm_xfer, "features": arm_features,
        "tutorial-process": arm_tutorial_process}


# --- the parent: runs the arms side by side and prints the table ----------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED_FLOWERS), help="folder of class folders (default: the flower photos)")
    p.add_argument("--train", type=int, default=60, help="training images (default 60)")
    p.add_argument("--val", type=int, default=20, help="validation images (default 20)")
    p.add_argument("--size", type=int, default=224, help="image size in pixels (default 224)")
    p.add_argument("--epochs", default="2,10", help="epoch counts to compare (default 2,10)")
    p.add_argument("--backbone", default="vgg16")
    p.add_argument("--tutorial-workers", type=int, default=1,
                   help="the tutorial's DataLoader workers (default 1, as xfer uses on this CPU)")
    p.add_argument("--profile-images", type=int, default=24, help="images for the backbone-pass profile")
    p.add_argument("--profile-rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true",
                   help="32 px, 10 + 5 images, 1 and 2 epochs, arms in one process: a smoke run")
    p.add_argument("--inprocess", action="store_true",
                   help="run the arms in this process (faster start; peak RSS is then cumulative)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "head_vs_tutorial.md"),
                   help="markdown file for the results ('-' for none)")
    p.add_argument("--whole", action="store_true",
                   help="time whole processes (`python -m xfer train` vs the tutorial script) instead")
    p.add_argument("--rounds", type=int, default=2, help="--whole: interleaved rounds (default 2)")
    p.add_argument("--xfer-root", default=str(ROOT), help="--whole: the checkout whose xfer is timed (default: this)")
    p.add_argument("--baseline", default=None,
                   help="--whole: another checkout (e.g. before a change) whose xfer is timed alongside")
    p.add_argument("--xfer-args", default="", help="--whole: extra arguments for `xfer train`")
    p.add_argument("--arm", choices=sorted(ARMS), help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--cache-views", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick and args.whole:
        args.size, args.train, args.val, args.epochs, args.rounds = 32, 10, 5, "2", 1
    elif args.quick:
        args.size, args.train, args.val, args.epochs = 32, 10, 5, "1,2"
        args.profile_images, args.profile_rounds, args.inprocess = 8, 1, True
        if args.out == p.get_default("out"):
            args.out = "-"
    args.epochs = sorted({int(e) for e in str(args.epochs).split(",")})
    if args.arm:
        emit(ARMS[args.arm](args))
        return 0

    if not Path(args.data).is_dir():
        print(f"no images at {args.data}: pass --data DIR (a folder of class folders)", file=sys.stderr)
        return 2
    if args.whole:
        if args.out == p.get_default("out"):
            args.out = str(ROOT / "bench" / "results" / "head_vs_tutorial_whole.md")
        return whole(args)
    common = ["--data", args.data, "--train", str(args.train), "--val", str(args.val), "--size", str(args.size),
              "--epochs", ",".join(map(str, args.epochs)), "--backbone", args.backbone,
              "--tutorial-workers", str(args.tutorial_workers), "--profile-images", str(args.profile_images),
              "--profile-rounds", str(args.profile_rounds)]
    # xfer's two settings bracket the tutorial, so a load change shows up as a gap between them.
    plan = [("xfer", ["--cache-views", "2"]), ("tutorial", []), ("xfer", ["--cache-views", "1"]), ("features", [])]
    results = {}
    for arm, extra in plan:
        before = loadavg()
        print(f"running {arm} {' '.join(extra)} (load {before}) ...", file=sys.stderr, flush=True)
        if args.inprocess:
            r = ARMS[arm](argparse.Namespace(**{**vars(args), "cache_views": int(extra[1]) if extra else 2}))
        else:
            r = run_arm(SCRIPT, ["--arm", arm, *common, *extra])
        r["load"] = f"{before} → {loadavg()}"
        results[r["arm"]] = r
    text = report(args, results)
    print(text)
    if args.out != "-":
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1) + "\n")
    return 0


def report(args, results: dict) -> str:
    tut = results["tutorial"]
    rows = []
    rss = "peak RSS MB (cumulative, one process)" if args.inprocess else "peak RSS MB"
    for e in args.epochs:
        t = tut["runs"][str(e)]
        rows.append([e, "tutorial (features recomputed every epoch)", f"{t['seconds']:.1f}", "1.0×",
                     f"{t['val_accuracy']:.2f}", f"{tut['self_mb']:.0f}", tut["load"]])
        for key, label in (("xfer-views2", "xfer head, cache_views=2 (+1 augmented view)"),
                           ("xfer-views1", "xfer head, default (cache_views=1)")):
            x = results[key]["runs"][str(e)]
            rows.append([e, label, f"{x['seconds']:.1f}", f"{t['seconds'] / x['seconds']:.1f}×",
                         f"{x['val_accuracy']:.2f}", f"{results[key]['self_mb']:.0f}", results[key]["load"]])
    f = results["features"]
    r = f["images_per_s"]
    frows = [
        ["bare body forward, channels_last, no_grad (pre-made tensors)", f"{r['bare_nhwc']:.2f}", "1.00"],
        ["xfer compute_features via its DataLoader (incl. JPEG decoding)", f"{r['xfer']:.2f}",
         f"{r['xfer'] / r['bare_nhwc']:.2f}"],
        ["bare body forward, contiguous NCHW, no_grad", f"{r['bare_nchw']:.2f}", f"{r['bare_nchw'] / r['bare_nhwc']:.2f}"],
        ["bare body forward, channels_last, inference_mode", f"{r['bare_nhwc_inference_mode']:.2f}",
         f"{r['bare_nhwc_inference_mode'] / r['bare_nhwc']:.2f}"],
        ["xfer DataLoader alone (decode + resize + crop + normalise)", f"{f['loader_only_images_per_s']:.1f}", "—"],
    ]
    x2, _x1 = results["xfer-views2"]["runs"], results["xfer-views1"]["runs"]
    any_run = next(iter(x2.values()))
    cols = ["epochs", "arm", "seconds", "speed-up", "val acc*", rss, "load"]
    lines = [
        f"## head vs the tutorial loop ({args.backbone}, {args.size} px, random weights)",
        "",
        f"Command: `python bench/head_vs_tutorial.py{' --quick' if args.quick else ''}"
        f" --train {args.train} --val {args.val} --size {args.size}`  ",
        f"Data: {any_run['num_train']} training + {any_run['num_val']} validation flower photos "
        f"(xfer's stratified split, the same images for every arm). CPU: {os.cpu_count()} cores, "
        f"{f['torch_threads']} torch threads, {f['loader_workers']} loader worker(s). Load average printed per arm "
        "(before → after): the machine is shared, so read the ratios, measured side by side.",
        "",
        table(cols, rows),
        "",
        "\\* random weights: accuracy is a sanity column only (no VGG-16 ImageNet weights are available offline "
        "here). The tutorial's E-epoch time is its cumulative time after epoch E of one run (no schedule, so "
        "identical to an E-epoch run); xfer runs each epoch count separately.",
        "",
        f"### Backbone pass ({f['images']} images, batch {f['batch']}, median of {f['rounds']} interleaved rounds)",
        "",
        table(["what", "images/s", "ratio to bare channels_last"], frows),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
