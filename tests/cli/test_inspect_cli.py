"""`mae-large inspect`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from cli.app import app
from mae.large import MAEConfig
from tests.cli.conftest import flat
from tests.helpers import encoder_only, save_official, shaped_state_dict


def _vit_l(tmp_path: Path, name: str, encoder: bool = False) -> Path:
    sd = shaped_state_dict(MAEConfig.vit_large())
    return save_official(tmp_path / name, encoder_only(sd) if encoder else sd)


def test_full_checkpoint(runner, tmp_path: Path) -> None:
    path = _vit_l(tmp_path, "mae_visualize_vit_large.pth")
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "full" in result.output and "398 / 398 expected" in result.output
    assert "329,541,888" in result.output and "loadable as is" in flat(result.output)
    assert "all finite" in flat(result.output) and "damaged" not in result.output
    assert "blocks.{0-23}.attn.qkv.weight" in result.output and "blocks.7.attn.qkv.weight" not in result.output


def test_encoder_only_checkpoint(runner, tmp_path: Path) -> None:
    path = _vit_l(tmp_path, "mae_pretrain_vit_large.pth", encoder=True)
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0
    assert "encoder-only" in result.output and "294 / 294 expected" in result.output
    assert "mae_visualize_vit_large.pth" in flat(result.output)  # the verdict says which file reconstructs


def test_all_lists_every_key(runner, tmp_path: Path) -> None:
    path = _vit_l(tmp_path, "full.pth")
    result = runner.invoke(app, ["inspect", "--all", str(path)])
    assert result.exit_code == 0
    assert "blocks.23.mlp.fc2.bias" in result.output and "decoder_blocks.7.norm1.weight" in result.output


def test_json(runner, tmp_path: Path) -> None:
    path = _vit_l(tmp_path, "enc.pth", encoder=True)
    result = runner.invoke(app, ["inspect", "--json", str(path)])
    data = json.loads(result.stdout)
    assert (data["kind"], data["num_tensors"], data["loadable"]) == ("encoder-only", 294, True)
    assert data["num_parameters"] == 303_301_632 and len(data["tensors"]) == 294
    assert data["weights_only"] is True
    assert data["damaged"] is False and data["nonfinite"] == []


def test_vit_base_is_recognised(runner, tmp_path: Path) -> None:
    path = save_official(tmp_path / "base.pth", shaped_state_dict(MAEConfig.vit_base()))
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 1
    assert "ViT-Base" in flat(result.output) and "not loadable" in flat(result.output)


def test_wrong_shape_names_key_and_shapes(runner, tmp_path: Path) -> None:
    sd = shaped_state_dict(MAEConfig.vit_large())
    sd["decoder_pred.weight"] = torch.zeros(1).expand(512, 512)
    path = save_official(tmp_path / "bad.pth", sd)
    result = runner.invoke(app, ["inspect", "--json", str(path)])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["mismatched"] == [{"name": "decoder_pred.weight", "expected": [768, 512], "actual": [512, 512]}]


def test_missing_file_one_line(runner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["inspect", str(tmp_path / "mae_visualize_vit_large.pth")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "mae-large download visualize" in lines[0]


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def test_unsafe_pickle_needs_trust(runner, tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": shaped_state_dict(MAEConfig.vit_large()), "x": _Evil()}, path)
    before = path.read_bytes()
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 1 and "--trust-checkpoint" in result.stderr and "system" in result.stderr
    assert path.read_bytes() == before


def test_debug_shows_the_traceback(runner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["--debug", "inspect", str(tmp_path / "nope.pth")])
    assert result.exit_code != 0
    assert result.exception is not None and "does not exist" in str(result.exception)


def _damaged(tmp_path: Path) -> Path:
    """ViT-L shapes with 2 NaN in blocks.3.norm1.weight and +Inf in decoder_pred.bias."""
    sd = shaped_state_dict(MAEConfig.vit_large())
    norm = torch.ones(1024)
    norm[[10, 20]] = float("nan")
    bias = torch.zeros(768)
    bias[5] = float("inf")
    sd["blocks.3.norm1.weight"], sd["decoder_pred.bias"] = norm, bias
    return save_official(tmp_path / "damaged.pth", sd)


def test_nonfinite_tensors_are_named_with_counts_and_the_file_is_damaged(runner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["inspect", str(_damaged(tmp_path))])
    assert result.exit_code == 1, result.output
    text = flat(result.output)
    assert "non-finite blocks.3.norm1.weight: 2 of 1,024 values" in text, text
    assert "non-finite decoder_pred.bias: 1 of 768 values" in text
    assert "damaged: 2 tensors hold NaN or infinite values" in text and "allow_nonfinite=True" in text
    assert "2 tensors hold NaN or infinite values (damaged)" in text  # the summary panel's values row
    assert "loadable as is" not in text


def test_json_lists_the_nonfinite_tensors(runner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["inspect", "--json", str(_damaged(tmp_path))])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["loadable"] is False and data["damaged"] is True and data["kind"] == "full"
    assert data["nonfinite"] == [{"name": "blocks.3.norm1.weight", "count": 2, "numel": 1024},
                                 {"name": "decoder_pred.bias", "count": 1, "numel": 768}]
    per_tensor = {t["name"]: t["nonfinite"] for t in data["tensors"]}
    assert per_tensor["blocks.3.norm1.weight"] == 2 and per_tensor["decoder_pred.bias"] == 1
    assert sum(per_tensor.values()) == 3
    assert data["verdict"].startswith("damaged")


def test_the_scan_reads_each_tensor_once(runner, tmp_path: Path, monkeypatch) -> None:
    from mae.large.jobs import inspect as summary

    seen: list[tuple[int, ...]] = []
    original = summary.count_nonfinite

    def counting(tensor):
        seen.append(tuple(tensor.shape))
        return original(tensor)

    monkeypatch.setattr(summary, "count_nonfinite", counting)
    result = runner.invoke(app, ["inspect", "--json", str(_damaged(tmp_path))])
    assert result.exit_code == 1 and len(seen) == 398 == json.loads(result.stdout)["num_tensors"]


def test_a_fine_tuned_classifier(runner, tmp_path: Path) -> None:
    """mae_finetuned_vit_large.pth's layout: its own kind, with the number of classes and the pooling."""
    from mae.large import VisionTransformer, ViTConfig

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in VisionTransformer(ViTConfig()).state_dict().items()}
    path = save_official(tmp_path / "mae_finetuned_vit_large.pth", {k: torch.zeros(1).expand(*s) for k, s in shapes.items()})
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "fine-tuned" in text and "classes 1000" in text and "global pool" in text and "296" in text
    assert "head.weight" in text and "classifier" in text
    data = json.loads(runner.invoke(app, ["inspect", "--json", str(path)]).stdout)
    assert (data["kind"], data["num_classes"], data["pooling"], data["num_tensors"]) == ("fine-tuned", 1000, "mean", 296)
    assert data["loadable"] and data["dropped"] == [] and "head='file'" in data["verdict"]


# ---- layouts: transformers folders, pickles ------------------------------------------------------
def _inspect_against_tiny(monkeypatch) -> None:
    """`inspect` measures files against ViT-L; the transformers fixtures are of the tiny configuration."""
    from tests.helpers import tiny_config

    monkeypatch.setattr(MAEConfig, "vit_large", classmethod(lambda cls, **overrides: tiny_config(**overrides)))


def test_a_transformers_5_folder_shows_its_layout_and_conversions(runner, monkeypatch) -> None:
    from tests.helpers import HF_FIXTURES

    _inspect_against_tiny(monkeypatch)
    folder = HF_FIXTURES / "tf5/pretraining-sharded"
    result = runner.invoke(app, ["inspect", str(folder)])
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "hf-folder" in text and "transformers 5.24.0" in text and "transformers 5.x names" in text
    assert "model-00001-of-00003.safetensors" in text and "mae-large convert" not in text
    data = json.loads(runner.invoke(app, ["inspect", "--json", str(folder)]).stdout)
    assert (data["layout"], data["kind"], data["loadable"], data["convert_hint"]) == ("hf-folder", "full", True, None)
    assert any("3 shards" in fix for fix in data["fixes"]) and len(data["files"]) == 3
    # Listed in the official order (transformers writes the decoder first), and it says what the decoder predicts.
    assert [t["name"] for t in data["tensors"][:4]] == ["cls_token", "pos_embed", "mask_token", "decoder_pos_embed"]
    assert data["target"] == "pixels (config.json: norm_pix_loss=false)"


def test_a_pickle_gets_the_safetensors_command(runner, tmp_path: Path) -> None:
    from tests.helpers import small_state_dict

    path = save_official(tmp_path / "mae_visualize_vit_large.pth", small_state_dict())  # (not ViT-L: exit 1)
    data = json.loads(runner.invoke(app, ["inspect", "--json", str(path)]).stdout)
    assert data["layout"] == "official"
    out = tmp_path / "mae_visualize_vit_large.safetensors"
    assert data["convert_hint"] == f"mae-large convert {path} --to safetensors --out {out}"
    assert "--to safetensors" in flat(runner.invoke(app, ["inspect", str(path)]).output)


def test_the_hub_snapshot_notes_its_eps_and_a_disagreeing_config_is_not_loadable(runner, monkeypatch, tmp_path) -> None:
    import shutil

    from tests.helpers import HF_FIXTURES

    _inspect_against_tiny(monkeypatch)
    data = json.loads(runner.invoke(app, ["inspect", "--json", str(HF_FIXTURES / "hub/models--facebook--vit-mae-large")]).stdout)
    assert data["loadable"] and any("layer_norm_eps=1e-12" in n for n in data["notes"])
    assert data["fixes"][0].startswith("took snapshot")
    folder = shutil.copytree(HF_FIXTURES / "tf4/pretraining-bin", tmp_path / "edited")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_attention_heads": 4}))
    result = runner.invoke(app, ["inspect", str(folder)])
    assert result.exit_code == 1 and "num_attention_heads=4 but the model has num_heads=2" in flat(result.output)
    assert "layout" in result.output and "--to safetensors" in flat(result.output)  # a pytorch_model.bin folder


def test_bytes_in_a_message_are_shown_as_they_are(runner, tmp_path: Path) -> None:
    path = tmp_path / "passwd.pth"
    path.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")  # `:x:` is an emoji code to rich unless told otherwise
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 1 and "b'root:x:0'" in flat(result.output)
