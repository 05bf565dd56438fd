"""`features --out DIR`: shards of real digits, the reader, resume after a killed run, torchrun, memory, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.app import app
from mae.large.data.loader import image_source
from mae.large.evaluate.store import load_features, open_features
from tests.cli.test_features_cli import _free_port, _gloo_works
from tests.cli.test_reliability import child, error_lines, left_over, wait_for
from tests.helpers import REPO, encoder_only, save_official, small_state_dict, write_digits_tree

runner = CliRunner()


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    return save_official(tmp_path_factory.mktemp("enc") / "enc.pth", encoder_only(small_state_dict()))


def run(*args: object):
    return runner.invoke(app, ["features", *map(str, args)])


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


DIGIT_FILES = [  # class 0 .. 9 of the `digits_tree` fixture
    "0000 0010 0020 0030 0036 0048 0049 0055 0072 0078 0079 0101 0126 0130 0140 0150 0160 0166 0178 0179",
    "0001 0011 0021 0042 0047 0056 0070 0080 0085 0090 0093 0099 0107 0131 0141 0151 0172 0177 0186 0200",
    "0002 0012 0022 0050 0051 0054 0057 0075 0077 0084 0113 0115 0116 0132 0142 0152 0180 0181 0184 0187",
    "0003 0013 0023 0045 0059 0060 0062 0063 0083 0089 0091 0098 0103 0133 0143 0153 0175 0189 0190 0192",
    "0004 0014 0024 0041 0064 0068 0087 0097 0100 0110 0111 0121 0124 0134 0144 0154 0171 0194 0198 0225",
    "0005 0015 0025 0032 0033 0035 0046 0071 0074 0102 0109 0117 0120 0135 0145 0155 0162 0163 0165 0176",
    "0006 0016 0026 0034 0058 0065 0066 0067 0082 0088 0095 0104 0106 0136 0146 0156 0164 0188 0195 0196",
    "0007 0017 0027 0043 0044 0052 0061 0081 0086 0094 0108 0112 0118 0137 0147 0157 0173 0174 0182 0191",
    "0008 0018 0028 0038 0040 0053 0076 0096 0114 0122 0123 0127 0129 0138 0148 0158 0168 0170 0183 0206",
    "0009 0019 0029 0031 0037 0039 0069 0073 0092 0105 0119 0125 0128 0139 0149 0159 0161 0167 0169 0199",
]


def test_shards_of_an_image_folder_tree(small_arch, digits_tree, encoder, tmp_path) -> None:
    out, single = tmp_path / "feats", tmp_path / "one.safetensors"
    common = [digits_tree, "-c", encoder, "--device", "cpu", "--batch-size", "16", "--workers", "0"]
    result = run(*common, "--out", out, "--shard-size", "64", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["count"] == 200 and data["shards"] == 4 and data["labels"] and data["failed"] == []
    # 200 rows: 3 full shards of 64 and the last of 8, each written whole, then the index.
    assert sorted(p.name for p in out.iterdir()) == ["index.json"] + [f"shard-r000-0000{k}.safetensors" for k in range(4)]
    index = json.loads((out / "index.json").read_text())
    assert (index["format"], index["rows"], index["dim"], index["world_size"], index["shard_size"]) == (
        "mae-large-features/2", 200, 64, 1, 64)
    assert (index["pool"], index["transform"], index["layer"], index["size"], index["dtype"]) == (
        "cls", "eval", 1, "32x32", "float32")
    # The tree's files in ImageFolder order (class folders sorted, files by name within): the first 20 digits of
    # each class in scikit-learn's `load_digits`, named by their index there (`write_digits_tree`).
    assert index["files"] == [str(digits_tree / str(label) / f"{name}.png")
                              for label, names in enumerate(DIGIT_FILES) for name in names.split()]
    assert index["labels"] == [label for label in range(10) for _ in range(20)]
    assert index["classes"] == [str(i) for i in range(10)]
    assert [s["rows"] for s in index["shards"]] == [64, 64, 64, 8]

    assert run(*common, "--out", single).exit_code == 0
    fs, one = open_features(out), open_features(single)
    assert (fs.rows, fs.dim, fs.classes) == (200, 64, one.classes)
    assert fs.names == one.names and torch.equal(fs.labels, one.labels) and fs.labels.dtype == torch.int64
    assert fs.meta["checkpoint"] == one.meta["checkpoint"] == str(encoder) and fs.meta["layer"] == one.meta["layer"]
    whole = fs.materialize()
    assert torch.equal(whole, one.materialize())  # the same batches: the same bits
    chunks = list(fs.chunks(37))
    assert [c.shape[0] for c in chunks] == [37] * 5 + [15] and torch.equal(torch.cat(chunks), whole)
    features, names, meta = load_features(out)
    assert torch.equal(features, whole) and names == fs.names and meta["pool"] == "cls"


def test_a_folder_with_shards_is_not_overwritten_and_other_settings_are_refused(small_arch, digits_tree, encoder,
                                                                                 tmp_path) -> None:
    out = tmp_path / "feats"
    common = [digits_tree, "-c", encoder, "--device", "cpu", "--workers", "0", "--out", out, "--shard-size", "100"]
    assert run(*common).exit_code == 0
    before = files_of(out)
    again = run(*common)
    assert again.exit_code == 1 and "already holds feature shards" in again.stderr and "--resume" in again.stderr
    other = run(*common, "--resume", "--pool", "mean")
    assert other.exit_code == 1 and "--pool cls" in other.stderr and "--pool mean" in other.stderr  # in the CLI's words
    assert len(error_lines(other.stderr)) == 1
    assert run(*common, "--resume").exit_code == 0  # complete already: the same folder
    assert files_of(out) == before


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT", "MAE_LARGE_DEBUG")}
    return dict(env, MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def test_resume_after_a_killed_run_is_bit_identical(digits_tree, encoder, tmp_path) -> None:
    """A real child process killed (SIGKILL: no clean-up at all) inside its second shard write; --resume keeps
    the first shard, removes the half-written file and gives exactly the bytes of an uninterrupted run."""
    whole, resumed, ready = tmp_path / "whole", tmp_path / "resumed", tmp_path / "ready"
    args = ["features", str(digits_tree), "-c", str(encoder), "--device", "cpu", "--batch-size", "12",
            "--shard-size", "50", "--workers", "1"]
    done = subprocess.run([sys.executable, "-m", "tests.cli.child", "none", *args, "--out", str(whole)], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    proc = child("shard", [*args, "--out", str(resumed)], ready)
    wait_for(ready, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert [p.name for p in resumed.glob("shard-*")] == ["shard-r000-00000.safetensors"]
    assert left_over(resumed)  # the killed write's temporary file
    first = (resumed / "shard-r000-00000.safetensors").read_bytes()
    again = subprocess.run([sys.executable, "-m", "tests.cli.child", "none", *args, "--out", str(resumed), "--resume",
                            "--json"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["resumed_inputs"] == 50
    assert (resumed / "shard-r000-00000.safetensors").read_bytes() == first  # kept, not rewritten
    assert left_over(resumed) == []
    assert files_of(resumed) == files_of(whole)  # every shard and the index, byte for byte


def test_torchrun_two_processes_give_the_rows_of_one(digits_tree, encoder, tmp_path) -> None:
    reason = _gloo_works()
    if reason:
        pytest.skip(reason)
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["features", str(digits_tree), "-c", str(encoder), "--device", "cpu", "--batch-size", "8",
            "--shard-size", "30", "--workers", "0", "--json"]
    single = subprocess.run([sys.executable, "-m", "tests.cli.child", "none", *args, "--out", str(one)], cwd=REPO,
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                "--master-port", str(_free_port()), "-m", "tests.cli.child", "none"]
    dist = subprocess.run([*torchrun, *args, "--out", str(two)], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert dist.returncode == 0, dist.stderr
    data = json.loads(dist.stdout)  # only rank 0 printed
    assert data["world_size"] == 2 and data["count"] == 200
    ranks = {json.loads((two / "index.json").read_text())["shards"][i]["rank"] for i in range(8)}
    assert ranks == {0, 1} and sorted(p.name for p in two.glob("shard-r001-*"))[-1] == "shard-r001-00003.safetensors"
    a, b = open_features(one), open_features(two)
    assert a.names == b.names and torch.equal(a.labels, b.labels) and b.meta["world_size"] == "2"
    # allclose: the ranks batch other images together, and a row may round differently with its batch-mates.
    assert torch.allclose(a.materialize(), b.materialize(), atol=1e-5, rtol=0)
    # Resuming with another number of processes is refused, with the reason.
    refused = subprocess.run([sys.executable, "-m", "tests.cli.child", "none", *args, "--out", str(two), "--resume"],
                             cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and len(error_lines(refused.stderr)) == 1, refused.stderr
    assert "written by more than 1 process" in refused.stderr and "same number of processes" in refused.stderr


def test_memory_stays_flat_over_5000_real_images(encoder, tmp_path) -> None:
    """The digits three times over (5,391 inputs through a list file) into shards of 500 rows: the resident memory
    of the process grows by less than a bound between the first samples and the end."""
    tree = write_digits_tree(tmp_path / "digits", size=16)
    listing = tmp_path / "all.txt"
    paths = [str(p) for p in image_source([tree]).paths]
    listing.write_text("\n".join(paths * 3) + "\n")
    samples_file = tmp_path / "rss.json"
    args = ["features", str(listing), "-c", str(encoder), "--device", "cpu", "--batch-size", "64", "--size", "32",
            "--shard-size", "500", "--workers", "1", "--out", str(tmp_path / "feats")]
    done = subprocess.run([sys.executable, "-m", "tests.cli.child", "rss", *args], cwd=REPO,
                          env=dict(_env(), MAE_TEST_READY=str(samples_file)), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert open_features(tmp_path / "feats").rows == 3 * len(paths)
    samples = json.loads(samples_file.read_text())
    assert len(samples) >= 20
    baseline = samples[3]  # after the first batches: the model, the loader and the first shard are allocated
    growth = max(samples[3:]) - baseline
    print(f"\nRSS over {3 * len(paths)} images: baseline {baseline / 2**20:.1f} MiB, growth {growth / 2**20:.2f} MiB")
    assert growth < 8 * 2**20, [s // 2**20 for s in samples]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_with_workers_leaves_no_temporary_file(digits_tree, encoder, tmp_path, sig) -> None:
    out, ready = tmp_path / "feats", tmp_path / "ready"
    args = ["features", str(digits_tree), "-c", str(encoder), "--device", "cpu", "--batch-size", "8",
            "--shard-size", "40", "--workers", "2", "--out", str(out)]
    proc = child("shard", args, ready)
    wait_for(ready, proc)
    assert left_over(out), "the child should be inside a shard write"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and "no half-written file was left" in lines[0], stderr
    assert "Traceback" not in stderr
    assert left_over(out) == [] and sorted(p.name for p in out.iterdir()) == ["shard-r000-00000.safetensors"]
