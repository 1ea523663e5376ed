"""Training configuration: one flat dataclass, recipe presets, YAML files and CLI overrides.

Resolution order: the recipe named by `recipe` (defaults to the task's: "finetune" for
classification, "simmim" for masked image modeling), then the YAML file,
then `--set key=value` / explicit command-line options. Every field is documented in
`TrainConfig`; `configs/*.yaml` in the repository are worked examples.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AMP_MODES = ("none", "bf16", "fp16")
TASKS = ("classification", "masked-image-modeling", "detection", "instance-segmentation", "semantic-segmentation")
DEFAULT_RECIPES = {
    "classification": "finetune",
    "masked-image-modeling": "simmim",
    "detection": "detection",
    "instance-segmentation": "detection",
    "semantic-segmentation": "segmentation",
}
DETECTORS = ("faster_rcnn", "mask_rcnn", "retinanet")
SCHEDULES = ("cosine", "step", "poly")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass
class TrainConfig:
    task: str = "classification"
    """What is trained: classification, masked-image-modeling (SimMIM pretraining, no labels),
    detection (boxes) or instance-segmentation (boxes and masks; COCO layout data), or
    semantic-segmentation (a class per pixel; ADE20K layout data, UperNet)."""

    # ---- data -------------------------------------------------------------------------------
    data: str | None = None
    """"digits" (scikit-learn's handwritten digits), or a directory holding `train/` and `val/`
    ImageFolder trees (one sub-directory per class). Masked image modeling takes any folder of
    images (searched recursively; `train/` and `val/` used as the split when both exist).
    Detection takes a COCO layout: `train/`, `val/` (or `train2017/`, `val2017/`) and
    `annotations/instances_train.json`, `instances_val.json` (or `..._train2017.json`).
    Semantic segmentation takes the ADE20K layout: `images/training/`, `images/validation/`,
    `annotations/training/`, `annotations/validation/` (PNG label maps named like the images) and
    `labels.txt` (class names, one per line, in label order).
    Every task also takes a Hugging Face dataset: `hf:ID[:CONFIG]` (the hub, through its cache), a
    `save_to_disk` directory or a folder of parquet files; and WebDataset shards, `wds:PATTERN`
    (brace notation; local paths, `pipe:` commands or fsspec URLs)."""
    val_data: str | None = None
    """Validation data elsewhere than `data`: shards (`wds:PATTERN`) or any source `data` takes (its
    validation split). Without it, shards validate on the val split of the _info.json beside them."""
    data_revision: str | None = None
    """Hugging Face hub datasets: the revision (branch, tag or commit), e.g. refs/convert/parquet."""
    train_split: str = "train"
    """Hugging Face datasets: the split to train on."""
    val_split: str | None = None
    """Hugging Face datasets: the split to validate on; None takes `validation` or `val`, else holds out
    `val_fraction` of the training split."""
    image_column: str | None = None
    """Hugging Face datasets: the image column (default image; masked image modeling falls back to img);
    shards: the image's key (default the first of jpg, jpeg, png, webp)."""
    label_column: str | None = None
    """Hugging Face datasets: the class column (default label, else labels), or for semantic segmentation
    the label-map column (default label, else annotation)."""
    streaming: bool = False
    """Stream a Hugging Face dataset (`data: hf:ID`) instead of loading it whole, as shards are."""
    train_samples: int | None = None
    """Streamed training data: samples per epoch (default: the sample counts of the `_info.json` beside
    the shards, or the dataset's split size)."""
    shuffle_buffer: int = 1000
    """Streamed training data: samples each data-loading worker shuffles among (the shard order is
    shuffled too, by seed and epoch)."""
    train_annotations: str | None = None
    """Detection: a COCO instances JSON for training (with `train_images`); replaces `data`."""
    train_images: str | None = None
    val_annotations: str | None = None
    val_images: str | None = None
    train_list: str | None = None
    """CSV (`path,label` rows) or JSON list of {"path", "label"}; replaces `data` for training
    (masked image modeling needs only the paths)."""
    val_list: str | None = None
    val_fraction: float = 0.2
    """The held-out share where the data has no split of its own (digits: stratified), fixed by `split_seed`."""
    split_seed: int = 0
    workers: int = 0

    # ---- model ------------------------------------------------------------------------------
    model: str = "focalnet-tiny"
    """A preset name (random initialisation) or anything `from_pretrained` accepts (see `init_from`)."""
    model_overrides: dict[str, Any] = field(default_factory=dict)
    """Config fields set on top of the preset, e.g. {embed_dim: 32, depths: [2, 2]}."""
    init_from: str | None = None
    """Initialise from this checkpoint (HF dir, .safetensors/.bin/.pth in any layout, hub id);
    a new classifier is made when its classes differ from the data's."""
    drop_path_rate: float | None = None
    """Stochastic depth; None takes the paper's value for the model size (T 0.2, S 0.3, B+ 0.5)."""
    freeze_backbone: bool = False
    """Train only the classifier (linear probing)."""
    freeze_stages: int = 0
    """Freeze the stem and the first N stages."""

    # ---- preprocessing and augmentation -------------------------------------------------------
    image_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    """RandomResizedCrop area range."""
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    rand_augment: str | None = "rand-m9-mstd0.5-inc1"
    """timm-style RandAugment string (m = magnitude, n = ops), run through torchvision's RandAugment."""
    random_erasing: float = 0.25
    mixup: float = 0.0
    """MixUp alpha (0 = off)."""
    cutmix: float = 0.0
    """CutMix alpha (0 = off); with both on, each batch gets one of the two at random."""
    label_smoothing: float = 0.1

    # ---- masked image modeling ----------------------------------------------------------------
    mask_patch_size: int = 32
    """Side of the square mask cells in pixels (a multiple of the model's patch size)."""
    mask_ratio: float = 0.6
    """Share of the mask cells hidden in each image."""
    reconstruction_images: int = 8
    """Validation images shown in each epoch's `reconstructions/epoch-NNN.png` (0 = none)."""

    # ---- detection and instance segmentation -------------------------------------------------
    detector: str | None = None
    """faster_rcnn, mask_rcnn or retinanet; None: faster_rcnn for detection, mask_rcnn for instance segmentation."""
    min_size: int = 800
    """Shorter side the detector resizes images to for evaluation and prediction."""
    max_size: int = 1333
    """Longer side cap, in training and evaluation."""
    scales: tuple[float, ...] = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
    """Training: each image's shorter side is resized to one of these (capped by max_size)."""
    random_crop: float = 0.0
    """Training: probability of a random crop that keeps part of every box (torchvision's RandomIoUCrop)."""
    detector_kwargs: dict[str, Any] = field(default_factory=dict)
    """More arguments of the detector builder: fpn_channels, trainable_stages, anchor_sizes,
    gradient_checkpointing, or any torchvision argument (box_score_thresh, ...)."""

    # ---- semantic segmentation ----------------------------------------------------------------
    class_names: list[str] | None = None
    """Class names in label order; None reads `data`/labels.txt (or the data's own, see the README's
    Data section). Streamed classification shards without an _info.json take them from here too."""
    reduce_labels: bool = False
    """ADE20K's convention: label 0 ("other") is ignored and the others shift down by one."""
    head_overrides: dict[str, Any] = field(default_factory=dict)
    """UperNetConfig fields: hidden_size, pool_scales, auxiliary_channels, auxiliary_loss_weight, ..."""
    base_size: tuple[float, ...] = (2048, 512)
    """Training rescales each image to fit this (long, short) size times a random ratio of `scale_range`;
    evaluation and prediction rescale to fit it exactly. `image_size` is the training crop."""
    scale_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    """Training crops are redrawn (up to 10 times) while one class covers more than this share."""
    photometric_distortion: bool = True
    """Random brightness, contrast, saturation and hue (mmsegmentation's PhotoMetricDistortion)."""

    # ---- optimisation -----------------------------------------------------------------------
    epochs: int = 30
    batch_size: int = 64
    """Global batch: split across processes, times `accum_steps` micro-batches per step."""
    accum_steps: int = 1
    lr: float = 1e-4
    lr_scale_batch: int | None = None
    """If set, lr, min_lr and warmup_lr are scaled by batch_size / lr_scale_batch (the paper: 1024)."""
    min_lr: float = 1e-6
    warmup_epochs: float = 1.0
    warmup_lr: float = 1e-7
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float | None = None
    """Layer-wise learning-rate decay for fine-tuning (e.g. 0.75); None = off."""
    head_lr_scale: float = 1.0
    """Learning-rate factor for everything outside the FocalNet encoder (heads, pyramid, output norms)."""
    clip_grad: float | None = 5.0
    ema_decay: float | None = None
    """Keep an exponential moving average of the weights (evaluated and saved instead)."""
    schedule: str = "cosine"
    """cosine (to min_lr after the warm-up), step (x0.1 at each of `decay_epochs`) or poly
    (base_lr to min_lr as (1 - t)^poly_power over the run; the warm-up scales it, as mmsegmentation)."""
    poly_power: float = 1.0
    decay_epochs: tuple[float, ...] = (9, 11)

    # ---- runtime ----------------------------------------------------------------------------
    output_dir: str = "runs/train"
    device: str = "auto"
    amp: str = "none"
    """Mixed precision: none, bf16 (CPU or GPU) or fp16 (GPU, with a gradient scaler)."""
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    """Deterministic kernels (and cuDNN settings) for bit-reproducible runs."""
    checkpoint_every: int = 0
    """Also checkpoint every N optimiser steps within an epoch (0 = only at epoch ends)."""
    eval_batch_size: int | None = None
    max_train_batches: int | None = None
    """Cut every epoch to this many batches (smoke tests, quick looks)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field and the fix when a value cannot work."""
        checks = [
            (self.task in TASKS, f"task must be one of {TASKS}"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.accum_steps >= 1, "accum_steps must be >= 1"),
            (self.image_size >= 1, "image_size must be >= 1"),
            (0 < self.crop_pct <= 1, "crop_pct must be in (0, 1]"),
            (self.lr > 0, "lr must be > 0"),
            (self.min_lr >= 0 and self.warmup_lr >= 0, "min_lr and warmup_lr must be >= 0"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (0 <= self.hflip <= 1 and 0 <= self.random_erasing <= 1, "hflip and random_erasing are probabilities"),
            (self.mixup >= 0 and self.cutmix >= 0, "mixup and cutmix are alphas >= 0"),
            (0 < self.val_fraction < 1, "val_fraction must be in (0, 1)"),
            (self.layer_decay is None or 0 < self.layer_decay <= 1, "layer_decay must be in (0, 1] or null"),
            (self.ema_decay is None or 0 < self.ema_decay < 1, "ema_decay must be in (0, 1) or null"),
            (self.clip_grad is None or self.clip_grad > 0, "clip_grad must be > 0 or null"),
            (self.amp in AMP_MODES, f"amp must be one of {AMP_MODES}"),
            (self.freeze_stages >= 0, "freeze_stages must be >= 0"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
            (self.workers >= 0, "workers must be >= 0"),
            (self.train_samples is None or self.train_samples >= 1, "train_samples must be >= 1 or null"),
            (self.shuffle_buffer >= 0, "shuffle_buffer must be >= 0"),
            (len(self.mean) == len(self.std), "mean and std need one value per channel"),
            (len(self.crop_scale) == 2 and len(self.crop_ratio) == 2, "crop_scale and crop_ratio are [min, max]"),
            (self.interpolation in INTERPOLATIONS, f"interpolation must be one of {INTERPOLATIONS}"),
            (
                self.rand_augment is None or re.fullmatch(r"rand(-[a-z]+[\d.]+)*", self.rand_augment) is not None,
                "rand_augment must look like 'rand-m9-mstd0.5-inc1' or be null",
            ),
            (self.eval_batch_size is None or self.eval_batch_size >= 1, "eval_batch_size must be >= 1 or null"),
            (self.max_train_batches is None or self.max_train_batches >= 1, "max_train_batches must be >= 1 or null"),
            (self.lr_scale_batch is None or self.lr_scale_batch >= 1, "lr_scale_batch must be >= 1 or null"),
            (self.mask_patch_size >= 1, "mask_patch_size must be >= 1"),
            (0 < self.mask_ratio < 1, "mask_ratio must be in (0, 1)"),
            (self.reconstruction_images >= 0, "reconstruction_images must be >= 0"),
            (self.detector is None or self.detector in DETECTORS, f"detector must be one of {DETECTORS} or null"),
            (1 <= self.min_size <= self.max_size, "min_size must be >= 1 and <= max_size"),
            (len(self.scales) >= 1 and min(self.scales) >= 1, "scales must list shorter sides >= 1"),
            (0 <= self.random_crop <= 1, "random_crop is a probability"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (all(e > 0 for e in self.decay_epochs), "decay_epochs must be > 0"),
            (self.poly_power > 0, "poly_power must be > 0"),
            (self.head_lr_scale > 0, "head_lr_scale must be > 0"),
            (self.class_names is None or len(self.class_names) >= 1, "class_names must list at least one name"),
            (len(self.base_size) == 2 and min(self.base_size) >= 1, "base_size must be [long, short] >= 1"),
            (0 < self.scale_range[0] <= self.scale_range[1], "scale_range must be [low, high] with 0 < low <= high"),
            (0 < self.cat_max_ratio <= 1, "cat_max_ratio must be in (0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid training config: {message}")

    # ------------------------------------------------------------------------------------------
    @property
    def lr_scale(self) -> float:
        """The factor on every learning rate: batch_size / lr_scale_batch, or 1."""
        return self.batch_size / self.lr_scale_batch if self.lr_scale_batch is not None else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known) - {"recipe"})
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; known keys: {', '.join(known)}")
        return cls(**{k: _coerce(k, str(known[k].type), v) for k, v in values.items() if k in known})


def _coerce(name: str, annotation: str, value: Any) -> Any:
    """A YAML/CLI value as the field's type (YAML reads `1e-3` as a string); ValueError names the field."""
    if value is None:
        return None
    try:
        if annotation.startswith("tuple"):
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return tuple(float(v) for v in value)
        if annotation.startswith("float"):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if annotation.startswith("int"):
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise TypeError
            return int(float(value))
        if annotation == "bool" and not isinstance(value, bool):
            raise TypeError
        if annotation.startswith("str") and not isinstance(value, str):
            raise TypeError
        if annotation.startswith("dict") and not isinstance(value, dict):
            raise TypeError
        if annotation.startswith("list"):
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise TypeError
            return list(value)
    except (TypeError, ValueError):
        raise ValueError(f"invalid training config: {name} must be {annotation}, got {value!r}") from None
    return value


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# ------------------------------------------------------------------------------------------------
# Recipes: starting points that a YAML file and the command line refine.
RECIPES: dict[str, dict[str, Any]] = {
    # The paper's ImageNet-1K recipe (SPEC section 6): 300 epochs, lr 1e-3 at batch 1024.
    "imagenet": {
        "epochs": 300,
        "batch_size": 1024,
        "lr": 1e-3,
        "lr_scale_batch": 1024,
        "min_lr": 1e-5,
        "warmup_epochs": 20,
        "warmup_lr": 1e-6,
        "weight_decay": 0.05,
        "clip_grad": 5.0,
        "label_smoothing": 0.1,
        "rand_augment": "rand-m9-mstd0.5-inc1",
        "mixup": 0.8,
        "cutmix": 1.0,
        "random_erasing": 0.25,
        "crop_scale": (0.08, 1.0),
        "image_size": 224,
        "crop_pct": 0.875,
        "ema_decay": None,
    },
    # Fine-tuning a pretrained model on a new labelled set.
    "finetune": {
        "epochs": 30,
        "batch_size": 64,
        "lr": 1e-4,
        "min_lr": 1e-6,
        "warmup_epochs": 1,
        "weight_decay": 0.05,
        "layer_decay": 0.8,
        "clip_grad": 5.0,
        "label_smoothing": 0.1,
        "rand_augment": "rand-m9-mstd0.5-inc1",
        "random_erasing": 0.25,
        "drop_path_rate": 0.1,
    },
    # About 90 s on 2 CPU cores to ~99% on scikit-learn's digits (configs/demo-digits.yaml spells it out).
    "demo": {
        "data": "digits",
        "val_fraction": 0.2,
        "model": "focalnet-tiny",
        "model_overrides": {
            "embed_dim": 48,
            "depths": [2, 2],
            "focal_levels": [2, 2],
            "focal_windows": [3, 3],
            "patch_size": 2,
        },
        "drop_path_rate": 0.0,
        "image_size": 16,
        "crop_pct": 1.0,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "crop_scale": (0.75, 1.0),
        "crop_ratio": (0.85, 1.15),
        "hflip": 0.0,
        "rand_augment": None,
        "random_erasing": 0.0,
        "label_smoothing": 0.1,
        "epochs": 30,
        "batch_size": 64,
        "lr": 2e-3,
        "warmup_epochs": 1,
        "min_lr": 1e-5,
        "weight_decay": 0.05,
        "clip_grad": 5.0,
        "output_dir": "runs/demo",
        "seed": 0,
    },
    # SimMIM pretraining (SPEC section 8): lr 2e-4 per 512 images, 10 warm-up epochs, no drop path.
    "simmim": {
        "task": "masked-image-modeling",
        "epochs": 100,
        "batch_size": 128,
        "lr": 2e-4,
        "min_lr": 1e-5,
        "warmup_lr": 1e-6,
        "lr_scale_batch": 512,
        "warmup_epochs": 10,
        "weight_decay": 0.05,
        "betas": (0.9, 0.999),
        "clip_grad": 5.0,
        "layer_decay": None,
        "ema_decay": None,
        "drop_path_rate": 0.0,
        "image_size": 192,
        "crop_pct": 1.0,
        "crop_scale": (0.67, 1.0),
        "crop_ratio": (3 / 4, 4 / 3),
        "hflip": 0.5,
        "rand_augment": None,
        "random_erasing": 0.0,
        "mixup": 0.0,
        "cutmix": 0.0,
        "label_smoothing": 0.0,
        "mask_patch_size": 32,
        "mask_ratio": 0.6,
        "output_dir": "runs/pretrain",
    },
    # Mask R-CNN on COCO, 1x (SPEC 10): AdamW lr 1e-4 at batch 16, wd 0.05, 12 epochs with x0.1 at 9
    # and 11, shorter side 480-800 (max 1333), flip 0.5, random crops.
    "detection": {
        "task": "detection",
        "epochs": 12,
        "batch_size": 16,
        "lr": 1e-4,
        "lr_scale_batch": 16,
        "schedule": "step",
        "decay_epochs": (9, 11),
        "warmup_epochs": 0.1,
        "warmup_lr": 1e-7,
        "weight_decay": 0.05,
        "clip_grad": None,
        "layer_decay": None,
        "ema_decay": None,
        "min_size": 800,
        "max_size": 1333,
        "scales": (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800),
        "hflip": 0.5,
        "random_crop": 0.5,
        "rand_augment": None,
        "random_erasing": 0.0,
        "mixup": 0.0,
        "cutmix": 0.0,
        "label_smoothing": 0.0,
        "output_dir": "runs/detection",
    },
}


RECIPES["segmentation"] = {
    # UperNet on ADE20K (SPEC 10): AdamW lr 6e-5 at batch 16, wd 0.01, poly decay after 1500 warm-up
    # iterations, 160k iterations (at batch 16 on ADE20K's 20210 images: 127 epochs, warm-up 1.2),
    # 512x512 crops of (2048, 512) x 0.5-2.0, flip, photometric distortion.
    "task": "semantic-segmentation",
    "epochs": 127,
    "batch_size": 16,
    "lr": 6e-5,
    "lr_scale_batch": 16,
    "schedule": "poly",
    "poly_power": 1.0,
    "min_lr": 0.0,
    "warmup_epochs": 1.2,
    "warmup_lr": 6e-11,
    "weight_decay": 0.01,
    "clip_grad": None,
    "layer_decay": None,
    "ema_decay": None,
    "image_size": 512,
    "base_size": (2048, 512),
    "scale_range": (0.5, 2.0),
    "cat_max_ratio": 0.75,
    "hflip": 0.5,
    "photometric_distortion": True,
    "rand_augment": None,
    "random_erasing": 0.0,
    "mixup": 0.0,
    "cutmix": 0.0,
    "label_smoothing": 0.0,
    "output_dir": "runs/segmentation",
}


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, recipe: str | None = None
) -> TrainConfig:
    """The recipe (from `recipe`, the file's `recipe:` key, or the task's default), the YAML file,
    then `overrides`."""
    values: dict[str, Any] = {}
    if path is not None:
        values = read_yaml(path)
    overrides = dict(overrides or {})
    task = overrides.get("task", values.get("task", "classification"))
    default = DEFAULT_RECIPES.get(task, "finetune")
    name = recipe or overrides.pop("recipe", None) or values.pop("recipe", None) or default
    values.pop("recipe", None)
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from: {', '.join(RECIPES)}")
    return TrainConfig.from_dict({**copy.deepcopy(RECIPES[name]), **values, **overrides})


def read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        import yaml
    except ImportError as error:
        raise ImportError("reading YAML configs needs PyYAML: pip install 'focalnet[train]'") from error
    try:
        values = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"training config {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ValueError(f"training config {path} is not valid YAML: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"training config {path} must be a mapping of field: value")
    return values
