"""The command line: ``python -m xfer {train,evaluate,predict,inspect,recommend,backbones,strategies,...}``.

Errors print one line on stderr and exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger("xfer")

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn
    return register


def _data_source(source: str) -> str:
    """``source`` as load_dataset should read it: a path the user typed wins over the bundled name.

    ``--data flowers`` with a folder (or file) named ``flowers`` in the current folder means that
    folder; which of the two is used is said on stderr either way.
    """
    if source == "flowers":
        local = Path(source)
        if local.exists():
            print(f"data: using the local {'folder' if local.is_dir() else 'file'} {local.resolve()} "
                  "(not the bundled flower photos, which are used when there is no 'flowers' here)",
                  file=sys.stderr)
            return str(local.resolve())
        print("data: using the bundled flower photos", file=sys.stderr)
    return source


@contextlib.contextmanager
def _dataset(source: str):
    """Scan a dataset; a zip is extracted into a temporary folder that is removed afterwards.

    ``source`` has been through :func:`_data_source`.
    """
    from .data import load_dataset

    with tempfile.TemporaryDirectory(prefix="xfer-data-") as work:
        yield load_dataset(source, work_dir=Path(work) / "data")


def _json(obj: object) -> str:
    """JSON text, always valid: NaN and infinity (a diverged model's outputs) become null."""
    def clean(x: object) -> object:
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), allow_nan=False)


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class ProgressPrinter:
    """A one-line progress bar on a terminal; one line per epoch otherwise."""

    def __init__(self, stream=None):
        self.stream = sys.stderr if stream is None else stream  # looked up now: sys.stderr may have been replaced
        self.tty = self.stream.isatty()
        self.last = 0.0

    def __call__(self, event) -> None:
        from .engine import EpochStats, Progress

        if isinstance(event, Progress) and self.tty:
            now = time.monotonic()
            if now - self.last < 0.1 and event.step != event.steps:
                return
            self.last = now
            bar = "#" * int(event.fraction * 30)
            extra = f" loss {event.loss:.3f} acc {event.accuracy:.1%}" if event.loss is not None else ""
            epoch = f"epoch {event.epoch}/{event.epochs} " if event.epoch else ""
            self.stream.write(f"\r{epoch}{event.phase:<8} [{bar:<30}] {event.fraction:4.0%} "
                              f"{event.images_per_s:6.1f} img/s ETA {_fmt_time(event.eta_s)}{extra}   ")
            self.stream.flush()
        elif isinstance(event, EpochStats):
            if self.tty:
                self.stream.write("\r" + " " * 110 + "\r")
            self.stream.write(f"epoch {event.epoch}: train loss {event.train_loss:.4f} acc {event.train_accuracy:.1%}"
                              f" | val loss {event.val_loss:.4f} acc {event.val_accuracy:.1%} ({event.seconds:.1f}s)\n")
            self.stream.flush()


@contextlib.contextmanager
def _quiet(quiet: bool):
    """Under a launcher, ranks other than 0 print nothing but their error line (printed by main, outside)."""
    if not quiet:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield


def _run(run, printer: ProgressPrinter):
    """Print a training run's events; its model, or its error raised here (Ctrl-C stops the run)."""
    from .run import Done, Failed

    try:
        for event in run:
            if isinstance(event, Done):
                return event.model
            if isinstance(event, Failed):
                raise event.error
            printer(event)
    except KeyboardInterrupt:
        # Let the run end its batch before the interpreter exits: a thread still inside a torch op
        # at exit aborts the process ("terminate called without an active exception") instead of 130.
        run.stop(wait=True, timeout=120)
        raise
    raise AssertionError("a training run ends with Done or Failed")


@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    from . import distributed
    from .api import default_backbone, train
    from .device import configure_runtime, select_device
    from .outputs import check_output_folder
    from .presets import get_preset
    from .run import TrainingRun

    with _quiet(not distributed.is_main()):
        source = _data_source(args.data)
    # Before anything is scanned or trained: --out must never replace the data or a user's folder.
    check_output_folder(args.out, [source] if source != "flowers" and Path(source).exists() else [])
    # Under torchrun, "auto"/"cuda" is this process's own GPU, cuda:LOCAL_RANK.
    device = select_device(distributed.device_name(args.device), num_workers=args.workers, decode=args.decode,
                           feature_batch=args.feature_batch)
    configure_runtime(device)
    world = distributed.world_size()
    with distributed.stopped_as_error(), _quiet(not distributed.is_main()), _dataset(source) as report:
        print(report.summary(), file=sys.stderr)
        preset = get_preset(args.preset)
        backbone = args.backbone or preset.backbone
        if backbone is None:
            backbone, note = default_backbone()
            if note:
                print(f"note: {note}", file=sys.stderr)
        preset = preset.for_backbone(backbone).on(device.type)
        print(f"device: {device.name}" + (f", {world} processes (torchrun): batch {args.batch_size} per process, "
              f"{args.batch_size * world} per step" if world > 1 else ""), file=sys.stderr)
        print(_preset_line(preset, args), file=sys.stderr)
        # The preset's settings, then every option given on the command line (None: not given).
        config = preset.train_config(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, body_lr=args.body_lr,
                                     optimizer=args.optimizer, weight_decay=args.weight_decay,
                                     label_smoothing=args.label_smoothing, augment=not args.no_augment,
                                     cache_views=args.cache_views, cache_frozen=args.cache_frozen,
                                     patience=args.patience, seed=args.seed,
                                     compile=args.compile)
        job = functools.partial(train, report, backbone=backbone, strategy=args.strategy, weights=args.weights,
                                image_size=args.image_size, val_fraction=args.val_fraction, config=config,
                                device=device, cut=args.cut, reinit=args.reinit, frozen_stages=args.frozen_stages,
                                out=args.out, preset=preset.name)
        model = _run(TrainingRun(job), ProgressPrinter())
        if model.recommendation:
            print(f"strategy: {model.strategy} (auto: {model.recommendation['reason']})", file=sys.stderr)
        print(model.evaluation.summary(), file=sys.stderr)
        print(f"best epoch {model.training['best_epoch']}, {model.training['seconds']}s; saved to {args.out}",
              file=sys.stderr)
        if args.json:
            print(_json({"out": str(args.out), "backbone": model.backbone, "strategy": model.strategy,
                              **model.evaluation.to_dict(with_files=False)}))
        return 0


#: train's options that a preset sets (their argparse dests; None: not given).
PRESET_OPTIONS = ("backbone", "strategy", "epochs", "image_size", "lr", "body_lr", "label_smoothing", "cache_views",
                  "cache_frozen", "frozen_stages")


def _preset_line(preset, args: argparse.Namespace) -> str:
    """ "preset quick: head, 15 epochs, ... (given: --epochs 3)": what the run starts from and what overrides it."""
    given = [f"--{dest.replace('_', '-')} {getattr(args, dest)}" for dest in PRESET_OPTIONS
             if getattr(args, dest) is not None]
    own = ", ".join(f"{k} {v}" for k, v in preset.settings().items() if k != "max_per_class")
    return f"preset {preset.name}: {own}" + (f" (overridden: {', '.join(given)})" if given else "")


@command("evaluate")
def cmd_evaluate(args: argparse.Namespace) -> int:
    from .api import evaluate
    from .device import select_device
    from .model import load_model

    device = select_device(args.device)
    model = load_model(args.model, device=device.device)
    with _dataset(_data_source(args.data)) as data:
        report = evaluate(model, data, device=device, batch_size=args.batch_size)
    if args.json:
        print(_json(report.to_dict()))
    else:
        print(report.summary())
        for w in report.misclassified[:20]:
            print(f"  wrong: {w['image']}: {w['true']} predicted as {w['predicted']} ({w['confidence']:.0%})")
    return 0


@command("predict")
def cmd_predict(args: argparse.Namespace) -> int:
    from .api import predict
    from .data import open_image
    from .device import select_device
    from .errors import DataError
    from .service import open_model

    device = select_device(args.device)
    model = open_model(args.model, revision=args.revision, token=args.token, endpoint=args.endpoint,
                       device=device.device)
    failed = 0
    for path in args.images:
        try:
            image = open_image(path, max_side=2 * model.preprocessing.resize_size)  # a huge file is shrunk at once
            top = predict(model, [image], k=args.top_k)[0]
        except DataError as e:
            failed += 1
            if args.json:
                print(_json({"image": path, "error": str(e)}))
            else:
                print(f"{path}: error: {e}", file=sys.stderr)
            continue
        if args.json:
            print(_json({"image": path, "top_k": [{"label": k, "prob": v} for k, v in top.items()]}))
        else:
            print(f"{path}: " + ", ".join(f"{k} {v:.1%}" for k, v in top.items()))
    return 1 if failed else 0


@command("inspect")
def cmd_inspect(args: argparse.Namespace) -> int:
    with _dataset(_data_source(args.data)) as report:
        print(_json(report.to_dict()) if args.json else report.summary())
    return 0


@command("recommend")
def cmd_recommend(args: argparse.Namespace) -> int:
    from .advisor import recommend
    from .device import select_device

    with _dataset(_data_source(args.data)) as report:
        rec = recommend(report, device=select_device(args.device))
    if args.json:
        print(_json(rec.to_dict()))
    else:
        print(f"{rec.strategy}: {rec.reason}")
    return 0


@command("backbones")
def cmd_backbones(args: argparse.Namespace) -> int:
    from .nets.registry import get_backbone, list_backbones, pretrained_available

    for name in list_backbones():
        b = get_backbone(name)
        ready = "weights ready" if pretrained_available(name) else "weights: download on first use"
        stages = f"{b.num_stages} stages: truncate keeps {b.default_cut}, finetune freezes {b.finetune_frozen}"
        print(f"{name:<20} {b.title}  ({ready}; {stages})")
    return 0


@command("presets")
def cmd_presets(args: argparse.Namespace) -> int:
    from .presets import presets_table

    print(presets_table())
    print("\nExplicit options of `train` override these. On a GPU the \"on a GPU\" column's settings replace the "
          "others; with a backbone other than the preset's, the \"another backbone\" column's do (then the GPU's).")
    return 0


@command("strategies")
def cmd_strategies(args: argparse.Namespace) -> int:
    from .nets.strategies import STRATEGIES

    for s in STRATEGIES.values():
        print(f"{s.name:<9} {s.title}: {s.summary}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, like every other error of the CLI (``--help`` shows the usage)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _whole(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``lo`` (to ``hi``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {f'from {lo} to {hi}' if hi is not None else f'at least {lo}'}"
                                             f", got {value}")
        return value
    return parse


def _number(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in the interval; NaN and infinity are refused."""
    span = f"{'above' if lo_open else 'at least'} {lo:g} and {'below' if hi_open else 'at most'} {hi:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        above = value > lo if lo_open else value >= lo
        below = value < hi if hi_open else value <= hi
        if not (math.isfinite(value) and above and below):
            raise argparse.ArgumentTypeError(f"must be a number {span}, got {text}")
        return value
    return parse


def _backbone_name(name: str) -> str:
    """argparse type for --backbone: checked when given, so that `--help` needs no torch."""
    from .nets.registry import list_backbones

    if name not in list_backbones():
        raise argparse.ArgumentTypeError(f"invalid choice: {name!r} (choose from {', '.join(list_backbones())})")
    return name


def _strategy_name(name: str) -> str:
    """argparse type for --strategy, checked like :func:`_backbone_name`."""
    from .nets.strategies import STRATEGIES

    if name not in (*STRATEGIES, "auto"):
        raise argparse.ArgumentTypeError(f"invalid choice: {name!r} (choose from {', '.join([*STRATEGIES, 'auto'])})")
    return name


def build_parser() -> argparse.ArgumentParser:
    from .presets import DEFAULT_PRESET, PRESETS

    p = _Parser(prog="python -m xfer", description="Transfer learning for image classification.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a classifier and save it to a folder",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="presets (--preset; options marked (preset) override their settings):\n"
                              + "\n".join(f"  {p.describe()}" for p in PRESETS.values()))
    t.add_argument("--data", required=True, help="a folder of class folders, a .zip of one, or 'flowers' (the "
                   "bundled photos, unless a folder named flowers is here: that folder is used)")
    t.add_argument("--out", required=True, type=Path,
                   help="folder to save the model in: new, empty, or an xfer model folder (replaced); never "
                        "inside the data")
    # (preset): None means "not given", so that the preset's value is used (xfer/presets.py).
    t.add_argument("--preset", choices=list(PRESETS), default=None,
                   help=f"a recipe that sets the options marked (preset) below; explicit options override it "
                        f"(default {DEFAULT_PRESET}; `presets` lists their settings). "
                        + "; ".join(f"{p.name}: {p.summary}" for p in PRESETS.values()))
    t.add_argument("--backbone", type=_backbone_name, default=None, metavar="NAME",
                   help="(preset) one of `backbones`")
    t.add_argument("--strategy", type=_strategy_name, default=None, metavar="NAME",
                   help="(preset) one of `strategies`, or auto (the advisor picks)")
    t.add_argument("--weights", default="imagenet", help="imagenet | none | PATH to a state dict")
    t.add_argument("--epochs", type=_whole(1), default=None, help="(preset)")
    t.add_argument("--image-size", type=_whole(16, 1024), default=None, help="(preset)")
    t.add_argument("--batch-size", type=_whole(1), default=32)
    t.add_argument("--lr", type=_number(0, 10, lo_open=True), default=None,
                   help="(preset) default: the strategy's (adamw: 1e-3 head/truncate, 3e-3 finetune/scratch) "
                        "or 1e-2 (sgd)")
    t.add_argument("--body-lr", type=_number(0, 10, lo_open=True), default=None,
                   help="(preset) a trained body's learning rate (default: the preset's, else lr times the "
                        "strategy's body multiplier: finetune 0.1, scratch 1)")
    t.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    t.add_argument("--weight-decay", type=_number(0, 10), default=1e-4)
    t.add_argument("--label-smoothing", type=_number(0, 1, hi_open=True), default=None, help="(preset)")
    t.add_argument("--no-augment", action="store_true", help="no random resized crop and flip")
    t.add_argument("--cache-views", type=_whole(1), default=None,
                   help="(preset) frozen strategies: views cached per image (1 clean + N-1 augmented)")
    t.add_argument("--cache-frozen", action=argparse.BooleanOptionalAction, default=None,
                   help="(preset) finetune: run the frozen first stages once per image (and cached view) and "
                        "train the rest on their outputs (fast; no fresh augmentation each epoch)")
    t.add_argument("--patience", type=_whole(1), default=None, help="early stopping after N epochs without improvement")
    t.add_argument("--cut", type=_whole(1), default=None, help="truncate: number of backbone stages kept")
    t.add_argument("--reinit", type=_whole(0), default=0, help="finetune: re-initialise the last N backbone layers")
    t.add_argument("--frozen-stages", type=_whole(0), default=None,
                   help="(preset) finetune: the first N backbone stages stay frozen (default: the preset's "
                        "for its strategy and backbone, else the backbone's, see `backbones`; 0 trains every layer)")
    t.add_argument("--val-fraction", type=_number(0, 1, lo_open=True, hi_open=True), default=0.2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    t.add_argument("--workers", type=_whole(0), default=None, help="data loader workers (default: per device)")
    t.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    t.add_argument("--decode", choices=["auto", "cpu", "gpu"], default="auto",
                   help="where JPEGs are decoded (auto: on the GPU with CUDA, else by loader workers)")
    t.add_argument("--feature-batch", type=_whole(1), default=None,
                   help="batch size of the frozen-body feature pass (default: per device)")
    t.add_argument("--json", action="store_true", help="print a JSON summary on stdout")

    e = sub.add_parser("evaluate", help="accuracy, per-class metrics and confusion matrix on labelled data")
    e.add_argument("model", type=Path)
    e.add_argument("--data", required=True)
    e.add_argument("--batch-size", type=_whole(1), default=32)
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true")

    pr = sub.add_parser("predict", help="top-k class probabilities for images",
                        description="MODEL is a model folder, or a Hub repo: hf://user/name[@revision] "
                                    "(or user/name when no such folder exists), pulled once into the HF cache.")
    pr.add_argument("model", help="a model folder, or hf://user/name[@revision]")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--top-k", type=_whole(1), default=5)
    pr.add_argument("--device", default="auto")
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--revision", default=None, help="Hub models: a branch, tag or commit (default: main)")
    pr.add_argument("--token", default=None, help="Hub models: a token for a private repo (default: HF_TOKEN "
                                                  "or the stored login)")
    pr.add_argument("--endpoint", default=None, help="Hub models: the Hub's address (default: HF_ENDPOINT)")

    for name, helptext in (("inspect", "report on a dataset"), ("recommend", "advise a strategy for a dataset")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("data")
        s.add_argument("--json", action="store_true")
        if name == "recommend":
            s.add_argument("--device", default="cpu")

    sub.add_parser("backbones", help="list the available backbones")
    sub.add_parser("strategies", help="list the four strategies")
    sub.add_parser("presets", help="list the presets of `train --preset` and their settings")
    _add_hub_commands(sub)
    _add_export_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    from .errors import XferError

    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except XferError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)  # one line: XferError drops a DataLoader worker's traceback
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was saved.", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: still one line unless --debug
        if debug:
            raise
        cause = _worker_error(e)
        what = f"{cause} (in a data loader worker)" if cause else f"{type(e).__name__}: {_first_line(e)}"
        print(f"error: unexpected {what} (run with --debug for details)", file=sys.stderr)
        return 1


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def _worker_error(e: BaseException) -> str | None:
    """``Type: message`` of the exception a DataLoader worker raised, or None.

    torch re-raises a worker's exception in the main process with the worker's whole
    traceback as its message ("Caught X in DataLoader worker process 0.\\nOriginal Traceback
    ..."); its last line is what the worker raised.
    """
    text = str(e)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = lines[-1]
    kind, sep, message = last.partition(": ")
    return f"{kind.rsplit('.', 1)[-1]}: {message}" if sep else last


# --- the Hugging Face Hub: push / pull (huggingface_hub is imported only when one of them runs) -----------------


@command("push")
def cmd_push(args: argparse.Namespace) -> int:
    from .hub import push

    result = push(args.model, args.repo_id, token=args.token, private=args.private, commit_message=args.message,
                  endpoint=args.endpoint, with_onnx=args.with_onnx)
    if args.json:
        print(_json({"repo_id": args.repo_id, "url": result.url, "commit_id": result.commit_id}))
    else:
        print(f"pushed {args.model} to {result.url} (commit {result.commit_id})")
    return 0


@command("pull")
def cmd_pull(args: argparse.Namespace) -> int:
    from .hub import pull_to
    from .model import read_config

    out = pull_to(args.repo_id, args.out, revision=args.revision, token=args.token, endpoint=args.endpoint)
    cfg = read_config(out)
    if args.json:
        print(_json({"repo_id": args.repo_id, "out": str(out), "backbone": cfg["backbone"],
                          "strategy": cfg["strategy"], "classes": cfg["classes"]}))
    else:
        print(f"pulled {args.repo_id}{'@' + args.revision if args.revision else ''} to {out}: {cfg['backbone']}, "
              f"{cfg['strategy']} strategy, {len(cfg['classes'])} classes")
    return 0


def _add_hub_commands(sub: argparse._SubParsersAction) -> None:
    token_help = "a Hugging Face access token (default: HF_TOKEN, else the `hf auth login` token)"
    endpoint_help = "the Hub's address (default: HF_ENDPOINT, else https://huggingface.co)"
    ps = sub.add_parser("push", help="upload a saved model to the Hugging Face Hub")
    ps.add_argument("model", type=Path, help="the model folder (`xfer train --out`)")
    ps.add_argument("repo_id", help="user/name of the Hub repo (created if missing)")
    ps.add_argument("--private", action="store_true", help="create the repo as private")
    ps.add_argument("--token", default=None, help=token_help)
    ps.add_argument("--message", default=None, help="the commit message")
    ps.add_argument("--endpoint", default=None, help=endpoint_help)
    ps.add_argument("--with-onnx", action="store_true",
                    help="also upload model.onnx (the model exported by `xfer export`; needs onnx and onnxscript)")
    ps.add_argument("--json", action="store_true", help="print the URL and commit id as JSON")

    pl = sub.add_parser("pull", help="download a model from the Hugging Face Hub into a folder")
    pl.add_argument("repo_id", help="user/name of the Hub repo")
    pl.add_argument("--out", required=True, type=Path, help="folder to write the model to (replaced atomically)")
    pl.add_argument("--revision", default=None, help="branch, tag or commit id (default: main)")
    pl.add_argument("--token", default=None, help=token_help)
    pl.add_argument("--endpoint", default=None, help=endpoint_help)
    pl.add_argument("--json", action="store_true", help="print a JSON summary")


# --- export ------------------------------------------------------------------------------------------------


@command("export")
def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_onnx, read_metadata

    out = export_onnx(args.model, args.out)
    meta = read_metadata(out)
    if args.json:
        print(_json({"out": str(out), "format": args.format, "bytes": out.stat().st_size,
                          "classes": meta["xfer_classes"], "preprocessing": meta["xfer_preprocessing"]}))
    else:
        print(f"exported {args.model} to {out} ({args.format}, {out.stat().st_size / 1e6:.1f} MB, "
              f"{len(meta['xfer_classes'])} classes, dynamic batch; checked against onnxruntime)")
    return 0


def _export_format(name: str) -> str:
    """argparse type for export --format: xfer.export (torch) is imported only when export is parsed."""
    from .export import FORMATS

    if name not in FORMATS:
        raise argparse.ArgumentTypeError(f"invalid choice: {name!r} (choose from {', '.join(FORMATS)})")
    return name


def _add_export_command(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("export", help="export a saved model for other runtimes (ONNX)")
    ex.add_argument("model", type=Path, help="the model folder (`xfer train --out`)")
    ex.add_argument("--format", type=_export_format, default="onnx", metavar="FORMAT",
                    help="the file format (onnx)")
    ex.add_argument("--out", required=True, type=Path, help="the file to write (NAME.onnx; replaced atomically)")
    ex.add_argument("--json", action="store_true", help="print a JSON summary")
