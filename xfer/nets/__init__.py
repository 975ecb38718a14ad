"""Networks: the backbone registry, the strategy table and the one builder that reads both.

Importing this package registers every backbone (the torchvision ones in ``registry``, the
offline EfficientNet-Lites in ``lite``), the way ``timm.models`` registers its families.
"""

from . import lite  # noqa: F401  (registers the EfficientNet-Lite backbones)
from .registry import (
                       DEFAULT_BACKBONE,
                       Backbone,
                       WeightsLocation,
                       get_backbone,
                       list_backbones,
                       load_pretrained,
                       pretrained_available,
                       register,
)
from .strategies import (
                       STRATEGIES,
                       Classifier,
                       NetworkSpec,
                       Strategy,
                       backbone_network,
                       build_network,
                       classifier_layer,
                       get_strategy,
                       make_spec,
                       truncated_body,
)

__all__ = [
    "DEFAULT_BACKBONE", "STRATEGIES", "Backbone", "Classifier", "NetworkSpec", "Strategy", "WeightsLocation",
    "backbone_network", "build_network", "classifier_layer", "get_backbone", "get_strategy", "list_backbones",
    "load_pretrained", "make_spec", "pretrained_available", "register", "truncated_body",
]
