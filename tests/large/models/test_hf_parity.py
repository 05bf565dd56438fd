"""Against HuggingFace transformers' ViTMAEForPreTraining, an independent implementation (full ViT-Large)."""

from __future__ import annotations

import pytest
import torch

from mae.large import MaskedAutoencoderViT, mae_vit_large_patch16
from mae.large.checkpoints.keys import from_huggingface, to_huggingface
from tests.helpers import hf_config, relative_error, small_config, small_state_dict

transformers = pytest.importorskip("transformers")
TOL = 1e-5


@pytest.fixture(scope="module")
def pair() -> tuple[MaskedAutoencoderViT, object]:
    """A randomly initialised transformers ViT-L MAE and this model holding the same weights."""
    torch.manual_seed(0)
    ours = mae_vit_large_patch16().eval()
    hf = transformers.ViTMAEForPreTraining(hf_config(ours.config)).eval()
    converted = from_huggingface(hf.state_dict())
    assert set(converted) == set(ours.state_dict())
    ours.load_state_dict(converted, strict=True)
    return ours, hf


@pytest.mark.slow
@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_vit_large_matches_transformers(pair, norm_pix_loss: bool) -> None:
    ours, hf = pair
    ours.norm_pix_loss = norm_pix_loss
    hf.config.norm_pix_loss = norm_pix_loss
    g = torch.Generator().manual_seed(1)
    imgs = torch.randn(2, 3, 224, 224, generator=g)
    noise = torch.rand(2, 196, generator=g)
    with torch.no_grad():
        loss, pred, mask = ours(imgs, mask_ratio=0.75, noise=noise)
        out = hf(pixel_values=imgs, noise=noise)
    assert torch.equal(mask, out.mask)
    assert relative_error(pred, out.logits) <= TOL
    assert relative_error(loss, out.loss) <= TOL
    ours.norm_pix_loss = False


def test_official_small_weights_round_trip_through_hf_names() -> None:
    sd = small_state_dict()
    for new_names in (True, False):
        back = from_huggingface(to_huggingface(sd, new_names=new_names))
        assert set(back) == set(sd)
        assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_small_official_weights_in_transformers_give_the_same_outputs() -> None:
    """The official small weights, run by transformers and by this model, agree."""
    from tests.helpers import vectors

    v = vectors()
    ours = MaskedAutoencoderViT(small_config()).eval()
    ours.load_state_dict(small_state_dict())
    hf = transformers.ViTMAEForPreTraining(hf_config(ours.config)).eval()
    missing, unexpected = hf.load_state_dict(to_huggingface(small_state_dict()), strict=False)
    assert not unexpected and not [k for k in missing if "position_embeddings" not in k]
    with torch.no_grad():
        hf.vit.embeddings.position_embeddings.copy_(ours.pos_embed)
        loss, pred, mask = ours(v["input.imgs"], 0.75, v["input.noise"])
        out = hf(pixel_values=v["input.imgs"], noise=v["input.noise"])
    assert torch.equal(mask, out.mask)
    assert relative_error(pred, out.logits) <= TOL
    assert relative_error(loss, out.loss) <= TOL
