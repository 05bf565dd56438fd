"""Where a job's model comes from: a checkpoint of any layout (or a seeded random init), read once per process.

`ModelSource` names the file and how to read it; a job calls `mae(device)` or `encoder(device, pool)` in each
process (a torchrun rank loads onto its own device). A model the caller built is used as it is
(`as_source(model)`). The defaults the commands share live here too: the encoder-view files
(`encoder_view_checkpoint`) and the check that a reconstruction has a trained decoder (`require_decoder`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import catalog
from ..checkpoints.folders import checkpoint_inputs
from ..checkpoints.read import read_checkpoint
from ..config import MAEConfig, Size2D
from ..errors import CheckpointNotFoundError, EncoderOnlyCheckpointError
from ..models.mae import MaskedAutoencoderViT
from ..models.vit import VisionTransformer, ViTConfig
from ..utils.device import resolve_device

__all__ = ["ModelSource", "as_source", "checkpoint_kind", "encoder_view_checkpoint", "require_decoder"]


@dataclass(frozen=True)
class ModelSource:
    """A checkpoint to load (None: the official random init, seeded) at the default architecture (ViT-L/16), at
    input size `size` (None: the architecture's own), with the loading chain's options; or `model`, a model
    already built, used as it is (it is not moved)."""

    checkpoint: Path | None = None
    size: Size2D | None = None
    trust: bool = False
    allow_nonfinite: bool = False
    seed: int = 0  # the random init, and the random decoder of an encoder-only file: runs are reproducible
    model: nn.Module | None = None
    warn: bool = True  # the load report's warnings as `UserWarning`s (off where the report is shown another way)

    def inputs(self) -> list[Path]:
        """The files loading reads (a model folder's every file): what no output of the job may replace."""
        return checkpoint_inputs(self.checkpoint) if self.checkpoint is not None and self.model is None else []

    @property
    def device(self) -> torch.device | None:
        """The device of a given model (None: the job chooses)."""
        return next(self.model.parameters()).device if self.model is not None else None

    def mae(self, device: torch.device | str = "cpu") -> MaskedAutoencoderViT:
        """The masked autoencoder (`catalog.DEFAULT_ARCHITECTURE`) from the checkpoint, fast path (meta device + mmap),
        or seeded random init; eval mode."""
        if self.model is not None:
            if not isinstance(self.model, MaskedAutoencoderViT):
                raise TypeError(f"this job needs a MaskedAutoencoderViT, got {type(self.model).__name__}")
            return self.model
        target = resolve_device(device)
        size = {"img_size": self.size} if self.size else {}
        torch.manual_seed(self.seed)
        if self.checkpoint is None:
            return MaskedAutoencoderViT(MAEConfig.from_architecture(None, **size)).to(target).eval()
        data = read_checkpoint(self.checkpoint, trust=self.trust)  # read once: its run may say its architecture
        config = MAEConfig.from_run(data.run, **size) or MAEConfig.from_architecture(None, **size)
        with self._warnings():
            return MaskedAutoencoderViT.from_pretrained(data, config, trust=self.trust, device=target,
                                                        allow_nonfinite=self.allow_nonfinite).eval()

    def encoder(self, device: torch.device | str = "cpu", pool: str | None = None) -> VisionTransformer:
        """The feature extractor over the checkpoint's encoder, pooled as `pool` (None: the file's own,
        `features.load_feature_encoder`)."""
        if self.model is not None:
            if not isinstance(self.model, VisionTransformer):
                raise TypeError(f"this job needs a VisionTransformer feature extractor, got {type(self.model).__name__}")
            return self.model
        from ..evaluate.features import load_feature_encoder

        if self.checkpoint is None:
            raise CheckpointNotFoundError("features need a trained encoder; name a checkpoint")
        size = {"img_size": self.size} if self.size else {}
        data = read_checkpoint(self.checkpoint, trust=self.trust)  # read once: its run may say its architecture
        run = MAEConfig.from_run(data.run, **size)
        config = ViTConfig.from_mae(run) if run is not None else ViTConfig.from_architecture(None, **size)
        with self._warnings():
            return load_feature_encoder(data, pool, config, trust=self.trust, device=device,
                                        allow_nonfinite=self.allow_nonfinite)

    @contextlib.contextmanager
    def _warnings(self) -> Iterator[None]:
        with warnings.catch_warnings():
            if not self.warn:
                warnings.simplefilter("ignore", UserWarning)
            yield


def as_source(model: ModelSource | nn.Module | str | Path | None) -> ModelSource:
    """A `ModelSource` from a model, a checkpoint path, or None (a seeded random init)."""
    if isinstance(model, ModelSource):
        return model
    if isinstance(model, nn.Module):
        return ModelSource(model=model)
    return ModelSource(Path(model) if model is not None else None)


def checkpoint_kind(model: Any) -> str:
    """full / encoder-only / partial / fine-tuned from the model's load report, or random-init when nothing was loaded."""
    report = getattr(model, "load_report", None)
    return "random-init" if report is None else report.kind


def require_decoder(model: MaskedAutoencoderViT, allow_random_decoder: bool) -> None:
    """Refuse to reconstruct with an encoder-only checkpoint unless explicitly allowed."""
    report = model.load_report
    if report is not None and report.kind == "encoder-only" and not allow_random_decoder:
        raise EncoderOnlyCheckpointError(
            f"{report.path} holds the encoder only, so the decoder would be random and the reconstruction "
            f"meaningless; {catalog.full_checkpoint_advice()}, or pass allow_random_decoder=True to draw it anyway"
        )


def encoder_view_checkpoint(checkpoint: str | Path | None) -> tuple[Path, str | None]:
    """`checkpoint`, or the first present of `catalog.ENCODER_VIEW` with a note saying so (the files come from
    different training runs); none present is a `CheckpointNotFoundError` naming them all."""
    if checkpoint is not None:
        return Path(checkpoint), None
    candidates = [entry.default_path for entry in catalog.ENCODER_VIEW]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        error = CheckpointNotFoundError(
            f"no checkpoint was named and none of {', '.join(map(str, candidates))} exists; download one "
            f"(`mae-large download {catalog.ENCODER_VIEW[0].name}`) or name a file")
        error.argument = "checkpoint"
        raise error
    others = ", ".join(str(p) for p in candidates if p != found)
    return found, (f"checkpoint: {found} (the first present of it, {others}; they come from different training "
                   "runs; --checkpoint chooses)")

