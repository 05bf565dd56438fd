"""The options every command shares: Typer aliases, their parsers, and the checks made before torch is imported.

Each parser turns a string into the library's value or raises `typer.BadParameter` naming the flag (a usage
error, exit 2). Torch-free at import (`mae.large.catalog`, `config`, `cost` and `errors` are).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer

from mae.large import catalog
from mae.large.errors import shown

DEFAULT_CHECKPOINT = catalog.FULL.default_path


# ---- shared option aliases ------------------------------------------------------------------------
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON result on stdout.")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust-checkpoint",
    help="Read a pickle that asks for more than tensors (weights_only=False). It can run code: only for files you trust.",
)]
AllowNonfiniteOpt = Annotated[bool, typer.Option(
    "--allow-nonfinite", help="Load a checkpoint even if some weights are NaN or infinite (they are named); "
    "results that are not finite are still never written.")]
DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"
_DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def check_device_name(value: str) -> str:
    """`--device`'s name, checked before torch is imported (a usage error, exit 2, naming the flag); whether the
    device exists on this machine is the library's check (`utils.device.resolve_device`, once torch is loaded)."""
    if not isinstance(value, str) or not _DEVICE_NAME.fullmatch(value.strip().lower()):
        raise typer.BadParameter(f"device must be {DEVICE_NAMES}, got {value!r}", param_hint="--device")
    return value


DeviceOpt = Annotated[str, typer.Option("--device", callback=check_device_name, help=f"{DEVICE_NAMES}.")]
ImageColumnOpt = Annotated[str | None, typer.Option(
    "--image-column", show_default=False,
    help="A data set's image column (parquet, arrow; default: image, else the first image column) or, for tar "
    "shards, the image member's extension (default: the first of jpg, jpeg, png, webp ... a sample has).")]
LabelColumnOpt = Annotated[str | None, typer.Option(
    "--label-column", show_default=False,
    help="A data set's label column of integer classes (parquet, arrow; default: label) or, for tar shards, the "
    "label member's extension or .json key (default: the .cls member, else 'label' in the .json).")]
ShuffleBufferOpt = Annotated[int, typer.Option(
    "--shuffle-buffer", min=1, help="Tar shards (read as a stream): samples each reader shuffles among; the order "
    "depends on it, the world size and --workers (docs: data sources).")]
CompileOpt = Annotated[bool, typer.Option(
    "--compile", help="Run the model through torch.compile (one graph, static shapes): the first batch pays the "
    "compile time (said in a note; a minute or more for ViT-L), later batches run fused kernels. Pays on a GPU over "
    "many batches; results equal the eager ones to float rounding. Default: eager, bit for bit as without it.")]
MaskRatioOpt = Annotated[float, typer.Option("--mask-ratio", min=0.0, max=0.99, help="Fraction of patches removed.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")]
SizeOpt = Annotated[str | None, typer.Option(
    "--size", show_default=False,
    help="Input size: 224, or HxW such as 224x320 (multiples of 16; the sin-cos tables are regenerated). "
    "Default: the model's own size, 224.",
)]


def choice(option: str, choices: tuple[str, ...]) -> Any:
    """A Typer callback that accepts only `choices` (a usage error, exit 2, otherwise)."""

    def check(value: str) -> str:
        if value not in choices:
            raise typer.BadParameter(f"{option[2:]} must be {' or '.join(choices)}, got {value!r}", param_hint=option)
        return value

    return check


def optional_choice(option: str, choices: tuple[str, ...]) -> Any:
    """`choice` for an option whose default is None (not given: the command decides)."""
    check = choice(option, choices)
    return lambda value: None if value is None else check(value)


CropOpt = Annotated[str, typer.Option(
    "--crop", callback=choice("--crop", catalog.CROPS),
    help="eval (official evaluation transform: resize to size x 256/224 keeping the aspect, bicubic, then centre "
    "crop), resize (official demo: squash to the size) or center (keep aspect, crop, no margin).")]
DtypeOpt = Annotated[str, typer.Option(
    "--dtype", help="float32 (exact) or bfloat16 (autocast: 2-4x faster on CPUs with AVX-512 BF16/AMX, "
    "slightly different numbers; on CPU the bfloat16 weights are cast once and kept, +0.66 GB).",
)]

TargetOpt = Annotated[str, typer.Option(
    "--target", callback=choice("--target", catalog.TARGETS),
    help="What the decoder predicts: auto (from the catalogue for the official files, else measured on the first "
    "images), pixels, or norm-pix (per-patch normalised pixels, the *_full.pth pre-training files).")]


def resolve_target_option(target: str, norm_pix_alias: bool) -> str:
    """`--target`, with the older `--norm-pix` / `--norm-pix-loss` flags as aliases of `--target norm-pix`."""
    if norm_pix_alias:
        if target not in ("auto", "norm-pix"):
            raise typer.BadParameter(f"--norm-pix means --target norm-pix, which contradicts --target {target}",
                                     param_hint="--target")
        return "norm-pix"
    return target


MAX_SIDE = 2**20  # pixels a side: 65,536 patches a side at patch 16, far over any --max-patches


def parse_size(text: str | None) -> tuple[int, int] | None:
    """`224` -> (224, 224); `224x320` -> (224, 320); None (not given) -> None: the model's own size."""
    if text is None:
        return None
    parts = text.lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise typer.BadParameter(f"size must be like 224 or 224x320, got {shown(text, 40)}", param_hint="--size") from None
    if len(values) not in (1, 2) or any(v <= 0 or v % 16 for v in values):
        raise typer.BadParameter(f"size must be positive multiples of 16 (224 or 224x320), got {shown(text, 40)}",
                                 param_hint="--size")
    if any(v > MAX_SIDE for v in values):  # far beyond --max-patches; the cost estimate itself would overflow a float
        raise typer.BadParameter(f"size must be at most {MAX_SIDE} pixels a side, got {shown(text, 40)}", param_hint="--size")
    return (values[0], values[-1])


def parse_dtype(name: str):  # -> torch.dtype
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name.lower() not in table:
        raise typer.BadParameter(f"dtype must be float32 or bfloat16, got {name!r}", param_hint="--dtype")
    return table[name.lower()]


MaxPatchesOpt = Annotated[int, typer.Option(
    "--max-patches", min=1, help="Refuse inputs of more patches than this before any work (the decoder's attention "
    "grows with the square of the patch count; 4096 patches is 1024x1024 at patch 16).")]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, max=2**64 - 1, help="Masking seed; the same seed gives the same "
                                      "mask (official demo: 2).")]


def check_size_budget(size: tuple[int, int] | None, max_patches: int, *, decoder: bool, mask_ratio: float = 0.0) -> None:
    """Refuse an input size whose cost is over `max_patches` before torch is imported (instant)."""
    from mae.large.config import EncoderConfig, MAEConfig
    from mae.large.cost import check_patch_budget

    base = MAEConfig if decoder else EncoderConfig
    config = base.from_architecture(None, **({"img_size": size} if size else {}))
    check_patch_budget(config, max_patches, mask_ratio)


def check_output_folder(folder: Path) -> None:
    """Fail now, before the model is loaded, when `folder` cannot take the outputs: it is a file, or it (or the
    nearest folder that exists above it) cannot be written to."""
    import tempfile

    if folder.exists() and not folder.is_dir():
        raise typer.BadParameter(f"{folder} is a file, not a folder; give a folder for the outputs", param_hint="--out")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise typer.BadParameter(f"{existing} is a file, so {folder} cannot be created; choose another --out",
                                 param_hint="--out")
    try:  # the only reliable test (root ignores permission bits, read-only mounts and chattr +i do not)
        with tempfile.TemporaryFile(dir=existing, prefix=".mae-probe-"):
            pass
    except OSError as exc:
        exc.filename = exc.filename or str(existing)
        raise OSError(exc.errno, exc.strerror, str(folder)) from None


RecursiveOpt = Annotated[bool, typer.Option(
    "--recursive", "-r", help="Also take the images in sub-folders of the folders given (depth first, by name).")]


def parse_layers(value: str, option: str = "--layer") -> list[int]:
    """`-1` or `0,11,23` -> block indices (their range is checked by the library)."""
    try:
        layers = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"layer must be block indices such as -1 or 0,11,23, got {value!r}",
                                 param_hint=option) from None
    if not layers:
        raise typer.BadParameter("give at least one block index, such as -1 (the last)", param_hint=option)
    return layers


def parse_ratios(value: str | None, option: str = "--mask-ratio") -> list[float] | None:
    """`0.75` or `0.25,0.5,0.75,0.9` -> the ratios; None when not given."""
    if value is None:
        return None
    try:
        ratios = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"mask ratio must be numbers such as 0.75 or 0.25,0.5,0.75, got {value!r}",
                                 param_hint=option) from None
    if not ratios or any(not 0.0 <= r <= 0.99 for r in ratios):
        raise typer.BadParameter(f"every mask ratio must be in [0, 0.99], got {value!r}", param_hint=option)
    return ratios


def parse_floats(value: str | None, option: str) -> list[float] | None:
    """`1e-3,0.01,0.1` -> the numbers (each finite and >= 0); None when not given."""
    if value is None:
        return None
    try:
        numbers = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"give comma-separated numbers such as 1e-3,0.01,0.1, got {value!r}",
                                 param_hint=option) from None
    if not numbers or not all(0.0 <= n < float("inf") for n in numbers):
        raise typer.BadParameter(f"give one or more finite numbers >= 0, got {value!r}", param_hint=option)
    return numbers


def parse_mask_option(value: str | None, option: str = "--mask") -> Any:  # -> masks.MaskSpec | None
    """`--mask` text -> `masks.MaskSpec` (None when not given); a bad spec is a usage error naming the flag."""
    if value is None:
        return None
    from mae.large.models.masks import parse_mask

    return as_usage_error(option, parse_mask, value)


MASK_HELP = ("random (the official mask at --mask-ratio and --seed), block[:R] (BEiT blocks), grid (one kept per 2x2), "
             "box:X0,Y0,X1,Y1 (pixels of the model input, or fractions 0.0-1.0), left, right, top, bottom, "
             "center[:R], file:MASK.png (white = removed), patches:I,J,... (row-major indices).")


def as_usage_error(option: str, check: Any, *args: Any) -> Any:
    """`check(*args)`, a library check, with its `ValueError` turned into a usage error naming `option`."""
    try:
        return check(*args)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def model_source(checkpoint: Path | None, size: tuple[int, int] | None, *, trust: bool, allow_nonfinite: bool,
                 seed: int = 0) -> Any:  # -> jobs.models.ModelSource
    """What a command loads: its checkpoint options as a `jobs.models.ModelSource` (the load report is shown by the
    command, so the library does not also warn)."""
    from mae.large.jobs.models import ModelSource

    return ModelSource(checkpoint, size, trust, allow_nonfinite, seed, warn=False)
