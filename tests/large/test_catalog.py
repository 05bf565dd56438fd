"""The catalogue is the one place official facts are written, and it loads without torch."""

from __future__ import annotations

import re
import subprocess
import sys

import torch

from mae.large import catalog
from tests.helpers import REPO


def test_catalog_and_config_import_no_torch() -> None:
    code = "import sys, mae.large.catalog, mae.large.config, mae.large.errors; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_no_other_module_writes_a_checkpoint_fact() -> None:
    facts = set()
    for entry in catalog.CHECKPOINTS.values():
        facts |= {entry.filename, entry.url}
        facts |= {entry.md5_prefix} if entry.md5_prefix else set()
        facts |= {f"{entry.size:_}", str(entry.size)} if entry.size else set()
    facts |= {catalog.BASE_URL.split("//")[1]}
    offenders = []
    for path in [*REPO.joinpath("mae").rglob("*.py"), *REPO.joinpath("cli").rglob("*.py")]:
        if path.name == "catalog.py":
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(REPO)}: {fact}" for fact in facts if fact in text]
        # Tensor counts of the published files, written as numbers in code (not in prose).
        offenders += [f"{path.relative_to(REPO)}: {m.group(0)}" for m in re.finditer(r"(?<![\w.])(398|294)(?![\w.])", text)]
    assert offenders == []


def test_entries_are_consistent() -> None:
    from mae.large import MAEConfig, MaskedAutoencoderViT

    for entry in catalog.CHECKPOINTS.values():
        assert entry.url == f"{catalog.BASE_URL}/{entry.folder}/{entry.filename}"
        expected = MaskedAutoencoderViT.expected_state(MAEConfig.from_architecture(entry.architecture))
        count = len(expected.shapes) if entry.kind == "full" else len(expected.keys_of("encoder"))
        if entry.kind == "fine-tuned":  # the official global-pool classifier, built on the meta device
            from mae.large import VisionTransformer, ViTConfig

            with torch.device("meta"):
                keys = VisionTransformer(ViTConfig.from_architecture(entry.architecture)).state_dict()
            assert {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"} <= set(keys)
            assert "norm.weight" not in keys
            count = len(keys)  # 292 encoder tensors without norm + head and fc_norm
        assert entry.num_tensors == count, entry.name


def test_the_fine_tuned_entry() -> None:
    entry = catalog.CHECKPOINTS["finetuned"]
    assert entry.url.endswith("/mae/finetune/mae_finetuned_vit_large.pth")
    assert (entry.md5_prefix, entry.kind, entry.num_tensors, entry.target) == ("51f550", "fine-tuned", 296, None)


def test_a_new_entry_reaches_download_and_hints(monkeypatch) -> None:
    from mae.large.jobs import download

    entry = catalog.CheckpointEntry("visualize-base", "mae_visualize_vit_base.pth", "visualize", None, None, "full",
                                    332, "ViT-Base reconstruction", architecture="vit_base_patch16")
    monkeypatch.setitem(catalog.CHECKPOINTS, entry.name, entry)
    spec = download.CheckpointSpec.from_entry(entry)
    assert spec.url.endswith("/visualize/mae_visualize_vit_base.pth") and spec.config.embed_dim == 768
    assert "mae-large download visualize-base" in catalog.download_hint("mae_visualize_vit_base.pth", "data")


def test_architectures_build_the_official_sizes() -> None:
    from mae.large import MAEConfig
    from mae.large.models.vit import ViTConfig

    assert MAEConfig.from_architecture() == MAEConfig() == MAEConfig.vit_large()
    assert (MAEConfig.vit_huge().patch_size, MAEConfig.vit_huge().embed_dim) == (14, 1280)
    assert ViTConfig.from_architecture("vit_base_patch16").depth == 12
    assert MAEConfig.vit_base().architecture_name == "vit_base_patch16"
