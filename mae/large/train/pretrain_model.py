"""What a pre-training run trains: the masked autoencoder from scratch, from a full checkpoint (with its decoder),
or from an encoder (a fresh decoder); the decoder's target; a frozen encoder; the optimiser's weight-decay groups.

The groups are timm 0.3.2's `optim_factory.add_weight_decay`, as `main_pretrain.py` builds AdamW: no weight decay
for a parameter with one dimension or a name ending in `.bias`, weight decay for the rest (`cls_token` and
`mask_token` are (1, 1, D): decayed); frozen parameters (the fixed position tables, a frozen encoder) are in no
group. The list is [no-decay, decay], in `named_parameters` order, as the official function returns it.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoints.classify import classify, key_part
from ..checkpoints.read import CheckpointData, read_checkpoint
from ..config import MAEConfig
from ..errors import IncompatibleCheckpointError, invalid_argument
from ..models.mae import MaskedAutoencoderViT
from ..models.target import TargetChoice, known_target
from ..utils.keyed import derive_seed

log = logging.getLogger(__name__)

__all__ = ["ENCODER_PREFIXES", "StartedModel", "build_model", "freeze_encoder", "weight_decay_groups"]

# The encoder's parameters, by the official names (the rest, `mask_token` and `decoder_*`, is the decoder).
ENCODER_PREFIXES: tuple[str, ...] = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")


@dataclasses.dataclass(frozen=True)
class StartedModel:
    """The model a run starts from, and what to say about it."""

    model: MaskedAutoencoderViT
    start: str  # scratch | full | encoder
    target: TargetChoice  # what the decoder predicts
    notes: list[str]  # one line each: a fresh decoder, a decoder of other sizes, a target against the file's


def build_model(config: MAEConfig, checkpoint: str | Path | CheckpointData | None, *, target: str, seed: int,
                device: torch.device, trust: bool = False) -> StartedModel:
    """The model of a run: `config`'s sizes (the decoder's included), from `checkpoint` when given.

    Args:
        config: the architecture, input size and decoder (its `norm_pix_loss` is set from the target here).
        checkpoint: None (the official init, seeded by `seed`), a full checkpoint of any layout (encoder and
            decoder continue; a decoder of other sizes than `config`'s starts fresh, said), or an encoder-only one
            (a fresh decoder with the official init, said).
        target: `auto` (a continued decoder's own target: the catalogue, a folder's config.json; else norm-pix, the
            recipe's), `norm-pix` or `pixels`; asking for another target than a continued decoder's is said.
        seed: the official init of everything the file does not hold is drawn from `derive_seed(seed, "init")`.
        device: where the model goes.
        trust: read a pickle with `weights_only=False` (its pickle may run code).
    """
    if target not in ("auto", "norm-pix", "pixels"):
        raise invalid_argument("target", f"target must be auto, norm-pix or pixels, got {target!r}")
    notes: list[str] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        if checkpoint is None:
            choice = TargetChoice("pixels" if target == "pixels" else "norm-pix",
                                  "asked for" if target != "auto" else "the recipe's (PRETRAIN.md: norm_pix_loss)")
            model = MaskedAutoencoderViT(config.replace(norm_pix_loss=choice.norm_pix))
            return StartedModel(model.to(device), "scratch", choice, notes)
        data = checkpoint if isinstance(checkpoint, CheckpointData) else read_checkpoint(checkpoint, trust=trust)
        path = data.path
        data, start, note = _fit_decoder(data, config)
        if note:
            notes.append(note)
        file_target = known_target(path, "full", data.run) if start == "full" else None
        choice = _choose_target(target, file_target, start, notes)
        with warnings.catch_warnings():  # a fresh decoder is what pre-training from an encoder means: said below
            warnings.simplefilter("ignore", UserWarning)
            model = MaskedAutoencoderViT.from_pretrained(data, config.replace(norm_pix_loss=choice.norm_pix),
                                                         trust=trust, device=device)
    if start == "encoder":
        notes.append(f"{path.name} holds the encoder only: the decoder starts from the official init "
                     "(seeded), as pre-training from scratch does")
    return StartedModel(model, start, choice, notes)


def _fit_decoder(data: CheckpointData, config: MAEConfig) -> tuple[CheckpointData, str, str | None]:
    """The file's tensors to load: all of a full file whose decoder has `config`'s sizes ("full"); the encoder alone
    of an encoder-only file, or of a full one whose decoder has other sizes ("encoder", said)."""
    expected = MaskedAutoencoderViT.expected_state(config)
    result = classify(data.state_dict, expected, data.classifier)
    if result.kind in ("full", "encoder-only"):
        return data, "full" if result.kind == "full" else "encoder", None
    encoder = {k: v for k, v in data.state_dict.items() if key_part(k) == "encoder"}
    if classify(encoder, expected).kind == "encoder-only":
        theirs = _decoder_sizes(data.state_dict)
        ours = f"{config.decoder_depth} blocks of {config.decoder_embed_dim}"
        return (dataclasses.replace(data, state_dict=encoder), "encoder",
                f"the file's decoder ({theirs}) is not the run's ({ours}): the run's decoder starts fresh (official "
                "init), the encoder continues")
    hint = f"; {result.hint}" if result.hint else ""
    raise IncompatibleCheckpointError(f"{data.path} does not fit {config.architecture_name}: {result.problem()}{hint}; "
                                      "pre-train from a checkpoint of this architecture, or from scratch")


def _decoder_sizes(state: Mapping[str, torch.Tensor]) -> str:
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("decoder_blocks.")}
    width = state["decoder_embed.weight"].shape[0] if "decoder_embed.weight" in state else "?"
    return f"{len(blocks)} blocks of {width}"


def _choose_target(asked: str, file_target: TargetChoice | None, start: str, notes: list[str]) -> TargetChoice:
    """auto: a continued decoder's own target (known, else norm-pix assumed and said); a fresh one: the recipe's."""
    if start != "full":
        if asked == "auto":
            return TargetChoice("norm-pix", "the recipe's (PRETRAIN.md: norm_pix_loss), for a fresh decoder")
        return TargetChoice(asked, "asked for")  # type: ignore[arg-type]
    if asked == "auto":
        if file_target is not None:
            return file_target
        notes.append("what the continued decoder predicts is not known from its file: norm-pix assumed (the recipe's); "
                     "say target='pixels' for a decoder trained on pixels")
        return TargetChoice("norm-pix", "assumed (the recipe's)")
    if file_target is not None and file_target.target != asked:
        notes.append(f"the continued decoder predicts {file_target.target} ({file_target.how}) and the run trains it "
                     f"on {asked}: it has to relearn its output")
    return TargetChoice(asked, "asked for")  # type: ignore[arg-type]


def freeze_encoder(model: MaskedAutoencoderViT) -> int:
    """Train the decoder alone (and `mask_token`): the encoder's parameters stop requiring gradients (they are then
    in no optimiser group and stay bit for bit). Returns how many tensors were frozen."""
    frozen = 0
    for name, param in model.named_parameters():
        if name.startswith(ENCODER_PREFIXES) and param.requires_grad:
            param.requires_grad_(False)
            frozen += 1
    return frozen


def weight_decay_groups(model: nn.Module, weight_decay: float, skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """timm 0.3.2 `add_weight_decay`: [no-decay group, decay group] over the parameters that require gradients."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # frozen weights
        if param.dim() == 1 or name.endswith(".bias") or name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
