"""Pre-training throughput against the official loop, on one device: `mae-large pretrain`'s bare step and the whole
command against facebookresearch/mae's own `engine_pretrain.train_one_epoch`, with FLOPs counted and MFU.

    python bench/pretrain_vs_official.py --official-src .official/mae --timm-src .official/timm032 --out OUT
    python bench/pretrain_vs_official.py --official-src .official/mae --timm-src .official/timm032 --out OUT \\
        --device cpu --size 32 --batch 2 --steps 2 --warmup 1 --e2e-steps 4 --workers 1 --rows b,a,c --budget 1800 \\
        --child-timeout 900  # CPU smoke run

The official code is imported at run time from unmodified source folders named on the command line; none of it is
in this project. Get them with

    git clone https://github.com/facebookresearch/mae .official/mae
    git -C .official/mae checkout efb2a8062c206524e35e47d04501ed4f544c0ae8        # main when this was written
    pip download timm==0.3.2 --no-deps -d /tmp/timm032
    unzip -q /tmp/timm032/timm-0.3.2-py3-none-any.whl 'timm/*' -d .official/timm032

(or clone huggingface/pytorch-image-models at 6504a42832cb6687e3f595c37e003ea920268365, its v0.3.2: the PyPI wheel
was built from a slightly later tree, which differs in model files MAE does not use; timm/models/vision_transformer.py
and timm/optim/optim_factory.py are the same in both). `--timm-src` is the folder that holds `timm/`. `.official/`
is git-ignored; on a machine without network, copy the two folders there.

Rows, each run in a fresh process, all at the same ViT-L/16 MAE (mask ratio 0.75, norm-pix loss), image size and
batch per device; a and b on pre-built random images in pinned host memory (what a `pin_memory` loader hands over):

  a. official: `engine_pretrain.train_one_epoch` (its `torch.cuda.amp.autocast()`, fp16 on CUDA; its
     `util.misc.NativeScalerWithGradNormCount`; its per-step `loss.item()`, `torch.cuda.synchronize()` and grad norm)
     with `models_mae.mae_vit_large_patch16_dec512d8b` (timm 0.3.2 `Block`: explicit softmax attention), the
     optimiser of `main_pretrain.py` (timm 0.3.2 `optim_factory.add_weight_decay(model, 0.05)`, AdamW betas
     (0.9, 0.95)) and its `cudnn.benchmark = True`.
  b. bare step: this project's loop (`trainer.train_epoch`, through `bench/_train.library_epoch`) with the `pretrain`
     recipe (`pretrain._Recipe`: keyed per-image masking noise, keyed per-step seeding, the loss read and checked
     before the backward), bf16 autocast on CUDA, `F.scaled_dot_product_attention`.
  c. command: `python -m cli pretrain` (= `mae-large pretrain`) on a folder of 500x375 JPEGs with `--workers N`, from
     scratch, bf16 on CUDA, `--effective-batch` = the batch (an update every step), no checkpoints, no preview; the
     `images_per_s` of its `log.jsonl` for the last epoch (the first pays the kernel selection; every epoch starts
     its loader workers anew, so an epoch of `--e2e-steps` steps carries that start-up once).

Learning rate: the recipe's blr 1.5e-4 x batch / 256 in all three, warming up from 0. On the CPU every row is fp32
(the official autocast disables itself without CUDA; the project's amp is off there).

The default order is b, a, b, a, c (`--rows`; a row named twice runs twice and the ratios are of the medians). Each
run is appended to OUT/rows.jsonl and OUT/table.md as soon as it is measured, so a run cut short keeps what it
measured; each run's own output goes to OUT/<n><row>.log. The script keeps to `--budget` seconds (default 450): a row
may run for what is left of them (at most `--child-timeout`), and none starts with under 20 s left. Printed: the
ratios b/a (goal >= 1.5x), c/b (goal >= 0.85x) and c/a, and MFU = FLOPs per image x images/s / peak. The FLOPs of one
training step (forward and backward; the optimiser's elementwise work is not counted) are counted by
`torch.utils.flop_counter.FlopCounterMode` on each model in its own process, with SDPA on its math backend so that
attention counts as the model's two batched matmuls (not the flash kernel's recomputation in the backward): the two
counts must agree. Peaks: the dense bf16 / fp16 tensor-core rate of the spec sheets (NVIDIA H100 and H200 datasheets:
1,979 TFLOP/s "with sparsity" for SXM, 1,513 for H100 PCIe, 1,671 for NVL; dense is half: 989.4, 756.5, 835.5), and
the rate of an 8192^3 matmul measured in each row's own process (bf16 in b, fp16 in a; fp32 on the CPU).

Shims, in the official row's process only (the environment, no official function body changes), each printed and
kept in the row:
  S1 `torch._six` (removed in torch 2.0): a stub module with `inf` (util/misc.py), `container_abcs`, `string_classes`,
     `int_classes` (timm 0.3.2 timm/models/layers/helpers.py).
  S2 `timm.data`: a stub module holding exactly the namespace of timm 0.3.2's own timm/data/constants.py; the real
     package imports torchvision's transforms (and its 0.3.2 code predates current torchvision); timm.models needs
     the constants only.
  S3 `numpy.float = float` (the alias was removed in NumPy 1.24; util/pos_embed.py uses `dtype=np.float`).
  S4 (CPU only) `torch.cuda.synchronize` a no-op (`train_one_epoch` calls it every step; a CPU build raises).
The deprecated `torch.cuda.amp.autocast()` and `torch.cuda.amp.GradScaler()` run as they are (a FutureWarning).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train import REPO  # noqa: E402

MAE_COMMIT = "efb2a8062c206524e35e47d04501ed4f544c0ae8"  # the facebookresearch/mae main this was written against
MASK_RATIO = 0.75
BLR = 1.5e-4
# Dense bf16 / fp16 tensor-core peaks, TFLOP/s: half the datasheets' "with sparsity" figures (H100: 1,979 SXM,
# 1,513 PCIe, 1,671 NVL; H200: 1,979 SXM, 1,671 NVL); first match of the device name wins.
SPEC_PEAKS = (("H100 PCIe", 756.5), ("H100 NVL", 835.5), ("H200 NVL", 835.5), ("H100", 989.4), ("H200", 989.4))
GOALS = {"b/a": 1.5, "c/b": 0.85}


# ---- what both timed children share -------------------------------------------------------------------------------
def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_batches(count: int, batch: int, size: int, device: Any) -> list[Any]:
    """`count` distinct random batches (N, 3, size, size) in host memory, pinned when the device is CUDA."""
    import torch

    g = torch.Generator().manual_seed(1)
    out = [torch.randn(batch, 3, size, size, generator=g) for _ in range(count)]
    return [b.pin_memory() for b in out] if device.type == "cuda" else out


def count_step_flops(step: Any) -> int:
    """FLOPs of `step()` (a forward and backward) by `FlopCounterMode`, SDPA on its math backend (attention as the
    model's two batched matmuls, forward and backward, as the explicit attention of the official model counts)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def matmul_peak(device: Any, dtype: Any) -> float:
    """The best FLOP/s of square matmuls in `dtype` (8192 on CUDA, 1024 on the CPU) over 5 rounds."""
    import torch

    n, reps = (8192, 20) if device.type == "cuda" else (1024, 4)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    best = 0.0
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - began))
    return best


def device_info(device: Any) -> dict[str, Any]:
    import torch

    info = {"torch": torch.__version__, "device_type": device.type}
    if device.type == "cuda":
        info.update(device_name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    else:
        info.update(device_name=f"cpu ({os.cpu_count()} logical cores, {torch.get_num_threads()} threads)")
    return info


def peak_memory_gib(device: Any) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


# ---- a: the official loop -----------------------------------------------------------------------------------------
def install_shims(official_src: Path, timm_src: Path, device: Any) -> list[str]:
    """The environment shims (S1-S4 of the docstring) and the two source folders first on `sys.path`."""
    import collections.abc

    import numpy as np
    import torch

    shims = []
    six = types.ModuleType("torch._six")
    six.inf, six.container_abcs, six.string_classes, six.int_classes = math.inf, collections.abc, (str, bytes), int
    sys.modules["torch._six"] = six
    torch._six = six  # type: ignore[attr-defined]
    shims.append("S1 sys.modules['torch._six'] = stub(inf=math.inf, container_abcs=collections.abc, "
                 "string_classes=(str, bytes), int_classes=int)")
    constants = timm_src / "timm" / "data" / "constants.py"
    tdata = types.ModuleType("timm.data")
    tdata.__file__ = str(constants)
    exec(compile(constants.read_text(), str(constants), "exec"), tdata.__dict__)
    sys.modules["timm.data"] = tdata
    shims.append(f"S2 sys.modules['timm.data'] = the namespace of {constants} (the real package imports torchvision)")
    if np.__dict__.get("float") is not float:
        np.float = float  # type: ignore[attr-defined]
        shims.append("S3 numpy.float = float (removed in NumPy 1.24; util/pos_embed.py uses dtype=np.float)")
    if device.type != "cuda":
        torch.cuda.synchronize = lambda *a, **k: None
        shims.append("S4 torch.cuda.synchronize = no-op (CPU run: train_one_epoch calls it every step)")
    sys.path.insert(0, str(timm_src))
    sys.path.insert(0, str(official_src))
    return shims


class FixedLoader:
    """What `train_one_epoch` iterates: (samples, labels) pairs with a length, from pre-built batches."""

    def __init__(self, batches: list[Any], first: int, count: int) -> None:
        self.batches, self.first, self.count = batches, first, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Any:
        import torch

        for i in range(self.first, self.first + self.count):
            images = self.batches[i % len(self.batches)]
            yield images, torch.zeros(images.shape[0], dtype=torch.long)


def official_child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = torch.device(args.device)
    shims = install_shims(Path(args.official_src).resolve(), Path(args.timm_src).resolve(), device)
    for line in shims:
        print(f"shim {line}", file=sys.stderr)
    import engine_pretrain
    import models_mae
    import timm
    import timm.optim.optim_factory as optim_factory
    import util.misc as misc

    where = {m.__name__: m.__file__ for m in (engine_pretrain, models_mae, misc, timm, optim_factory)}
    if timm.__version__ != "0.3.2":
        raise SystemExit(f"timm {timm.__version__} imported from {timm.__file__}; the official code pins 0.3.2")
    for name, file in where.items():
        root = args.timm_src if name.startswith("timm") else args.official_src
        if not Path(file).resolve().is_relative_to(Path(root).resolve()):
            raise SystemExit(f"{name} was imported from {file}, not from {root}")

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # main_pretrain.py
    torch.manual_seed(0)
    model = models_mae.mae_vit_large_patch16_dec512d8b(norm_pix_loss=True, img_size=args.size).to(device)
    lr = BLR * args.batch / 256
    param_groups = optim_factory.add_weight_decay(model, 0.05)
    optimizer = torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.95))
    scaler = misc.NativeScalerWithGradNormCount()
    loop_args = types.SimpleNamespace(lr=lr, min_lr=0.0, epochs=2, warmup_epochs=1, accum_iter=1, mask_ratio=MASK_RATIO)
    batches = host_batches(min(args.steps + args.warmup, 8), args.batch, args.size, device)

    def epoch(first: int, count: int) -> dict[str, float]:
        with contextlib.redirect_stdout(sys.stderr):  # its MetricLogger lines go to the row's log
            return engine_pretrain.train_one_epoch(model, FixedLoader(batches, first, count), optimizer, device, 0,
                                                   scaler, log_writer=None, args=loop_args)

    epoch(0, args.warmup)
    _sync(device)
    scale_before = scaler._scaler.get_scale() if scaler._scaler.is_enabled() else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    stats = epoch(args.warmup, args.steps)
    _sync(device)
    seconds = time.perf_counter() - began
    peak = peak_memory_gib(device)
    scale_after = scaler._scaler.get_scale() if scaler._scaler.is_enabled() else None

    def step() -> None:
        with torch.cuda.amp.autocast():
            loss = model(batches[0].to(device), mask_ratio=MASK_RATIO)[0]
        loss.backward()

    flops = count_step_flops(step)
    optimizer.zero_grad(set_to_none=True)
    amp_on = device.type == "cuda"
    return {"row": "a", "name": "official train_one_epoch", "images_per_s": args.steps * args.batch / seconds,
            "seconds": seconds, "peak_gib": peak, "flops_per_image": flops / args.batch,
            "matmul_peak_tflops": matmul_peak(device, torch.float16 if amp_on else torch.float32) / 1e12,
            "precision": "fp16 autocast + GradScaler" if amp_on else "fp32 (autocast off without CUDA)",
            "attention": "timm 0.3.2 explicit softmax(q k^T) v", "mean_loss": stats.get("loss"),
            "scale": [scale_before, scale_after], "shims": shims, "imported_from": where, **device_info(device)}


# ---- b: the project's bare step -----------------------------------------------------------------------------------
def bare_child(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    import torch
    from _train import library_epoch, timed

    from mae.large.data.labelled import LabelledBatch
    from mae.large.models.mae import mae_vit_large_patch16
    from mae.large.train.pretrain import PretrainConfig, _Recipe
    from mae.large.train.pretrain_model import weight_decay_groups
    from mae.large.utils.device import autocast
    from mae.large.utils.distributed import DistContext

    device = torch.device(args.device)
    amp = "bf16" if device.type == "cuda" else "off"
    torch.manual_seed(0)
    model = mae_vit_large_patch16(norm_pix_loss=True, img_size=args.size).to(device).train()
    lr = BLR * args.batch / 256
    optimizer = torch.optim.AdamW(weight_decay_groups(model, 0.05), lr=lr, betas=(0.9, 0.95))
    total = args.steps + args.warmup
    images = host_batches(min(total, 8), args.batch, args.size, device)
    batches = [LabelledBatch(images[i % len(images)], torch.full((args.batch,), -1), [],
                             torch.arange(i * args.batch, (i + 1) * args.batch)) for i in range(total)]

    class Prebuilt(_Recipe):
        limit = total

        def batches(self, epoch: int, start: int) -> list:
            return batches[start:self.limit]

    config = PretrainConfig(batch_size=args.batch, input_size=args.size, mask_ratio=MASK_RATIO)
    recipe = Prebuilt(None, model.config, config, DistContext(device=device), 0)  # type: ignore[arg-type]
    run = library_epoch(model, recipe, optimizer, device, amp, total, lr=lr)
    result = timed(run, args.steps, args.batch, device, warmup=args.warmup)

    def step() -> None:
        with autocast(amp, device):
            loss = model(images[0].to(device), mask_ratio=MASK_RATIO)[0]
        loss.backward()

    flops = count_step_flops(step)
    optimizer.zero_grad(set_to_none=True)
    return {"row": "b", "name": "mae-large bare step", "images_per_s": result["images_per_s"],
            "seconds": args.steps * args.batch / result["images_per_s"], "peak_gib": result["peak_gib"],
            "flops_per_image": flops / args.batch,
            "matmul_peak_tflops": matmul_peak(device, torch.bfloat16 if amp == "bf16" else torch.float32) / 1e12,
            "precision": "bf16 autocast" if amp == "bf16" else "fp32 (amp off on the CPU)",
            "attention": "F.scaled_dot_product_attention", **device_info(device)}


# ---- c: the command -----------------------------------------------------------------------------------------------
def jpeg_tree(root: Path, count: int, distinct: int) -> Path:
    """`count` JPEG files in `root`: links to `distinct` realistic 500x375 JPEGs (`features_pipeline.jpeg_folder`,
    crops of the photographs matplotlib ships) in turn; decoding costs the same for a repeated file."""
    from features_pipeline import jpeg_folder

    sources = sorted(jpeg_folder(min(count, distinct)).glob("*.jpg"))
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (root / f"img_{i:06d}.jpg").symlink_to(sources[i % len(sources)])
    return root


def command_row(args: argparse.Namespace, out: Path, images: Path, run_dir: Path, tag: str) -> dict[str, Any]:
    """Row c: the command on `images`, its output in OUT/<tag>.log, its log.jsonl and config.json beside it."""
    amp = "bf16" if args.device.startswith("cuda") else "off"
    command = [sys.executable, "-m", "cli", "pretrain", str(images), "--from-scratch", "--out", str(run_dir),
               "--epochs", str(args.e2e_epochs), "--warmup-epochs", "1", "--size", str(args.size), "--batch-size",
               str(args.batch), "--effective-batch", str(args.batch), "--workers", str(args.workers), "--device",
               args.device, "--amp", amp, "--no-checkpoints", "--preview-every", "0", "--json"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    began = time.perf_counter()
    with (out / f"{tag}.log").open("w") as log:
        print("$ " + " ".join(command), file=log, flush=True)
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                              timeout=args.row_timeout)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"the command failed ({done.returncode}); see {out / f'{tag}.log'}")
    shutil.copy(run_dir / "log.jsonl", out / f"{tag}.log.jsonl")
    shutil.copy(run_dir / "config.json", out / f"{tag}.config.json")
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    last = records[-1]
    return {"row": "c", "name": f"mae-large pretrain (workers {args.workers}), epoch {last['epoch'] + 1}",
            "images_per_s": last["images_per_s"], "seconds": last["seconds"],
            "epochs_images_per_s": [r["images_per_s"] for r in records], "wall_s": wall,
            "images_per_epoch": args.e2e_steps * args.batch, "workers": args.workers,
            "precision": "bf16 autocast" if amp == "bf16" else "fp32 (amp off on the CPU)",
            "attention": "F.scaled_dot_product_attention", "command": " ".join(command)}


# ---- the parent ---------------------------------------------------------------------------------------------------
def spec_peak(name: str | None) -> float | None:
    for key, tflops in SPEC_PEAKS:
        if name and key in name:
            return tflops
    return None


def run_child(args: argparse.Namespace, out: Path, tag: str) -> dict[str, Any]:
    """Row a or b (the tag's last letter) in a fresh process; its output in OUT/<tag>.log."""
    result = out / f"{tag}.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--child", tag[-1], "--result", str(result), "--device", args.device,
               "--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--official-src", str(args.official_src), "--timm-src", str(args.timm_src)]
    with (out / f"{tag}.log").open("w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, timeout=args.row_timeout)
    if done.returncode != 0 or not result.exists():
        tail = (out / f"{tag}.log").read_text()[-3000:]
        raise RuntimeError(f"failed ({done.returncode}):\n{tail}")
    return json.loads(result.read_text())


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def mfu(row: dict[str, Any], flops: float | None, peak_tflops: float | None) -> float | None:
    if not flops or not peak_tflops:
        return None
    return flops * row["images_per_s"] / (peak_tflops * 1e12)


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per row: its last run's details with the median images/s of all its runs."""
    out: dict[str, dict[str, Any]] = {}
    for key in ("a", "b", "c"):
        mine = [r for r in runs if r["row"] == key]
        if mine:
            out[key] = {**mine[-1], "images_per_s": statistics.median(r["images_per_s"] for r in mine),
                        "runs": [r["images_per_s"] for r in mine]}
    return out


def table(runs: list[dict[str, Any]], args: argparse.Namespace, header: list[str]) -> str:
    """The markdown of what is measured so far: every run, its MFU, the ratios of the rows' medians."""
    rows = summary(runs)
    device_name = next((r.get("device_name") for r in runs if r.get("device_name")), None)
    spec = spec_peak(device_name)
    flops = rows.get("b", {}).get("flops_per_image") or rows.get("a", {}).get("flops_per_image")
    lines = [*header, "", "| row | loop | precision, attention | images/s | / a (median) | peak GiB | FLOPs/image "
             "(counted) | MFU vs spec | MFU vs measured matmul |", "|---|---|---|---|---|---|---|---|---|"]
    base = rows.get("a", {}).get("images_per_s")
    for r in runs:
        own = r.get("flops_per_image") or flops
        measured = r.get("matmul_peak_tflops") or rows.get("b", {}).get("matmul_peak_tflops")
        ratio = f"{r['images_per_s'] / base:.2f}x" if base else "-"
        lines.append(f"| {r['row']} | {r['name']} | {r['precision']}; {r['attention']} | {r['images_per_s']:.2f} | "
                     f"{ratio} | {fmt(r.get('peak_gib'), '.2f')} | {fmt(own and own / 1e9, '.2f')} G | "
                     f"{fmt(mfu(r, own, spec), '.1%')} | {fmt(mfu(r, own, measured), '.1%')} |")
    lines.append("")
    if spec:
        lines.append(f"spec peak: {spec} TFLOP/s dense bf16/fp16 ({device_name}; NVIDIA datasheet, half the 'with "
                     "sparsity' figure)")
    else:
        lines.append(f"spec peak: none known for {device_name}; MFU against the measured matmul only")
    cuda = args.device.startswith("cuda")
    for key, label in (("a", "fp16" if cuda else "fp32"), ("b", "bf16" if cuda else "fp32")):
        peaks = [r["matmul_peak_tflops"] for r in runs if r["row"] == key]
        if peaks:
            lines.append(f"measured matmul peak ({label}, in row {key}'s processes): "
                         f"{', '.join(f'{v:.3f}' for v in peaks)} TFLOP/s")
    if "a" in rows and "b" in rows:
        fa, fb = rows["a"]["flops_per_image"], rows["b"]["flops_per_image"]
        lines.append(f"FLOPs per image (one forward + backward, counted): official {fa / 1e9:.4f} G, this model "
                     f"{fb / 1e9:.4f} G ({'the same' if fa == fb else f'differ by {abs(fa - fb) / fb:.2e} relative'})")
    for pair, (num, den) in (("b/a", ("b", "a")), ("c/b", ("c", "b")), ("c/a", ("c", "a"))):
        if num in rows and den in rows:
            value = rows[num]["images_per_s"] / rows[den]["images_per_s"]
            goal = GOALS.get(pair)
            verdict = f" (goal >= {goal}x: {'met' if value >= goal else 'not met'})" if goal else ""
            lines.append(f"{pair} = {value:.3f}x of the medians{verdict}")
    for r in runs:
        if r["row"] == "c":
            lines.append("c per epoch, images/s: " + ", ".join(f"{v:.2f}" for v in r["epochs_images_per_s"]) +
                         f" ({r['images_per_epoch']} images per epoch; command wall {r['wall_s']:.1f} s)")
        if r["row"] == "a" and r.get("scale") and r["scale"][0] is not None:
            lines.append(f"official GradScaler scale before / after the timed steps: {r['scale']} (a halving is a "
                         "skipped update)")
    if "a" in rows:
        lines.append("official shims: " + "; ".join(rows["a"]["shims"]))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-src", type=Path, required=True, help="unmodified facebookresearch/mae checkout")
    parser.add_argument("--timm-src", type=Path, required=True, help="the folder holding timm 0.3.2's timm/")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mae-bench/pretrain_vs_official"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64, help="images per step and device, every row")
    parser.add_argument("--steps", type=int, default=50, help="timed steps of rows a and b")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    parser.add_argument("--e2e-steps", type=int, default=150, help="steps per epoch of the command (row c)")
    parser.add_argument("--e2e-epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=min(12, max(1, (os.cpu_count() or 2) - 2)))
    parser.add_argument("--distinct-jpegs", type=int, default=256)
    parser.add_argument("--rows", default="b,a,b,a,c", help="the rows to run, in this order (bf16 first); a row "
                        "named twice runs twice, the ratios are of the medians")
    parser.add_argument("--child-timeout", type=int, default=240, help="seconds a row may take")
    parser.add_argument("--budget", type=int, default=450, help="seconds the whole script may take: a row gets at "
                        "most what is left, and none starts with under 20 s left")
    parser.add_argument("--child", choices=("a", "b"), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("official_src", "timm_src"):
        setattr(args, name, getattr(args, name).resolve())
    if (args.timm_src / "version.py").exists() and args.timm_src.name == "timm":
        args.timm_src = args.timm_src.parent  # the package folder itself was given
    if args.child:
        result = official_child(args) if args.child == "a" else bare_child(args)
        args.result.write_text(json.dumps(result, indent=1))
        return 0

    for path, needed in ((args.official_src, "engine_pretrain.py"), (args.official_src, "models_mae.py"),
                         (args.timm_src, "timm/version.py")):
        if not (path / needed).is_file():
            parser.error(f"{path / needed} not found: see the docstring for the two source folders")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.jsonl").unlink(missing_ok=True)
    from _common import machine_header

    official_rev = _git_head(args.official_src)
    header = [f"# {line.lstrip('# ')}" for line in machine_header().splitlines()]
    header += [f"# official: {args.official_src} ({official_rev or 'not a git checkout'}; written against "
               f"{MAE_COMMIT[:7]}); timm: {args.timm_src}",
               f"# ViT-L/16 MAE, size {args.size}, batch {args.batch} per device, mask ratio {MASK_RATIO}, norm-pix; "
               f"a, b: {args.steps} timed steps after {args.warmup}; c: {args.e2e_epochs} epochs of {args.e2e_steps} "
               f"steps, {args.workers} workers; device {args.device}"]
    if args.device == "cpu":
        header.append("# CPU SMOKE RUN: proves the script runs end to end; not a result")
    print("\n".join(header), flush=True)
    runs: list[dict[str, Any]] = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mae-pretrain-vs-official-") as tmp:
        images = None
        for i, row in enumerate(r.strip() for r in args.rows.split(",") if r.strip()):
            t0 = time.perf_counter()
            left = args.budget - (t0 - began)
            if left < 20:
                print(f"row {row}: not run ({left:.0f} s of the {args.budget} s budget left)", flush=True)
                continue
            args.row_timeout = min(args.child_timeout, left)
            try:
                if row == "c":
                    images = images or jpeg_tree(Path(tmp) / "images", args.e2e_steps * args.batch, args.distinct_jpegs)
                    run = command_row(args, out, images, Path(tmp) / f"run{i}", f"{i}{row}")
                else:
                    run = run_child(args, out, f"{i}{row}")
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"row {row}: {exc}", flush=True)
                continue
            run["row_wall_s"] = time.perf_counter() - t0
            runs.append(run)
            with (out / "rows.jsonl").open("a") as f:
                f.write(json.dumps(run) + "\n")
            text = table(runs, args, header)
            (out / "table.md").write_text(text)
            print(f"row {row}: {run['images_per_s']:.2f} images/s ({run['name']}), {run['row_wall_s']:.1f} s "
                  f"({time.perf_counter() - began:.0f} s so far)", flush=True)
    print("\n" + (out / "table.md").read_text() if runs else "nothing measured", flush=True)
    return 0 if runs else 1


def _git_head(path: Path) -> str | None:
    """The commit of a git checkout at `path` itself (not of a repository around it), else None."""
    if not (path / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


if __name__ == "__main__":
    sys.exit(main())
