"""`mae-large export-onnx`: the file onnxruntime runs, the table, JSON, and the errors before any export."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from safetensors.torch import load_file

from cli.app import app
from mae.large import MaskedAutoencoderViT
from mae.large.data.images import load_image
from tests.cli.conftest import flat


def run(path: Path, **feeds: torch.Tensor) -> list[torch.Tensor]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(np.asarray(o)) for o in session.run(None, {k: v.numpy() for k, v in feeds.items()})]


def test_features_file_gives_the_rows_of_the_features_command(runner, small_arch, small_ckpts, images,
                                                              tmp_path) -> None:
    """The exported feature of an image is the row `mae-large features` writes for it (same file, same pooling)."""
    encoder = small_ckpts[1]
    out = tmp_path / "features.onnx"
    result = runner.invoke(app, ["export-onnx", "-c", str(encoder), "--out", str(out), "--dynamic-batch", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["what"] == "features" and data["passed"] is True and data["path"] == str(out)
    assert isinstance(data["opset"], int) and data["max_abs_error"] <= 1e-4 and data["check_batches"] == [1, 3]
    assert data["inputs"] == [{"name": "image", "shape": ["batch", 3, 32, 32], "dtype": "tensor(float)"}]
    assert data["outputs"] == [{"name": "feature", "shape": ["batch", 64], "dtype": "tensor(float)"}]

    rows = tmp_path / "rows.safetensors"
    assert runner.invoke(app, ["features", *map(str, images), "-c", str(encoder), "--out", str(rows)]).exit_code == 0
    expected = load_file(rows)["features"]
    batch = torch.stack([load_image(p, 32, crop="eval") for p in images])  # the command's transform
    (got,) = run(out, image=batch)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_mae_table_shows_the_opset_and_the_check(runner, small_arch, small_ckpts, tmp_path) -> None:
    full = small_ckpts[0]
    out = tmp_path / "mae.onnx"
    result = runner.invoke(app, ["export-onnx", "-c", str(full), "--out", str(out), "--what", "mae",
                                 "--mask-ratio", "0.5"])
    assert result.exit_code == 0, result.output
    text = flat(result.stdout)
    assert "opset" in text and "passed" in text and "max abs diff" in text and "masks identical" in text
    assert "ratio 0.5 fixed" in text and "noise (1, 16)" in text and "mask (1, 16)" in text
    model = MaskedAutoencoderViT.from_pretrained(full, small_arch)
    images, noise = torch.randn(1, 3, 32, 32), torch.rand(1, 16)
    loss, pred, mask = run(out, image=images, noise=noise)
    with torch.inference_mode():
        expected = model(images, 0.5, noise)
    assert torch.equal(mask, expected.mask)
    torch.testing.assert_close(pred, expected.pred, rtol=1e-5, atol=1e-5)


def test_missing_extra_is_one_line_before_the_model_is_read(runner, small_arch, small_ckpts, tmp_path,
                                                            monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` now raises ImportError
    out = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export-onnx", "-c", str(tmp_path / "absent.pth"), "--out", str(out)])
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert "onnxscript is not installed" in result.stderr and "pip install 'mae-large[onnx]'" in result.stderr
    assert "Traceback" not in result.output and not out.exists()
    data = json.loads(runner.invoke(app, ["export-onnx", "-c", str(small_ckpts[0]), "--out", str(out),
                                          "--json"]).stdout)
    assert "mae-large[onnx]" in data["error"] and data["exit_code"] == 1


def test_refusals_before_any_export(runner, small_arch, small_ckpts, tmp_path) -> None:
    out = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export-onnx", "-c", str(small_ckpts[1]), "--out", str(out), "--what", "mae"])
    assert result.exit_code == 1 and "--allow-random-decoder" in result.stderr and not out.exists()
    assert runner.invoke(app, ["export-onnx", "--out", str(out), "--what", "onnx"]).exit_code == 2
    assert runner.invoke(app, ["export-onnx", "--out", str(tmp_path)]).exit_code == 2  # a folder
    assert runner.invoke(app, ["export-onnx", "-c", str(small_ckpts[0])]).exit_code == 2  # no --out
    assert list(tmp_path.glob("*.onnx")) == []
    out.write_bytes(b"an earlier export")  # kept unless --force, refused before the checkpoint is read
    result = runner.invoke(app, ["export-onnx", "-c", str(small_ckpts[0]), "--out", str(out)])
    assert result.exit_code == 2 and "--force" in result.stderr and out.read_bytes() == b"an earlier export"
