"""What a checkpoint's decoder predicts: pixels, or per-patch normalised pixels (`norm_pix_loss`).

The official pre-training files (`*_full.pth`) were trained with `--norm_pix_loss`: their decoder predicts
each patch normalised to mean 0 and variance 1, and drawn as RGB the prediction looks grey and flat. The
visualisation files predict pixels. A reconstruction must know which, to compute the loss against the right
target and to draw the prediction (a normalised one is drawn with the visible patches' statistics).

`resolve_target` decides, in this order: what the caller asked for; an encoder-only file has a random decoder,
so pixels (the requirements' ~1.87 benchmark); the catalogue entry of the file's name; a transformers model
folder's `config.json` (`norm_pix_loss`); otherwise `detect_target` measures the predictions themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import catalog
from ..checkpoints.folders import open_folder
from ..errors import MAEError, invalid_argument


@dataclass(frozen=True)
class TargetChoice:
    target: catalog.Target  # "pixels" | "norm-pix"
    how: str  # why: "asked for", "catalogue: <file> predicts ...", "detected: ..."

    @property
    def norm_pix(self) -> bool:
        return self.target == "norm-pix"


def known_target(path: Path | None, kind: str | None, run: Mapping[str, Any] | None = None) -> TargetChoice | None:
    """The target without running the model, when it can be known: the catalogue's entry for the file
    name, pixels for an encoder-only file (random decoder) or a random init, what a training run recorded in its
    checkpoint (`run`, its `args`). None: detect it."""
    if path is None or kind == "random-init":
        return TargetChoice("pixels", "random init: its random decoder is measured against pixels")
    if kind == "encoder-only":
        return TargetChoice("pixels", "encoder-only file: its random decoder is measured against pixels")
    if isinstance(run, Mapping) and run.get("target") in ("pixels", "norm-pix"):
        return TargetChoice(run["target"], f"the pre-training run that wrote {Path(path).name} trained it on "
                                           f"{'normalised pixels' if run['target'] == 'norm-pix' else 'pixels'}")
    entry = catalog.entry_for_file(Path(path).name)
    if entry is not None and entry.target is not None:
        return TargetChoice(entry.target, f"catalogue: {entry.filename} predicts "
                                          f"{'normalised pixels' if entry.target == 'norm-pix' else 'pixels'}")
    return _folder_target(Path(path))


def _folder_target(path: Path) -> TargetChoice | None:
    """A transformers model folder states its target: `norm_pix_loss` in its `config.json`."""
    if not path.is_dir():
        return None
    try:
        config = open_folder(path).config or {}
    except MAEError:
        return None  # not a readable model folder: the loader says why
    value = config.get("norm_pix_loss")
    if not isinstance(value, bool):
        return None
    return TargetChoice("norm-pix" if value else "pixels", f"config.json: norm_pix_loss={str(value).lower()}")


def resolve_target(requested: str, path: Path | None, kind: str | None,
                   run: Mapping[str, Any] | None = None) -> TargetChoice | None:
    """`requested` ("auto", "pixels", "norm-pix") -> the choice; None when "auto" must be detected."""
    if requested not in catalog.TARGETS:
        raise invalid_argument("target", f"target must be one of {', '.join(catalog.TARGETS)}, got {requested!r}")
    if requested != "auto":
        return TargetChoice(requested, "asked for")  # type: ignore[arg-type]
    return known_target(path, kind, run)


# A decoder was trained to bring its predictions close to one of the two targets: it is much closer to that one
# (_CLEARLY), and close in absolute terms, its error well below the spread of that target (_EXPLAINS: a trained
# ViT-L's loss is about 0.4 of it). Otherwise (a random decoder, noise as input) pixels are assumed, and said so.
_CLEARLY = 0.8
_EXPLAINS = 0.75


def detect_target(pred: torch.Tensor, mask: torch.Tensor, pixels: torch.Tensor) -> TargetChoice:
    """Tell a norm-pix decoder from a pixel decoder by which target its predictions on the removed patches
    are closer to: pred (N, L, p*p*C), mask (N, L) with 1 = removed, pixels (N, L, p*p*C) the patchified
    input images (`model.patchify`)."""
    removed = mask.bool()
    if not bool(removed.any()):
        removed = torch.ones_like(removed)
    p = pred.float()[removed]  # (M, p*p*C)
    x = pixels.float()[removed]
    normalised = (x - x.mean(dim=-1, keepdim=True)) / (x.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5
    to_pixels = ((p - x) ** 2).mean().item()
    to_norm = ((p - normalised) ** 2).mean().item()
    stats = f"squared error {to_pixels:.3f} to pixels, {to_norm:.3f} to normalised pixels on {p.shape[0]} removed patches"
    if to_norm < _CLEARLY * to_pixels and to_norm < _EXPLAINS * normalised.var().item():
        return TargetChoice("norm-pix", f"detected: the predictions match normalised pixels ({stats})")
    if to_pixels < _CLEARLY * to_norm and to_pixels < _EXPLAINS * x.var().item():
        return TargetChoice("pixels", f"detected: the predictions match pixels ({stats})")
    return TargetChoice("pixels", f"neither target fits clearly ({stats}; an untrained decoder, or noise as input): "
                                  "pixels assumed; pass the target to choose")
