"""The loading chain (load.py): weights holding NaN or infinity are refused by every loader unless
allow_nonfinite=True, only the loaded tensors are read, each once; the device is checked first."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mae.large import MaskedAutoencoderViT, VisionTransformer, ViTConfig
from mae.large.checkpoints import load
from mae.large.errors import CheckpointError, DeviceError, IncompatibleCheckpointError, NonFiniteCheckpointError
from tests.helpers import (
    HF_FIXTURES,
    encoder_only,
    file_mappings,
    relative_error,
    save_official,
    small_config,
    small_state_dict,
    tiny_config,
)

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


# ---- transformers model folders ------------------------------------------------------------------
TINY_LOADERS: dict[str, Callable[..., torch.nn.Module]] = {
    "MaskedAutoencoderViT.from_pretrained": lambda path, **kw: MaskedAutoencoderViT.from_pretrained(
        path, tiny_config(**kw)),
    "MaskedAutoencoderViT.load_pretrained": lambda path, **kw: _load_tiny(path, **kw),
    "VisionTransformer.from_pretrained": lambda path, **kw: VisionTransformer.from_pretrained(
        path, ViTConfig.from_mae(tiny_config(**kw))),
}


def _load_tiny(path: Path, **overrides) -> MaskedAutoencoderViT:
    model = MaskedAutoencoderViT(tiny_config(**overrides))
    model.load_pretrained(path)
    return model


def _tiny_inputs(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=g), torch.rand(n, 4, generator=g)


@pytest.mark.parametrize("folder", ["tf5/pretraining-safetensors", "tf5/pretraining-sharded"])
def test_a_transformers_5_folder_runs_as_transformers_runs_it(folder: str) -> None:
    transformers = pytest.importorskip("transformers")
    path = HF_FIXTURES / folder
    theirs = transformers.ViTMAEForPreTraining.from_pretrained(path).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a folder that agrees with the model loads without a word
        ours = MaskedAutoencoderViT.from_pretrained(path, tiny_config())
    assert ours.load_report.kind == "full" and ours.load_report.source_format == "huggingface"
    imgs, noise = _tiny_inputs()
    with torch.no_grad():
        loss, pred, mask = ours(imgs, 0.75, noise)
        out = theirs(pixel_values=imgs, noise=noise)
    assert torch.equal(mask, out.mask)
    assert relative_error(pred, out.logits) <= 1e-5 and relative_error(loss, out.loss) <= 1e-5


def test_a_transformers_5_encoder_folder_gives_transformers_features() -> None:
    transformers = pytest.importorskip("transformers")
    path = HF_FIXTURES / "tf5/model-safetensors"
    theirs = transformers.ViTMAEModel.from_pretrained(path).eval()
    with pytest.warns(UserWarning, match="encoder only"):
        ours = MaskedAutoencoderViT.from_pretrained(path, tiny_config())
    imgs, noise = _tiny_inputs()
    with torch.no_grad():
        latent, mask, _ = ours.forward_encoder(imgs, 0.75, noise)
        out = theirs(pixel_values=imgs, noise=noise)
    assert torch.equal(mask, out.mask) and relative_error(latent, out.last_hidden_state) <= 1e-5


@pytest.mark.parametrize("loader", list(TINY_LOADERS))
def test_every_loader_takes_a_folder(loader: str) -> None:
    model = TINY_LOADERS[loader](HF_FIXTURES / "tf4/pretraining-sharded")
    assert model.load_report.num_loaded == (62 if "Masked" in loader else 28)  # a global-pool classifier: no norm


@pytest.mark.parametrize(("field", "value", "attr"), [("hidden_size", 32, "embed_dim"),
                                                      ("decoder_num_hidden_layers", 3, "decoder_depth")])
@pytest.mark.parametrize("loader", list(TINY_LOADERS))
def test_a_folder_whose_config_disagrees_is_refused(tmp_path: Path, loader: str, field: str, value: int,
                                                    attr: str) -> None:
    folder = shutil.copytree(HF_FIXTURES / "tf5/pretraining-safetensors", tmp_path / "edited")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, field: value}))
    if attr == "decoder_depth" and "Vision" in loader:
        TINY_LOADERS[loader](folder)  # a classifier has no decoder to disagree with
        return
    said = rf"config\.json says {field}={value}\S* but the model has {attr}="
    with pytest.raises(IncompatibleCheckpointError, match=said) as info:
        TINY_LOADERS[loader](folder)
    assert "\n" not in str(info.value)


def test_a_folder_loads_at_another_input_size_as_a_file_does() -> None:
    model = MaskedAutoencoderViT.from_pretrained(HF_FIXTURES / "tf4/pretraining-safetensors", tiny_config(img_size=16))
    assert model.pos_embed.shape[1] == (16 // 4) ** 2 + 1 and model.load_report.num_loaded == 62


def test_a_model_built_for_other_sizes_is_refused_by_the_folders_config() -> None:
    with pytest.raises(IncompatibleCheckpointError, match="num_hidden_layers=2 but the model has depth=3"):
        MaskedAutoencoderViT.from_pretrained(HF_FIXTURES / "tf4/pretraining-bin", tiny_config(depth=3))


def test_another_activation_is_refused(tmp_path: Path) -> None:
    folder = shutil.copytree(HF_FIXTURES / "tf4/pretraining-safetensors", tmp_path / "relu")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    with pytest.raises(IncompatibleCheckpointError, match="hidden_act='relu'"):
        MaskedAutoencoderViT.from_pretrained(folder, tiny_config())


@pytest.mark.parametrize("loader", list(TINY_LOADERS))
def test_the_hub_configs_eps_is_named_and_the_models_used(loader: str) -> None:
    with pytest.warns(UserWarning, match=r"layer_norm_eps=1e-12 but the model uses 1e-06.*1e-06 is used"):
        model = TINY_LOADERS[loader](HF_FIXTURES / "hub/models--facebook--vit-mae-large")
    assert model.config.layer_norm_eps == 1e-6
    assert all(m.eps == 1e-6 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    assert any("layer_norm_eps" in w for w in model.load_report.warnings)


@pytest.mark.parametrize(("variance", "low", "high"), [(1.0, 0.0, 1e-6), (1e-4, 2e-3, 1e-2), (1e-6, 0.35, 0.45)])
def test_the_eps_warnings_numbers(variance: float, low: float, high: float) -> None:
    """What the warning says 1e-12 against 1e-6 changes, measured: LayerNorm over 1024-wide tokens."""
    x = torch.randn(256, 1024, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * variance ** 0.5
    official = torch.nn.functional.layer_norm(x, (1024,), eps=1e-6)
    hub = torch.nn.functional.layer_norm(x, (1024,), eps=1e-12)
    assert low <= relative_error(hub, official) <= high


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the memory map from Linux /proc")
@pytest.mark.parametrize("where", ["file", "hub"])
def test_safetensors_are_memory_mapped_not_read(tmp_path: Path, where: str) -> None:
    """Every tensor's bytes lie inside a mapping of the file (a hub snapshot's link: of its blob), and a write
    to a loaded tensor never reaches the file."""
    from safetensors.torch import save_file

    if where == "file":
        path = tmp_path / "small.safetensors"
        save_file(small_state_dict(), path)
        model, file = MaskedAutoencoderViT.from_pretrained(path, small_config()), path
    else:
        path = HF_FIXTURES / "hub/models--facebook--vit-mae-large"
        with pytest.warns(UserWarning, match="layer_norm_eps"):
            model = MaskedAutoencoderViT.from_pretrained(path, tiny_config())
        file = next((path / "snapshots").iterdir()) / "model.safetensors"
    before = file.read_bytes()
    mapped = file_mappings(file)
    assert mapped, f"{file.name} is not memory-mapped"
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("qkv.weight") and not k.endswith("qkv.bias")}
    outside = [k for k, t in sd.items() if not any(a <= t.data_ptr() and t.data_ptr() + t.nbytes <= b for a, b in mapped)]
    assert not outside, f"{len(outside)} of {len(sd)} tensors were copied out of the file: {outside[:3]}"
    with torch.no_grad():
        model.cls_token.add_(1.0)
    assert file.read_bytes() == before


@pytest.mark.parametrize(("edit", "match"), [("shape", "damaged safetensors"),
                                             ("dtype", "type Q32, which this tool does not read")])
def test_a_safetensors_header_that_lies_is_refused(tmp_path: Path, edit: str, match: str) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "lie.safetensors"
    save_file({"cls_token": torch.zeros(1, 1, 64)}, path)
    data = path.read_bytes()
    swap = (b"[1,1,64]", b"[1,1,65]") if edit == "shape" else (b'"F32"', b'"Q32"')
    path.write_bytes(data.replace(*swap))
    with pytest.raises(CheckpointError, match=match):
        load.read(path, trust=False)


def _safetensors_with(tmp_path: Path, entries: dict, data: bytes) -> Path:
    """A file with this header and these data bytes (the header padded with spaces to 8 bytes, as the writer does)."""
    header = json.dumps(entries).encode()
    header += b" " * (-len(header) % 8)
    path = tmp_path / "hand.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)
    return path


@pytest.mark.parametrize(("entries", "size", "match"), [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, 12, "overlap"),  # two tensors sharing bytes
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 16, "do not end where the file does"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0.5, 8.9]}}, 8, "corrupt safetensors header"),
    ({"a": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, 8, "corrupt safetensors header"),
    ({"a": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, 8, "corrupt safetensors header"),
])
def test_a_safetensors_header_outside_the_format_is_refused(tmp_path: Path, entries: dict, size: int,
                                                             match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        load.read(_safetensors_with(tmp_path, entries, bytes(size)), trust=False)


def test_every_safetensors_dtype_reads(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {name: torch.tensor([0, 1, 2]).to(dtype) for name, dtype in
               (("u16", torch.uint16), ("u32", torch.uint32), ("u64", torch.uint64), ("c64", torch.complex64))}
    save_file(tensors, tmp_path / "types.safetensors")
    back = load.read(tmp_path / "types.safetensors", trust=False).state_dict
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in tensors.items())
