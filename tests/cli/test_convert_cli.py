"""`mae-large convert`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.app import app
from mae.large import VisionTransformer, ViTConfig
from mae.large.checkpoints.read import read_checkpoint
from tests.cli.conftest import flat
from tests.helpers import save_official, small_state_dict


@pytest.mark.parametrize("to", ["official", "safetensors", "hf", "timm"])
def test_each_format(runner, small_arch, small_ckpts, tmp_path: Path, to: str) -> None:
    full, _ = small_ckpts
    out = tmp_path / f"out-{to}"
    result = runner.invoke(app, ["convert", str(full), "--to", to, "--out", str(out), "--target", "pixels"])
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "official (torch-zip)" in text and "kind full" in text and f"format {to}" in text
    written = 30 if to == "timm" else 62
    assert f"{written} written, {written} read back equal bit for bit" in text
    assert ("the decoder (32 tensors) has no place in it" in text) == (to == "timm")
    assert ("ViTMAEForPreTraining" in text) == (to == "hf")
    assert read_checkpoint(out / "model.safetensors" if to == "hf" else out).state_dict["cls_token"].shape == (1, 1, 64)


def test_json(runner, small_arch, small_ckpts, tmp_path: Path) -> None:
    _, enc = small_ckpts
    result = runner.invoke(app, ["convert", str(enc), "--to", "hf", "--out", str(tmp_path / "hf"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kind"] == "encoder-only" and data["format"] == "hf" and data["written"] == data["verified"] == 30
    assert data["hf_config"]["architectures"] == ["ViTMAEModel"] and data["path"] == str(tmp_path / "hf")
    assert data["bytes"] == sum(p.stat().st_size for p in (tmp_path / "hf").iterdir())
    assert "ViTMAEModel" in data["notes"][0] and data["source_format"] == "official"


def test_an_existing_output_needs_force(runner, small_arch, small_ckpts, tmp_path: Path) -> None:
    full, _ = small_ckpts
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"mine")
    args = ["convert", str(full), "--to", "safetensors", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "already exists" in result.output and "--force" in result.output
    assert out.read_bytes() == b"mine"
    result = runner.invoke(app, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert len(read_checkpoint(out).state_dict) == 62


def test_a_classifier_to_hf_is_refused_in_one_line(runner, small_arch, tmp_path: Path) -> None:
    vit = VisionTransformer(ViTConfig.from_mae(small_arch, num_classes=3))
    source = save_official(tmp_path / "ft.pth", vit.state_dict())
    result = runner.invoke(app, ["convert", str(source), "--to", "hf", "--out", str(tmp_path / "hf")])
    assert result.exit_code == 1 and "no HuggingFace ViTMAE counterpart" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "hf").exists()
    result = runner.invoke(app, ["convert", str(source), "--to", "timm", "--out", str(tmp_path / "ft.safetensors")])
    assert result.exit_code == 0 and "fine-tuned (3 classes)" in flat(result.output)


def test_nonfinite_weights_need_allow_nonfinite(runner, small_arch, tmp_path: Path) -> None:
    sd = small_state_dict()
    sd["norm.weight"][0] = float("nan")
    source = save_official(tmp_path / "nan.pth", sd)
    args = ["convert", str(source), "--to", "official", "--out", str(tmp_path / "out.pth")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "norm.weight (1 of 64 values)" in flat(result.output)
    assert "--allow-nonfinite" in result.output and not (tmp_path / "out.pth").exists()
    result = runner.invoke(app, [*args, "--allow-nonfinite"])
    assert result.exit_code == 0 and "1 tensors hold NaN or infinite values" in flat(result.output)


def test_an_unknown_format_is_a_usage_error(runner, small_ckpts, tmp_path: Path) -> None:
    full, _ = small_ckpts
    result = runner.invoke(app, ["convert", str(full), "--to", "onnx", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and not (tmp_path / "x").exists()


def test_the_cli_offers_the_librarys_formats() -> None:
    from cli import convert as command
    from mae.large.checkpoints import save

    assert command.FORMATS == save.FORMATS
