import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# Two cores: keep torch from oversubscribing them when several tests build large models.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def rng_state():
    """Restore the global RNG after a test that seeds it."""
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)


@pytest.fixture(scope="session")
def vit_l_files(tmp_path_factory):
    """A full and an encoder-only ViT-L checkpoint in the official format, from a seeded random init.

    Session-scoped: writing 2.5 GB once is enough for every test that needs real ViT-L weights.
    """
    from mae.large import MAEConfig, MaskedAutoencoderViT
    from tests.helpers import encoder_only, save_official

    folder = tmp_path_factory.mktemp("vitl")
    state = torch.get_rng_state()
    torch.manual_seed(123)
    sd = MaskedAutoencoderViT(MAEConfig.vit_large()).state_dict()
    torch.set_rng_state(state)
    full = save_official(folder / "mae_visualize_vit_large.pth", sd)
    enc = save_official(folder / "mae_pretrain_vit_large.pth", encoder_only(sd))
    return full, enc, sd
