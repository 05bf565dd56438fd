"""Devices by name: `resolve_device("auto" | "cpu" | "cuda" | "cuda:N" | "mps")`.

A leaf module (torch and `errors` only), so that the loading chain, the models' `from_pretrained` and the
jobs all turn a device argument into a `torch.device` the same way, and an unavailable device is a
`DeviceError` sentence instead of torch's `AssertionError: Torch not compiled with CUDA enabled`.
"""

from __future__ import annotations

import torch

from ..errors import DeviceError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """auto -> cuda if available, else mps if available, else cpu. Unavailable devices raise `DeviceError`.

    A `torch.device` is checked the same way as its name."""
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise DeviceError(f"device must be a name such as 'cpu' or 'cuda:0' or a torch.device, got {name!r}")
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    unknown = f"unknown device {name!r}; use device='auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(unknown) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} was asked for but no CUDA device is available; use device='cpu' or 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r}: there are only {torch.cuda.device_count()} CUDA devices")
    elif device.type == "mps":
        if not _mps_available():
            raise DeviceError("device 'mps' was asked for but MPS is not available; use device='cpu' or 'auto'")
    elif device.type != "cpu":
        raise DeviceError(unknown)
    return device


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
