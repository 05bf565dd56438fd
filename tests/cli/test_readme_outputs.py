"""The outputs the README shows are what the commands print now (at 100 columns, as the README was drawn)."""

from __future__ import annotations

import re

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
