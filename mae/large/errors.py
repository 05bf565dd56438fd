"""The project's known errors. The CLI turns each into one line and exit code 1; anything else is a bug.

Every message is one sentence that names the problem and the fix.
"""

from __future__ import annotations


class MAEError(Exception):
    """Base class of the errors a user can cause and fix (bad file, bad image, no network).

    Messages speak in API terms (`trust=True`, `device="cpu"`); `argument` names the API argument the fix
    is about, so that a front end can add its own spelling of it (the CLI adds the flag).
    """

    argument: str | None = None


class CheckpointError(MAEError):
    """A checkpoint file that cannot be read or does not fit the model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No file at the checkpoint path."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that would run code (or build objects) beyond plain tensors; needs an explicit opt-in."""

    argument = "trust"


class IncompatibleCheckpointError(CheckpointError):
    """The file holds tensors, but not the ones this model needs (wrong keys or shapes)."""


class EncoderOnlyCheckpointError(CheckpointError):
    """An encoder-only checkpoint given to a job that needs the trained decoder."""

    argument = "allow_random_decoder"


class NonFiniteCheckpointError(CheckpointError):
    """A checkpoint whose weights hold NaN or infinite values (a damaged file or a diverged run); loading it
    needs an explicit opt-in."""

    argument = "allow_nonfinite"


class ImageError(MAEError):
    """An image file that cannot be opened or decoded."""


class DatasetError(MAEError):
    """A data set's own file (parquet, arrow, tar shard, dataset card) that cannot be read as what it claims to be,
    or whose columns do not hold what a job needs."""


class DownloadError(MAEError):
    """A download that failed or did not verify."""


class InvalidArgumentError(MAEError, ValueError):
    """An argument outside what the function accepts (a batch size of 0, an unknown pool, a bad size).

    Also a `ValueError`, so code that catches the standard exception keeps working.
    """


class DeviceError(MAEError, ValueError):
    """A device that does not exist on this machine (`cuda` without CUDA, an index out of range)."""

    argument = "device"


def invalid_argument(argument: str, message: str) -> InvalidArgumentError:
    """An `InvalidArgumentError` about the API argument `argument`: `raise invalid_argument("samples", ...)`."""
    error = InvalidArgumentError(message)
    error.argument = argument
    return error


# ---- message helpers shared by every module (no torch here) ---------------------------------------
def first_line(message: str, limit: int = 300, default: str = "no details") -> str:
    """The first line of an exception text for a one-line message; a line over `limit` characters is cut
    at a word boundary and ends in "..." (never in the middle of a word)."""
    text = str(message).strip()
    if not text:
        return default
    line = text.splitlines()[0].strip()
    if len(line) <= limit:
        return line
    return line[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."


def short_list(items: list[str], limit: int = 3) -> str:
    """`a, b, c and 4 more`."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def shown(text: str, limit: int = 60) -> str:
    """`text` read from outside (a name in a file, an option value) quoted for a one-line message: `repr` escapes
    newlines and control characters, and more than `limit` characters are cut ("'abc'...")."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."
