"""Choosing the compute device, once, at the edge (CLI or app), and what it implies."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import threading
from dataclasses import dataclass

import torch

from .errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceInfo:
    """A device and the settings that make it fast.

    ``amp_dtype`` is the autocast dtype (None: full fp32). On CPU, autocast is off:
    bf16 autocast measured 30x slower than fp32 on this project's CPUs.
    ``decode`` says where JPEGs are decoded: "cpu" (DataLoader workers, Pillow) or
    "gpu" (nvJPEG on the device, see :mod:`xfer.data.pipeline`). ``feature_batch`` is the
    batch size of frozen-body passes (no gradients, so a GPU takes far larger batches
    than training does); None means the training batch size.
    """

    device: torch.device
    name: str
    amp_dtype: torch.dtype | None
    channels_last: bool
    pin_memory: bool
    num_workers: int
    decode: str = "cpu"
    feature_batch: int | None = None

    @property
    def type(self) -> str:
        return self.device.type

    @property
    def grad_scaler(self) -> bool:
        """fp16 needs loss scaling; bf16 does not."""
        return self.amp_dtype == torch.float16


def select_device(name: str = "auto", num_workers: int | None = None, decode: str = "auto",
                  feature_batch: int | None = None) -> DeviceInfo:
    """Resolve "auto" | "cpu" | "cuda[:N]" | "mps" to a :class:`DeviceInfo`.

    ``decode``: "auto" (nvJPEG on CUDA, else Pillow), "gpu" or "cpu".
    ``feature_batch``: None for the device's default (256 on CUDA).
    No side effects: process-wide tuning is :func:`configure_runtime`, called by the entry points.
    """
    cpus = os.cpu_count() or 1
    if num_workers is not None and not (isinstance(num_workers, int) and num_workers >= 0):
        raise ConfigError(f"The number of loader workers must be 0 or more, got {num_workers}.")
    if feature_batch is not None and not (isinstance(feature_batch, int) and feature_batch >= 1):
        raise ConfigError(f"The feature batch size must be at least 1, got {feature_batch}.")
    if decode not in ("auto", "cpu", "gpu"):
        raise ConfigError(f"Unknown decode {decode!r}: use auto, cpu or gpu.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if decode == "gpu" and not name.startswith("cuda"):
        raise ConfigError("JPEG decoding on the GPU needs a CUDA device: use --decode cpu.")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu or auto.")
        dev = torch.device(name)
        amp = torch.bfloat16 if _native_bf16(dev) else torch.float16
        # Workers only matter with decode="cpu"; leave one core to drive the GPU.
        workers = min(16, max(cpus - 1, 1)) if num_workers is None else num_workers
        return DeviceInfo(dev, f"GPU: {torch.cuda.get_device_name(dev)}", amp, True, True, workers,
                          decode="cpu" if decode == "cpu" else "gpu",
                          feature_batch=256 if feature_batch is None else feature_batch)
    if name == "mps":
        if not _mps_available():
            raise ConfigError("--device mps was asked for but Apple's MPS is not available: use --device cpu.")
        return DeviceInfo(torch.device("mps"), "Apple GPU (MPS)", None, False, False,
                          min(4, cpus) if num_workers is None else num_workers, feature_batch=feature_batch)
    if name == "cpu":
        # One loader worker overlaps JPEG decoding with compute; more would steal the cores.
        return DeviceInfo(torch.device("cpu"), f"CPU ({torch.get_num_threads()} threads)", None, True, False,
                          (1 if cpus > 1 else 0) if num_workers is None else num_workers,
                          feature_batch=feature_batch)
    raise ConfigError(f"Unknown device {name!r}: use auto, cpu, cuda or mps.")


def configure_runtime(device: DeviceInfo) -> None:
    """Process-wide tuning for training on ``device``; call it once, from an entry point (CLI, app, benchmark).

    On CUDA: cuDNN autotuning (input sizes are fixed) and TF32 for fp32 work outside autocast.
    Everywhere: the host's malloc keeps freed memory for reuse (:func:`keep_freed_memory`).
    """
    keep_freed_memory()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def _native_bf16(dev: torch.device) -> bool:
    """bf16 in hardware (Ampere and later); torch also says yes where it only emulates it, slowly."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch: no emulation flag
        return torch.cuda.get_device_capability(dev)[0] >= 8


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_malloc_lock = threading.Lock()
_malloc_state: dict[str, object] = {}


@functools.cache
def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, Windows, musl)
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory of any size for reuse; returns whether it is on.

    By default glibc maps every block over 32 MB afresh and unmaps it when freed, so each of a
    training step's large activations faults in fresh, zeroed pages; with mmap and trimming off they
    are reused instead (measured: README, "Process settings"). :func:`release_freed_memory` (called
    when ``fit`` ends) gives the free memory back. Process-wide and idempotent; Linux with glibc only;
    ``XFER_HOST_MALLOC=system`` keeps glibc's defaults.
    """
    with _malloc_lock:
        if "kept" not in _malloc_state:
            libc = None if os.environ.get("XFER_HOST_MALLOC", "").lower() == "system" else _libc()
            # mallopt returns 1 on success. -1 for the trim threshold: never trim (mallopt(3)).
            _malloc_state["kept"] = bool(libc) and libc.mallopt(_M_MMAP_MAX, 0) == 1 \
                and libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1
            log.debug("host malloc keeps freed memory: %s", _malloc_state["kept"])
        return bool(_malloc_state["kept"])


def release_freed_memory() -> None:
    """Return malloc's free memory to the system (glibc's ``malloc_trim``), e.g. after training."""
    if _malloc_state.get("kept"):
        _libc().malloc_trim(0)
