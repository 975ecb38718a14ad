"""What saving a model costs: the ways of writing VGG-16's 537 MB of weights, side by side.

Variants, interleaved over ``--rounds`` in one process (the peak-memory high-water mark is reset
before each through ``/proc/self/clear_refs``, so each reports its own extra memory):

* ``clone+save_file``: every tensor copied, then safetensors' ``save_file`` (xfer before issue 21);
* ``save_file``: only non-contiguous or shared tensors copied (``xfer.model._write_files`` now);
* ``save_file+fsync``: the same, then the file flushed to disk (what surviving a power cut needs);
* ``torch.save``: PyTorch's zip of pickles (for reference; xfer never writes it);
* ``xfer save_model``: the whole folder (weights, config, card, two renames).

    python bench/save_cost.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, loadavg, table, write_text


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="vgg16")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "save_cost.md"))
    args = p.parse_args(argv)

    import torch
    from safetensors.torch import save_file

    import xfer
    from xfer.model import XferModel, _tensors_to_write
    from xfer.nets.registry import get_backbone
    from xfer.nets.strategies import build_network, make_spec

    spec = make_spec(args.backbone, "head", 5)
    net = build_network(spec, weights=None)
    pre = get_backbone(args.backbone).get_preprocessing()
    model = XferModel(net=net, spec=spec, classes=[f"c{i}" for i in range(5)], preprocessing=pre)
    state = net.state_dict()
    size_mb = sum(v.numel() * v.element_size() for v in state.values()) / 2**20

    def clone_save(path: Path) -> None:
        save_file({k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}, str(path))

    def plain_save(path: Path) -> None:
        save_file(_tensors_to_write(net.state_dict()), str(path))

    def fsync_save(path: Path) -> None:
        plain_save(path)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def torch_save(path: Path) -> None:
        torch.save(net.state_dict(), path)

    def folder_save(path: Path) -> None:
        xfer.save_model(model, path.with_suffix(""))

    variants = {"clone+save_file": clone_save, "save_file": plain_save, "save_file+fsync": fsync_save,
                "torch.save": torch_save, "xfer save_model (folder)": folder_save}
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    extra: dict[str, list[float]] = {k: [] for k in variants}
    loads = [loadavg()]
    with tempfile.TemporaryDirectory(prefix="xfer-save-", dir=ROOT.parent if os.access(ROOT.parent, os.W_OK)
                                     else None) as tmp:
        for r in range(args.rounds):
            for name, fn in (variants.items() if r % 2 == 0 else reversed(variants.items())):
                path = Path(tmp) / f"{r}-{len(wall[name])}.bin"
                _reset_peak()
                base = _rss_mb("VmRSS")
                t, c = time.perf_counter(), time.process_time()
                fn(path)
                wall[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
                extra[name].append(_rss_mb("VmHWM") - base)
                for q in Path(tmp).iterdir():  # keep the disk use to one copy at a time
                    if q.is_dir():
                        import shutil

                        shutil.rmtree(q)
                    else:
                        q.unlink()
            loads.append(loadavg())
    rows = [[k, f"{statistics.median(wall[k]):.2f}", f"{statistics.median(cpu[k]):.2f}",
             f"{statistics.median(extra[k]):.0f}"] for k in variants]
    text = "\n".join([
        f"## Saving {args.backbone}'s weights ({size_mb:.0f} MB, `head` network)",
        "",
        f"Command: `python bench/save_cost.py --rounds {args.rounds}`  ",
        f"Median of {args.rounds} interleaved rounds (order reversed every other round), one process, files in "
        f"a temporary folder beside the checkout. Load average at the start of each round and the end: "
        f"{' → '.join(loads)} (2 shared cores: CPU seconds are steadier than wall seconds). Extra peak RSS: the "
        "high-water mark above the resident memory before the save.",
        "",
        table(["variant", "wall s", "CPU s", "extra peak RSS MB"], rows),
    ])
    print(text)
    if args.out != "-":
        write_text(Path(args.out), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
