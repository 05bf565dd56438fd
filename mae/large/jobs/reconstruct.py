"""The reconstruct job: the official demo's figure for every image, under the masks asked for, with optional
error panels, separate panels, animations and a gallery; as one process or as several under torchrun.

`reconstruct(inputs, model, out_dir, ...)` writes what `mae-large reconstruct` writes and returns the same rows
(`ReconstructRun`). Every image gets the official seeded mask (`forward.maskings_for`), or the mask chosen; a
list of ratios draws a row per ratio (masks nested: one seed's noise). What the decoder predicts is asked for,
known (the catalogue, a folder's `config.json`) or measured on the first images (`models.target`). Under torchrun
each process draws its own share of the images; rank 0 gathers the rows and writes the gallery.

Every figure (and every animation frame) states its mask: the `--mask` text with the ratio and seed it was drawn
with, and the share of patches actually removed. The gallery records the run's settings.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..data.images import Crop, ImageFailure
from ..data.sources import container_source
from ..errors import ImageError, invalid_argument
from ..models.masks import MaskSpec, parse_mask
from ..models.target import TargetChoice, resolve_target
from ..utils.compile import eager
from ..utils.device import resolve_device
from ..utils.outputs import guard_output, output_stems
from ..viz.animation import ANIMATION_RATIOS, save_animation
from ..viz.figures import SweepRow, check_panel_names, mask_statement, panels_figure, save_figure, sweep_figure
from ..viz.gallery import write_gallery
from ..viz.panels import error_map, make_panels, save_panel
from .forward import Masking, SweepResult, detect_target_on_files, maskings_for, sweep_files
from .models import ModelSource, as_source, checkpoint_kind, require_decoder
from .run import QUIET, Events, JobRun, collect_inputs, noting_compile, run_sharded

__all__ = ["ANIMATION_SEEDS", "PANEL_FILES", "ReconstructRun", "reconstruct"]

PANEL_FILES = ("original", "masked", "reconstruction", "reconstruction_visible")  # --save-panels: stem.<name>.png
ANIMATION_SEEDS = 12  # --animate-over seeds: seeds 0..11
DEFAULT_PANELS = ("original", "masked", "reconstruction", "visible")


@dataclass(frozen=True, kw_only=True)
class ReconstructRun(JobRun):
    """What a reconstruct job did: one row per input in input order (`{"image", "loss", "output", "files", "note",
    "mask"[, "sweep"]}`, or `{"image", "error"}` for an input that gave nothing), and the settings it used."""

    failures: list[ImageFailure]
    kind: str  # the checkpoint's kind (full, encoder-only, random-init, ...)
    mask: str  # the mask as given (random, block:0.6, ...)
    ratios: list[float]  # each ratio once, in the order first given
    seed: int
    target: TargetChoice
    gallery: Path | None
    sweep: bool = False  # a list of ratios was given: a row per ratio, and a "sweep" in every row


def reconstruct(
    inputs: Sequence[str | Path],
    model: ModelSource | nn.Module | str | Path | None,
    out_dir: str | Path = "outputs",
    *,
    mask_ratios: Sequence[float] | None = None,
    mask: str | MaskSpec = "random",
    seed: int = 2,
    panels: Sequence[str] = DEFAULT_PANELS,
    target: str = "auto",
    crop: Crop = "resize",
    batch_size: int = 8,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    workers: int | None = None,
    recursive: bool = False,
    save_panels: bool = False,
    animate: Literal["ratios", "seeds"] | None = None,
    animate_format: Literal["gif", "webp"] = "gif",
    allow_random_decoder: bool = False,
    gallery: bool | None = None,
    image_column: str | None = None,
    compile: bool = False,
    events: Events = QUIET,
) -> ReconstructRun | None:
    """Reconstruct every image of `inputs` (files and folders, or a data set) and save its figure in `out_dir`.

    Args:
        inputs: image files and folders (`recursive`: their sub-folders too), or a data set's files (`data.sources`:
            parquet, a `save_to_disk` folder, tar shards; a figure is named after its image's file and row or key).
        model: a `MaskedAutoencoderViT`, a checkpoint path, a `ModelSource`, or None for a seeded random init.
        out_dir: the folder for `<stem>.png` (and `<stem>.<panel>.png`, `<stem>.gif`, `index.html`).
        mask_ratios: one ratio (default 0.75, or the mask's own), or several: a row per ratio (a ratio given twice
            is drawn once, with a note).
        mask: `random` (the official mask at the ratio and `seed`) or any `masks.parse_mask` text / `MaskSpec`.
        seed: the masking seed (the official demo's is 2).
        panels: the panels in order, of `viz.figures.PANEL_NAMES`.
        target: `auto`, `pixels` or `norm-pix`: what the decoder predicts.
        crop, batch_size, dtype, device, workers: how the images are read and run (`forward.sweep_files`).
        save_panels: also write each panel as its own PNG (one ratio only).
        animate: also write an animation per image over mask ratios 0.1-0.95 or over seeds 0-11.
        animate_format: `gif` or `webp`.
        allow_random_decoder: draw even with an encoder-only checkpoint (its decoder is then random).
        gallery: write `index.html` (default: when a folder or a data set is among the inputs).
        image_column: a data set's image column (tar shards: the member extension); default `image` (the first image).
        compile: run the model's blocks through `torch.compile` (`forward.sweep_files`: a graph per block shape and
            mask ratio, its compile time said in a note); pays over many batches. Animations stay eager (a ratio per
            frame).
        events: what to report while it runs (`run.Events`).

    Returns the rows on rank 0 (None on the other ranks of a torchrun run). An input that cannot be read, or whose
    reconstruction is not finite, is a failure row; nothing is drawn for it."""
    spec = parse_mask(mask) if isinstance(mask, str) else mask
    sweep = mask_ratios is not None and len(mask_ratios) > 1
    ratios = _ratios(mask_ratios, spec, events)
    names = check_panel_names(panels)
    if save_panels and sweep:
        raise invalid_argument("ratios", "save_panels writes the panels of one reconstruction; give one mask ratio")
    if animate not in (None, "ratios", "seeds") or animate_format not in ("gif", "webp"):
        raise invalid_argument("animate", f"animate must be ratios or seeds and its format gif or webp, got "
                                          f"{animate!r}, {animate_format!r}")
    source, out_dir = as_source(model), Path(out_dir)
    data = container_source(inputs, image_column=image_column)
    if data is not None:
        if not len(data.paths):
            raise ImageError(f"no image to reconstruct in {' '.join(map(str, inputs))}: "
                             f"{'; '.join(f.reason for f in data.failures[:3]) or 'it holds no image'}")
        paths, failures = data.paths, list(data.failures)
    else:
        paths, failures = collect_inputs(inputs, "reconstruct", recursive=recursive, events=events)
    suffix = f".{animate_format}" if animate else None
    guard_output(out_dir, [*inputs, *(data.origin.get("files", []) if data else []), *source.inputs()],
                 argument="out_dir")
    stems = output_stems(paths, out_dir, _files(save_panels, suffix))  # from every input: ranks agree on names
    chosen = None if spec.kind == "random" and spec.ratio is None else spec
    drawn = _Drawer(names, out_dir, stems, nested=spec.kind == "random", save_panels=save_panels, animate=animate,
                    animate_format=animate_format, seed=seed, ratios=ratios, mask=chosen, spec=spec, sweep=sweep)

    def setup(ctx: Any, ev: Events) -> tuple[nn.Module, list[Masking], TargetChoice]:
        net = source.mae(ctx.device)
        ev.loaded(net)
        require_decoder(net, allow_random_decoder)
        maskings = maskings_for(net, ratios=ratios, seeds=[seed], mask=chosen)
        path = net.load_report.path if net.load_report else None
        run = net.load_report.run if net.load_report else None
        choice = resolve_target(target, path, checkpoint_kind(net), run) or detect_target_on_files(
            net, paths, maskings[0], crop=crop, dtype=dtype)
        net.norm_pix_loss = choice.norm_pix  # the loss is measured against what the decoder predicts
        ev.note(f"decoder target: {choice.target} ({choice.how})")
        return net, maskings, choice

    def work(state: Any, local: list[Path], ctx: Any, ev: Events):
        net, maskings, choice = state
        n_workers = _workers(workers, ctx.device)
        items = sweep_files(net, local, maskings, crop=crop, batch_size=batch_size, dtype=dtype, workers=n_workers,
                            compile=compile)
        for item in noting_compile(items, ev, "the masked forward pass", enabled=compile):
            if isinstance(item, ImageFailure):
                if not ctx.is_distributed:  # distributed: rank 0 reports them all, in input order, at the end
                    ev.failure(item)
                yield {"image": str(item.path), "error": item.reason}
            else:
                yield drawn(net, item, choice.norm_pix)

    started = time.perf_counter()
    where = resolve_device(device) if device is not None else source.device or resolve_device("auto")
    run = run_sharded(paths, where, label="reconstructing", events=events, setup=setup, work=work)
    if run.results is None:  # not rank 0: rank 0 reports for every process
        return None
    net, _, choice = run.state
    rows = [{"image": str(f.path), "error": f.reason} for f in failures] + run.results
    failed = [ImageFailure(Path(r["image"]), r["error"]) for r in run.results if "error" in r]  # named as in rows
    if run.ctx.is_distributed:
        for failure in failed:
            events.failure(failure)
    failures += failed
    ok = [r for r in rows if "error" not in r]
    wants_gallery = (data is not None or any(Path(i).is_dir() for i in inputs)) if gallery is None else gallery
    settings = {"checkpoint": _checkpoint_label(source, net), "kind": checkpoint_kind(net), "mask": spec.text or spec.kind,
                "mask ratios": ratios, "seed": seed, "target": f"{choice.target} ({choice.how})"}
    written = write_gallery(out_dir, [(Path(r["image"]).name, r["loss"], r["output"], r.get("note")) for r in ok],
                            settings=settings) if ok and wants_gallery else None
    return ReconstructRun(rows=rows, failures=failures, kind=checkpoint_kind(net), mask=spec.text, ratios=ratios, seed=seed,
                          target=choice, gallery=written, sweep=sweep, seconds=time.perf_counter() - started, model=net)


def _checkpoint_label(source: ModelSource, net: Any) -> str:
    """Where the model came from, for the gallery: the checkpoint path, or what stood in for one."""
    report = getattr(net, "load_report", None)
    if source.checkpoint is not None or report is not None:
        return str(source.checkpoint if source.checkpoint is not None else report.path)
    return "none: a model given in Python" if source.model is not None else f"none: random init (seed {source.seed})"


def _ratios(mask_ratios: Sequence[float] | None, spec: MaskSpec, events: Events = QUIET) -> list[float]:
    """The ratios of the run: as given (each once, with a note for repeats), else the mask's own, else the official
    0.75; a fixed-shape mask takes one."""
    ratios = [float(r) for r in mask_ratios] if mask_ratios is not None else None
    if ratios is not None and len(set(ratios)) < len(ratios):
        repeated = sorted({r for r in ratios if ratios.count(r) > 1})
        shown = ", ".join(f"{r:g}" for r in repeated)
        events.note(f"mask ratio{'s' if len(repeated) > 1 else ''} {shown} {'were' if len(repeated) > 1 else 'was'} "
                    "given more than once; each ratio is drawn once")
        ratios = list(dict.fromkeys(ratios))
    if ratios is not None and spec.fixed_shape and len(ratios) > 1:
        raise invalid_argument("ratios", f"mask {spec.text} removes the same patches at every ratio; give one mask "
                                         "ratio (or none) with it")
    if ratios is not None and spec.ratio is not None and ratios != [spec.ratio]:
        raise invalid_argument("ratios", f"mask {spec.text} sets the ratio to {spec.ratio}, and mask_ratio says "
                                         f"{','.join(f'{r:g}' for r in ratios)}; give one of them")
    return ratios or [spec.ratio if spec.ratio is not None else 0.75]


def _files(save_panels: bool, animation: str | None) -> list[str]:
    """The suffixes of the files one input gives: its figure, its panels, its animation."""
    return [".png"] + ([f".{label}.png" for label in PANEL_FILES] if save_panels else []) + \
        ([animation] if animation else [])


def _workers(workers: int | None, device: torch.device) -> int:
    from ..data.loader import default_workers

    return default_workers(device_type=device.type) if workers is None else workers


class _Drawer:
    """Draws and saves one image's figure (a row per masking), its panels and animation; returns its row."""

    def __init__(self, names: tuple[str, ...], out_dir: Path, stems: dict[Path, str], *, nested: bool, save_panels: bool,
                 animate: str | None, animate_format: str, seed: int, ratios: list[float], mask: MaskSpec | None,
                 spec: MaskSpec, sweep: bool) -> None:
        self.names, self.out_dir, self.stems, self.nested, self.save_panels = names, out_dir, stems, nested, save_panels
        self.animate, self.animate_format, self.seed, self.ratio, self.mask = animate, animate_format, seed, ratios[0], mask
        self.ratios, self.spec, self.sweep = ratios, spec, sweep

    def __call__(self, model: Any, item: SweepResult, norm_pix: bool) -> dict[str, Any]:
        note = _note(model, norm_pix)
        rows = []
        # A row is titled with the ratio asked for (a block mask's masking carries the ratio it reached instead).
        fits = len(self.ratios) == len(item.maskings) and not self.spec.fixed_shape
        asked = self.ratios if fits else [m.ratio for m in item.maskings]
        for ratio, pred, mask, loss in zip(asked, item.preds, item.masks, item.losses):
            panels = make_panels(model, item.image[None], pred[None], mask[None], norm_pix=norm_pix)[0]
            error = error_map(model, item.image[None], pred[None], mask[None])[0] if "error" in self.names else None
            rows.append(SweepRow(ratio, loss, panels, error))
        if not self.sweep:
            fig = panels_figure(rows[0].panels, self.names, error=rows[0].error, title=item.path.name, loss=rows[0].loss,
                                note=note, mask=_describe(self.spec, ratio=item.maskings[0].ratio, seed=self.seed))
        else:
            fig = sweep_figure(rows, names=self.names, title=item.path.name, note=note, nested=self.nested and len(rows) > 1,
                               mask=_describe(self.spec, ratio=None, seed=self.seed))
        stem = self.stems[item.path]
        figure_path = save_figure(fig, self.out_dir / f"{stem}.png")
        written = [str(figure_path)]
        if self.save_panels:
            for label, panel in zip(PANEL_FILES, rows[0].panels.as_list()):
                written.append(str(save_panel(panel, self.out_dir / f"{stem}.{label}.png")))
        if self.animate:
            written.append(str(self._animation(model, item, norm_pix, self.out_dir / f"{stem}.{self.animate_format}")))
        masks = [[int(i) for i in mask.nonzero().flatten().tolist()] for mask in item.masks]
        row = {"image": str(item.path), "loss": item.losses[0], "output": str(figure_path), "files": written,
               "note": note, "mask": masks[0]}
        if self.sweep:
            row["sweep"] = [{"mask_ratio": m.ratio, "loss": loss, "mask": removed}
                            for m, loss, removed in zip(item.maskings, item.losses, masks)]
        return row

    def _animation(self, model: Any, item: SweepResult, norm_pix: bool, path: Path) -> Path:
        """One forward per frame, frames drawn with PIL."""
        if self.animate == "seeds":
            seeds = list(range(ANIMATION_SEEDS))
            maskings = maskings_for(model, ratios=[self.ratio], seeds=seeds, mask=self.mask)
            described = [_describe(self.spec, ratio=self.ratio, seed=s) for s in seeds]
        else:
            usable = [r for r in ANIMATION_RATIOS if int(model.config.num_patches * (1 - r)) >= 1]
            maskings = maskings_for(model, ratios=usable, seeds=[self.seed], mask=self.mask)
            described = [_describe(self.spec, ratio=None, seed=self.seed)] * len(maskings)
        with eager():  # a ratio per frame: compiled, a graph per frame (with compile=True, the blocks are compiled)
            swept = next(iter(sweep_files(model, [item.path], maskings, overlap=False)))
        if not isinstance(swept, SweepResult):
            raise ImageError(swept.reason)
        frames = [make_panels(model, swept.image[None], pred[None], mask[None], norm_pix=norm_pix)[0]
                  for pred, mask in zip(swept.preds, swept.masks)]
        labels = [f"{m.label} | loss {loss:.4f}\n{mask_statement(text, float(mask.float().mean()))}"
                  for m, loss, text, mask in zip(maskings, swept.losses, described, swept.masks)]
        return save_animation(frames, path, labels=labels)


_SEEDED = ("random", "block")  # the mask kinds drawn from the seed


def _describe(spec: MaskSpec, *, ratio: float | None, seed: int) -> str:
    """The mask as a figure states it, in the `--mask` syntax with what it was drawn with: "random:0.75, seed 2",
    "block:0.6, seed 2", "right". `ratio` None: the ratio is stated elsewhere (a sweep's rows, the frames)."""
    text = spec.text or spec.kind
    if spec.kind in _SEEDED and spec.ratio is None and ratio is not None:
        text = f"{spec.kind}:{ratio:g}"
    return f"{text}, seed {seed}" if spec.kind in _SEEDED else text


def _note(model: Any, norm_pix: bool) -> str | None:
    random_decoder = model.load_report is not None and model.load_report.decoder_random
    parts = ["random decoder" if random_decoder else "",
             "norm-pix prediction un-normalised with visible-patch statistics" if norm_pix else ""]
    return ", ".join(p for p in parts if p) or None

