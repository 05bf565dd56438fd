"""Writing checkpoints (`save.save_as`): every format, read back bit for bit, key order, atomic writes, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mae.large import MaskedAutoencoderViT, VisionTransformer, ViTConfig
from mae.large.checkpoints.containers import HF_CONFIG, HF_WEIGHTS
from mae.large.checkpoints.keys import UnknownKeyError, official_order, to_timm
from mae.large.checkpoints.read import read_checkpoint
from mae.large.checkpoints.save import FORMATS, save_as
from mae.large.errors import InvalidArgumentError, NonFiniteCheckpointError
from tests.helpers import (
    MANIFEST,
    encoder_only,
    manifest,
    relative_error,
    shaped_state_dict,
    small_config,
    small_model,
    small_state_dict,
    vectors,
)

TOL = 1e-5


def _read(path: Path, format: str) -> dict[str, torch.Tensor]:
    data = read_checkpoint(path / HF_WEIGHTS if format == "hf" else path)
    return {**data.state_dict, **data.classifier}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(torch.uint8),
                                                                     b.contiguous().view(torch.uint8))


def _classifier_state(global_pool: bool = True) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig.from_mae(small_config(), num_classes=5, global_pool=global_pool)).state_dict()


def _shuffled(keys: list[str]) -> list[str]:
    return [keys[i] for i in torch.randperm(len(keys), generator=torch.Generator().manual_seed(0)).tolist()]


# ---- key order ---------------------------------------------------------------------------------------------------
def test_official_order_is_the_state_dict_order_of_both_models() -> None:
    mae_keys = list(MaskedAutoencoderViT(small_config()).state_dict())
    assert official_order(_shuffled(mae_keys)) == mae_keys
    for global_pool in (True, False):  # head before fc_norm (models_vit adds it last), norm before head
        keys = list(_classifier_state(global_pool))
        assert official_order(_shuffled(keys)) == keys


def test_official_order_is_the_manifests_vit_large_order() -> None:
    keys = [k["name"] for k in manifest()["keys"]]
    assert len(keys) == 398, MANIFEST
    assert official_order(_shuffled(keys)) == keys


@pytest.mark.parametrize("key", ["vit.embeddings.cls_token", "blocks.0.attn.qkv", "blocks.x.norm1.weight",
                                 "cls_token.weight", "blocks.weight", "decoder_blocks.0.attn.q_proj.weight"])
def test_a_key_that_is_not_official_is_refused(key: str) -> None:
    with pytest.raises(UnknownKeyError, match="not an official"):
        official_order(["cls_token", key])


def test_the_official_file_holds_the_model_entry_in_official_order(tmp_path: Path) -> None:
    sd = small_state_dict()
    shuffled = {k: sd[k] for k in _shuffled(list(sd))}
    save_as(shuffled, tmp_path / "out.pth", "official", config=small_config())
    raw = torch.load(tmp_path / "out.pth", weights_only=True)
    assert list(raw) == ["model"] and list(raw["model"]) == list(MaskedAutoencoderViT(small_config()).state_dict())


# ---- every format, back bit for bit ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("format", FORMATS)
def test_every_format_reads_back_bit_for_bit(tmp_path: Path, format: str, dtype: torch.dtype) -> None:
    model = small_model().to(dtype)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    report = save_as(model, tmp_path / "out", format)
    back = _read(tmp_path / "out", format)
    decoder = [k for k in sd if k.startswith(("mask_token", "decoder_"))]
    expected = [k for k in sd if k not in decoder] if format == "timm" else list(sd)
    assert sorted(back) == sorted(expected) and all(_same_bits(back[k], sd[k]) for k in expected)
    assert report.kind == "full" and report.written == len(expected)
    assert report.dropped == (decoder if format == "timm" else [])
    files = list((tmp_path / "out").iterdir()) if format == "hf" else [tmp_path / "out"]
    assert report.bytes == sum(f.stat().st_size for f in files) > sum(sd[k].nbytes for k in expected)
    assert all(_same_bits(v, sd[k]) for k, v in model.state_dict().items())  # the source is untouched


def test_tensors_sharing_memory_are_written_apart(tmp_path: Path) -> None:
    """Views (a slice of one storage, an expanded tensor) are written as their own bytes, never the storage."""
    sd = small_state_dict()
    both = torch.stack([sd["norm.weight"], sd["norm.bias"]])
    sd["norm.weight"], sd["norm.bias"] = both[0], both[1]  # one storage
    for format in ("safetensors", "official"):
        save_as(sd, tmp_path / format, format, config=small_config())
        back = _read(tmp_path / format, format)
        assert torch.equal(back["norm.weight"], sd["norm.weight"]) and torch.equal(back["norm.bias"], sd["norm.bias"])
    config = small_config()
    zeros = shaped_state_dict(config)  # stride-0 views of one float each
    report = save_as(encoder_only(zeros), tmp_path / "zeros.pth", "official", config=config)
    assert report.bytes >= 4 * sum(v.numel() for v in encoder_only(zeros).values())


# ---- HuggingFace -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_transformers_loads_the_folder_and_reproduces_the_outputs(tmp_path: Path, norm_pix_loss: bool) -> None:
    transformers = pytest.importorskip("transformers")
    ours = small_model(norm_pix_loss=norm_pix_loss)
    report = save_as(ours, tmp_path / "hf", "hf", mask_ratio=0.6)
    config = json.loads((tmp_path / "hf" / HF_CONFIG).read_text())
    assert config["layer_norm_eps"] == 1e-6 and config["norm_pix_loss"] is norm_pix_loss and config["mask_ratio"] == 0.6
    assert config["architectures"] == ["ViTMAEForPreTraining"] and report.hf_config == config
    hf, info = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    v = vectors()
    with torch.no_grad():
        loss, pred, mask = ours(v["input.imgs"], 0.6, v["input.noise"])
        out = hf.eval()(pixel_values=v["input.imgs"], noise=v["input.noise"])
    assert torch.equal(mask, out.mask)
    assert relative_error(pred, out.logits) <= TOL and relative_error(loss, out.loss) <= TOL


def test_an_encoder_only_source_becomes_a_vitmae_model_folder(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    ours = small_model()
    report = save_as(encoder_only(ours.state_dict()), tmp_path / "enc", "hf", config=ours.config)
    assert report.kind == "encoder-only" and "ViTMAEModel" in report.notes[0] and "no decoder" in report.notes[0]
    assert json.loads((tmp_path / "enc" / HF_CONFIG).read_text())["architectures"] == ["ViTMAEModel"]
    hf, info = transformers.ViTMAEModel.from_pretrained(tmp_path / "enc", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    v = vectors()
    with torch.no_grad():
        latent, mask, _ = ours.forward_encoder(v["input.imgs"], 0.75, v["input.noise"])
        out = hf.eval()(pixel_values=v["input.imgs"], noise=v["input.noise"])
    assert torch.equal(mask, out.mask) and relative_error(latent, out.last_hidden_state) <= TOL


def test_a_classifier_has_no_huggingface_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="no HuggingFace ViTMAE counterpart") as info:
        save_as(_classifier_state(), tmp_path / "hf", "hf", config=small_config())
    assert info.value.argument == "format" and not (tmp_path / "hf").exists()


def test_a_non_square_model_has_no_pretraining_folder_but_its_encoder_has(tmp_path: Path) -> None:
    config = small_config(img_size=(32, 48))
    with pytest.raises(InvalidArgumentError, match="square models only.*32x48") as info:
        save_as(MaskedAutoencoderViT(config), tmp_path / "hf", "hf", config=config)
    assert info.value.argument == "format" and not (tmp_path / "hf").exists()
    encoder = encoder_only(MaskedAutoencoderViT(config).state_dict())
    assert save_as(encoder, tmp_path / "enc", "hf", config=config).kind == "encoder-only"  # ViTMAEModel takes any grid


def test_a_config_that_disagrees_with_the_weights_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="do not have the sizes of the config") as info:
        save_as(small_state_dict(), tmp_path / "hf", "hf", config=small_config(img_size=64))
    assert info.value.argument == "config" and list(tmp_path.iterdir()) == []


# ---- timm --------------------------------------------------------------------------------------------------------
# A few names and ViT-L shapes of timm's `vit_large_patch16_224.mae`, written out by hand from timm's source
# (huggingface/pytorch-image-models timm/models/vision_transformer.py, timm 1.0.29.dev0: `VisionTransformer` with
# class_token, global_pool='token', num_classes=0: the final `norm` kept, no `fc_norm`, no `head`).
TIMM_VIT_L_MAE = {
    "cls_token": (1, 1, 1024),
    "pos_embed": (1, 197, 1024),
    "patch_embed.proj.weight": (1024, 3, 16, 16),
    "patch_embed.proj.bias": (1024,),
    "blocks.0.norm1.weight": (1024,),
    "blocks.0.attn.qkv.weight": (3072, 1024),
    "blocks.0.attn.qkv.bias": (3072,),
    "blocks.0.attn.proj.weight": (1024, 1024),
    "blocks.23.mlp.fc1.weight": (4096, 1024),
    "blocks.23.mlp.fc2.weight": (1024, 4096),
    "norm.weight": (1024,),
    "norm.bias": (1024,),
}
TIMM_VIT_L_MAE_COUNT = 4 + 24 * 12 + 2  # tokens and patch embedding, 12 tensors a block, the final norm


def test_timm_names_and_shapes_are_timms() -> None:
    from mae.large import MAEConfig

    kept, dropped = to_timm(shaped_state_dict(MAEConfig.vit_large()))
    assert {k: tuple(kept[k].shape) for k in TIMM_VIT_L_MAE} == TIMM_VIT_L_MAE
    assert len(kept) == TIMM_VIT_L_MAE_COUNT
    assert not any(k.startswith(("mask_token", "decoder_", "head", "fc_norm")) for k in kept)
    assert len(dropped) == 398 - TIMM_VIT_L_MAE_COUNT and "mask_token" in dropped


def test_a_timm_file_loads_into_the_classifier_and_matches_the_encoder(tmp_path: Path) -> None:
    ours = small_model()
    report = save_as(ours, tmp_path / "timm.safetensors", "timm")
    assert "decoder_pred.weight" in report.dropped
    vit = VisionTransformer(ViTConfig.from_mae(ours.config, num_classes=0, global_pool=False)).eval()
    vit.load_state_dict(_read(tmp_path / "timm.safetensors", "timm"), strict=True)
    imgs = vectors()["input.imgs"]
    with torch.no_grad():
        latent, _, _ = ours.forward_encoder(imgs, 0.0, torch.arange(ours.config.num_patches).float().expand(len(imgs), -1))
        assert relative_error(vit(imgs), latent[:, 0]) <= TOL  # the cls token after the final norm


@pytest.mark.parametrize("global_pool", [True, False])
def test_a_classifier_keeps_its_head_in_timm_and_official(tmp_path: Path, global_pool: bool) -> None:
    sd = _classifier_state(global_pool)
    for format in ("timm", "official"):
        report = save_as(sd, tmp_path / format, format, config=small_config())
        back = _read(tmp_path / format, format)
        assert report.kind == "fine-tuned" and report.dropped == [] and sorted(back) == sorted(sd)
        assert all(_same_bits(back[k], sd[k]) for k in sd)


# ---- atomic writes and refusals ----------------------------------------------------------------------------------
@pytest.mark.parametrize("format", FORMATS)
def test_a_failing_write_leaves_nothing(tmp_path: Path, monkeypatch, format: str) -> None:
    import safetensors.torch

    def broken(tensors, filename, *args, **kwargs):  # the signature of both save_file and torch.save
        if hasattr(filename, "write"):  # torch.save is handed the open temporary file
            filename.write(b"half")
        else:
            Path(filename).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    monkeypatch.setattr(torch, "save", broken)
    out = tmp_path / "out" / "model"
    with pytest.raises(OSError):
        save_as(small_model(), out, format)
    assert list((tmp_path / "out").iterdir()) == []


def test_an_interrupt_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    import safetensors.torch

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_as(small_model(), tmp_path / "hf", "hf")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("format", FORMATS)
def test_an_existing_output_is_kept_unless_overwrite(tmp_path: Path, format: str) -> None:
    out = tmp_path / "out"
    save_as(small_model(), out, format)
    marker = out / "marker.txt" if format == "hf" else out
    marker.write_bytes(b"mine")
    with pytest.raises(InvalidArgumentError, match="already exists") as info:
        save_as(small_model(), out, format)
    assert info.value.argument == "overwrite" and marker.read_bytes() == b"mine"
    save_as(small_model(), out, format, overwrite=True)
    assert not (format == "hf" and marker.exists()) and _read(out, format)["cls_token"].shape == (1, 1, 64)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left beside it


def test_a_folder_is_not_replaced_by_a_file(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(InvalidArgumentError, match="is a folder"):
        save_as(small_model(), tmp_path / "out", "safetensors", overwrite=True)


def test_nonfinite_weights_are_refused_unless_allowed(tmp_path: Path) -> None:
    sd = small_state_dict()
    sd["blocks.1.attn.qkv.weight"][0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    with pytest.raises(NonFiniteCheckpointError, match=r"blocks\.1\.attn\.qkv\.weight \(3 of") as info:
        save_as(sd, tmp_path / "out.safetensors", "safetensors", config=small_config())
    assert info.value.argument == "allow_nonfinite" and list(tmp_path.iterdir()) == []
    report = save_as(sd, tmp_path / "out.safetensors", "safetensors", config=small_config(), allow_nonfinite=True)
    assert report.nonfinite == {"blocks.1.attn.qkv.weight": 3}
    assert _same_bits(_read(tmp_path / "out.safetensors", "safetensors")["blocks.1.attn.qkv.weight"],
                      sd["blocks.1.attn.qkv.weight"])


def test_an_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="format must be one of") as info:
        save_as(small_state_dict(), tmp_path / "x", "onnx")  # type: ignore[arg-type]
    assert info.value.argument == "format"
