"""`mae-large features`: in-process with a tiny model, and as 1 vs 2 processes under torchrun with ViT-L."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cli.app import app
from mae.large import MAEConfig, VisionTransformer, ViTConfig
from mae.large.evaluate.features import classifier_for_pool, extract_features
from mae.large.evaluate.store import load_features
from tests.helpers import (
    REPO,
    encoder_only,
    save_official,
    shaped_state_dict,
    small_config,
    small_state_dict,
    use_small_architecture,
)

runner = CliRunner()


def tiny_classifier_config(size: tuple[int, int], pool: str) -> ViTConfig:
    return classifier_for_pool(pool, ViTConfig.from_mae(small_config()), img_size=size)


@pytest.fixture
def tiny(monkeypatch):
    use_small_architecture(monkeypatch)


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> Path:
    return save_official(tmp_path_factory.mktemp("enc") / "enc.pth", encoder_only(small_state_dict()))


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (20 + 5 * i, 36 - 2 * i, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def run(*args: str):
    return runner.invoke(app, ["features", *map(str, args)])


def expected_rows(encoder_file: Path, paths: list[Path], pool: str = "cls") -> torch.Tensor:
    with warnings.catch_warnings():  # a fine-tuned file's classifier is replaced here: its rows are computed apart
        warnings.simplefilter("ignore", UserWarning)
        model = VisionTransformer.from_pretrained(encoder_file, tiny_classifier_config((32, 32), pool)).eval()
    return torch.stack([r.vector for r in extract_features(model, paths)])


# ---- in process, tiny model ---------------------------------------------------------------------
def test_writes_rows_in_input_order(tiny, encoder_file, tmp_path) -> None:
    paths = write_images(tmp_path / "imgs", 4)
    order = [paths[2], paths[0], paths[3], paths[1]]  # argument order, not name order
    out = tmp_path / "f.safetensors"
    result = run(*order, "--checkpoint", encoder_file, "--out", out, "--size", "32", "--batch-size", "3", "--device", "cpu")
    assert result.exit_code == 0, result.output
    features, names, meta = load_features(out)
    assert names == [str(p) for p in order]
    assert features.shape == (4, 64)
    assert torch.allclose(features, expected_rows(encoder_file, order), atol=1e-6)
    # The defaults: the official linear probe's feature (cls token after the trained norm) and eval transform.
    assert meta["pool"] == "cls" and meta["crop"] == "eval" and meta["transform"] == "eval"
    assert meta["size"] == "32x32" and meta["checkpoint"] == str(encoder_file)
    assert meta["model"] == "vit_d64_depth2_heads4_patch8" and meta["dim"] == "64" and meta["layer"] == "1"
    assert "wrote 4 feature vectors of dim 64" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.safetensors", "imgs"]  # no temp file


def test_layer_takes_an_earlier_block_and_is_recorded(tiny, encoder_file, tmp_path) -> None:
    paths = write_images(tmp_path / "imgs", 2)
    out = tmp_path / "f.safetensors"
    result = run(*paths, "-c", encoder_file, "-o", out, "--layer", "-2", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["layer"] == 0
    features, _, meta = load_features(out)
    assert meta["layer"] == "0"
    model = VisionTransformer.from_pretrained(encoder_file, tiny_classifier_config((32, 32), "cls")).eval()
    expected = torch.stack([r.vector for r in extract_features(model, paths, layer=0)])
    assert torch.allclose(features, expected, atol=1e-6)
    assert not torch.allclose(features, expected_rows(encoder_file, paths), atol=1e-3)
    bad = run(*paths, "-c", encoder_file, "-o", tmp_path / "g.safetensors", "--layer", "2", "--device", "cpu")
    assert bad.exit_code == 1 and "block 2 does not exist" in bad.stderr and "--layer" in bad.stderr
    assert not (tmp_path / "g.safetensors").exists()


def test_folder_input_and_json(tiny, encoder_file, tmp_path) -> None:
    paths = write_images(tmp_path / "imgs", 3)
    out = tmp_path / "f.safetensors"
    # --device cpu: the expected rows are computed on the CPU, and `auto` would pick a GPU where there is one.
    result = run(tmp_path / "imgs", "-c", encoder_file, "-o", out, "--size", "32", "--pool", "mean", "--json",
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["output"] == str(out) and data["count"] == 3 and data["dim"] == 64 and data["pool"] == "mean"
    assert data["failed"] == [] and data["world_size"] == 1
    features, names, meta = load_features(out)
    assert names == [str(p) for p in paths] and meta["pool"] == "mean"
    assert torch.allclose(features, expected_rows(encoder_file, paths, "mean"), atol=1e-6)
    assert not torch.allclose(features, expected_rows(encoder_file, paths, "cls"), atol=1e-3)


def test_crop_resize_is_still_offered(tiny, encoder_file, tmp_path) -> None:
    paths = write_images(tmp_path / "imgs", 2)
    out = tmp_path / "f.safetensors"
    result = run(*paths, "-c", encoder_file, "-o", out, "--crop", "resize", "--device", "cpu")
    assert result.exit_code == 0, result.output
    features, _, meta = load_features(out)
    assert meta["crop"] == meta["transform"] == "resize"
    model = VisionTransformer.from_pretrained(encoder_file, tiny_classifier_config((32, 32), "cls")).eval()
    assert torch.allclose(features, torch.stack([r.vector for r in extract_features(model, paths, crop="resize")]),
                          atol=1e-6)
    assert not torch.allclose(features, expected_rows(encoder_file, paths), atol=1e-3)  # eval is another transform


def test_a_bad_image_fails_the_run_but_the_others_are_written(tiny, encoder_file, tmp_path) -> None:
    good = write_images(tmp_path / "imgs", 3)
    bad = tmp_path / "imgs" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    missing = tmp_path / "nowhere.png"
    out = tmp_path / "f.safetensors"
    result = run(good[0], bad, good[1], missing, good[2], "-c", encoder_file, "-o", out, "--size", "32",
                 "--batch-size", "2", "--json", "--device", "cpu")
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert data["count"] == 3 and data["output"] == str(out)
    assert sorted(f["image"] for f in data["failed"]) == sorted([str(bad), str(missing)])
    features, names, _ = load_features(out)
    assert names == [str(p) for p in good]
    assert torch.allclose(features, expected_rows(encoder_file, good), atol=1e-6)

    text = run(good[0], bad, "-c", encoder_file, "-o", tmp_path / "g.safetensors", "--size", "32")
    assert text.exit_code == 1
    assert "skipped" in text.stderr and "broken.png" in text.stderr and "1 of 2 inputs failed" in text.stderr


def test_every_image_failing_writes_nothing(tiny, encoder_file, tmp_path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"nope")
    out = tmp_path / "f.safetensors"
    result = run(bad, "-c", encoder_file, "-o", out, "--size", "32")
    assert result.exit_code == 1
    assert "nothing was written" in result.stderr
    assert not out.exists()
    result = run(tmp_path / "nowhere", "-c", encoder_file, "-o", out, "--size", "32")
    assert result.exit_code == 1 and "no image to extract features from" in result.stderr


def test_a_fine_tuned_file_follows_its_own_pooling_and_trained_fc_norm(tiny, tmp_path) -> None:
    """A global-pool fine-tuned classifier: by default mean pooling through its trained fc_norm (not a fresh one);
    --pool cls is refused (it has no final norm)."""
    sd = encoder_only(small_state_dict())
    sd.pop("norm.weight"), sd.pop("norm.bias")  # a global-pool fine-tuned file has fc_norm instead
    sd |= {"fc_norm.weight": torch.full((64,), 2.0), "fc_norm.bias": torch.full((64,), 0.5),
           "head.weight": torch.zeros(5, 64), "head.bias": torch.zeros(5)}
    path = save_official(tmp_path / "finetuned.pth", sd)
    paths = write_images(tmp_path / "imgs", 2)
    out = tmp_path / "f.safetensors"
    result = run(tmp_path / "imgs", "-c", path, "-o", out, "--size", "32", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "fine-tuned" in result.stderr and "trained fc_norm" in " ".join(result.stderr.split())
    assert "holds a trained classifier" not in result.stderr  # nothing trained is set aside
    features, _, meta = load_features(out)
    assert meta["pool"] == "mean"
    plain = expected_rows(path, paths, "mean")  # the same encoder through a fresh (unit) fc_norm
    assert torch.allclose(features, plain * 2.0 + 0.5, atol=1e-5)
    refused = run(tmp_path / "imgs", "-c", path, "-o", tmp_path / "g.safetensors", "--pool", "cls", "--device", "cpu")
    assert refused.exit_code == 1 and "--pool mean" in refused.stderr and "no final norm" in refused.stderr


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error:")
    return lines[0]


def test_missing_checkpoint(tiny, tmp_path) -> None:
    write_images(tmp_path / "imgs", 2)
    out = tmp_path / "f.safetensors"
    result = run(tmp_path / "imgs", "-c", tmp_path / "absent.pth", "-o", out, "--size", "32")
    assert result.exit_code == 1
    assert "absent.pth" in _one_error_line(result.stderr)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]


@pytest.mark.parametrize("size", ["tiny", "vit-large"])
def test_incompatible_checkpoint(monkeypatch, tmp_path, size) -> None:
    """A ViT-B file, against the tiny model (2 blocks, 64 wide) and the real ViT-L (24 blocks, 1024 wide)."""
    if size == "tiny":
        use_small_architecture(monkeypatch)
    write_images(tmp_path / "imgs", 2)
    vit_b = save_official(tmp_path / "vit_b.pth", encoder_only(shaped_state_dict(MAEConfig.vit_base())))
    out = tmp_path / "f.safetensors"
    result = run(tmp_path / "imgs", "-c", vit_b, "-o", out, "--size", "32" if size == "tiny" else "224")
    assert result.exit_code == 1
    line = _one_error_line(result.stderr)
    if size == "vit-large":
        assert "blocks.12" in line  # ViT-L has 24 blocks, the file 12
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "vit_b.pth"]


@pytest.mark.parametrize(("option", "value"), [("--pool", "max"), ("--crop", "zoom"), ("--size", "30"),
                                               ("--dtype", "int8")])
def test_bad_options_are_usage_errors(tiny, encoder_file, tmp_path, option, value) -> None:
    write_images(tmp_path / "imgs", 1)
    result = run(tmp_path / "imgs", "-c", encoder_file, "-o", tmp_path / "f.safetensors", option, value)
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "f.safetensors").exists()


def test_resume_needs_a_shard_folder(tiny, encoder_file, tmp_path) -> None:
    write_images(tmp_path / "imgs", 1)
    result = run(tmp_path / "imgs", "-c", encoder_file, "-o", tmp_path / "f.safetensors", "--resume")
    assert result.exit_code == 2 and "--resume" in result.output and not (tmp_path / "f.safetensors").exists()


def test_importing_the_cli_does_not_import_torch() -> None:
    code = "import sys, cli.app; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


# ---- 1 process vs torchrun with 2, real ViT-L ---------------------------------------------------
def _free_port() -> int:
    # torchrun's --master-port 0 is not usable here: each worker is told port 0 and the rendezvous hangs.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT", "MAE_LARGE_DEBUG")}
    env.update(MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(_free_port()), "-m", "cli", *args]


def _run(cmd: list[str], timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd[:6])} ... did not finish in {timeout} s; stderr: {exc.stderr!r}")
    return done, time.perf_counter() - started


@functools.cache
def _gloo_works() -> str | None:
    """None if two gloo processes can form a group on this machine, else why not."""
    script = ("import torch.distributed as d; d.init_process_group('gloo'); out=[None]*2 if d.get_rank()==0 else None; "
              "d.gather_object(d.get_rank(), out, dst=0); d.get_rank()==0 and print(out); d.destroy_process_group()")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "--no-python", sys.executable, "-c", script]
    try:
        done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "torch.distributed gloo rendezvous on 127.0.0.1 timed out after 120 s"
    if done.returncode != 0 or "[0, 1]" not in done.stdout:
        tail = " ".join(done.stderr.split())[-300:]
        return f"torch.distributed gloo cannot initialise here (exit {done.returncode}): {tail}"
    return None


@pytest.mark.slow
def test_torchrun_two_processes_match_one(vit_l_files, tmp_path) -> None:
    reason = _gloo_works()
    if reason:
        pytest.skip(reason)
    _, enc, _ = vit_l_files
    folder = tmp_path / "imgs"
    paths = write_images(folder, 5)  # odd: rank 0 gets 3 images, rank 1 gets 2
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    common = [str(folder), "--checkpoint", str(enc), "--batch-size", "2", "--device", "cpu", "--json"]

    # Both run with OMP_NUM_THREADS=1 (`_env`: torchrun's default for its ranks), since a CPU product's last bits
    # depend on the thread count; each forward holds the batch size (a short batch is padded): the same shapes.
    single, single_s = _run([sys.executable, "-m", "cli", "features", *common, "--out", str(one)])
    assert single.returncode == 0, single.stderr
    dist, dist_s = _run(_torchrun("features", *common, "--out", str(two)))
    assert dist.returncode == 0, dist.stderr
    print(f"\nViT-L features of 5 images: 1 process {single_s:.1f} s, torchrun 2 processes {dist_s:.1f} s")

    # Only rank 0 prints: one JSON document on stdout.
    data = json.loads(dist.stdout)
    assert data["world_size"] == 2 and data["count"] == 5 and data["dim"] == 1024 and data["failed"] == []
    assert json.loads(single.stdout)["world_size"] == 1

    f1, names1, meta1 = load_features(one)
    f2, names2, meta2 = load_features(two)
    assert names1 == names2 == [str(p) for p in paths]
    assert meta1 == meta2
    assert f1.shape == f2.shape == (5, 1024)
    # Bit for bit, although the ranks batch differently ([0, 2], [4] and [1, 3] against [0, 1], [2, 3], [4]): every
    # forward multiplies (2 x tokens) rows at the same thread count.
    assert torch.equal(f1, f2), (f1 - f2).abs().max()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp file from either run


@pytest.mark.slow
def test_reconstruct_under_torchrun_shards_the_images(vit_l_files, tmp_path) -> None:
    """Each rank draws its own share of the figures; rank 0 reports every image, in input order."""
    reason = _gloo_works()
    if reason:
        pytest.skip(reason)
    full, _, _ = vit_l_files
    paths = write_images(tmp_path / "imgs", 3)
    # Sorts third: rank 0 gets [img0, img1b], where reconstruct_files yields the failure before img0.
    bad = tmp_path / "imgs" / "img1b.png"
    bad.write_bytes(b"broken")
    common = ["reconstruct", str(tmp_path / "imgs"), "--checkpoint", str(full), "--device", "cpu", "--json"]
    single, single_s = _run([sys.executable, "-m", "cli", *common, "--out", str(tmp_path / "one")])
    dist, dist_s = _run(_torchrun(*common, "--out", str(tmp_path / "two")))
    print(f"\nViT-L reconstruct of 3 images (+1 broken): 1 process {single_s:.1f} s, torchrun 2 processes {dist_s:.1f} s")
    assert single.returncode == 1 and dist.returncode != 0  # the broken image fails both runs
    one, two = json.loads(single.stdout), json.loads(dist.stdout)  # only rank 0 printed
    order = [str(paths[0]), str(paths[1]), str(bad), str(paths[2])]
    assert [r["image"] for r in one["images"]] == [r["image"] for r in two["images"]] == order
    assert one["failed"] == two["failed"] == 1
    for a, b in zip(one["images"], two["images"]):
        assert ("error" in a) == ("error" in b)
        if "error" not in a:
            assert abs(a["loss"] - b["loss"]) <= 1e-6
            assert Path(b["output"]).parent == tmp_path / "two" and Path(b["output"]).name == Path(a["output"]).name
    # The figures of both ranks, and the gallery that rank 0 writes for a folder input.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["img0.png", "img1.png", "img2.png", "index.html"]


@pytest.mark.slow
def test_vit_large_rows_do_not_depend_on_workers_or_shards(vit_l_files, tmp_path) -> None:
    """At ViT-L (where a CPU product's last bits show), the rows are the same bits with 0 or 2 decoding processes,
    as one file or as a shard folder, at one batch size; the last batch (6 of 8) is as exact as the others."""
    from tests.helpers import write_digits_tree

    _, enc, _ = vit_l_files
    folder = write_digits_tree(tmp_path / "digits", per_class=3)  # 30 real digits, 10 class folders
    outs = {}
    for name, extra in (("w0", ["--workers", "0"]), ("w2", ["--workers", "2"]),
                        ("shards", ["--workers", "2", "--shard-size", "7"])):
        out = tmp_path / (name if name == "shards" else f"{name}.safetensors")
        result = runner.invoke(app, ["features", str(folder), "-c", str(enc), "--size", "32", "--crop", "resize",
                                     "--batch-size", "8", "--device", "cpu", "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        outs[name] = load_features(out)[0]
    assert outs["w0"].shape == (30, 1024)
    assert torch.equal(outs["w0"], outs["w2"]), (outs["w0"] - outs["w2"]).abs().max()
    assert torch.equal(outs["w0"], outs["shards"])
