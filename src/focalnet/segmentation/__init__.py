"""Semantic segmentation: UperNet on FocalNet, as in the paper (SPEC 10).

    from focalnet import UperNetForSemanticSegmentation
    model = UperNetForSemanticSegmentation.from_backbone("focalnet-tiny", num_labels=150)
    logits = model(pixel_values).logits            # (B, 150, H, W) at the input size

The model needs only torch; data, training, prediction drawings need the `segmentation` extra.
"""

from .configuration import UperNetConfig
from .heads import UperNetFCNHead, UperNetHead
from .modeling import UperNetForSemanticSegmentation, is_upernet_directory

__all__ = ["UperNetConfig", "UperNetFCNHead", "UperNetForSemanticSegmentation", "UperNetHead", "is_upernet_directory"]
