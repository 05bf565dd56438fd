"""The fine-tuning classifier (official models_vit / lr_decay / interpolate_pos_embed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mae.large import MaskedAutoencoderViT, mae_vit_large_patch16
from mae.large.checkpoints.keys import to_huggingface
from mae.large.errors import IncompatibleCheckpointError, InvalidArgumentError
from mae.large.models.filters import encoder_state_for_classifier
from mae.large.models.pos_embed import interpolate_pos_embed
from mae.large.models.vit import (
    VisionTransformer,
    ViTConfig,
    apply_lr_scale,
    param_groups_lrd,
    vit_base_patch16,
    vit_huge_patch14,
    vit_large_patch16,
)
from tests.helpers import hf_config, manifest, relative_error, small_config, small_model, small_state_dict

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=2)


def tiny(**overrides) -> VisionTransformer:
    return VisionTransformer(ViTConfig(**{**TINY, **overrides}))


def encoder_copy(mae: MaskedAutoencoderViT, **overrides) -> VisionTransformer:
    """A classifier of `mae`'s size holding its encoder weights."""
    vit = VisionTransformer(ViTConfig.from_mae(mae.config, **overrides))
    vit.load_encoder_state(mae.state_dict())
    return vit.eval()


# ---- config ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"num_classes": -1}, "num_classes"),
        ({"drop_path_rate": 1.0}, "drop_path_rate"),
        ({"drop_path_rate": -0.1}, "drop_path_rate"),
        ({"img_size": 30}, "img_size"),
        ({"img_size": (32, 36)}, "img_size"),
        ({"patch_size": 0}, "patch_size"),
        ({"num_heads": 5}, "num_heads"),
        ({"global_pool": 1}, "global_pool"),
        ({"layer_norm_eps": 0}, "layer_norm_eps"),
    ],
)
def test_invalid_config_names_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ViTConfig(**{**TINY, **changes})


def test_img_size_is_normalised_to_a_pair() -> None:
    assert ViTConfig(**{**TINY, "img_size": 48}).img_size == (48, 48)
    assert ViTConfig(**{**TINY, "img_size": [32, 48]}).grid_size == (4, 6)


# ---- key names ---------------------------------------------------------------------------------
def test_vit_large_keys_equal_the_mae_encoder_keys() -> None:
    """Without head and pooling norm, the classifier's keys are exactly the 294 MAE encoder keys."""
    encoder = {k["name"]: tuple(k["shape"]) for k in manifest()["keys"] if k["part"] == "encoder"}
    assert len(encoder) == 294
    with torch.device("meta"):
        vit = vit_large_patch16(num_classes=0, global_pool=False)
        mae = mae_vit_large_patch16()
    ours = {k: tuple(v.shape) for k, v in vit.state_dict().items()}
    assert ours == encoder
    assert ours == {k: tuple(v.shape) for k, v in mae.state_dict().items() if k in encoder}
    assert list(ours) == [k for k in mae.state_dict() if k in encoder]  # same order too


def test_vit_large_pooled_classifier_keys() -> None:
    with torch.device("meta"):
        vit = vit_large_patch16()
    keys = vit.state_dict()
    assert not any(k.startswith("norm.") for k in keys)  # official models_vit deletes norm
    assert tuple(keys["fc_norm.weight"].shape) == (1024,)
    assert tuple(keys["head.weight"].shape) == (1000, 1024)
    assert vit.fc_norm.eps == 1e-6
    assert vit.pos_embed.requires_grad  # learned when fine-tuning
    assert len(vit.blocks) == 24 and vit.config.drop_path_rate == 0.1


def test_official_sizes() -> None:
    with torch.device("meta"):
        base, huge = vit_base_patch16(), vit_huge_patch14()
    assert (base.config.embed_dim, len(base.blocks), base.pos_embed.shape[1]) == (768, 12, 197)
    assert (huge.config.embed_dim, len(huge.blocks), huge.pos_embed.shape[1]) == (1280, 32, 257)


# ---- init and shapes ---------------------------------------------------------------------------
def test_init_and_output_shapes() -> None:
    torch.manual_seed(0)
    vit = tiny(num_classes=5).eval()
    from mae.large.models.pos_embed import sincos_2d

    assert torch.equal(vit.pos_embed[0], sincos_2d(64, 4, cls_token=True))
    # trunc_normal_(std=2e-5) with timm's default +-2 bounds: in effect a plain normal(0, 2e-5)
    assert 1e-5 < vit.head.weight.std() < 3e-5 and vit.head.weight.abs().max() < 1e-4
    assert torch.equal(vit.head.bias, torch.zeros(5))
    x = torch.randn(3, 3, 32, 32)
    assert vit(x).shape == (3, 5)
    assert vit.forward_features(x).shape == (3, 64)
    assert vit.forward_tokens(x).shape == (3, 17, 64)
    assert tiny(num_classes=0).eval()(x).shape == (3, 64)
    assert [type(b.drop_path).__name__ for b in tiny(depth=3, drop_path_rate=0.2).blocks] == [
        "Identity", "DropPath", "DropPath"]
    assert [b.drop_path.drop_prob for b in tiny(depth=3, drop_path_rate=0.2).blocks[1:]] == pytest.approx([0.1, 0.2])


@pytest.mark.parametrize(
    ("imgs", "message"),
    [
        (torch.randn(3, 32, 32), "4-D"),
        (torch.randn(1, 1, 32, 32), "channels"),
        (torch.randn(1, 3, 32, 40), "32x32"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.long), "floating"),
    ],
)
def test_bad_images_raise_value_error(imgs: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny()(imgs)


VIT_ENTRIES = ["forward", "forward_features", "forward_tokens"]


@pytest.mark.parametrize("entry", VIT_ENTRIES)
def test_nonfinite_and_empty_batches_are_refused_naming_the_image(entry: str) -> None:
    vit = tiny().eval()
    x = torch.randn(4, 3, 32, 32)
    x[3, 0, 1, 1] = float("nan")
    with pytest.raises(InvalidArgumentError, match="image 3 of the batch of 4 holds NaN or infinite values") as info:
        getattr(vit, entry)(x)
    assert info.value.argument == "imgs"
    with pytest.raises(InvalidArgumentError, match="batch is empty"):
        getattr(vit, entry)(torch.empty(0, 3, 32, 32))


@pytest.mark.parametrize("entry", VIT_ENTRIES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_cast_to_the_weights_dtype(entry: str, dtype: torch.dtype) -> None:
    vit = tiny().eval()
    x = torch.randn(2, 3, 32, 32).to(dtype).float()  # float32 values the other dtype holds exactly
    with torch.no_grad():
        got, ref = getattr(vit, entry)(x.to(dtype)), getattr(vit, entry)(x)
    assert got.dtype == torch.float32 and torch.equal(got, ref)


def test_integer_images_are_still_refused_by_the_classifier() -> None:
    with pytest.raises(InvalidArgumentError, match="must be floating point"):
        tiny().forward_features(torch.zeros(1, 3, 32, 32, dtype=torch.int32))


def test_global_pool_features_are_the_mean_patch_token_after_fc_norm() -> None:
    vit = tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = vit.forward_tokens(x)  # un-normed with global_pool
        assert torch.allclose(vit.forward_features(x), vit.fc_norm(tokens[:, 1:].mean(1)), atol=1e-6)
    cls_model = tiny(global_pool=False).eval()
    with torch.no_grad():
        assert torch.allclose(cls_model.forward_features(x), cls_model.forward_tokens(x)[:, 0], atol=1e-6)


# ---- parity with the MAE encoder and with transformers ------------------------------------------
def test_tokens_equal_the_mae_encoder_at_mask_ratio_zero() -> None:
    mae = small_model()
    vit = encoder_copy(mae, global_pool=False, num_classes=0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    length = mae.config.num_patches
    noise = torch.arange(length).float().expand(2, length)  # ascending: every token kept, in order
    with torch.no_grad():
        latent, mask, _ = mae.forward_encoder(x, mask_ratio=0.0, noise=noise)
        tokens = vit.forward_tokens(x)
    assert not mask.any()
    assert torch.allclose(tokens, latent, atol=1e-6, rtol=0)


def test_tokens_equal_transformers_vitmae_model() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = small_config()
    vit = VisionTransformer(ViTConfig.from_mae(cfg, global_pool=False, num_classes=0)).eval()
    with torch.no_grad():  # a learned table, not the sin-cos one: the copy must carry it
        vit.pos_embed.add_(0.1 * torch.randn_like(vit.pos_embed))
    hf = transformers.ViTMAEModel(hf_config(cfg, mask_ratio=0.0)).eval()
    names = {k.removeprefix("vit."): v for k, v in to_huggingface(vit.state_dict()).items()}
    assert set(names) == set(hf.state_dict())  # ViTMAEModel: no "vit." prefix, no decoder
    hf.load_state_dict(names, strict=True)
    x = torch.randn(2, 3, 32, 32)
    noise = torch.arange(cfg.num_patches).float().expand(2, cfg.num_patches)
    with torch.no_grad():
        expected = hf(pixel_values=x, noise=noise).last_hidden_state
        tokens = vit.forward_tokens(x)
    assert tokens.shape == expected.shape
    assert relative_error(tokens, expected) <= 1e-5


# ---- loading encoder weights --------------------------------------------------------------------
@pytest.mark.parametrize("global_pool", [True, False])
def test_load_encoder_state(global_pool: bool) -> None:
    sd = small_state_dict()  # the official small MAE: encoder + decoder
    vit = VisionTransformer(ViTConfig.from_mae(small_config(), num_classes=3, global_pool=global_pool))
    report = vit.load_encoder_state(sd)
    loaded = vit.state_dict()
    encoder = [k for k in sd if not k.startswith(("mask_token", "decoder_"))]
    for key in encoder:
        if key.startswith("norm.") and global_pool:
            assert key in report["ignored"]
        else:
            assert torch.equal(loaded[key], sd[key]), key
    assert {k for k in sd if k.startswith(("mask_token", "decoder_"))} <= set(report["ignored"])
    assert ("norm.weight" in report["ignored"]) == ("norm.bias" in report["ignored"]) == global_pool
    assert 0 < vit.head.weight.std() < 4e-5 and torch.equal(vit.head.bias, torch.zeros(3))
    if global_pool:
        assert torch.equal(vit.fc_norm.weight, torch.ones(64)) and torch.equal(vit.fc_norm.bias, torch.zeros(64))
        assert set(report["initialised"]) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    else:
        assert set(report["initialised"]) == {"head.weight", "head.bias"}


def test_fine_tuned_checkpoint_classifier_is_ignored() -> None:
    vit = tiny(img_size=32)
    sd = dict(small_state_dict())
    sd["head.weight"], sd["head.bias"] = torch.ones(7, 64), torch.ones(7)
    state, ignored, notes = encoder_state_for_classifier(sd, vit)
    assert {"head.weight", "head.bias"} <= set(ignored) and not any(k.startswith("head") for k in state)
    assert any("classifier" in n for n in notes)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda sd: sd.pop("blocks.1.attn.qkv.weight"), "blocks.1.attn.qkv.weight"),
        (lambda sd: sd.update({"blocks.0.mlp.fc1.bias": torch.zeros(3)}), "blocks.0.mlp.fc1.bias"),
        (lambda sd: sd.update({"pos_embed": torch.zeros(1, 17, 32)}), "pos_embed"),
        (lambda sd: sd.update({"pos_embed": torch.zeros(1, 13, 64)}), "pos_embed"),  # 12 patches: no grid
        (lambda sd: sd.update({"vit.layers.0.foo": torch.zeros(1)}), "vit.layers.0.foo"),
    ],
)
def test_incompatible_checkpoint_names_the_key_and_loads_nothing(edit, key: str) -> None:
    sd = small_state_dict()
    edit(sd)
    vit = tiny(global_pool=False)
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    with pytest.raises(IncompatibleCheckpointError, match=key.replace(".", r"\.")):
        vit.load_encoder_state(sd)
    assert all(torch.equal(v, before[k]) for k, v in vit.state_dict().items())


def test_shape_mismatch_message_gives_both_shapes() -> None:
    sd = small_state_dict()
    sd["blocks.0.norm1.weight"] = torch.zeros(65)
    with pytest.raises(IncompatibleCheckpointError, match=r"\(65,\).*\(64,\)"):
        encoder_state_for_classifier(sd, tiny())


# ---- position table interpolation ---------------------------------------------------------------
def test_interpolate_pos_embed_same_grid_is_unchanged() -> None:
    pos = torch.randn(1, 197, 64)
    assert interpolate_pos_embed(pos, (14, 14)) is pos


@pytest.mark.parametrize("img_size", [320, (224, 320)])
def test_checkpoint_pos_embed_is_interpolated_to_the_model_grid(img_size) -> None:
    """A 14x14 (224 px) table loads into 320x320 (20x20) and 224x320 (14x20) models, which then run."""
    torch.manual_seed(0)
    source = VisionTransformer(ViTConfig(img_size=224, patch_size=16, embed_dim=32, depth=1, num_heads=2,
                                         num_classes=0, global_pool=False))
    sd = source.state_dict()
    target = VisionTransformer(source.config.replace(img_size=img_size)).eval()
    grid = target.patch_embed.grid_size
    resized = interpolate_pos_embed(sd["pos_embed"], grid)
    assert resized.shape == (1, 1 + grid[0] * grid[1], 32)
    assert torch.equal(resized[:, 0], sd["pos_embed"][:, 0])  # the cls row is kept
    report = target.load_encoder_state(sd)
    assert f"pos_embed interpolated from 14x14 to {grid[0]}x{grid[1]} (bicubic)" in report["notes"]
    assert torch.equal(target.pos_embed, resized)
    h, w = target.config.img_size
    with torch.no_grad():
        out = target(torch.randn(1, 3, h, w))
    assert out.shape == (1, 32) and torch.isfinite(out).all()


def test_interpolation_matches_official_bicubic() -> None:
    """The official code: reshape to (1, D, g, g), F.interpolate bicubic align_corners=False, back."""
    pos = torch.randn(1, 17, 8)
    grid = pos[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    expected = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
    assert torch.equal(interpolate_pos_embed(pos, (6, 6)), expected)


# ---- layer-wise lr decay ------------------------------------------------------------------------
def test_param_groups_lrd() -> None:
    vit = tiny(depth=3)
    vit.blocks[2].norm1.bias.requires_grad_(False)  # frozen parameters are left out
    groups = param_groups_lrd(vit, weight_decay=0.05, layer_decay=0.5)
    num_layers = len(vit.blocks) + 1  # 4: embeddings 0, blocks 1..3, head and fc_norm 4

    def layer_id(name: str) -> int:
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
            return 0
        return int(name.split(".")[1]) + 1 if name.startswith("blocks.") else num_layers

    seen: list[str] = []
    for group in groups:
        ids = {layer_id(n) for n in group["param_names"]}
        assert len(ids) == 1, group["param_names"]  # one layer per group
        assert group["lr_scale"] == pytest.approx(0.5 ** (num_layers - ids.pop()))
        assert len(group["params"]) == len(group["param_names"])
        seen += group["param_names"]
    trainable = [n for n, p in vit.named_parameters() if p.requires_grad]
    assert sorted(seen) == sorted(trainable) and len(seen) == len(set(seen))
    assert "blocks.2.norm1.bias" not in seen
    assert len(groups) == 2 * (num_layers + 1)  # decay and no_decay for each of the 5 layer ids

    no_decay = {n for g in groups if g["weight_decay"] == 0.0 for n in g["param_names"]}
    expected = {n for n, p in vit.named_parameters() if p.requires_grad and (p.ndim == 1 or n in ("cls_token", "pos_embed"))}
    assert no_decay == expected
    assert all(g["weight_decay"] == 0.05 for g in groups if g["weight_decay"])
    scales = {g["lr_scale"] for g in groups}
    assert max(scales) == 1.0 and min(scales) == pytest.approx(0.5**num_layers)  # head vs embeddings

    optimizer = torch.optim.AdamW(groups, lr=1.0)
    apply_lr_scale(optimizer, 1e-3)
    assert all(g["lr"] == pytest.approx(1e-3 * g["lr_scale"]) for g in optimizer.param_groups)


def test_short_fine_tuning_run_learns_a_separable_task() -> None:
    """40 AdamW steps with layer-wise lr decay learn "is the left half brighter?"."""
    torch.manual_seed(0)
    vit = tiny()  # drop_path_rate 0.1 as in the recipe
    optimizer = torch.optim.AdamW(param_groups_lrd(vit, weight_decay=0.05, layer_decay=0.75))
    apply_lr_scale(optimizer, 1e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    vit.train()
    for _ in range(40):
        y = torch.randint(0, 2, (32,), generator=g)
        x = 0.5 * torch.randn(32, 3, 32, 32, generator=g)
        sign = (2 * y.float() - 1).view(32, 1, 1, 1)
        x[..., :16] += 0.5 * sign
        x[..., 16:] -= 0.5 * sign
        loss = F.cross_entropy(vit(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    initial, final = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert abs(initial - 0.693) < 0.05  # the tiny head starts at chance
    assert final < 0.5 * initial, losses


# ---- gradient checkpointing and drop path -------------------------------------------------------
@pytest.mark.parametrize("drop_path_rate", [0.0, 0.5])
def test_grad_checkpointing_gives_the_same_gradients(drop_path_rate: float) -> None:
    """Also with drop path: non-reentrant checkpointing replays the same random masks."""
    torch.manual_seed(0)
    vit = tiny(depth=3, drop_path_rate=drop_path_rate).train()
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 1, 0])

    def grads() -> dict[str, torch.Tensor]:
        vit.zero_grad()
        torch.manual_seed(1)
        F.cross_entropy(vit(x), y).backward()
        return {n: p.grad.clone() for n, p in vit.named_parameters()}

    plain = grads()
    vit.set_grad_checkpointing()
    assert vit.grad_checkpointing
    checkpointed = grads()
    vit.set_grad_checkpointing(False)
    assert not vit.grad_checkpointing
    again = grads()
    for name, grad in plain.items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(checkpointed[name], grad, atol=1e-6, rtol=1e-5), name
        assert torch.equal(again[name], grad), name


def test_grad_checkpointing_uses_checkpoint_only_when_training(monkeypatch) -> None:
    calls = []
    original = torch.utils.checkpoint.checkpoint

    def spy(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", spy)
    vit = tiny(depth=3)
    vit.set_grad_checkpointing(True)
    x = torch.randn(1, 3, 32, 32)
    vit.train()(x).sum().backward()
    assert calls == [False] * 3
    vit.eval()(x)
    assert len(calls) == 3


def test_drop_path_is_random_in_training_only() -> None:
    torch.manual_seed(0)
    vit = tiny(depth=4, drop_path_rate=0.5)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        vit.eval()
        assert torch.equal(vit.forward_features(x), vit.forward_features(x))
        vit.train()
        assert not torch.allclose(vit.forward_features(x), vit.forward_features(x))


@pytest.mark.parametrize("p", [0.5, 0.75])  # keep probabilities 1/2 and 1/4: x / keep is exact in float32
def test_drop_path_rescales_kept_samples(p: float, rng_state) -> None:
    """Stochastic depth (timm's drop_path): each sample's branch is dropped (0) or kept and divided by 1 - p,
    so that its expected value is the input itself."""
    from mae.large.models.layers import DropPath

    torch.manual_seed(0)
    n = 20_000
    x = torch.randn(3, 5)  # one sample (tokens, dim), seen n times
    layer = DropPath(p).train()
    out = layer(x.expand(n, -1, -1).clone())
    dropped = (out == 0).flatten(1).all(1)
    kept = (out == x / (1 - p)).flatten(1).all(1)
    assert bool((dropped | kept).all()), "a sample is neither dropped nor exactly x / (1 - p)"
    assert abs(kept.float().mean().item() - (1 - p)) < 0.02
    # E[out] = x. The per-sample scale has standard deviation sqrt(p / (1 - p)) <= 1.74, so the mean of
    # n = 20000 has a standard error below 0.013: 0.06 is more than 4.5 of them, and far from 1 - p.
    torch.testing.assert_close(out.mean(0), x, rtol=0.06, atol=0)
    assert torch.equal(layer.eval()(x), x)


# ---- from_pretrained --------------------------------------------------------------------------
@pytest.mark.slow
def test_from_pretrained_encoder_only_vit_large(vit_l_files) -> None:
    """The encoder-only ViT-L file loads into the classifier: every encoder tensor equal, head fresh."""
    from mae.large import VisionTransformer

    _, enc, sd = vit_l_files
    model = VisionTransformer.from_pretrained(enc, num_classes=10)
    report = model.load_report
    assert report.kind == "encoder-only" and report.num_loaded == 292  # 294 minus norm.weight/bias (global pool)
    assert sorted(report.ignored) == ["norm.bias", "norm.weight"]
    loaded = model.state_dict()
    for key, value in sd.items():
        if key in loaded:
            assert torch.equal(loaded[key], value), key
    assert model.head.weight.shape == (10, 1024) and 0 < model.head.weight.std().item() < 1e-4
    assert torch.equal(model.fc_norm.weight, torch.ones(1024))
    assert model.pos_embed.requires_grad and all(not t.is_meta for t in loaded.values())


@pytest.mark.slow
def test_from_pretrained_full_file_reports_the_decoder_ignored(vit_l_files) -> None:
    from mae.large import VisionTransformer

    full, _, _ = vit_l_files
    model = VisionTransformer.from_pretrained(full, num_classes=0, global_pool=False, img_size=256)
    report = model.load_report
    assert report.kind == "full"
    assert sum(k.startswith(("mask_token", "decoder_")) for k in report.ignored) == 104
    assert any("interpolated from 14x14 to 16x16" in fix for fix in report.fixes)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 256, 256)).shape == (1, 1024)


def test_from_pretrained_refuses_incompatible(tmp_path) -> None:
    from mae.large import MAEConfig, VisionTransformer
    from mae.large.errors import IncompatibleCheckpointError
    from tests.helpers import save_official, shaped_state_dict

    path = save_official(tmp_path / "base.pth", shaped_state_dict(MAEConfig.vit_base()))
    with pytest.raises(IncompatibleCheckpointError, match=r"base\.pth does not fit .*looks like an MAE ViT-Base"):
        VisionTransformer.from_pretrained(path)


# ---- a fine-tuned checkpoint: fresh head (fine-tuning) or the file's head (evaluation) -----------
def _fine_tuned_file(tmp_path, **overrides) -> tuple:
    """A tiny classifier whose every tensor (head and fc_norm included) differs from a fresh init,
    saved as the official scripts save it: torch.save({"model": state_dict})."""
    from tests.helpers import save_official

    torch.manual_seed(5)
    model = tiny(num_classes=7, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    return save_official(tmp_path / "finetuned.pth", sd), sd, model.eval()


@pytest.mark.parametrize("global_pool", [True, False])
def test_from_pretrained_head_file_evaluates_a_fine_tuned_checkpoint(tmp_path, global_pool: bool) -> None:
    path, sd, original = _fine_tuned_file(tmp_path, global_pool=global_pool)
    model = VisionTransformer.from_pretrained(path, ViTConfig(**{**TINY, "num_classes": 7, "global_pool": global_pool}),
                                              head="file")
    loaded = model.state_dict()
    assert set(loaded) == set(sd) and all(torch.equal(loaded[k], v) for k, v in sd.items())
    report = model.load_report
    assert report.missing == [] and report.warnings == [] and report.num_loaded == len(sd)
    assert not any(k.startswith(("head.", "fc_norm.")) for k in report.ignored)
    assert any(fix.startswith("loaded the file's classifier") for fix in report.fixes)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), original(x))  # the same logits as the model that was saved


def test_from_pretrained_fresh_head_warns_that_the_files_classifier_is_unused(tmp_path, caplog) -> None:
    path, sd, _ = _fine_tuned_file(tmp_path)
    with caplog.at_level("WARNING"), pytest.warns(UserWarning, match="head='file'"):
        model = VisionTransformer.from_pretrained(path, ViTConfig(**{**TINY, "num_classes": 7}))
    report = model.load_report
    assert len(report.warnings) == 1 and "head='file'" in report.warnings[0] and "head.weight" in report.warnings[0]
    assert any("head='file'" in m for m in caplog.messages)
    assert {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"} <= set(report.ignored)
    assert 0 < model.head.weight.std().item() < 1e-4 and torch.equal(model.head.bias, torch.zeros(7))
    assert torch.equal(model.fc_norm.weight, torch.ones(64))
    assert torch.equal(model.blocks[1].mlp.fc2.weight, sd["blocks.1.mlp.fc2.weight"])  # the encoder is the file's


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"num_classes": 10}, r"head\.weight has shape \(7, 64\), the model expects \(10, 64\).*num_classes=7"),
        ({"global_pool": False}, r"build the model with global_pool=True"),
    ],
)
def test_from_pretrained_head_file_says_which_config_fits(tmp_path, overrides: dict, match: str) -> None:
    path, _, _ = _fine_tuned_file(tmp_path)
    with pytest.raises(IncompatibleCheckpointError, match=match):
        VisionTransformer.from_pretrained(path, ViTConfig(**{**TINY, "num_classes": 7, **overrides}), head="file")


def test_from_pretrained_head_file_refuses_a_pre_training_file(tmp_path) -> None:
    from tests.helpers import encoder_only, save_official

    path = save_official(tmp_path / "enc.pth", encoder_only(small_state_dict()))
    with pytest.raises(IncompatibleCheckpointError, match=r"holds no classifier .* use head='fresh'"):
        VisionTransformer.from_pretrained(path, ViTConfig(**TINY), head="file")
    with pytest.raises(ValueError, match="head must be 'fresh'"):
        VisionTransformer.from_pretrained(path, ViTConfig(**TINY), head="trained")  # type: ignore[arg-type]


def test_from_pretrained_head_file_without_a_head_loads_fc_norm_only(tmp_path) -> None:
    """Features (num_classes=0) from a fine-tuned file: its trained fc_norm is used, its head ignored."""
    path, sd, _ = _fine_tuned_file(tmp_path)
    model = VisionTransformer.from_pretrained(path, ViTConfig(**{**TINY, "num_classes": 0}), head="file")
    assert torch.equal(model.fc_norm.weight, sd["fc_norm.weight"])
    assert sorted(model.load_report.ignored) == ["head.bias", "head.weight"]
