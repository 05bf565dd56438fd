"""The official facts, written once: the published checkpoints and the official model sizes.

Every message, default, download and verification reads this module; nothing else types a checkpoint's
file name, URL, size, md5 prefix or tensor count. It imports no torch, so the CLI can quote it (in
`--help`, in hints, in `download --list`) without the start-up cost of torch.

Adding a published checkpoint is one `CheckpointEntry` in `CHECKPOINTS`; adding a model size is one
entry in `ARCHITECTURES`.

Sources: `facebookresearch/mae` README.md (pre-training and fine-tuning tables, md5 prefixes),
`demo/mae_visualize.ipynb` (the visualisation files), `models_mae.py` / `models_vit.py` (the sizes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Kind = Literal["full", "encoder-only", "fine-tuned"]
Target = Literal["pixels", "norm-pix"]
TARGETS: tuple[str, ...] = ("auto", "pixels", "norm-pix")  # what --target accepts

BASE_URL = "https://dl.fbaipublicfiles.com/mae"
DATA_DIR = Path("data")


# ================================================================================================
# Model sizes
# ================================================================================================
@dataclass(frozen=True)
class Architecture:
    """One model size: the encoder fields of the configs, and how to name it in messages."""

    name: str  # the official factory's name without the `mae_` prefix: `vit_large_patch16`
    label: str  # for "this looks like ..." messages
    sizes: dict[str, Any]  # config fields: patch_size, embed_dim, depth, num_heads (others keep their defaults)

    def fields(self) -> dict[str, Any]:
        return {"name": self.name, **self.sizes}


# The decoder of every published MAE (`*_dec512d8b`): 512 wide, 8 blocks, 16 heads.
DECODER: dict[str, Any] = {"decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16}

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("vit_base_patch16", "an MAE ViT-Base/16 checkpoint (mae_*_vit_base.pth)",
                     {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12}),
        Architecture("vit_large_patch16", "an MAE ViT-Large/16 checkpoint",
                     {"patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16}),
        Architecture("vit_huge_patch14", "an MAE ViT-Huge/14 checkpoint (mae_*_vit_huge.pth)",
                     {"patch_size": 14, "embed_dim": 1280, "depth": 32, "num_heads": 16}),
    )
}
# The model this tool builds: the architecture of every ViT-L file below.
DEFAULT_ARCHITECTURE = "vit_large_patch16"


def architecture(name: str | None = None) -> Architecture:
    """The size `name`; None: `DEFAULT_ARCHITECTURE` (read at call time)."""
    name = name or DEFAULT_ARCHITECTURE
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None


def register_architecture(name: str, label: str, **sizes: Any) -> Architecture:
    """Add a model size (e.g. a small one for experiments); the configs' `from_architecture` then build it."""
    arch = Architecture(name, label, dict(sizes))
    ARCHITECTURES[name] = arch
    return arch


def architecture_name(embed_dim: int, depth: int, num_heads: int, patch_size: int) -> str:
    """`vit_large_patch16` for a known size, else a name spelling out the shape."""
    for arch in ARCHITECTURES.values():
        e = arch.sizes
        if (e["embed_dim"], e["depth"], e["num_heads"], e["patch_size"]) == (embed_dim, depth, num_heads, patch_size):
            return arch.name
    return f"vit_d{embed_dim}_depth{depth}_heads{num_heads}_patch{patch_size}"


# ================================================================================================
# Published checkpoints
# ================================================================================================
@dataclass(frozen=True)
class CheckpointEntry:
    """One published checkpoint: where it lives and what a correct copy must look like."""

    name: str  # the short name `mae-large download` takes
    filename: str  # the file name on disk (and on a flat mirror)
    folder: str  # Meta's sub-folder under BASE_URL
    size: int | None  # exact size in bytes, when known
    md5_prefix: str | None  # leading hex digits of the md5, as Meta publishes them
    kind: Kind  # what `classify` must say about it
    num_tensors: int  # how many tensors `classify` must count
    purpose: str  # one line for `--list`: what the file is for
    architecture: str = DEFAULT_ARCHITECTURE
    target: Target | None = "pixels"  # what its decoder predicts; None: no trained decoder

    @property
    def url(self) -> str:
        return f"{BASE_URL}/{self.folder}/{self.filename}"

    @property
    def default_path(self) -> Path:
        return DATA_DIR / self.filename


RECONSTRUCTION = "reconstruction / visualisation"
FINE_TUNING = "fine-tuning / features (encoder only, no decoder)"
CLASSIFIER = "ImageNet-1k classification / features (fine-tuned: global pool, trained fc_norm and head)"

CHECKPOINTS: dict[str, CheckpointEntry] = {
    c.name: c
    for c in (
        CheckpointEntry("visualize", "mae_visualize_vit_large.pth", "visualize", 1_318_315_181, None, "full", 398,
                        RECONSTRUCTION),
        CheckpointEntry("visualize-gan", "mae_visualize_vit_large_ganloss.pth", "visualize", None, None, "full", 398,
                        RECONSTRUCTION + " (GAN loss: sharper images)"),
        CheckpointEntry("pretrain", "mae_pretrain_vit_large.pth", "pretrain", None, "b8b06e", "encoder-only", 294,
                        FINE_TUNING, target=None),
        # The pre-training run's own file with its decoder, trained with norm_pix_loss (facebookresearch/mae
        # issues 8 and 12: drawn as RGB its predictions look grey and flat). Size and md5 are not published.
        CheckpointEntry("pretrain-full", "mae_pretrain_vit_large_full.pth", "pretrain", None, None, "full", 398,
                        RECONSTRUCTION + " (predicts per-patch normalised pixels)", target="norm-pix"),
        # The fine-tuned ViT-L of the README's fine-tuning table (85.9% top-1): global pool, so no final `norm`; the
        # 292 other encoder tensors, fc_norm.{weight,bias} and head.{weight,bias} (1000 classes). Size not published.
        CheckpointEntry("finetuned", "mae_finetuned_vit_large.pth", "finetune", None, "51f550", "fine-tuned", 296,
                        CLASSIFIER, target=None),
    )
}
ALL = "all"  # `mae-large download all`
# ImageNet-1k val of the fine-tuned file with the official evaluation transform (FINETUNE.md: `main_finetune.py
# --eval`): top-1 and top-5 in percent, cross-entropy.
FINETUNED_REFERENCE: dict[str, float] = {"top1": 85.952, "top5": 97.570, "loss": 0.646}

FULL = CHECKPOINTS["visualize"]  # the file to reconstruct with
ENCODER_ONLY = CHECKPOINTS["pretrain"]  # the file to fine-tune from
# What the encoder view (attention, patch-feature maps) takes when no file is named: the first present. Only the
# encoder is used; the three come from different training runs, so the tools say which one they took.
ENCODER_VIEW: tuple[CheckpointEntry, ...] = (ENCODER_ONLY, FULL, CHECKPOINTS["pretrain-full"])


def entry_for_file(filename: str) -> CheckpointEntry | None:
    """The published checkpoint a file is named after, if any."""
    return next((c for c in CHECKPOINTS.values() if c.filename == filename), None)


def download_hint(filename: str, folder: Path | str) -> str:
    """`; download it with ...` for a published file name, else an empty string."""
    entry = entry_for_file(filename)
    if entry is None:
        return ""
    return f"; download it with `mae-large download {entry.name} --dest {folder}`"


def random_decoder_warning(num_tensors: int) -> str:
    return (f"this checkpoint holds the encoder only ({num_tensors} tensors): the decoder is randomly initialised, "
            f"so reconstructions and losses are meaningless; use {FULL.filename} ({FULL.num_tensors} tensors) to "
            "reconstruct images")


def full_checkpoint_advice() -> str:
    """Which file to use when a job needs a trained decoder."""
    return f"use {FULL.filename} (`mae-large download {FULL.name}`)"


# ================================================================================================
# The requirements' noise benchmark
# ================================================================================================
# Mean loss on randn images at mask ratio 0.75, norm_pix_loss off, per checkpoint kind.
EXPECTED_NOISE_LOSS: dict[str, float] = {"full": 1.0, "encoder-only": 1.87, "random-init": 1.74}
# How far the mean may stray before `loss --check` fails. Measured spread over seeds on the official
# code is about +-0.05 for a random init; 0.15 leaves room for batch-to-batch variation of 8 samples.
NOISE_LOSS_TOLERANCE = 0.15
NOISE_MASK_RATIO = 0.75


# ================================================================================================
# The choices the tools offer over the official preprocessing and pooling
# ================================================================================================
# eval: the official evaluation transform (main_linprobe.py / main_finetune.py: resize the shorter side to
# size x 256/224 bicubic, centre crop to size); resize: the official demo's squash to the model size; center: keep
# the aspect, cut the centre (no 256/224 margin).
CROPS: tuple[str, ...] = ("eval", "resize", "center")
EVAL_RESIZE: tuple[int, int] = (256, 224)  # the evaluation transform resizes to size x 256 / 224 before its crop
# cls: global_pool=False (the cls token after the encoder's trained norm: main_linprobe.py's default, the
# probe-ready feature); mean: `models_vit` global_pool=True (mean patch token + fc_norm).
POOLS: tuple[str, ...] = ("cls", "mean")
# How `inspect` words a fine-tuned classifier's pooling (`checkpoint.Classification.pooling`).
POOLING_WORDS: dict[str, str] = {"mean": "global pool: mean patch token + trained fc_norm",
                                 "cls": "cls token + final norm"}
