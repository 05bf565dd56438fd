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
