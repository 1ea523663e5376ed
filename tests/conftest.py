"""Shared helpers: tiny configs, the oracles, and weights that make every branch matter."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

import focalnet

ATOL = 1e-5


def _compile_cache_per_instruction_set() -> None:
    """Give each ATEN_CPU_CAPABILITY its own inductor cache (here and in the runs the tests start).

    torch 2.14's FX graph cache does not key on the vector width that ATEN_CPU_CAPABILITY picks: `make
    test-avx2` after `make test` reused C++ written for 16-float AVX-512 vectors, rebuilt it for 8-float
    AVX2 ones, and compiled models returned NaN.
    """
    capability = os.environ.get("ATEN_CPU_CAPABILITY")
    if capability and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        folder = Path(tempfile.gettempdir()) / f"torchinductor_{os.getuid()}_{capability}"
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)


_compile_cache_per_instruction_set()

# (our/HF config kwargs, timm `FocalNet` kwargs): small versions of the published block families
TIMM_FAMILIES = {
    "srf": (dict(), dict()),
    "large_like": (
        dict(use_conv_embed=True, use_post_layernorm=True, use_layerscale=True, focal_levels=[4] * 4),
        dict(use_overlap_down=True, use_post_norm=True, layerscale_value=1e-4, focal_levels=[4] * 4),
    ),
    "huge_like": (
        dict(use_conv_embed=True, use_post_layernorm=True, use_layerscale=True, use_post_layernorm_in_modulation=True),
        dict(use_overlap_down=True, use_post_norm=True, layerscale_value=1e-4, use_post_norm_in_modulation=True),
    ),
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def hf_offline(tmp_path_factory: pytest.TempPathFactory):
    """Hugging Face `datasets` for a module's tests: its cache in a temporary folder (in this process and in
    the runs the tests start), the hub offline, no progress bars."""
    datasets = pytest.importorskip("datasets")
    from focalnet.training.hf import load_splits

    cache = tmp_path_factory.mktemp("hf-cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("HF_DATASETS_CACHE", str(cache))
    patch.setenv("HF_HUB_OFFLINE", "1")
    patch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    patch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    datasets.disable_progress_bars()
    yield
    load_splits.cache_clear()
    datasets.enable_progress_bars()
    patch.undo()


@pytest.fixture
def no_curves(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs draw no curves.png (half a second a run, for tests that read metrics.jsonl)."""
    monkeypatch.setattr("focalnet.training.plots.plot_curves", lambda *args: None)


@pytest.fixture
def fuse_tiny_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send even the tests' tiny blocks through the fused CPU path (by default only blocks with
    enough work take it), for the tests that compare it with the plain one."""
    monkeypatch.setattr(focalnet.fused, "_MIN_FUSED_WORK", 0)


@pytest.fixture
def fused_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one each time a block runs through the fused kernels (which still run)."""
    calls: list[int] = []
    original = focalnet.fused._fused_block
    monkeypatch.setattr(focalnet.fused, "_fused_block", lambda *args: calls.append(1) or original(*args))
    return calls


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0, scale: float = 0.02) -> nn.Module:
    """Give every parameter non-trivial values, so a wrong branch cannot hide.

    LayerScale gammas (1e-4 at init) would make both residual branches invisible, and zero
    biases or unit LayerNorms would hide swapped or skipped parameters.
    """
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator)
        if name.endswith(("gamma_1", "gamma_2", "ls1.gamma", "ls2.gamma")):
            param.copy_(0.5 + torch.rand(param.shape, generator=generator))
        elif param.ndim == 1 and ("norm" in name.split(".")[-2]):
            param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
        else:
            param.add_(scale * noise)
    return model


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return (a.float() - b.float()).abs().max().item()


def scaled_tolerance(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> float:
    """`atol` for tensors of magnitude up to 1, and `atol` relative to the magnitude of larger ones.

    fp32 keeps 24 bits (1.2e-7 relative). Two correct computations that sum in another order or pick
    other kernels (another CPU, batch size or library) differ by a few of those units at the tensor's
    scale: measured at most 1e-6 of it between transformers and us, under AVX-512, AVX2 and no vector
    extensions alike. A fixed 1e-5 would ask hidden states of magnitude 7 to agree to 10 units: luck.
    """
    return atol * max(1.0, a.abs().max().item(), b.abs().max().item())


def assert_close(a: torch.Tensor, b: torch.Tensor, atol: float | None = None, what: str = "") -> None:
    """max |a - b| <= atol; by default `scaled_tolerance` (1e-5, relative above magnitude 1)."""
    diff = max_diff(a, b)
    atol = scaled_tolerance(a, b) if atol is None else atol
    assert diff <= atol, f"{what}: max abs diff {diff:.3g} > {atol:.3g}"


def tiny_config(**overrides) -> focalnet.FocalNetConfig:
    kwargs = dict(
        embed_dim=16, depths=[1, 1], focal_levels=[2, 2], focal_windows=[3, 3], num_labels=3, encoder_stride=8
    )
    kwargs.update(overrides)
    return focalnet.FocalNetConfig(**kwargs)


def set_args(values: dict, recipe: str | None = None) -> list[str]:
    """`focalnet train` arguments giving `values` as `--set key=json`, after `--recipe` if named."""
    recipe_args = ["--recipe", recipe] if recipe else []
    return [*recipe_args, *(f"--set={key}={json.dumps(value)}" for key, value in values.items())]


def metrics_rows(output_dir: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
