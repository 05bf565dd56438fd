"""What a checkpoint's decoder predicts: pixels, or per-patch normalised pixels (`norm_pix_loss`).

The official pre-training files (`*_full.pth`) were trained with `--norm_pix_loss`: their decoder predicts
each patch normalised to mean 0 and variance 1, and drawn as RGB the prediction looks grey and flat. The
visualisation files predict pixels. A reconstruction must know which, to compute the loss against the right
target and to draw the prediction (a normalised one is drawn with the visible patches' statistics).

`resolve_target` decides, in this order: what the caller asked for; the catalogue entry of the file's name;
an encoder-only file has a random decoder, so pixels (the requirements' ~1.87 benchmark); otherwise
`detect_target` measures the predictions themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import catalog
from .errors import invalid_argument


@dataclass(frozen=True)
class TargetChoice:
    target: catalog.Target  # "pixels" | "norm-pix"
    how: str  # why: "asked for", "catalogue: <file> predicts ...", "detected: ..."

    @property
    def norm_pix(self) -> bool:
        return self.target == "norm-pix"


def known_target(path: Path | None, kind: str | None) -> TargetChoice | None:
    """The target without running the model, when it can be known: the catalogue's entry for the file
    name, pixels for an encoder-only file (random decoder) or a random init. None: detect it."""
    if path is None or kind == "random-init":
        return TargetChoice("pixels", "random init: its random decoder is measured against pixels")
    if kind == "encoder-only":
        return TargetChoice("pixels", "encoder-only file: its random decoder is measured against pixels")
    entry = catalog.entry_for_file(Path(path).name)
    if entry is not None and entry.target is not None:
        return TargetChoice(entry.target, f"catalogue: {entry.filename} predicts "
                                          f"{'normalised pixels' if entry.target == 'norm-pix' else 'pixels'}")
    return None


def resolve_target(requested: str, path: Path | None, kind: str | None) -> TargetChoice | None:
    """`requested` ("auto", "pixels", "norm-pix") -> the choice; None when "auto" must be detected."""
    if requested not in catalog.TARGETS:
        raise invalid_argument("target", f"target must be one of {', '.join(catalog.TARGETS)}, got {requested!r}")
    if requested != "auto":
        return TargetChoice(requested, "asked for")  # type: ignore[arg-type]
    return known_target(path, kind)


# A normalised prediction has per-patch means near 0 and per-patch standard deviations near 1; a pixel
# prediction of ImageNet-normalised images has means spread over about +-1 and smaller spreads inside a
# patch (neighbouring pixels are alike). The thresholds sit between the two.
_MAX_MEAN = 0.15
_MIN_STD = 0.5


def detect_target(pred: torch.Tensor, mask: torch.Tensor) -> TargetChoice:
    """Tell a norm-pix decoder from a pixel decoder by the statistics of its predictions on the removed
    patches: pred (N, L, p*p*C), mask (N, L) with 1 = removed."""
    removed = mask.bool()
    if not bool(removed.any()):
        removed = torch.ones_like(removed)
    patches = pred.float()[removed]  # (M, p*p*C)
    mean_abs = patches.mean(dim=-1).abs().mean().item()
    std = patches.std(dim=-1).mean().item()
    stats = f"|patch mean| {mean_abs:.3f}, patch std {std:.3f} on {patches.shape[0]} removed patches"
    if mean_abs < _MAX_MEAN and std > _MIN_STD:
        return TargetChoice("norm-pix", f"detected: predictions look normalised per patch ({stats})")
    return TargetChoice("pixels", f"detected: predictions look like pixels ({stats})")
