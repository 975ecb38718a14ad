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

from . import hub  # noqa: E402  (push/pull; imports huggingface_hub only when called)
from .advisor import Recommendation, recommend  # noqa: E402
from .api import default_backbone, evaluate, predict, predict_proba, train  # noqa: E402
from .data import DatasetReport, load_dataset, open_image, split_dataset  # noqa: E402
from .device import DeviceInfo, select_device  # noqa: E402
from .engine import EpochStats, Progress, TrainConfig, fit  # noqa: E402
from .errors import Cancelled, ConfigError, DataError, HubError, ModelError, WeightsError, XferError  # noqa: E402
from .evaluation import EvalReport  # noqa: E402
from .model import XferModel, load_model, save_model  # noqa: E402
from .nets.registry import get_backbone, list_backbones, pretrained_available  # noqa: E402
from .nets.strategies import STRATEGIES, get_strategy  # noqa: E402
from .run import Done, Failed, TrainingRun  # noqa: E402

__all__ = [
    "Cancelled", "ConfigError", "DataError", "DatasetReport", "DeviceInfo", "Done", "EpochStats", "EvalReport",
    "Failed", "HubError", "hub", "ModelError", "Progress", "Recommendation", "STRATEGIES", "TrainConfig",
    "TrainingRun", "WeightsError", "XferError", "XferModel", "default_backbone", "evaluate", "fit", "get_backbone", "get_strategy",
    "list_backbones", "load_dataset", "load_model", "open_image", "predict", "predict_proba",
    "pretrained_available", "recommend", "save_model", "select_device", "split_dataset", "train",
]
