"""The `focalnet` command line: one sub-command per job, each in its own small function."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import torch

from . import __version__
from ._io import atomic_write
from .benchmark import DEFAULT_BATCH_SIZES, DEFAULT_MODES, DEFAULT_PRESETS, MODES
from .configuration import FocalNetConfig
from .predict import is_detector_source
from .presets import PRESETS, list_presets
from .training.config import RECIPES, TASKS
from .training.trainer import CheckpointCorruptError

T = TypeVar("T")


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """A tqdm progress bar on stderr when that is a terminal and tqdm is installed (the `cli` extra)."""
    try:
        from tqdm import tqdm
    except ImportError:
        yield from items
        return
    yield from tqdm(items, desc=description, total=total, file=sys.stderr, leave=False, disable=None)


def demo_image_path() -> str:
    """The photograph bundled with the package (a cat; see assets/NOTICE.md)."""
    return str(resources.files("focalnet") / "assets" / "chelsea.jpg")


# ------------------------------------------------------------------------------------------------
# focalnet presets
def cmd_presets(args: argparse.Namespace) -> int:
    from .stats import model_stats

    names = args.names or list_presets()
    for name in names:
        if name not in PRESETS:
            raise SystemExit(f"error: unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
    rows = []
    for name in progress(names, "counting", total=len(names)):
        stats = model_stats(FocalNetConfig.from_preset(name))
        rows.append(
            {
                "name": name,
                "params": stats.params,
                "params_without_head": stats.params_without_head,
                "gmacs": round(stats.macs / 1e9, 3),
                "image_size": stats.image_size[0],
                "num_labels": stats.logits_shape[-1],
                "feature_shapes": [list(shape) for shape in stats.feature_shapes],
                "description": PRESETS[name].description,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'preset':<25} {'params':>13} {'no head':>13} {'GMACs':>7} {'px':>4} {'labels':>6}"
    header += "  stage outputs (C x H x W)"
    print(header)
    print("-" * len(header))
    for row in rows:
        shapes = "  ".join("x".join(str(v) for v in shape) for shape in row["feature_shapes"])
        print(
            f"{row['name']:<25} {row['params']:>13,} {row['params_without_head']:>13,} {row['gmacs']:>7.2f} "
            f"{row['image_size']:>4} {row['num_labels']:>6}  {shapes}"
        )
    print("\nGMACs: multiply-adds of one image at the preset's native resolution (torch.utils.flop_counter).")
    return 0


# ------------------------------------------------------------------------------------------------
# focalnet demo
def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def cmd_demo(args: argparse.Namespace) -> int:
    from .image_processing import FocalNetImageProcessor
    from .modeling import FocalNetForImageClassification

    config = FocalNetConfig.from_preset(args.preset)
    torch.manual_seed(args.seed)
    model = FocalNetForImageClassification(config).eval()
    image_path = args.image or demo_image_path()
    processor = FocalNetImageProcessor(crop_size=config.image_size_2d[0])
    pixel_values = processor(image_path)["pixel_values"]
    print(f"model   {args.preset}: {model.num_parameters():,} parameters (random weights, seed {args.seed})")
    print(f"image   {image_path} -> pixel_values {tuple(pixel_values.shape)}")
    with torch.inference_mode():
        model(pixel_values)  # warm-up
        elapsed = statistics.median(_seconds(lambda: model(pixel_values)) for _ in range(5))  # default path
        out = model(pixel_values, output_hidden_states=True, output_modulators=True)
    print(f"forward {elapsed * 1000:.1f} ms (median of 5) on {torch.get_num_threads()} CPU threads")
    steps = ["stem"] + [f"stage{i} (+ downsample)" for i in range(1, config.num_stages)] + [f"stage{config.num_stages}"]
    for step, hidden in zip(steps, out.reshaped_hidden_states, strict=True):
        print(f"  after {step:<22} {tuple(hidden.shape)}")
    print(f"logits  {tuple(out.logits.shape)}; top-5 classes {out.logits.topk(5).indices[0].tolist()} (untrained)")
    strength = [m.abs().mean().item() for m in out.modulators]
    print(f"modulators: {len(strength)} blocks, mean |modulator| per block " + " ".join(f"{s:.3f}" for s in strength))
    return 0


# ------------------------------------------------------------------------------------------------
# focalnet convert
def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`--set key=value` pairs -> config overrides; values are read as JSON when they parse."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes key=value, got {pair!r}")
        try:
            overrides[key] = json.loads(value.lower() if value.lower() in ("true", "false", "null") else value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert_checkpoint

    written = convert_checkpoint(args.source, args.destination, args.to, **parse_overrides(args.set))
    print(f"wrote {args.to} layout: {written}")
    return 0


# ------------------------------------------------------------------------------------------------
# focalnet predict
def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import Predictor, find_images

    images = find_images(args.inputs)
    if not images:
        raise ValueError(f"no image files found in {', '.join(args.inputs)}")
    if args.onnx:
        from .export import OnnxPredictor

        if args.set:
            raise ValueError("--set changes the config of a PyTorch model; an ONNX file is fixed (export it again)")
        predictor = OnnxPredictor.from_file(args.onnx)
    elif is_detector_source(args.model):
        return predict_detections(args, images)
    elif _is_segmenter(args.model):
        return predict_segmentation(args, images)
    else:
        predictor = Predictor.from_pretrained(args.model, device=args.device, **parse_overrides(args.set))
    results, failures = [], []
    batches = [images[i : i + args.batch_size] for i in range(0, len(images), args.batch_size)]
    bar = progress(batches, "predicting", total=len(batches)) if len(images) > args.batch_size else batches
    for batch in bar:
        batch_results, batch_failures = predictor.predict(batch, top_k=args.top_k)
        results += batch_results
        failures += batch_failures
        for path, error in batch_failures:
            print(f"skipped {path}: {error}", file=sys.stderr)
    if args.json:
        print(json.dumps({"predictions": results, "failed": [{"path": p, "error": e} for p, e in failures]}, indent=2))
    else:
        for result in results:
            print(result["path"])
            for guess in result["top_k"]:
                print(f"  {guess['score']:7.2%}  {guess['index']:>5}  {guess['label']}")
    if failures:
        print(f"{len(failures)} of {len(images)} images could not be read", file=sys.stderr)
        return 1
    return 0


def _is_segmenter(source: str) -> bool:
    from .segmentation import is_upernet_directory

    return is_upernet_directory(source)


def predict_segmentation(args: argparse.Namespace, images: list[str]) -> int:
    """Label maps (PNG, palette) and colour overlays with a legend, per image, of a saved UperNet."""
    from .segmentation import UperNetForSemanticSegmentation
    from .segmentation.inference import SegmentationPreprocessing
    from .segmentation.predict import predict_images

    model = UperNetForSemanticSegmentation.from_pretrained(args.model)
    processing = SegmentationPreprocessing.load(args.model)
    written, failures = predict_images(
        model, processing, images, args.output_dir, args.window, args.stride, args.device, progress
    )
    for failure in failures:
        print(f"skipped {failure}", file=sys.stderr)
    print(f"wrote {len(written)} files ({len(written) // 2} label maps and overlays) to {args.output_dir}")
    if failures:
        print(f"{len(failures)} of {len(images)} images could not be read", file=sys.stderr)
        return 1
    return 0


def predict_detections(args: argparse.Namespace, images: list[str]) -> int:
    """Boxes (and masks) of a saved detector: PNGs with the detections drawn, and detections.json."""
    from .detection.predict import DetectionPredictor

    predictor = DetectionPredictor.from_pretrained(args.model, args.device, args.score_threshold)
    output_dir = Path(args.output_dir)
    results, failures = predictor.predict(images, output_dir, progress if len(images) > 1 else None)
    for bad, error in failures:
        print(f"skipped {bad}: {error}", file=sys.stderr)
    report = {"predictions": results, "failed": [{"path": p, "error": e} for p, e in failures]}
    with atomic_write(output_dir / "detections.json") as handle:
        json.dump(report, handle, indent=1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for result in results:
            print(f"{result['path']}: {len(result['detections'])} detections -> {result['drawing']}")
            for found in result["detections"]:
                box = ", ".join(f"{v:.0f}" for v in found["box"])
                print(f"  {found['score']:6.2f}  {found['label']:<16} [{box}]")
        print(f"wrote {output_dir / 'detections.json'}")
    if failures:
        print(f"{len(failures)} of {len(images)} images could not be read", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------------------
# focalnet visualize
def cmd_visualize(args: argparse.Namespace) -> int:
    from .predict import find_images
    from .visualization import visualize_images

    images = find_images(args.inputs)
    if not images:
        raise ValueError(f"no image files found in {', '.join(args.inputs)}")
    written, failures = visualize_images(
        images,
        args.model,
        args.output_dir,
        blocks=args.blocks,
        alpha=args.alpha,
        top_k=args.top_k,
        device=args.device,
        seed=args.seed,
        mask_ratio=args.mask_ratio,
        mask_patch_size=args.mask_patch_size,
        cmap=args.cmap,
    )
    for path, error in failures:
        print(f"skipped {path}: {error}", file=sys.stderr)
    for path in written:
        print(path)
    if failures:
        print(f"{len(failures)} of {len(images)} images could not be read", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------------------
# focalnet benchmark
def cmd_benchmark(args: argparse.Namespace) -> int:
    from .benchmark import BenchmarkSettings, preset_configs, run_benchmark

    settings = BenchmarkSettings(
        batch_sizes=tuple(args.batch_sizes),
        repeats=args.repeats,
        warmup=args.warmup,
        train_batch_size=args.train_batch_size,
        image_size=args.image_size,
        device=args.device,
    )
    report = run_benchmark(
        preset_configs(args.presets),
        args.modes,
        settings,
        wrap=lambda jobs: progress(jobs, "benchmarking", total=len(jobs)),
        echo=lambda text: print(text + "\n", flush=True),
    )
    if args.json:
        report.write_json(args.json)
        print(f"wrote {args.json}")
    return 1 if any(result.error for result in report.results) else 0


# ------------------------------------------------------------------------------------------------
# focalnet train / evaluate
TRAIN_OPTIONS = ("task", "data", "train_list", "val_list", "model", "init_from", "output_dir", "epochs")
TRAIN_OPTIONS += ("batch_size", "lr", "device", "amp", "workers", "seed", "mask_patch_size", "mask_ratio")
TRAIN_OPTIONS += ("train_annotations", "train_images", "val_annotations", "val_images", "detector", "min_size")
TRAIN_OPTIONS += ("max_size", "val_data", "data_revision", "train_split", "val_split", "image_column", "label_column")
TRAIN_OPTIONS += ("streaming", "train_samples")


def cmd_train(args: argparse.Namespace) -> int:
    from .training import load_config, train
    from .training.trainer import CHECKPOINT_NAME, read_checkpoint

    overrides = {name: getattr(args, name) for name in TRAIN_OPTIONS if getattr(args, name) is not None}
    overrides.update(parse_overrides(args.set))
    resume = args.resume
    if resume is True:
        output_dir = overrides.get("output_dir")
        if output_dir is None and args.config is not None:
            output_dir = load_config(args.config, recipe=args.recipe).output_dir
        if output_dir is None:
            raise ValueError("--resume without a path needs --output-dir or --config to find the run")
        resume = str(Path(output_dir) / CHECKPOINT_NAME)
    if resume and args.config is None and args.recipe is None:
        # Continue the run as it was configured, with the command line's changes on top.
        saved = read_checkpoint(resume)["config"]
        config = load_config(overrides={**saved, **overrides, "recipe": "finetune"})
    else:
        config = load_config(args.config, overrides, recipe=args.recipe)
    history = train(config, resume=resume, overwrite=args.overwrite)
    if history:
        last = history[-1]
        if "val_acc1" in last:
            best = max(row["val_acc1"] for row in history)
            print(f"done: {len(history)} epochs, last val top-1 {last['val_acc1']:.2f}%, best {best:.2f}%")
        elif "val_loss" in last:
            print(f"done: {len(history)} epochs, val loss {history[0]['val_loss']:.4f} -> {last['val_loss']:.4f}")
        else:
            shown = ", ".join(f"{k.removeprefix('val_')} {v:.4f}" for k, v in last.items() if k.startswith("val_"))
            print(f"done: {len(history)} epochs, last {shown}")
        print(f"model: {Path(config.output_dir) / 'model'}  metrics: {Path(config.output_dir) / 'metrics.jsonl'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    task = args.task or ("detection" if is_detector_source(args.model) else None)
    task = task or ("semantic-segmentation" if _is_segmenter(args.model) else "classification")
    if task in ("detection", "instance-segmentation"):
        return evaluate_detections(args, task)
    if task == "semantic-segmentation":
        return evaluate_segmentation(args)
    from .training.evaluation import evaluate_checkpoint
    from .training.plots import plot_confusion_matrix

    result, class_names = evaluate_checkpoint(
        args.model,
        source=engine_source(args, "classification"),
        data=args.data,
        list_file=args.list,
        split=args.split,
        batch_size=args.batch_size,
        device=args.device,
        amp=args.amp,
        workers=args.workers,
        progress=progress,
    )
    per_class = result.per_class_accuracy
    report = {**result.summary(), "per_class_accuracy": dict(zip(class_names, per_class, strict=True))}
    output_dir = Path(args.output_dir)
    with atomic_write(output_dir / "evaluation.json") as handle:
        json.dump({**report, "confusion_matrix": result.confusion.tolist()}, handle, indent=1)
    plot_confusion_matrix(result.confusion, class_names, output_dir / "confusion_matrix.png")
    print(f"images {result.count}  top-1 {result.acc1:.2f}%  top-5 {result.acc5:.2f}%  loss {result.loss:.4f}")
    if result.skipped:
        print(f"{result.skipped} unreadable images skipped", file=sys.stderr)
    shown = [(name, acc) for name, acc in zip(class_names, per_class, strict=True) if acc is not None]
    for name, acc in shown[: args.show_classes]:
        print(f"  {acc:7.2%}  {name}")
    if len(shown) > args.show_classes:
        print(f"  ... {len(shown) - args.show_classes} more classes in {output_dir / 'evaluation.json'}")
    print(f"wrote {output_dir / 'evaluation.json'} and {output_dir / 'confusion_matrix.png'}")
    return 0


def engine_source(args: argparse.Namespace, task: str, class_names: list[str] | None = None) -> Any:
    """`--data` as a Hugging Face dataset or shards, read as training reads its validation data (`--split`
    picks a dataset's split); None for the folders, lists and layouts that evaluate reads itself."""
    from .training import hf, load_config, sources, streaming

    if not (hf.recognises(args.data) or (args.data or "").startswith(streaming.PREFIX)):
        return None
    overrides = {"task": task, "data": args.data, "val_data": args.data, "streaming": args.streaming}
    overrides.update({name: getattr(args, name) for name in DATASET_OPTIONS if getattr(args, name) is not None})
    if args.split != "val":
        overrides["val_split"] = args.split
    return sources.evaluation_source(load_config(overrides=overrides), class_names)


def evaluate_segmentation(args: argparse.Namespace) -> int:
    """Whole-set mIoU, pixel and mean accuracy, per-class IoU and accuracy of a saved UperNet."""
    from .segmentation import UperNetConfig
    from .segmentation.data import find_split
    from .segmentation.metrics import format_class_table
    from .training.segmentation import evaluate_segmenter

    if not args.data:
        raise ValueError(
            "semantic segmentation evaluation needs --data: an ADE20K layout, a Hugging Face dataset or shards"
        )
    labels = UperNetConfig.from_pretrained(args.model).id2label
    labelled = engine_source(args, "semantic-segmentation", [labels[i] for i in sorted(labels)])
    if labelled is None:
        labelled = find_split(args.data, {"val": "validation", "train": "training"}.get(args.split, args.split))
    report, names = evaluate_segmenter(
        args.model,
        labelled,
        args.batch_size,
        args.device,
        args.amp,
        args.workers,
        args.window,
        args.stride,
        progress,
    )
    output_dir = Path(args.output_dir)
    with atomic_write(output_dir / "evaluation.json") as handle:
        json.dump(report, handle, indent=1)
    print(
        f"images {report['images']}  mIoU {report['miou']:.4f}  pixel accuracy {report['pixel_accuracy']:.4f}  "
        f"mean accuracy {report['mean_accuracy']:.4f}  loss {report['loss']:.4f}"
    )
    if report["skipped_images"]:
        print(f"{report['skipped_images']} images skipped (unreadable or without a usable label map)", file=sys.stderr)
    ious, accuracies = list(report["per_class_iou"].values()), list(report["per_class_accuracy"].values())
    print(format_class_table(names, ious, accuracies, limit=args.show_classes))
    print(f"wrote {output_dir / 'evaluation.json'}")
    return 0


def evaluate_detections(args: argparse.Namespace, task: str) -> int:
    """COCO mAP of a saved detector (pycocotools' COCOeval): evaluation.json, predictions.json, a table."""
    from .detection.data import find_split, read_annotations, report_missing
    from .detection.evaluation import format_per_class_table
    from .training.detection import evaluate_detector

    def read_files(annotations: str, images: str) -> Any:
        coco = read_annotations(annotations, images)
        report_missing(coco)
        return coco

    if args.annotations or args.images:
        if not (args.annotations and args.images):
            raise ValueError("give both --annotations and --images, or --data")
        annotated = read_files(args.annotations, args.images)
    elif args.data:
        annotated = engine_source(args, task)
        annotated = read_files(*find_split(args.data, args.split)) if annotated is None else annotated
    else:
        raise ValueError(
            "detection evaluation needs --data (a COCO layout, a Hugging Face dataset or shards) or --annotations "
            "with --images"
        )
    iou_types = ("bbox", "segm") if task == "instance-segmentation" else ("bbox",)
    evaluation, results, skipped = evaluate_detector(
        args.model, annotated, iou_types, args.batch_size, args.device, args.amp, args.workers, progress
    )
    output_dir = Path(args.output_dir)
    with atomic_write(output_dir / "predictions.json") as handle:
        json.dump(results, handle)
    report = {**evaluation.stats, "per_class_ap": evaluation.per_class_ap, "skipped_images": skipped}
    with atomic_write(output_dir / "evaluation.json") as handle:
        json.dump(report, handle, indent=1)
    for iou in iou_types:
        stats = {k.removeprefix(f"{iou}_"): v for k, v in evaluation.stats.items() if k.startswith(f"{iou}_")}
        print(f"{iou}: " + "  ".join(f"{name} {value:.4f}" for name, value in stats.items()))
        print(f"{iou} AP per class (%):")
        print(format_per_class_table(evaluation.per_class_ap[iou]))
    if skipped:
        print(f"{skipped} unreadable images skipped", file=sys.stderr)
    print(f"wrote {output_dir / 'evaluation.json'} and {output_dir / 'predictions.json'}")
    return 0


def cmd_make_shards(args: argparse.Namespace) -> int:
    from .training import load_config
    from .training.shards import make_shards

    source = Path(args.source)
    listed = source.is_file() and source.suffix.lower() in (".csv", ".json")
    overrides = {"task": args.task, "train_list" if listed else "data": args.source}
    overrides.update({name: getattr(args, name) for name in SHARD_OPTIONS if getattr(args, name) is not None})
    overrides.update(parse_overrides(args.set))
    info = make_shards(load_config(overrides=overrides), args.output, args.shard_size)
    for split, entry in info["splits"].items():
        last = max(len(entry["filenames"]) - 1, 0)
        pattern = f"{args.output}/{split}-{{000000..{last:06d}}}.tar"
        print(f"{split}: {entry['num_samples']} samples in {len(entry['filenames'])} shards ({pattern})")
        if entry["skipped"]:
            print(f"  {entry['skipped']} unreadable samples left out", file=sys.stderr)
    print(f"wrote {Path(args.output) / '_info.json'}")
    return 0


def cmd_make_shapes(args: argparse.Namespace) -> int:
    from .detection.synthetic import make_shapes_dataset

    root = make_shapes_dataset(args.directory, args.train_images, args.val_images, args.seed, layout=args.layout)
    kind = {"coco": "a COCO-layout detection", "ade20k": "an ADE20K-layout segmentation"}[args.layout]
    print(f"wrote {kind} dataset of {args.train_images} + {args.val_images} images to {root}")
    return 0


# ------------------------------------------------------------------------------------------------
# focalnet export
def cmd_export(args: argparse.Namespace) -> int:
    from .export import check_onnx, export_onnx, input_shape, load_exportable, onnx_session

    if is_detector_source(args.source):
        raise ValueError(f"{args.source} is a detector; ONNX export covers classifiers, backbones, SimMIM and UperNet")
    if _is_segmenter(args.source):
        from .segmentation import UperNetForSemanticSegmentation
        from .segmentation.inference import SegmentationPreprocessing

        model = UperNetForSemanticSegmentation.from_pretrained(args.source)
        processor = SegmentationPreprocessing.load(args.source)
    else:
        model, processor = load_exportable(args.source)
    path = export_onnx(model, args.output, not args.static, args.opset, args.image_size, processor=processor)
    shape = "x".join(str(dim or name) for dim, name in zip(input_shape(onnx_session(path)), "BCHW", strict=True))
    print(f"wrote {path}: {type(model).__name__}, input pixel_values {shape}")
    print(f"onnxruntime vs PyTorch: max abs difference {check_onnx(model, path):.2e}")
    return 0


# ------------------------------------------------------------------------------------------------
# focalnet serve
def cmd_serve(args: argparse.Namespace) -> int:
    options = {
        "device": args.device,
        "dtype": args.dtype,
        "max_batch_size": args.max_batch_size,
        "max_wait_ms": args.max_wait_ms,
        "max_queue": args.max_queue,
        "timeout_s": args.timeout_s,
        "top_k": args.top_k,
        "threshold": args.threshold,
        "max_upload_mb": args.max_upload_mb,
        "max_pixels": args.max_pixels,
        "max_images": args.max_images,
        "api_key_env": args.api_key_env,
        "cors_origins": args.cors_origin,
        "model_name": args.name,
        "onnx": args.onnx,
    }
    if args.ray:
        from .serving.ray_serve import run

        return run(args.model, args.host, args.port, args.ray_address, num_replicas=args.replicas, **options)
    from .serving.server import serve

    return serve(args.model, args.host, args.port, args.workers, **options)


def cmd_export_digits(args: argparse.Namespace) -> int:
    from .training.data import export_digits

    written = export_digits(args.directory, args.count, args.split)
    print(f"wrote {len(written)} digit images to {args.directory}")
    return 0


# ------------------------------------------------------------------------------------------------
def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_window_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window", type=positive_int, help="segmentation: sliding-window inference, tile side (px)")
    parser.add_argument("--stride", type=positive_int, help="segmentation: tile step (default 2/3 of --window)")


DATASET_OPTIONS = ("data_revision", "image_column", "label_column")
SHARD_OPTIONS = ("val_list", "train_split", "val_split", *DATASET_OPTIONS)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """How a Hugging Face dataset is read (`train` and `make-shards`); each is also a config key."""
    parser.add_argument("--train-split", help="Hugging Face datasets: the split to train on (default train)")
    parser.add_argument("--val-split", help="Hugging Face datasets: validation split (default validation or val)")
    add_column_arguments(parser)


def add_column_arguments(parser: argparse.ArgumentParser) -> None:
    """Where a Hugging Face dataset's rows come from and which columns to read (`train`, `make-shards`, `evaluate`)."""
    parser.add_argument("--data-revision", help="Hugging Face hub: the dataset's revision, e.g. refs/convert/parquet")
    parser.add_argument("--image-column", help="Hugging Face datasets: image column (default image); shards: key")
    parser.add_argument("--label-column", help="Hugging Face datasets: label (or label-map) column")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `train` and `pretrain` share; each is also a config key (see TrainConfig)."""
    parser.add_argument("--config", help="YAML file of training settings (see configs/)")
    parser.add_argument("--recipe", help=f"starting recipe: {', '.join(RECIPES)} (default: the task's)")
    parser.add_argument(
        "--data",
        help="'digits', a directory (class folders, COCO or ADE20K layout, any images for pretraining, a "
        "save_to_disk dataset or parquet files), hf:ID[:CONFIG] (Hugging Face hub) or wds:PATTERN (shards)",
    )
    parser.add_argument("--val-data", help="validation data elsewhere: wds:PATTERN or any source --data takes")
    add_source_arguments(parser)
    parser.add_argument(
        "--streaming", action="store_true", default=None, help="stream the Hugging Face dataset (as shards are)"
    )
    parser.add_argument("--train-samples", type=positive_int, help="streamed data: samples per epoch")
    parser.add_argument("--train-list", help="CSV/JSON list of (path, label) for training")
    parser.add_argument("--val-list", help="CSV/JSON list of (path, label) for validation")
    parser.add_argument("--model", help="preset name, or a checkpoint to start from")
    parser.add_argument("--init-from", help="initialise from this checkpoint (new head when it has none that fits)")
    parser.add_argument("--output-dir", help="where checkpoints, metrics and the final model go")
    parser.add_argument("--epochs", type=positive_int)
    parser.add_argument("--batch-size", type=positive_int, help="global batch size")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--mask-patch-size", type=positive_int, help="masked image modeling: mask cell side (px)")
    parser.add_argument("--mask-ratio", type=float, help="masked image modeling: share of cells hidden")
    for split in ("train", "val"):
        parser.add_argument(f"--{split}-annotations", help=f"detection: COCO instances JSON of the {split} split")
        parser.add_argument(f"--{split}-images", help=f"detection: image directory of the {split} split")
    parser.add_argument("--detector", choices=["faster_rcnn", "mask_rcnn", "retinanet"], help="detection model")
    parser.add_argument("--min-size", type=positive_int, help="detection: shorter side at evaluation")
    parser.add_argument("--max-size", type=positive_int, help="detection: longer side cap")
    parser.add_argument("--device", help="auto (default), cpu, cuda, ...")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"])
    parser.add_argument("--workers", type=int, help="data-loading processes per training process")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        metavar="CHECKPOINT",
        help="continue the run in --output-dir (or from CHECKPOINT)",
    )
    parser.add_argument("--overwrite", action="store_true", help="start over in an --output-dir that holds a run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other setting")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="focalnet", description="Focal Modulation Networks for PyTorch.")
    parser.add_argument("--version", action="version", version=f"focalnet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    presets = commands.add_parser("presets", help="list the official variants: size, cost, output shapes")
    presets.add_argument("names", nargs="*", help="presets to show (default: all)")
    presets.add_argument("--json", action="store_true", help="print JSON instead of a table")
    presets.set_defaults(handler=cmd_presets)

    demo = commands.add_parser("demo", help="run a model on the bundled photograph and show what comes out")
    demo.add_argument("--preset", default="focalnet-tiny", choices=list_presets(), metavar="NAME")
    demo.add_argument("--image", help="image file (default: the bundled photograph)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    demo.set_defaults(handler=cmd_demo)

    convert = commands.add_parser("convert", help="convert a checkpoint between the HF, timm and original layouts")
    convert.add_argument("source", help="directory, weights file, registry name or hub id")
    convert.add_argument("destination", help="directory (hf) or weights file (timm: .safetensors, original: .pth)")
    convert.add_argument("--to", choices=["hf", "timm", "original"], default="hf", help="target layout (default: hf)")
    convert.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    convert.set_defaults(handler=cmd_convert)

    predict = commands.add_parser(
        "predict", help="classify images, detect objects (saved detectors) or segment them (saved UperNets)"
    )
    predict.add_argument("inputs", nargs="+", metavar="IMAGES_OR_DIRS", help="image files or directories")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="directory, weights file, registry name or hub id")
    source.add_argument("--onnx", metavar="FILE", help="a classifier exported by `focalnet export`, run by onnxruntime")
    predict.add_argument("--top-k", type=positive_int, default=5, help="labels shown per image (default 5)")
    predict.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass (default 8)")
    predict.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    predict.add_argument("--json", action="store_true", help="print JSON")
    predict.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    predict.add_argument("--score-threshold", type=float, default=0.5, help="detectors: lowest score kept (0.5)")
    predict.add_argument("--output-dir", default="predictions", help="detectors, segmenters: where the files go")
    add_window_arguments(predict)
    predict.set_defaults(handler=cmd_predict)

    visualize = commands.add_parser(
        "visualize", help="modulator heat maps and gates (classifiers) or reconstructions (SimMIM) as PNG files"
    )
    visualize.add_argument("inputs", nargs="+", metavar="IMAGES_OR_DIRS", help="image files or directories")
    visualize.add_argument("--model", required=True, help="directory, weights file, registry name or hub id")
    visualize.add_argument("--output-dir", required=True, help="where the PNG files go (one per image)")
    visualize.add_argument("--blocks", default="last", help="last (of each stage, default), all, or indices N,M")
    visualize.add_argument("--alpha", type=float, default=0.5, help="weight of the heat map over the image (0.5)")
    visualize.add_argument("--top-k", type=positive_int, default=5, help="labels shown per image (default 5)")
    visualize.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    visualize.add_argument("--seed", type=int, default=0, help="seed of the SimMIM mask (default 0)")
    visualize.add_argument("--mask-ratio", type=float, default=0.6, help="share of SimMIM mask cells hidden (0.6)")
    visualize.add_argument(
        "--mask-patch-size", type=positive_int, help="SimMIM mask cell in pixels (default: from the checkpoint)"
    )
    visualize.add_argument("--cmap", default="jet", help="matplotlib colormap of the heat maps (default jet)")
    visualize.set_defaults(handler=cmd_visualize)

    train = commands.add_parser("train", help="train or fine-tune a model (torchrun for several processes)")
    add_training_arguments(train)
    train.add_argument("--task", choices=list(TASKS), help="what to train (default: classification)")
    train.set_defaults(handler=cmd_train)

    pretrain = commands.add_parser(
        "pretrain", help="SimMIM pretraining on unlabelled images (= train --task masked-image-modeling)"
    )
    add_training_arguments(pretrain)
    pretrain.set_defaults(handler=cmd_train, task="masked-image-modeling")

    evaluate = commands.add_parser(
        "evaluate", help="accuracy and confusion matrix (classifiers), COCO mAP (detectors), mIoU (segmenters)"
    )
    evaluate.add_argument("--model", required=True, help="directory, weights file, registry name or hub id")
    evaluate.add_argument(
        "--task", choices=["classification", "detection", "instance-segmentation", "semantic-segmentation"]
    )
    add_window_arguments(evaluate)
    evaluate.add_argument(
        "--data",
        help="'digits', a class-folder, COCO-layout or ADE20K-layout directory, a save_to_disk dataset or parquet "
        "files, hf:ID[:CONFIG] (Hugging Face hub) or wds:PATTERN (shards)",
    )
    evaluate.add_argument("--annotations", help="detection: COCO instances JSON (with --images)")
    evaluate.add_argument("--images", help="detection: the image directory of --annotations")
    evaluate.add_argument("--list", help="CSV/JSON list of (path, label)")
    evaluate.add_argument(
        "--split",
        "--val-split",
        dest="split",
        default="val",
        help="sub-directory, digits split or Hugging Face split (default val: a dataset's validation or val split, "
        "or its only one)",
    )
    add_column_arguments(evaluate)
    evaluate.add_argument("--streaming", action="store_true", help="stream the Hugging Face dataset")
    evaluate.add_argument("--batch-size", type=positive_int, default=64)
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    evaluate.add_argument("--workers", type=int, default=0)
    evaluate.add_argument("--output-dir", default="evaluation", help="where evaluation.json and the PNG go")
    evaluate.add_argument("--show-classes", type=int, default=20, help="per-class lines printed (default 20)")
    evaluate.set_defaults(handler=cmd_evaluate)

    shapes = commands.add_parser(
        "make-shapes",
        help="write a synthetic shapes dataset, COCO (detection) or ADE20K (semantic segmentation) layout",
    )
    shapes.add_argument("directory")
    shapes.add_argument("--train-images", type=positive_int, default=300)
    shapes.add_argument("--val-images", type=positive_int, default=60)
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument(
        "--layout", choices=["coco", "ade20k"], default="coco", help="COCO or ADE20K files (default: %(default)s)"
    )
    shapes.set_defaults(handler=cmd_make_shapes)

    shards = commands.add_parser(
        "make-shards", help="write training data (folders, lists, COCO, ADE20K, Hugging Face) as WebDataset shards"
    )
    shards.add_argument("source", help="what --data takes (a directory, hf:ID, digits), or a CSV/JSON list")
    shards.add_argument("output", help="directory for <split>-000000.tar, ... and _info.json")
    shards.add_argument("--task", choices=list(TASKS), default="classification", help="how to read the source")
    shards.add_argument("--shard-size", type=positive_int, default=1000, help="samples per shard (default 1000)")
    shards.add_argument("--val-list", help="lists: the CSV/JSON list of the validation images")
    add_source_arguments(shards)
    shards.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other setting")
    shards.set_defaults(handler=cmd_make_shards)

    onnx = commands.add_parser("export", help="write a model as an ONNX file and check it with onnxruntime")
    onnx.add_argument("source", help="directory, weights file, registry name or hub id (a saved UperNet too)")
    onnx.add_argument("output", metavar="OUT.onnx", help="the file to write")
    onnx.add_argument("--format", choices=["onnx"], default="onnx", help="file format (default: onnx)")
    onnx.add_argument("--opset", type=int, help="ONNX opset (default: torch.onnx's)")
    onnx.add_argument("--image-size", type=positive_int, help="side of the example image (default: the config's)")
    onnx.add_argument("--static", action="store_true", help="fix batch 1 and the example's size (default: dynamic)")
    onnx.set_defaults(handler=cmd_export)

    serve = commands.add_parser(
        "serve", help="an HTTP API (transformers' pipeline JSON, batching, metrics) for any model; Ray Serve too"
    )
    served = serve.add_mutually_exclusive_group(required=True)
    served.add_argument("model", nargs="?", help="anything --model takes: directory, weights, registry name, hub id")
    served.add_argument("--onnx", metavar="FILE", help="a classifier exported by `focalnet export`")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    serve.add_argument("--port", type=int, default=8000, help="(default 8000)")
    serve.add_argument("--device", default="cpu", help="torch device (default cpu)")
    serve.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    serve.add_argument("--workers", type=positive_int, default=1, help="processes, each with its own model (1)")
    serve.add_argument("--max-batch-size", type=positive_int, default=16, help="images per model batch (16)")
    serve.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill (5 ms)")
    serve.add_argument("--max-queue", type=positive_int, default=256, help="images waiting at most; then 503 (256)")
    serve.add_argument("--timeout-s", type=float, default=30.0, help="queued longer than this: 504 (30 s)")
    serve.add_argument("--top-k", type=positive_int, default=5, help="classifiers: labels answered (5)")
    serve.add_argument("--threshold", type=float, default=0.5, help="detectors: lowest score answered (0.5)")
    serve.add_argument("--max-upload-mb", type=float, default=20.0, help="request body limit: 413 beyond (20 MB)")
    serve.add_argument("--max-pixels", type=positive_int, default=40_000_000, help="per image: 413 beyond (40M)")
    serve.add_argument("--max-images", type=positive_int, default=32, help="per request: 413 beyond (32)")
    serve.add_argument("--api-key-env", metavar="NAME", help="require Authorization: Bearer $NAME (not on health)")
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN", help="allow this origin")
    serve.add_argument("--name", help="model name in /v2/models/NAME (default: the checkpoint's name)")
    serve.add_argument("--ray", action="store_true", help="deploy on Ray Serve (local Ray, or --ray-address)")
    serve.add_argument("--replicas", type=positive_int, default=1, help="Ray Serve replicas (1)")
    serve.add_argument("--ray-address", help="join this Ray cluster (default: start a local one)")
    serve.set_defaults(handler=cmd_serve)

    export = commands.add_parser("export-digits", help="write held-out scikit-learn digits as PNG files")
    export.add_argument("directory")
    export.add_argument("--count", type=positive_int, default=8)
    export.add_argument("--split", choices=["train", "val"], default="val")
    export.set_defaults(handler=cmd_export_digits)

    bench = commands.add_parser("benchmark", help="speed and memory against transformers and timm, same weights")
    bench.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS), choices=list_presets(), metavar="NAME")
    bench.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=MODES, help="(default: %(default)s)")
    bench.add_argument("--batch-sizes", nargs="+", type=int, default=list(DEFAULT_BATCH_SIZES), metavar="N")
    bench.add_argument("--train-batch-size", type=int, default=16)
    bench.add_argument("--repeats", type=int, default=5, help="timed runs per model; the median is reported")
    bench.add_argument("--warmup", type=int, default=2, help="untimed runs per model first (at least 1)")
    bench.add_argument("--image-size", type=int, default=224)
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--json", metavar="PATH", help="also write every number, with the machine, to this file")
    bench.set_defaults(handler=cmd_benchmark)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args: Any = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError, CheckpointCorruptError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
