"""`mae-large finetune TRAIN VAL --checkpoint CKPT --out RUN_DIR`: the official fine-tuning recipe as one command.

One process, or many under torchrun (`torchrun --nproc_per_node 8 -m cli finetune ...`; multi-node with the
standard `--nnodes / --node_rank / --master_addr` flags): only rank 0 prints and writes. The option defaults are
`mae.large.train.finetune.FinetuneConfig`'s (the official ViT-L recipe; a test keeps both the same). With `--resume`
the run's own settings are used, changed only by the options given on the command line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.console import err, out, progress
from cli.errors import handle_errors, print_json
from cli.options import CompileOpt, DeviceOpt, ImageColumnOpt, JsonOpt, LabelColumnOpt, ShuffleBufferOpt, choice
from cli.render import escape

AMP = ("auto", "bf16", "fp16", "off")
# CLI parameter -> FinetuneConfig field (those that differ in name).
FIELDS = {"size": "input_size", "aa": "auto_augment", "reprob": "re_prob", "compile_": "compile"}


def _none_if(value: str, *empty: str) -> str | None:
    return None if value in empty else value


@handle_errors
def finetune_command(
    ctx: typer.Context,
    train: Annotated[Path, typer.Argument(
        help="Training ImageFolder tree (root/CLASS/image), or a labelled data set: parquet (a file, a quoted glob, "
        "the hub's folder), a save_to_disk folder, tar shards ('train-{0000..0127}.tar').", show_default=False)],
    val: Annotated[Path, typer.Argument(help="Validation data of the same form, with the same classes.",
                                        show_default=False)],
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", "-c", help="Pre-trained MAE checkpoint (encoder-only or full), e.g. data/mae_pretrain_vit_large"
        ".pth. Not needed with --resume.", show_default=False)] = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Run folder: checkpoints, config.json, log.jsonl. Default: finetune_run, or with --resume "
        "the run's own folder.", show_default=False)] = None,
    resume: Annotated[Path | None, typer.Option(
        "--resume", help="Continue a run (its folder or a checkpoint) after its last finished epoch.",
        show_default=False)] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 50,
    warmup_epochs: Annotated[float, typer.Option("--warmup-epochs", min=0.0)] = 5.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per process and step.")] = 32,
    accum_iter: Annotated[int | None, typer.Option(
        "--accum-iter", min=1, help="Steps per optimiser update. Default: effective batch / (batch x processes).",
        show_default=False)] = None,
    effective_batch: Annotated[int, typer.Option(
        "--effective-batch", min=1, help="batch x accum x processes, when --accum-iter is not given.")] = 1024,
    lr: Annotated[float | None, typer.Option("--lr", min=0.0, help="Absolute lr. Default: blr x effective batch / 256.",
                                             show_default=False)] = None,
    blr: Annotated[float, typer.Option("--blr", min=0.0, help="Base lr.")] = 1e-3,
    min_lr: Annotated[float, typer.Option("--min-lr", min=0.0)] = 1e-6,
    layer_decay: Annotated[float, typer.Option("--layer-decay", min=0.0)] = 0.75,
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0)] = 0.05,
    drop_path: Annotated[float, typer.Option("--drop-path", min=0.0, max=0.99)] = 0.2,
    clip_grad: Annotated[float | None, typer.Option("--clip-grad", min=0.0, help="Max gradient norm (default: none).",
                                                    show_default=False)] = None,
    smoothing: Annotated[float, typer.Option("--smoothing", min=0.0, max=1.0, help="Label smoothing.")] = 0.1,
    mixup: Annotated[float, typer.Option("--mixup", min=0.0, help="Mixup alpha (0: off).")] = 0.8,
    cutmix: Annotated[float, typer.Option("--cutmix", min=0.0, help="CutMix alpha (0: off).")] = 1.0,
    mixup_prob: Annotated[float, typer.Option("--mixup-prob", min=0.0, max=1.0)] = 1.0,
    mixup_switch_prob: Annotated[float, typer.Option("--mixup-switch-prob", min=0.0, max=1.0)] = 0.5,
    mixup_mode: Annotated[str, typer.Option("--mixup-mode", callback=choice("--mixup-mode", ("batch",)))
                          ] = "batch",
    aa: Annotated[str, typer.Option("--aa", help="RandAugment policy, or none.")] = "rand-m9-mstd0.5-inc1",
    reprob: Annotated[float, typer.Option("--reprob", min=0.0, max=1.0, help="Random erasing probability.")] = 0.25,
    amp: Annotated[str, typer.Option("--amp", callback=choice("--amp", AMP), help="auto: bf16 on a GPU (fp16 with a "
                                     "gradient scaler where it lacks bf16), off on the CPU.")] = "auto",
    grad_checkpointing: Annotated[bool, typer.Option("--grad-checkpointing", help="Recompute activations in backward "
                                                     "(less memory, ~30% slower).")] = False,
    size: Annotated[int, typer.Option("--size", min=16, help="Input size (224; smaller for smoke runs).")] = 224,
    num_classes: Annotated[int | None, typer.Option(
        "--num-classes", min=1, help="Default: the number of class folders (a different number is refused).",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=0, help="Data loading processes. Default: cores - 1 (at most 8) on a GPU, 0 on the CPU.",
        show_default=False)] = None,
    save_every: Annotated[int, typer.Option("--save-every", min=0, help="Also keep checkpoint-N.pth every N epochs.")
                          ] = 0,
    save_checkpoints: Annotated[bool, typer.Option("--save-checkpoints/--no-checkpoints",
                                                   help="Write checkpoints (off: config.json and log.jsonl only).")
                                ] = True,
    eval_batch_size: Annotated[int | None, typer.Option("--eval-batch-size", min=1, show_default=False)] = None,
    compile_: CompileOpt = False,
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
    image_column: ImageColumnOpt = None,
    label_column: LabelColumnOpt = None,
    shuffle_buffer: ShuffleBufferOpt = 1000,
) -> None:
    """Fine-tune a pre-trained MAE encoder as a classifier with the official recipe (FINETUNE.md, ViT-L): AdamW,
    layer-wise lr decay, per-iteration cosine schedule with warm-up, mixup / cutmix, RandAugment, random erasing,
    label smoothing, drop path. Evaluates and saves a checkpoint every epoch; --resume continues bit for bit."""
    from cli import interrupt
    from mae.large.train.finetune import finetune
    from mae.large.utils.distributed import context_from_env

    config = _config(ctx, checkpoint, resume)
    main = context_from_env().is_main
    report = EpochReport(config.epochs, quiet=json_ or not main)
    if out_dir is None:  # a resumed run goes on writing where it began
        out_dir = (resume if resume.is_dir() else resume.parent) if resume is not None else Path("finetune_run")
    interrupt.graceful()  # a signal ends the run at the next update, with a checkpoint to resume from
    try:
        result = finetune(train, val, out_dir, config, pretrained=checkpoint, resume=resume, on_progress=report)
    finally:
        report.close()
    if not main:
        return
    if json_:
        print_json({"run_dir": str(out_dir), "best_top1": result.best_top1, "history": result.history,
                    "args": result.args})
        return
    last = result.history[-1] if result.history else None
    if last is None:
        out.print(f"nothing to do: the run in {escape(str(out_dir))} already finished its {config.epochs} epochs")
        return
    out.print(f"fine-tuned {len(result.history)} epochs: top-1 {last['val_top1']:.2f}%, top-5 {last['val_top5']:.2f}%, "
              f"best top-1 {result.best_top1:.2f}%; checkpoints and log.jsonl in {escape(str(out_dir))}")


def _config(ctx: typer.Context, checkpoint: Path | None, resume: Path | None) -> Any:  # -> FinetuneConfig
    """The run's settings: the options given (a resumed run keeps its own and takes only those typed)."""
    from mae.large.train.finetune import FinetuneConfig, resumed_config

    values = {name: value for name, value in ctx.params.items()
              if name not in ("train", "val", "checkpoint", "out_dir", "resume", "json_")}
    values["aa"] = _none_if(values["aa"], "none", "")
    if resume is not None:
        given = {FIELDS.get(name, name): value for name, value in values.items()
                 if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
        return resumed_config(resume, **given)
    if checkpoint is None:
        raise typer.BadParameter("name the pre-trained checkpoint to fine-tune (or --resume a run)",
                                 param_hint="--checkpoint")
    return FinetuneConfig(**{FIELDS.get(name, name): value for name, value in values.items()})


class EpochReport:
    """A run's progress on stderr: every setting at the start, a bar per epoch, a line per epoch (rank 0)."""

    def __init__(self, epochs: int, *, quiet: bool, line: Any = None, settings: Any = None) -> None:
        self.epochs, self.quiet = epochs, quiet
        self.line, self.settings = line or _epoch_line, settings or _print_settings
        self.bar: Any = None
        self.advance: Any = None

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if self.quiet:
            return
        if event == "start":
            self.settings(info)
        elif event == "epoch_start":
            self.bar = progress(info["steps"], f"epoch {info['epoch'] + 1}/{self.epochs}", quiet=False)
            self.advance = self.bar.__enter__()
        elif event == "step" and self.advance is not None:
            self.advance()
        elif event == "compile":
            err.print(f"[dim]{escape(info['text'])}[/]")
        elif event == "epoch":
            self.close()
            err.print(self.line(info, self.epochs))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _epoch_line(info: dict[str, Any], epochs: int) -> str:
    return (f"epoch {info['epoch'] + 1}/{epochs}: train loss {info['train_loss']:.4f}, lr {info['lr']:.2e}, val loss "
            f"{info['val_loss']:.4f}, top-1 {info['val_top1']:.2f}%, top-5 {info['val_top5']:.2f}% (best "
            f"{info['best_top1']:.2f}%), {info['images_per_s']:.1f} images/s")


def _print_settings(info: dict[str, Any]) -> None:
    """Every setting the run uses (the recipe's defaults included), as config.json holds them."""
    settings = {**info["config"], **{k: info[k] for k in ("architecture", "num_classes", "world_size", "accum_iter",
                                                           "effective_batch", "lr", "amp", "device", "workers")}}
    err.print(f"fine-tuning {escape(str(info['pretrained']))} on {info['train_images']:,} images of "
              f"{info['num_classes']} classes ({escape(info['train'])}), validating on {info['val_images']:,} "
              f"({escape(info['val'])}); {info['steps']} steps per epoch"
              + (f", resuming at epoch {info['start_epoch'] + 1}" if info["start_epoch"] else ""))
    err.print("  " + ", ".join(f"{key}={value}" for key, value in settings.items()), highlight=False)
    if os.environ.get("WORLD_SIZE", "1") != "1":
        err.print(f"  [dim]{info['world_size']} processes (torchrun); rank 0 prints and writes[/]")
