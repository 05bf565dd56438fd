"""Nothing lost, nothing hidden: signals, full disks, read-only folders, sizes that cannot run, `--json`
on failure. Signals and resource limits are tried on real child processes (`tests/cli/child.py`)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.conftest import flat, write_image
from tests.helpers import REPO, encoder_only, save_official, small_state_dict

PYTHON = sys.executable


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("reliability")
    images = folder / "imgs"
    images.mkdir()
    for i in range(5):
        write_image(images / f"img{i}.png", seed=i)
    return {"imgs": images, "full": save_official(folder / "full.pth", small_state_dict()),
            "encoder": save_official(folder / "enc.pth", encoder_only(small_state_dict()))}


def child(point: str, args: list[str], ready: Path, **popen) -> subprocess.Popen:
    env = dict(os.environ, MAE_TEST_READY=str(ready), MPLBACKEND="Agg", PYTHONPATH=str(REPO))
    return subprocess.Popen([PYTHON, "-m", "tests.cli.child", point, *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def wait_for(ready: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the child never reached the point"
        time.sleep(0.05)


def left_over(folder: Path) -> list[str]:
    """Temporary files anywhere under `folder` (the atomic writer's `.mae-*` names)."""
    return sorted(p.name for p in folder.rglob(".mae-*")) if folder.exists() else []


def reconstruct_args(files: dict[str, Path], out: Path) -> list[str]:
    return ["reconstruct", str(files["imgs"]), "-c", str(files["full"]), "--out", str(out), "--batch-size", "2",
            "--device", "cpu"]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(("error:", "interrupted"))]


# ---- signals ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("point", "sig"), [
    ("figure", signal.SIGTERM),  # inside a figure write: its temporary file exists
    ("figure", signal.SIGINT),
    ("batch", signal.SIGTERM),  # the worker thread is computing the next batch
    ("features", signal.SIGINT),  # inside the features file write
])
def test_a_signal_ends_the_run_with_one_line_and_no_temporary_file(files, tmp_path, point, sig) -> None:
    out, ready = tmp_path / "out", tmp_path / "ready"
    if point == "features":
        args = ["features", str(files["imgs"]), "-c", str(files["encoder"]), "--out", str(out / "f.safetensors"),
                "--device", "cpu", "--batch-size", "2"]
    else:
        args = reconstruct_args(files, out)
    proc = child(point, args, ready)
    wait_for(ready, proc)
    if point != "batch":
        assert left_over(out), "the child should be inside a write"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and ("SIGTERM" if sig == signal.SIGTERM else "Ctrl-C") in lines[0], stderr
    assert "no half-written file was left" in lines[0]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert left_over(out) == []
    if point == "figure":  # the first figure was complete before the signal, and says so
        assert sorted(p.name for p in out.iterdir()) == ["img0.png"]
        assert "1 file(s) were written completely" in lines[0]
    if point == "features":
        assert not (out / "f.safetensors").exists() and "nothing was written" in lines[0]


def test_a_second_signal_exits_at_once_and_removes_temporary_files(files, tmp_path) -> None:
    """The clean-up after the first Ctrl-C hangs (as a forward pass in a kernel would); the second one ends it."""
    out, ready = tmp_path / "out", tmp_path / "ready"
    proc = child("stuck-cleanup", reconstruct_args(files, out), ready)
    wait_for(ready, proc)
    assert left_over(out)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None  # still stuck in the clean-up
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 130, stderr
    assert "stopped at once" in stderr and "Traceback" not in stderr
    assert left_over(out) == []


# ---- resources ----------------------------------------------------------------------------------------
def _limit_file_size() -> None:  # in the child, before exec: writes over 20 kB fail with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_a_full_disk_gives_one_line_naming_the_path(files, tmp_path) -> None:
    out = tmp_path / "out"
    proc = child("none", [*reconstruct_args(files, out), "--json"], tmp_path / "ready", preexec_fn=_limit_file_size)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and str(out) in lines[0] and "larger than this process may write" in lines[0], stderr
    assert "Traceback" not in stderr and "Errno" not in lines[0]
    assert left_over(out) == [] and not any(out.glob("*.png"))
    result = json.loads(stdout)
    assert result["exit_code"] == 1 and result["written"] == [] and str(out) in result["error"]
    assert result["results"] == []  # the first figure failed: no input had a result yet


def test_a_full_disk_while_writing_features(files, tmp_path) -> None:
    out = tmp_path / "f.safetensors"
    # --workers 0: the file-size limit also applies to the shared-memory files that carry worker batches.
    args = ["features", str(files["imgs"]), "-c", str(files["encoder"]), "--out", str(out), "--device", "cpu",
            "--workers", "0"]
    proc = child("none", args, tmp_path / "ready", preexec_fn=lambda: (
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN), resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600))))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and str(out) in lines[0] and "Traceback" not in stderr, stderr
    assert not out.exists() and left_over(tmp_path) == []


def test_a_read_only_output_folder_is_refused_before_the_load(files, tmp_path) -> None:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("no private mount namespace here (unshare -m), so no read-only bind mount can be made")
    out = tmp_path / "ro"
    out.mkdir()
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(REPO), MAE_TEST_READY=str(tmp_path / "ready"))
    script = (f"mount --bind {out} {out} && mount -o remount,ro,bind {out} && exec {PYTHON} -m tests.cli.child none "
              + " ".join(reconstruct_args(files, out)))
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stderr
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and str(out) in lines[0] and "read-only" in lines[0], done.stderr
    assert "checkpoint" not in done.stderr  # refused before the checkpoint was read
    assert list(out.iterdir()) == []


def test_an_output_path_that_is_a_file(runner, small_arch, small_ckpts, images, tmp_path) -> None:
    from cli.app import app

    target = tmp_path / "taken"
    target.write_text("mine")
    result = runner.invoke(app, ["reconstruct", str(images[0]), "-c", str(small_ckpts[0]), "--out", str(target)])
    assert result.exit_code == 2 and "is a file, not a folder" in flat(result.output)
    assert target.read_text() == "mine"


def test_an_oversize_input_is_refused_before_torch_is_imported(tmp_path) -> None:
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom cli.app import app\n"
            "r = CliRunner().invoke(app, ['reconstruct', '.', '--size', '4096'])\n"
            "print(r.exit_code, 'torch' in sys.modules)\nprint(r.stderr)")
    done = subprocess.run([PYTHON, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    first, message = done.stdout.split("\n", 1)
    assert first == "1 False", done.stdout + done.stderr
    assert "65,536 patches" in message and "TFLOP" in message and "--max-patches" in message


def test_max_patches_raises_the_limit(runner, small_arch, small_ckpts, images, tmp_path) -> None:
    from cli.app import app

    args = ["reconstruct", str(images[0]), "-c", str(small_ckpts[0]), "--out", str(tmp_path / "o"), "--size", "64"]
    refused = runner.invoke(app, [*args, "--max-patches", "32"])
    assert refused.exit_code == 1 and "64 patches" in refused.stderr and "over the limit of 32" in refused.stderr
    assert runner.invoke(app, [*args, "--max-patches", "64"]).exit_code == 0


def test_a_seed_out_of_range_is_a_usage_error(runner, small_arch, small_ckpts, images, tmp_path) -> None:
    from cli.app import app

    result = runner.invoke(app, ["reconstruct", str(images[0]), "-c", str(small_ckpts[0]), "--seed", str(2**70)])
    assert result.exit_code == 2 and "--seed" in result.output


# ---- --json on failure ----------------------------------------------------------------------------------
def test_json_usage_error_is_one_json_object(runner, small_arch, images) -> None:
    from cli.app import app

    result = runner.invoke(app, ["reconstruct", str(images[0]), "--mask-ratio", "2", "--json"])
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["exit_code"] == 2 and "--mask-ratio" in data["error"]


def test_json_error_is_one_json_object(runner, small_arch, tmp_path) -> None:
    from cli.app import app

    result = runner.invoke(app, ["inspect", str(tmp_path / "absent.pth"), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["exit_code"] == 1 and "absent.pth" in data["error"] and data["written"] == []


def test_json_failure_lists_the_results_so_far(runner, small_arch, small_ckpts, images, tmp_path, monkeypatch) -> None:
    """A run stopped by an error after two figures says, in its one JSON document, what those gave."""
    from matplotlib.figure import Figure

    from cli.app import app

    savefig, calls = Figure.savefig, []

    def third_fails(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return savefig(self, *a, **k)

    monkeypatch.setattr(Figure, "savefig", third_fails)
    out = tmp_path / "out"
    result = runner.invoke(app, ["reconstruct", str(images[0].parent), "-c", str(small_ckpts[0]), "--out", str(out),
                                 "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert "the disk is full" in data["error"] and str(out / "img2.png") in data["error"]
    assert [Path(r["image"]).name for r in data["results"]] == ["img0.png", "img1.png"]
    assert [Path(p).name for p in data["written"]] == ["img0.png", "img1.png"]
    assert left_over(out) == [] and sorted(p.name for p in out.iterdir()) == ["img0.png", "img1.png"]
