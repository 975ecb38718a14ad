"""Data-parallel training under a launcher: torchrun, or anything that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR.

Without a launcher (or with a world of one process) every function here is a no-op and
the process is rank 0 of 1, so single-process training is unchanged. Under one:

* :func:`device_name` maps ``auto``/``cuda`` to ``cuda:LOCAL_RANK`` (the device is still chosen
  once, at the edge, by the CLI or :func:`xfer.train`);
* :func:`process_group` joins the other processes (NCCL on CUDA, gloo otherwise) with a
  timeout, and destroys the group on the way out;
* :func:`local_batches` gives each rank its slice of every global batch (``batch_size`` per
  process, ``batch_size * world_size`` in all), from one order that every rank draws alike;
* :func:`wrap` puts DistributedDataParallel around the trainable module;
* :func:`gather_rows`, :func:`all_mean`, :func:`all_sum`, :func:`broadcast_values` and
  :func:`broadcast_module` move the few things ``fit`` shares: cached features, validation
  outputs, epoch statistics, the starting weights;
* :func:`failures` turns a lost peer (killed, crashed, timed out) into one
  :class:`DistributedError` line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterator, Sequence, TypeVar

import torch
from torch import nn

from .errors import ConfigError, XferError

log = logging.getLogger(__name__)

LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")
#: Seconds a collective may wait for the other processes before the run fails (default 600).
TIMEOUT_ENV = "XFER_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600
#: A folder: each rank appends the dataset indices of its training batches to ``rank<R>.jsonl`` (for tests).
RECORD_ENV = "XFER_DDP_RECORD"
#: ``"R:N"``: rank R kills itself (SIGKILL) when its N-th training batch is drawn (for tests of a lost rank);
#: ``"R:N:stop"`` stops it instead (SIGSTOP: a hung process, which only the timeout ends).
KILL_ENV = "XFER_TEST_KILL"

T = TypeVar("T")


class DistributedError(XferError):
    """The processes of a data-parallel run could not start together, or one of them was lost."""


@dataclass(frozen=True)
class Launch:
    """What a launcher told this process."""

    rank: int
    world_size: int
    local_rank: int


def launch() -> Launch | None:
    """This process's place in a launched run, from the environment; None without a launcher or with one process."""
    env = os.environ
    if not all(env.get(k) for k in LAUNCH_ENV):
        return None
    try:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun or another "
                          "launcher).") from None
    if world < 2:
        return None
    if not 0 <= rank < world or local < 0:
        raise ConfigError(f"RANK {rank} / LOCAL_RANK {local} do not fit WORLD_SIZE {world}.")
    return Launch(rank, world, local)


def _group():
    """torch.distributed when a process group of several processes is up, else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def active() -> bool:
    """Whether a process group of more than one process is up (data-parallel training is on)."""
    return _group() is not None


def rank() -> int:
    """This process's rank: from the process group when it is up, else from the launcher, else 0."""
    dist = _group()
    if dist is not None:
        return dist.get_rank()
    la = launch()
    return la.rank if la else 0


def world_size() -> int:
    """The number of processes training together (1 without a launcher)."""
    dist = _group()
    if dist is not None:
        return dist.get_world_size()
    la = launch()
    return la.world_size if la else 1


def is_main() -> bool:
    """Rank 0: the one process that prints progress and saves."""
    return rank() == 0


def device_name(requested: str = "auto") -> str:
    """The device to ask :func:`xfer.device.select_device` for: ``cuda:LOCAL_RANK`` for "auto"/"cuda" under a launcher."""
    la = launch()
    if la is None or requested not in ("auto", "cuda") or not torch.cuda.is_available():
        return requested
    if la.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {la.local_rank} but only {torch.cuda.device_count()} GPUs are visible: "
                          "start at most one process per GPU (--nproc-per-node).")
    return f"cuda:{la.local_rank}"


def timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}.") from None
    if value <= 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be positive, got {raw!r}.")
    return value


@contextlib.contextmanager
def process_group(device: torch.device | str) -> Iterator[bool]:
    """Join the launched run's other processes for the block; yields whether training is data-parallel.

    NCCL when ``device`` is a CUDA device, gloo otherwise. A group that is already up (the
    caller's own) is used and left up; one made here is destroyed on exit, also on errors.
    Without a launcher: nothing, yields False.
    """
    import torch.distributed as dist

    la = launch()
    if la is None or (dist.is_available() and dist.is_initialized()):
        yield active()
        return
    if not dist.is_available():
        raise DistributedError("this PyTorch build has no torch.distributed: run without torchrun.")
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s()),
                                device_id=device if cuda else None)
    except (RuntimeError, ValueError) as e:
        raise DistributedError(f"rank {la.rank} could not join the other {la.world_size - 1} processes at {where} "
                               f"({_first_line(e)}).") from None
    log.info("rank %d of %d joined the process group (%s)", la.rank, la.world_size, dist.get_backend())
    try:
        yield True
    finally:
        dist.destroy_process_group()


def _first_line(e: BaseException) -> str:
    """The gist of a backend's message: its first sentence, without gloo's ``[source.cc:123]`` prefix."""
    text = str(e).strip()
    line = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0]) if text else type(e).__name__
    return line.split(". ")[0].rstrip(".")[:200]


def _lost_peer(e: BaseException) -> bool:
    """Whether ``e`` says a collective failed: a peer died or hung, not a bug in this process."""
    import torch.distributed as dist

    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return any(s in text for s in ("gloo", "Gloo", "NCCL", "Connection closed", "Connection reset",
                                   "Broken pipe", "timed out", "Timed out", "ProcessGroup"))


@contextlib.contextmanager
def failures() -> Iterator[None]:
    """Within the block, a collective that fails because another process was lost raises :class:`DistributedError`."""
    try:
        yield
    except RuntimeError as e:
        if launch() is None or not _lost_peer(e):
            raise
        raise DistributedError(f"rank {rank()}: another process of this {world_size()}-process run failed, was "
                               f"killed or timed out ({_first_line(e)}); nothing was saved.") from None


@contextlib.contextmanager
def stopped_as_error() -> Iterator[None]:
    """Under a launcher, SIGTERM within the block raises :class:`DistributedError` (one line, nothing saved).

    torchrun's agent sends SIGTERM to the processes left when one of them fails (a cluster
    scheduler does when it cancels a job); by default that ends a process silently. Main thread only.
    """
    if launch() is None:
        yield
        return

    def stop(signum, frame):
        raise DistributedError(f"rank {rank()}: stopped by SIGTERM (the launcher stops the others when one process "
                               "of the run fails; a scheduler when it cancels the job); nothing was saved.")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def barrier() -> None:
    dist = _group()
    if dist is not None:
        dist.barrier()


# --- sharding ------------------------------------------------------------------------------------------


def shard_bounds(n: int, r: int | None = None, w: int | None = None) -> tuple[int, int]:
    """Rank ``r``'s contiguous share [lo, hi) of ``n`` items; shares differ in size by at most one."""
    r = rank() if r is None else r
    w = world_size() if w is None else w
    q, m = divmod(n, w)
    lo = r * q + min(r, m)
    return lo, lo + q + (1 if r < m else 0)


def num_batches(n: int, global_batch: int, drop_last: bool) -> int:
    return n // global_batch if drop_last else -(-n // global_batch)


def local_batches(order: Sequence[T], batch_size: int, drop_last: bool,
                  shard: tuple[int, int]) -> list[Sequence[T]]:
    """Rank ``shard[0]``'s part of each global batch of ``order`` (``batch_size`` per rank, ``shard[1]`` ranks).

    Global batch k is ``order[k*B*W : (k+1)*B*W]``, what one process with batch size B*W
    would take; the ranks split it in contiguous slices, so that the union of their
    batches at every step is that batch and the averaged gradient is its gradient.
    """
    r, w = shard
    g = batch_size * w
    out = []
    for k in range(num_batches(len(order), g, drop_last)):
        batch = order[k * g : (k + 1) * g]
        lo, hi = shard_bounds(len(batch), r, w)
        out.append(batch[lo:hi])
    return out


# --- collectives ---------------------------------------------------------------------------------------


def _comm_device(dist) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """All ranks' shares (as :func:`shard_bounds` cuts ``n`` rows) concatenated in rank order, on every rank."""
    dist = _group()
    if dist is None:
        return t
    w = dist.get_world_size()
    counts = [hi - lo for lo, hi in (shard_bounds(n, r, w) for r in range(w))]
    if len(t) != counts[dist.get_rank()]:
        raise RuntimeError(f"gather_rows: rank {dist.get_rank()} has {len(t)} rows, expected "
                           f"{counts[dist.get_rank()]} of {n}")
    home = t.device
    buf = t.to(_comm_device(dist))
    pad = max(counts) - len(t)
    if pad:  # all_gather takes equal shapes
        buf = torch.cat([buf, buf.new_zeros((pad, *buf.shape[1:]))])
    parts = [torch.empty_like(buf) for _ in range(w)]
    dist.all_gather(parts, buf.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).to(home)


def _reduce(values: Sequence[float], mean: bool) -> list[float]:
    dist = _group()
    if dist is None:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device(dist))
    dist.all_reduce(t)
    if mean:
        t /= dist.get_world_size()
    return t.tolist()


def all_sum(values: Sequence[float]) -> list[float]:
    """The element-wise sum of ``values`` over the ranks."""
    return _reduce(values, mean=False)


def all_mean(values: Sequence[float]) -> list[float]:
    """The element-wise mean of ``values`` over the ranks."""
    return _reduce(values, mean=True)


def broadcast_values(values: Sequence[float]) -> list[float]:
    """Rank 0's ``values`` on every rank: decisions taken on them are then identical everywhere."""
    dist = _group()
    if dist is None:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device(dist))
    dist.broadcast(t, src=0)
    return t.tolist()


@torch.no_grad()
def broadcast_module(module: nn.Module, buffers_only: bool = False) -> None:
    """Overwrite ``module``'s parameters (or only its buffers, e.g. batch-norm statistics) with rank 0's."""
    dist = _group()
    if dist is None:
        return
    comm = _comm_device(dist)
    tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
    for t in tensors:
        if t.device == comm:
            dist.broadcast(t.data, src=0)
        else:  # gloo takes CPU tensors, NCCL CUDA ones
            tmp = t.data.to(comm)
            dist.broadcast(tmp, src=0)
            t.data.copy_(tmp)


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel when data-parallel, else ``module`` itself.

    Buffers are not broadcast at every step (rank 0's would overwrite the others' anyway);
    ``fit`` copies rank 0's once after each epoch with :func:`broadcast_module`.
    """
    if not active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" \
        else None
    # torch 2.14 renamed broadcast_buffers to forward_sync_buffers (both still sync buffers once, at init).
    import inspect

    sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters \
        else "broadcast_buffers"
    return DistributedDataParallel(module, device_ids=ids, **{sync: False})


# --- a record of the shards, and a lost rank, for tests ------------------------------------------------

_batches_drawn = 0


def note_batch(epoch: int, indices) -> None:
    """Called by the sharded batchers for each training batch: the test hooks of :data:`RECORD_ENV` and :data:`KILL_ENV`.

    ``indices``: the batch's dataset indices (a tensor or a list). Costs nothing when neither is set.
    """
    global _batches_drawn
    record, kill = os.environ.get(RECORD_ENV), os.environ.get(KILL_ENV)
    if not record and not kill:
        return
    _batches_drawn += 1
    r = rank()
    if record:
        ids = indices.tolist() if isinstance(indices, torch.Tensor) else [int(i) for i in indices]
        with open(Path(record) / f"rank{r}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"rank": r, "world_size": world_size(), "epoch": epoch, "indices": ids}) + "\n")
    if kill:
        parts = kill.split(":")
        who, after, how = parts[0], parts[1] if len(parts) > 1 else "1", parts[2] if len(parts) > 2 else "kill"
        if who.strip() == str(r) and _batches_drawn == int(after):
            log.warning("rank %d %ss itself (%s=%s)", r, how, KILL_ENV, kill)
            os.kill(os.getpid(), signal.SIGSTOP if how == "stop" else signal.SIGKILL)
