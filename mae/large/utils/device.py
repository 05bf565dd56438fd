"""Devices by name, mixed precision on them, and what to say of a result that is not finite.

`resolve_device("auto" | "cpu" | "cuda" | "cuda:N" | "mps")`: the loading chain, the models' `from_pretrained`
and the jobs all turn a device argument into a `torch.device` the same way, and an unavailable device is a
`DeviceError` sentence instead of torch's `AssertionError: Torch not compiled with CUDA enabled`.
`autocast_context` (a dtype) and `resolve_amp` / `autocast` (the training runs' `--amp` names) are the one
place that opens an autocast region; `nonfinite_fix` is the advice every job gives for a NaN / Inf result.
A leaf module (torch and `errors` only).
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import DeviceError, invalid_argument

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
_AMP_DTYPES: dict[str, torch.dtype] = {"off": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass when a dtype below float32 is asked for."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_amp(amp: str, device: torch.device) -> str:
    """`auto` -> bf16 on a GPU that has it, fp16 (with a gradient scaler) on one that does not, off on the CPU
    (bf16 there is exact in its own way but slower without AMX); explicit choices are kept."""
    if amp not in AMP_CHOICES:
        raise invalid_argument("amp", f"amp must be {', '.join(AMP_CHOICES)}, got {amp!r}")
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "off"


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast region of a forward pass for a resolved `amp` (nothing for `off`)."""
    return autocast_context(device, _AMP_DTYPES[amp])


def nonfinite_fix(dtype: torch.dtype) -> str:
    """The fix to suggest for a result that is not finite, computed in `dtype`."""
    precision = (f"run with dtype=torch.float32 (the {str(dtype).removeprefix('torch.')} forward pass may overflow) or "
                 if dtype != torch.float32 else "")
    return f"{precision}check the checkpoint's weights for NaN or infinite values (summarize or inspect it)"
