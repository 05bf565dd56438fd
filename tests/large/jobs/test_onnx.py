"""ONNX export: the files onnxruntime runs give PyTorch's outputs (features, and loss / pred / mask from the noise)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from mae.large import VisionTransformer, ViTConfig
from mae.large.errors import InvalidArgumentError, MAEError
from mae.large.evaluate.features import load_feature_encoder
from mae.large.jobs.onnx import DEFAULT_TOLERANCE, export_onnx, graph_for
from tests.helpers import save_official, small_config, small_model, use_small_architecture

L = 16  # small_config(): img 32, patch 8 -> a 4 x 4 grid


def run(path: Path, **feeds: torch.Tensor) -> list[torch.Tensor]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(np.asarray(o)) for o in session.run(None, {k: v.numpy() for k, v in feeds.items()})]


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_fine_tuned_file_exports_its_own_pooling_at_any_batch_size(tmp_path, monkeypatch, capfd) -> None:
    """A fine-tuned classifier's feature is its mean patch token through its trained fc_norm, as `features` pools
    it; the file takes two batch sizes it was not traced at, and the library prints nothing."""
    use_small_architecture(monkeypatch)
    torch.manual_seed(0)
    classifier = VisionTransformer(ViTConfig.from_mae(small_config(), num_classes=5)).eval()
    with torch.no_grad():  # a trained fc_norm, far from the fresh identity one
        classifier.fc_norm.weight.uniform_(0.5, 2.0)
        classifier.fc_norm.bias.normal_()
    ckpt = save_official(tmp_path / "finetuned.pth", classifier.state_dict())
    out = tmp_path / "out" / "features.onnx"

    report = export_onnx(ckpt, out, "features", dynamic_batch=True)

    assert capfd.readouterr() == ("", "")
    assert files_in(out.parent) == {"features.onnx"}  # no staging folder or data file left beside it
    assert report.path == out and report.data_path is None and report.passed
    assert isinstance(report.opset, int) and report.opset >= 18
    assert [(t.name, t.shape) for t in report.inputs] == [("image", ("batch", 3, 32, 32))]
    assert [(t.name, t.shape) for t in report.outputs] == [("feature", ("batch", 64))]
    assert report.check_batches == (1, 3) and report.max_abs_error is not None
    assert report.max_abs_error <= DEFAULT_TOLERANCE and report.masks_identical is None
    extractor = load_feature_encoder(ckpt, None, ViTConfig.from_mae(small_config()))  # what `features` loads
    assert extractor.global_pool
    for batch in (2, 5):
        images = torch.randn(batch, 3, 32, 32)
        (got,) = run(out, image=images)
        with torch.inference_mode():
            expected = extractor.forward_features(images)
            by_hand = classifier.fc_norm(classifier.forward_tokens(images)[:, 1:].mean(dim=1))
        assert got.shape == (batch, 64)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got, by_hand, rtol=1e-5, atol=1e-5)


def test_mae_export_takes_the_mask_from_the_noise(tmp_path) -> None:
    """The same noise gives the same mask, loss and prediction as the model's forward; other noise another mask."""
    model = small_model()
    out = tmp_path / "mae.onnx"
    report = export_onnx(model, out, "mae", dynamic_batch=True, mask_ratio=0.5)
    assert report.passed and report.masks_identical is True and report.mask_ratio == 0.5
    assert [(t.name, t.shape) for t in report.inputs] == [("image", ("batch", 3, 32, 32)), ("noise", ("batch", L))]
    assert [(t.name, t.shape) for t in report.outputs] == [("loss", ()), ("pred", ("batch", L, 192)),
                                                           ("mask", ("batch", L))]
    generator = torch.Generator().manual_seed(1)
    masks = []
    for batch in (2, 4):
        images = torch.randn(batch, 3, 32, 32, generator=generator)
        noise = torch.rand(batch, L, generator=generator)
        loss, pred, mask = run(out, image=images, noise=noise)
        with torch.inference_mode():
            expected = model(images, 0.5, noise)
        assert torch.equal(mask, expected.mask)
        assert mask.sum(dim=1).tolist() == [L // 2] * batch
        torch.testing.assert_close(pred, expected.pred, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loss, expected.loss, rtol=1e-5, atol=1e-6)
        masks.append(mask)
    assert not torch.equal(masks[0], masks[1][:2])  # the mask follows the noise: it is not baked into the file


@pytest.mark.parametrize("what", ["mae", "features"])
def test_the_written_file_has_the_exporters_default_opset_or_the_one_asked_for(tmp_path, what: str) -> None:
    """`opset=None` documents "the exporter's default": `torch.onnx.export(..., opset_version=None)` with
    `dynamo=True` takes `torch.onnx._constants.ONNX_DEFAULT_OPSET` (20 in the torch 2.13 this project is tested
    with); read back from the written file's `opset_import` (the default "" / "ai.onnx" domain), for both graphs."""
    import onnx
    from torch.onnx import _constants

    model = small_model()

    def file_opset(path: Path) -> int:
        return {entry.domain: entry.version for entry in onnx.load(str(path)).opset_import}[""]

    default = export_onnx(model, tmp_path / "default.onnx", what, check=False)
    assert file_opset(tmp_path / "default.onnx") == default.opset == _constants.ONNX_DEFAULT_OPSET
    asked = export_onnx(model, tmp_path / "asked.onnx", what, opset=21, check=False)
    assert file_opset(tmp_path / "asked.onnx") == asked.opset == 21


@pytest.mark.parametrize("ratio", [0.0, 0.75])
def test_batch_loss_select_is_the_official_masked_mean(ratio: float) -> None:
    """The traceable loss (a select, no `if` on a value) is bit for bit the official one: the masked mean, and the
    mean over all patches at ratio 0 (where the official code gives NaN)."""
    torch.manual_seed(0)
    model = small_model()
    images, noise = torch.randn(3, 3, 32, 32), torch.rand(3, L)
    with torch.no_grad():
        loss, pred, mask = model(images, ratio, noise)
        per_patch = ((pred - model.loss_target(images)) ** 2).mean(dim=-1)
    official = (per_patch * mask).sum() / mask.sum() if ratio else per_patch.mean()
    assert torch.equal(loss, official)


def test_features_of_an_mae_model_are_its_normed_cls_token(tmp_path) -> None:
    """An MAE model given for `features` exports the pre-training file's feature: the cls token after `norm`."""
    model = small_model()
    graph = graph_for(model, "features")
    images = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        got = graph(images)
        tokens = model.forward_encoder(images, 0.0, torch.arange(L, dtype=torch.float32).expand(2, L))[0]
    torch.testing.assert_close(got, tokens[:, 0], rtol=1e-5, atol=1e-6)


def test_a_file_that_does_not_reproduce_the_model_is_not_written(tmp_path) -> None:
    """Weights holding NaN make every output NaN: the check fails and nothing is written."""
    model = small_model()
    with torch.no_grad():
        model.norm.weight[0] = float("nan")
    out = tmp_path / "bad.onnx"
    with pytest.raises(MAEError, match="does not reproduce the model: its outputs .* not finite.*nothing was written"):
        export_onnx(model, out, "features")
    assert files_in(tmp_path) == set()


def test_weights_in_a_data_file_move_into_place_with_the_model(tmp_path, monkeypatch) -> None:
    """Past torch's size threshold (1.5 GiB: ViT-H) the weights go to `NAME.data`, which the model file names; both
    are renamed into place and the file runs from there."""
    from torch.onnx._internal.exporter import _onnx_program

    monkeypatch.setattr(_onnx_program, "_LARGE_MODEL_THRESHOLD", 0)  # every model is "large"
    model = small_model()
    out = tmp_path / "mae.onnx"
    report = export_onnx(model, out, "features")
    assert report.passed and report.data_path == tmp_path / "mae.onnx.data"
    assert files_in(tmp_path) == {"mae.onnx", "mae.onnx.data"}
    assert out.stat().st_size < 100_000 < report.data_path.stat().st_size  # the weights are in the data file
    image = torch.randn(1, 3, 32, 32)
    (got,) = run(out, image=image)
    with torch.inference_mode():
        expected = graph_for(model, "features")(image)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # Replaced (only when asked) by a file that holds its weights itself: the old data file goes too.
    with pytest.raises(InvalidArgumentError, match="exists") as info:
        export_onnx(model, out, "features")
    assert info.value.argument == "overwrite"
    monkeypatch.setattr(_onnx_program, "_LARGE_MODEL_THRESHOLD", 1 << 40)
    assert export_onnx(model, out, "features", overwrite=True).data_path is None
    assert files_in(tmp_path) == {"mae.onnx"}


def test_missing_extra_names_the_install_command(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(MAEError) as info:
        export_onnx(small_model(), tmp_path / "m.onnx", "mae")
    message = str(info.value)
    assert "onnxruntime is not installed" in message and "pip install 'mae-large[onnx]'" in message
    assert len(message.splitlines()) == 1 and files_in(tmp_path) == set()


def test_bad_arguments_fail_before_any_export(tmp_path) -> None:
    model = small_model()
    cases = [
        (dict(what="onnx"), "what"),
        (dict(what="mae", mask_ratio=1.0), "mask_ratio"),
        (dict(size=64), "size"),
        (dict(dynamic_batch="yes"), "dynamic_batch"),
        (dict(tolerance=-1.0), "tolerance"),
    ]
    for kwargs, argument in cases:
        with pytest.raises(InvalidArgumentError) as info:
            export_onnx(model, tmp_path / "m.onnx", **kwargs)
        assert info.value.argument == argument
    vit = VisionTransformer(ViTConfig.from_mae(small_config(), num_classes=0))
    with pytest.raises(InvalidArgumentError, match="MaskedAutoencoderViT"):
        export_onnx(vit, tmp_path / "m.onnx", "mae")
    with pytest.raises(InvalidArgumentError, match="folder"):
        export_onnx(model, tmp_path, "features")
    assert files_in(tmp_path) == set()


@pytest.mark.slow
def test_full_size_vit_l_feature_export(vit_l_files, tmp_path) -> None:
    """ViT-L/16 at 224 from random official-format weights (encoder-only: the cls-token feature), batch 1."""
    _, encoder, _ = vit_l_files
    out = tmp_path / "vit_l_features.onnx"
    report = export_onnx(encoder, out, "features")
    assert report.passed and report.data_path is None  # 1.2 GB: one file
    assert [(t.name, t.shape) for t in report.inputs] == [("image", (1, 3, 224, 224))]
    assert [(t.name, t.shape) for t in report.outputs] == [("feature", (1, 1024))]
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    (got,) = run(out, image=images)
    out.unlink()  # 1.2 GB
    extractor = load_feature_encoder(encoder)
    assert not extractor.global_pool
    with torch.inference_mode():
        expected = extractor.forward_features(images)
    assert float((got - expected).abs().max()) <= DEFAULT_TOLERANCE
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
