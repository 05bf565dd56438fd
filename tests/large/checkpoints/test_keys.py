"""Key conversion: every layout transformers writes (the committed fixtures), and mmpretrain's MAE names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mae.large import MaskedAutoencoderViT
from mae.large.checkpoints.classify import classify
from mae.large.checkpoints.keys import (
    LAYOUTS,
    UnknownKeyError,
    from_huggingface,
    from_mmpretrain,
    huggingface_generation,
    is_mmpretrain,
    to_huggingface,
    to_mmpretrain,
)
from mae.large.checkpoints.read import read_checkpoint
from mae.large.errors import IncompatibleCheckpointError
from tests.helpers import HF_FIXTURES, encoder_only, small_config, small_model, small_state_dict, tiny_config

# folder -> (kind against the tiny model, key names the file's keys are read as)
FIXTURES: dict[str, tuple[str, str]] = {
    "tf5/pretraining-safetensors": ("full", "5.x"),
    "tf5/pretraining-sharded": ("full", "5.x"),
    "tf5/model-safetensors": ("encoder-only", "4.x"),  # 5.x writes a ViTMAEModel with the 4.x names
    "tf4/pretraining-safetensors": ("full", "4.x"),
    "tf4/pretraining-bin": ("full", "4.x"),
    "tf4/pretraining-sharded": ("full", "4.x"),
    "tf4/pretraining-bin-sharded": ("full", "4.x"),
    "tf4/model-safetensors": ("encoder-only", "4.x"),
    "tf4/model-bin": ("encoder-only", "4.x"),
    "hub/models--facebook--vit-mae-large": ("full", "4.x"),
}
HUB_SNAPSHOT = next((HF_FIXTURES / "hub/models--facebook--vit-mae-large/snapshots").iterdir())


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    """The fixtures' weights in official names, as transformers 5.24 itself holds them in memory."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.ViTMAEForPreTraining.from_pretrained(HF_FIXTURES / "tf5/pretraining-safetensors")
    return from_huggingface(hf.state_dict())


def test_the_fixtures_are_what_they_say() -> None:
    """Each generation's own spelling is in its files, so reading them tests what it claims to."""
    with safe_open(HF_FIXTURES / "tf5/pretraining-safetensors/model.safetensors", "pt") as f:
        keys5 = set(f.keys())
    with safe_open(HF_FIXTURES / "tf4/pretraining-safetensors/model.safetensors", "pt") as f:
        keys4 = set(f.keys())
    assert "decoder.decoder_encoder.layer.1.attention.attention.query.weight" in keys5
    assert "decoder.decoder_layers.1.attention.attention.query.weight" in keys4
    assert "vit.encoder.layer.0.attention.attention.query.weight" in keys4 & keys5
    assert huggingface_generation(keys5) == "hf5" and huggingface_generation(keys4) == "hf4"
    assert (HUB_SNAPSHOT / "model.safetensors").is_symlink()


@pytest.mark.parametrize("folder", sorted(FIXTURES))
def test_every_transformers_layout_reads_to_the_same_weights(folder: str, reference) -> None:
    kind, names = FIXTURES[folder]
    data = read_checkpoint(HF_FIXTURES / folder)
    assert data.layout == "hf-folder" and data.source_format == "huggingface"
    assert data.folder_config is not None and data.folder_config["hidden_size"] == 16
    assert any(f"transformers {names} names" in fix for fix in data.fixes), data.fixes
    expected = reference if kind == "full" else encoder_only(reference)
    assert set(data.state_dict) == set(expected)
    assert all(torch.equal(data.state_dict[k], v) for k, v in expected.items())
    assert classify(data.state_dict, MaskedAutoencoderViT.expected_state(tiny_config())).kind == kind


@pytest.mark.parametrize("folder", ["tf5/pretraining-safetensors/model.safetensors", "tf4/pretraining-bin/pytorch_model.bin"])
def test_a_file_of_a_folder_reads_alone_with_its_generation(folder: str, reference) -> None:
    data = read_checkpoint(HF_FIXTURES / folder)
    assert data.layout == ("hf5" if folder.startswith("tf5") else "hf4") and data.folder_config is None
    assert all(torch.equal(data.state_dict[k], v) for k, v in reference.items())


def test_the_hub_cache_root_and_its_snapshot_read_alike() -> None:
    root = read_checkpoint(HF_FIXTURES / "hub/models--facebook--vit-mae-large")
    snapshot = read_checkpoint(HUB_SNAPSHOT)
    assert root.fixes[0].startswith(f"took snapshot {HUB_SNAPSHOT.name[:12]}")
    assert root.files == snapshot.files and root.folder_config == snapshot.folder_config
    assert root.folder_config["layer_norm_eps"] == 1e-12


def test_a_5x_saved_key_no_rule_knows_is_named(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    sd = load_file(HF_FIXTURES / "tf5/pretraining-safetensors/model.safetensors")
    sd["decoder.decoder_encoder.layer.0.attention.rotary.weight"] = torch.zeros(2)
    save_file(sd, tmp_path / "odd.safetensors")
    with pytest.raises(IncompatibleCheckpointError, match=r"decoder\.decoder_encoder\.layer\.0\.attention\.rotary\.weight"):
        read_checkpoint(tmp_path / "odd.safetensors")


def test_writing_4x_names_inverts_reading() -> None:
    sd = small_state_dict()
    hf = to_huggingface(sd, new_names=False)
    assert "decoder.decoder_layers.0.attention.attention.query.weight" in hf
    back = from_huggingface(hf)
    assert set(back) == set(sd) and all(torch.equal(back[k], v) for k, v in sd.items())


def test_every_layout_has_words() -> None:
    assert set(LAYOUTS) == {"official", "safetensors", "hf4", "hf5", "hf-folder", "timm", "mmpretrain"}


# ---- mmpretrain ----------------------------------------------------------------------------------
# Names written out by hand from mmpretrain 1.2.0's source (MAEViT / TransformerEncoderLayer / mmcv FFN /
# MAEPretrainDecoder), not from the table, so that a wrong table fails here.
MMPRETRAIN_BY_HAND = {
    "backbone.patch_embed.projection.weight": "patch_embed.proj.weight",
    "backbone.layers.1.ln1.weight": "blocks.1.norm1.weight",
    "backbone.layers.1.attn.qkv.weight": "blocks.1.attn.qkv.weight",
    "backbone.layers.1.ffn.layers.0.0.weight": "blocks.1.mlp.fc1.weight",
    "backbone.layers.1.ffn.layers.1.bias": "blocks.1.mlp.fc2.bias",
    "backbone.ln1.bias": "norm.bias",
    "neck.decoder_blocks.0.ln2.weight": "decoder_blocks.0.norm2.weight",
    "neck.ln1.weight": "decoder_norm.weight",
    "neck.decoder_pred.bias": "decoder_pred.bias",
    "neck.mask_token": "mask_token",
}


def test_mmpretrain_names_match_their_source() -> None:
    sd = small_state_dict()
    mm = to_mmpretrain(sd)
    assert len(mm) == len(sd) and is_mmpretrain(mm) and not is_mmpretrain(sd)
    for theirs, ours in MMPRETRAIN_BY_HAND.items():
        assert torch.equal(mm[theirs], sd[ours]), theirs
    back = from_mmpretrain(mm)
    assert list(back) == list(sd) and all(torch.equal(back[k], v) for k, v in sd.items())


def test_an_mmpretrain_checkpoint_loads_and_runs_the_same(tmp_path: Path) -> None:
    sd = small_state_dict()
    path = tmp_path / "epoch_1600.pth"
    torch.save({"meta": {"epoch": 1600}, "state_dict": to_mmpretrain(sd), "optimizer": {}}, path)
    data = read_checkpoint(path)
    assert (data.layout, data.source_format) == ("mmpretrain", "mmpretrain")
    assert any("mmpretrain" in fix for fix in data.fixes) and "meta" in data.extras
    ours = MaskedAutoencoderViT.from_pretrained(path, small_config())
    g = torch.Generator().manual_seed(0)
    imgs, noise = torch.randn(2, 3, 32, 32, generator=g), torch.rand(2, 16, generator=g)
    with torch.no_grad():
        expected = small_model()(imgs, 0.75, noise)
        actual = ours(imgs, 0.75, noise)
    assert all(torch.equal(a, e) for a, e in zip(actual, expected))


def test_an_unknown_mmpretrain_key_is_named(tmp_path: Path) -> None:
    mm = to_mmpretrain(small_state_dict())
    mm["backbone.layers.0.attn.gamma1.weight"] = torch.ones(64)  # layer scale: not in MAE
    torch.save({"state_dict": mm}, tmp_path / "ls.pth")
    with pytest.raises(IncompatibleCheckpointError, match=r"backbone\.layers\.0\.attn\.gamma1\.weight"):
        read_checkpoint(tmp_path / "ls.pth")
    with pytest.raises(UnknownKeyError, match="target_generator"):
        from_mmpretrain({"target_generator.tokenizer.weight": torch.zeros(1)})


@pytest.mark.parametrize("keys", [
    ("vit.embeddings.cls_token", "embeddings.cls_token"),
    ("vit.encoder.layer.0.layernorm_before.weight", "vit.layers.0.layernorm_before.weight"),
    ("vit.encoder.layer.0.attention.attention.query.weight", "vit.layers.0.attention.q_proj.weight"),
])
def test_two_keys_for_one_tensor_are_refused_by_name(keys: tuple[str, str]) -> None:
    with pytest.raises(UnknownKeyError, match=f"keys '{keys[0]}' and '{keys[1]}' name the same tensor"):
        from_huggingface({key: torch.full((1,), float(i)) for i, key in enumerate(keys)})
