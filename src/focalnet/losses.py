"""Losses of the heads, chosen and computed as `transformers` does."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The image is reconstructed in full; the loss looks only at masked pixels (SimMIM).
MIM_EPS = 1e-5


def infer_problem_type(num_labels: int, labels: torch.Tensor) -> str:
    """HF's rule: one output is regression, integer labels are single-label, anything else multi-label."""
    if num_labels == 1:
        return "regression"
    if num_labels > 1 and not labels.dtype.is_floating_point and labels.dtype != torch.bool:
        return "single_label_classification"
    return "multi_label_classification"


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str | None) -> torch.Tensor:
    """MSE, cross-entropy (ignore_index -100) or BCE-with-logits, by `problem_type` or HF's inference.

    Unlike HF, the inferred type is not written back into the config, so one odd batch does not
    decide the loss of every later one.
    """
    num_labels = logits.shape[-1]
    problem_type = problem_type or infer_problem_type(num_labels, labels)
    labels = labels.to(logits.device)
    batch = logits.shape[0]
    if problem_type == "regression":
        if num_labels == 1:
            if labels.numel() != batch:
                raise ValueError(
                    f"regression with one output needs one target per image ({batch}), "
                    f"got labels of shape {tuple(labels.shape)}"
                )
            return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        _check_label_shape(labels, logits.shape, "regression labels")
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem_type == "single_label_classification":
        if labels.numel() != batch:
            raise ValueError(
                f"single-label classification needs one class index per image ({batch}), "
                f"got labels of shape {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point:
            raise TypeError("single-label classification needs integer class indices; got float labels")
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1).long(), ignore_index=-100)
    _check_label_shape(labels, logits.shape, "multi-label targets")
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def _check_label_shape(labels: torch.Tensor, expected: torch.Size, what: str) -> None:
    if labels.shape != expected:
        raise ValueError(f"{what} must have the logits' shape {tuple(expected)}, got {tuple(labels.shape)}")


def masked_image_modeling_loss(
    pixel_values: torch.Tensor, reconstruction: torch.Tensor, pixel_mask: torch.Tensor
) -> torch.Tensor:
    """Mean L1 over masked pixels and channels: sum(|x - x̂| * m) / (sum(m) + eps) / channels.

    `pixel_mask` is (B, 1, H, W), 1 where the patch was masked.
    """
    l1 = (pixel_values - reconstruction).abs()
    return (l1 * pixel_mask).sum() / (pixel_mask.sum() + MIM_EPS) / pixel_values.shape[1]
