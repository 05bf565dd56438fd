"""The outputs the README shows are what the commands print now (at 100 columns, as the README was drawn)."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex

import pytest

from cli import console
from cli.app import app
from mae.large import catalog
from tests.helpers import REPO

WIDTH = 100


def readme_block(command: str) -> list[str]:
    """The lines of the README's console block that starts with `$ {command}`, the command line left out."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(f"```console\n$ {command}\n") + len(f"```console\n$ {command}\n")
    return text[start:text.index("```", start)].rstrip("\n").split("\n")


def printed(runner, monkeypatch, *args) -> tuple[list[str], list[str]]:
    """(stdout lines, stderr lines) of a command drawn at the README's width."""
    monkeypatch.setattr(console.out, "_width", WIDTH)
    result = runner.invoke(app, [*map(str, args)])
    return result.stdout.rstrip("\n").split("\n"), result.stderr.rstrip("\n").split("\n")


def test_download_list_is_what_the_command_prints(runner, monkeypatch) -> None:
    shown = [line.rstrip() for line in readme_block("mae-large download --list")]
    stdout, _ = printed(runner, monkeypatch, "download", "--list")
    assert shown == [line.rstrip() for line in stdout]

    rows = [line.split()[0] for line in shown if line.startswith("  ") and line.split()[0] in catalog.CHECKPOINTS]
    assert rows == list(catalog.CHECKPOINTS)  # a row per published checkpoint, in the catalogue's order


def test_the_inspect_panel_has_the_rows_the_command_prints(runner, small_arch, small_ckpts, monkeypatch) -> None:
    def fields(lines: list[str]) -> list[str]:  # the checkpoint panel's row names (the tip's wrapped lines have none)
        panel = lines[1:lines.index(next(line for line in lines if line.startswith("╰")))]
        names = [re.match(r"│ (\S+(?: \S+)?)\s{2,}", line) for line in panel]
        return [m.group(1) for m in names if m]

    shown = readme_block("mae-large inspect data/mae_pretrain_vit_large.pth")
    stdout, _ = printed(runner, monkeypatch, "inspect", small_ckpts[1])
    assert fields(shown) == fields(stdout)
    assert "│ ...  " not in "\n".join(shown)  # every folded row is shown, as the command prints them


def test_the_reconstruct_messages_are_the_ones_printed(runner, small_arch, small_ckpts, images, tmp_path,
                                                       monkeypatch) -> None:
    shown = readme_block("mae-large reconstruct photos/ --out outputs")
    messages = shown[:shown.index("")]  # what goes to stderr before the table
    _, stderr = printed(runner, monkeypatch, "reconstruct", images[0].parent, "-c", small_ckpts[0], "--out",
                         tmp_path / "out")  # not the folder holding the images: that is refused

    def kind(line: str) -> str:  # "full checkpoint", "- took", "note: decoder"
        return " ".join(line.split()[:2])

    assert [kind(line) for line in messages] == [kind(line) for line in stderr if line.strip() and "gallery" not in line]


@pytest.mark.slow
def test_the_noise_loss_table_is_what_the_command_prints(runner, monkeypatch) -> None:
    """`loss --noise --random-init --check` is seeded end to end, so the README shows its exact output."""
    shown = [line.rstrip() for line in readme_block("mae-large loss --noise --random-init --check")]
    stdout, stderr = printed(runner, monkeypatch, "loss", "--noise", "--random-init", "--check")
    assert shown == [line.rstrip() for line in [*stderr, *stdout] if line.strip()]


def console_command(prefix: str) -> tuple[list[str], list[str]]:
    """(the arguments, the output lines) of the README's console block whose command starts with `$ {prefix}`: the
    command's continuation lines (ending in a backslash) joined, an environment assignment and `mae-large` left out."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(f"```console\n$ {prefix}") + len("```console\n$ ")
    lines = text[start:text.index("```", start)].rstrip("\n").split("\n")
    command = []
    while lines[0].endswith("\\"):
        command.append(lines.pop(0)[:-1])
    command.append(lines.pop(0))
    args = shlex.split(" ".join(command))
    while "=" in args[0]:
        args.pop(0)
    assert args[0] == "mae-large"
    return args[1:], lines


@pytest.mark.slow  # 40 epochs of a small MAE: about 3 minutes at one thread
def test_the_digits_pretraining_prints_what_the_readme_shows(runner, monkeypatch, tmp_path) -> None:
    """The README's digits run, run again as written on the same digits (docs/figures/make_data.py) with one thread, as
    shown: the same settings, held-out losses and k-NN numbers, to the digit (only the images/s differ). A README line
    `...` stands for the lines it leaves out, ` ... ` inside a line for the text it leaves out."""
    import torch

    spec = importlib.util.spec_from_file_location("make_data", REPO / "docs" / "figures" / "make_data.py")
    make_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_data)
    make_data.digits(tmp_path / "digits")
    monkeypatch.chdir(tmp_path)
    args, shown = console_command("OMP_NUM_THREADS=1 mae-large pretrain digits/train")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        stdout, stderr = printed(runner, monkeypatch, *args)
    finally:
        torch.set_num_threads(threads)
    said = [line.strip() for line in [*stderr, *stdout] if line.strip() and "━" not in line]

    def pattern(line: str) -> str:  # the README's line: its images/s any number, its " ... " any text
        if line.strip() == "...":
            return r"(?:[^\n]*\n)*?"
        line = re.sub(r"[\d.]+ images/s", "@ images/s", line.strip())
        return ".*".join(re.escape(part) for part in line.split(" ... ")).replace("@", r"[\d.]+") + "\n"

    assert sum(line.strip() != "..." for line in shown) >= 10
    assert re.fullmatch("".join(pattern(line) for line in shown), "".join(line + "\n" for line in said)), said
    log = [json.loads(line) for line in (tmp_path / "runs" / "digits" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 40
    assert log[-1]["val_pixel_loss"] < min(log[0]["val_baseline_pixel_loss"], 0.5 * log[0]["val_pixel_loss"])
