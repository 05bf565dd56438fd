"""Atomic file writes: a reader, or an interrupted run, never sees a half-written file.

Every temporary file this module creates is registered while it lives, and every file it completes is
remembered, so that an application can, on an interrupt, remove what is half-written at once
(`remove_live_temporaries`) and say what was finished (`completed`). The library installs no signal
handler: that is the application's decision.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

_lock = threading.Lock()
_live: set[Path] = set()
_completed: list[Path] = []


def live_temporaries() -> list[Path]:
    """The temporary files being written right now (by any thread)."""
    with _lock:
        return sorted(_live)


def completed() -> list[Path]:
    """The files this process has finished writing through `atomic_path`, in order."""
    with _lock:
        return list(_completed)


def remove_live_temporaries() -> list[Path]:
    """Unlink every live temporary file or folder (for a hard exit that skips the `finally` blocks); returns them.

    Safe to call from a signal handler: it takes no lock another frame of the same thread may hold
    (the set is copied without the lock; a file that finishes meanwhile is simply not found).
    """
    removed = []
    for path in list(_live):
        with contextlib.suppress(OSError):
            _remove(path)
            removed.append(path)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@contextlib.contextmanager
def staging_folder(parent: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a hidden temporary folder in `parent`, registered as a live temporary and removed with what it holds
    on exit: for a writer that makes several files which name each other (an ONNX model and its external data file)
    under their final names; each is then moved into place with `atomic_path`."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".mae-", suffix=".part", dir=parent))
    with _lock:
        _live.add(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with _lock:
            _live.discard(folder)


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
    tmp = Path(tmp_name)
    with _lock:
        _live.add(tmp)
    try:
        os.close(fd)
        yield tmp
        # mkstemp creates the file 0600; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
        with _lock:
            _completed.append(target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno is not None and not exc.filename:
            exc.filename = str(target)  # writers (matplotlib, Pillow) often raise without naming the file
        raise
    finally:
        with _lock:
            _live.discard(tmp)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it is renamed onto `target`.

    The folder version of `atomic_path`, for outputs that are folders (a HuggingFace model folder): on any
    exception the temporary folder and everything in it are removed and `target` is left as it was. An
    existing `target` is replaced only with `overwrite=True`: it is moved aside, the new folder renamed into
    place, then the old one removed (a folder cannot be swapped in one rename, so a reader may for an instant
    find no folder, but never a partial one). Registered as live while it is written, like the files.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mae-", suffix=".part", dir=target.parent))
    with _lock:
        _live.add(tmp)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; give it what a plain mkdir would
        for file in tmp.rglob("*"):  # and its files what a plain open would (some writers create them 0600)
            if file.is_file() and not file.is_symlink():
                os.chmod(file, 0o666 & ~umask)
        if target.exists() and overwrite:
            old = Path(tempfile.mkdtemp(prefix=".mae-", suffix=".old", dir=target.parent))
            os.replace(target, old / target.name)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old / target.name, target)  # put the old folder back: the target is never lost
                old.rmdir()
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)  # refuses (OSError) a target made meanwhile that is not an empty folder
        with _lock:
            _completed.append(target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            _remove(tmp)
        if isinstance(exc, OSError) and exc.errno is not None and not exc.filename:
            exc.filename = str(target)
        raise
    finally:
        with _lock:
            _live.discard(tmp)
