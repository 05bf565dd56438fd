"""What every command shares: consoles, option aliases, the one error handler, model loading, progress.

Nothing here imports torch at module level: `mae-large --help` must stay fast (`mae.large.catalog` and
`mae.large.errors` are torch-free).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from cli.render import escape
from mae.large import catalog

if TYPE_CHECKING:  # pragma: no cover
    from mae.large import MaskedAutoencoderViT
    from mae.large.checkpoints.load import LoadReport

DEFAULT_CHECKPOINT = catalog.FULL.default_path
DEBUG_ENV = "MAE_LARGE_DEBUG"
# How the CLI spells the API arguments that library errors name (`MAEError.argument`).
FLAGS: dict[str, str] = {
    "trust": "--trust-checkpoint",
    "max_patches": "--max-patches",
    "allow_nonfinite": "--allow-nonfinite",
    "panels": "--panels",
    "out_dir": "--out",
    "target": "--target",
    "mask": "--mask",
    "ratios": "--mask-ratio",
    "allow_random_decoder": "--allow-random-decoder",
    "device": "--device",
    "samples": "--samples",
    "batch_size": "--batch-size",
    "crop": "--crop",
    "pool": "--pool",
    "size": "--size",
    "layers": "--layer",
    "layer": "--layer",
    "heads": "--heads",
    "mask_ratio": "--mask-ratio",
    "checkpoint": "--checkpoint",
    "workers": "--workers",
    "shard_size": "--shard-size",
    "what": "--what",
    "dynamic_batch": "--dynamic-batch",
    "opset": "--opset",
    "overwrite": "--force",
    "out": "--out",
    "format": "--to",
    "resume": "--resume",
    "amp": "--amp",
    "num_classes": "--num-classes",
    "accum_iter": "--accum-iter",
    "effective_batch": "--effective-batch",
    "epochs": "--epochs",
    "lr": "--lr",
    "blr": "--blr",
    "clip_grad": "--clip-grad",
    "drop_path": "--drop-path",
    "save_every": "--save-every",
    "input_size": "--size",
}

# Tables and JSON go to stdout; messages, warnings and progress to stderr, so `--json | jq` works.
# Piped or captured output gets 120 columns (not rich's default 80) so key names are not cut.
_PIPED = not sys.stdout.isatty() and "COLUMNS" not in os.environ
out = Console(width=120 if _PIPED else None, emoji=False)
err = Console(stderr=True, soft_wrap=True, emoji=False)  # a file name or byte string is never an emoji code
STATE: dict[str, Any] = {"debug": False, "json": False, "json_printed": False, "written_from": 0}

# ---- shared option aliases ------------------------------------------------------------------------
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON result on stdout.")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust-checkpoint",
    help="Read a pickle that asks for more than tensors (weights_only=False). It can run code: only for files you trust.",
)]
AllowNonfiniteOpt = Annotated[bool, typer.Option(
    "--allow-nonfinite", help="Load a checkpoint even if some weights are NaN or infinite (they are named); "
    "results that are not finite are still never written.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")]
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



def exit_process(code: object) -> None:
    """End the console-script process with `code` (a SystemExit code) without the interpreter's teardown.

    Once torch is imported, Python's finalisation (module teardown, C++ static destructors) is a visible
    share of a short command (docs/benchmarks.md). Here the atexit handlers
    run as usual (logging flushes, weakref finalizers, temporary folders), both streams are flushed,
    then the process exits at once. Without torch loaded (`--help`, `download`) it is a plain exit.
    Only for the console script's `main()`: in-process callers (tests, CliRunner) never get here.
    """
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    if "torch" not in sys.modules:
        sys.exit(code)
    import atexit

    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # a closed pipe (`| head`), an interrupt: fall back to the normal exit
        sys.exit(code)
    os._exit(code)


def debug_enabled() -> bool:
    return STATE["debug"] or os.environ.get(DEBUG_ENV, "") not in ("", "0", "false")


F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """The one place that turns the project's known errors, interrupts and OS errors into one line and an
    exit code: 1 for errors, 130 for Ctrl-C, 143 for SIGTERM. With `--json` the line is also a JSON object
    on stdout (`{"error", "exit_code", "written"}`), so scripts can parse every outcome."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from mae.large.errors import MAEError  # light: no torch
        from mae.large.utils.atomic import completed

        STATE["json"], STATE["json_printed"] = bool(kwargs.get("json_")), False
        STATE["written_from"] = len(completed())  # this run's files are the ones completed after this
        STATE["results"] = []  # per-input results as they come (record_result), for a failure's JSON
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt as exc:
            from cli import interrupt

            signum = interrupt.signum_of(exc)
            fail(f"interrupted by {interrupt.describe(signum)}; {written_summary()}; no half-written file was left",
                 interrupt.exit_code(signum))
        except MAEError as exc:
            if debug_enabled():
                raise
            fail(with_flag(str(exc), exc.argument))
        except OSError as exc:  # disk full, read-only folder, permission denied: the user's to fix
            if debug_enabled():
                raise
            fail(f"{os_error_sentence(exc)}; {written_summary()}")
        except ValueError as exc:  # an impossible option combination
            if debug_enabled():
                raise
            fail(str(exc))

    return wrapper  # type: ignore[return-value]


def with_flag(message: str, argument: str | None) -> str:
    """A library message in the CLI's words: `argument=VALUE` becomes the flag (`trust=True` ->
    `--trust-checkpoint`, `device='cpu'` -> `--device cpu`); where the message does not spell the argument
    out, the flag is added at the end."""
    flag = FLAGS.get(argument or "")
    if not flag:
        return message
    pattern = re.compile(rf"\b{re.escape(argument or '')}=(True\b|'([^']*)'|(\S+?)(?=[\s,;)]|$))")
    if not pattern.search(message):
        return f"{message} (command line: {flag})"
    return pattern.sub(lambda m: flag if m.group(1) == "True" else f"{flag} {m.group(2) or m.group(3)}", message)


_OS_FIXES: dict[int, str] = {
    errno.ENOSPC: "the disk is full; free some space or write elsewhere (--out)",
    errno.EDQUOT: "the disk quota is exceeded; free some space or write elsewhere (--out)",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f); raise the limit or write elsewhere",
    errno.EROFS: "the file system is read-only; write elsewhere (--out)",
    errno.EACCES: "permission denied; write to a folder you own (--out)",
    errno.EPERM: "the operation is not permitted (an immutable or protected folder?); write elsewhere (--out)",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "the path is a folder; give a file name",
}


def os_error_sentence(exc: OSError) -> str:
    """`could not write PATH: the disk is full; ...` for an OSError, naming the path and the cause."""
    path = exc.filename or "a file"
    cause = _OS_FIXES.get(exc.errno or -1) or (exc.strerror or str(exc) or type(exc).__name__)
    return f"could not write or read {path}: {cause}"


def written_files() -> list[Path]:
    """The files this run has finished writing (atomically), in order."""
    from mae.large.utils.atomic import completed

    return completed()[int(STATE.get("written_from", 0)):]


def written_summary() -> str:
    """What this run finished writing, for the last line of a run that stopped early."""
    done = written_files()
    if not done:
        return "nothing was written"
    last = escape_plain(str(done[-1]))
    return f"{len(done)} file(s) were written completely (the last: {last}), the rest were not"


def record_result(item: Any) -> None:
    """Keep a JSON-able row for one input's result, so that a run that stops early can still say, with
    `--json`, what each input gave so far."""
    if isinstance(item, dict):
        row = {k: v for k, v in item.items() if isinstance(v, (str, int, float, list, type(None)))}
    else:
        row = {"image": escape_plain(str(getattr(item, "path", "")))}
        if getattr(item, "reason", None):
            row["error"] = item.reason
    STATE.setdefault("results", []).append(row)


def failures_summary(failed: int, written: int) -> str:
    """`2 of 5 inputs failed[/]; the other 3 were written`, or that nothing was written (rich markup)."""
    if not written:
        return f"{'the input' if failed == 1 else f'all {failed} inputs'} failed[/]; nothing was written"
    return f"{failed} of {failed + written} inputs failed[/]; the other {written} were written"


def escape_plain(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def fail(message: str, code: int = 1) -> None:
    """Print `error: message` on one line to stderr (and, with --json, a JSON object on stdout) and exit."""
    one_line = " ".join(str(message).split())
    if STATE.get("json") and not STATE.get("json_printed"):  # one JSON document per run
        print_json({"error": one_line, "exit_code": code, "written": [escape_plain(str(p)) for p in written_files()],
                    "results": STATE.get("results", [])})
    err.print(f"[bold red]error:[/] {escape(one_line)}")
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    STATE["json_printed"] = True
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def parse_size(text: str | None) -> tuple[int, int] | None:
    """`224` -> (224, 224); `224x320` -> (224, 320); None (not given) -> None: the model's own size."""
    if text is None:
        return None
    parts = text.lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise typer.BadParameter(f"size must be like 224 or 224x320, got {text!r}", param_hint="--size") from None
    if len(values) not in (1, 2) or any(v <= 0 or v % 16 for v in values):
        raise typer.BadParameter(f"size must be positive multiples of 16 (224 or 224x320), got {text!r}",
                                 param_hint="--size")
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


def collect_inputs(images: list[Path], purpose: str, *, recursive: bool = False,
                   quiet: bool = False) -> tuple[list[Path], list]:
    """Image files from files and folders; a note for what was passed over on purpose (sub-folders, inputs
    given twice); one clear error when no image is left to `purpose`."""
    from mae.large.data.images import collect_images
    from mae.large.errors import ImageError

    collected = collect_images(images, recursive=recursive)
    paths, failures = collected
    skipped = collected.skipped_folders
    walk = (f"{len(skipped)} sub-folder(s) were not walked ({', '.join(p.name for p in skipped[:3])}"
            f"{' ...' if len(skipped) > 3 else ''}); pass --recursive to include them") if skipped else ""
    if not paths:
        reasons = "; ".join(f.reason for f in failures) or "no inputs"
        raise ImageError(f"no image to {purpose}: {reasons}" + (f"; {walk}" if walk else ""))
    if not quiet:
        if walk:
            err.print(f"[yellow]note:[/] {escape(walk)}")
        for path in collected.duplicates:
            err.print(f"[yellow]note:[/] {escape(str(path))} was given more than once; it is processed once")
    return paths, failures


def load_model(
    checkpoint: Path | None,
    *,
    size: tuple[int, int] | None = None,
    device: str = "auto",
    trust: bool = False,
    allow_nonfinite: bool = False,
    norm_pix_loss: bool = False,
    quiet: bool = False,
    seed: int = 0,
) -> MaskedAutoencoderViT:
    """The model (`catalog.DEFAULT_ARCHITECTURE`, ViT-L) from `checkpoint` (fast path: meta device + mmap), or a
    seeded random init for None. `size` None keeps the architecture's own input size."""
    import torch

    from mae.large import MAEConfig, MaskedAutoencoderViT
    from mae.large.utils.device import resolve_device

    target = resolve_device(device)
    config = MAEConfig.from_architecture(None, norm_pix_loss=norm_pix_loss, **({"img_size": size} if size else {}))
    # Seeds the random init, and the random decoder of an encoder-only file: runs are reproducible.
    torch.manual_seed(seed)
    if checkpoint is None:
        model = MaskedAutoencoderViT(config).to(target).eval()
        if not quiet:
            err.print(f"[yellow]random init[/]: no checkpoint, every weight is random (official init, seed {seed})")
        return model
    with warnings.catch_warnings():
        # The library warns loudly about a random decoder; the CLI shows the report's warnings itself.
        warnings.simplefilter("ignore", UserWarning)
        model = MaskedAutoencoderViT.from_pretrained(checkpoint, config, trust=trust, device=target,
                                                     allow_nonfinite=allow_nonfinite)
    if not quiet:
        report_load(model)
    return model


def encoder_view_checkpoint(checkpoint: Path | None, *, quiet: bool) -> Path:
    """`checkpoint`, or the first present of `catalog.ENCODER_VIEW` (said on stderr: the files come from
    different training runs); none present is a `CheckpointNotFoundError` naming them all."""
    if checkpoint is not None:
        return checkpoint
    candidates = [entry.default_path for entry in catalog.ENCODER_VIEW]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        from mae.large.errors import CheckpointNotFoundError

        error = CheckpointNotFoundError(
            f"no checkpoint was named and none of {', '.join(map(str, candidates))} exists; download one "
            f"(`mae-large download {catalog.ENCODER_VIEW[0].name}`) or name a file")
        error.argument = "checkpoint"
        raise error
    if not quiet:
        others = ", ".join(str(p) for p in candidates if p != found)
        err.print(f"[dim]checkpoint: {escape(str(found))} (the first present of it, {escape(others)}; they come from "
                  "different training runs; --checkpoint chooses)[/]")
    return found


def load_encoder_view(checkpoint: Path, *, size: tuple[int, int] | None, device: str, trust: bool,
                      allow_nonfinite: bool, quiet: bool) -> MaskedAutoencoderViT:
    """The masked autoencoder (`catalog.DEFAULT_ARCHITECTURE`) from `checkpoint` for a job that uses only its encoder:
    a full or an encoder-only file, one summary line, no word about the decoder."""
    model = load_model(checkpoint, size=size, device=device, trust=trust, allow_nonfinite=allow_nonfinite, quiet=True)
    r = model.load_report
    if not quiet and r is not None:
        err.print(f"[green]encoder[/] from {escape(str(r.path))} ({r.kind}, {r.source_format}, {r.container}): "
                  f"{r.num_loaded} tensors; only the encoder is used")
        for fix in r.fixes:
            err.print(f"  [dim]- {escape(fix)}[/]")
        for message in r.warnings:
            if not message.startswith(ENCODER_ONLY_NOTE):  # the random decoder is not used here
                err.print(f"[bold yellow]warning:[/] {escape(message)}")
    return model.eval()


ENCODER_ONLY_NOTE = catalog.random_decoder_warning(0).split("(")[0].rstrip()


def output_stems(paths: list[Path], out_dir: Path, suffix: str) -> dict[Path, str]:
    """A file stem per input (`cat.jpg` -> `cat`, then `cat_2` ...) so that no two outputs `stem + suffix` clash
    and none is an input image itself."""
    inputs = {p.resolve() for p in paths}
    taken: set[str] = set()
    names: dict[Path, str] = {}
    for path in paths:
        n = 1
        while (stem := path.stem if n == 1 else f"{path.stem}_{n}") + suffix in taken or \
                (out_dir / f"{stem}{suffix}").resolve() in inputs:
            n += 1
        taken.add(stem + suffix)
        names[path] = stem
    return names


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


def report_load(model: MaskedAutoencoderViT) -> None:
    r = model.load_report
    if r is None:
        return
    colour = "green" if r.kind == "full" else "yellow"
    err.print(f"[{colour}]{r.kind}[/] checkpoint {escape(str(r.path))}: {r.num_loaded}/{r.num_expected} tensors "
              f"({r.source_format}, {r.container})")
    report_details(r)


def report_details(r: LoadReport) -> None:
    """A load report's fixes (dim) and warnings (yellow), under its one-line summary."""
    for fix in r.fixes:
        err.print(f"  [dim]- {escape(fix)}[/]")
    for message in r.warnings:
        err.print(f"[bold yellow]warning:[/] {escape(message)}")


class progress:
    """A rich progress bar on stderr over `total` items, as a context giving the `advance()` to call per
    item; a no-op when quiet or for a single item."""

    def __init__(self, total: int, label: str, *, quiet: bool) -> None:
        self.total, self.label, self.quiet = total, label, quiet or total < 2
        self.bar: Any = None

    def __enter__(self) -> Callable[[], None]:
        if self.quiet:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn(escape(self.label)), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=err, transient=True)
        self.bar.start()
        task = self.bar.add_task("items", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
