"""`from_pretrained` on every layout, each written by its own library; inference, registry, hub, transfer."""

from __future__ import annotations

import json

import huggingface_hub
import pytest
import timm
import torch
import transformers
from safetensors.torch import save_file
from timm.models.focalnet import FocalNet

import focalnet
from conftest import TIMM_FAMILIES, assert_close, randomize_
from focalnet.checkpoints import CheckpointError, infer_config_kwargs
from focalnet.registry import CHECKPOINTS, find_checkpoint, match_architecture

pytestmark = pytest.mark.numerics

FAMILIES = TIMM_FAMILIES
SMALL = dict(embed_dim=16, depths=[1, 2, 1, 1])


def _hf_model(family: str, num_labels: int = 5) -> transformers.FocalNetForImageClassification:
    config = transformers.FocalNetConfig(
        hidden_sizes=[32, 64, 128, 128], num_labels=num_labels, **SMALL, **FAMILIES[family][0]
    )
    return randomize_(transformers.FocalNetForImageClassification(config)).eval()


def _original_layout(hf_state: dict) -> dict:
    """Rename HF keys to the original release's, written out from SPEC 4.2 (independent of the library)."""
    out = {}
    for key, value in hf_state.items():
        key = key.removeprefix("focalnet.")
        for old, new in [
            ("embeddings.patch_embeddings.projection", "patch_embed.proj"),
            ("embeddings.norm", "patch_embed.norm"),
            ("encoder.stages", "layers"),
            ("downsample.projection", "downsample.proj"),
            ("modulation.projection_in", "modulation.f"),
            ("modulation.projection_context", "modulation.h"),
            ("modulation.projection_out", "modulation.proj"),
            ("modulation.layernorm", "modulation.ln"),
            ("classifier", "head"),
        ]:
            key = key.replace(old, new)
        key = key.replace(".layers.", ".blocks.") if key.startswith("layers.") else key
        key = "norm." + key.split(".", 1)[1] if key.startswith("layernorm.") else key
        out[key] = value
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_timm_state_dict_loads(tmp_path, family: str) -> None:
    timm_model = randomize_(FocalNet(num_classes=5, **SMALL, **FAMILIES[family][1])).eval()
    path = tmp_path / "timm.safetensors"
    save_file(timm_model.state_dict(), str(path))
    with pytest.raises(CheckpointError, match="normalize_modulator=True/False"):
        focalnet.FocalNetForImageClassification.from_pretrained(path)
    ours = focalnet.FocalNetForImageClassification.from_pretrained(path, normalize_modulator=False)
    assert ours.config.use_post_layernorm == (family != "srf")  # read from timm's norm*_post keys
    pixels = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert_close(timm_model(pixels), ours(pixels).logits, what="logits")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("wrapper", ["model", "state_dict", None])
def test_original_release_file_loads(tmp_path, family: str, wrapper: str | None) -> None:
    hf_model = _hf_model(family)
    path = tmp_path / "focalnet_custom.pth"
    state = _original_layout(hf_model.state_dict())
    optimizer_state = {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-3}]}
    torch.save({wrapper: state, "optimizer": optimizer_state, "epoch": 7} if wrapper else state, path)
    with pytest.raises(CheckpointError, match="use_post_layernorm=True/False"):
        focalnet.FocalNetForImageClassification.from_pretrained(path)
    flags = dict(use_post_layernorm=family != "srf", normalize_modulator=False)
    ours = focalnet.FocalNetForImageClassification.from_pretrained(path, **flags)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_close(hf_model(pixels).logits, ours(pixels).logits, what="logits")


def test_hf_files_single_and_sharded(tmp_path) -> None:
    hf_model = _hf_model("large_like")
    hf_model.save_pretrained(tmp_path / "dir")
    hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert list((tmp_path / "sharded").glob("*.index.json")), "transformers wrote no shard index"
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = hf_model(pixels).logits
        for source in [tmp_path / "dir" / "model.safetensors", tmp_path / "sharded"]:
            model = focalnet.FocalNetForImageClassification.from_pretrained(source)
            assert_close(expected, model(pixels).logits, what=str(source))
        # the weights file alone: architecture from the tensors, hidden flags given
        alone = tmp_path / "alone.safetensors"
        alone.write_bytes((tmp_path / "dir" / "model.safetensors").read_bytes())
        model = focalnet.FocalNetForImageClassification.from_pretrained(
            alone, use_post_layernorm=True, normalize_modulator=False
        )
        assert_close(expected, model(pixels).logits, what="weights file alone")


def test_architecture_inferred_from_tensors() -> None:
    kwargs = dict(
        embed_dim=16,
        depths=[2, 1, 3],
        focal_levels=[1, 3, 2],
        focal_windows=[5, 3, 3],
        use_layerscale=True,
        use_post_layernorm_in_modulation=True,
        mlp_ratio=2.0,
        num_labels=7,
        num_channels=1,
        patch_size=2,
    )
    model = focalnet.FocalNetForImageClassification(focalnet.FocalNetConfig(**kwargs))
    inferred = infer_config_kwargs(model.state_dict())
    for key, value in kwargs.items():
        assert inferred[key] == value, key
    conv = focalnet.FocalNetModel(focalnet.FocalNetConfig(embed_dim=16, depths=[1, 1], use_conv_embed=True))
    assert infer_config_kwargs(conv.state_dict())["use_conv_embed"] is True


def test_registry_settles_flags_of_published_architectures(tmp_path) -> None:
    config = focalnet.FocalNetConfig.from_preset("focalnet-tiny-iso")
    model = randomize_(focalnet.FocalNetForImageClassification(config)).eval()
    path = tmp_path / "renamed_download.pth"
    torch.save(_original_layout(model.state_dict()), path)
    loaded = focalnet.FocalNetForImageClassification.from_pretrained(path)  # no flags needed
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(model(pixels).logits, loaded(pixels).logits, what="logits")
    assert loaded.config.id2label[281] == "tabby, tabby cat"  # label names from the registry
    large_fl4 = focalnet.FocalNetConfig.from_preset("focalnet-large-lrf-fl4", normalize_modulator=False)
    assert match_architecture(large_fl4).name == "focalnet-large-lrf-fl4"


def test_registry_entries() -> None:
    assert len(CHECKPOINTS) == 15
    assert find_checkpoint("microsoft/focalnet-xlarge-lrf-fl3").config().embed_dim == 256  # not HF's 192
    assert find_checkpoint("timm/focalnet_large_fl4.ms_in22k").config().normalize_modulator is True
    assert find_checkpoint("/downloads/focalnet_base_iso_16.pth").config().use_post_layernorm_in_modulation
    assert find_checkpoint("timm/focalnet_tiny_srf").name == "focalnet-tiny"
    huge = find_checkpoint("focalnet-huge-fl3").config()
    assert huge.num_labels == 21842 and huge.id2label[0] == "tench, Tinca tinca"
    assert find_checkpoint("focalnet-base-lrf").top1 == 83.9


def test_config_that_contradicts_weights_is_named(tmp_path) -> None:
    _hf_model("srf").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["embed_dim"] = 12  # what HF's converter did to xlarge
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"embed_dim: config 12 vs weights 16"):
        focalnet.FocalNetForImageClassification.from_pretrained(tmp_path)


def test_damaged_foreign_and_missing_sources(tmp_path) -> None:
    hf_model = _hf_model("srf")
    good = tmp_path / "good.pth"
    torch.save({"model": _original_layout(hf_model.state_dict())}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth could not be read"):
        focalnet.FocalNetModel.from_pretrained(truncated)
    swin = transformers.SwinModel(transformers.SwinConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 1]))
    swin_path = tmp_path / "swin.safetensors"
    save_file({k: v.contiguous() for k, v in swin.state_dict().items()}, str(swin_path))
    with pytest.raises(CheckpointError, match="not a FocalNet checkpoint"):
        focalnet.FocalNetModel.from_pretrained(swin_path)
    with pytest.raises(FileNotFoundError, match="neither a local file"):
        focalnet.FocalNetModel.from_pretrained(tmp_path / "nothing-here.pth")
    text = tmp_path / "notes.safetensors"
    text.write_text("not tensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        focalnet.FocalNetModel.from_pretrained(text)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty hub cache and HF_HUB_OFFLINE, as a machine without network sees them."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_uncached_hub_id_offline_says_how_to_fetch(offline_hub) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"not in the local Hugging Face cache and HF_HUB_OFFLINE is set.*hf download"
    ):
        focalnet.FocalNetForImageClassification.from_pretrained("microsoft/focalnet-tiny", cache_dir=offline_hub)


def test_cached_hub_repo_loads_offline(offline_hub) -> None:
    hf_model = _hf_model("srf")
    snapshot = offline_hub / "models--someone--focalnet-custom" / "snapshots" / ("0" * 40)
    hf_model.save_pretrained(snapshot)
    (offline_hub / "models--someone--focalnet-custom" / "refs").mkdir(parents=True)
    (offline_hub / "models--someone--focalnet-custom" / "refs" / "main").write_text("0" * 40)
    ours = focalnet.FocalNetForImageClassification.from_pretrained("someone/focalnet-custom", cache_dir=offline_hub)
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(hf_model(pixels).logits, ours(pixels).logits, what="logits")


def test_mim_checkpoint_feeds_encoder_and_backbone(tmp_path) -> None:
    config = focalnet.FocalNetConfig(**SMALL, encoder_stride=32)
    mim = randomize_(focalnet.FocalNetForMaskedImageModeling(config)).eval()
    mim.save_pretrained(tmp_path)
    encoder = focalnet.FocalNetModel.from_pretrained(tmp_path)
    assert encoder.embeddings.mask_token is None
    backbone = focalnet.FocalNetBackbone.from_pretrained(tmp_path, out_features=["stage2"])
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = mim.focalnet(pixels, output_hidden_states=True).last_hidden_state
        assert_close(expected, encoder(pixels).last_hidden_state, what="encoder")
        assert backbone(pixels).feature_maps[0].shape == (1, 32, 8, 8)


def test_expand_to_larger_windows_keeps_outputs(tmp_path) -> None:
    model = randomize_(focalnet.FocalNetForImageClassification(focalnet.FocalNetConfig(**SMALL, num_labels=3)))
    model.eval().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="expand_focal=True"):
        focalnet.FocalNetForImageClassification.from_pretrained(tmp_path, focal_windows=[5] * 4)
    wider = focalnet.FocalNetForImageClassification.from_pretrained(tmp_path, expand_focal=True, focal_windows=[5] * 4)
    assert wider.focalnet.encoder.stages[0].layers[0].modulation.kernel_sizes == [5, 7]
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(model(pixels).logits, wider(pixels).logits, what="zero-padded kernels")


def test_expand_to_more_levels_zeroes_new_gates(tmp_path) -> None:
    model = randomize_(focalnet.FocalNetForImageClassification(focalnet.FocalNetConfig(**SMALL, num_labels=3)))
    model.save_pretrained(tmp_path)
    deeper = focalnet.FocalNetForImageClassification.from_pretrained(tmp_path, expand_focal=True, focal_levels=[3] * 4)
    old = model.focalnet.encoder.stages[1].layers[0].modulation
    new = deeper.focalnet.encoder.stages[1].layers[0].modulation
    dim = old.dim
    assert new.projection_in.weight.shape[0] == 2 * dim + 4
    assert torch.equal(new.projection_in.weight[: 2 * dim + 2], old.projection_in.weight[: 2 * dim + 2])
    assert torch.equal(new.projection_in.weight[2 * dim + 2], torch.zeros(dim))  # the new level's gate
    assert torch.equal(new.projection_in.weight[-1], old.projection_in.weight[-1])  # the global gate
    assert torch.equal(new.focal_layers[2][0].weight[..., 1:-1, 1:-1], old.focal_layers[1][0].weight)


def _cache_snapshot(cache, repo_id: str):
    """A snapshot folder of `repo_id` in a Hugging Face cache, as `hf download` leaves it."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("1" * 40)
    snapshot = repo_dir / "snapshots" / ("1" * 40)
    snapshot.mkdir(parents=True)
    return snapshot


def test_timm_hub_snapshot_loads_through_the_registry(offline_hub) -> None:
    """timm/focalnet_tiny_srf.ms_in1k as `hf download` caches it: timm's own config.json (no model_type),
    timm-layout weights. The registry supplies the config, the flags and the label names."""
    config = focalnet.FocalNetConfig.from_preset("focalnet-tiny")
    timm_model = randomize_(timm.create_model("focalnet_tiny_srf", num_classes=1000)).eval()
    snapshot = _cache_snapshot(offline_hub, "timm/focalnet_tiny_srf.ms_in1k")
    save_file(timm_model.state_dict(), str(snapshot / "model.safetensors"))
    timm_config = {"architecture": "focalnet_tiny_srf", "num_classes": 1000, "pretrained_cfg": {"tag": "ms_in1k"}}
    (snapshot / "config.json").write_text(json.dumps(timm_config))
    loaded = focalnet.FocalNetForImageClassification.from_pretrained("timm/focalnet_tiny_srf", cache_dir=offline_hub)
    assert loaded.config.to_dict()["depths"] == config.depths and loaded.config.id2label[281] == "tabby, tabby cat"
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(timm_model(pixels), loaded(pixels).logits, what="logits")


def test_registry_names_resolve_to_their_hub_repos() -> None:
    from focalnet.checkpoints import _hub_repo

    tiny = find_checkpoint("focalnet-tiny")
    assert _hub_repo("focalnet-tiny", tiny) == "microsoft/focalnet-tiny"
    assert _hub_repo("timm/focalnet_tiny_srf", tiny) == "timm/focalnet_tiny_srf.ms_in1k"
    assert _hub_repo("timm/focalnet_tiny_srf.ms_in1k", tiny) == "timm/focalnet_tiny_srf.ms_in1k"
    assert _hub_repo("microsoft/focalnet-tiny", tiny) == "microsoft/focalnet-tiny"
    with pytest.raises(FileNotFoundError, match=r"focalnet_tiny_iso_16\.pth"):
        _hub_repo("focalnet-tiny-iso", find_checkpoint("focalnet-tiny-iso"))
