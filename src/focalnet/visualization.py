"""Seeing what a FocalNet does (SPEC 9): modulator heat maps, gate maps and SimMIM reconstructions.

* `modulator_maps`: the L2 norm over channels of each block's modulator, the map the authors show.
* `overlay`: a heat map min-max normalised, coloured and blended over an image.
* `modulator_figure` / `save_modulator_figure`: one image with its top-k labels, one overlay per
  chosen block, and the signed gates of the last block on one symmetric diverging scale.
* `reconstruction_grid` / `save_reconstruction_grid`: MAE's four panels per image (original,
  masked, reconstruction, reconstruction with the visible pixels pasted back), built with numpy
  and Pillow so the geometry is exact.
* `visualize_images`: all of the above for image files and a checkpoint (`focalnet visualize`).

Pillow and numpy come from the `vision` extra, matplotlib (figures, colormaps) from `train`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any

import torch
from torch import nn

from ._io import atomic_path, unique_stem
from .checkpoints import build_from_resolved, resolve
from .configuration import FocalNetConfig
from .image_processing import FocalNetImageProcessor, to_rgb_image
from .masking import MaskGenerator
from .modeling import (
    FocalNetForImageClassification,
    FocalNetForMaskedImageModeling,
    FocalNetPreTrainedModel,
    class_for_weights,
)
from .predict import class_scores, processor_for, top_classes

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure
    from PIL import Image

MARGIN = 4
"""White pixels between the panels of a reconstruction grid, and around them."""
HEADER = 18
"""Height in pixels of the reconstruction grid's strip of column titles."""
MIN_PANEL_HEIGHT = 96
"""The default scale of a reconstruction grid is the smallest integer reaching this panel height."""
COLUMN_TITLES = ("original", "masked", "reconstruction", "recon + visible")
MASK_GREY = 0.5
"""De-normalised value shown for hidden pixels in the "masked" panel."""
GATE_CMAP = "RdBu_r"
MAX_COLUMNS = 6

VISUALIZED_CLASSES: dict[str, type[FocalNetPreTrainedModel]] = {
    cls.__name__: cls for cls in (FocalNetForImageClassification, FocalNetForMaskedImageModeling)
}


# ------------------------------------------------------------------------------------------------
# optional dependencies
def _vision() -> tuple[ModuleType, ModuleType, ModuleType]:
    """numpy, Pillow's `Image` and `ImageDraw`, or an ImportError that names the extra."""
    try:
        import numpy
        from PIL import Image, ImageDraw
    except ImportError:
        raise ImportError("focalnet.visualization needs Pillow and numpy: pip install 'focalnet[vision]'") from None
    return numpy, Image, ImageDraw


def _matplotlib() -> ModuleType:
    """matplotlib, or an ImportError that names the extra."""
    try:
        import matplotlib.figure
    except ImportError:
        raise ImportError("focalnet.visualization needs matplotlib: pip install 'focalnet[train]'") from None
    return matplotlib


def _colormap(name: str) -> Any:
    """matplotlib's colormap `name`, or a ValueError naming a few valid ones."""
    colormaps = _matplotlib().colormaps
    if name not in colormaps:
        raise ValueError(f"unknown colormap {name!r}; try jet, inferno, viridis or RdBu_r")
    return colormaps[name]


# ------------------------------------------------------------------------------------------------
# blocks
def _normalize_blocks(indices: Sequence[int], num_blocks: int) -> list[int]:
    """Flat block indices in [0, num_blocks), negative ones counted from the end."""
    for index in indices:
        if not -num_blocks <= index < num_blocks:
            raise ValueError(
                f"block index {index} is out of range: the model has {num_blocks} blocks "
                f"(0..{num_blocks - 1}, or -1..-{num_blocks} from the end)"
            )
    return [index % num_blocks for index in indices]


def parse_blocks(spec: str, depths: Sequence[int]) -> list[int]:
    """Flat block indices from "last" (last block of every stage), "all", or "N,M,..." (negative allowed)."""
    num_blocks = sum(depths)
    text = spec.strip().lower()
    if text == "last":
        return [sum(depths[: stage + 1]) - 1 for stage in range(len(depths))]
    if text == "all":
        return list(range(num_blocks))
    try:
        indices = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(
            f"blocks must be 'last', 'all' or comma-separated block indices such as '0,3,-1', got {spec!r}"
        ) from None
    return _normalize_blocks(indices, num_blocks)


def block_title(index: int, depths: Sequence[int]) -> str:
    """The title of a flat block index: 'stage S block B', both counted from 1."""
    for stage, depth in enumerate(depths):
        if index < depth:
            return f"stage {stage + 1} block {index + 1}"
        index -= depth
    raise ValueError(f"block index out of range for depths {list(depths)}")


# ------------------------------------------------------------------------------------------------
# modulators
@contextlib.contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout or drop-path) without gradients; every submodule's mode restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def modulator_maps(
    model: FocalNetPreTrainedModel, pixel_values: torch.Tensor, blocks: Sequence[int] | None = None
) -> list[torch.Tensor]:
    """The L2 norm over channels of each selected block's modulator, (B, H_b, W_b) float32 each.

    `blocks` are flat indices over all stages (negative from the end); None selects every block.
    The model runs in eval mode without gradients and is left in the mode it was in.
    """
    num_blocks = sum(model.config.depths)
    selected = list(range(num_blocks)) if blocks is None else _normalize_blocks(blocks, num_blocks)
    with _inference(model):
        modulators = model(pixel_values, output_modulators=True).modulators
    return [modulators[index].float().norm(dim=1) for index in selected]


# ------------------------------------------------------------------------------------------------
# heat-map overlays
def _as_array(values: torch.Tensor | np.ndarray) -> np.ndarray:
    numpy, _, _ = _vision()
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    return numpy.asarray(values, dtype=numpy.float32)


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (the heat map's weight) must be in [0, 1], got {alpha}")


def overlay(
    image: Image.Image | np.ndarray, heat_map: torch.Tensor | np.ndarray, alpha: float = 0.5, cmap: str = "jet"
) -> Image.Image:
    """`heat_map` min-max normalised, resized (bilinear) to `image`, coloured with `cmap`, blended over it.

    The result is RGB, the image's size: (1 - alpha) * image + alpha * colours, rounded. A
    constant map counts as all zeros.
    """
    numpy, image_module, _ = _vision()
    _check_alpha(alpha)
    values = _as_array(heat_map)
    if values.ndim != 2:
        raise ValueError(f"heat_map must be 2-D (height, width), got shape {tuple(values.shape)}")
    rgb = to_rgb_image(image)
    span = float(values.max() - values.min())
    normalized = (values - values.min()) / span if span > 0 else numpy.zeros_like(values)
    resized = image_module.fromarray(normalized).resize(rgb.size, image_module.Resampling.BILINEAR)
    colours = _colormap(cmap)(numpy.asarray(resized), bytes=True)[..., :3]
    blended = (1.0 - alpha) * numpy.asarray(rgb, dtype=numpy.float64) + alpha * colours
    return image_module.fromarray(numpy.rint(blended).astype(numpy.uint8))


# ------------------------------------------------------------------------------------------------
# de-normalisation
def _channel_stats(values: float | Sequence[float], channels: int, what: str) -> np.ndarray:
    """Per-channel values as a (1, C, 1, 1) array; one value serves every channel."""
    numpy, _, _ = _vision()
    array = numpy.asarray(values, dtype=numpy.float64).reshape(-1)
    if array.size not in (1, channels):
        raise ValueError(f"{what} needs 1 or {channels} values (one per channel), got {array.size}")
    return numpy.broadcast_to(array, (channels,)).reshape(1, channels, 1, 1)


def _denormalize(
    pixel_values: torch.Tensor | np.ndarray, mean: float | Sequence[float], std: float | Sequence[float]
) -> np.ndarray:
    """(B, C, H, W) normalised values -> x * std + mean, clipped to [0, 1], float64."""
    numpy, _, _ = _vision()
    values = _as_array(pixel_values).astype(numpy.float64)
    channels = values.shape[1]
    return numpy.clip(values * _channel_stats(std, channels, "std") + _channel_stats(mean, channels, "mean"), 0, 1)


def _to_rgb_uint8(values: np.ndarray) -> np.ndarray:
    """(B, C, H, W) values in [0, 1] -> (B, H, W, 3) uint8; one channel is shown as grey."""
    numpy, _, _ = _vision()
    if values.shape[1] not in (1, 3):
        raise ValueError(f"images need 1 or 3 channels to be shown, got {values.shape[1]}")
    pixels = numpy.rint(values * 255).astype(numpy.uint8).transpose(0, 2, 3, 1)
    return numpy.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels


def display_stats(processor: FocalNetImageProcessor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) that bring the processor's `pixel_values` back to [0, 1] as x * std + mean."""
    mean = processor.image_mean if processor.do_normalize else (0.0, 0.0, 0.0)
    std = processor.image_std if processor.do_normalize else (1.0, 1.0, 1.0)
    unit = processor.rescale_factor * 255 if processor.do_rescale else 1 / 255
    return tuple(m * unit for m in mean), tuple(s * unit for s in std)


# ------------------------------------------------------------------------------------------------
# the classifier figure
def _top_k_lines(logits: torch.Tensor | None, config: FocalNetConfig, top_k: int) -> list[str]:
    """'label  12.3%' for each of the k best classes of one image, scored as `focalnet predict` scores
    them (none without a classifier)."""
    if logits is None or top_k <= 0 or not config.id2label:
        return []
    ranked = top_classes(class_scores(logits[:1], config), config.id2label, top_k)[0]
    return [f"{guess['label'][:28]}  {guess['score']:.1%}" for guess in ranked]


def modulator_figure(
    model: FocalNetPreTrainedModel,
    pixel_values: torch.Tensor,
    mean: float | Sequence[float],
    std: float | Sequence[float],
    blocks: str | Sequence[int] = "last",
    top_k: int = 5,
    alpha: float = 0.5,
    cmap: str = "jet",
    gate_cmap: str = GATE_CMAP,
) -> Figure:
    """A matplotlib figure for one image (pixel_values of shape (1, C, H, W)).

    Top rows: the de-normalised image titled with its top-k labels and probabilities (when the
    model has logits), then one `overlay` of `modulator_maps` per block in `blocks` (see
    `parse_blocks`), titled "stage S block B". Last row: the last block's gates, one panel per
    focal level and the global gate, signed, on one `gate_cmap` scale symmetric about 0, with a
    colorbar. One forward pass, in eval mode; the model's mode is left as it was.
    """
    if pixel_values.ndim != 4 or pixel_values.shape[0] != 1:
        raise ValueError(f"modulator_figure takes one image, (1, C, H, W); got shape {tuple(pixel_values.shape)}")
    _check_alpha(alpha)
    depths = model.config.depths
    selected = parse_blocks(blocks, depths) if isinstance(blocks, str) else _normalize_blocks(blocks, sum(depths))
    with _inference(model):
        out = model(pixel_values, output_modulators=True)
    image = _to_rgb_uint8(_denormalize(pixel_values, mean, std))[0]
    lines = _top_k_lines(getattr(out, "logits", None), model.config, top_k)
    panels = [("\n".join(lines) or "input", image)]
    for index in selected:
        heat_map = out.modulators[index][0].float().norm(dim=0)
        panels.append((block_title(index, depths), overlay(image, heat_map, alpha=alpha, cmap=cmap)))
    gate_title = f"gates of {block_title(sum(depths) - 1, depths)} (signed)"
    return _draw_figure(panels, _as_array(out.gates[-1][0]), gate_title, gate_cmap)


def _draw_figure(panels: list[tuple[str, Any]], gates: np.ndarray, gate_title: str, gate_cmap: str) -> Figure:
    """Titled pictures in rows of at most MAX_COLUMNS, then one row of (L+1, h, w) gates on one scale."""
    numpy, _, _ = _vision()
    names = [f"gate level {level}" for level in range(1, gates.shape[0])] + ["global gate"]
    columns = max(len(names), min(len(panels), MAX_COLUMNS))
    image_rows = math.ceil(len(panels) / columns)
    figure = _matplotlib().figure.Figure(figsize=(2.4 * columns, 2.8 * (image_rows + 1)), layout="constrained")
    top, bottom = figure.subfigures(2, 1, height_ratios=[image_rows, 1])
    axes = list(top.subplots(image_rows, columns, squeeze=False).flat)
    for ax, (title, picture) in zip(axes, panels, strict=False):
        ax.imshow(picture)
        ax.set_title(title, fontsize=8)
    gate_axes = bottom.subplots(1, columns, squeeze=False)[0]
    limit = float(numpy.abs(gates).max()) or 1.0
    for ax, name, gate in zip(gate_axes, names, gates, strict=False):
        shown = ax.imshow(gate, cmap=_colormap(gate_cmap), vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(name, fontsize=8)
    bottom.colorbar(shown, ax=list(gate_axes[: len(names)]), shrink=0.9, label="gate value")
    bottom.suptitle(gate_title, fontsize=9)
    for ax in [*axes, *gate_axes]:
        ax.set(xticks=[], yticks=[])  # no ticks to measure: the layout takes half the time
        ax.set_axis_off()
    return figure


def save_modulator_figure(
    model: FocalNetPreTrainedModel,
    pixel_values: torch.Tensor,
    mean: float | Sequence[float],
    std: float | Sequence[float],
    path: str | os.PathLike,
    **options: Any,
) -> Path:
    """`modulator_figure(...)` written to `path` as PNG, atomically; returns the path."""
    figure = modulator_figure(model, pixel_values, mean, std, **options)
    path = Path(path)
    with atomic_path(path) as tmp:
        write_figure_png(figure, tmp)
    return path


def write_figure_png(figure: Figure, target: str | os.PathLike | IO[bytes]) -> None:
    """A figure as PNG (120 dpi, trimmed) to a path or a binary file, e.g. an in-memory buffer."""
    figure.savefig(target, format="png", dpi=120, bbox_inches="tight", pad_inches=0.1)


# ------------------------------------------------------------------------------------------------
# reconstruction grids
def reconstruction_grid(
    pixel_values: torch.Tensor | np.ndarray,
    reconstruction: torch.Tensor | np.ndarray,
    pixel_mask: torch.Tensor | np.ndarray,
    mean: float | Sequence[float],
    std: float | Sequence[float],
    scale: int | None = None,
) -> Image.Image:
    """MAE-style panels of a masked-image-modeling batch: one row per image, four columns.

    Inputs: normalised `pixel_values` (B, C, H, W), the model's `reconstruction` (same shape),
    `pixel_mask` (B, 1, H, W) with 1 where hidden, and the normalisation `mean` / `std` (one
    value or one per channel). Columns (`COLUMN_TITLES`): the original; the original with hidden
    pixels grey (`MASK_GREY`); the reconstruction; the reconstruction with the visible pixels
    pasted back (original where the mask is 0). All are de-normalised (x * std + mean), clipped to
    [0, 1] and rounded to uint8; one channel is shown as grey.

    Geometry (RGB, white background): each panel is the image upscaled `scale` times (nearest;
    default: the smallest integer making panels at least `MIN_PANEL_HEIGHT` px high). With
    h = H * scale and w = W * scale:

    * width = 4 * w + 5 * MARGIN, height = HEADER + B * h + (B + 1) * MARGIN;
    * the panel of row r, column c has its top-left pixel at
      x = MARGIN + c * (w + MARGIN), y = HEADER + MARGIN + r * (h + MARGIN);
    * the column titles are drawn in the top `HEADER` rows with Pillow's default font.
    """
    numpy, image_module, image_draw = _vision()
    columns = reconstruction_panels(pixel_values, reconstruction, pixel_mask, mean, std)
    batch, height, width = columns[0].shape[:3]
    if scale is None:
        scale = max(1, math.ceil(MIN_PANEL_HEIGHT / height))
    if not (isinstance(scale, int) and scale >= 1):
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    panel_h, panel_w = height * scale, width * scale
    canvas = numpy.full(
        (HEADER + batch * panel_h + (batch + 1) * MARGIN, 4 * panel_w + 5 * MARGIN, 3), 255, numpy.uint8
    )
    for column, pictures in enumerate(columns):
        left = MARGIN + column * (panel_w + MARGIN)
        for row, panel in enumerate(pictures):
            top = HEADER + MARGIN + row * (panel_h + MARGIN)
            canvas[top : top + panel_h, left : left + panel_w] = panel.repeat(scale, 0).repeat(scale, 1)
    grid = image_module.fromarray(canvas)
    draw = image_draw.Draw(grid)
    for column, title in enumerate(COLUMN_TITLES):
        centre = MARGIN + column * (panel_w + MARGIN) + panel_w / 2
        draw.text((centre, HEADER / 2), title, fill=(0, 0, 0), anchor="mm")
    return grid


def reconstruction_panels(
    pixel_values: torch.Tensor | np.ndarray,
    reconstruction: torch.Tensor | np.ndarray,
    pixel_mask: torch.Tensor | np.ndarray,
    mean: float | Sequence[float],
    std: float | Sequence[float],
) -> list[np.ndarray]:
    """The four (B, H, W, 3) uint8 pictures of `reconstruction_grid`'s columns, in `COLUMN_TITLES` order:
    original, masked (hidden pixels grey), reconstruction, reconstruction with the visible pixels pasted back."""
    numpy, _, _ = _vision()
    original, rebuilt, hidden = _reconstruction_arrays(pixel_values, reconstruction, pixel_mask)
    shown, rebuilt = _denormalize(original, mean, std), _denormalize(rebuilt, mean, std)
    columns = [shown, numpy.where(hidden, MASK_GREY, shown), rebuilt, numpy.where(hidden, rebuilt, shown)]
    return [_to_rgb_uint8(values) for values in columns]


def _reconstruction_arrays(
    pixel_values: torch.Tensor | np.ndarray,
    reconstruction: torch.Tensor | np.ndarray,
    pixel_mask: torch.Tensor | np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two images as arrays and the mask as a (B, 1, H, W) bool array, after checking the shapes."""
    original, rebuilt, mask = _as_array(pixel_values), _as_array(reconstruction), _as_array(pixel_mask)
    if original.ndim != 4:
        raise ValueError(f"pixel_values must be (B, C, H, W), got shape {original.shape}")
    if rebuilt.shape != original.shape:
        raise ValueError(f"reconstruction has shape {rebuilt.shape}, pixel_values {original.shape}; they must match")
    batch, _, height, width = original.shape
    if mask.shape != (batch, 1, height, width):
        raise ValueError(f"pixel_mask must have shape {(batch, 1, height, width)}, got {mask.shape}")
    return original, rebuilt, mask > 0.5


def save_reconstruction_grid(
    pixel_values: torch.Tensor | np.ndarray,
    reconstruction: torch.Tensor | np.ndarray,
    pixel_mask: torch.Tensor | np.ndarray,
    mean: float | Sequence[float],
    std: float | Sequence[float],
    path: str | os.PathLike,
    scale: int | None = None,
) -> Path:
    """`reconstruction_grid(...)` written to `path` as PNG, atomically; returns the path."""
    grid = reconstruction_grid(pixel_values, reconstruction, pixel_mask, mean, std, scale=scale)
    path = Path(path)
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path


# ------------------------------------------------------------------------------------------------
# files in, PNG files out
def load_classifier_or_simmim(source: str | os.PathLike, device: str = "cpu") -> FocalNetPreTrainedModel:
    """A classifier or a SimMIM model, as the checkpoint says (what `visualize` and `serve` draw);
    the weights are read once."""
    resolved = resolve(source, {})
    model_class = _model_class(resolved.config, resolved.state.keys(), str(source))
    return build_from_resolved(model_class, resolved).to(device)


def _model_class(config: FocalNetConfig, keys: Any, source: str) -> type[FocalNetPreTrainedModel]:
    """The config's `architectures` entry, else the heads the weights have: SimMIM decoder or classifier."""
    model_class = class_for_weights(config, keys, VISUALIZED_CLASSES)
    if model_class is not None:
        return model_class
    raise ValueError(
        f"{source} is neither an image classifier nor a masked-image-modeling model (no classifier or decoder "
        "weights): a bare encoder has no labels or reconstructions to show; fine-tune or pretrain it first"
    )


def _mask_patch_size(config: FocalNetConfig, input_size: tuple[int, int]) -> int:
    """The pretraining's cell size if stored, else the encoder stride where it divides the input, else the patch."""
    stored = config.extra.get("mask_patch_size")
    if stored is not None:
        return int(stored)
    if all(side % config.encoder_stride == 0 for side in input_size):
        return config.encoder_stride
    return config.patch_size_2d[0]


def seeded_mask(
    config: FocalNetConfig,
    input_size: tuple[int, int],
    mask_ratio: float = 0.6,
    mask_patch_size: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """A `MaskGenerator` mask (True = hidden, on the stem's patch grid) for one `input_size` image,
    drawn from `seed` alone. `mask_patch_size` None: see `visualize_images`."""
    patch_h, patch_w = config.patch_size_2d
    if patch_h != patch_w:
        raise ValueError(f"masks need a square patch size, the model has {config.patch_size}")
    cell = _mask_patch_size(config, input_size) if mask_patch_size is None else mask_patch_size
    generator = MaskGenerator(input_size, mask_patch_size=cell, model_patch_size=patch_h, mask_ratio=mask_ratio)
    return generator(torch.Generator().manual_seed(seed))


def reconstruct(
    model: FocalNetForMaskedImageModeling,
    pixel_values: torch.Tensor,
    mask_ratio: float = 0.6,
    mask_patch_size: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask `pixel_values` with `seeded_mask` (one mask for the batch), run the model in eval mode.

    Returns the reconstruction and the (B, 1, H, W) float pixel mask (1 where hidden), ready for
    `reconstruction_grid`.
    """
    batch, _, height, width = pixel_values.shape
    mask = seeded_mask(model.config, (height, width), mask_ratio, mask_patch_size, seed).expand(batch, -1, -1)
    with _inference(model):
        reconstruction = model(pixel_values, bool_masked_pos=mask.to(pixel_values.device)).reconstruction
    return reconstruction, model.pixel_mask(mask, height, width).to(reconstruction.device)


def visualize_images(
    paths: Sequence[str | os.PathLike],
    model_source: str | os.PathLike,
    output_dir: str | os.PathLike,
    blocks: str = "last",
    alpha: float = 0.5,
    top_k: int = 5,
    device: str = "cpu",
    seed: int = 0,
    mask_ratio: float = 0.6,
    mask_patch_size: int | None = None,
    cmap: str = "jet",
) -> tuple[list[Path], list[tuple[str, str]]]:
    """One PNG per readable image in `output_dir` (`<stem>.png`, `<stem>-1.png` for a repeated stem).

    The checkpoint decides what is drawn: a classifier gets `save_modulator_figure` (`blocks`,
    `alpha`, `top_k`, `cmap`); a masked-image-modeling model gets `save_reconstruction_grid` of
    the image masked by a `MaskGenerator` seeded with `seed` afresh for every image, so an image's
    mask does not depend on the others. `mask_patch_size` None means `config.extra["mask_patch_size"]`
    (stored by pretraining), else `config.encoder_stride` if it divides the input, else the
    patch size. Images are preprocessed as `focalnet predict` does (`processor_for`).

    Returns the written paths and (path, reason) for each image that could not be read.
    """
    _check_alpha(alpha)
    model = load_classifier_or_simmim(model_source, device)
    block_indices = parse_blocks(blocks, model.config.depths)
    processor = processor_for(model_source, model.config.image_size_2d[0])
    mean, std = display_stats(processor)
    directory, used = Path(output_dir), set()
    written: list[Path] = []
    failures: list[tuple[str, str]] = []
    for image_path in paths:
        try:
            pixel_values = processor(image_path)["pixel_values"].to(device)
        except (ValueError, OSError) as err:
            failures.append((str(image_path), str(err)))
            continue
        target = directory / f"{unique_stem(Path(image_path).stem, used)}.png"
        if isinstance(model, FocalNetForMaskedImageModeling):
            rebuilt, pixel_mask = reconstruct(model, pixel_values, mask_ratio, mask_patch_size, seed)
            save_reconstruction_grid(pixel_values, rebuilt, pixel_mask, mean, std, target)
        else:
            options = {"blocks": block_indices, "top_k": top_k, "alpha": alpha, "cmap": cmap}
            save_modulator_figure(model, pixel_values, mean, std, target, **options)
        written.append(target)
    return written, failures
