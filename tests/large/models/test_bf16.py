"""The bfloat16 fast mode: CPU autocast with the weight casts kept between calls (`layers.Linear`).

Tolerance: bfloat16 keeps 8 significant bits, so every rounding is off by up to 2**-9 (0.2 %) and the
errors of a few dozen layers add up to about 1 % of the prediction's range (measured: 0.7 % for
ViT-L with random weights, 0.2-0.5 % for the official small model). 5e-2 leaves a wide margin for
other CPUs' kernels while still failing on any real fault (a missing bias, a wrong weight, a dropped
block all give errors of order 1). Masks are computed before any matmul from the noise, so they must
be identical.
"""

from __future__ import annotations

import contextlib
import copy
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from mae.large import MAEConfig, MaskedAutoencoderViT
from mae.large.jobs.forward import reconstruct_files
from mae.large.models.layers import Linear
from tests.helpers import relative_error, small_model, vectors

BF16_TOL = 5e-2


def bf16() -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16)


@contextlib.contextmanager
def plain_autocast():
    """Disable the cache: every Linear call recasts its weights, as plain autocast does."""
    original = Linear._cast_weights
    Linear._cast_weights = lambda self, dtype: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        Linear._cast_weights = original  # type: ignore[method-assign]


def test_bf16_forward_is_close_to_fp32_on_the_official_small_model() -> None:
    v = vectors()
    model = small_model()
    with torch.inference_mode():
        ref = model(v["input.imgs"], 0.75, v["input.noise"])
        with bf16():
            out = model(v["input.imgs"], 0.75, v["input.noise"])
    assert out.pred.dtype == torch.bfloat16
    assert torch.equal(out.mask, ref.mask)
    assert relative_error(out.pred.float(), ref.pred) < BF16_TOL
    assert relative_error(out.loss, ref.loss) < BF16_TOL


def test_cached_casts_give_exactly_the_plain_autocast_result() -> None:
    v = vectors()
    model = small_model()
    with torch.inference_mode(), bf16():
        cached = model(v["input.imgs"], 0.75, v["input.noise"])
        with plain_autocast():
            plain = model(v["input.imgs"], 0.75, v["input.noise"])
    assert torch.equal(cached.pred, plain.pred)
    assert torch.equal(cached.loss, plain.loss)


def test_fp32_path_is_untouched_by_the_cache() -> None:
    """After a bf16 forward, float32 runs give the official outputs bit for bit as before."""
    v = vectors()
    model = small_model()
    with torch.inference_mode():
        before = model(v["input.imgs"], 0.75, v["input.noise"])
        with bf16():
            model(v["input.imgs"], 0.75, v["input.noise"])
        after = model(v["input.imgs"], 0.75, v["input.noise"])
    assert torch.equal(before.pred, after.pred)
    assert relative_error(after.pred, v["expected.r75_pix.pred"]) <= 1e-5
    layer = model.blocks[0].attn.qkv
    x = torch.randn(3, 5, layer.in_features)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_cache_is_reused_and_follows_weight_changes() -> None:
    model = small_model()
    layer = model.decoder_pred
    x = torch.randn(2, 4, layer.in_features)
    with torch.inference_mode(), bf16():
        first = layer(x)
        cached = layer._cast_cache
        layer(x)
        assert layer._cast_cache is cached  # reused, not recast
    with torch.no_grad():
        layer.weight.mul_(2.0)  # in place: the version counter moves
    with torch.inference_mode(), bf16():
        second = layer(x)
    assert layer._cast_cache is not cached
    assert relative_error(second.float() - layer.bias.to(torch.bfloat16).float(),
                          2 * (first.float() - layer.bias.to(torch.bfloat16).float())) < BF16_TOL
    model.load_state_dict(small_model().state_dict())  # copy_: the cache must not serve stale weights
    with torch.inference_mode(), bf16():
        assert torch.equal(layer(x), first)
    layer.drop_cast_cache()
    assert layer._cast_cache is None


def test_a_new_weight_tensor_is_recast_and_copies_carry_no_cache() -> None:
    model = small_model()
    layer = model.blocks[0].attn.proj
    x = torch.randn(2, 3, layer.in_features)
    with torch.inference_mode(), bf16():
        layer(x)
    new = torch.nn.Parameter(torch.randn_like(layer.weight))
    layer.weight = new
    with torch.inference_mode(), bf16():
        got = layer(x)
    assert torch.equal(layer._cast_cache.weight, new.detach().to(torch.bfloat16))
    with torch.inference_mode():
        expected = torch.nn.functional.linear(x.bfloat16(), new.bfloat16(), layer.bias.bfloat16())
    assert torch.equal(got, expected)
    twin = copy.deepcopy(model)
    assert twin.blocks[0].attn.proj._cast_cache is None and layer._cast_cache is not None
    restored = pickle.loads(pickle.dumps(model))
    assert restored.blocks[0].attn.proj._cast_cache is None
    assert torch.equal(restored.blocks[0].attn.proj.weight, new)


def test_training_under_autocast_still_reaches_the_weights() -> None:
    """With autograd on, the layer is plain autocast: gradients flow to the float32 parameters."""
    layer = small_model().blocks[0].mlp.fc1
    x = torch.randn(2, 3, layer.in_features)
    with bf16():
        layer(x).float().sum().backward()
    assert layer._cast_cache is None
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.float32


def test_reconstruct_files_in_bf16_matches_fp32(tmp_path) -> None:
    model = small_model()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    fp32 = list(reconstruct_files(model, paths, batch_size=2))
    half = list(reconstruct_files(model, paths, batch_size=2, dtype=torch.bfloat16))
    for a, b in zip(fp32, half, strict=True):
        assert a.path == b.path and torch.equal(a.mask, b.mask)
        assert b.pred.dtype == torch.float32  # handed back in float32 for drawing
        assert relative_error(b.pred, a.pred) < BF16_TOL
        assert abs(b.loss - a.loss) <= BF16_TOL * abs(a.loss)


@pytest.mark.slow
def test_vit_large_bf16_is_close_to_fp32(rng_state) -> None:
    """The full depth (24 + 8 blocks), where bf16 rounding has the most layers to accumulate over."""
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(MAEConfig.vit_large()).eval()
    g = torch.Generator().manual_seed(1)
    imgs = torch.randn(2, 3, 224, 224, generator=g)
    noise = torch.rand(2, 196, generator=g)
    with torch.inference_mode():
        ref = model(imgs, 0.75, noise)
        with bf16():
            out = model(imgs, 0.75, noise)
    assert torch.equal(out.mask, ref.mask)
    assert relative_error(out.pred.float(), ref.pred) < BF16_TOL
    assert relative_error(out.loss, ref.loss) < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_is_plain_autocast() -> None:
    model = small_model().cuda()
    v = vectors()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(v["input.imgs"].cuda(), 0.75, v["input.noise"].cuda())
    assert all(m._cast_cache is None for m in model.modules() if isinstance(m, Linear))
    assert relative_error(out.pred.float().cpu(), v["expected.r75_pix.pred"]) < BF16_TOL
