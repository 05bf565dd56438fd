"""`mae-large pretrain DATA --out RUN_DIR`: the official pre-training recipe (PRETRAIN.md) on your own images.

From scratch (the official init), or continued from a checkpoint (`--checkpoint`: a full one continues with its
decoder; an encoder-only one gets a fresh decoder); `--freeze-encoder` trains the decoder alone; `--decoder-depth /
--decoder-dim / --decoder-heads` change the decoder (the paper's Table 1 ablations), `--model` or `--patch-size /
--encoder-depth / --encoder-dim / --encoder-heads` the encoder (a small MAE for a small data set); `--mask block|grid`
the masking (Figure 6). One process, or many under torchrun (`torchrun --nproc_per_node 8 -m cli pretrain ...`; multi-node with
the standard `--nnodes / --node_rank / --master_addr` flags): only rank 0 prints and writes. SIGTERM, SIGUSR1 (what
SLURM sends before a kill or requeue) or Ctrl-C end the run at the next update with a checkpoint `--resume`
continues from that very step; a second signal stops at once. The option defaults are
`mae.large.train.pretrain.PretrainConfig`'s (a test keeps both the same).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.console import err, out
from cli.errors import handle_errors, print_json
from cli.finetune import AMP, EpochReport
from cli.options import (
    CompileOpt,
    DeviceOpt,
    ImageColumnOpt,
    JsonOpt,
    LabelColumnOpt,
    ShuffleBufferOpt,
    TrustOpt,
    choice,
    optional_choice,
)
from cli.render import escape
from mae.large import catalog

MASKS = ("random", "block", "grid")  # = mae.large.train.pretrain.MASKS (a test keeps them equal)
TARGETS = ("auto", "norm-pix", "pixels")
FIELDS = {"size": "input_size", "compile_": "compile"}  # CLI parameter -> PretrainConfig field (those that differ in name)
NOT_CONFIG = ("data", "checkpoint", "out_dir", "resume", "val", "knn_train", "knn_val", "from_scratch", "trust", "json_")


@handle_errors
def pretrain_command(
    ctx: typer.Context,
    data: Annotated[list[Path] | None, typer.Argument(
        help="Training images: folders (walked recursively), files, a list file, or a data set (parquet, a "
        "save_to_disk folder, tar shards 'shards-{0000..0127}.tar'). With --resume: the run's own.",
        show_default=False)] = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Run folder: checkpoints, config.json, log.jsonl, preview.png, loss.png. Default: "
        "pretrain_run, or with --resume the run's own folder.", show_default=False)] = None,
    from_scratch: Annotated[bool, typer.Option("--from-scratch", help="Start from the official init (say it, or "
                                               "give --checkpoint).")] = False,
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", "-c", help="Continue pre-training from this checkpoint: a full one (its decoder continues) or an "
        "encoder-only one (a fresh decoder).", show_default=False)] = None,
    resume: Annotated[Path | None, typer.Option(
        "--resume", help="Continue a run (its folder or a checkpoint) from where it stopped, mid-epoch included.",
        show_default=False)] = None,
    val: Annotated[Path | None, typer.Option("--val", help="Held-out images for the per-epoch losses and the preview "
                                             "(default: the first training images).", show_default=False)] = None,
    knn_train: Annotated[Path | None, typer.Option(
        "--knn-train", help="Labelled ImageFolder tree (or data set) for k-NN monitoring.", show_default=False)] = None,
    knn_val: Annotated[Path | None, typer.Option("--knn-val", help="Labelled tree scored by k-NN every --knn-every "
                                                 "epochs.", show_default=False)] = None,
    knn_every: Annotated[int, typer.Option("--knn-every", min=0, help="k-NN top-1 of the encoder every N epochs "
                                           "(0: never).")] = 0,
    target: Annotated[str, typer.Option("--target", callback=choice("--target", TARGETS),
                                        help="What the decoder predicts: auto (norm-pix; a continued decoder's own), "
                                        "norm-pix (PRETRAIN.md) or pixels (a visualisation-style model).")] = "auto",
    mask: Annotated[str, typer.Option("--mask", callback=choice("--mask", MASKS),
                                      help="random (the official rule), block (BEiT blocks) or grid.")] = "random",
    mask_ratio: Annotated[float, typer.Option("--mask-ratio", min=0.01, max=0.99)] = 0.75,
    freeze_encoder: Annotated[bool, typer.Option("--freeze-encoder", help="Train the decoder (and mask_token) only; "
                                                 "the encoder stays bit for bit.")] = False,
    model: Annotated[str | None, typer.Option(
        "--model", callback=optional_choice("--model", tuple(catalog.ARCHITECTURES)),
        help=f"The model size: {', '.join(catalog.ARCHITECTURES)}. Default: {catalog.DEFAULT_ARCHITECTURE}.",
        show_default=False)] = None,
    patch_size: Annotated[int | None, typer.Option("--patch-size", min=1, help="Default: the model's (16).",
                                                   show_default=False)] = None,
    encoder_depth: Annotated[int | None, typer.Option("--encoder-depth", min=1, help="Default: the model's (24).",
                                                      show_default=False)] = None,
    encoder_dim: Annotated[int | None, typer.Option("--encoder-dim", min=1, help="Default: the model's (1024).",
                                                    show_default=False)] = None,
    encoder_heads: Annotated[int | None, typer.Option("--encoder-heads", min=1, help="Default: the model's (16).",
                                                      show_default=False)] = None,
    decoder_depth: Annotated[int | None, typer.Option("--decoder-depth", min=1, help="Default 8.",
                                                      show_default=False)] = None,
    decoder_dim: Annotated[int | None, typer.Option("--decoder-dim", min=1, help="Default 512.", show_default=False)] = None,
    decoder_heads: Annotated[int | None, typer.Option("--decoder-heads", min=1, help="Default 16.",
                                                      show_default=False)] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 800,
    warmup_epochs: Annotated[float, typer.Option("--warmup-epochs", min=0.0)] = 40.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per process and step.")] = 64,
    accum_iter: Annotated[int | None, typer.Option(
        "--accum-iter", min=1, help="Steps per optimiser update. Default: effective batch / (batch x processes).",
        show_default=False)] = None,
    effective_batch: Annotated[int, typer.Option(
        "--effective-batch", min=1, help="batch x accum x processes, when --accum-iter is not given.")] = 4096,
    lr: Annotated[float | None, typer.Option("--lr", min=0.0, help="Absolute lr. Default: blr x effective batch / 256.",
                                             show_default=False)] = None,
    blr: Annotated[float, typer.Option("--blr", min=0.0, help="Base lr.")] = 1.5e-4,
    min_lr: Annotated[float, typer.Option("--min-lr", min=0.0)] = 0.0,
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0)] = 0.05,
    clip_grad: Annotated[float | None, typer.Option("--clip-grad", min=0.0, help="Max gradient norm (default: none).",
                                                    show_default=False)] = None,
    amp: Annotated[str, typer.Option("--amp", callback=choice("--amp", AMP), help="auto: bf16 on a GPU (fp16 with a "
                                     "gradient scaler where it lacks bf16), off on the CPU.")] = "auto",
    size: Annotated[int, typer.Option("--size", min=16, help="Input size (224; smaller for smoke runs).")] = 224,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=0, help="Data loading processes. Default: cores - 1 (at most 8) on a GPU, 0 on the CPU.",
        show_default=False)] = None,
    save_every: Annotated[int, typer.Option("--save-every", min=0, help="Keep checkpoint-N.pth at epoch 0, every N "
                                            "epochs and at the end (official: 20).")] = 20,
    save_checkpoints: Annotated[bool, typer.Option("--save-checkpoints/--no-checkpoints",
                                                   help="Write checkpoints.")] = True,
    preview_every: Annotated[int, typer.Option("--preview-every", min=0, help="preview.png every N epochs (0: none).")
                             ] = 1,
    preview_images: Annotated[int, typer.Option("--preview-images", min=1, help="Held-out images in the preview.")] = 8,
    compile_: CompileOpt = False,
    device: DeviceOpt = "auto",
    trust: TrustOpt = False,
    json_: JsonOpt = False,
    image_column: ImageColumnOpt = None,
    label_column: LabelColumnOpt = None,
    shuffle_buffer: ShuffleBufferOpt = 1000,
) -> None:
    """Pre-train a masked autoencoder on your images with the official recipe (PRETRAIN.md, ViT-L): norm-pix loss,
    mask ratio 0.75, AdamW (0.9, 0.95), weight decay 0.05, blr 1.5e-4, effective batch 4096, per-iteration cosine with
    40 warm-up epochs, random resized crops and flips. Every epoch: held-out losses, preview.png, loss.png, a
    checkpoint; --resume continues bit for bit, from mid-epoch too."""
    from cli import interrupt
    from mae.large.train.pretrain import pretrain
    from mae.large.utils.distributed import context_from_env

    config = _config(ctx, resume)
    if resume is None and checkpoint is None and not from_scratch:
        raise typer.BadParameter("say where the run starts: --from-scratch (the official init) or --checkpoint CKPT "
                                 "(or --resume a run)", param_hint="--from-scratch")
    if from_scratch and checkpoint is not None:
        raise typer.BadParameter("--from-scratch and --checkpoint exclude each other", param_hint="--from-scratch")
    if (knn_train is None) != (knn_val is None):
        raise typer.BadParameter("k-NN monitoring needs both --knn-train and --knn-val", param_hint="--knn-train")
    main = context_from_env().is_main
    report = EpochReport(config.epochs, quiet=json_ or not main, line=_epoch_line, settings=_print_settings)
    if out_dir is None:  # a resumed run goes on writing where it began
        out_dir = (resume if resume.is_dir() else resume.parent) if resume is not None else Path("pretrain_run")
    interrupt.graceful()  # a signal ends the run at the next update, with a checkpoint to resume from
    try:
        result = pretrain(data or None, out_dir, config, checkpoint=checkpoint, val=val, resume=resume, trust=trust,
                          knn=(knn_train, knn_val) if knn_train and knn_val else None, on_progress=report)
    finally:
        report.close()
    if not main:
        return
    if json_:
        print_json({"run_dir": str(out_dir), "history": result.history, "args": result.args})
        return
    last = result.history[-1] if result.history else None
    if last is None:
        out.print(f"nothing to do: the run in {escape(str(out_dir))} already finished its {config.epochs} epochs")
        return
    out.print(f"pre-trained {len(result.history)} epochs: train loss {last['train_loss']:.4f}, held-out loss "
              f"{last.get('val_loss', float('nan')):.4f}; checkpoints, preview.png and loss.png in {escape(str(out_dir))}")


def _config(ctx: typer.Context, resume: Path | None) -> Any:  # -> PretrainConfig
    """The run's settings: the options given (a resumed run keeps its own and takes only those typed)."""
    from mae.large.train.pretrain import PretrainConfig, resumed_pretrain_config

    values = {FIELDS.get(name, name): value for name, value in ctx.params.items() if name not in NOT_CONFIG}
    if resume is not None:
        given = {FIELDS.get(name, name): value for name, value in ctx.params.items()
                 if name not in NOT_CONFIG and getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
        return resumed_pretrain_config(resume, **given)
    return PretrainConfig(**values)


def _print_settings(info: dict[str, Any]) -> None:
    """Every setting the run uses, as config.json holds them, and what it starts from."""
    settings = {**info["config"], **{k: info[k] for k in ("target", "world_size", "accum_iter", "effective_batch",
                                                           "lr", "amp", "device", "workers")}}
    start = {"scratch": "from scratch (the official init)", "full": f"continuing {info['checkpoint']}",
             "encoder": f"from the encoder of {info['checkpoint']}"}.get(info["start"], info["start"])
    err.print(f"pre-training {start} on {info['images']:,} images ({escape(', '.join(info['data']))}); "
              f"{info['steps']} steps per epoch; held-out: {escape(info['heldout'])}"
              + (f"; resuming at epoch {info['start_epoch']}, step {info['start_step']}" if info["start_epoch"] or
                 info["start_step"] else ""))
    err.print("  " + ", ".join(f"{key}={value}" for key, value in settings.items()), highlight=False)
    initial = info.get("heldout_initial")
    if initial and not (info["start_epoch"] or info["start_step"]):
        err.print(f"before training: {_heldout(initial)}", highlight=False)
    for note in info.get("notes", []):
        err.print(f"[yellow]note:[/] {escape(note)}")


def _heldout(info: dict[str, Any]) -> str:
    """The held-out numbers of an epoch (or of the model before training): losses, k-NN top-1."""
    held = (f"held-out loss {info['val_loss']:.4f} (pixels {info['val_pixel_loss']:.4f}, baseline "
            f"{info['val_baseline_pixel_loss']:.4f})" if "val_loss" in info else "")
    knn = f"k-NN top-1 {info['knn_top1']:.2f}%" if "knn_top1" in info else ""
    return ", ".join(part for part in (held, knn) if part)


def _epoch_line(info: dict[str, Any], epochs: int) -> str:
    held = _heldout(info)
    return (f"epoch {info['epoch'] + 1}/{epochs}: train loss {info['train_loss']:.4f}, lr {info['lr']:.2e}"
            f"{', ' + held if held else ''}, {info['images_per_s']:.1f} images/s")
