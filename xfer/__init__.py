"""xfer: transfer learning for image classification.

The public API::

    import xfer
    report = xfer.load_dataset("flowers")              # or a folder / .zip of class folders
    model = xfer.train(report, backbone="vgg16", strategy="auto", out="models/flowers")
    xfer.predict(model, ["photo.jpg"], k=5)            # [{label: probability, ...}]
    xfer.evaluate(model, "holdout/")                   # accuracy, per-class metrics, confusion matrix
    model = xfer.load_model("models/flowers")
"""

__version__ = "0.1.0"

import os as _os

# Idle OpenMP threads spin by default: in CPU training that cost about 10% more CPU time for the
# same wall time (bench/cpu_runtime.py), time taken from the data loader and from whoever shares the
# machine. libgomp reads this once, when torch loads it, so it only applies when xfer is imported
# before torch; a value set by the user wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Names are imported from their modules on first use (PEP 562), so `import xfer`, `xfer --help`
# and a command that needs no training code do not pay for torch, torchvision or the trainer.
_LAZY = {
    "Recommendation": "advisor", "recommend": "advisor",
    "default_backbone": "api", "evaluate": "api", "predict": "api", "predict_proba": "inference", "train": "api",
    "get_backbone": "nets.registry", "list_backbones": "nets.registry", "pretrained_available": "nets.registry",
    "DatasetReport": "data", "load_dataset": "data", "open_image": "data", "split_dataset": "data",
    "DeviceInfo": "device", "select_device": "device",
    "EpochStats": "engine", "Progress": "engine", "TrainConfig": "engine", "fit": "engine",
    "Cancelled": "errors", "ConfigError": "errors", "DataError": "errors", "HubError": "errors",
    "ModelError": "errors", "WeightsError": "errors", "XferError": "errors",
    "EvalReport": "evaluation",
    "XferModel": "model", "load_model": "model", "save_model": "model",
    "STRATEGIES": "nets.strategies", "get_strategy": "nets.strategies",
    "Done": "run", "Failed": "run", "TrainingRun": "run",
}


def __getattr__(name: str):
    import importlib

    if name == "hub":  # push/pull (imports huggingface_hub only when called)
        return importlib.import_module(".hub", __name__)
    if name not in _LAZY:
        raise AttributeError(f"module 'xfer' has no attribute {name!r}")
    value = getattr(importlib.import_module("." + _LAZY[name], __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "Cancelled", "ConfigError", "DataError", "DatasetReport", "DeviceInfo", "Done", "EpochStats", "EvalReport",
    "Failed", "HubError", "hub", "ModelError", "Progress", "Recommendation", "STRATEGIES", "TrainConfig",
    "TrainingRun", "WeightsError", "XferError", "XferModel", "default_backbone", "evaluate", "fit", "get_backbone", "get_strategy",
    "list_backbones", "load_dataset", "load_model", "open_image", "predict", "predict_proba",
    "pretrained_available", "recommend", "save_model", "select_device", "split_dataset", "train",
]
