"""The loading chain (load.py): weights holding NaN or infinity are refused by every loader unless
allow_nonfinite=True, only the loaded tensors are read, each once; the device is checked first."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mae.large import MaskedAutoencoderViT, VisionTransformer, ViTConfig, load
from mae.large.errors import CheckpointError, DeviceError, NonFiniteCheckpointError
from tests.helpers import encoder_only, save_official, small_config, small_state_dict

NAN_KEY, INF_KEY = "blocks.0.attn.qkv.weight", "patch_embed.proj.bias"  # both loaded by every model


def damaged_file(folder: Path) -> Path:
    """The small model's weights with 3 NaN in one tensor and +Inf, -Inf in another."""
    sd = small_state_dict()
    sd[NAN_KEY][0, :3] = float("nan")
    sd[INF_KEY][1] = float("inf")
    sd[INF_KEY][2] = float("-inf")
    return save_official(folder / "damaged.pth", sd)


def _load_pretrained(path: Path, **kwargs) -> MaskedAutoencoderViT:
    model = MaskedAutoencoderViT(small_config())
    model.load_pretrained(path, **kwargs)
    return model


LOADERS: dict[str, Callable[..., torch.nn.Module]] = {
    "MaskedAutoencoderViT.from_pretrained": lambda path, **kw: MaskedAutoencoderViT.from_pretrained(
        path, small_config(), **kw),
    "MaskedAutoencoderViT.load_pretrained": _load_pretrained,
    "VisionTransformer.from_pretrained": lambda path, **kw: VisionTransformer.from_pretrained(
        path, ViTConfig.from_mae(small_config()), **kw),
}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_every_loader_refuses_nonfinite_weights_naming_them(tmp_path: Path, loader: str) -> None:
    path = damaged_file(tmp_path)
    with pytest.raises(NonFiniteCheckpointError) as info:
        LOADERS[loader](path)
    message = str(info.value)
    assert isinstance(info.value, CheckpointError) and info.value.argument == "allow_nonfinite"
    assert f"{NAN_KEY} (3 of 12288 values)" in message and f"{INF_KEY} (2 of 64 values)" in message, message
    assert "in 2 of the tensors" in message and "allow_nonfinite=True" in message and str(path) in message
    assert "\n" not in message


@pytest.mark.parametrize("loader", list(LOADERS))
def test_allow_nonfinite_loads_and_the_report_names_them(tmp_path: Path, loader: str) -> None:
    path = damaged_file(tmp_path)
    with pytest.warns(UserWarning, match="allow_nonfinite=True") as caught:
        model = LOADERS[loader](path, allow_nonfinite=True)
    report = model.load_report
    assert report is not None and report.nonfinite == {NAN_KEY: 3, INF_KEY: 2}
    [warning] = [w for w in report.warnings if "NaN" in w]
    assert NAN_KEY in warning and INF_KEY in warning and "2 tensors" in warning
    assert any(NAN_KEY in str(w.message) for w in caught)
    assert int(torch.isnan(model.blocks[0].attn.qkv.weight).sum()) == 3
    assert int(torch.isinf(model.patch_embed.proj.bias).sum()) == 2


def test_a_refused_load_pretrained_changes_nothing(tmp_path: Path) -> None:
    model = MaskedAutoencoderViT(small_config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteCheckpointError):
        model.load_pretrained(damaged_file(tmp_path))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert model.load_report is None


def test_a_finite_file_loads_without_a_word_about_values(tmp_path: Path) -> None:
    path = save_official(tmp_path / "fine.pth", small_state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        model = MaskedAutoencoderViT.from_pretrained(path, small_config())
    assert model.load_report.nonfinite == {} and model.load_report.warnings == []


def test_only_the_tensors_a_model_loads_are_scanned(tmp_path: Path) -> None:
    """A NaN in the decoder stops the masked autoencoder, not the classifier, which does not load it."""
    sd = small_state_dict()
    sd["decoder_pred.weight"][4, 4] = float("nan")
    path = save_official(tmp_path / "bad_decoder.pth", sd)
    with pytest.raises(NonFiniteCheckpointError, match=r"decoder_pred.weight \(1 of"):
        MaskedAutoencoderViT.from_pretrained(path, small_config())
    vit = VisionTransformer.from_pretrained(path, ViTConfig.from_mae(small_config()))
    assert vit.load_report.nonfinite == {}
    assert not any("NaN" in w for w in vit.load_report.warnings)


@pytest.mark.parametrize("loader", list(LOADERS))
def test_the_scan_reads_each_loaded_tensor_once(tmp_path: Path, monkeypatch, loader: str) -> None:
    calls: list[list[str]] = []
    original = load.nonfinite_tensors

    def recording(state):
        calls.append(list(state))
        return original(state)

    monkeypatch.setattr(load, "nonfinite_tensors", recording)
    path = save_official(tmp_path / "enc.pth", encoder_only(small_state_dict()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the random decoder
        model = LOADERS[loader](path)
    assert len(calls) == 1, calls
    loaded = set(model.state_dict()) - set(model.load_report.missing)
    assert set(calls[0]) == loaded and len(calls[0]) == model.load_report.num_loaded


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("loader", ["MaskedAutoencoderViT.from_pretrained", "VisionTransformer.from_pretrained"])
def test_cuda_without_cuda_is_a_device_error_before_the_file_is_read(tmp_path: Path, loader: str) -> None:
    with pytest.raises(DeviceError, match="no CUDA device is available") as info:
        LOADERS[loader](tmp_path / "does_not_exist.pth", device="cuda")
    assert info.value.argument == "device" and isinstance(info.value, ValueError)


def test_a_torch_device_is_accepted(tmp_path: Path) -> None:
    path = save_official(tmp_path / "fine.pth", small_state_dict())
    model = MaskedAutoencoderViT.from_pretrained(path, small_config(), device=torch.device("cpu"))
    assert model.pos_embed.device.type == "cpu"
