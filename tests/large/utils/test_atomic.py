"""The atomic writer's registry of live temporary files and finished files, and the stop request."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from mae.large.utils import atomic, cancel


def test_live_temporaries_are_registered_and_removable(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    with atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        assert tmp in atomic.live_temporaries()
        assert atomic.remove_live_temporaries() == [tmp] and not tmp.exists()
        tmp.write_bytes(b"whole")  # the writer carries on (the hard exit would not)
    assert target.read_bytes() == b"whole" and atomic.live_temporaries() == []
    assert atomic.completed()[-1] == target


def test_a_staging_folder_is_a_live_temporary_removed_with_its_files(tmp_path: Path) -> None:
    with atomic.staging_folder(tmp_path) as folder:
        (folder / "model.onnx").write_bytes(b"graph")
        (folder / "model.onnx.data").write_bytes(b"weights")
        assert folder.parent == tmp_path and folder.name.startswith(".mae-") and folder in atomic.live_temporaries()
        assert atomic.remove_live_temporaries() == [folder] and not folder.exists()  # the hard exit's clean-up
    with pytest.raises(KeyboardInterrupt), atomic.staging_folder(tmp_path) as folder:
        (folder / "model.onnx").write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == [] and atomic.live_temporaries() == []


def test_a_live_temporary_folder_is_registered_and_removable(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("{}")
        assert tmp in atomic.live_temporaries() and not target.exists()
        assert atomic.remove_live_temporaries() == [tmp] and not tmp.exists()
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")  # the writer carries on (the hard exit would not)
    assert (target / "config.json").read_text() == "{}" and atomic.live_temporaries() == []
    assert atomic.completed()[-1] == target


def test_a_folder_replaces_another_only_when_asked(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")
    with pytest.raises(OSError), atomic.atomic_dir(target) as tmp:
        (tmp / "new.bin").write_bytes(b"new")
    assert [p.name for p in target.iterdir()] == ["old.bin"] and [p.name for p in tmp_path.iterdir()] == ["model"]
    with atomic.atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new.bin").write_bytes(b"new")
    assert [p.name for p in target.iterdir()] == ["new.bin"] and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_failed_swap_puts_the_old_folder_back(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")
    real, calls = os.replace, []

    def replace(src, dst):  # the second rename (new folder into place) fails, as on a full or broken disk
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, "I/O error")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError), atomic.atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new.bin").write_bytes(b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (target / "old.bin").read_bytes() == b"old"


def test_a_folders_files_get_the_modes_a_plain_open_gives(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        with atomic.atomic_dir(tmp_path / "model") as tmp:
            (tmp / "weights.bin").write_bytes(b"w")
            os.chmod(tmp / "weights.bin", 0o600)  # as safetensors' save_file creates its files
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "model" / "weights.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755


def test_a_failed_write_names_the_target_and_is_not_completed(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    before = len(atomic.completed())
    with pytest.raises(OSError) as info, atomic.atomic_path(target):
        raise OSError(28, "No space left on device")
    assert info.value.filename == str(target) and not target.exists()
    assert len(atomic.completed()) == before and list(tmp_path.iterdir()) == []


def test_a_stop_request_ends_the_worker_without_waiting(monkeypatch) -> None:
    from mae.large.jobs.forward import _run_ahead

    release = threading.Event()

    def slow():
        yield 1
        release.wait(5)  # a batch in flight
        yield 2

    items = _run_ahead(slow(), 1)
    assert next(items) == 1
    cancel.request()
    try:
        items.close()  # returns at once: the worker is not joined
        assert not release.is_set()
    finally:
        cancel.reset()
        release.set()
