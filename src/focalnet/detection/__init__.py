"""FocalNet for object detection and instance segmentation on torchvision's detectors (SPEC 10).

    from focalnet.detection import maskrcnn_focalnet
    model = maskrcnn_focalnet("focalnet-tiny", num_classes=91)      # torchvision's MaskRCNN

Builders return torchvision's `FasterRCNN`, `MaskRCNN` and `RetinaNet`; `save_pretrained` and
`from_pretrained` store and rebuild them; `make_shapes_dataset` writes a small synthetic dataset to
try them on (COCO layout, or ADE20K layout for semantic segmentation). Needs the `detection` extra
(torchvision, pycocotools).
"""

from .backbone import DENSE_FOCAL_WINDOW, FocalNetFPN, dense_backbone
from .models import (
    DetectorConfig,
    build_detector,
    detector_config,
    fasterrcnn_focalnet,
    from_pretrained,
    is_detector_directory,
    maskrcnn_focalnet,
    retinanet_focalnet,
    save_pretrained,
)
from .synthetic import make_shapes_dataset

__all__ = [
    "DENSE_FOCAL_WINDOW",
    "DetectorConfig",
    "FocalNetFPN",
    "build_detector",
    "dense_backbone",
    "detector_config",
    "fasterrcnn_focalnet",
    "from_pretrained",
    "is_detector_directory",
    "make_shapes_dataset",
    "maskrcnn_focalnet",
    "retinanet_focalnet",
    "save_pretrained",
]
