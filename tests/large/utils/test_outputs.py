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
