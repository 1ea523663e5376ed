"""Training-loader throughput of one image set stored four ways: class folders, a `save_to_disk`
dataset, parquet files and WebDataset shards (written by `focalnet make-shards`).

    .venv/bin/python benchmarks/data_sources.py [--images 2000] [--workers 0 2] [--epochs 2]
        [--json benchmarks/results/data-sources.json]

The images: `--images` random crops (a quarter to a half of the short side, resized to 320x240 or
240x320) of the photographs bundled with the tests, saved as JPEG (quality 90) in three classes, seeded.
Each source is read through the engine's own path - the classification task's sources and datasets,
and `focalnet.training.data.training_loader` (the index-and-seed sampler for the map-style sources, a
`StreamedSamples` plan for the shards) - with the fine-tuning recipe's training augmentation at 224 px
(random resized crop, flip, RandAugment, random erasing), batches of `--batch-size`, for each number of
`--workers`. First-batch latency: from creating the epoch's iterator to the first batch (workers
started, shards opened). Images/s: the epoch's images over its whole time, the best of `--epochs`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from focalnet.benchmark import machine_info
from focalnet.cli import main as focalnet
from focalnet.training import load_config
from focalnet.training.classification import ClassificationTask
from focalnet.training.data import training_loader
from focalnet.training.distributed import Processes

PHOTOS = Path(__file__).resolve().parent.parent / "tests" / "data" / "images"
CLASSES = ("astronaut", "chelsea", "rocket")
SOURCES = ("folder", "save_to_disk", "parquet", "shards")


def write_images(root: Path, count: int, seed: int) -> None:
    """root/{train,val}/<photo>/*.jpg: `count` training crops (and a few validation ones), seeded."""
    rng = random.Random(seed)
    photos = {name: Image.open(PHOTOS / f"{name}.jpg").convert("RGB") for name in CLASSES}
    for split, total in (("train", count), ("val", len(CLASSES))):
        for index in range(total):
            name = CLASSES[index % len(CLASSES)]
            photo = photos[name]
            side = rng.randint(min(photo.size) // 4, min(photo.size) // 2)
            left, top = rng.randint(0, photo.width - side), rng.randint(0, photo.height - side)
            size = (320, 240) if rng.random() < 0.5 else (240, 320)
            crop = photo.crop((left, top, left + side, top + side)).resize(size, Image.BICUBIC)
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            crop.save(folder / f"{index:05d}.jpg", quality=90)


def write_sources(root: Path, shard_size: int) -> dict[str, tuple[str, Path]]:
    """The folder as a save_to_disk dataset, parquet files and shards: for each, what `--data` takes and
    the directory holding it."""
    import datasets

    folder = root / "folder"
    classes = sorted(p.name for p in (folder / "train").iterdir())
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    splits = {}
    for split in ("train", "val"):
        files = [(p, label) for label, name in enumerate(classes) for p in sorted((folder / split / name).iterdir())]
        rows = {"image": [{"bytes": p.read_bytes(), "path": p.name} for p, _ in files], "label": [n for _, n in files]}
        splits["validation" if split == "val" else split] = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(root / "save_to_disk"))
    for name, split in splits.items():
        split.to_parquet(str(root / "parquet" / f"{name}.parquet"))
    assert focalnet(["make-shards", str(folder), str(root / "shards"), "--shard-size", str(shard_size)]) == 0
    shards = json.loads((root / "shards" / "_info.json").read_text())["splits"]["train"]["filenames"]
    pattern = f"wds:{root}/shards/train-{{000000..{len(shards) - 1:06d}}}.tar"
    return {
        "folder": (str(folder), folder),
        "save_to_disk": (str(root / "save_to_disk"), root / "save_to_disk"),
        "parquet": (str(root / "parquet"), root / "parquet"),
        "shards": (pattern, root / "shards"),
    }


def size_on_disk(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def measure(data: str, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """First-batch latency and images/s of the training loader over `data`, the best of `--epochs` epochs."""
    overrides = {"data": data, "workers": workers, "batch_size": args.batch_size, "image_size": 224}
    config = load_config(recipe="finetune", overrides=overrides)
    task = ClassificationTask(config, Processes(0, 1, torch.device("cpu")))
    batch = config.batch_size
    plan, loader = training_loader(
        task.train_dataset(),
        batch,
        batch,
        seed=config.seed,
        workers=workers,
        collate_fn=task.collate,
        shuffle_buffer=config.shuffle_buffer,
    )
    epochs = []
    for epoch in range(args.epochs):
        plan.set_epoch(epoch)
        started = time.perf_counter()
        images, first = 0, None
        for pixels, _, _ in loader:
            first = first if first is not None else time.perf_counter() - started
            images += len(pixels)
        epochs.append({"seconds": time.perf_counter() - started, "first_batch_seconds": first, "images": images})
    best = min(epochs, key=lambda e: e["seconds"])
    return {
        "workers": workers,
        "images_per_sec": best["images"] / best["seconds"],
        "first_batch_seconds": min(e["first_batch_seconds"] for e in epochs),
        "epochs": epochs,
    }


def table(results: list[dict[str, Any]], workers: list[int]) -> str:
    header = "| source | size on disk | " + " | ".join(
        f"img/s, {w} workers | first batch, {w} workers" for w in workers
    )
    lines = [header + " |", "|---" * (2 + 2 * len(workers)) + "|"]
    for result in results:
        cells = [result["source"], f"{result['bytes'] / 2**20:.1f} MiB"]
        for run in result["runs"]:
            cells += [f"{run['images_per_sec']:.0f}", f"{run['first_batch_seconds'] * 1000:.0f} ms"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="training images (default 2000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="data-loading workers to compare")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=500, help="samples per shard (default 500)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs timed per source and worker count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write every number, with the machine, to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    with tempfile.TemporaryDirectory(prefix="focalnet-data-sources-") as scratch:
        root = Path(scratch)
        os.environ["HF_DATASETS_CACHE"] = str(root / "cache")  # (parquet is converted there; before any import)
        write_images(root / "folder", args.images, args.seed)
        locations = write_sources(root, args.shard_size)
        results = []
        for source in SOURCES:
            data, directory = locations[source]
            runs = [measure(data, workers, args) for workers in args.workers]
            results.append({"source": source, "bytes": size_on_disk(directory), "runs": runs})
            print(f"{source}: " + ", ".join(f"{r['workers']} workers {r['images_per_sec']:.0f} img/s" for r in runs))
    print(table(results, args.workers))
    if args.json:
        report = {"machine": machine_info("cpu"), "settings": vars(args) | {"json": str(args.json)}, "results": results}
        args.json.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
