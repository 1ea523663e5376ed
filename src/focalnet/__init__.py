"""focalnet: Focal Modulation Networks (Yang et al., NeurIPS 2022) for PyTorch.

The API mirrors Hugging Face `transformers`; state dicts are interchangeable with it.
"""

from .configuration import FocalNetConfig
from .modeling import (
    FocalNetBackbone,
    FocalNetForImageClassification,
    FocalNetForMaskedImageModeling,
    FocalNetModel,
    FocalNetPreTrainedModel,
)
from .outputs import (
    BackboneOutput,
    FocalNetImageClassifierOutput,
    FocalNetMaskedImageModelingOutput,
    FocalNetModelOutput,
)
from .presets import list_presets

__version__ = "0.1.0"

__all__ = [
    "BackboneOutput",
    "FocalNetBackbone",
    "FocalNetConfig",
    "FocalNetForImageClassification",
    "FocalNetForMaskedImageModeling",
    "FocalNetImageClassifierOutput",
    "FocalNetMaskedImageModelingOutput",
    "FocalNetModel",
    "FocalNetModelOutput",
    "FocalNetPreTrainedModel",
    "list_presets",
]
