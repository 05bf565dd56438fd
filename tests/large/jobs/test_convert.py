"""The convert job (`export.convert_checkpoint`): any layout in, read back bit for bit, the source untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mae.large import MaskedAutoencoderViT, VisionTransformer, ViTConfig
from mae.large.checkpoints.containers import HF_CONFIG
from mae.large.checkpoints.keys import to_huggingface
from mae.large.checkpoints.save import FORMATS
from mae.large.errors import IncompatibleCheckpointError, InvalidArgumentError
from mae.large.jobs.convert import convert_checkpoint
from tests.helpers import encoder_only, save_official, small_state_dict, use_small_architecture


@pytest.fixture
def small(monkeypatch):
    return use_small_architecture(monkeypatch)


def test_every_format_leaves_the_source_as_it_was(small, tmp_path: Path) -> None:
    source = save_official(tmp_path / "src.pth", small_state_dict())
    before = (source.read_bytes(), source.stat().st_mtime_ns)
    for format in FORMATS:
        report = convert_checkpoint(source, tmp_path / f"out-{format}", format, target="pixels")
        assert report.kind == "full" and report.source_format == "official" and report.verified == report.saved.written
    assert (source.read_bytes(), source.stat().st_mtime_ns) == before


def test_a_huggingface_file_converts_to_the_official_names(small, tmp_path: Path) -> None:
    sd = small_state_dict()  # in the file's (sorted) order, not the official one
    source = tmp_path / "model.safetensors"
    save_file(to_huggingface(sd), str(source))
    report = convert_checkpoint(source, tmp_path / "out.pth", "official")
    back = torch.load(tmp_path / "out.pth", weights_only=True)["model"]
    assert report.source_format == "huggingface" and any("HuggingFace" in fix for fix in report.fixes)
    assert list(back) == list(MaskedAutoencoderViT(small).state_dict()) and all(torch.equal(back[k], sd[k]) for k in sd)


@pytest.mark.parametrize("inside", [False, True])
def test_the_output_is_never_the_source_nor_holds_it(small, tmp_path: Path, inside: bool) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    source = save_official(folder / "src.pth", small_state_dict())
    out = folder if inside else source
    with pytest.raises(InvalidArgumentError, match="is the input|contains the input") as info:
        convert_checkpoint(source, out, "hf" if inside else "official", overwrite=True)
    assert info.value.argument == "out" and [p.name for p in folder.iterdir()] == ["src.pth"]


def test_no_output_goes_inside_a_source_folder(small, tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    convert_checkpoint(save_official(tmp_path / "src.pth", small_state_dict()), folder, "hf", target="pixels")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for name in ("model.safetensors", "extra.safetensors"):  # its own weights, or a new file beside them
        with pytest.raises(InvalidArgumentError, match="inside the input folder|is the input") as info:
            convert_checkpoint(folder, folder / name, "safetensors", overwrite=True)
        assert info.value.argument == "out"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_the_catalogue_or_the_request_decides_norm_pix_loss(small, tmp_path: Path) -> None:
    source = save_official(tmp_path / "mae_pretrain_vit_large_full.pth", small_state_dict())
    report = convert_checkpoint(source, tmp_path / "hf", "hf")
    assert report.target is not None and report.target.norm_pix and "catalogue" in report.target.how
    assert json.loads((tmp_path / "hf" / HF_CONFIG).read_text())["norm_pix_loss"] is True
    report = convert_checkpoint(source, tmp_path / "hf", "hf", target="pixels", overwrite=True)
    assert json.loads((tmp_path / "hf" / HF_CONFIG).read_text())["norm_pix_loss"] is False
    assert report.target is not None and report.target.how == "asked for"


def test_an_unknown_full_file_has_its_target_measured(small, tmp_path: Path) -> None:
    source = save_official(tmp_path / "mine.pth", small_state_dict())
    report = convert_checkpoint(source, tmp_path / "hf", "hf")
    assert report.target is not None and report.target.how.startswith(("detected", "neither"))


def test_an_encoder_only_file_becomes_an_encoder(small, tmp_path: Path) -> None:
    source = save_official(tmp_path / "enc.pth", encoder_only(small_state_dict()))
    report = convert_checkpoint(source, tmp_path / "hf", "hf")
    assert report.kind == "encoder-only" and report.target is None and "ViTMAEModel" in report.saved.notes[0]


def test_a_fine_tuned_classifier_keeps_its_head_but_has_no_hf_folder(small, tmp_path: Path) -> None:
    vit = VisionTransformer(ViTConfig.from_mae(small, num_classes=7))
    source = save_official(tmp_path / "ft.pth", vit.state_dict())
    report = convert_checkpoint(source, tmp_path / "ft.safetensors", "timm")
    assert report.kind == "fine-tuned" and report.num_classes == 7 and report.saved.dropped == []
    assert report.verified == len(vit.state_dict())
    with pytest.raises(InvalidArgumentError, match="no HuggingFace ViTMAE counterpart"):
        convert_checkpoint(source, tmp_path / "hf", "hf")
    assert not (tmp_path / "hf").exists()


def test_a_file_that_does_not_fit_is_refused(small, tmp_path: Path) -> None:
    sd = small_state_dict()
    del sd["decoder_pred.bias"]  # a damaged decoder
    source = save_official(tmp_path / "bad.pth", sd)
    with pytest.raises(IncompatibleCheckpointError, match="nothing was written"):
        convert_checkpoint(source, tmp_path / "out.pth", "official")
    assert [p.name for p in tmp_path.iterdir()] == ["bad.pth"]
