"""Run by tests/test_distributed.py under torchrun: ``fit`` data-parallel, then (rank 0, process group gone) alone.

``python -m torch.distributed.run --standalone --nproc-per-node=2 tests/ddp_fit_driver.py DATA OUT BATCH``

For each run (RUNS), every rank writes ``OUT/<strategy>-rank<R>.pt`` (its weights, history and validation
output) and rank 0 then writes ``OUT/<strategy>-single.pt``: the data-parallel net evaluated alone on the whole
validation set and, for ``head``, the same net and data trained by one process with the global batch
(BATCH x world size), the run that data-parallel training must reproduce. The heads have no dropout (its masks
are per process, so no data-parallel run can reproduce a lone one's), and nothing is augmented.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xfer import distributed  # noqa: E402
from xfer.data import load_dataset, split_dataset  # noqa: E402
from xfer.data.pipeline import make_loader  # noqa: E402
from xfer.data.transforms import ImageDataset, make_transform  # noqa: E402
from xfer.device import select_device  # noqa: E402
from xfer.engine import TrainConfig, evaluate, fit  # noqa: E402
from xfer.nets.registry import get_backbone  # noqa: E402
from xfer.nets.strategies import build_network, make_spec  # noqa: E402

#: Run name -> (strategy, TrainConfig.cache_frozen): "cached" is finetune on its frozen stages' cached outputs.
RUNS = {"head": ("head", False), "finetune": ("finetune", False), "cached": ("finetune", True)}


def run(name: str, data: Path, batch: int, record: Path | None):
    strategy, cache_frozen = RUNS[name]
    if record is not None:
        record.mkdir(parents=True, exist_ok=True)
        os.environ[distributed.RECORD_ENV] = str(record)
    report = load_dataset(data)
    train_items, val_items = split_dataset(report, 0.25, seed=0)
    torch.manual_seed(0)
    net = build_network(make_spec("resnet18", strategy, len(report.classes), dropout=0.0), weights=None)
    pre = get_backbone("resnet18").get_preprocessing().for_size(32)
    config = TrainConfig(epochs=2, batch_size=batch, augment=False, seed=0, cache_frozen=cache_frozen)
    result = fit(net, strategy, train_items, val_items, pre, config, select_device("cpu", num_workers=0))
    os.environ.pop(distributed.RECORD_ENV, None)
    return result, val_items, pre


def summary(result) -> dict:
    return {"state": {k: v.detach().clone() for k, v in result.net.state_dict().items()},
            "history": [vars(h) for h in result.history], "best_epoch": result.best_epoch,
            "val_probs": result.val_output.probs, "val_targets": result.val_output.targets}


def main() -> None:
    data, out, batch = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    with distributed.process_group("cpu") as parallel:
        assert parallel, "run me under torchrun"
        rank, world = distributed.rank(), distributed.world_size()
        ddp = {s: run(s, data, batch, out / f"record-{s}") for s in RUNS}
        for s, (result, _, _) in ddp.items():
            torch.save(summary(result), out / f"{s}-rank{rank}.pt")
    if rank != 0:
        return
    for s, (result, val_items, pre) in ddp.items():
        loader = make_loader(ImageDataset(val_items, make_transform(pre), 64), 8, select_device("cpu", num_workers=0),
                             shuffle=False)
        alone = evaluate(result.net, loader, select_device("cpu", num_workers=0))
        # finetune trains batch norms, which normalise by each process's own images: no lone run to match.
        single = summary(run(s, data, batch * world, None)[0]) if s == "head" else {}
        torch.save({**single, "ddp_net_alone_probs": alone.probs, "ddp_net_alone_targets": alone.targets},
                   out / f"{s}-single.pt")


if __name__ == "__main__":
    main()
