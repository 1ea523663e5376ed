"""`focalnet convert` between layouts, checked by loading the result in the target library."""

from __future__ import annotations

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from timm.models.focalnet import FocalNet

import focalnet
from conftest import assert_close, randomize_
from focalnet.cli import main

pytestmark = pytest.mark.numerics

LARGE_LIKE = dict(embed_dim=16, depths=[1, 2, 1, 1], use_conv_embed=True, use_post_layernorm=True, use_layerscale=True)
TIMM_LARGE_LIKE = dict(
    embed_dim=16, depths=[1, 2, 1, 1], use_overlap_down=True, use_post_norm=True, layerscale_value=1e-4
)


def _ours(tmp_path):
    model = randomize_(focalnet.FocalNetForImageClassification(focalnet.FocalNetConfig(**LARGE_LIKE, num_labels=6)))
    model.eval().save_pretrained(tmp_path / "ours")
    return model


def test_to_timm_loads_in_timm(tmp_path) -> None:
    ours = _ours(tmp_path)
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "timm.safetensors"), "--to", "timm"]) == 0
    timm_model = FocalNet(num_classes=6, **TIMM_LARGE_LIKE).eval()
    timm_model.load_state_dict(load_file(str(tmp_path / "timm.safetensors")), strict=True)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_close(ours(pixels).logits, timm_model(pixels), what="logits")


def test_to_original_and_back(tmp_path) -> None:
    ours = _ours(tmp_path)
    target = tmp_path / "focalnet_custom.pth"
    assert main(["convert", str(tmp_path / "ours"), str(target), "--to", "original"]) == 0
    saved = torch.load(target, weights_only=True)
    assert "patch_embed.proj.weight" in saved["model"] and "head.weight" in saved["model"]
    back = focalnet.FocalNetForImageClassification.from_pretrained(
        target, use_post_layernorm=True, normalize_modulator=False
    )
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(ours(pixels).logits, back(pixels).logits, what="logits")


def test_timm_file_to_hf_loads_in_transformers(tmp_path, capsys) -> None:
    timm_model = randomize_(FocalNet(num_classes=6, **TIMM_LARGE_LIKE)).eval()
    save_file(timm_model.state_dict(), str(tmp_path / "timm.safetensors"))
    args = ["convert", str(tmp_path / "timm.safetensors"), str(tmp_path / "hf"), "--set", "normalize_modulator=false"]
    assert main(args) == 0
    assert "wrote hf layout" in capsys.readouterr().out
    theirs = transformers.FocalNetForImageClassification.from_pretrained(tmp_path / "hf").eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_close(timm_model(pixels), theirs(pixels).logits, what="logits")


def test_ambiguous_source_and_mim_to_timm_are_refused(tmp_path, capsys) -> None:
    timm_model = FocalNet(num_classes=6, **TIMM_LARGE_LIKE)
    save_file(timm_model.state_dict(), str(tmp_path / "timm.safetensors"))
    assert main(["convert", str(tmp_path / "timm.safetensors"), str(tmp_path / "hf")]) == 2
    assert "normalize_modulator=True/False" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
    mim = focalnet.FocalNetForMaskedImageModeling(
        focalnet.FocalNetConfig(embed_dim=16, depths=[1, 1], encoder_stride=8)
    )
    mim.save_pretrained(tmp_path / "mim")
    assert main(["convert", str(tmp_path / "mim"), str(tmp_path / "mim.safetensors"), "--to", "timm"]) == 2
    assert "no masked-image-modeling head" in capsys.readouterr().err
