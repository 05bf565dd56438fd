"""What a checkpoint is: full / encoder-only / fine-tuned / incompatible, with reasons.

The second step of the loading chain (`load.py`): tensors in official key names (`read.read_checkpoint`) are
measured against the `ExpectedState` a model states for a configuration
(`MaskedAutoencoderViT.expected_state(config)`). This module imports no model class: what a model expects is
handed in. Nothing here prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..errors import short_list
from .keys import DECODER_PREFIXES, StateDict

Kind = Literal["full", "encoder-only", "fine-tuned", "partial", "incompatible"]
# The final norm a global-pool fine-tuned classifier drops (official models_vit deletes it), and what replaces it.
FINAL_NORM: tuple[str, str] = ("norm.weight", "norm.bias")
FINE_TUNED_CLASSIFIER: tuple[str, ...] = ("head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias")
Part = Literal["encoder", "decoder", "classifier"]


def key_part(name: str) -> Part:
    """`encoder` or `decoder`: which half of the model an official key belongs to."""
    return "decoder" if name.startswith(DECODER_PREFIXES) else "encoder"


@dataclass(frozen=True)
class ShapeMismatch:
    name: str
    expected: tuple[int, ...]
    actual: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.name}: expected {list(self.expected)}, file has {list(self.actual)}"


@dataclass(frozen=True)
class Classification:
    """What a state dict is, measured against a model configuration."""

    kind: Kind
    num_tensors: int
    num_expected: int  # keys of the full model
    num_encoder: int  # keys of the encoder part
    missing: list[str]
    unexpected: list[str]
    mismatched: list[ShapeMismatch]
    looks_like: str | None  # a known architecture the shapes match, when they are not this one
    hint: str | None
    not_float: list[str] = field(default_factory=list)  # weights stored as integers: not model weights
    # A fine-tuned classifier: the number of classes of its head and its pooling ("mean": global pool + fc_norm).
    num_classes: int | None = None
    pooling: str | None = None

    @property
    def loadable(self) -> bool:
        return self.kind != "incompatible"

    def problem(self, limit: int = 3) -> str:
        """One sentence naming the first offending keys."""
        parts = []
        if self.mismatched:
            parts.append("shape mismatch " + "; ".join(str(m) for m in self.mismatched[:limit]))
        if self.missing:
            parts.append(f"{len(self.missing)} missing keys ({short_list(self.missing, limit)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected keys ({short_list(self.unexpected, limit)})")
        if self.not_float:
            parts.append(f"{len(self.not_float)} tensors that are not floating point ({short_list(self.not_float, limit)})")
        return "; ".join(parts) or "nothing wrong"


@dataclass(frozen=True)
class ExpectedState:
    """What a model expects of a checkpoint: every key with its shape (in state-dict order), the part it
    belongs to, and which tensors are fixed functions of the patch grid (regenerated, never learned).

    A model class states it for a configuration (`expected_state(config)`, built on the meta device and
    cached); `alternatives` are the encoder shapes of the other official sizes, so that `classify` can
    say "this looks like a ViT-Base checkpoint".
    """

    name: str
    shapes: Mapping[str, tuple[int, ...]]
    parts: Mapping[str, Part]
    fixed: frozenset[str] = frozenset()
    alternatives: Sequence[tuple[str, Mapping[str, tuple[int, ...]]]] = ()

    def keys_of(self, part: Part) -> list[str]:
        return [k for k, p in self.parts.items() if p == part]


def _compare(sd: StateDict, expected: Mapping[str, tuple[int, ...]]) -> tuple[list[str], list[str], list[ShapeMismatch]]:
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [ShapeMismatch(k, expected[k], tuple(sd[k].shape)) for k in expected
                  if k in sd and tuple(sd[k].shape) != expected[k]]
    return missing, unexpected, mismatched


def is_regenerable(expected: ExpectedState, name: str, actual: tuple[int, ...]) -> bool:
    """A fixed sin-cos table for another grid: not learned, so it is regenerated, not a mismatch."""
    want = expected.shapes[name]
    return name in expected.fixed and len(actual) == 3 and actual[-1] == want[-1] and actual[0] == 1


def classify(sd: StateDict, expected: ExpectedState, classifier: Mapping[str, torch.Tensor] | None = None) -> Classification:
    """full (every key), encoder-only (exactly the encoder keys), fine-tuned, or incompatible, against `expected`.

    `classifier` is the file's set-aside classifier tensors (`CheckpointData.classifier`). A file whose encoder
    lacks exactly the final `norm` and whose classifier holds `head.*` and `fc_norm.*` of the right width is a
    global-pool fine-tuned classifier (official `models_vit`, `global_pool=True`): kind "fine-tuned", its tensor
    count includes the classifier's, and `num_classes` / `pooling` say what it is."""
    if not isinstance(expected, ExpectedState):
        raise TypeError("classify needs the ExpectedState of a model, e.g. MaskedAutoencoderViT.expected_state(config)")
    missing, unexpected, mismatched = _compare(sd, expected.shapes)
    mismatched = [m for m in mismatched if not is_regenerable(expected, m.name, m.actual)]
    not_float = [k for k in expected.shapes if k in sd and not sd[k].is_floating_point()]
    encoder = expected.keys_of("encoder")
    decoder_missing = [k for k in missing if expected.parts[k] == "decoder"]
    encoder_missing = [k for k in missing if expected.parts[k] == "encoder"]
    kind: Kind
    fine_tuned = _fine_tuned_head(classifier or {}, expected) if set(encoder_missing) == set(FINAL_NORM) else None
    if fine_tuned is not None and not (unexpected or mismatched or not_float) and (
            len(decoder_missing) == len(expected.keys_of("decoder"))):
        return Classification("fine-tuned", len(sd) + len(classifier or {}), len(expected.shapes), len(encoder),
                              missing, unexpected, mismatched, None, None, not_float, num_classes=fine_tuned,
                              pooling="mean")
    if unexpected or mismatched or encoder_missing or not_float:
        kind = "incompatible"
    elif not missing:
        kind = "full"
    elif len(decoder_missing) == len(expected.keys_of("decoder")):
        kind = "encoder-only"
    else:  # some decoder keys but not all: a damaged or hand-edited file
        kind = "incompatible"
    looks_like = hint = None
    if kind == "incompatible":
        looks_like = _guess_architecture(sd, expected)
        if looks_like:
            hint = f"this looks like {looks_like}, not {expected.name or 'this model'}"
        elif decoder_missing and not encoder_missing and not unexpected and not mismatched:
            hint = "the decoder is only partly present; the file is damaged or was edited"
    if not_float and not hint:
        hint = f"{len(not_float)} tensors are not floating point ({short_list(not_float)}, {sd[not_float[0]].dtype})"
    return Classification(kind, len(sd), len(expected.shapes), len(encoder), missing, unexpected, mismatched,
                          looks_like, hint, not_float)


def _fine_tuned_head(classifier: Mapping[str, torch.Tensor], expected: ExpectedState) -> int | None:
    """The number of classes of a global-pool fine-tuned classifier (`head.*` + `fc_norm.*` as wide as the
    encoder, nothing else), or None when `classifier` is not one."""
    if set(classifier) != set(FINE_TUNED_CLASSIFIER) or FINAL_NORM[0] not in expected.shapes:
        return None
    (dim,) = expected.shapes[FINAL_NORM[0]]
    head_w, head_b = classifier["head.weight"], classifier["head.bias"]
    shapes_fit = (head_w.dim() == 2 and head_w.shape[1] == dim and tuple(head_b.shape) == (head_w.shape[0],)
                  and all(tuple(classifier[k].shape) == (dim,) for k in ("fc_norm.weight", "fc_norm.bias")))
    if not shapes_fit or not all(t.is_floating_point() for t in classifier.values()):
        return None
    return int(head_w.shape[0])


def _guess_architecture(sd: StateDict, expected: ExpectedState) -> str | None:
    """Name another official size whose encoder shapes all match `sd` (ViT-B/L/H), if any."""
    for label, shapes in expected.alternatives:
        enc = {k: s for k, s in shapes.items() if k not in expected.fixed}
        if all(k in sd and tuple(sd[k].shape) == s for k, s in enc.items()) and not any(
            k.startswith("blocks.") and k not in shapes for k in sd
        ):
            return label
    return None


