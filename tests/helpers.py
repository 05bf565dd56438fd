"""Shared test helpers: the reference data, small models, HuggingFace peers, checkpoint writers."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mae.large import MAEConfig, MaskedAutoencoderViT

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
REFERENCE = TESTS / "reference"
VECTORS = REFERENCE / "mae_official_small_vectors.safetensors"
MANIFEST = REFERENCE / "mae_vit_large_patch16_keys.json"
DATA = REPO / "data"
HF_FIXTURES = TESTS / "fixtures" / "hf"


@cache
def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


@cache
def _vectors() -> dict[str, torch.Tensor]:
    return load_file(VECTORS)


def vectors() -> dict[str, torch.Tensor]:
    """The official test vectors (fresh copies, so a test cannot spoil them for another)."""
    return {k: v.clone() for k, v in _vectors().items()}


def small_config(**overrides) -> MAEConfig:
    """The configuration the official vectors were computed with."""
    with safe_open(VECTORS, "pt") as f:
        cfg = json.loads(f.metadata()["config"])
    return MAEConfig(**{**cfg, **overrides})


def tiny_config(**overrides) -> MAEConfig:
    """The smallest configuration with every part (two blocks each side, two heads): the transformers fixtures'
    (tests/fixtures/hf), whose files stay a few tens of kilobytes."""
    return MAEConfig(**{**dict(img_size=8, patch_size=4, embed_dim=16, depth=2, num_heads=2, decoder_embed_dim=8,
                               decoder_depth=2, decoder_num_heads=2), **overrides})


def small_state_dict() -> dict[str, torch.Tensor]:
    """The official small model's weights, official key names."""
    return {k[len("model."):]: v for k, v in vectors().items() if k.startswith("model.")}


def small_model(**overrides) -> MaskedAutoencoderViT:
    model = MaskedAutoencoderViT(small_config(**overrides))
    model.load_state_dict(small_state_dict())
    return model.eval()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a - e| / max |e|: the measure behind the project's 1e-5 promise."""
    scale = expected.abs().max().clamp_min(1e-12)
    return ((actual.double() - expected.double()).abs().max() / scale).item()


def official_target(imgs: torch.Tensor, patch_size: int, norm_pix_loss: bool) -> torch.Tensor:
    """The official models_mae loss target, written out independently of the library, in float64.

    patchify: (N, C, H, W) -> (N, L, p*p*C), patches row-major, each patch row-major over (p, p) with
    channels last; with norm_pix_loss each patch becomes (x - mean) / (var + 1e-6) ** 0.5, var unbiased
    (torch.var's default, as the official code).
    """
    x = imgs.double()
    n, c, h_px, w_px = x.shape
    p = patch_size
    h, w = h_px // p, w_px // p
    x = x.reshape(n, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(n, h * w, p * p * c)
    if norm_pix_loss:
        mean = x.sum(-1, keepdim=True) / x.shape[-1]
        var = ((x - mean) ** 2).sum(-1, keepdim=True) / (x.shape[-1] - 1)
        x = (x - mean) / torch.sqrt(var + 1e-6)
    return x


def hf_config(config: MAEConfig, **overrides):
    """A transformers ViTMAEConfig equal to `config` (LayerNorm eps 1e-6, exact GELU)."""
    from transformers import ViTMAEConfig

    kwargs = dict(
        image_size=list(config.img_size) if config.img_size[0] != config.img_size[1] else config.img_size[0],
        patch_size=config.patch_size,
        num_channels=config.in_chans,
        hidden_size=config.embed_dim,
        num_hidden_layers=config.depth,
        num_attention_heads=config.num_heads,
        intermediate_size=config.mlp_hidden_dim,
        decoder_hidden_size=config.decoder_embed_dim,
        decoder_num_hidden_layers=config.decoder_depth,
        decoder_num_attention_heads=config.decoder_num_heads,
        decoder_intermediate_size=config.decoder_mlp_hidden_dim,
        layer_norm_eps=config.layer_norm_eps,
        hidden_act="gelu",
        qkv_bias=True,
        norm_pix_loss=config.norm_pix_loss,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    kwargs.update(overrides)
    return ViTMAEConfig(**kwargs)


def save_official(path: Path, state_dict: dict[str, torch.Tensor], **extra) -> Path:
    """Write a checkpoint in the official file format: torch.save({"model": state_dict})."""
    torch.save({"model": state_dict, **extra}, path)
    return path


def encoder_only(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder part of an official state dict (what mae_pretrain_vit_large.pth holds)."""
    return {k: v for k, v in sd.items() if not k.startswith(("mask_token", "decoder_"))}


def shaped_state_dict(config: MAEConfig) -> dict[str, torch.Tensor]:
    """Tensors with the right shapes for `config` that cost one float each (stride-0 views): for tests
    that only look at names and shapes, the file stays a few kilobytes."""
    return {k: torch.zeros(1).expand(*s) for k, s in MaskedAutoencoderViT.expected_state(config).shapes.items()}


def use_small_architecture(monkeypatch, config: MAEConfig | None = None) -> MAEConfig:
    """Register the official vectors' small configuration (or `config`, e.g. `tiny_config()` of the transformers
    fixtures) as an architecture and make it the one every command builds (instead of ViT-L), for this test only."""
    from mae.large import catalog

    config = config or small_config()
    # Named as `catalog.architecture_name` names a size it does not know, so names in outputs stay the same.
    name = f"vit_d{config.embed_dim}_depth{config.depth}_heads{config.num_heads}_patch{config.patch_size}"
    sizes = {k: v for k, v in config.to_dict().items() if k not in ("name", "norm_pix_loss")}
    monkeypatch.setitem(catalog.ARCHITECTURES, name, catalog.Architecture(name, "the tests' small MAE", sizes))
    monkeypatch.setattr(catalog, "DEFAULT_ARCHITECTURE", name)
    return config


def write_digits_tree(root: Path, per_class: int | None = None, size: int = 32) -> Path:
    """scikit-learn's `load_digits` (1,797 real 8x8 hand-written digits) as an ImageFolder tree: `root/0/` ...
    `root/9/`, each image a `size` x `size` grey PNG (nearest-neighbour upscaling, 0..16 -> 0..255) named by its
    index in the data set; `per_class` keeps the first that many of each class. Returns `root`."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts = [0] * 10
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        if per_class is not None and counts[label] >= per_class:
            continue
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        grey = np.rint(pixels / 16.0 * 255.0).astype(np.uint8)
        Image.fromarray(grey, "L").resize((size, size), Image.Resampling.NEAREST).save(folder / f"{index:04d}.png")
        counts[label] += 1
    return root


def file_mappings(path: Path) -> list[tuple[int, int]]:
    """Address ranges this process has mapped from `path` (Linux /proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path.resolve()):
            start, end = (int(a, 16) for a in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def run_files(run: Path) -> list[str]:
    """A training run folder's entries but `tensorboard/`, which is there exactly when `tensorboard` is installed."""
    from mae.large.train import scalars

    names = sorted(p.name for p in run.iterdir())
    assert ("tensorboard" in names) == scalars.available(), names
    return [name for name in names if name != "tensorboard"]


def tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars a run wrote under `run/tensorboard` (tag -> [(step, value)]), read with tensorboard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
