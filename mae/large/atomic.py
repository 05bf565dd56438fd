"""Atomic file writes: a reader, or an interrupted run, never sees a half-written file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is renamed onto `target`.

    On any exception (KeyboardInterrupt included) the temporary file is removed and `target` is left
    as it was. The temporary file lives in the same folder so the final rename is atomic.
    The temporary name keeps the suffix (`.mae-<random>.part.png`) so writers that infer the format
    from it still work, and starts with a dot so folder listings of images skip it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A short name of its own (not the target's): a target name near the 255-byte limit still fits.
    fd, tmp_name = tempfile.mkstemp(prefix=".mae-", suffix=f".part{target.suffix[:16]}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates the file 0600; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
