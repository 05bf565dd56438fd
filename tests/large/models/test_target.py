"""Which target a decoder predicts: the catalogue, the encoder-only rule, and detection on two synthetic
decoders (one that predicts pixels, one that predicts normalised pixels) built here."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from mae.large.jobs.forward import detect_target_on_files, maskings_for
from mae.large.models.target import TargetChoice, detect_target, known_target, resolve_target
from tests.cli.conftest import write_image
from tests.helpers import HF_FIXTURES, small_model


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True) + 1e-6) ** 0.5


def synthetic_decoder(model, predicts: str, noise: float = 0.3) -> None:
    """Make `model`'s decoder predict the (normalised) pixels of the images it is given, plus noise: a stand-in
    for a trained decoder of either kind."""
    seen: dict[str, torch.Tensor] = {}
    model.patch_embed.register_forward_pre_hook(lambda module, args: seen.update(imgs=args[0]))
    g = torch.Generator().manual_seed(0)

    def forward_decoder(latent, ids_restore):
        pixels = model.patchify(seen["imgs"])
        clean = _normalised(pixels) if predicts == "norm-pix" else pixels
        return clean + noise * torch.randn(clean.shape, generator=g)

    model.forward_decoder = forward_decoder


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    return [write_image(tmp_path / f"p{i}.png", size=(32, 32), seed=i) for i in range(3)]


@pytest.mark.parametrize("predicts", ["pixels", "norm-pix"])
def test_detection_tells_the_two_decoders_apart(predicts, photos) -> None:
    model = small_model()
    synthetic_decoder(model, predicts)
    choice = detect_target_on_files(model, photos, maskings_for(model, ratios=[0.75])[0])
    assert choice.target == predicts and choice.how.startswith("detected")


def test_an_untrained_decoder_is_ambiguous_and_pixels_are_assumed(photos) -> None:
    torch.manual_seed(0)
    from mae.large import MaskedAutoencoderViT
    from tests.helpers import small_config

    model = MaskedAutoencoderViT(small_config()).eval()
    choice = detect_target_on_files(model, photos, maskings_for(model, ratios=[0.75])[0])
    assert choice.target == "pixels" and "neither target fits clearly" in choice.how


def test_detect_target_on_tensors() -> None:
    pixels = torch.randn(2, 16, 192) * 0.3 + torch.randn(2, 16, 1)  # patches with their own means
    mask = torch.ones(2, 16)
    assert detect_target(pixels + 0.05 * torch.randn_like(pixels), mask, pixels).target == "pixels"
    assert detect_target(_normalised(pixels), mask, pixels).target == "norm-pix"


def test_a_prediction_only_somewhat_closer_to_one_target_is_not_decided() -> None:
    """Detection needs the prediction *clearly* closer to one target: its squared error to it below 0.8 of the
    error to the other. Predictions on the segment between the pixels x and their normalisation n (the official
    `norm_pix_loss` target: (x - mean) / sqrt(var + 1e-6), unbiased var), p = n + t (x - n), have errors
    t^2 d to n and (1 - t)^2 d to x (d = mean (x - n)^2): a ratio of (t / (1 - t))^2, 0.9 here (undecided;
    a threshold of 1.0 would say norm-pix) and 0.7 (norm-pix), both far below the spread of n."""
    g = torch.Generator().manual_seed(0)
    pixels = 1.5 * torch.randn(2, 16, 12, generator=g) + 0.5 * torch.randn(2, 16, 1, generator=g)
    mean, var = pixels.mean(-1, keepdim=True), pixels.var(-1, keepdim=True)
    normalised = (pixels - mean) / (var + 1.0e-6) ** 0.5
    mask = torch.ones(2, 16)
    d = ((pixels - normalised) ** 2).mean().item()
    for ratio, expected in ((0.9, "neither target fits clearly"), (0.7, "detected: the predictions match normalised")):
        t = math.sqrt(ratio) / (1 + math.sqrt(ratio))
        pred = normalised + t * (pixels - normalised)
        to_norm, to_pixels = ((pred - normalised) ** 2).mean().item(), ((pred - pixels) ** 2).mean().item()
        assert to_norm / to_pixels == pytest.approx(ratio, rel=1e-4)
        assert to_norm == pytest.approx(t * t * d, rel=1e-4) and to_norm < 0.75 * normalised.var().item()
        choice = detect_target(pred, mask, pixels)
        assert choice.how.startswith(expected), (ratio, choice)
        assert choice.target == ("pixels" if ratio == 0.9 else "norm-pix")


def test_known_targets() -> None:
    assert known_target(Path("data/mae_pretrain_vit_large_full.pth"), "full").target == "norm-pix"
    assert known_target(Path("x/mae_visualize_vit_large.pth"), "full").target == "pixels"
    assert known_target(Path("data/mae_pretrain_vit_large.pth"), "encoder-only").target == "pixels"
    assert known_target(None, "random-init").target == "pixels"
    assert known_target(Path("my_run.pth"), "full") is None  # detected when run
    assert resolve_target("norm-pix", Path("my_run.pth"), "full").how == "asked for"
    with pytest.raises(ValueError, match="target must be one of"):
        resolve_target("rgb", None, None)


def test_a_transformers_folder_states_its_target_in_config_json(tmp_path: Path) -> None:
    hub = HF_FIXTURES / "hub" / "models--facebook--vit-mae-large"  # the hub's config.json: norm_pix_loss false
    assert known_target(hub, "full") == TargetChoice("pixels", "config.json: norm_pix_loss=false")
    folder = tmp_path / "norm_pix"
    shutil.copytree(HF_FIXTURES / "tf5" / "pretraining-safetensors", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "norm_pix_loss": True}))
    assert known_target(folder, "full") == TargetChoice("norm-pix", "config.json: norm_pix_loss=true")
    assert resolve_target("pixels", folder, "full").target == "pixels"  # asked for wins
    assert known_target(folder, "encoder-only").target == "pixels"  # a random decoder whatever the config says
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "norm_pix_loss"}))
    assert known_target(folder, "full") is None  # not stated: detected from the predictions
