"""focalnet: Focal Modulation Networks (Yang et al., NeurIPS 2022) for PyTorch.

The API mirrors Hugging Face `transformers`; state dicts are interchangeable with it.
"""

from .checkpoints import CheckpointError
from .configuration import FocalNetConfig
from .image_processing import FocalNetImageProcessor
from .masking import MaskGenerator
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
    SemanticSegmenterOutput,
)
from .presets import list_presets
from .registry import list_checkpoints
from .segmentation import UperNetConfig, UperNetForSemanticSegmentation

__version__ = "0.1.0"

__all__ = [
    "BackboneOutput",
    "CheckpointError",
    "FocalNetBackbone",
    "FocalNetConfig",
    "FocalNetForImageClassification",
    "FocalNetForMaskedImageModeling",
    "FocalNetImageClassifierOutput",
    "FocalNetImageProcessor",
    "FocalNetMaskedImageModelingOutput",
    "FocalNetModel",
    "FocalNetModelOutput",
    "FocalNetPreTrainedModel",
    "MaskGenerator",
    "SemanticSegmenterOutput",
    "UperNetConfig",
    "UperNetForSemanticSegmentation",
    "list_checkpoints",
    "list_presets",
]
