"""Output dataclasses with the field names of `transformers`.

Like HF's `ModelOutput`, each one reads as a dataclass (`out.logits`), a mapping of the
fields that are set (`out["logits"]`) and a tuple of them (`out[0]`, `out.to_tuple()`).
They are registered as pytree nodes so `torch.compile` and `torch.export` can return them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
import torch.utils._pytree as pytree


class ModelOutput:
    """Base for the output dataclasses; `None` fields are skipped in tuple and mapping views."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        pytree.register_pytree_node(
            cls,
            _flatten_output,
            lambda values, context, cls=cls: cls(**dict(zip(context, values, strict=True))),
            serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
        )

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list[Any]:
        return [getattr(self, key) for key in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(key, getattr(self, key)) for key in self.keys()]

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(self.values())

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, key: object) -> bool:
        return key in self.keys()


def _flatten_output(output: ModelOutput) -> tuple[list[Any], list[str]]:
    names = [f.name for f in dataclasses.fields(output)]
    return [getattr(output, name) for name in names], names


Tensors = tuple[torch.Tensor, ...]


@dataclasses.dataclass
class FocalNetModelOutput(ModelOutput):
    """`last_hidden_state` (B, tokens, C) after the final LayerNorm; `pooler_output` (B, C) its mean.

    `hidden_states` / `reshaped_hidden_states`: the embedding output, then each stage's output
    after its downsample (HF's definition), as (B, tokens, C) and (B, C, H, W).
    `modulators` / `gates` (extension): per block, the modulator (B, C, H, W) and the
    gates (B, L+1, H, W), with `output_modulators=True`.
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    reshaped_hidden_states: Tensors | None = None
    modulators: Tensors | None = None
    gates: Tensors | None = None


@dataclasses.dataclass
class FocalNetImageClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    reshaped_hidden_states: Tensors | None = None
    modulators: Tensors | None = None
    gates: Tensors | None = None


@dataclasses.dataclass
class FocalNetMaskedImageModelingOutput(ModelOutput):
    """`reconstruction` has the input's shape; `loss` is set when `bool_masked_pos` is given."""

    loss: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    reshaped_hidden_states: Tensors | None = None
    modulators: Tensors | None = None
    gates: Tensors | None = None


@dataclasses.dataclass
class BackboneOutput(ModelOutput):
    """`feature_maps`: one NCHW map per entry of `out_features`."""

    feature_maps: Tensors | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclasses.dataclass
class SemanticSegmenterOutput(ModelOutput):
    """`logits` (B, num_labels, H, W) at the input size; `loss` when labels are given;
    `hidden_states` the backbone's, with `output_hidden_states=True`."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None
