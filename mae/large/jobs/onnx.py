"""Export to ONNX: the feature extractor, or the whole masked autoencoder, checked with onnxruntime.

Two graphs, each the model's own forward pass (nothing is re-implemented, so the file cannot drift from PyTorch):

* `features`: image (B, 3, H, W), normalised -> `feature` (B, D), `VisionTransformer.forward_features`, exactly what
  `features.extract_features` computes. A checkpoint is loaded by `features.load_feature_encoder`: the file's own
  pooling (the cls token after the final norm for a pre-training file, the mean patch token through the trained
  `fc_norm` for a fine-tuned classifier).
* `mae`: image (B, 3, H, W) and noise (B, L) -> `loss` (), `pred` (B, L, p*p*C), `mask` (B, L), the official
  `MaskedAutoencoderViT.forward(imgs, mask_ratio, noise)`. Masking is data: the kept patches are the argsort of the
  noise, as the official `random_masking`, so the same noise gives the same mask in PyTorch and in the file. The
  mask ratio (how many patches are kept) is fixed at export.

The exporter is torch's default one (`torch.onnx.export(..., dynamo=True)`: torch.export, then onnxscript). It needs
the optional packages `onnx`, `onnxruntime` and `onnxscript` (`pip install 'mae-large[onnx]'`), imported only here,
on use. After the export the file is run with onnxruntime on seeded random inputs (at two batch sizes when the batch
is dynamic) and compared with PyTorch: outputs within `tolerance` (absolute), masks identical; a file that fails
the check is not written. The file is written atomically: the export is staged in a hidden folder beside the target
and renamed into place once checked. Weights over torch's threshold (1.5 GiB: ViT-H, not ViT-L) go to an external
data file `NAME.data` beside it, renamed into place before the model file. Nothing here prints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..config import Size2D, to_2tuple
from ..errors import MAEError, invalid_argument
from ..models.mae import DEFAULT_MASK_RATIO, MaskedAutoencoderViT, check_mask_ratio
from ..models.vit import VisionTransformer, ViTConfig
from ..utils.atomic import atomic_path, staging_folder
from ..utils.outputs import guard_output
from .models import ModelSource, require_decoder
from .run import QUIET, Events

__all__ = ["DEFAULT_TOLERANCE", "WHATS", "OnnxReport", "OnnxTensor", "export_onnx", "graph_for", "require_onnx"]

What = Literal["features", "mae"]
WHATS: tuple[str, ...] = ("features", "mae")
DEFAULT_TOLERANCE = 1e-4  # absolute, on every output; float32 kernels differ by ~1e-6 at ViT-L size
EXTRA = "pip install 'mae-large[onnx]'"
_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
_NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "features": (("image",), ("feature",)),
    "mae": (("image", "noise"), ("loss", "pred", "mask")),
}


@dataclass(frozen=True)
class OnnxTensor:
    """An input or output of the exported graph; a dynamic dimension is its name (`batch`)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str  # onnxruntime's spelling, e.g. "tensor(float)"


@dataclass(frozen=True)
class OnnxReport:
    """What `export_onnx` wrote and how the file compared with PyTorch."""

    path: Path
    data_path: Path | None  # the external weights file, when the weights went to one
    what: str
    opset: int
    inputs: tuple[OnnxTensor, ...]
    outputs: tuple[OnnxTensor, ...]
    dynamic_batch: bool
    img_size: Size2D
    mask_ratio: float | None  # `mae` only: fixed at export
    target: str | None  # `mae` only: what the loss compares the prediction with, "pixels" or "norm-pix"
    target_how: str | None  # why that target
    checked: bool
    check_batches: tuple[int, ...]  # the batch sizes the file was run at
    max_abs_error: float | None  # largest |onnxruntime - PyTorch| over every output and batch
    masks_identical: bool | None  # `mae` only
    tolerance: float
    seconds: float  # export, save and check

    @property
    def passed(self) -> bool:
        return self.checked and self.max_abs_error is not None and self.max_abs_error <= self.tolerance \
            and self.masks_identical is not False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(path=str(self.path), data_path=str(self.data_path) if self.data_path else None,
                    img_size=list(self.img_size), check_batches=list(self.check_batches), passed=self.passed,
                    inputs=[{**asdict(t), "shape": list(t.shape)} for t in self.inputs],
                    outputs=[{**asdict(t), "shape": list(t.shape)} for t in self.outputs])
        return data


def require_onnx() -> None:
    """Import the optional ONNX packages, or raise one `MAEError` naming the missing ones and the extra."""
    import importlib

    missing = []
    for name in _PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MAEError(f"ONNX export needs the optional packages {', '.join(_PACKAGES)} ({', '.join(missing)} "
                       f"{'is' if len(missing) == 1 else 'are'} not installed); install them with {EXTRA}")


class _FeatureGraph(nn.Module):
    """image -> feature: `forward_features` of the feature extractor, the call `features.extract_features` makes."""

    def __init__(self, model: VisionTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(image)  # (B, 3, H, W) -> (B, D)


class _MAEGraph(nn.Module):
    """(image, noise) -> (loss, pred, mask): the masked autoencoder's own forward at a fixed mask ratio."""

    def __init__(self, model: MaskedAutoencoderViT, mask_ratio: float) -> None:
        super().__init__()
        self.model, self.mask_ratio = model, mask_ratio

    def forward(self, image: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(self.model(image, self.mask_ratio, noise))  # type: ignore[return-value]


def graph_for(model: VisionTransformer | MaskedAutoencoderViT, what: str,
              mask_ratio: float = DEFAULT_MASK_RATIO) -> nn.Module:
    """The module `export_onnx` exports for `what`: `features` takes a `VisionTransformer` (its pooled features) or
    a `MaskedAutoencoderViT` (the cls token after its final norm, the feature of a pre-training file: its encoder
    copied into a cls-pooled `VisionTransformer`); `mae` takes a `MaskedAutoencoderViT`."""
    _check_what(what)
    if what == "features":
        if isinstance(model, MaskedAutoencoderViT):
            model = _cls_extractor(model)
        if not isinstance(model, VisionTransformer):
            raise invalid_argument("model", f"a feature export takes a VisionTransformer or a MaskedAutoencoderViT, "
                                   f"got {type(model).__name__}")
        return _FeatureGraph(model)
    if not isinstance(model, MaskedAutoencoderViT):
        raise invalid_argument("model", f"an mae export takes a MaskedAutoencoderViT (with its decoder), got "
                               f"{type(model).__name__}; use what='features' for an encoder")
    try:
        check_mask_ratio(mask_ratio, model.patch_embed.num_patches)
    except ValueError as exc:
        raise invalid_argument("mask_ratio", str(exc)) from None
    return _MAEGraph(model, float(mask_ratio))


def _cls_extractor(model: MaskedAutoencoderViT) -> VisionTransformer:
    """The cls-pooled feature extractor (`features.classifier_for_pool("cls")`) over `model`'s encoder."""
    from ..evaluate.features import classifier_for_pool

    weight = model.patch_embed.proj.weight
    with torch.device("meta"):  # no random init of weights about to be replaced
        vit = VisionTransformer(classifier_for_pool("cls", ViTConfig.from_mae(model.config)))
    vit = vit.to_empty(device=weight.device).to(weight.dtype)
    vit.load_encoder_state(model.state_dict())
    return vit.eval()


def export_onnx(
    model_or_checkpoint: VisionTransformer | MaskedAutoencoderViT | ModelSource | str | os.PathLike[str],
    path: str | os.PathLike[str],
    what: What = "features",
    *,
    size: int | Size2D | None = None,
    dynamic_batch: bool = False,
    mask_ratio: float = DEFAULT_MASK_RATIO,
    target: str = "auto",
    opset: int | None = None,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    trust: bool = False,
    allow_nonfinite: bool = False,
    allow_random_decoder: bool = False,
    overwrite: bool = False,
    events: Events = QUIET,
) -> OnnxReport:
    """Export `what` ("features" or "mae", see the module) of a model, or of a checkpoint file, to the ONNX file
    `path`, check it with onnxruntime, and return the report.

    A checkpoint is loaded as the commands load it, at `catalog.DEFAULT_ARCHITECTURE` (ViT-L) and input `size`
    (default the architecture's; the sin-cos tables are regenerated); `trust` and `allow_nonfinite` as for
    `from_pretrained`; an encoder-only file has no trained decoder, so `mae` needs `allow_random_decoder=True`.
    A model given is exported as it is, at its own `img_size` (`size`, if given, must equal it); it is put in eval
    mode for the export and its mode restored.

    With `check`, a largest absolute difference over `tolerance`, a mask that differs, or an output that is not
    finite raises `MAEError` and nothing is written.

    Args:
        model_or_checkpoint: a `VisionTransformer` or `MaskedAutoencoderViT` (exported as it is), a checkpoint path,
            or a `ModelSource` (loaded with its own size and options: `size`, `trust` and `allow_nonfinite` are
            not applied to it).
        path: the `.onnx` file to write (weights over 1.5 GiB go to `NAME.data` beside it).
        what: `features` or `mae` (see the module).
        size: the input size, (H, W) or one int: a checkpoint is built at it (default the architecture's); a model
            given must already have it.
        dynamic_batch: any batch size, named `batch` in the file (else the batch is 1).
        mask_ratio: `mae`: the fraction of patches removed, fixed in the file.
        target: `mae`: what the loss measures the prediction against, `pixels` or `norm-pix` (`norm_pix_loss`);
            `auto` takes the catalogue's entry for the name of the file the model was loaded from
            (`target.resolve_target`), else keeps the model's own (the report says which and why). The model's own
            `norm_pix_loss` is restored afterwards.
        opset: the ONNX opset (None: the exporter's default).
        check: run the file with onnxruntime on random inputs and compare every output with PyTorch's (default True).
        tolerance: the largest absolute difference the check accepts, >= 0.
        seed: draws the example and check inputs.
        trust, allow_nonfinite: as for `from_pretrained`, when a checkpoint path is loaded.
        allow_random_decoder: `mae` from an encoder-only file, whose decoder is then random (else refused).
        overwrite: replace an existing `path` (else refused, before the model is loaded).
        events: what to report while it runs (`run.Events`).
    """
    _check_what(what)
    if not isinstance(dynamic_batch, bool):
        raise invalid_argument("dynamic_batch", f"dynamic_batch must be True or False, got {dynamic_batch!r}")
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise invalid_argument("tolerance", f"tolerance must be a number >= 0, got {tolerance!r}")
    require_onnx()  # before a model is loaded
    started = time.perf_counter()
    out = Path(path)
    if out.is_dir():
        raise invalid_argument("path", f"{out} is a folder; give the .onnx file to write")
    if isinstance(model_or_checkpoint, (str, os.PathLike, ModelSource)):  # what is read is never replaced
        source = model_or_checkpoint if isinstance(model_or_checkpoint, ModelSource) else ModelSource(Path(model_or_checkpoint))
        for written in (out, out.with_name(f"{out.name}.data")):  # the file, and its weights file beside it
            guard_output(written, source.inputs(), argument="path")
    if out.exists() and not overwrite:  # checked before the model is loaded and traced
        raise invalid_argument("overwrite", f"{out} exists; choose another path, or pass overwrite=True to replace it")
    from ..models.target import resolve_target

    choice = resolve_target(target, None, None) if target != "auto" else None  # a bad name fails before loading
    model = _model_for(model_or_checkpoint, what, size, trust=trust, allow_nonfinite=allow_nonfinite,
                       allow_random_decoder=allow_random_decoder, events=events)
    graph = graph_for(model, what, mask_ratio)
    inner: nn.Module = graph.model  # type: ignore[assignment]
    was_training, norm_pix = inner.training, getattr(inner, "norm_pix_loss", None)
    how = None
    if isinstance(inner, MaskedAutoencoderViT):
        loaded = inner.load_report
        if choice is None and loaded is not None:  # auto: the catalogue's word on the file the model came from
            choice = resolve_target("auto", Path(loaded.path), loaded.kind, loaded.run)
        if choice is not None:
            inner.norm_pix_loss, how = choice.norm_pix, choice.how
        else:
            how = f"not a catalogue file, so the model's own norm_pix_loss={inner.norm_pix_loss}"
    inner.eval()
    try:
        return _export(graph, inner, out, what, dynamic_batch=dynamic_batch, mask_ratio=mask_ratio, opset=opset,
                       check=check, tolerance=float(tolerance), seed=seed, started=started, target_how=how)
    finally:
        inner.train(was_training)
        if norm_pix is not None:
            inner.norm_pix_loss = norm_pix


def _check_what(what: str) -> None:
    if what not in WHATS:
        raise invalid_argument("what", f"what must be {' or '.join(map(repr, WHATS))}, got {what!r}")


def _model_for(source: Any, what: str, size: int | Size2D | None, *, trust: bool, allow_nonfinite: bool,
               allow_random_decoder: bool, events: Events) -> VisionTransformer | MaskedAutoencoderViT:
    """The model to export: `source` itself (its size checked against `size`), or loaded from the file `source`."""
    hw = None if size is None else to_2tuple(size, "size")
    if isinstance(source, (VisionTransformer, MaskedAutoencoderViT)):
        if hw is not None and hw != source.config.img_size:
            raise invalid_argument("size", f"size {hw[0]}x{hw[1]} differs from the model's img_size "
                                   f"{source.config.img_size[0]}x{source.config.img_size[1]}; build the model at that "
                                   "size (from_pretrained(..., img_size=...)) or leave size out")
        return source
    if isinstance(source, (str, os.PathLike)):
        source = ModelSource(Path(source), hw, trust, allow_nonfinite)
    if not isinstance(source, ModelSource):
        raise invalid_argument("model_or_checkpoint", "give a VisionTransformer, a MaskedAutoencoderViT, a ModelSource "
                               f"or a checkpoint path, got {type(source).__name__}")
    if what == "features":
        model = source.encoder("cpu")
        events.loaded(model)
        return model
    model = source.mae("cpu")
    events.loaded(model)
    require_decoder(model, allow_random_decoder)
    return model


def _inputs(model: nn.Module, what: str, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random inputs for `batch` images: normal images (as normalised ones), uniform noise (as the official draw)."""
    c = model.config  # type: ignore[attr-defined]
    image = torch.randn(batch, c.in_chans, *c.img_size, generator=generator)  # (B, C, H, W)
    if what == "features":
        return (image,)
    noise = torch.rand(batch, model.patch_embed.num_patches, generator=generator)  # type: ignore[attr-defined]
    return (image, noise)  # (B, L) noise


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's own notices (its registry's optional torchvision ops, deprecations inside torch) are about
    torch, not this model: kept out of the caller's warnings and logs while it runs."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export(graph: nn.Module, model: nn.Module, target: Path, what: str, *, dynamic_batch: bool, mask_ratio: float,
            opset: int | None, check: bool, tolerance: float, seed: int, started: float,
            target_how: str | None) -> OnnxReport:
    input_names, output_names = _NAMES[what]
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    # A dynamic batch is traced at 2: an example of 1 would be specialised to 1 (torch.export's 0/1 rule).
    example = tuple(t.to(device) for t in _inputs(model, what, 2 if dynamic_batch else 1, generator))
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        dynamic_shapes = {name: {0: batch} for name in input_names}
    with _quiet_exporter():
        program = torch.onnx.export(graph, example, dynamo=True, verbose=False, input_names=list(input_names),
                                    output_names=list(output_names), opset_version=opset,
                                    dynamic_shapes=dynamic_shapes)
    assert program is not None  # dynamo=True always returns the program
    opset_used = int(program.model.opset_imports.get("", opset or 0))
    # Staged in a hidden folder beside the target under the final names: the model file names its data file.
    with staging_folder(target.parent) as staging:
        staged = staging / target.name
        try:
            with _quiet_exporter():
                program.save(staged)  # torch moves the weights to `NAME.data` beyond 1.5 GiB
        except OSError as exc:  # a full disk, a file-size limit: the file being written is `target` (staged here)
            exc.filename = str(target)
            raise
        del program
        staged_data = staging / f"{target.name}.data"
        data = staged_data if staged_data.exists() else None
        session = _session(staged)
        inputs = tuple(_tensor(t) for t in session.get_inputs())
        outputs = tuple(_tensor(t) for t in session.get_outputs())
        batches = ((1, 3) if dynamic_batch else (1,)) if check else ()
        error, masks_same = _compare(session, graph, model, what, batches, device, generator) if check else (None, None)
        del session  # the file is closed before it moves
        if check and not (error is not None and error <= tolerance and masks_same is not False):
            if masks_same is False:
                problem = "its masks differ from PyTorch's"
            elif error is None:
                problem = "its outputs (or PyTorch's) are not finite"
            else:
                problem = f"its outputs differ from PyTorch's by up to {error:.3g} (tolerance {tolerance:g})"
            raise MAEError(f"the exported {what} graph does not reproduce the model: {problem} on random inputs; "
                           f"nothing was written to {target} (check=False writes it unchecked)")
        data_target = target.with_name(f"{target.name}.data") if data is not None else None
        with contextlib.ExitStack() as stack:  # leaves in reverse: the data file is in place before the model file
            final = stack.enter_context(atomic_path(target))
            if data is not None and data_target is not None:
                os.replace(data, stack.enter_context(atomic_path(data_target)))
            os.replace(staged, final)
        stale = target.with_name(f"{target.name}.data")
        if data is None and stale.is_file():  # the weights of a file this one replaced, which no file names now
            stale.unlink()
    c = model.config  # type: ignore[attr-defined]
    mae = what == "mae"
    norm_pix = bool(getattr(model, "norm_pix_loss", False))
    return OnnxReport(target, data_target, what, opset_used, inputs, outputs, dynamic_batch, c.img_size,
                      mask_ratio if mae else None, ("norm-pix" if norm_pix else "pixels") if mae else None,
                      target_how if mae else None, check, batches, error, masks_same, tolerance,
                      time.perf_counter() - started)


def _session(path: Path) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its notices would reach the terminal, past the logging module
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _tensor(arg: Any) -> OnnxTensor:
    return OnnxTensor(arg.name, tuple(d if isinstance(d, int) else str(d) for d in arg.shape), arg.type)


def _compare(session: Any, graph: nn.Module, model: nn.Module, what: str, batches: tuple[int, ...],
             device: torch.device, generator: torch.Generator) -> tuple[float | None, bool | None]:
    """Run the file and PyTorch on the same random inputs at each batch size: the largest absolute difference over
    every output (None if an output is not finite), and whether the masks are identical (`mae`; else None)."""
    input_names, _ = _NAMES[what]
    worst = 0.0
    masks_same: bool | None = True if what == "mae" else None
    for batch in batches:
        feeds = _inputs(model, what, batch, generator)
        got = session.run(None, {name: t.numpy() for name, t in zip(input_names, feeds)})
        with torch.inference_mode():
            expected = graph(*(t.to(device) for t in feeds))
        expected = (expected,) if isinstance(expected, torch.Tensor) else expected
        for i, (mine, theirs) in enumerate(zip(got, expected)):
            theirs = theirs.float().cpu()
            mine = torch.from_numpy(mine).reshape(theirs.shape)
            if what == "mae" and i == 2:  # the mask: exactly the same patches removed
                masks_same = bool(masks_same) and torch.equal(mine, theirs)
                continue
            if not (bool(torch.isfinite(mine).all()) and bool(torch.isfinite(theirs).all())):
                return None, masks_same
            worst = max(worst, float((mine - theirs).abs().max()))
    return worst, masks_same
