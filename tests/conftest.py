import os
import random
import zlib

import numpy as np
import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# Two cores: keep torch from oversubscribing them when several tests build large models.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def seeded(request):
    """Every test starts from generators seeded by its own name (and `MAE_TEST_SEED`, default 0): a test that draws
    from the global generators gets the same draws whatever runs before it, in any order, on any machine. Running
    the suite under other values of `MAE_TEST_SEED` finds a test whose verdict depends on the particular draw."""
    seed = zlib.crc32(f"{os.environ.get('MAE_TEST_SEED', '0')}:{request.node.nodeid}".encode())
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    yield


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


def _torch_globals() -> dict[str, object]:
    return {
        "grad enabled": torch.is_grad_enabled(),
        "inference mode": torch.is_inference_mode_enabled(),
        "cpu autocast": torch.is_autocast_enabled("cpu"),
        "default dtype": torch.get_default_dtype(),
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "default device": str(torch.get_default_device()),
    }


@pytest.fixture(autouse=True)
def torch_globals_unchanged():
    """No test (and no library code it runs) may leave torch's global state changed for the next one."""
    before = _torch_globals()
    yield
    after = _torch_globals()
    assert after == before, {k: (before[k], after[k]) for k in before if before[k] != after[k]}


@pytest.fixture(scope="session")
def digits_tree(tmp_path_factory):
    """`tests.helpers.write_digits_tree` with 20 images per class (200 real digits, 10 class folders), written once."""
    from tests.helpers import write_digits_tree

    return write_digits_tree(tmp_path_factory.mktemp("digits"), per_class=20)
