"""Datasets, transforms and the resumable sampler of `focalnet train` / `focalnet evaluate`.

Samples are addressed as (index, seed) pairs: the sampler draws the order and a seed per
sample from (run seed, epoch), and the dataset seeds its random augmentation with it. The
augmentation a sample gets therefore depends on neither the number of processes nor the
data-loader workers, which is what makes 1-process and N-process runs, and resumed and
uninterrupted runs, see identical batches.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from ..image_processing import IMAGE_SUFFIXES, FocalNetImageProcessor, image_files, load_image
from .config import TrainConfig


def _vision():
    try:
        from PIL import Image
        from torchvision.transforms import v2
    except ImportError as error:
        raise ImportError("training needs Pillow and torchvision: pip install 'focalnet[train]'") from error
    return Image, v2


# ------------------------------------------------------------------------------------------------
# Sources: a list of (loader, label) with class names
@dataclass
class LabelledImages:
    """What a data source yields: one `load()` callable per sample, its label, and the class names."""

    loaders: list[Callable[[], Any]]
    labels: list[int]
    classes: list[str]
    names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> LabelledImages:
        return LabelledImages(
            [self.loaders[i] for i in indices],
            [self.labels[i] for i in indices],
            self.classes,
            [self.names[i] for i in indices],
        )


def image_folder(root: str | Path) -> LabelledImages:
    """An ImageFolder tree: one sub-directory per class (sorted names are the class indices)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class sub-directories (expected {root}/<class>/<image>)")
    files = [(path, label) for label, name in enumerate(classes) for path in image_files(root / name)]
    if not files:
        raise ValueError(f"{root} holds no images with suffixes {sorted(IMAGE_SUFFIXES)}")
    return _from_files(files, classes)


@dataclass(frozen=True)
class ImageFile:
    """Loads an image file (picklable); `encoded` gives its bytes as stored (for writing shards)."""

    path: Path

    def __call__(self) -> Any:
        return load_image(self.path)

    def encoded(self) -> bytes:
        return self.path.read_bytes()


def _from_files(files: Sequence[tuple[Path, int]], classes: list[str]) -> LabelledImages:
    return LabelledImages(
        [ImageFile(Path(path)) for path, _ in files],
        [label for _, label in files],
        classes,
        [str(path) for path, _ in files],
    )


def unlabelled_folder(root: str | Path) -> LabelledImages:
    """Every image under `root`, searched recursively; folder names are not labels (all get label 0)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    files = image_files(root)
    if not files:
        raise ValueError(f"{root} holds no images with suffixes {sorted(IMAGE_SUFFIXES)} (searched recursively)")
    return _from_files([(path, 0) for path in files], ["image"])


def _list_rows(path: Path) -> list[tuple]:
    """The rows of a CSV (optional `path,label` header, `#` comments) or JSON list, as tuples."""
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as error:
            raise ValueError(f"image list {path} is not valid JSON: {error}") from None
        if not isinstance(rows, list):
            raise ValueError(f"image list {path} must hold a JSON list of paths, [path, label] pairs or objects")
        return [_json_row(row, path) for row in rows]
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = [tuple(r[:2]) for r in csv.reader(handle) if r and not r[0].startswith("#")]
    if rows and rows[0][0].strip().lower() == "path":
        rows = rows[1:]
    return rows


def _json_row(row: Any, path: Path) -> tuple:
    """ "a.jpg", ["a.jpg", label] or {"path": "a.jpg", "label": label} as (path,) or (path, label)."""
    if isinstance(row, str):
        return (row,)
    if isinstance(row, dict) and "path" in row:
        return (row["path"], row["label"]) if "label" in row else (row["path"],)
    if isinstance(row, list) and 1 <= len(row) <= 2:
        return tuple(row)
    raise ValueError(f"image list {path}: cannot read the entry {row!r}; use a path, [path, label] or {{path, label}}")


def image_list(path: str | Path, classes: Sequence[str] | None = None, labelled: bool = True) -> LabelledImages:
    """A CSV (`path,label` with an optional header) or JSON ([{"path", "label"}] or [[path, label]]) list.

    Labels may be integers or class names; relative paths are taken from the list's directory.
    Pass `classes` to reuse the training list's class order for a validation list. With
    `labelled=False` only the paths are read (rows of just a path are fine) and every label is 0.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image list {path} does not exist")
    rows = _list_rows(path)
    if not rows:
        raise ValueError(f"image list {path} is empty")
    if not labelled:
        return _from_files([(path.parent / row[0], 0) for row in rows], ["image"])
    unlabelled = [row[0] for row in rows if len(row) < 2]
    if unlabelled:
        raise ValueError(f"{path}: rows without a label, e.g. {unlabelled[0]!r}; give every row `path,label`")
    raw = [str(row[1]).strip() for row in rows]
    if classes is None:
        classes = class_names_of(raw)
    index = {name: i for i, name in enumerate(classes)}
    labels = []
    for label in raw:
        if label not in index:
            raise ValueError(f"{path}: label {label!r} is not among the classes {list(classes)[:10]}...")
        labels.append(index[label])
    files = [(path.parent / row[0], label) for row, label in zip(rows, labels, strict=True)]
    return _from_files(files, list(classes))


def class_names_of(labels: Sequence[Any]) -> list[str]:
    """Class names for raw labels: "0".."max" when all are whole numbers, else the sorted distinct names."""
    text = [str(label).strip() for label in labels]
    if text and all(re.fullmatch(r"\d+", label) for label in text):
        return [str(i) for i in range(max(map(int, text)) + 1)]
    return sorted(set(text))


def digits(split: str, val_fraction: float = 0.2, split_seed: int = 0) -> LabelledImages:
    """scikit-learn's 1797 handwritten digits (8x8, 16 grey levels) as RGB images, with a
    stratified train/val split fixed by `split_seed`."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("the digits demo needs scikit-learn: pip install 'focalnet[demo]'") from error
    Image, _ = _vision()
    bunch = load_digits()
    pixels = (torch.from_numpy(bunch.images) * (255 / 16)).round().to(torch.uint8)
    targets = torch.from_numpy(bunch.target).long()
    generator = torch.Generator().manual_seed(split_seed)
    chosen: list[int] = []
    for label in range(10):  # stratified: the same share of every class is held out
        members = (targets == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        count = round(len(members) * val_fraction)
        chosen += (members[:count] if split == "val" else members[count:]).tolist()
    chosen.sort()

    def loader(i: int) -> Callable[[], Any]:
        return lambda: Image.fromarray(pixels[i].numpy(), mode="L").convert("RGB")

    return LabelledImages(
        [loader(i) for i in chosen],
        [int(targets[i]) for i in chosen],
        [str(d) for d in range(10)],
        [f"digit-{i}" for i in chosen],
    )


def load_source(config: TrainConfig, split: str, classes: Sequence[str] | None = None) -> LabelledImages:
    """The training or validation images named by the config."""
    listed = config.train_list if split == "train" else config.val_list
    if listed:
        return image_list(listed, classes)
    if config.data is None:
        raise ValueError(f"no {split} data: set `data` (a directory or 'digits') or `{split}_list`")
    if config.data == "digits":
        return digits(split, config.val_fraction, config.split_seed)
    source = image_folder(Path(config.data) / split)
    if classes is not None and source.classes != list(classes):
        raise ValueError(f"{config.data}/{split} has classes {source.classes}, but training has {list(classes)}")
    return source


def held_out(size: int, split: str, fraction: float, seed: int) -> list[int]:
    """Indices of the `split` ("train" or "val") part of a random, seeded hold-out of `fraction`."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    count = min(max(round(size * fraction), 1), size - 1) if size > 1 else 0
    return sorted(order[:count] if split == "val" else order[count:])


def unlabelled_source(config: TrainConfig, split: str) -> LabelledImages:
    """Images without labels for masked image modeling: a list file, digits, or a folder searched
    recursively (its `train/` and `val/` sub-folders when both exist, else `val_fraction` held out)."""
    if config.train_list and not config.val_list and config.data is None:  # one list: hold out a share
        source = image_list(config.train_list, labelled=False)
        return source.subset(held_out(len(source), split, config.val_fraction, config.split_seed))
    listed = config.train_list if split == "train" else config.val_list
    if listed:
        return image_list(listed, labelled=False)
    if config.data is None:
        raise ValueError(f"no {split} data: set `data` (a directory of images or 'digits') or `{split}_list`")
    if config.data == "digits":
        return digits(split, config.val_fraction, config.split_seed)
    root = Path(config.data)
    if (root / "train").is_dir() and (root / "val").is_dir():
        return unlabelled_folder(root / split)
    source = unlabelled_folder(root)
    return source.subset(held_out(len(source), split, config.val_fraction, config.split_seed))


# ------------------------------------------------------------------------------------------------
# Transforms
def rand_augment_options(spec: str) -> dict[str, int]:
    """timm's "rand-m9-n2-mstd0.5-inc1" as torchvision RandAugment arguments (m and n; the
    magnitude noise `mstd` and `inc` have no torchvision counterpart and are ignored)."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"rand_augment must look like 'rand-m9-mstd0.5-inc1', got {spec!r}")
    options = {"magnitude": 9, "num_ops": 2}
    for part in parts[1:]:
        if re.fullmatch(r"m\d+", part):
            options["magnitude"] = int(part[1:])
        elif re.fullmatch(r"n\d+", part):
            options["num_ops"] = int(part[1:])
    return options


def train_transform(config: TrainConfig) -> Callable[[Any], torch.Tensor]:
    """Random resized crop, flip, RandAugment, tensor, normalise, random erasing (torchvision v2)."""
    _, v2 = _vision()
    interpolation = v2.InterpolationMode(config.interpolation)
    steps = [
        v2.RandomResizedCrop(config.image_size, config.crop_scale, config.crop_ratio, interpolation, antialias=True)
    ]
    if config.hflip:
        steps.append(v2.RandomHorizontalFlip(config.hflip))
    if config.rand_augment:
        steps.append(v2.RandAugment(**rand_augment_options(config.rand_augment), interpolation=interpolation))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(config.mean, config.std)]
    if config.random_erasing:
        steps.append(v2.RandomErasing(config.random_erasing))
    return v2.Compose(steps)


def eval_processor(config: TrainConfig) -> FocalNetImageProcessor:
    """The deterministic evaluation pipeline, as the `FocalNetImageProcessor` saved with the model
    (so `focalnet predict` and `focalnet evaluate` see exactly what validation saw)."""
    return FocalNetImageProcessor(
        crop_pct=config.crop_pct,
        crop_size=config.image_size,
        resample=config.interpolation,
        image_mean=list(config.mean),
        image_std=list(config.std),
    )


# ------------------------------------------------------------------------------------------------
# Dataset and sampler
class ImageDataset(Dataset):
    """Loads and transforms one (index, seed) sample; unreadable images give None (see `collate`)."""

    def __init__(self, source: LabelledImages, transform: Callable[[Any], torch.Tensor]) -> None:
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int] | None:
        index, seed = item
        try:
            image = self.source.loaders[index]()
        except (OSError, ValueError, SyntaxError) as error:  # PIL raises all three on broken files
            warnings.warn(f"skipping unreadable image {self.source.names[index]}: {error}", stacklevel=1)
            return None
        return seeded(seed, self.transform, image), self.source.labels[index]


def seeded(seed: int, function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)` with the global torch RNG seeded by `seed`, and the outer RNG state kept:
    random augmentation that depends on the sample alone."""
    outer_state = torch.get_rng_state()  # (torch.random.fork_rng would import dynamo: slow start)
    torch.manual_seed(seed)
    try:
        return function(*args)
    finally:
        torch.set_rng_state(outer_state)


def collate(samples: list[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack the readable samples; the third item counts the unreadable ones that were dropped."""
    good = [s for s in samples if s is not None]
    skipped = len(samples) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    return torch.stack([s[0] for s in good]), torch.tensor([s[1] for s in good]), skipped


class ShardedSampler(Sampler[tuple[int, int]]):
    """Epoch-seeded order split into global batches, each cut into one contiguous slice per rank.

    Training (`shuffle=True`) drops the last incomplete global batch, so every optimiser step
    sees the same samples whatever the number of processes; `start_batch` resumes mid-epoch.
    Evaluation (`shuffle=False`) gives rank r every world-th sample, none twice, none dropped;
    each sample's seed is its index, so seeded evaluation transforms (fixed masks) repeat every epoch.
    """

    def __init__(
        self, size: int, batch_size: int, rank: int = 0, world: int = 1, shuffle: bool = True, seed: int = 0
    ) -> None:
        if shuffle and batch_size % world:
            raise ValueError(f"the global batch {batch_size} must be divisible by the {world} processes")
        if shuffle and size < batch_size:
            raise ValueError(f"the training set ({size} images) is smaller than one global batch ({batch_size})")
        self.size, self.batch_size, self.rank, self.world = size, batch_size, rank, world
        self.shuffle, self.seed = shuffle, seed
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def batches_per_epoch(self) -> int:
        return self.size // self.batch_size

    @property
    def layout(self) -> None:
        """What a mid-epoch position depends on: nothing (the order is the same for any number of processes)."""
        return None

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.world if self.shuffle else self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if not self.shuffle:
            yield from ((i, i) for i in range(self.rank, self.size, self.world))
            return
        order = torch.randperm(self.size, generator=generator).tolist()
        seeds = torch.randint(0, 2**62, (self.size,), generator=generator).tolist()
        local = self.local_batch_size
        for batch in range(self.start_batch, self.batches_per_epoch):
            first = batch * self.batch_size + self.rank * local
            yield from zip(order[first : first + local], seeds[first : first + local], strict=True)

    def __len__(self) -> int:
        if not self.shuffle:
            return len(range(self.rank, self.size, self.world))
        return (self.batches_per_epoch - self.start_batch) * self.local_batch_size


def sample_loader(
    dataset: Dataset,
    sampler: ShardedSampler | None,
    batch_size: int,
    workers: int = 0,
    pin_memory: bool = False,
    collate_fn: Callable[[list], tuple[Any, Any, int]] = collate,
) -> DataLoader:
    """Batches of (inputs, targets, unreadable count); the loader has its own generator, so creating
    an iterator draws nothing from the global RNG (which resumed runs restore exactly). Streams
    (iterable datasets) need no sampler."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=workers,
        generator=torch.Generator(),
        pin_memory=pin_memory,
    )


def training_loader(
    dataset: Dataset,
    batch_size: int,
    micro_batch: int,
    rank: int = 0,
    world: int = 1,
    seed: int = 0,
    workers: int = 0,
    pin_memory: bool = False,
    collate_fn: Callable[[list], tuple[Any, Any, int]] = collate,
    shuffle_buffer: int = 0,
) -> tuple[Any, DataLoader]:
    """One process's training micro-batches, and what plans the epochs (`set_epoch`, `batches_per_epoch`,
    `layout`): the index-and-seed `ShardedSampler`, or a stream (`StreamedSamples`) itself."""
    if isinstance(dataset, IterableDataset):
        plan = dataset.for_training(batch_size, micro_batch, rank, world, workers, seed, shuffle_buffer)
        return plan, sample_loader(dataset, None, micro_batch, workers, pin_memory, collate_fn)
    sampler = ShardedSampler(len(dataset), batch_size, rank, world, seed=seed)
    return sampler, sample_loader(dataset, sampler, micro_batch, workers, pin_memory, collate_fn)


def evaluation_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int = 0,
    rank: int = 0,
    world: int = 1,
    pin_memory: bool = False,
    collate_fn: Callable[[list], tuple[Any, Any, int]] = collate,
) -> DataLoader:
    """Every world-th sample of `dataset` (from `rank`), in order, each seeded by its index; a stream
    gives every sample once over the processes and their workers."""
    if isinstance(dataset, IterableDataset):
        return sample_loader(dataset.for_evaluation(rank, world), None, batch_size, workers, pin_memory, collate_fn)
    sampler = ShardedSampler(len(dataset), 1, rank, world, shuffle=False)
    return sample_loader(dataset, sampler, batch_size, workers, pin_memory, collate_fn)


def with_progress(loader: DataLoader, progress: Callable | None) -> Iterable:
    """`loader` through `progress(items, description, total)` when given; a stream's length may be unknown."""
    if progress is None:
        return loader
    try:
        total = len(loader)
    except TypeError:
        total = None
    return progress(loader, "evaluating", total)


def first_samples(dataset: Dataset, count: int) -> list[Any]:
    """The first `count` evaluation samples of a dataset or a stream, seeded as evaluation seeds them."""
    if isinstance(dataset, IterableDataset):
        return dataset.head(count)
    return [dataset[(index, index)] for index in range(min(count, len(dataset)))]


def export_digits(directory: str | Path, count: int = 8, split: str = "val") -> list[Path]:
    """Write the first `count` digits of a split as PNG files named `<n>-label<d>.png` (for trying
    `focalnet predict` on images the model did not train on)."""
    source = digits(split)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    from .._io import atomic_path

    written = []
    for n in range(min(count, len(source))):
        path = directory / f"{n:02d}-label{source.classes[source.labels[n]]}.png"
        with atomic_path(path) as tmp:
            source.loaders[n]().save(tmp, format="PNG")
        written.append(path)
    return written
