"""The models' loading filters: from what a checkpoint holds (classified) to exactly what a model loads.

timm's `checkpoint_filter_fn` idea, one filter per model, beside the models: `fit_mae_state` for the masked
autoencoder (regenerated position tables, a random decoder said loudly) and `fit_classifier_state` for the ViT
classifier (the encoder of any MAE file, its final norm or a fine-tuned `fc_norm` and head). The loading chain
(`checkpoints.load`) calls them through the models' `from_pretrained`; each returns a `Fitted` (the state to load,
what it did, what to warn about) and raises `IncompatibleCheckpointError` naming what does not fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch import nn

from .. import catalog
from ..checkpoints import load
from ..checkpoints.classify import Classification, ExpectedState, Part, is_regenerable
from ..checkpoints.keys import CLASSIFIER_PREFIXES, DECODER_PREFIXES, StateDict
from ..checkpoints.load import Fitted
from ..checkpoints.read import CheckpointData
from ..config import MAEConfig
from ..errors import IncompatibleCheckpointError, short_list
from .pos_embed import interpolate_pos_embed, sincos_2d

# The classifier's filters take the `vit.VisionTransformer` they fit (typed `nn.Module` here: `vit` imports this module).
# The two position tables: fixed 2-D sin-cos functions of the patch grid, stored in the files, never trained.
FIXED_TABLES: frozenset[str] = frozenset({"pos_embed", "decoder_pos_embed"})


def fit_mae_state(data: CheckpointData, result: Classification, config: MAEConfig, expected: ExpectedState,
                  strict: bool) -> Fitted:
    """The masked autoencoder's filter: refuse what does not fit, regenerate a sin-cos table made for
    another grid (exact: it is a function of the grid), cast to float32."""
    if result.kind == "fine-tuned" and strict:
        raise IncompatibleCheckpointError(
            f"{data.path} is a fine-tuned classifier ({result.num_classes} classes, global pool): it has no final norm, "
            f"which {config.name or 'this model'} needs, and no decoder; load it with "
            "VisionTransformer.from_pretrained(path, head='file') instead"
        )
    if result.kind == "incompatible" and (strict or result.mismatched or result.unexpected or result.not_float):
        hint = f"; {result.hint}" if result.hint else ""
        raise IncompatibleCheckpointError(
            f"{data.path} does not fit {config.name or 'this model'}: {result.problem()}{hint}; nothing was loaded"
        )
    sd = dict(data.state_dict)
    fixes: list[str] = []
    for name in sorted(FIXED_TABLES & set(sd)):
        if tuple(sd[name].shape) != expected.shapes[name] and is_regenerable(expected, name, tuple(sd[name].shape)):
            sd[name] = sincos_2d(expected.shapes[name][-1], config.grid_size, cls_token=True).unsqueeze(0)
            fixes.append(f"regenerated the fixed sin-cos {name} for the {config.grid_size} patch grid "
                         f"(file has {list(data.state_dict[name].shape)})")
    sd = load.as_float32(sd, fixes)
    warns: list[str] = []
    kind = result.kind
    if kind == "encoder-only":
        warns.append(catalog.random_decoder_warning(len(sd)))
    elif kind in ("incompatible", "fine-tuned"):  # only strict=False gets here: missing keys keep their init
        kind = "partial"
        warns.append(f"strict=False: {len(result.missing)} tensors were not in the file and keep their initial "
                     f"values ({short_list(result.missing)})")
    return Fitted(sd, kind, fixes=fixes, warnings=warns)


def classifier_key_part(name: str) -> Part:
    """`classifier` for the head and fc_norm, `encoder` for everything else of the classifier."""
    return "classifier" if name.startswith(CLASSIFIER_PREFIXES) else "encoder"


def fit_classifier_state(data: CheckpointData, result: Classification, model: nn.Module,
                         head: Literal["fresh", "file"]) -> Fitted:
    """The classifier's filter: the encoder tensors it needs (`encoder_state_for_classifier`), the
    file's classifier with `head="file"`, float32."""
    if (not model.global_pool and "norm.weight" not in data.state_dict
            and any(k.startswith("fc_norm.") for k in data.classifier)):
        raise IncompatibleCheckpointError(
            f"{data.path} was fine-tuned with global pooling (it has fc_norm and no final norm), so it does not "
            "fit a cls-token classifier; build the model with global_pool=True"
        )
    try:
        state, ignored, notes = encoder_state_for_classifier(data.state_dict, model)
    except IncompatibleCheckpointError as exc:
        # Name the file, and the architecture it looks like when that explains the mismatch.
        hint = f"; {result.hint}" if result.hint else ""
        raise IncompatibleCheckpointError(f"{data.path} does not fit this classifier: {exc}{hint}") from None
    warns: list[str] = []
    if head == "file":
        loaded_head = classifier_state_from_file(data.classifier, model, data.path)
        state.update(loaded_head)
        ignored = [k for k in ignored if k not in loaded_head]
        notes.append(f"loaded the file's classifier ({', '.join(loaded_head)})")
    else:
        usable = [k for k in model.state_dict() if k.startswith(CLASSIFIER_PREFIXES) and k in data.classifier]
        if usable:
            warns.append(f"this file holds a trained classifier ({', '.join(usable)}); a fresh one was started, as "
                         "for fine-tuning; pass head='file' to use the file's")
    not_float = [k for k, v in state.items() if not v.is_floating_point()]
    if not_float:
        raise IncompatibleCheckpointError(
            f"{data.path} stores {len(not_float)} weights as {state[not_float[0]].dtype} ({not_float[0]} ...), "
            "not floating point; it is not a model checkpoint"
        )
    state = {k: v.float() for k, v in state.items()}
    # The encoder checks passed: a file that is not "full" or "fine-tuned" is the encoder of one.
    kind = result.kind if result.kind in ("full", "encoder-only", "fine-tuned") else "encoder-only"
    return Fitted(state, kind, ignored=ignored, fixes=notes, warnings=warns)


def classifier_state_from_file(classifier: StateDict, model: nn.Module, path: Path) -> StateDict:
    """The file's classifier tensors that `model` needs (`head.*`, and `fc_norm.*` with global pooling),
    checked to fit exactly; raises `IncompatibleCheckpointError` saying which config would fit."""
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith(CLASSIFIER_PREFIXES)}
    if not classifier:
        raise IncompatibleCheckpointError(
            f"{path} holds no classifier (no head.* or fc_norm.* tensors): it is a pre-training checkpoint; "
            "use head='fresh' to fine-tune from it"
        )
    hints: list[str] = []
    file_head = classifier.get("head.weight")
    if ("head.weight" in wanted and file_head is not None and file_head.dim() == 2
            and tuple(file_head.shape) != wanted["head.weight"]):
        hints.append(f"num_classes={file_head.shape[0]}")
    has_fc_norm = any(k.startswith("fc_norm.") for k in classifier)
    if has_fc_norm != model.global_pool:
        hints.append(f"global_pool={has_fc_norm}")
    problems = [f"{k} is not in the file" for k in wanted if k not in classifier]
    problems += [f"{k} has shape {tuple(classifier[k].shape)}, the model expects {shape}"
                 for k, shape in wanted.items() if k in classifier and tuple(classifier[k].shape) != shape]
    if problems or hints:
        fix = f"; build the model with {', '.join(hints)}" if hints else ""
        raise IncompatibleCheckpointError(
            f"{path}: the file's classifier does not fit this model ({'; '.join(problems) or 'pooling differs'}){fix}"
        )
    return {k: classifier[k] for k in wanted}


def encoder_state_for_classifier(sd: StateDict, model: nn.Module) -> tuple[StateDict, list[str], list[str]]:
    """Select and fit the tensors of a (pre-training) checkpoint that `model`'s encoder needs.

    Returns (tensors to load, ignored key names, notes). Ignored: decoder keys (`mask_token`,
    `decoder_*`), `norm.*` when the model pools globally (it has `fc_norm` instead) and a fine-tuned
    file's `head.*` / `fc_norm.*` (a fresh classifier is always started). A `pos_embed` on another
    patch grid is bicubically resized to the model's, as the official `interpolate_pos_embed` does.
    Raises `IncompatibleCheckpointError` naming the first missing encoder key, shape mismatch or
    unknown key; nothing is returned partially.
    """
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith(CLASSIFIER_PREFIXES)}
    for key in expected:
        if key not in sd:
            raise IncompatibleCheckpointError(
                f"checkpoint has no encoder tensor {key!r}; it is not an MAE/ViT checkpoint of this architecture"
            )
    decoder = [k for k in sd if k.startswith(DECODER_PREFIXES)]
    pooled_norm = [k for k in sd if k.startswith("norm.") and model.global_pool]
    classifier = [k for k in sd if k.startswith(CLASSIFIER_PREFIXES)]
    ignored = decoder + pooled_norm + classifier
    unknown = [k for k in sd if k not in expected and k not in ignored]
    if unknown:
        raise IncompatibleCheckpointError(
            f"checkpoint key {unknown[0]!r} is neither encoder, decoder nor classifier ({len(unknown)} such keys); "
            "convert the file to the official key names first"
        )

    notes: list[str] = []
    state: StateDict = {k: sd[k] for k in expected}
    pos, want = state["pos_embed"], expected["pos_embed"]
    if pos.dim() == 3 and pos.shape[0] == 1 and pos.shape[2] == want[2] and pos.shape[1] != want[1]:
        old_patches = pos.shape[1] - 1
        side = int(round(old_patches**0.5))
        if side * side != old_patches:  # the official code only knows square grids; so do the files
            raise IncompatibleCheckpointError(
                f"pos_embed {tuple(pos.shape)} holds {old_patches} patches, not a square grid; cannot resize it"
            )
        grid = model.patch_embed.grid_size
        state["pos_embed"] = interpolate_pos_embed(pos, grid, (side, side))
        notes.append(f"pos_embed interpolated from {side}x{side} to {grid[0]}x{grid[1]} (bicubic)")
    for key, shape in expected.items():
        if state[key].shape != shape:
            raise IncompatibleCheckpointError(
                f"checkpoint tensor {key!r} has shape {tuple(state[key].shape)}, the model expects {tuple(shape)}"
            )
    if decoder:
        notes.append(f"ignored {len(decoder)} decoder tensors (mask_token, decoder_*): a classifier has no decoder")
    if pooled_norm:
        notes.append(f"ignored {', '.join(pooled_norm)}: with global_pool the official model replaces norm by fc_norm")
    if classifier:
        notes.append(f"ignored the checkpoint's classifier ({', '.join(classifier)}): a fresh head is initialised")
    return state, ignored, notes
