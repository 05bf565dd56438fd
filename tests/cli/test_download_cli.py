"""`mae-large download` through Typer's CliRunner, against the 127.0.0.1 test server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from mae.large.jobs import download as dl
from tests.large.jobs import test_download as shared
from tests.large.jobs.test_download import FILENAME, FULL_TENSORS, FileServer, small_spec

runner = CliRunner()
# The library tests' fixtures: the 127.0.0.1 server and the small checkpoint files.
server = shared.server
blobs = shared.blobs


@pytest.fixture
def small(server: FileServer, blobs: dict[str, bytes], monkeypatch: pytest.MonkeyPatch):
    """A registry entry `small` for the small model, its file served at the server's root."""
    server.files[FILENAME] = blobs["full"]
    spec = small_spec(server, url=f"https://dl.invalid/mae/visualize/{FILENAME}")  # only --base-url reaches it
    monkeypatch.setitem(dl.REGISTRY, "small", spec)
    return spec


def test_list_shows_names_and_purposes() -> None:
    result = runner.invoke(app, ["download", "--list"])
    assert result.exit_code == 0, result.output
    for name in ("visualize", "visualize-gan", "pretrain"):  # file names may fold on a narrow terminal
        assert name in result.stdout
    text = result.stdout.lower()
    assert "reconstruction" in text and "fine-tuning" in text
    assert "1.32 gb" in text and "unknown" in text


def test_list_json() -> None:
    result = runner.invoke(app, ["download", "--list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["pretrain"]["kind"] == "encoder-only" and rows["pretrain"]["num_tensors"] == 294
    assert rows["visualize"]["size"] == 1_318_315_181


def test_download_through_base_url(server: FileServer, blobs: dict[str, bytes], small, tmp_path: Path) -> None:
    result = runner.invoke(app, ["download", "small", "--dest", str(tmp_path / "data"), "--base-url", server.url])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / FILENAME).read_bytes() == blobs["full"]
    assert "downloaded" in result.stdout and "small" in result.stdout
    assert server.requests == [(f"/{FILENAME}", None)]


def test_download_base_url_from_environment_and_present(server: FileServer, small, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAE_LARGE_BASE_URL", server.url)
    args = ["download", "small", "--dest", str(tmp_path)]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "present" in again.stdout
    assert server.count == 1


def test_download_json(server: FileServer, small, tmp_path: Path) -> None:
    result = runner.invoke(app, ["download", "small", "--dest", str(tmp_path), "--base-url", server.url, "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert (row["name"], row["status"], row["kind"], row["num_tensors"]) == ("small", "downloaded", "full", FULL_TENSORS)
    assert row["path"] == str(tmp_path / FILENAME)


def test_404_is_one_error_line(server: FileServer, small, tmp_path: Path) -> None:
    server.mode = "404"
    result = runner.invoke(app, ["download", "small", "--dest", str(tmp_path), "--base-url", server.url])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "404" in lines[0] and f"{server.url}/{FILENAME}" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_unknown_name_exits_1(tmp_path: Path) -> None:
    result = runner.invoke(app, ["download", "visualise", "--dest", str(tmp_path)])
    assert result.exit_code == 1
    assert "error:" in result.stderr and "visualise" in result.stderr and "pretrain" in result.stderr


def test_no_names_is_a_usage_error() -> None:
    result = runner.invoke(app, ["download"])
    assert result.exit_code == 2
    assert "--list" in result.output
