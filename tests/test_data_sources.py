"""Training on Hugging Face datasets and WebDataset shards: every task from `save_to_disk`, parquet and
shards (written by `focalnet make-shards`); map-style sources give exactly the folders' metrics;
columns, splits and class names as transformers' scripts read them; bad rows and shards. Every
dataset is built here (nothing is downloaded; HF_HUB_OFFLINE is on)."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from focalnet.cli import main
from focalnet.detection.synthetic import make_shapes_dataset
from focalnet.training import load_config, train
from focalnet.training.data import digits
from test_detection_training import TINY_DETECTOR
from test_segmentation_training import TINY_UPERNET
from test_training_runs import TINY_MODEL

datasets = pytest.importorskip("datasets")
pytest.importorskip("webdataset")
pytest.importorskip("pycocotools")
pytestmark = [
    pytest.mark.usefixtures("hf_offline", "no_curves"),
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning"),
]

SMALL_DETECTOR = TINY_DETECTOR | {
    "model_overrides": {"embed_dim": 16, "depths": [1, 1, 1, 1]},
    "detector_kwargs": TINY_DETECTOR["detector_kwargs"] | {"fpn_channels": 16},
    "min_size": 64,
    "max_size": 96,
    "scales": [64, 80],
}
SMALL_UPERNET = TINY_UPERNET | {
    "model_overrides": {"embed_dim": 16, "depths": [1, 1, 1, 1]},
    "head_overrides": {"hidden_size": 16, "auxiliary_channels": 8},
    "image_size": 64,
    "base_size": [96, 64],
    "batch_size": 4,
}
RUNS = {
    "classification": ("demo", {"model_overrides": TINY_MODEL, "batch_size": 8}),
    "masked-image-modeling": (
        "simmim",
        {
            "model_overrides": TINY_MODEL,
            "image_size": 16,
            "mask_patch_size": 4,
            "batch_size": 8,
            "lr_scale_batch": None,
            "reconstruction_images": 2,
        },
    ),
    "detection": ("detection", SMALL_DETECTOR),
    "instance-segmentation": ("detection", SMALL_DETECTOR),
    "semantic-segmentation": ("segmentation", SMALL_UPERNET),
}


def run(task: str, data: str, output_dir: Path, **overrides) -> list[dict]:
    """One epoch of the task's tiny run on `data`, in this process."""
    recipe, settings = RUNS[task]
    values = {"task": task, "data": data, "output_dir": str(output_dir), "epochs": 1, "warmup_epochs": 0.5}
    return train(load_config(recipe=recipe, overrides={**values, **settings, **overrides}))


# ------------------------------------------------------------------------------------------------
# The same images as folders and as Hugging Face datasets (rows in the folders' order)
def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def image_value(path: Path) -> dict:
    return {"bytes": path.read_bytes(), "path": path.name}


def digit_folders(root: Path, per_class: dict[str, int]) -> Path:
    """root/{train,val}/digit<d>/<n>.png: `per_class[split]` digits of each class."""
    for split, count in per_class.items():
        source = digits(split)
        taken = {label: 0 for label in range(10)}
        for loader, label in zip(source.loaders, source.labels, strict=True):
            if taken[label] < count:
                folder = root / split / f"digit{label}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{taken[label]:02d}.png").write_bytes(png_bytes(loader()))
                taken[label] += 1
    return root


def class_folder_rows(root: Path, split: str, label_column: str = "labels") -> datasets.Dataset:
    """The class folders of `split` as rows (beans' columns: image, labels), in the folder loader's order."""
    classes = sorted(p.name for p in (root / "train").iterdir())
    files = [(path, label) for label, name in enumerate(classes) for path in sorted((root / split / name).iterdir())]
    features = datasets.Features({"image": datasets.Image(), label_column: datasets.ClassLabel(names=classes)})
    rows = {"image": [image_value(path) for path, _ in files], label_column: [label for _, label in files]}
    return datasets.Dataset.from_dict(rows, features=features)


def unlabelled_rows(root: Path, split: str) -> datasets.Dataset:
    """Every image under root/split as rows of one column named `img` (run_mim's fallback)."""
    files = sorted(p for p in (root / split).rglob("*.png"))
    features = datasets.Features({"img": datasets.Image()})
    return datasets.Dataset.from_dict({"img": [image_value(path) for path in files]}, features=features)


def coco_rows(root: Path, split: str) -> datasets.Dataset:
    """A COCO-layout split in the cppe-5 layout: image, image_id, width, height, objects."""
    coco = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(categories)}
    by_image: dict[int, list[dict]] = {image["id"]: [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        by_image[annotation["image_id"]].append(annotation)
    float64 = datasets.Value("float64")
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("int64"),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            "objects": {
                "id": datasets.List(datasets.Value("int64")),
                "area": datasets.List(float64),
                "bbox": datasets.List(datasets.List(float64, length=4)),
                "category": datasets.List(datasets.ClassLabel(names=[c["name"] for c in categories])),
                "iscrowd": datasets.List(datasets.Value("int64")),
                "segmentation": datasets.List(datasets.List(datasets.List(float64))),
            },
        }
    )
    rows: dict[str, list] = {name: [] for name in features}
    for image in sorted(coco["images"], key=lambda i: i["id"]):
        found = by_image[image["id"]]
        rows["image"].append(image_value(root / split / image["file_name"]))
        rows["image_id"].append(image["id"])
        rows["width"].append(image["width"])
        rows["height"].append(image["height"])
        rows["objects"].append(
            {
                "id": [a["id"] for a in found],
                "area": [a["area"] for a in found],
                "bbox": [a["bbox"] for a in found],
                "category": [index[a["category_id"]] for a in found],
                "iscrowd": [a["iscrowd"] for a in found],
                "segmentation": [a["segmentation"] for a in found],
            }
        )
    return datasets.Dataset.from_dict(rows, features=features)


def ade20k_rows(root: Path, split: str) -> datasets.Dataset:
    """An ADE20K-layout split as scene_parse_150 keeps it: image, annotation."""
    folder = {"train": "training", "val": "validation"}[split]
    images = sorted((root / "images" / folder).iterdir())
    rows = {
        "image": [image_value(path) for path in images],
        "annotation": [image_value(root / "annotations" / folder / path.name) for path in images],
    }
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    return datasets.Dataset.from_dict(rows, features=features)


def write_sources(
    root: Path, rows: Callable[[Path, str], datasets.Dataset], task: str, shard_size: int, extra: dict | None = None
) -> Path:
    """The folder at root/folder also as root/disk (save_to_disk), root/parquet (train and validation files)
    and root/shards (`focalnet make-shards`); `extra` files (name: text) go beside the Hugging Face ones."""
    splits = datasets.DatasetDict(train=rows(root / "folder", "train"), validation=rows(root / "folder", "val"))
    splits.save_to_disk(str(root / "disk"))
    for name, split in splits.items():
        split.to_parquet(str(root / "parquet" / f"{name}.parquet"))
    for name, text in (extra or {}).items():
        for where in ("disk", "parquet"):
            (root / where / name).write_text(text)
    make_shards(str(root / "folder"), root / "shards", task, shard_size)
    return root


def make_shards(source: str, output: Path, task: str, size: int, *extra: str) -> None:
    assert main(["make-shards", source, str(output), "--task", task, "--shard-size", str(size), *extra]) == 0


def build_digit_sources(root: Path) -> Path:
    """40 + 20 digits as class folders, save_to_disk, parquet and shards of 10."""
    digit_folders(root / "folder", {"train": 4, "val": 2})
    return write_sources(root, class_folder_rows, "classification", 10)


@pytest.fixture(scope="module")
def digit_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_digit_sources(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def unlabelled_sources(digit_sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unlabelled")
    shutil.copytree(digit_sources / "folder", root / "folder")
    return write_sources(root, unlabelled_rows, "masked-image-modeling", 10)


@pytest.fixture(scope="module")
def coco_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    make_shapes_dataset(root / "folder", 8, 4, seed=3, min_side=64, max_side=96)
    return write_sources(root, coco_rows, "instance-segmentation", 4)


@pytest.fixture(scope="module")
def ade20k_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ade20k")
    make_shapes_dataset(root / "folder", 8, 4, seed=4, min_side=64, max_side=96, layout="ade20k")
    names = (root / "folder" / "labels.txt").read_text().split()
    return write_sources(
        root, ade20k_rows, "semantic-segmentation", 4, {"id2label.json": json.dumps(dict(enumerate(names)))}
    )


SOURCES = {
    "classification": "digit_sources",
    "masked-image-modeling": "unlabelled_sources",
    "detection": "coco_sources",
    "instance-segmentation": "coco_sources",
    "semantic-segmentation": "ade20k_sources",
}


def same_metrics(rows: list[dict], reference: list[dict]) -> None:
    """Every logged number equal to 1e-6 (the throughput aside)."""
    assert [row.keys() for row in rows] == [row.keys() for row in reference]
    for row, expected in zip(rows, reference, strict=True):
        for key, value in expected.items():
            if key != "images_per_sec":
                assert row[key] == pytest.approx(value, rel=0, abs=1e-6), key


# ------------------------------------------------------------------------------------------------
@pytest.mark.numerics
@pytest.mark.parametrize("task", list(SOURCES))
def test_every_task_trains_from_hf_parquet_and_shards_as_from_folders(
    task: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """save_to_disk and parquet give the folders' metrics.jsonl (the adapter changes nothing: the same
    records through the same sampler); shards train the same steps (their own order and seeds)."""
    root: Path = request.getfixturevalue(SOURCES[task])
    reference = run(task, str(root / "folder"), tmp_path / "folder")
    for source in ("disk", "parquet"):
        same_metrics(run(task, str(root / source), tmp_path / source), reference)
    info = json.loads((root / "shards" / "_info.json").read_text())
    last = len(info["splits"]["train"]["filenames"]) - 1
    shards = run(task, f"wds:{root}/shards/train-{{000000..{last:06d}}}.tar", tmp_path / "shards")
    assert [row["step"] for row in shards] == [row["step"] for row in reference]
    assert shards[0].keys() == reference[0].keys() and torch.isfinite(torch.tensor(shards[0]["train_loss"]))
    assert shards[0]["skipped_images"] == 0
    assert (tmp_path / "shards" / "model").is_dir()


def same_report(report: object, reference: object, where: str = "") -> None:
    """Equal evaluation.json contents: counts exactly, floats to 1e-9 (sums taken in another order)."""
    if isinstance(reference, dict):
        assert report.keys() == reference.keys(), where
        for key in reference:
            same_report(report[key], reference[key], f"{where}.{key}")
    elif isinstance(reference, list):
        assert len(report) == len(reference), where
        for index, (item, expected) in enumerate(zip(report, reference, strict=True)):
            same_report(item, expected, f"{where}[{index}]")
    elif isinstance(reference, float):
        assert report == pytest.approx(reference, rel=1e-9, abs=1e-12, nan_ok=True), where
    else:
        assert report == reference, where


@pytest.mark.numerics
@pytest.mark.parametrize(
    ("task", "nonzero"),
    [("classification", "acc5"), ("instance-segmentation", "bbox_map"), ("semantic-segmentation", "miou")],
)
def test_evaluate_reads_hf_parquet_and_shards_as_folders(
    task: str, nonzero: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """`focalnet evaluate` on the validation images as a folder, save_to_disk, parquet and shards: the same
    evaluation.json and detections (each image is predicted alone: neither order nor source changes a number)."""
    root: Path = request.getfixturevalue(SOURCES[task])
    detector = "detector_kwargs" in RUNS[task][1]
    keep_every_box = {"detector_kwargs": SMALL_DETECTOR["detector_kwargs"] | {"box_score_thresh": 0.0}}
    run(task, str(root / "folder"), tmp_path / "run", **(keep_every_box if detector else {}))
    info = json.loads((root / "shards" / "_info.json").read_text())
    last = len(info["splits"]["val"]["filenames"]) - 1
    locations = {
        "folder": str(root / "folder"),
        "disk": str(root / "disk"),
        "parquet": str(root / "parquet"),
        "shards": f"wds:{root}/shards/val-{{000000..{last:06d}}}.tar",
    }
    reports = {}
    for name, data in locations.items():
        output = tmp_path / name
        model = str(tmp_path / "run" / "model")
        assert main(["evaluate", "--model", model, "--task", task, "--data", data, "--output-dir", str(output)]) == 0
        reports[name] = json.loads((output / "evaluation.json").read_text())
        if detector:  # category ids differ between the sources; images and boxes do not
            found = json.loads((output / "predictions.json").read_text())
            reports[name]["boxes"] = sorted([r["image_id"], r["score"], *r["bbox"]] for r in found)
    assert reports["folder"][nonzero] > 0  # not a comparison of zeros
    for name in ("disk", "parquet", "shards"):
        same_report(reports[name], reports["folder"], name)


def test_make_shards_writes_every_split_and_its_info(digit_sources: Path, tmp_path: Path, capsys) -> None:
    info = json.loads((digit_sources / "shards" / "_info.json").read_text())
    assert info["task"] == "classification" and info["classes"] == [f"digit{d}" for d in range(10)]
    train, val = info["splits"]["train"], info["splits"]["val"]
    assert train["filenames"] == [f"train-{n:06d}.tar" for n in range(4)] and train["shard_lengths"] == [10] * 4
    assert val["filenames"] == ["val-000000.tar", "val-000001.tar"] and val["num_samples"] == 20
    written = []
    for name in train["filenames"]:
        with tarfile.open(digit_sources / "shards" / name) as tar:
            files = {member: tar.extractfile(member).read() for member in tar.getnames()}
        written += [(files[f"{key}.png"], int(files[f"{key}.cls"])) for key in sorted({n[:9] for n in files})]
    folders = sorted((digit_sources / "folder" / "train").iterdir())
    stored = [(path.read_bytes(), label) for label, folder in enumerate(folders) for path in sorted(folder.iterdir())]
    assert sorted(written) == sorted(stored)  # the files' bytes as stored, with their classes
    assert len({label for _, label in written[:10]}) > 3  # shuffled (seeded): the first shard mixes the classes
    with tarfile.open(digit_sources / "shards" / "val-000000.tar") as tar:  # validation in order
        assert tar.getnames()[:2] == ["000000000.png", "000000000.cls"]
        assert tar.extractfile("000000000.png").read() == (digit_sources / "folder/val/digit0/00.png").read_bytes()
    assert not list((digit_sources / "shards").glob(".*")), "temporary files left behind"

    capsys.readouterr()  # a Hugging Face dataset, and a refusal to write over shards
    make_shards(str(digit_sources / "disk"), tmp_path / "from-hf", "classification", 25)
    printed = capsys.readouterr().out
    assert f"train: 40 samples in 2 shards ({tmp_path}/from-hf/train-{{000000..000001}}.tar)" in printed
    assert main(["make-shards", str(digit_sources / "disk"), str(tmp_path / "from-hf")]) == 2
    assert "already holds shards" in capsys.readouterr().err


def test_make_shards_reads_lists(digit_sources: Path, tmp_path: Path) -> None:
    files = sorted((digit_sources / "folder").rglob("*.png"))
    for split in ("train", "val"):
        lines = [f"{p},{p.parent.name}" for p in files if p.parent.parent.name == split]
        (tmp_path / f"{split}.csv").write_text("\n".join(lines))
    make_shards(
        str(tmp_path / "train.csv"), tmp_path / "shards", "classification", 100, "--val-list", str(tmp_path / "val.csv")
    )
    info = json.loads((tmp_path / "shards" / "_info.json").read_text())
    assert info["splits"]["train"]["num_samples"] == 40 and info["splits"]["val"]["num_samples"] == 20


def test_detection_shards_hold_the_coco_annotations(coco_sources: Path) -> None:
    coco = json.loads((coco_sources / "folder" / "annotations" / "instances_train.json").read_text())
    info = json.loads((coco_sources / "shards" / "_info.json").read_text())
    assert info["categories"] == [{"id": c["id"], "name": c["name"]} for c in coco["categories"]]
    with tarfile.open(coco_sources / "shards" / "val-000000.tar") as tar:
        fields = json.loads(tar.extractfile("000000000.json").read())
    coco = json.loads((coco_sources / "folder" / "annotations" / "instances_val.json").read_text())
    first = coco["images"][0]
    assert (fields["image_id"], fields["width"], fields["height"]) == (first["id"], first["width"], first["height"])
    expected = [a for a in coco["annotations"] if a["image_id"] == first["id"]]
    for written, original in zip(fields["annotations"], expected, strict=True):
        assert written["bbox"] == pytest.approx(original["bbox"], abs=1e-9)
        assert (written["category_id"], written["area"], written["iscrowd"]) == (
            original["category_id"],
            original["area"],
            original["iscrowd"],
        )
    assert [a["segmentation"] for a in fields["annotations"]] == [a["segmentation"] for a in expected]


# ------------------------------------------------------------------------------------------------
# Columns, splits, classes
def test_columns_and_classes_follow_transformers_scripts(digit_sources: Path, tmp_path: Path) -> None:
    from focalnet.training.sources import labelled_sources

    config = load_config(overrides={"data": str(digit_sources / "disk")})
    train, val = labelled_sources(config)  # `labels` found where `label` is absent; names from the ClassLabel
    assert train.classes == [f"digit{d}" for d in range(10)] and len(train) == 40 and len(val) == 20
    assert train.labels[:5] == [0, 0, 0, 0, 1]

    # no validation split: val_fraction of train held out, fixed by split_seed
    only_train = tmp_path / "only-train"
    datasets.load_from_disk(str(digit_sources / "disk"))["train"].save_to_disk(str(only_train))
    held = load_config(overrides={"data": str(only_train), "val_fraction": 0.25})
    train, val = labelled_sources(held)
    assert (len(train), len(val)) == (30, 10)
    assert not set(train.names) & set(val.names)
    # --train-split / --val-split name others
    renamed = load_config(
        overrides={"data": str(digit_sources / "disk"), "train_split": "validation", "val_split": "train"}
    )
    train, val = labelled_sources(renamed)
    assert (len(train), len(val)) == (20, 40)


@pytest.mark.parametrize(
    ("task", "overrides", "message"),
    [
        (
            "classification",
            {"image_column": "pixels"},
            r"no column 'pixels' \(its columns: image, labels\); .*--image-column",
        ),
        (
            "classification",
            {"label_column": "class"},
            r"no column 'class' \(its columns: image, labels\); .*--label-column",
        ),
        (
            "classification",
            {"train_split": "test"},
            r"no split 'test' \(its splits: train, validation\); set --train-split",
        ),
        ("semantic-segmentation", {"label_column": "mask"}, r"no column 'mask' \(its columns: image, labels\)"),
        ("detection", {}, r"no column 'objects' \(its columns: image, labels\)"),
    ],
)
def test_wrong_columns_are_errors_naming_the_columns(
    digit_sources: Path, tmp_path: Path, capsys, task: str, overrides: dict, message: str
) -> None:
    values = {"task": task, "output_dir": str(tmp_path), "class_names": ["a", "b"], **overrides}
    args = [
        "train",
        "--data",
        str(digit_sources / "parquet"),
        *(f"--set={k}={json.dumps(v)}" for k, v in values.items()),
    ]
    assert main(args) == 2
    assert re.search(message, capsys.readouterr().err)


def test_unreadable_rows_are_skipped_and_counted(digit_sources: Path, tmp_path: Path) -> None:
    """An undecodable image, and detection rows with broken annotations, are skipped and counted."""
    rows = datasets.load_from_disk(str(digit_sources / "disk"))
    broken = rows["train"].cast_column("image", datasets.Image(decode=False))
    values = broken.to_dict()
    values["image"][3] = {"bytes": b"\x89PNG\r\n\x1a\n not an image", "path": "broken.png"}
    damaged = datasets.DatasetDict(
        train=datasets.Dataset.from_dict(values, features=broken.features), validation=rows["validation"]
    )
    damaged.save_to_disk(str(tmp_path / "damaged"))
    history = run("classification", str(tmp_path / "damaged"), tmp_path / "run")
    assert history[0]["skipped_images"] == 1  # seen once in the epoch (5 batches of 8 take all 40)


def test_broken_detection_rows_are_kept_as_skipped_samples(coco_sources: Path) -> None:
    from focalnet.training.hf import coco_records

    rows = datasets.load_from_disk(str(coco_sources / "disk"))["train"]
    values = rows.to_dict()
    values["objects"][1]["bbox"][0] = [1.0, 2.0, 3.0, 4.0]
    values["objects"][2]["category"].append(0)  # one category more than boxes
    damaged = datasets.Dataset.from_dict(values, features=rows.features)
    annotations = coco_records(damaged, load_config(overrides={"task": "detection"}), "rows")
    assert len(annotations.images) == 8
    with pytest.raises(ValueError, match=r"rows\[2\]: unusable annotations \(ValueError"):
        annotations.images[2].load()
    assert annotations.images[1].boxes[0] == [1.0, 2.0, 4.0, 6.0]  # xywh -> xyxy
    assert annotations.images[0].load().size == (annotations.images[0].width, annotations.images[0].height)


def test_semantic_segmentation_class_names_come_from_id2label(ade20k_sources: Path) -> None:
    from focalnet.training.sources import segmentation_sources

    names = (ade20k_sources / "folder" / "labels.txt").read_text().split()
    train, val, found = segmentation_sources(load_config(overrides={"data": str(ade20k_sources / "parquet")}))
    assert found == names and len(train) == 8 and len(val) == 4
    given = load_config(overrides={"data": str(ade20k_sources / "parquet"), "class_names": ["a", "b", "c", "d"]})
    assert segmentation_sources(given)[2] == ["a", "b", "c", "d"]
