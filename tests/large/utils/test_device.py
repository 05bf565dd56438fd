"""utils.device: device names, checked."""

from __future__ import annotations

import pytest
import torch

from mae.large.errors import MAEError
from mae.large.utils import device as device_module
from mae.large.utils.device import resolve_device


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(MAEError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.parametrize("name", ["cuda:abc", "meta", "gpu"])
def test_bad_device_names(name: str) -> None:
    with pytest.raises(MAEError, match="unknown device"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_index_without_cuda() -> None:
    with pytest.raises(MAEError, match="no CUDA device"):
        resolve_device("cuda:0")


def test_resolve_device_lives_in_its_leaf_module_and_takes_a_torch_device() -> None:
    assert resolve_device is device_module.resolve_device
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
