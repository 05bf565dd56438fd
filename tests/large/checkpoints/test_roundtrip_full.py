"""Every output format at full ViT-L size: converted, loaded back by its own ecosystem's loader, one forward each
with the same noise, outputs equal to the source model's.

One random official-format source file is shared by the module, with the source model's outputs computed once;
each test writes one format, checks it, and deletes it (batch 1, one model in memory at a time).
"""

from __future__ import annotations

import gc
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from mae.large import MAEConfig, MaskedAutoencoderViT, VisionTransformer
from mae.large.checkpoints.read import read_checkpoint
from mae.large.jobs.convert import convert_checkpoint
from tests.helpers import hf_config, relative_error, save_official

TOL = 1e-5
_HF_BOOKKEEPING = ("architectures", "dtype", "torch_dtype", "_name_or_path", "transformers_version")

pytestmark = pytest.mark.slow  # every case here is a full-size ViT-L


class Source(NamedTuple):
    path: Path
    imgs: torch.Tensor  # (1, 3, 224, 224)
    noise: torch.Tensor  # (1, 196)
    loss: torch.Tensor
    pred: torch.Tensor
    mask: torch.Tensor
    cls_features: torch.Tensor  # (1, 1024): the cls token after the final norm, nothing masked


def _random_state(config: MAEConfig) -> dict[str, torch.Tensor]:
    """Random weights of the official shapes, made cheaply: each tensor a copy of its own stretch of one random
    pool (drawing 330 M numbers would cost more than the whole round trip), norms around 1."""
    pool = torch.randn(1 << 22, generator=torch.Generator().manual_seed(0)) * 0.02
    state = {}
    for i, (name, shape) in enumerate(MaskedAutoencoderViT.expected_state(config).shapes.items()):
        n = torch.Size(shape).numel()
        start = (i * 7919) % (pool.numel() - min(n, pool.numel()) + 1)
        values = pool[start:start + n].repeat((n + pool.numel() - 1) // pool.numel())[:n]
        state[name] = (values + (1.0 if "norm" in name and name.endswith("weight") else 0.0)).reshape(shape).clone()
    return state


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Iterator[Source]:
    path = save_official(tmp_path_factory.mktemp("full") / "random_vit_large.pth", _random_state(MAEConfig.vit_large()))
    model = MaskedAutoencoderViT.from_pretrained(path)
    g = torch.Generator().manual_seed(1)
    imgs = torch.randn(1, 3, 224, 224, generator=g)
    noise = torch.rand(1, 196, generator=g)
    with torch.no_grad():
        loss, pred, mask = model(imgs, 0.75, noise)
        # Nothing removed, patches kept in order (rising noise): the encoder sees every token as a classifier does.
        latent, _, _ = model.forward_encoder(imgs, 0.0, torch.arange(196.0)[None])
    del model
    gc.collect()
    yield Source(path, imgs, noise, loss, pred, mask, latent[:, 0])
    path.unlink()


def _convert(source: Source, tmp_path: Path, format: str) -> Path:
    out = tmp_path / f"out-{format}"
    report = convert_checkpoint(source.path, out, format, target="pixels")  # type: ignore[arg-type]
    assert report.verified == report.saved.written == (294 if format == "timm" else 398)
    return out


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    gc.collect()


@pytest.mark.parametrize("format", ["official", "safetensors"])
def test_official_names_load_into_this_model(source: Source, tmp_path: Path, format: str) -> None:
    out = _convert(source, tmp_path, format)
    model = MaskedAutoencoderViT.from_pretrained(out)
    with torch.no_grad():
        loss, pred, mask = model(source.imgs, 0.75, source.noise)
    del model
    _remove(out)
    # The same weights, bit for bit, through the same code: the same numbers exactly.
    assert torch.equal(mask, source.mask) and torch.equal(pred, source.pred) and torch.equal(loss, source.loss)


def test_the_hf_folder_loads_in_transformers(source: Source, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    out = _convert(source, tmp_path, "hf")
    hf, info = transformers.ViTMAEForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    stated = {k: v for k, v in hf_config(MAEConfig.vit_large()).to_dict().items() if k not in _HF_BOOKKEEPING}
    assert {k: hf.config.to_dict()[k] for k in stated} == stated  # the sizes, LayerNorm eps, GELU
    with torch.no_grad():
        result = hf.eval()(pixel_values=source.imgs, noise=source.noise)
    # transformers' own `save_pretrained` of what it loaded (5.x: its decoder names `decoder.decoder_encoder.layer`),
    # read back here as a folder.
    saved = tmp_path / "hf-saved"
    hf.save_pretrained(saved)
    del hf
    _remove(out)
    assert torch.equal(result.mask, source.mask)
    assert relative_error(result.logits, source.pred) <= TOL and relative_error(result.loss, source.loss) <= TOL
    model = MaskedAutoencoderViT.from_pretrained(saved)
    assert model.load_report is not None and model.load_report.num_loaded == 398
    with torch.no_grad():
        loss, pred, mask = model(source.imgs, 0.75, source.noise)
    del model
    _remove(saved)
    assert torch.equal(mask, source.mask) and torch.equal(pred, source.pred) and torch.equal(loss, source.loss)


def test_the_timm_file_loads_as_the_encoder(source: Source, tmp_path: Path) -> None:
    out = _convert(source, tmp_path, "timm")
    assert not any(k.startswith(("mask_token", "decoder_")) for k in read_checkpoint(out).state_dict)
    vit = VisionTransformer.from_pretrained(out, num_classes=0, global_pool=False).eval()  # timm's .mae: cls token, final norm
    assert vit.load_report is not None and vit.load_report.num_loaded == 294 and not vit.load_report.missing
    with torch.no_grad():
        features = vit(source.imgs)
    del vit
    _remove(out)
    assert relative_error(features, source.cls_features) <= TOL
