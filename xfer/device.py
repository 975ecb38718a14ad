"""Choosing the compute device, once, at the edge (CLI or app), and what it implies."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import ConfigError


@dataclass(frozen=True)
class DeviceInfo:
    """A device and the settings that make it fast.

    ``amp_dtype`` is the autocast dtype (None: full fp32). On CPU, autocast is off:
    bf16 autocast measured 30x slower than fp32 on this project's CPUs.
    """

    device: torch.device
    name: str
    amp_dtype: torch.dtype | None
    channels_last: bool
    pin_memory: bool
    num_workers: int

    @property
    def type(self) -> str:
        return self.device.type

    @property
    def grad_scaler(self) -> bool:
        """fp16 needs loss scaling; bf16 does not."""
        return self.amp_dtype == torch.float16


def select_device(name: str = "auto", num_workers: int | None = None) -> DeviceInfo:
    """Resolve "auto" | "cpu" | "cuda[:N]" | "mps" to a :class:`DeviceInfo`."""
    cpus = os.cpu_count() or 1
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu or auto.")
        dev = torch.device(name)
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return DeviceInfo(dev, f"GPU: {torch.cuda.get_device_name(dev)}", amp, True, True,
                          min(8, cpus) if num_workers is None else num_workers)
    if name == "mps":
        if not _mps_available():
            raise ConfigError("--device mps was asked for but Apple's MPS is not available: use --device cpu.")
        return DeviceInfo(torch.device("mps"), "Apple GPU (MPS)", None, False, False,
                          min(4, cpus) if num_workers is None else num_workers)
    if name == "cpu":
        # One loader worker overlaps JPEG decoding with compute; more would steal the cores.
        return DeviceInfo(torch.device("cpu"), f"CPU ({torch.get_num_threads()} threads)", None, True, False,
                          (1 if cpus > 1 else 0) if num_workers is None else num_workers)
    raise ConfigError(f"Unknown device {name!r}: use auto, cpu, cuda or mps.")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
