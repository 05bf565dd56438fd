"""The project's known errors. The CLI turns each into one line and exit code 1; anything else is a bug.

Every message is one sentence that names the problem and the fix.
"""

from __future__ import annotations


class MAEError(Exception):
    """Base class of the errors a user can cause and fix (bad file, bad image, no network)."""


class CheckpointError(MAEError):
    """A checkpoint file that cannot be read or does not fit the model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No file at the checkpoint path."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that would run code (or build objects) beyond plain tensors; needs an explicit opt-in."""


class IncompatibleCheckpointError(CheckpointError):
    """The file holds tensors, but not the ones this model needs (wrong keys or shapes)."""


class EncoderOnlyCheckpointError(CheckpointError):
    """An encoder-only checkpoint given to a job that needs the trained decoder."""


class ImageError(MAEError):
    """An image file that cannot be opened or decoded."""


class DownloadError(MAEError):
    """A download that failed or did not verify."""
