"""The model against the official implementation's own outputs (tests/reference, small configuration)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import official_target, relative_error, small_model, vectors

RATIOS = {"r75": 0.75, "r50": 0.5, "r0": 0.0}
TOL = 1e-5


@pytest.mark.parametrize("tag", sorted(RATIOS))
def test_encoder_matches_official(tag: str) -> None:
    v = vectors()
    model = small_model()
    with torch.no_grad():
        latent, mask, ids_restore = model.forward_encoder(v["input.imgs"], RATIOS[tag], v["input.noise"])
    assert latent.shape == v[f"expected.{tag}_pix.latent"].shape
    assert relative_error(latent, v[f"expected.{tag}_pix.latent"]) <= TOL
    assert torch.equal(mask, v[f"expected.{tag}_pix.mask"])
    assert torch.equal(ids_restore, v[f"expected.{tag}_pix.ids_restore"])


@pytest.mark.parametrize("mode", ["pix", "normpix"])
@pytest.mark.parametrize("tag", sorted(RATIOS))
def test_forward_matches_official(tag: str, mode: str) -> None:
    v = vectors()
    model = small_model(norm_pix_loss=(mode == "normpix"))
    with torch.no_grad():
        loss, pred, mask = model(v["input.imgs"], mask_ratio=RATIOS[tag], noise=v["input.noise"])
    expected = f"expected.{tag}_{mode}"
    assert relative_error(pred, v[f"{expected}.pred"]) <= TOL
    assert torch.equal(mask, v[f"{expected}.mask"])
    official_loss = v[f"{expected}.loss"].reshape(())
    if tag == "r0":
        # The official loss is 0/0 = NaN here; ours is defined as the mean over all patches.
        assert torch.isnan(official_loss)
        # Expected: the official prediction against the official target, patchified and normalised here by
        # hand (not with the model's own loss_target, which would agree with itself whatever it computed).
        target = official_target(v["input.imgs"], model.config.patch_size, norm_pix_loss=(mode == "normpix"))
        per_patch = ((v[f"{expected}.pred"].double() - target) ** 2).mean(-1)
        assert torch.isfinite(loss)
        assert relative_error(loss, per_patch.mean()) <= TOL
    else:
        assert relative_error(loss, official_loss) <= TOL


def test_seeded_mask_matches_official(rng_state) -> None:
    """torch.manual_seed(2) then forward with no noise draws the same mask as the official code."""
    v = vectors()
    model = small_model()
    torch.manual_seed(2)
    with torch.no_grad():
        _, _, mask = model(v["input.imgs"], mask_ratio=0.75)
    assert torch.equal(mask, v["expected.seed2_r75.mask"])
    # A different seed gives a different mask: the check above can fail.
    torch.manual_seed(3)
    with torch.no_grad():
        _, _, other = model(v["input.imgs"], mask_ratio=0.75)
    assert not torch.equal(other, mask)


def test_patchify_matches_official() -> None:
    v = vectors()
    assert torch.equal(small_model().patchify(v["input.imgs"]), v["expected.patchify"])


def test_reconstruct_agrees_with_forward() -> None:
    v = vectors()
    model = small_model()
    with torch.no_grad():
        out = model.reconstruct(v["input.imgs"], 0.75, v["input.noise"])
        loss, pred, mask = model(v["input.imgs"], 0.75, v["input.noise"])
    assert torch.equal(out.pred, pred) and torch.equal(out.mask, mask)
    assert relative_error(out.loss, loss) <= 1e-6
    # Every image has the same number of removed patches, so the batch loss is the per-image mean.
    assert relative_error(out.per_image_loss.mean(), loss) <= 1e-6
    assert relative_error(out.latent, v["expected.r75_pix.latent"]) <= TOL
