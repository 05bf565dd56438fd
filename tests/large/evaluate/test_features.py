"""Feature extraction, the features file, and the sharding helpers for distributed runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from PIL import Image

from mae.large import MaskedAutoencoderViT, VisionTransformer, ViTConfig
from mae.large.data.images import ImageFailure, load_image
from mae.large.errors import DeviceError, MAEError
from mae.large.evaluate.features import FeatureResult, classifier_for_pool, extract_features, model_name
from mae.large.evaluate.store import FEATURES_FORMAT, load_features, save_features
from mae.large.utils.distributed import (
    DistContext,
    context_from_env,
    destroy,
    gather_to_main,
    init_distributed,
    shard,
    unshard,
)
from tests.helpers import encoder_only, save_official, small_config, small_state_dict

SIZE = 32  # small_config(): img 32, patch 8, embed 64, depth 2, heads 4


def tiny_vit_config(pool: str, **overrides) -> ViTConfig:
    return classifier_for_pool(pool, ViTConfig.from_mae(small_config()), **overrides)


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> Path:
    return save_official(tmp_path_factory.mktemp("enc") / "enc.pth", encoder_only(small_state_dict()))


def tiny_model(encoder_file: Path, pool: str = "mean", **overrides) -> VisionTransformer:
    return VisionTransformer.from_pretrained(encoder_file, tiny_vit_config(pool, **overrides)).eval()


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` random RGB images of assorted sizes (so the resize matters)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        h, w = 24 + 7 * i, 40 - 3 * i
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def vectors(results) -> torch.Tensor:
    return torch.stack([r.vector for r in results])


# ---- extract_features --------------------------------------------------------------------------
def test_extract_features_equals_forward_features_on_the_same_batch(encoder_file, tmp_path) -> None:
    model = tiny_model(encoder_file)
    paths = write_images(tmp_path, 4)
    results = list(extract_features(model, paths, batch_size=4))
    assert [type(r) for r in results] == [FeatureResult] * 4
    assert [r.path for r in results] == paths and [r.index for r in results] == [0, 1, 2, 3]
    batch = torch.stack([load_image(p, size=SIZE, crop="eval") for p in paths])
    with torch.no_grad():
        expected = model.forward_features(batch)
    # The same batch through the same kernels: bit for bit.
    assert torch.equal(vectors(results), expected)
    assert all(r.vector.shape == (64,) and r.vector.dtype == torch.float32 for r in results)


def test_rows_do_not_depend_on_the_batch_size(encoder_file, tmp_path) -> None:
    model = tiny_model(encoder_file)
    paths = write_images(tmp_path, 5)
    one = vectors(extract_features(model, paths, batch_size=1))
    four = vectors(extract_features(model, paths, batch_size=4))  # batches of 4 and 1
    assert one.shape == (5, 64)
    assert torch.allclose(one, four, atol=1e-6, rtol=0)


def test_mean_pool_is_a_plain_layernorm_of_the_mean_patch_token(encoder_file, tmp_path) -> None:
    """A pre-training file has no fc_norm: the fresh one is the identity-affine LayerNorm."""
    model = tiny_model(encoder_file, "mean")
    assert torch.equal(model.fc_norm.weight, torch.ones(64)) and torch.equal(model.fc_norm.bias, torch.zeros(64))
    paths = write_images(tmp_path, 3)
    got = vectors(extract_features(model, paths))
    batch = torch.stack([load_image(p, size=SIZE, crop="eval") for p in paths])
    with torch.no_grad():
        tokens = model.forward_tokens(batch)  # raw block output with global_pool
    assert torch.allclose(got, F.layer_norm(tokens[:, 1:].mean(1), (64,), eps=1e-6), atol=1e-6)


def test_cls_pool_is_the_normed_cls_token_computed_by_hand(encoder_file, tmp_path) -> None:
    paths = write_images(tmp_path, 3)
    mean = vectors(extract_features(tiny_model(encoder_file, "mean"), paths))
    cls_model = tiny_model(encoder_file, "cls")
    cls = vectors(extract_features(cls_model, paths))
    assert not torch.allclose(mean, cls, atol=1e-3)

    sd = small_state_dict()  # the encoder's `norm` comes from the checkpoint, not a fresh init
    assert torch.equal(cls_model.norm.weight, sd["norm.weight"]) and torch.equal(cls_model.norm.bias, sd["norm.bias"])
    batch = torch.stack([load_image(p, size=SIZE, crop="eval") for p in paths])
    with torch.no_grad():
        x = cls_model.patch_embed(batch) + sd["pos_embed"][:, 1:]
        cls_token = (sd["cls_token"] + sd["pos_embed"][:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat((cls_token, x), dim=1)
        for blk in cls_model.blocks:
            x = blk(x)
        by_hand = F.layer_norm(x[:, 0], (64,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
        # ... which is also what the MAE encoder itself puts at position 0 with nothing masked.
        mae = MaskedAutoencoderViT(small_config())
        mae.load_state_dict(small_state_dict())
        # Increasing noise keeps the patches in their own order (unseeded noise would shuffle them, and the
        # summation order with them): the same tokens in the same order as the classifier's forward.
        in_order = torch.arange(mae.config.num_patches, dtype=torch.float32).expand(batch.shape[0], -1)
        latent, _, _ = mae.eval().forward_encoder(batch, 0.0, noise=in_order)
    assert torch.allclose(cls, by_hand, atol=1e-6)
    assert torch.allclose(cls, latent[:, 0], atol=1e-6)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_layer_takes_the_tokens_of_that_block_pooled_the_same_way(encoder_file, tmp_path, pool: str) -> None:
    model = tiny_model(encoder_file, pool)
    paths = write_images(tmp_path, 3)
    last = vectors(extract_features(model, paths))
    assert torch.equal(vectors(extract_features(model, paths, layer=-1)), last)
    assert torch.equal(vectors(extract_features(model, paths, layer=1)), last)
    first = vectors(extract_features(model, paths, layer=0))
    batch = torch.stack([load_image(p, size=SIZE, crop="eval") for p in paths])
    with torch.no_grad():
        x = model.encoder_tokens(batch).x
        x = model.blocks[0](x)  # block 0's output, pooled by hand
        expected = model.fc_norm(x[:, 1:].mean(1)) if pool == "mean" else model.norm(x)[:, 0]
    assert torch.allclose(first, expected, atol=1e-6) and not torch.allclose(first, last, atol=1e-3)


def test_layer_out_of_range_fails_before_any_image(encoder_file, tmp_path) -> None:
    with pytest.raises(ValueError, match="block 2 does not exist") as info:
        next(extract_features(tiny_model(encoder_file), [tmp_path / "missing.png"], layer=2))
    assert info.value.argument == "layer"


def test_bad_image_becomes_a_failure_in_its_place(encoder_file, tmp_path) -> None:
    model = tiny_model(encoder_file)
    good = write_images(tmp_path, 3)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    results = list(extract_features(model, [good[0], bad, good[1], good[2]], batch_size=2))
    assert [type(r) for r in results] == [FeatureResult, ImageFailure, FeatureResult, FeatureResult]
    assert results[1].path == bad and "broken.png" in results[1].reason
    assert [r.index for r in results if isinstance(r, FeatureResult)] == [0, 2, 3]
    alone = vectors(extract_features(model, good))
    assert torch.allclose(vectors(r for r in results if isinstance(r, FeatureResult)), alone, atol=1e-6)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_a_feature_row_that_is_not_finite_is_a_failure(encoder_file, tmp_path, monkeypatch, pool: str) -> None:
    """An image that overflows in the model (values of 1e38: finite, so accepted) fails in its place; the other
    rows of its batch are the ones they are alone."""
    model = tiny_model(encoder_file, pool)
    paths = write_images(tmp_path, 3)
    alone = vectors(extract_features(model, [paths[0], paths[2]]))
    from mae.large.data import images as image_module

    original = image_module.load_image  # the batches of every job load through mae.large.data.images

    def load(path, **kwargs):
        image = original(path, **kwargs)
        return torch.full_like(image, 1e38) if Path(path) == paths[1] else image

    monkeypatch.setattr(image_module, "load_image", load)
    results = list(extract_features(model, paths, batch_size=3))
    assert [type(r) for r in results] == [FeatureResult, ImageFailure, FeatureResult]
    reason = results[1].reason
    assert results[1].path == paths[1] and str(paths[1]) in reason and "feature vector is not finite" in reason
    assert "of its 64 values are NaN or infinite" in reason
    assert [r.index for r in results if isinstance(r, FeatureResult)] == [0, 2]
    assert torch.allclose(vectors(r for r in results if isinstance(r, FeatureResult)), alone, atol=1e-6)


def test_nonfinite_weights_give_failures_not_rows(encoder_file, tmp_path) -> None:
    model = tiny_model(encoder_file)
    with torch.no_grad():
        model.blocks[0].mlp.fc1.bias[0] = float("nan")
    results = list(extract_features(model, write_images(tmp_path, 2)))
    assert all(isinstance(r, ImageFailure) and "64 of its 64 values" in r.reason for r in results)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_device_error(encoder_file, tmp_path) -> None:
    with pytest.raises(DeviceError, match="no CUDA device is available"):
        list(extract_features(tiny_model(encoder_file), write_images(tmp_path, 1), device="cuda"))


def test_train_mode_model_gives_eval_features_and_keeps_its_mode(encoder_file, tmp_path) -> None:
    model = tiny_model(encoder_file, drop_path_rate=0.5)  # stochastic depth would randomise features
    paths = write_images(tmp_path, 2)
    expected = vectors(extract_features(model, paths))
    model.train()
    got = vectors(extract_features(model, paths))
    assert model.training
    assert torch.equal(got, expected)


def test_bfloat16_runs_and_stays_close(encoder_file, tmp_path) -> None:
    model = tiny_model(encoder_file)
    paths = write_images(tmp_path, 2)
    exact = vectors(extract_features(model, paths))
    low = vectors(extract_features(model, paths, dtype=torch.bfloat16))
    assert low.dtype == torch.float32
    assert torch.allclose(low, exact, atol=0.1)


def test_bad_arguments(encoder_file, tmp_path) -> None:
    model = tiny_model(encoder_file)
    paths = write_images(tmp_path, 1)
    with pytest.raises(MAEError, match="batch size"):
        list(extract_features(model, paths, batch_size=0))
    with pytest.raises(ValueError, match="differs from the model's img_size"):
        list(extract_features(model, paths, size=48))
    assert len(list(extract_features(model, paths, size=SIZE))) == 1
    with pytest.raises(ValueError, match="pool"):
        classifier_for_pool("max")


def test_classifier_for_pool_and_model_name() -> None:
    mean, cls = classifier_for_pool("mean"), classifier_for_pool("cls", img_size=256)
    assert (mean.global_pool, mean.num_classes, mean.drop_path_rate, mean.embed_dim) == (True, 0, 0.0, 1024)
    assert (cls.global_pool, cls.img_size) == (False, (256, 256))
    assert model_name(mean) == "vit_large_patch16"
    assert model_name(tiny_vit_config("mean")) == "vit_d64_depth2_heads4_patch8"


# ---- the file ----------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path) -> None:
    feats = torch.randn(3, 8, dtype=torch.float64)
    names = ["z/last.png", "a/first.jpg", "m.png"]  # kept in row order, not sorted
    path = save_features(tmp_path / "sub" / "f.safetensors", feats, names, {"pool": "cls", "checkpoint": "x.pth"})
    assert path == tmp_path / "sub" / "f.safetensors"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.safetensors"]  # no temp file left
    loaded, got_names, meta = load_features(path)
    assert loaded.dtype == torch.float32 and torch.equal(loaded, feats.float())
    assert got_names == names
    assert meta == {"pool": "cls", "checkpoint": "x.pth", "format": FEATURES_FORMAT}
    # Readable with plain safetensors too.
    assert torch.equal(safetensors.torch.load_file(path)["features"], feats.float())
    with safetensors.safe_open(path, "pt") as f:
        assert json.loads(f.metadata()["files"]) == names


def test_save_validates_its_arguments(tmp_path) -> None:
    with pytest.raises(ValueError, match="2-D"):
        save_features(tmp_path / "f.safetensors", torch.zeros(3), ["a", "b", "c"], {})
    with pytest.raises(ValueError, match="one name per row"):
        save_features(tmp_path / "f.safetensors", torch.zeros(3, 2), ["a"], {})
    with pytest.raises(ValueError, match="reserved"):
        save_features(tmp_path / "f.safetensors", torch.zeros(1, 2), ["a"], {"files": "[]"})
    with pytest.raises(ValueError, match="str to str"):
        save_features(tmp_path / "f.safetensors", torch.zeros(1, 2), ["a"], {"size": 224})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exc", [KeyboardInterrupt, OSError])
def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch, exc) -> None:
    real = safetensors.torch.save_file

    def half_written(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:  # a partial file, then the interruption
            f.truncate(20)
        raise exc("interrupted")

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    with pytest.raises(exc):
        save_features(tmp_path / "f.safetensors", torch.ones(2, 4), ["a", "b"], {})
    assert list(tmp_path.iterdir()) == []

    # An existing file is left as it was.
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    save_features(tmp_path / "f.safetensors", torch.ones(2, 4), ["a", "b"], {})
    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    with pytest.raises(exc):
        save_features(tmp_path / "f.safetensors", torch.zeros(1, 4), ["c"], {})
    assert [p.name for p in tmp_path.iterdir()] == ["f.safetensors"]
    assert load_features(tmp_path / "f.safetensors")[1] == ["a", "b"]


def test_load_refuses_other_files(tmp_path) -> None:
    with pytest.raises(MAEError, match="does not exist"):
        load_features(tmp_path / "missing.safetensors")
    other = tmp_path / "weights.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, other)
    with pytest.raises(MAEError, match="not a features file"):
        load_features(other)
    no_names = tmp_path / "nonames.safetensors"
    safetensors.torch.save_file({"features": torch.zeros(2, 3)}, no_names)
    with pytest.raises(MAEError, match="files"):
        load_features(no_names)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 5)
    with pytest.raises(MAEError, match="not a readable safetensors"):
        load_features(junk)


# ---- sharding ----------------------------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("length", range(10))
def test_shards_are_disjoint_and_cover(world: int, length: int) -> None:
    items = [f"item{i}" for i in range(length)]
    parts = [shard(items, rank, world) for rank in range(world)]
    flat = [x for p in parts for x in p]
    assert sorted(flat) == sorted(items) and len(flat) == len(set(flat)) == length
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    for p in parts:  # each share keeps the input order
        assert p == sorted(p, key=items.index)
    assert unshard(parts) == items


def test_shard_and_unshard_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="rank 2"):
        shard([1, 2, 3], 2, 2)
    with pytest.raises(ValueError, match="rank"):
        shard([1, 2, 3], 0, 0)
    with pytest.raises(ValueError, match="rank 0 returned 1 results"):
        unshard([[0], [1, 3]])  # rank 1 reported an extra result


def test_context_from_env(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = context_from_env()
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.is_distributed, ctx.device) == (0, 1, True, False, torch.device("cpu"))
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = context_from_env("cuda")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.device) == (3, 4, False, torch.device("cuda", 1))
    assert context_from_env("cuda:0").device == torch.device("cuda", 0)  # an explicit index is kept
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(MAEError, match="torchrun"):
        context_from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(MAEError, match="RANK"):
        context_from_env()


def test_single_process_needs_no_process_group(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed("cpu")
    assert not ctx.owns_group and ctx.backend is None
    assert not torch.distributed.is_initialized()
    assert gather_to_main(ctx, [1, 2]) == [1, 2]
    destroy(ctx)  # a no-op
    with pytest.raises(RuntimeError, match="init_distributed"):
        gather_to_main(DistContext(rank=0, world_size=2), [1])


def test_more_ranks_than_gpus_is_a_clear_error(monkeypatch) -> None:
    """torchrun --nproc-per-node 2 on a one-GPU machine: rank 1 would ask for cuda:1 (checked on an H200)."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: pytest.fail("must not be reached"))
    with pytest.raises(MAEError, match=r"cuda:1 but only 1 CUDA device"):
        init_distributed("cuda")


def test_every_forward_holds_the_batch_size(encoder_file, tmp_path, monkeypatch) -> None:
    # A short batch (the last one, one with a failed file) is padded, so every product has the same shapes and a
    # row's last bits do not depend on how many images its batch holds.
    paths = write_images(tmp_path, 5)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    model = tiny_model(encoder_file, "cls")
    shapes: list[int] = []
    original = model.forward_features
    monkeypatch.setattr(model, "forward_features", lambda x: shapes.append(x.shape[0]) or original(x))
    items = list(extract_features(model, [*paths[:2], tmp_path / "bad.png", *paths[2:]], batch_size=4))
    assert shapes == [4, 4]
    rows = [r for r in items if not isinstance(r, ImageFailure)]
    assert len(rows) == 5 and [r.index for r in rows] == [0, 1, 3, 4, 5]
    alone = vectors(extract_features(model, paths, batch_size=4))
    assert torch.equal(torch.stack([r.vector for r in rows]), alone)
