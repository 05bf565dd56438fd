"""Ctrl-C, SIGTERM and SIGUSR1: end the run with one line, the right exit code, and no temporary file left (and
SIGXFSZ, the file-size limit's signal, ignored so that the write fails with EFBIG and is reported like a full disk).

`install()` (called first thing by the console script) makes SIGINT, SIGTERM and SIGUSR1 raise `Interrupted`, a
`KeyboardInterrupt`, in the main thread: every `finally` and every atomic writer then cleans up on the way
out, and the command's error handler prints what was written. A second signal does not wait for that
(a forward pass in a kernel cannot be interrupted): it removes the live temporary files and exits at once.
SIGTERM is what `kill`, `timeout`, job schedulers and `docker stop` send; its exit code is 143, Ctrl-C's 130.

A training command calls `graceful()` first: then the first signal only asks the run to stop (`utils.cancel`), and
the trainer ends it at the next update with a checkpoint to resume from (`RunStopped`); the exit code is still the
signal's. SIGUSR1 is what SLURM (`--signal=USR1@90`) and submitit send before the time limit: after the checkpoint
the job asks SLURM to requeue it (`scontrol requeue $SLURM_JOB_ID`, as submitit and Lightning do) and exits 138.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from types import FrameType

_received: list[int] = []


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(signum: int) -> int:
    return 128 + signum


def received() -> int | None:
    """The first signal this process received, if any (also when a library swallowed the exception)."""
    return _received[0] if _received else None


def describe(signum: int | None) -> str:
    return {signal.SIGTERM: "SIGTERM", signal.SIGUSR1: "SIGUSR1"}.get(signum, "Ctrl-C")  # type: ignore[call-overload]


_graceful = [False]
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


def graceful() -> None:
    """From now on the first signal asks the run to stop at its next update instead of raising (training runs)."""
    _graceful[0] = True


def requeue() -> str | None:
    """Under SLURM, ask it to requeue this job (`scontrol requeue $SLURM_JOB_ID`); what happened, in a few words."""
    import shutil
    import subprocess

    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    tool = shutil.which("scontrol")
    if tool is None:
        return f"SLURM job {job}: no scontrol on PATH to requeue it"
    done = subprocess.run([tool, "requeue", job], capture_output=True, text=True, timeout=60)
    return f"SLURM job {job} requeued" if done.returncode == 0 else f"SLURM job {job}: scontrol requeue failed"


_handled = [0]  # signals the Python-level handler has run for


def _handler(signum: int, frame: FrameType | None) -> None:
    from mae.large.utils import cancel

    cancel.request()  # background workers stop; nothing waits for a batch in flight
    if not _received:
        _received.append(signum)
    _handled[0] += 1
    if _handled[0] > 1:
        _hard_exit(signum)
    if not _graceful[0]:
        raise Interrupted(signum)


def _hard_exit(signum: int) -> None:
    from mae.large.utils.atomic import remove_live_temporaries

    removed = remove_live_temporaries()
    note = f"; removed {len(removed)} half-written file(s)" if removed else ""
    os.write(2, f"interrupted again ({describe(signum)}): stopped at once{note}\n".encode())
    os._exit(exit_code(_received[0] if _received else signum))


def _watch(sock: socket.socket) -> None:
    """Count signals as they arrive, even while the main thread is inside a kernel (where Python-level
    handlers cannot run until it returns): the C-level handler writes each signal number to `sock`."""
    seen = 0
    while True:
        try:
            data = sock.recv(64)
        except OSError:
            return
        if not data:
            return
        for signum in data:
            if signum in SIGNALS:
                from mae.large.utils import cancel

                cancel.request()
                seen += 1
                if not _received:
                    _received.append(signum)
                if seen >= 2:
                    _hard_exit(signum)


def install() -> None:
    """Route SIGINT, SIGTERM and SIGUSR1 to `Interrupted` (or, after `graceful()`, to a stop request), and a second one
    to an immediate exit; ignore SIGXFSZ (main thread only; elsewhere a no-op).

    SIGXFSZ is what a write past the file-size limit (`ulimit -f`, RLIMIT_FSIZE) sends: its default action kills the
    process at once, with no message and the temporary file left behind. Ignored, the write fails with EFBIG instead,
    which the atomic writer cleans up and `errors.handle_errors` reports as one line naming the file."""
    try:
        for signum in SIGNALS:
            signal.signal(signum, _handler)
        if hasattr(signal, "SIGXFSZ"):  # POSIX only
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    except ValueError:  # not the main thread (an embedding application): leave its handlers alone
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(reader,), name="mae-signal-watch", daemon=True).start()
    _keep.extend((reader, writer))


_keep: list[socket.socket] = []  # the socket pair lives as long as the process


def signum_of(error: BaseException) -> int:
    """The signal behind a KeyboardInterrupt: SIGTERM for `Interrupted(SIGTERM)`, else SIGINT."""
    return getattr(error, "signum", None) or received() or signal.SIGINT
