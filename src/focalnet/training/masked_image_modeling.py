"""SimMIM pretraining as a training task (`focalnet pretrain`): unlabelled images, random masks,
L1 reconstruction of the hidden pixels (SPEC section 8).

Training masks are drawn per sample from the sample's seed, so they repeat on resume and do not
depend on the number of processes; validation masks are fixed by each image's index, so
`val_loss` is comparable between epochs. Each epoch writes `reconstructions/epoch-NNN.png`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..masking import MaskGenerator
from ..modeling import FocalNetForMaskedImageModeling
from .config import TrainConfig
from .data import ImageDataset, eval_processor, first_samples, train_transform
from .distributed import Processes
from .evaluation import autocast
from .models import build_focalnet
from .sources import unlabelled_sources
from .streaming import samples
from .task import Batch, Task, batch_inputs


class WithMask:
    """A transform that also draws a mask (from the global RNG, which `ImageDataset` seeds per sample)."""

    def __init__(self, transform: Callable[[Any], torch.Tensor], masks: MaskGenerator) -> None:
        self.transform = transform
        self.masks = masks

    def __call__(self, image: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(image), self.masks()


def collate_masked(samples: list[Any]) -> Batch:
    """((pixels, mask), label) samples -> (pixels (B, C, H, W), masks (B, h, w), unreadable count)."""
    good = [sample[0] for sample in samples if sample is not None]
    skipped = len(samples) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.bool), skipped
    return torch.stack([p for p, _ in good]), torch.stack([m for _, m in good]), skipped


class MaskedImageModelingTask(Task):
    name = "masked-image-modeling"

    def __init__(self, config: TrainConfig, processes: Processes) -> None:
        super().__init__(config, processes)
        self.train_source, self.val_source = unlabelled_sources(config)
        self.processor = eval_processor(config)
        self.masks: MaskGenerator | None = None

    # -- model ---------------------------------------------------------------------------------
    def build_model(self) -> FocalNetForMaskedImageModeling:
        """SimMIM's model: from a preset, or the encoder of any checkpoint (a new decoder when it has none)."""
        model = build_focalnet(FocalNetForMaskedImageModeling, self.config)
        patch_h, patch_w = model.config.patch_size_2d
        if patch_h != patch_w:
            raise ValueError(f"masked image modeling needs square patches, the model has {patch_h}x{patch_w}")
        self.masks = MaskGenerator(self.config.image_size, self.config.mask_patch_size, patch_h, self.config.mask_ratio)
        return model

    # -- data (after build_model: the masks follow the model's patch size) ----------------------
    def _mask_generator(self) -> MaskGenerator:
        if self.masks is None:
            raise RuntimeError("build_model() sets the mask generator; call it before asking for data")
        return self.masks

    def train_dataset(self) -> Dataset:
        transform = WithMask(train_transform(self.config), self._mask_generator())
        return samples(self.train_source, functools.partial(ImageDataset, transform=transform))

    def val_dataset(self) -> Dataset:
        transform = WithMask(self.processor.transform, self._mask_generator())
        return samples(self.val_source, functools.partial(ImageDataset, transform=transform))

    def collate(self, samples: list[Any]) -> Batch:
        return collate_masked(samples)

    def placeholder_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.config.image_size
        return torch.zeros(1, len(self.config.mean), size, size), self._mask_generator()()[None]

    # -- steps ---------------------------------------------------------------------------------
    def training_loss(
        self, network: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        return network(inputs, bool_masked_pos=targets).loss.float(), {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
        """Mean reconstruction loss per image (every image hides the same number of pixels, so this
        is the loss over the whole set, whatever the batching)."""
        was_training = model.training
        model.eval()
        device = self.processes.device
        loss_sum = count = skipped = 0.0
        for pixels, masks, dropped in batches:
            skipped += dropped
            if len(pixels) == 0:
                continue
            pixels = batch_inputs(pixels, device, self.config.channels_last)
            with autocast(device, self.config.amp):
                loss = model(pixels, bool_masked_pos=masks.to(device)).loss.float()
            loss_sum += loss.item() * len(pixels)
            count += len(pixels)
        model.train(was_training)
        loss_sum, count, skipped = self.processes.sum([loss_sum, count, skipped])
        return {"val_loss": loss_sum / max(count, 1), "skipped": int(skipped)}

    # -- outputs -------------------------------------------------------------------------------
    def after_epoch(self, model: nn.Module, epoch: int, output_dir: Path) -> None:
        """The four SimMIM panels for the first `reconstruction_images` validation images."""
        pixels, masks, _ = collate_masked(first_samples(self.val_dataset(), self.config.reconstruction_images))
        if len(pixels) == 0:
            return
        from ..visualization import save_reconstruction_grid

        was_training = model.training
        model.eval()
        device = self.processes.device
        with torch.no_grad():
            reconstruction = model(pixels.to(device), bool_masked_pos=masks.to(device)).reconstruction.float().cpu()
        model.train(was_training)
        height, width = pixels.shape[-2:]
        pixel_mask = model.pixel_mask(masks, height, width)
        path = output_dir / "reconstructions" / f"epoch-{epoch:03d}.png"
        save_reconstruction_grid(pixels, reconstruction, pixel_mask, self.config.mean, self.config.std, path)

    def describe(self, row: dict[str, Any]) -> str:
        return f"val loss {row['val_loss']:.4f}"

    def save_model(self, model: FocalNetForMaskedImageModeling, directory: Path) -> None:
        """HF layout; `image_size` is the crop trained on (transformers' MIM head needs it), and the
        mask settings are kept for `focalnet visualize`."""
        model.config.image_size = self.config.image_size
        model.config.extra.update(mask_patch_size=self.config.mask_patch_size, mask_ratio=self.config.mask_ratio)
        model.save_pretrained(directory)
        self.processor.save_pretrained(directory)
