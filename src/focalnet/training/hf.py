"""Hugging Face `datasets` as training data: `hf:ID[:CONFIG]` (the hub, through its cache; offline
with HF_HUB_OFFLINE=1), a directory written by `save_to_disk`, or a folder of parquet files, with
the columns transformers' example scripts read (SPEC 12).

Rows become the records the folder layouts give - `LabelledImages` for classification and masked
image modeling, COCO-style image records for detection, image and label-map pairs for semantic
segmentation - so the tasks' own datasets, the engine's index-and-seed sampler and its guarantees
(exact resume, 1 and N processes equal) are those of folders. `--streaming` reads the same
datasets through `focalnet.training.streaming` instead.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._io import read_json_object
from ..detection.data import AnnotationError, CocoAnnotations
from .config import TrainConfig
from .data import LabelledImages, class_names_of, held_out
from .rows import DetectionRows, LabelledRows, RowImage, RowPairs, label_index

PREFIX = "hf:"
IMAGE_COLUMNS = ("image",)
UNLABELLED_IMAGE_COLUMNS = ("image", "img")
"""Masked image modeling falls back to `img`, as transformers' run_mim does."""
LABEL_COLUMNS = ("label", "labels")
MASK_COLUMNS = ("label", "annotation")
CATEGORY_FIELDS = ("category", "categories")
"""cppe-5 names the field `category`; transformers' README writes `categories`."""
VALIDATION_SPLITS = ("validation", "val")
IMAGE_FLAG = "--image-column (YAML image_column)"
LABEL_FLAG = "--label-column (YAML label_column)"
STREAM_SHARDS = 64
"""Shards a `save_to_disk` dataset is cut into when it is streamed (contiguous ranges of rows)."""


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as error:
        raise ImportError("Hugging Face datasets need `datasets`: pip install 'focalnet[datasets]'") from error
    return datasets


def recognises(location: str | None) -> bool:
    """`hf:ID[:CONFIG]`, a directory written by `save_to_disk`, or a directory holding parquet files
    (directly or one level down, as hub repositories keep them)."""
    if not location:
        return False
    if location.startswith(PREFIX):
        return True
    path = Path(location)
    return path.is_dir() and (_saved_to_disk(path) or any(path.glob("*.parquet")) or any(path.glob("*/*.parquet")))


def _saved_to_disk(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


@functools.lru_cache(maxsize=4)
def load_splits(location: str, revision: str | None = None, streaming: bool = False) -> dict[str, Any]:
    """Every split of the dataset at `location`: map-style `Dataset`s, or `IterableDataset`s when streaming."""
    datasets = _datasets()
    try:
        if location.startswith(PREFIX):
            name, _, subset = location.removeprefix(PREFIX).partition(":")
            loaded = datasets.load_dataset(name, subset or None, revision=revision, streaming=streaming)
        elif _saved_to_disk(Path(location)):
            loaded = datasets.load_from_disk(location)
            if streaming:
                loaded = _as_iterable(loaded)
        else:
            loaded = datasets.load_dataset("parquet", data_dir=location, streaming=streaming)
    except ConnectionError as error:
        raise ValueError(
            f"cannot load {location}: {error}. With HF_HUB_OFFLINE=1 only datasets already in the Hugging Face "
            "cache load; check the id, or load it once online"
        ) from None
    return dict(loaded) if isinstance(loaded, dict) else {"train": loaded}


def _as_iterable(loaded: Any) -> Any:
    """A `save_to_disk` dataset (or dict of them) as iterable datasets of `STREAM_SHARDS` shards."""
    if isinstance(loaded, dict):
        return {name: _as_iterable(split) for name, split in loaded.items()}
    return loaded.to_iterable_dataset(num_shards=max(1, min(STREAM_SHARDS, len(loaded))))


@dataclass
class Split:
    """One split's rows, the split's name in the dataset, and how messages name it."""

    rows: Any
    name: str
    where: str


def split_of(config: TrainConfig, location: str, split: str, streaming: bool = False) -> Split:
    """The "train" or "val" split of the dataset at `location`: `train_split`, and `val_split`,
    `validation` or `val` (a `val_data` dataset with one split: that one). Without a validation split,
    map-style data holds out `val_fraction` of train, fixed by `split_seed`."""
    splits = load_splits(location, config.data_revision, streaming)
    validation = _validation_name(splits, config, location)
    if split == "val" and config.val_data is not None:  # a dataset of its own for validation
        validation = validation or (next(iter(splits)) if len(splits) == 1 else None)
        if validation is None:
            raise ValueError(f"{location} has no validation split (its splits: {', '.join(splits)}); set --val-split")
        return Split(splits[validation], validation, f"{location} [{validation}]")
    train_name = config.train_split
    if train_name not in splits:
        raise ValueError(f"{location} has no split {train_name!r} (its splits: {', '.join(splits)}); set --train-split")
    if validation is not None or config.val_data is not None:
        name = train_name if split == "train" else validation
        return Split(splits[name], name, f"{location} [{name}]")
    if streaming:
        raise ValueError(
            f"{location} has no validation split (its splits: {', '.join(splits)}); "
            "name one with --val-split, or give --val-data"
        )
    train = splits[train_name]
    part = held_out(len(train), split, config.val_fraction, config.split_seed)
    return Split(train.select(part), train_name, f"{location} [{train_name}, held-out {split} part]")


def _validation_name(splits: dict[str, Any], config: TrainConfig, location: str) -> str | None:
    if config.val_split is not None:
        if config.val_split not in splits:
            raise ValueError(f"{location} has no split {config.val_split!r} (its splits: {', '.join(splits)})")
        return config.val_split
    return next((name for name in VALIDATION_SPLITS if name in splits), None)


# ------------------------------------------------------------------------------------------------
# Columns
def pick_column(rows: Any, given: str | None, defaults: Sequence[str], flag: str, where: str) -> str:
    """The column named `given`, else the first of `defaults` present; ValueError lists the columns and the flag."""
    present = list(rows.column_names or [])
    candidates = [given] if given else list(defaults)
    for name in candidates:
        if name in present:
            return name
    wanted = " or ".join(repr(name) for name in candidates)
    raise ValueError(f"{where} has no column {wanted} (its columns: {', '.join(present)}); name it with {flag}")


def undecoded(rows: Any, columns: Sequence[str]) -> Any:
    """`rows` with only `columns`, images left encoded (decoded when a sample is loaded, failures counted)."""
    datasets = _datasets()
    rows = rows.select_columns(list(columns))
    for column in columns:
        if isinstance(rows.features[column], datasets.Image):
            rows = rows.cast_column(column, datasets.Image(decode=False))
    return rows


def innermost(feature: Any) -> Any:
    """The feature inside any list or sequence features."""
    while hasattr(feature, "feature"):
        feature = feature.feature
    return feature


def class_label_names(feature: Any) -> list[str] | None:
    """The names of a `ClassLabel` feature (also inside lists), or None."""
    inner = innermost(feature)
    return list(inner.names) if isinstance(inner, _datasets().ClassLabel) else None


# ------------------------------------------------------------------------------------------------
# Classification and masked image modeling
def labelled_rows(rows: Any, config: TrainConfig, where: str, classes: Sequence[str] | None = None) -> LabelledRows:
    """The image and label columns, and the classes: the label's `ClassLabel` names, else `classes`
    (the training split's), else `class_names`; a split with other `ClassLabel` names than `classes` is refused."""
    image = pick_column(rows, config.image_column, IMAGE_COLUMNS, IMAGE_FLAG, where)
    label = pick_column(rows, config.label_column, LABEL_COLUMNS, LABEL_FLAG, where)
    named = class_label_names(rows.features[label])
    if named is not None and classes is not None and named != list(classes):
        raise ValueError(f"{where} has the classes {named[:10]}..., training has {list(classes)[:10]}...")
    found = named or (list(classes) if classes is not None else None) or config.class_names or []
    return LabelledRows(image, label, list(found))


def labelled_images(rows: Any, config: TrainConfig, where: str, classes: Sequence[str] | None = None) -> LabelledImages:
    """Classification rows: an image and a label each (class names from a `ClassLabel`, else from the values)."""
    layout = labelled_rows(rows, config, where, classes)
    values = list(rows[layout.label])
    names = layout.classes or class_names_of(values)
    index_of = {name: i for i, name in enumerate(names)}
    labels = [label_index(value, index_of, f"{where}[{i}]") for i, value in enumerate(values)]
    return _images(rows, layout.image, labels, names, where)


def unlabelled_images(rows: Any, config: TrainConfig, where: str) -> LabelledImages:
    """Masked image modeling rows: the `image` (else `img`) column alone."""
    image = pick_column(rows, config.image_column, UNLABELLED_IMAGE_COLUMNS, IMAGE_FLAG, where)
    return _images(rows, image, [0] * len(rows), ["image"], where)


def _images(rows: Any, column: str, labels: list[int], classes: list[str], where: str) -> LabelledImages:
    images = undecoded(rows, [column])
    names = [f"{where}[{i}]" for i in range(len(rows))]
    return LabelledImages([RowImage(images, i, column, name) for i, name in enumerate(names)], labels, classes, names)


# ------------------------------------------------------------------------------------------------
# Detection (the cppe-5 layout)
def detection_rows(rows: Any, config: TrainConfig, where: str) -> DetectionRows:
    """The image column, the objects' category field and the categories (`ClassLabel` names, ids 0..K-1;
    else the ids found in the rows, named by their number)."""
    image = pick_column(rows, config.image_column, IMAGE_COLUMNS, IMAGE_FLAG, where)
    pick_column(rows, None, ("objects",), "the cppe-5 layout (image, image_id, objects {bbox, category})", where)
    fields = innermost(rows.features["objects"])
    present = list(fields) if isinstance(fields, dict) else []
    field = next((name for name in CATEGORY_FIELDS if name in present), None)
    if field is None or "bbox" not in present:
        raise ValueError(
            f"{where}: objects holds {', '.join(present) or 'no fields'}; detection needs bbox ([x, y, width, height] "
            "in pixels) and category (or categories)"
        )
    names = class_label_names(fields[field])
    if names is None and isinstance(rows, _datasets().IterableDataset):
        raise ValueError(f"{where}: streaming detection rows needs the objects' {field} as a ClassLabel (the names)")
    if names is None:
        found = {category for row in rows.select_columns(["objects"]) for category in _column(row["objects"], field)}
        categories = [{"id": int(c), "name": str(c)} for c in sorted(found)]
    else:
        categories = [{"id": i, "name": name} for i, name in enumerate(names)]
    return DetectionRows(image, categories, field)


def _column(objects: Any, field: str) -> list[Any]:
    return list(objects[field]) if isinstance(objects, dict) else [found[field] for found in objects]


def coco_records(rows: Any, config: TrainConfig, where: str) -> CocoAnnotations:
    """Detection rows as checked image records; a row with broken annotations is kept as a sample that is
    skipped (and counted) when loaded. Boxes are clipped and degenerate ones dropped, counted in one warning."""
    layout = detection_rows(rows, config, where)
    images = undecoded(rows, [layout.image])
    sized = {"width", "height"} <= set(rows.column_names)
    fields = [c for c in ("image_id", "width", "height", "objects") if c in rows.column_names]
    meta = undecoded(rows, fields if sized else [*fields, layout.image])
    annotations = CocoAnnotations(Path(where), [], layout.categories)
    for index, row in enumerate(meta):
        name = f"{where}[{index}]"
        one = layout(row, name, fallback_id=index, loader=RowImage(images, index, layout.image, name))
        annotations.images += one.images
        annotations.clipped += one.clipped
        annotations.dropped += one.dropped
    ids = [record.id for record in annotations.images]
    if len(set(ids)) != len(ids):
        raise AnnotationError(f"{where}: image_id values repeat; every row needs its own image_id")
    annotations.warn_adjusted()
    return annotations


# ------------------------------------------------------------------------------------------------
# Semantic segmentation
def segmentation_pairs(rows: Any, config: TrainConfig, where: str) -> RowPairs:
    """Image and label-map rows: `image`, and `label` or `annotation` (or `label_column`)."""
    image = pick_column(rows, config.image_column, IMAGE_COLUMNS, IMAGE_FLAG, where)
    label = pick_column(rows, config.label_column, MASK_COLUMNS, LABEL_FLAG, where)
    return RowPairs(undecoded(rows, [image, label]), image, label, [f"{where}[{i}]" for i in range(len(rows))])


def segmentation_classes(config: TrainConfig, location: str, rows: Any) -> list[str]:
    """Class names in label order: `class_names`, an `id2label.json` beside the data (in the hub
    repository for hub ids), the label-map column's `ClassLabel` names, or a `labels.txt` beside the data."""
    if config.class_names:
        return list(config.class_names)
    folder = _local_folder(location)
    mapping = _read_id2label(folder / "id2label.json") if folder else _hub_id2label(config, location)
    if mapping is not None:
        return mapping
    names = class_label_names(rows.features[pick_column(rows, config.label_column, MASK_COLUMNS, LABEL_FLAG, location)])
    if names is not None:
        return names
    if folder is not None and (folder / "labels.txt").is_file():
        from ..segmentation.data import read_class_names

        return read_class_names(folder)
    raise ValueError(
        f"no class names for {location}: give them with --set class_names=[...], or put an id2label.json "
        '({"0": "wall", ...}) beside the data'
    )


def _local_folder(location: str) -> Path | None:
    """The directory of a local dataset (also named as hf:PATH), or None for a hub id."""
    folder = Path(location.removeprefix(PREFIX))
    return folder if folder.is_dir() else None


def _hub_id2label(config: TrainConfig, location: str) -> list[str] | None:
    """The id2label.json of a hub dataset's repository (through the cache), as transformers' script reads it."""
    import huggingface_hub

    repository = location.removeprefix(PREFIX).partition(":")[0]
    for revision in dict.fromkeys([config.data_revision, None]):  # the parquet branch may not carry it
        try:
            path = huggingface_hub.hf_hub_download(repository, "id2label.json", repo_type="dataset", revision=revision)
        except (OSError, ValueError, huggingface_hub.errors.HfHubHTTPError):
            continue
        return _read_id2label(Path(path))
    return None


def _read_id2label(path: Path) -> list[str] | None:
    """{"0": "wall", "1": "building", ...} as names in label order (None without the file); the keys must be 0..K-1."""
    if not path.is_file():
        return None
    mapping = read_json_object(path)
    if sorted(mapping) != sorted(map(str, range(len(mapping)))):
        raise ValueError(f'{path} must map every label 0..K-1 to its name, as {{"0": "wall", ...}}')
    return [str(mapping[str(i)]) for i in range(len(mapping))]
