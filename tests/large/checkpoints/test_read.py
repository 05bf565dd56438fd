"""Reading, classifying and loading checkpoints: every supported layout, and every bad file refused."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from mae.large import MAEConfig, MaskedAutoencoderViT, VisionTransformer, ViTConfig
from mae.large.checkpoints.classify import classify, key_part
from mae.large.checkpoints.keys import to_huggingface
from mae.large.checkpoints.read import read_checkpoint
from mae.large.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    IncompatibleCheckpointError,
    UnsafeCheckpointError,
)
from mae.large.utils.nonfinite import count_nonfinite, nonfinite_tensors
from tests.helpers import (
    encoder_only,
    file_mappings,
    hf_config,
    relative_error,
    save_official,
    shaped_state_dict,
    small_config,
    vectors,
)
from tests.helpers import small_state_dict as sorted_small_state_dict


def small_state_dict() -> dict[str, torch.Tensor]:
    """The official small model's weights in the official key order (the reference vectors store them sorted,
    as safetensors does): files written from it have the layout of the released checkpoints."""
    sd = sorted_small_state_dict()
    return {k: sd[k] for k in MaskedAutoencoderViT.expected_state(small_config()).shapes}


def assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], *, ordered: bool = True) -> None:
    """Same keys in the same order (callers pass `expected` in the official order), every tensor bit for bit;
    a failure names each differing key and by how much. `ordered=False` only where the order is not promised."""
    assert set(actual) == set(expected), (
        f"missing {sorted(set(expected) - set(actual))[:5]}, unexpected {sorted(set(actual) - set(expected))[:5]}")
    if ordered:
        moved = [(i, a, e) for i, (a, e) in enumerate(zip(actual, expected)) if a != e]
        assert not moved, (f"same keys in another order: position {moved[0][0]} holds {moved[0][1]!r}, "
                           f"the official order has {moved[0][2]!r}")
    differ = {k: (actual[k].double() - v.double()).abs().max().item() for k, v in expected.items()
              if not torch.equal(actual[k], v)}
    assert not differ, f"{len(differ)} tensors differ (key: max abs difference): {differ}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- formats -----------------------------------------------------------------------------------
@pytest.mark.parametrize("container", ["model", "state_dict", "model_state", None])
@pytest.mark.parametrize("legacy", [False, True])
def test_official_containers(tmp_path: Path, container: str | None, legacy: bool) -> None:
    sd = small_state_dict()
    obj = sd if container is None else {container: sd, "epoch": 3}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    data = read_checkpoint(path)
    assert_same(data.state_dict, sd)
    assert data.container == ("torch-legacy" if legacy else "torch-zip")
    assert data.source_format == "official" and data.weights_only
    assert classify(data.state_dict, MaskedAutoencoderViT.expected_state(small_config())).kind == "full"


def test_training_checkpoint_with_args_is_safe_to_read(tmp_path: Path) -> None:
    sd = small_state_dict()
    path = save_official(tmp_path / "checkpoint-799.pth", sd, args=argparse.Namespace(lr=1e-3), epoch=799,
                         optimizer={"state": {}, "param_groups": [{"lr": 0.1}]})
    data = read_checkpoint(path)
    assert_same(data.state_dict, sd)
    assert set(data.extras) == {"args", "epoch", "optimizer"}


def test_safetensors(tmp_path: Path) -> None:
    sd = small_state_dict()
    path = tmp_path / "weights.safetensors"
    save_file(sd, path)
    data = read_checkpoint(path)
    assert data.container == "safetensors"
    assert_same(data.state_dict, sd, ordered=False)  # safetensors stores its keys sorted: no order to keep


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_removed(tmp_path: Path, prefix: str) -> None:
    sd = small_state_dict()
    path = save_official(tmp_path / "ddp.pth", {prefix + k: v for k, v in sd.items()})
    data = read_checkpoint(path)
    assert_same(data.state_dict, sd)
    assert any("prefix" in fix for fix in data.fixes)


@pytest.mark.parametrize("new_names", [True, False])
def test_huggingface_layouts(tmp_path: Path, new_names: bool) -> None:
    sd = small_state_dict()
    path = tmp_path / "model.safetensors"
    save_file(to_huggingface(sd, new_names=new_names), path)
    data = read_checkpoint(path)
    assert data.source_format == "huggingface"
    # Not ordered: the conversion lists the fused qkv tensors after all other keys (see the report).
    assert_same(data.state_dict, sd, ordered=False)


def test_huggingface_encoder_model_is_encoder_only(tmp_path: Path) -> None:
    """A ViTMAEModel state dict (no `vit.` prefix, no decoder) reads as the encoder."""
    hf = {k[len("vit."):]: v for k, v in to_huggingface(small_state_dict()).items() if k.startswith("vit.")}
    path = save_official(tmp_path / "vitmae.pth", hf)
    data = read_checkpoint(path)
    assert_same(data.state_dict, encoder_only(small_state_dict()), ordered=False)  # converted: qkv keys come last
    assert classify(data.state_dict, MaskedAutoencoderViT.expected_state(small_config())).kind == "encoder-only"


def test_timm_classifier_keys_are_reported_and_dropped(tmp_path: Path) -> None:
    enc = encoder_only(small_state_dict())
    extra = {"head.weight": torch.zeros(10, 64), "head.bias": torch.zeros(10),
             "fc_norm.weight": torch.ones(64), "fc_norm.bias": torch.zeros(64)}
    path = save_official(tmp_path / "timm.pth", {**enc, **extra})
    data = read_checkpoint(path)
    assert data.source_format == "timm"
    assert sorted(data.dropped) == sorted(extra)
    assert all(torch.equal(data.classifier[k], v) for k, v in extra.items())  # kept for head="file"
    assert_same(data.state_dict, enc)
    with pytest.warns(UserWarning, match="encoder only"):  # timm files hold no decoder
        model = MaskedAutoencoderViT.from_pretrained(path, small_config())
    assert sorted(model.load_report.ignored) == sorted(extra)


def test_unknown_huggingface_key_is_named(tmp_path: Path) -> None:
    hf = to_huggingface(small_state_dict())
    hf["vit.layers.0.attention.rotary.weight"] = torch.zeros(3)
    path = save_official(tmp_path / "odd.pth", hf)
    with pytest.raises(IncompatibleCheckpointError, match="vit.layers.0.attention.rotary.weight"):
        read_checkpoint(path)


# ---- HuggingFace round trip -------------------------------------------------------------------
def test_transformers_model_saved_as_safetensors_runs_the_same(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = small_config()
    hf = transformers.ViTMAEForPreTraining(hf_config(config)).eval()
    path = tmp_path / "hf.safetensors"
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, path)
    ours = MaskedAutoencoderViT.from_pretrained(path, config)
    assert ours.load_report.kind == "full" and ours.load_report.source_format == "huggingface"
    v = vectors()
    with torch.no_grad():
        loss, pred, mask = ours(v["input.imgs"], 0.75, v["input.noise"])
        out = hf(pixel_values=v["input.imgs"], noise=v["input.noise"])
    assert torch.equal(mask, out.mask)
    assert relative_error(pred, out.logits) <= 1e-5
    assert relative_error(loss, out.loss) <= 1e-5


# ---- full ViT-Large files (the vit_l_files fixture is in conftest.py) ------------------------
@pytest.mark.slow
def test_vit_large_full(vit_l_files) -> None:
    full, _, sd = vit_l_files
    before = sha256(full)
    model = MaskedAutoencoderViT.from_pretrained(full)
    r = model.load_report
    assert (r.kind, r.num_loaded, r.num_expected, r.missing, r.unexpected) == ("full", 398, 398, [], [])
    assert r.num_parameters == 329_541_888 and r.source_format == "official" and r.weights_only
    assert_same(model.state_dict(), sd)
    assert not model.training
    assert not model.pos_embed.requires_grad and model.cls_token.requires_grad
    # The weights are memory-mapped copy-on-write: changing them in place never touches the file.
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.add_(1.0)
    assert sha256(full) == before


@pytest.mark.slow
def test_vit_large_encoder_only(vit_l_files, caplog) -> None:
    _, enc, sd = vit_l_files
    before = sha256(enc)
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match="decoder is randomly initialised") as rec:
        model = MaskedAutoencoderViT.from_pretrained(enc)
    assert "mae_visualize_vit_large.pth" in str(rec[0].message)
    assert any("encoder only" in m for m in caplog.messages)
    r = model.load_report
    assert (r.kind, r.num_loaded, len(r.missing)) == ("encoder-only", 294, 104) and r.decoder_random
    assert all(key_part(k) == "decoder" for k in r.missing)
    loaded = model.state_dict()
    assert sha256(enc) == before  # the memory-mapped file is never written
    assert_same({k: loaded[k] for k in encoder_only(sd)}, encoder_only(sd))
    # The decoder is real memory with the official init: finite, xavier-sized, not the file's values.
    for key in r.missing:
        assert not loaded[key].is_meta and torch.isfinite(loaded[key]).all(), key
    assert torch.equal(model.decoder_norm.weight, torch.ones(512))
    assert 0.01 < model.mask_token.std().item() < 0.03
    assert model.decoder_pos_embed.abs().sum() > 0  # the sin-cos table, not zeros
    with torch.no_grad():
        loss, _, _ = model(torch.randn(1, 3, 224, 224))
    assert torch.isfinite(loss)


@pytest.mark.slow
def test_load_pretrained_into_existing_model(vit_l_files) -> None:
    full, enc, sd = vit_l_files
    model = MaskedAutoencoderViT(MAEConfig.vit_large())
    decoder_before = model.decoder_pred.weight.clone()
    with pytest.warns(UserWarning, match="encoder only"):
        report = model.load_pretrained(enc)
    assert report.kind == "encoder-only" and model.load_report is report
    assert torch.equal(model.decoder_pred.weight, decoder_before)  # the decoder keeps its init
    assert torch.equal(model.blocks[3].mlp.fc1.weight, sd["blocks.3.mlp.fc1.weight"])
    report = model.load_pretrained(full)
    assert report.kind == "full" and report.num_loaded == 398
    assert_same(model.state_dict(), sd)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the memory map from Linux /proc")
def test_from_pretrained_memory_maps_a_zip_checkpoint(tmp_path: Path) -> None:
    """The weights are the file's pages (mmap), not a copy: every tensor's bytes lie inside a mapping of the file."""
    path = save_official(tmp_path / "small.pth", small_state_dict())
    model = MaskedAutoencoderViT.from_pretrained(path, small_config())
    mapped = file_mappings(path)
    assert mapped, f"{path.name} is not memory-mapped"
    sd = model.state_dict()
    outside = [k for k, t in sd.items()
               if not any(a <= t.data_ptr() and t.data_ptr() + t.nbytes <= b for a, b in mapped)]
    assert not outside, f"{len(outside)} of {len(sd)} tensors were copied out of the file: {outside[:3]}"
    assert_same(sd, small_state_dict())


# ---- bad files --------------------------------------------------------------------------------
def _truncated(tmp_path: Path) -> Path:
    path = save_official(tmp_path / "cut.pth", small_state_dict())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _zip_without_data(tmp_path: Path) -> Path:
    src = save_official(tmp_path / "src.pth", small_state_dict())
    path = tmp_path / "nodata.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for item in zin.infolist():
            if "/data/0" not in item.filename:  # drop the first tensor's storage record
                zout.writestr(item, zin.read(item.filename))
    return path


def _lying_safetensors(tmp_path: Path) -> Path:
    path = tmp_path / "liar.safetensors"
    save_file(small_state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[:-1000])  # the header still promises the full length
    return path


def _vit_base(tmp_path: Path) -> Path:
    return save_official(tmp_path / "mae_visualize_vit_base.pth", shaped_state_dict(MAEConfig.vit_base()))


def _vit_huge(tmp_path: Path) -> Path:
    sd = {k: v for k, v in shaped_state_dict(MAEConfig.vit_huge()).items() if key_part(k) == "encoder"}
    return save_official(tmp_path / "mae_pretrain_vit_huge.pth", sd)


def _wrong_shape(tmp_path: Path) -> Path:
    sd = shaped_state_dict(MAEConfig.vit_large())
    sd["blocks.5.mlp.fc1.weight"] = torch.zeros(1).expand(4000, 1024)
    return save_official(tmp_path / "wrong_shape.pth", sd)


def _extra_key(tmp_path: Path) -> Path:
    sd = shaped_state_dict(MAEConfig.vit_large())
    sd["blocks.0.attn.rel_pos_bias"] = torch.zeros(3)
    return save_official(tmp_path / "extra.pth", sd)


def _partial_decoder(tmp_path: Path) -> Path:
    sd = shaped_state_dict(MAEConfig.vit_large())
    del sd["decoder_pred.weight"]
    return save_official(tmp_path / "partial.pth", sd)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD_FILES = {
    "missing": (lambda p: p / "nope.pth", CheckpointNotFoundError, "does not exist"),
    "folder without weights": (lambda p: p, CheckpointError, "is a folder without model weights"),
    "zero bytes": (lambda p: _write(p / "empty.pth", b""), CheckpointError, "empty"),
    "random bytes": (lambda p: _write(p / "r.pth", b"\x13" + os.urandom(4096)), CheckpointError, "not a PyTorch"),
    "truncated": (_truncated, CheckpointError, "truncated or corrupt"),
    "zip without data record": (_zip_without_data, CheckpointError, "truncated or corrupt"),
    "lying safetensors": (_lying_safetensors, CheckpointError, "truncated"),
    "vit-base": (_vit_base, IncompatibleCheckpointError, "looks like an MAE ViT-Base"),
    "vit-huge": (_vit_huge, IncompatibleCheckpointError, "looks like an MAE ViT-Huge"),
    "wrong shape": (_wrong_shape, IncompatibleCheckpointError, r"blocks.5.mlp.fc1.weight: expected \[4096, 1024\]"),
    "extra key": (_extra_key, IncompatibleCheckpointError, "unexpected keys \\(blocks.0.attn.rel_pos_bias"),
    "partial decoder": (_partial_decoder, IncompatibleCheckpointError, "decoder_pred.weight"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_are_refused_and_left_alone(tmp_path: Path, case: str) -> None:
    make, error, match = BAD_FILES[case]
    path = make(tmp_path)
    before = sha256(path) if path.is_file() else None
    with pytest.raises(error, match=match) as info:
        MaskedAutoencoderViT.from_pretrained(path)
    assert str(path.name) in str(info.value) or str(path) in str(info.value)
    assert "\n" not in str(info.value)
    if before is not None:
        assert sha256(path) == before


def test_incompatible_load_changes_nothing(tmp_path: Path) -> None:
    """A refused load_pretrained leaves every weight of the model as it was (no partial load)."""
    model = MaskedAutoencoderViT(small_config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = small_state_dict()
    sd["decoder_pred.bias"] = torch.zeros(5)
    path = save_official(tmp_path / "bad.pth", sd)
    with pytest.raises(IncompatibleCheckpointError, match="decoder_pred.bias"):
        model.load_pretrained(path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


class _RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CreatesFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("payload", [_RunsCommand, _CreatesFile])
@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pickle_does_not_run(tmp_path: Path, payload: type, legacy: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": small_state_dict(), "extra": payload(marker)}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpointError, match="trust") as info:
        read_checkpoint(path)
    assert not marker.exists()
    expected_global = "system" if payload is _RunsCommand else "open"
    assert expected_global in str(info.value)


def _cli(args: list[str], monkeypatch):
    """Run the CLI in process; `features` builds the tiny classifier instead of ViT-L."""
    from typer.testing import CliRunner

    from cli.app import app
    from tests.helpers import use_small_architecture

    use_small_architecture(monkeypatch)
    return CliRunner().invoke(app, args)


def _cli_features(path: Path, tmp_path: Path, monkeypatch):
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(images / "a.png")
    out = tmp_path / "f.safetensors"
    return _cli(["features", str(images), "-c", str(path), "-o", str(out), "--size", "32", "--device", "cpu"],
                monkeypatch)


LOADERS = {
    "MaskedAutoencoderViT.from_pretrained": lambda path, tmp, mp: MaskedAutoencoderViT.from_pretrained(
        path, small_config()),
    "load_pretrained": lambda path, tmp, mp: MaskedAutoencoderViT(small_config()).load_pretrained(path),
    "VisionTransformer.from_pretrained": lambda path, tmp, mp: VisionTransformer.from_pretrained(
        path, ViTConfig.from_mae(small_config())),
    "cli features": _cli_features,
    "cli inspect": lambda path, tmp, mp: _cli(["inspect", str(path)], mp),
}


@pytest.mark.parametrize("payload", [_RunsCommand, _CreatesFile])
@pytest.mark.parametrize("loader", list(LOADERS))
def test_every_loader_refuses_a_malicious_pickle(tmp_path: Path, monkeypatch, loader: str, payload: type) -> None:
    """No entry point reads a pickle with weights_only=False unless asked: the payload never runs."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": small_state_dict(), "extra": payload(marker)}, path)
    before = sha256(path)
    expected_global = "system" if payload is _RunsCommand else "open"
    if loader.startswith("cli"):
        result = LOADERS[loader](path, tmp_path, monkeypatch)
        assert not marker.exists(), f"{loader} ran the pickle's payload"
        assert result.exit_code == 1, result.output
        assert "--trust-checkpoint" in result.stderr and expected_global in result.stderr, result.stderr
        assert not (tmp_path / "f.safetensors").exists()
    else:
        with pytest.raises(UnsafeCheckpointError, match="trust") as info:
            LOADERS[loader](path, tmp_path, monkeypatch)
        assert expected_global in str(info.value)
    assert not marker.exists(), f"{loader} ran the pickle's payload"
    assert sha256(path) == before


def test_trust_opt_in_reads_a_file_with_objects(tmp_path: Path) -> None:
    path = tmp_path / "obj.pth"
    torch.save({"model": small_state_dict(), "saved": datetime.date(2021, 11, 11)}, path)  # not a weights-only type
    with pytest.raises(UnsafeCheckpointError, match="datetime.date"):
        read_checkpoint(path)
    data = read_checkpoint(path, trust=True)
    assert not data.weights_only and len(data.state_dict) == 62


def test_strict_false_allows_missing_but_never_mismatched(tmp_path: Path) -> None:
    sd = small_state_dict()
    del sd["decoder_pred.bias"]
    path = save_official(tmp_path / "partial.pth", sd)
    model = MaskedAutoencoderViT(small_config())
    with pytest.warns(UserWarning, match="strict=False"):
        report = model.load_pretrained(path, strict=False)
    assert report.kind == "partial" and report.missing == ["decoder_pred.bias"]
    sd["decoder_pred.bias"] = torch.zeros(7)
    save_official(path, sd)
    with pytest.raises(IncompatibleCheckpointError):
        model.load_pretrained(path, strict=False)


def test_fixed_tables_are_regenerated_for_another_grid(tmp_path: Path) -> None:
    """A 32x32 checkpoint loads into a 48x32 model: the sin-cos tables are recomputed, exactly."""
    path = save_official(tmp_path / "small.pth", small_state_dict())
    config = small_config(img_size=(48, 32))
    model = MaskedAutoencoderViT.from_pretrained(path, config)
    reference = MaskedAutoencoderViT(config)
    assert torch.equal(model.pos_embed, reference.pos_embed)
    assert any("regenerated" in fix for fix in model.load_report.fixes)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 48, 32)).loss)


def test_encoder_only_load_keeps_the_files_tables_and_fills_the_decoders(tmp_path: Path) -> None:
    """Only what the file lacks is generated: a loaded (even unusual) pos_embed is kept as the file has it,
    the missing decoder table is the sin-cos one."""
    sd = encoder_only(small_state_dict())
    sd["pos_embed"] = sd["pos_embed"] + 0.5  # e.g. a file whose table was trained
    path = save_official(tmp_path / "enc.pth", sd)
    with pytest.warns(UserWarning, match="encoder only"):
        model = MaskedAutoencoderViT.from_pretrained(path, small_config())
    assert torch.equal(model.pos_embed, sd["pos_embed"]) and not model.pos_embed.requires_grad
    assert torch.equal(model.decoder_pos_embed, MaskedAutoencoderViT(small_config()).decoder_pos_embed)
    assert not model.decoder_pos_embed.requires_grad


def test_half_precision_files_are_cast(tmp_path: Path) -> None:
    sd = {k: v.half() for k, v in small_state_dict().items()}
    path = save_official(tmp_path / "fp16.pth", sd)
    model = MaskedAutoencoderViT.from_pretrained(path, small_config())
    assert model.blocks[0].attn.qkv.weight.dtype == torch.float32
    assert any("float16" in fix for fix in model.load_report.fixes)


def test_integer_tensors_are_incompatible(tmp_path: Path) -> None:
    sd = {k: v.to(torch.int32) for k, v in small_state_dict().items()}
    path = save_official(tmp_path / "ints.pth", sd)
    result = classify(read_checkpoint(path).state_dict, MaskedAutoencoderViT.expected_state(small_config()))
    assert result.kind == "incompatible" and len(result.not_float) == 62
    with pytest.raises(IncompatibleCheckpointError, match="not floating point"):
        MaskedAutoencoderViT.from_pretrained(path, small_config())


@pytest.mark.parametrize(
    ("state", "error", "match"),
    [
        ({0: torch.zeros(1)}, CheckpointError, "non-text key"),
        ({"module.a": torch.zeros(1), "a": torch.zeros(1)}, IncompatibleCheckpointError, "appears twice"),
    ],
)
def test_malformed_state_dicts(tmp_path: Path, state, error, match) -> None:
    path = tmp_path / "odd.pth"
    torch.save({"model": state}, path)
    with pytest.raises(error, match=match):
        read_checkpoint(path)


def test_huggingface_qkv_of_different_sizes(tmp_path: Path) -> None:
    hf = to_huggingface(small_state_dict())
    hf["vit.layers.0.attention.k_proj.weight"] = torch.zeros(64, 32)  # q, k, v cannot be stacked
    path = save_official(tmp_path / "hf.pth", hf)
    with pytest.raises(IncompatibleCheckpointError, match="not a ViTMAE checkpoint"):
        read_checkpoint(path)


def test_cast_is_reported_once_per_dtype(tmp_path: Path) -> None:
    path = save_official(tmp_path / "bf16.pth", {k: v.bfloat16() for k, v in small_state_dict().items()})
    model = MaskedAutoencoderViT.from_pretrained(path, small_config())
    casts = [f for f in model.load_report.fixes if f.startswith("cast")]
    assert casts == ["cast 62 tensors from bfloat16 to float32"]


def test_a_damaged_pickle_is_called_damaged_not_unsafe(tmp_path: Path) -> None:
    import zipfile

    good = save_official(tmp_path / "good.pth", small_state_dict())
    bad = tmp_path / "bad.pth"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            dst.writestr(item, b"\x80\x02garbage, not a pickle" if item.filename.endswith("data.pkl") else data)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(bad)
    assert not isinstance(info.value, UnsafeCheckpointError)
    message = str(info.value)
    assert "truncated or corrupt" in message and "trust" not in message and "weights_only" not in message


# ---- values ------------------------------------------------------------------------------------
INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize(
    ("values", "dtype", "count"),
    [
        ([1.0, NAN, 2.0], torch.float32, 1),
        ([INF, 1.0], torch.float32, 1),
        ([-INF, 1.0], torch.float32, 1),
        ([INF, -INF, 1.0], torch.float32, 2),  # the sum is NaN, not finite: still caught
        ([NAN, INF, -INF, NAN], torch.float32, 4),
        ([3e38, 3e38, 3e38, -1.0], torch.float32, 0),  # the sum overflows: a false alarm the count clears
        ([60000.0, 60000.0], torch.float16, 0),  # float16 sums overflow early
        ([1.0, NAN], torch.bfloat16, 1),
        ([1.0, NAN], torch.float64, 1),
        ([1.0, 2.0], torch.float32, 0),
    ],
)
def test_count_nonfinite_is_exact_whatever_the_sum_does(values: list[float], dtype: torch.dtype, count: int) -> None:
    tensor = torch.tensor(values, dtype=dtype)
    assert count_nonfinite(tensor) == count
    assert count_nonfinite(tensor.reshape(len(values), 1).expand(-1, 3)) == 3 * count  # strided views too


@pytest.mark.parametrize(("values", "dtype"), [([3e38, 3e38, 3e38, -1.0], torch.float32), ([6e4, 6e4], torch.float16)])
def test_an_overflowing_sum_is_confirmed_value_by_value(values: list[float], dtype: torch.dtype) -> None:
    tensor = torch.tensor(values, dtype=dtype)
    assert not torch.isfinite(tensor.sum())  # the fast check fires ...
    assert count_nonfinite(tensor) == 0  # ... and the count clears it


def test_count_nonfinite_skips_what_cannot_hold_nan() -> None:
    assert count_nonfinite(torch.arange(5)) == 0
    assert count_nonfinite(torch.empty(0)) == 0
    assert count_nonfinite(torch.empty(3, device="meta")) == 0


def test_nonfinite_tensors_lists_only_the_damaged_in_order() -> None:
    state = {"a": torch.zeros(4), "b": torch.tensor([NAN, 1.0, INF]), "c": torch.ones(2), "d": torch.tensor([-INF])}
    assert list(nonfinite_tensors(state).items()) == [("b", 2), ("d", 1)]


# ---- a fine-tuned classifier is a kind of its own ---------------------------------------------------------
def _fine_tuned_sd(num_classes: int = 7) -> dict[str, torch.Tensor]:
    """A global-pool fine-tuned classifier of the small configuration (official models_vit: no norm, fc_norm + head)."""
    torch.manual_seed(3)
    vit = VisionTransformer(ViTConfig.from_mae(small_config(), num_classes=num_classes))
    return {k: v.clone() for k, v in vit.state_dict().items()}


def test_a_global_pool_fine_tuned_file_is_classified_fine_tuned(tmp_path: Path) -> None:
    sd = _fine_tuned_sd()
    assert "norm.weight" not in sd and "fc_norm.weight" in sd
    data = read_checkpoint(save_official(tmp_path / "ft.pth", sd))
    expected = MaskedAutoencoderViT.expected_state(small_config())
    result = classify(data.state_dict, expected, data.classifier)
    assert (result.kind, result.num_tensors, result.num_classes, result.pooling) == ("fine-tuned", len(sd), 7, "mean")
    assert result.loadable and result.hint is None
    # Without the classifier tensors (the old call) it is what it always was: an encoder lacking its norm.
    assert classify(data.state_dict, expected).kind == "incompatible"
    # The masked autoencoder cannot use it, and says what can.
    with pytest.raises(IncompatibleCheckpointError, match=r"fine-tuned classifier \(7 classes.*head='file'"):
        MaskedAutoencoderViT.from_pretrained(tmp_path / "ft.pth", small_config())
    # The classifier loads it with its own head, and its report says what the file is.
    vit = VisionTransformer.from_pretrained(tmp_path / "ft.pth", ViTConfig.from_mae(small_config(), num_classes=7),
                                            head="file")
    assert vit.load_report.kind == "fine-tuned" and torch.equal(vit.fc_norm.weight, sd["fc_norm.weight"])


@pytest.mark.parametrize("edit", ["keep-norm", "narrow-fc-norm", "no-head"])
def test_near_misses_are_not_fine_tuned(tmp_path: Path, edit: str) -> None:
    sd = _fine_tuned_sd()
    if edit == "keep-norm":  # timm-style: norm kept beside fc_norm: the encoder is complete
        sd |= {"norm.weight": torch.ones(64), "norm.bias": torch.zeros(64)}
    elif edit == "narrow-fc-norm":
        sd["fc_norm.weight"] = torch.ones(32)
    else:
        del sd["head.weight"], sd["head.bias"]
    data = read_checkpoint(save_official(tmp_path / "x.pth", sd))
    kind = classify(data.state_dict, MaskedAutoencoderViT.expected_state(small_config()), data.classifier).kind
    assert kind == ("encoder-only" if edit == "keep-norm" else "incompatible")


def test_a_folder_whose_index_lists_no_file_is_damaged(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    with pytest.raises(CheckpointError, match="its index lists no weight file; the folder is damaged"):
        read_checkpoint(tmp_path)
