"""The atomic writer's registry of live temporary files and finished files, and the stop request."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mae.large import atomic, cancel


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


def test_a_failed_write_names_the_target_and_is_not_completed(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    before = len(atomic.completed())
    with pytest.raises(OSError) as info, atomic.atomic_path(target):
        raise OSError(28, "No space left on device")
    assert info.value.filename == str(target) and not target.exists()
    assert len(atomic.completed()) == before and list(tmp_path.iterdir()) == []


def test_a_stop_request_ends_the_worker_without_waiting(monkeypatch) -> None:
    from mae.large.pipeline import _run_ahead

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
