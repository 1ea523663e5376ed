"""Streamed training data: WebDataset tar shards (`wds:PATTERN`) and streamed Hugging Face datasets
(`hf:ID` with `streaming`), trained on by the one engine.

The streaming contract (SPEC 12; the problems users of timm, WebDataset and `datasets` report most):
* **The epoch length is known**: `train_samples`, the sample counts of an `_info.json` beside the
  shards (timm's layout; `focalnet make-shards` writes one), or the dataset's split sizes.
* **Shards are split over every data-loading worker of every process** ("slots"). With at least as
  many shards as slots each slot reads whole shards; with fewer, the slots sharing a shard each take
  every k-th of its samples.
* **Every process runs the same number of steps per epoch**, whatever the shard count: each worker
  yields a fixed quota of micro-batches (its share of `epoch length // batch_size` steps), reading its
  shards again if they run short, so no process waits for another in a gradient all-reduce. When
  the samples divide evenly over the slots, every sample is seen exactly once per epoch.
* **Seeded**: the shard order by the run's seed and the epoch, each worker's shuffle buffer by those
  and its slot, and each sample's augmentation by (run seed, epoch, pass, shard, position in the
  shard), so it does not depend on batching.
* **Resume mid-epoch continues the epoch without repeating a sample**: each worker reads its stream
  again from the epoch's start and drops, undecoded, the samples already trained on. With the same
  processes and workers the resumed run equals an uninterrupted one; with others the rest of the
  epoch is drawn in the new layout (a warning says so).

Rows become the tasks' one-sample sources (`focalnet.training.rows`), which the tasks' own datasets
turn into training samples, as they do for folders.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import sys
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlparse

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from . import hf
from .config import TrainConfig
from .rows import DetectionRows, LabelledRows, SegmentationRows

PREFIX = "wds:"
INFO_NAME = "_info.json"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
READ_BATCH = 64
"""Rows fetched at a time from a streamed Hugging Face dataset."""


def _webdataset() -> Any:
    try:
        import webdataset
    except ImportError as error:
        raise ImportError("WebDataset shards need webdataset: pip install 'focalnet[webdataset]'") from error
    return webdataset


def is_streamed(config: TrainConfig, location: str | None) -> bool:
    """Shards (`wds:PATTERN`), or a Hugging Face dataset with `streaming` on."""
    return bool(location) and (location.startswith(PREFIX) or (config.streaming and hf.recognises(location)))


# ------------------------------------------------------------------------------------------------
# Shards
def shard_urls(pattern: str) -> list[str]:
    """The shards a pattern names (brace notation, `::` between patterns), in order."""
    return list(_webdataset().shardlists.expand_urls(pattern.removeprefix(PREFIX)))


def open_url(url: str) -> IO[bytes]:
    """A shard (or `_info.json`) for reading: a local path, a `pipe:` command (WebDataset's), or any URL
    fsspec has a driver for (s3://, gs://, https://, ...)."""
    if url.startswith("pipe:"):
        return _webdataset().gopen(url, "rb")
    parsed = urlparse(url)
    if parsed.scheme in ("", "file") or len(parsed.scheme) == 1:  # a path (or a Windows drive letter)
        return open(parsed.path if parsed.scheme == "file" else url, "rb")
    import fsspec

    return fsspec.open(url, "rb").open()


def tar_samples(url: str) -> Iterator[dict[str, Any]]:
    """The samples of one tar shard: the files sharing a key (WebDataset's grouping), by suffix, with `__key__`."""
    tariterators = _webdataset().tariterators
    try:
        stream = open_url(url)
    except FileNotFoundError:
        raise FileNotFoundError(f"shard {url} does not exist") from None
    with stream:
        files = ({**member, "__url__": url} for member in tariterators.tar_file_iterator(stream))
        try:
            yield from tariterators.group_by_keys(files)
        except tarfile.ReadError as error:
            raise ValueError(
                f"shard {url} is not a tar file ({error}); shards are tar archives (focalnet make-shards writes them)"
            ) from None


def read_info(pattern: str) -> dict[str, Any]:
    """The `_info.json` beside the shards of `pattern` (empty when there is none, or for `pipe:` commands)."""
    if pattern.removeprefix(PREFIX).startswith("pipe:"):
        return {}
    url = beside(pattern, INFO_NAME)
    try:
        with open_url(url) as handle:
            info = json.load(handle)
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{url} is not valid JSON ({error}); write it again (focalnet make-shards)") from None
    if not isinstance(info, dict):
        raise ValueError(f"{url} must hold a JSON object (splits, classes, categories)")
    return info


def beside(pattern: str, name: str) -> str:
    """The URL of the file `name` in the folder of the shards that `pattern` names."""
    pattern = pattern.removeprefix(PREFIX)
    return f"{pattern.rsplit('/', 1)[0]}/{name}" if "/" in pattern else name


def info_samples(info: Mapping[str, Any], urls: Sequence[str]) -> int | None:
    """How many samples `urls` hold according to `info`'s splits (shards matched by file name), or None."""
    lengths: dict[str, int] = {}
    for split in info.get("splits", {}).values():
        lengths.update(zip(split.get("filenames", []), split.get("shard_lengths", []), strict=False))
    names = [url.rsplit("/", 1)[-1] for url in urls]
    return sum(lengths[name] for name in names) if all(name in lengths for name in names) else None


@dataclass(frozen=True)
class TarShards:
    """Reads WebDataset shards as rows: a sample's files by suffix (jpg, cls, json, seg.png, ...), and
    its image (`image_key`, else the first of jpg, jpeg, png, webp) also as `image`."""

    urls: list[str]
    image_key: str | None = None

    @property
    def names(self) -> list[str]:
        return self.urls

    def __call__(self, shard: int) -> Iterator[tuple[str, dict[str, Any]]]:
        keys = (self.image_key,) if self.image_key else IMAGE_KEYS
        for sample in tar_samples(self.urls[shard]):
            sample["image"] = next((sample[key] for key in keys if key in sample), None)
            yield f"{self.urls[shard]}/{sample['__key__']}", sample


@dataclass(frozen=True)
class DatasetShards:
    """Reads the shards (data files) of a streamed Hugging Face dataset as rows."""

    rows: Any
    """A `datasets.IterableDataset`."""
    where: str

    @property
    def names(self) -> list[str]:
        return [f"{self.where}#{shard}" for shard in range(self.rows.num_shards)]

    def __call__(self, shard: int) -> Iterator[tuple[str, dict[str, Any]]]:
        part = self.rows.shard(num_shards=self.rows.num_shards, index=shard)
        position = 0
        for batch in part.iter(batch_size=READ_BATCH):  # (not `for row in part`: that splits by worker itself)
            for values in zip(*batch.values(), strict=True):
                yield f"{self.where}#{shard}[{position}]", dict(zip(batch, values, strict=True))
                position += 1


@dataclass
class Stream:
    """A streamed source: rows read shard by shard, each turned by `decode` into a one-sample source of
    the task's kind, and what the task must know before reading any (classes, categories, epoch length)."""

    name: str
    shards: TarShards | DatasetShards
    decode: Callable[..., Any]
    """(row, name) -> a one-sample source (`focalnet.training.rows`)."""
    samples: int | None = None
    """Samples per epoch (training needs it)."""
    classes: list[str] | None = None
    categories: list[dict[str, Any]] | None = None

    def rows(self) -> Iterator[tuple[str, Mapping[str, Any]]]:
        """Every (name, row), shard after shard."""
        for shard in range(len(self.shards.names)):
            yield from self.shards(shard)


# ------------------------------------------------------------------------------------------------
# Sources of each kind
def _tar_shards(config: TrainConfig, location: str, split: str) -> tuple[TarShards, dict[str, Any], int | None]:
    """The shards of `location` (for validation without `val_data`: the _info.json's val split), the
    _info.json, and the number of samples (`train_samples` for training, else the info's count)."""
    info = read_info(location)
    urls = shard_urls(location)
    if split == "val" and config.val_data is None:
        filenames = info.get("splits", {}).get("val", {}).get("filenames")
        if not filenames:
            raise ValueError(
                f"no validation data for {location}: give --val-data (shards, or any source --data takes), "
                f"or keep a val split in the {INFO_NAME} beside the shards (focalnet make-shards writes one)"
            )
        urls = [beside(location, name) for name in filenames]
    if not urls:
        raise ValueError(f"{location} names no shards")
    samples = config.train_samples if split == "train" and config.train_samples else info_samples(info, urls)
    return TarShards(urls, config.image_column), info, samples


def _dataset_split(config: TrainConfig, location: str, split: str) -> tuple[hf.Split, int | None]:
    part = hf.split_of(config, location, split, streaming=True)
    if split == "train" and config.train_samples:
        return part, config.train_samples
    sizes = part.rows.info.splits or {}
    return part, sizes[part.name].num_examples if part.name in sizes else None


def labelled_stream(
    config: TrainConfig, location: str, split: str, classes: Sequence[str] | None = None, labelled: bool = True
) -> Stream:
    """Classification (or, with `labelled` False, masked image modeling) samples streamed from `location`."""
    if location.startswith(PREFIX):
        shards, info, samples = _tar_shards(config, location, split)
        names = list(classes or info.get("classes") or config.class_names or []) if labelled else ["image"]
        layout = LabelledRows("image", "cls" if labelled else None, names)
        stream = Stream(location, shards, layout, samples)
    else:
        part, samples = _dataset_split(config, location, split)
        if labelled:
            layout = hf.labelled_rows(part.rows, config, part.where, classes)
        else:
            columns = hf.UNLABELLED_IMAGE_COLUMNS
            image = hf.pick_column(part.rows, config.image_column, columns, hf.IMAGE_FLAG, part.where)
            layout = LabelledRows(image, None, ["image"])
        columns = [layout.image] + ([layout.label] if layout.label else [])
        stream = Stream(part.where, DatasetShards(hf.undecoded(part.rows, columns), part.where), layout, samples)
    if not layout.classes:
        raise ValueError(
            f'no class names for {location}: keep an {INFO_NAME} with "classes" beside the shards (focalnet '
            "make-shards writes one), use a ClassLabel column, or give them with --set class_names=[...]"
        )
    stream.classes = layout.classes
    return stream


def detection_stream(
    config: TrainConfig, location: str, split: str, categories: list[dict[str, Any]] | None = None
) -> Stream:
    """Detection samples streamed from `location`: shards with `json` (the image's COCO annotations), or
    Hugging Face rows in the cppe-5 layout."""
    if location.startswith(PREFIX):
        shards, info, samples = _tar_shards(config, location, split)
        found = categories or info.get("categories")
        if not found:
            raise ValueError(
                f'no categories for {location}: keep an {INFO_NAME} with "categories" ([{{"id", "name"}}, ...]) '
                "beside the shards (focalnet make-shards writes one)"
            )
        stream = Stream(location, shards, DetectionRows("image", list(found)), samples)
    else:
        part, samples = _dataset_split(config, location, split)
        layout = hf.detection_rows(part.rows, config, part.where)
        columns = [c for c in ("image_id", "width", "height", "objects") if c in part.rows.column_names]
        shards = DatasetShards(hf.undecoded(part.rows, [layout.image, *columns]), part.where)
        stream = Stream(part.where, shards, layout, samples)
    stream.categories = stream.decode.categories
    return stream


def segmentation_stream(
    config: TrainConfig, location: str, split: str, class_names: Sequence[str] | None = None
) -> Stream:
    """Semantic segmentation samples streamed from `location` (shards with `seg.png`, or Hugging Face rows);
    the class names are `class_names` (the training split's), `config.class_names`, or the data's own."""
    if location.startswith(PREFIX):
        shards, info, samples = _tar_shards(config, location, split)
        stream = Stream(location, shards, SegmentationRows("image", "seg.png"), samples)
        names = class_names or config.class_names or info.get("classes")
    else:
        part, samples = _dataset_split(config, location, split)
        image = hf.pick_column(part.rows, config.image_column, hf.IMAGE_COLUMNS, hf.IMAGE_FLAG, part.where)
        label = hf.pick_column(part.rows, config.label_column, hf.MASK_COLUMNS, hf.LABEL_FLAG, part.where)
        shards = DatasetShards(hf.undecoded(part.rows, [image, label]), part.where)
        stream = Stream(part.where, shards, SegmentationRows(image, label), samples)
        names = class_names or hf.segmentation_classes(config, location, part.rows)
    if not names:
        raise ValueError(
            f'no class names for {location}: keep an {INFO_NAME} with "classes" beside the shards '
            "(focalnet make-shards writes one), or give them with --set class_names=[...]"
        )
    stream.classes = list(names)
    return stream


# ------------------------------------------------------------------------------------------------
# Epochs
def sample_seed(*parts: Any) -> int:
    """A seed in [0, 2^62) that depends on `parts` alone (stable across processes and Python runs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


def slot_shards(shards: int, slots: int, slot: int) -> tuple[list[int], int, int]:
    """What `slot` of `slots` reads: (shard indices, stride, offset). With at least as many shards as
    slots, every slots-th shard whole; with fewer, one shard, of which it takes the samples at
    positions offset, offset + stride, ... (the slots sharing that shard split it between them)."""
    if shards >= slots:
        return list(range(slot, shards, slots)), 1, 0
    return [slot % shards], len(range(slot % shards, slots, shards)), slot // shards


def shuffled(items: Iterator[Any], size: int, generator: random.Random) -> Iterator[Any]:
    """`items` in an order drawn through a buffer of `size` (WebDataset's shuffle): each new item takes
    the place of a randomly chosen buffered one, which goes out; the rest leave shuffled at the end."""
    if size <= 1:
        yield from items
        return
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        index = generator.randrange(size)
        yield buffer[index]
        buffer[index] = item
    generator.shuffle(buffer)
    yield from buffer


class StreamedSamples(IterableDataset):
    """A task's samples from a `Stream`, for the engine: `make` (the task's map-style dataset class, given
    a one-sample source) turns each row into the training sample it would be in a folder.

    Training (`for_training`): every process yields exactly `batches_per_epoch` global batches' worth of
    micro-batches per epoch, its data-loading workers a fixed share each (worker w the micro-batches
    w, w + workers, ..., which is the order the DataLoader takes them in). Evaluation (`for_evaluation`):
    every sample once over all processes and workers, each seeded by its shard and position (fixed masks).
    """

    def __init__(self, stream: Stream, make: Callable[[Any], Dataset]) -> None:
        self.stream = stream
        self.make = make
        self.training = False
        self.rank, self.world, self.workers = 0, 1, 0
        self.batch_size = self.micro_batch = 1
        self.seed = self.shuffle_buffer = 0
        self.epoch = self.start_batch = 0

    def for_training(
        self, batch_size: int, micro_batch: int, rank: int, world: int, workers: int, seed: int, shuffle_buffer: int
    ) -> StreamedSamples:
        if self.stream.samples is None:
            raise ValueError(
                f"streamed training needs the epoch length of {self.stream.name}: set --train-samples N, or keep an "
                f"{INFO_NAME} with the shards' sample counts beside them (focalnet make-shards writes one)"
            )
        if self.stream.samples < batch_size:
            raise ValueError(f"an epoch of {self.stream.samples} samples is less than one global batch ({batch_size})")
        self.training = True
        self.batch_size, self.micro_batch = batch_size, micro_batch
        self.rank, self.world, self.workers = rank, world, workers
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        return self

    def for_evaluation(self, rank: int, world: int) -> StreamedSamples:
        self.training = False
        self.rank, self.world = rank, world
        return self

    # -- what the engine asks of a sampler ------------------------------------------------------
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def batches_per_epoch(self) -> int:
        return (self.stream.samples or 0) // self.batch_size

    @property
    def layout(self) -> dict[str, int]:
        """The processes and workers that a mid-epoch position refers to."""
        return {"processes": self.world, "workers": self.workers}

    # -- reading --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            _forget_parent_fsspec_loop()
        if not self.training:
            yield from self._evaluation_samples(self.rank * workers + worker, self.world * workers)
            return
        accumulation = self.batch_size // (self.world * self.micro_batch)
        per_process, started = self.batches_per_epoch * accumulation, self.start_batch * accumulation
        # The DataLoader takes micro-batch i from worker i % workers, counting from where the epoch resumes:
        # this worker continues the stream of the worker that owned those micro-batches from the start.
        owner = (worker + started) % workers
        quota = len(range(owner, per_process, workers)) * self.micro_batch
        done = len(range(owner, started, workers)) * self.micro_batch
        slot, slots = self.rank * workers + owner, self.world * workers
        for seed, name, row in itertools.islice(self._passes(slot, slots), done, quota):
            yield self._sample(row, name, seed)

    def _sample(self, row: Mapping[str, Any], name: str, seed: int) -> Any:
        return self.make(self.stream.decode(row, name))[(0, seed)]

    def _passes(self, slot: int, slots: int) -> Iterator[tuple[int, str, Mapping[str, Any]]]:
        """This slot's rows, shuffled pass by pass, as many passes as asked for (seeded by the epoch)."""
        count = len(self.stream.shards.names)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(count, generator=generator).tolist()
        for number in itertools.count():
            rows = self._slot_rows(order, slot, slots, number)
            shuffle = random.Random(sample_seed(self.seed, self.epoch, number, slot))
            empty = True
            for item in shuffled(rows, self.shuffle_buffer, shuffle):
                empty = False
                yield item
            if empty:
                raise ValueError(f"{self.stream.name}: the shards read by data-loading slot {slot} hold no samples")

    def _slot_rows(
        self, order: list[int], slot: int, slots: int, number: int
    ) -> Iterator[tuple[int, str, Mapping[str, Any]]]:
        shards, stride, offset = slot_shards(len(order), slots, slot)
        for shard in (order[index] for index in shards):
            shard_name = self.stream.shards.names[shard]
            for position, (name, row) in enumerate(self.stream.shards(shard)):
                if position % stride == offset:
                    yield sample_seed(self.seed, self.epoch, number, shard_name, position), name, row

    def _evaluation_samples(self, slot: int, slots: int) -> Iterator[Any]:
        shards, stride, offset = slot_shards(len(self.stream.shards.names), slots, slot)
        for shard in shards:
            shard_name = self.stream.shards.names[shard]
            for position, (name, row) in enumerate(self.stream.shards(shard)):
                if position % stride == offset:
                    yield self._sample(row, name, sample_seed(shard_name, position))

    def head(self, count: int) -> list[Any]:
        """The first `count` evaluation samples of the stream (the first shard's first samples)."""
        return list(itertools.islice(self._evaluation_samples(0, 1), count))


def _forget_parent_fsspec_loop() -> None:
    """In a forked data-loading worker: drop fsspec's event loop and lock, which belong to the parent
    (a worker using them hangs; `datasets` resets them in its workers too)."""
    if "fsspec" in sys.modules:
        import fsspec.asyn

        fsspec.asyn.reset_lock()


def samples(source: Any, make: Callable[[Any], Dataset]) -> Dataset:
    """`make(source)` for a map-style source; `StreamedSamples` for a `Stream`."""
    return StreamedSamples(source, make) if isinstance(source, Stream) else make(source)
