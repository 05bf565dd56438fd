"""utils.outputs: a file stem per input that never clashes with another input's files or an input image."""

from __future__ import annotations

from pathlib import Path

from mae.large.utils.outputs import output_stems


def test_same_stems_are_numbered_in_input_order(tmp_path: Path) -> None:
    paths = [tmp_path / "a" / "cat.jpg", tmp_path / "b" / "cat.png", tmp_path / "dog.jpg", tmp_path / "c" / "cat.bmp"]
    assert output_stems(paths, tmp_path / "out", ".png") == {paths[0]: "cat", paths[1]: "cat_2", paths[2]: "dog",
                                                              paths[3]: "cat_3"}


def test_no_output_file_is_an_input_image(tmp_path: Path) -> None:
    # Writing into the input folder: `cat.png` would be the input itself, so the figure becomes `cat_2.png`.
    paths = [tmp_path / "cat.png", tmp_path / "dog.jpg"]
    assert output_stems(paths, tmp_path, ".png") == {paths[0]: "cat_2", paths[1]: "dog"}


def test_every_suffix_of_an_input_counts(tmp_path: Path) -> None:
    # Each input writes `stem.png` and `stem.gif` into `tmp_path`, where the image `x_2.gif` is itself an input.
    paths = [tmp_path / "in" / "x.jpg", tmp_path / "in2" / "x.jpeg", tmp_path / "x_2.gif"]
    stems = output_stems(paths, tmp_path, [".png", ".gif"])
    assert stems[paths[0]] == "x"
    assert stems[paths[1]] == "x_3"  # `x_2.gif` would overwrite the third input
    assert stems[paths[2]] == "x_2_2"  # and so would its own `x_2.gif`


def test_guard_refuses_every_way_an_output_can_reach_an_input(tmp_path: Path) -> None:
    import pytest

    from mae.large.errors import InvalidArgumentError
    from mae.large.utils.outputs import guard_output, guard_run_folder

    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    ckpt = data / "model.pth"
    ckpt.write_bytes(b"x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "to_ckpt").symlink_to(ckpt)
    (elsewhere / "to_data").symlink_to(data)
    cases = {
        ckpt: "is the input",  # the same file
        tmp_path / "data" / ".." / "data" / "model.pth": "is the input",  # spelled another way
        elsewhere / "to_ckpt": "through a link",  # a link to it
        data: "contains the input",  # a folder holding it
        tmp_path: "contains the input",
        data / "sub" / "new.png": "lies inside the input folder",  # inside a folder that is read
        elsewhere / "to_data" / "new": "lies inside the input folder",  # inside it through a link
    }
    for out, why in cases.items():
        with pytest.raises(InvalidArgumentError, match=why):
            guard_output(out, [ckpt, data])
    guard_output(elsewhere / "new.pth", [ckpt, data])  # nothing to do with the inputs
    guard_output(tmp_path / "x", [])
    run = tmp_path / "run"
    run.mkdir()
    guard_run_folder(run, resume=False)  # empty: a new run may start there
    (run / "log.jsonl").write_text("")
    with pytest.raises(InvalidArgumentError, match="already holds a run .*log.jsonl"):
        guard_run_folder(run, resume=False)
    guard_run_folder(run, resume=True)
