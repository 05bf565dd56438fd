"""The one place that turns known errors, interrupts and OS errors into one line and an exit code.

`handle_errors` wraps every command: a library error (`MAEError`) is its message with the flag of the API
argument it names (`with_flag`), an OS error names the path and the cause, an interrupt says what was written;
with `--json` the line is also one JSON document on stdout. Torch-free.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

import typer

from cli.console import STATE, err
from cli.render import escape

DEBUG_ENV = "MAE_LARGE_DEBUG"
# How the CLI spells the API arguments that library errors name (`MAEError.argument`).
FLAGS: dict[str, str] = {
    "mixup": "--mixup",
    "cutmix": "--cutmix",
    "recursive": "--recursive",
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
    "protocol": "--protocol",
    "weight_decay": "--weight-decay",
    "warmup_epochs": "--warmup-epochs",
    "learning_rates": "--lrs",
    "weight_decays": "--weight-decays",
    "holdout": "--holdout",
    "min_steps": "--min-steps",
    "clip_grad": "--clip-grad",
    "drop_path": "--drop-path",
    "save_every": "--save-every",
    "input_size": "--size",
    "k": "--k",
    "temperature": "--temperature",
    "weighting": "--weighting",
    "chunk_rows": "--chunk-rows",
    "top_k": "--top-k",
    "image_column": "--image-column",
    "label_column": "--label-column",
    "shuffle_buffer": "--shuffle-buffer",
}


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
            known = command_flags(fn)
            if type(exc).__name__ == "RunStopped":  # a training run a signal stopped, with a checkpoint
                _stopped(exc, known)
            if debug_enabled():
                raise
            fail(with_flag(flags_for(str(exc), known), exc.argument, known))
        except OSError as exc:  # disk full, read-only folder, permission denied: the user's to fix
            if debug_enabled():
                raise
            fail(f"{os_error_sentence(exc)}; {written_summary()}")
        except ValueError as exc:  # an impossible option combination
            if debug_enabled():
                raise
            fail(str(exc))

    return wrapper  # type: ignore[return-value]


def _stopped(exc: BaseException, known: Collection[str] | None) -> None:
    """A stopped run exits with the code of the signal that stopped it; SIGUSR1 (SLURM's warning) asks for a requeue."""
    import signal

    from cli import interrupt

    signum = interrupt.received() or signal.SIGTERM
    note = interrupt.requeue() if signum == signal.SIGUSR1 else None
    fail(f"interrupted by {interrupt.describe(signum)}: {flags_for(str(exc), known)}" + (f"; {note}" if note else ""),
         interrupt.exit_code(signum))


def with_flag(message: str, argument: str | None, known: Collection[str] | None = None) -> str:
    """A library message in the CLI's words: `argument=VALUE` becomes the flag (`trust=True` ->
    `--trust-checkpoint`, `device='cpu'` -> `--device cpu`); where the message does not spell the argument
    out, the flag is added at the end. With `known` (the flags of the command that runs), a flag the command does
    not have is never named: the message stays as the library wrote it."""
    flag = FLAGS.get(argument or "")
    if not flag or (known is not None and flag not in known):
        return message
    if flag in message and f"{argument}=" not in message:  # already in the CLI's words
        return message
    pattern = re.compile(rf"\b{re.escape(argument or '')}=(True\b|'([^']*)'|(\S+?)(?=[\s,;)]|$))")
    if not pattern.search(message):
        return f"{message} (command line: {flag})"
    return pattern.sub(lambda m: flag if m.group(1) == "True" else f"{flag} {m.group(2) or m.group(3)}", message)


def flags_for(text: str, known: Collection[str] | None = None) -> str:
    """A library sentence in the CLI's words: every API argument it spells out (`recursive=True`, `device='cpu'`)
    becomes its flag (with `known`, only the flags the running command has)."""
    for argument in FLAGS:
        if f"{argument}=" in text:
            text = with_flag(text, argument, known) if _spelled(text, argument) else text
    return text


def command_flags(fn: Callable[..., Any]) -> set[str] | None:
    """The option names of the command function `fn` (`--mask-ratio`, `-c`, ...), read from its `typer.Option`
    annotations as Typer reads them; None when they cannot be read (then every flag of `FLAGS` may be named)."""
    import typing

    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # noqa: BLE001 - an annotation that does not evaluate: fall back to every flag
        return None
    flags: set[str] = set()
    for name, hint in hints.items():
        for info in getattr(hint, "__metadata__", ()):
            if isinstance(info, typer.models.OptionInfo):
                # Under Annotated, Typer takes the first name from `default` (typer.Option("--out", "-o")).
                named = (info.default, *(info.param_decls or ())) if isinstance(info.default, str) else info.param_decls
                decls = [d for d in (named or ()) if isinstance(d, str) and d.startswith("-")]
                flags.update(d for decl in decls for d in decl.split("/") if d)
                if not decls:
                    flags.add(f"--{name.replace('_', '-')}")
    return flags


def _spelled(text: str, argument: str) -> bool:
    return re.search(rf"\b{re.escape(argument)}=", text) is not None


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


