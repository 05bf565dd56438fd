"""train.state: the run checkpoint's entries, weights_only loading, retention by hard link, the log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mae.large.errors import CheckpointError, CheckpointNotFoundError
from mae.large.train import state


def _run_state() -> dict:
    return {"model": {"w": torch.arange(4.0)}, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "epoch": 3,
            "scaler": {"scale": 1.0}, "args": state.plain({"size": (224, 224), "data": Path("/x")}),
            "rng": state.rng_state(torch.device("cpu"))}


def test_plain_turns_tuples_and_paths_into_json_data_and_refuses_objects() -> None:
    assert state.plain({"a": (1, 2), 3: Path("/p"), "n": None, "f": 0.5}) == {"a": [1, 2], "3": "/p", "n": None, "f": 0.5}
    with pytest.raises(TypeError, match="not plain data"):
        state.plain({"x": object()})


def test_a_checkpoint_round_trips_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / state.LAST
    state.save_checkpoint(path, _run_state())
    loaded = state.load_run_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], torch.arange(4.0)) and loaded["epoch"] == 3
    assert loaded["args"] == {"size": [224, 224], "data": "/x"}
    torch.load(path, weights_only=True)  # the official loader's way must work too
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_a_checkpoint_missing_an_official_entry_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "c.pth"
    torch.save({k: v for k, v in _run_state().items() if k != "scaler"}, path)
    with pytest.raises(CheckpointError, match="no scaler entry"):
        state.load_run_checkpoint(path)


def test_a_file_that_is_not_a_checkpoint_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "c.pth"
    path.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="cannot be resumed from") as info:
        state.load_run_checkpoint(path)
    assert "\n" not in str(info.value)


def test_resume_file_takes_a_run_folder_or_a_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="holds no checkpoint-last.pth") as info:
        state.resume_file(tmp_path)
    assert info.value.argument == "resume"
    (tmp_path / state.LAST).write_bytes(b"x")
    assert state.resume_file(tmp_path) == tmp_path / state.LAST
    assert state.resume_file(tmp_path / state.LAST) == tmp_path / state.LAST
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint at"):
        state.resume_file(tmp_path / "missing.pth")


def test_link_or_copy_shares_the_bytes_and_replaces_an_older_copy(tmp_path: Path) -> None:
    source, target = tmp_path / "last.pth", tmp_path / "best.pth"
    target.write_bytes(b"old")
    source.write_bytes(b"new")
    state.link_or_copy(source, target)
    assert target.read_bytes() == b"new"
    assert source.stat().st_ino == target.stat().st_ino  # a hard link here: no second copy on disk


def test_the_log_appends_whole_lines_and_a_resume_drops_later_epochs(tmp_path: Path) -> None:
    assert state.read_log(tmp_path) == []
    for epoch in range(4):
        state.append_log(tmp_path, {"epoch": epoch, "loss": 1.0 / (epoch + 1)})
    assert [r["epoch"] for r in state.read_log(tmp_path)] == [0, 1, 2, 3]
    state.truncate_log(tmp_path, 1)
    lines = (tmp_path / state.LOG).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]


def test_rng_state_round_trips(rng_state) -> None:
    saved = state.rng_state(torch.device("cpu"))
    first = torch.rand(3)
    state.set_rng_state(saved, torch.device("cpu"))
    assert torch.equal(torch.rand(3), first)


@pytest.mark.parametrize("name", ["finetune", "pretrain"])
def test_a_saved_config_comes_back_equal_and_an_unknown_setting_is_named(name: str) -> None:
    from mae.large.errors import MAEError
    from mae.large.train.finetune import FinetuneConfig
    from mae.large.train.pretrain import PretrainConfig

    cls = {"finetune": FinetuneConfig, "pretrain": PretrainConfig}[name]
    config = cls(epochs=3, batch_size=8)
    saved = json.loads(json.dumps(config.to_dict()))  # through config.json: tuples are lists there
    assert cls.from_dict(saved) == config
    with pytest.raises(MAEError, match="the run's settings name frobnicate, unknown here"):
        cls.from_dict({**saved, "frobnicate": 1})
