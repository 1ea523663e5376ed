"""HF-layout save/load: what we write loads in transformers and the other way round."""

from __future__ import annotations

import json
import os

import pytest
import torch
import transformers

import focalnet
from conftest import assert_close, randomize_
from focalnet._io import atomic_write
from focalnet.checkpoints import CheckpointError

KWARGS = dict(embed_dim=16, depths=[1, 1, 2, 1], use_layerscale=True, num_labels=4)


def _hf_classifier() -> transformers.FocalNetForImageClassification:
    config = transformers.FocalNetConfig(hidden_sizes=[32, 64, 128, 128], **KWARGS)
    return randomize_(transformers.FocalNetForImageClassification(config)).eval()


@pytest.mark.parametrize("safe", [True, False])
def test_transformers_checkpoint_loads(tmp_path, safe: bool) -> None:
    hf_model = _hf_classifier()
    hf_model.save_pretrained(tmp_path)
    if not safe:  # the microsoft/focalnet-* repos: a pickled state dict, as transformers 4 wrote it
        (tmp_path / "model.safetensors").unlink()
        torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    ours = focalnet.FocalNetForImageClassification.from_pretrained(tmp_path)
    pixels = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        assert_close(hf_model(pixels).logits, ours(pixels).logits, what="logits")
    assert not ours.training


def test_our_checkpoint_loads_in_transformers(tmp_path) -> None:
    ours = randomize_(focalnet.FocalNetForImageClassification(focalnet.FocalNetConfig(**KWARGS))).eval()
    ours.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["FocalNetForImageClassification"]
    theirs = transformers.FocalNetForImageClassification.from_pretrained(tmp_path).eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_close(theirs(pixels).logits, ours(pixels).logits, what="logits")


def test_any_class_from_any_checkpoint(tmp_path) -> None:
    hf_model = _hf_classifier()
    hf_model.save_pretrained(tmp_path / "classifier")
    encoder = focalnet.FocalNetModel.from_pretrained(tmp_path / "classifier")
    backbone = focalnet.FocalNetBackbone.from_pretrained(tmp_path / "classifier")
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(hf_model.focalnet(pixels).pooler_output, encoder(pixels).pooler_output, what="pooled")
        assert torch.equal(backbone.focalnet.layernorm.weight, encoder.layernorm.weight)
    encoder.save_pretrained(tmp_path / "encoder")
    with pytest.warns(UserWarning, match="classifier"):
        classifier = focalnet.FocalNetForImageClassification.from_pretrained(tmp_path / "encoder")
    with torch.no_grad():
        assert_close(encoder(pixels).pooler_output, classifier.focalnet(pixels).pooler_output, what="pooled")


def test_new_label_count_replaces_head(tmp_path) -> None:
    _hf_classifier().save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="replaced the 4-class classifier"):
        model = focalnet.FocalNetForImageClassification.from_pretrained(tmp_path, num_labels=7)
    assert model.classifier.out_features == 7 and model.config.num_labels == 7


def test_new_label_names_replace_head_but_a_wrong_config_does_not(tmp_path) -> None:
    _hf_classifier().save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="by a new 2-class one"):
        model = focalnet.FocalNetForImageClassification.from_pretrained(tmp_path, id2label={0: "cat", 1: "dog"})
    assert model.config.label2id == {"cat": 0, "dog": 1}
    config = json.loads((tmp_path / "config.json").read_text())
    config["id2label"] = {str(i): f"class {i}" for i in range(9)}
    config.pop("label2id", None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"classifier\.weight: checkpoint \(4, 128\) vs model \(9, 128\)"):
        focalnet.FocalNetForImageClassification.from_pretrained(tmp_path)


def test_mismatched_and_damaged_checkpoints_raise(tmp_path) -> None:
    _hf_classifier().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["focal_levels"] = [3, 3, 3, 3]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"focal_levels: config \[3, 3, 3, 3\] vs weights \[2, 2, 2, 2\]"):
        focalnet.FocalNetForImageClassification.from_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        focalnet.FocalNetForImageClassification.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError):
        focalnet.FocalNetForImageClassification.from_pretrained(tmp_path / "absent")


def test_pickles_load_without_running_code(tmp_path) -> None:
    focalnet.FocalNetConfig(**KWARGS).save_pretrained(tmp_path)

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="could not be read"):
        focalnet.FocalNetForImageClassification.from_pretrained(tmp_path)


def test_atomic_write_keeps_previous_file_on_failure(tmp_path) -> None:
    target = tmp_path / "config.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_saved_files_get_ordinary_permissions(tmp_path) -> None:
    focalnet.FocalNetModel(focalnet.FocalNetConfig(embed_dim=16, depths=[1])).save_pretrained(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    for path in tmp_path.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name
