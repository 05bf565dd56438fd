"""The jobs `bench/mfu.py` measures, run in a child process: one job and precision per process, every variant asked for
on one model, a JSON line per variant as soon as it is measured.

Jobs (ViT-L/16 unless `--size` / `--arch` say otherwise):

* `features`: the encoder alone on every patch (197 tokens at 224), `forward_features` under `inference_mode`;
* `mae_forward`: the masked autoencoder's forward at mask ratio 0.75 (50 tokens in the encoder, 197 in the decoder);
* `finetune_step`: the fine-tuning classifier (1000 classes, drop path 0.2): forward, cross-entropy (smoothing 0.1),
  the loss read on the host (the NaN check of the official loop), backward, AdamW step;
* `pretrain_step`: the masked autoencoder with the norm-pix loss at 0.75: forward, loss read, backward, AdamW step.

Variants (`--variants`, comma-separated): `eager`; `compiled` (the library's `compile=True`:
`layers.compile_blocks(model, CompileOptions())`); `compiled:MODE` (a torch.compile mode: `max-autotune-no-cudagraphs`,
`reduce-overhead`, ...); `whole` (`torch.compile(model or its forward, fullgraph=True)`, the documented whole-model
path); a `+fused` suffix (training: `AdamW(fused=True)`), a `+bf16w` suffix (inference: bfloat16 weights,
`model.to(torch.bfloat16)`, instead of autocast). `--code DIR` runs another checkout's `mae` package (a baseline: its
eager variant only; the library's FLOP counter is not imported, the parent takes the count from the current code).

Nothing here asserts a time; every row states what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
JOBS = ("features", "mae_forward", "finetune_step", "pretrain_step")
TRAINING = ("finetune_step", "pretrain_step")


def _parse_variant(text: str) -> dict[str, Any]:
    base, *levers = text.split("+")
    kind, _, mode = base.partition(":")
    if kind not in ("eager", "compiled", "whole") or any(lever not in ("fused", "bf16w") for lever in levers):
        raise SystemExit(f"unknown variant {text!r}: eager | compiled[:MODE] | whole, with +fused / +bf16w")
    return {"name": text, "kind": kind, "mode": mode or None, "fused": "fused" in levers, "bf16w": "bf16w" in levers}


class Job:
    """One job on one device in one precision: the model, its inputs, a step, and how to switch variants."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from mae.large import MAEConfig, MaskedAutoencoderViT, VisionTransformer, ViTConfig

        self.torch, self.args = torch, args
        self.device = torch.device(args.device)
        self.name, self.batch = args.job, args.batch
        self.amp = torch.bfloat16 if args.dtype == "bf16" else None
        size = (args.size, args.size)
        mae = MAEConfig.vit_large(img_size=size, norm_pix_loss=args.job == "pretrain_step")
        if args.arch == "small":  # a quick pass: ViT-L's shape, 4 blocks each side
            mae = mae.replace(depth=4, decoder_depth=2)
        torch.manual_seed(0)
        if args.job in ("mae_forward", "pretrain_step"):
            build: Callable[[], Any] = lambda: MaskedAutoencoderViT(mae)  # noqa: E731
        else:
            classes = 1000 if args.job == "finetune_step" else 0
            vit = ViTConfig.from_mae(mae, num_classes=classes, global_pool=classes > 0,
                                     drop_path_rate=0.2 if args.job == "finetune_step" else 0.0)
            build = lambda: VisionTransformer(vit)  # noqa: E731
        try:
            with torch.device(self.device):
                self.model = build()
        except Exception:  # a checkout whose constructor wants the CPU
            self.model = build().to(self.device)
        self.training = args.job in TRAINING
        self.model.train(self.training)
        g = torch.Generator(device="cpu").manual_seed(1)
        self.images = torch.randn(self.batch, 3, *size, generator=g).to(self.device)
        self.labels = torch.randint(0, 1000, (self.batch,), generator=g).to(self.device)
        length = (args.size // 16) ** 2
        self.noise = [torch.rand(self.batch, length, generator=g).to(self.device) for _ in range(4)]
        self.calls = 0
        self.optimizer: Any = None
        self.fused: bool | None = None
        self.compiled: dict[str | None, Any] = {}  # mode -> the compiled block function, shared by the variants

    # ---- the step -------------------------------------------------------------------------------------------------
    def set_optimizer(self, fused: bool) -> None:
        if not self.training or self.fused == fused:
            return
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim > 1]
        rest = [p for p in self.model.parameters() if p.requires_grad and p.ndim <= 1]
        betas = (0.9, 0.95) if self.name == "pretrain_step" else (0.9, 0.999)
        groups = [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}]
        self.optimizer = self.torch.optim.AdamW(groups, lr=1e-4, betas=betas, **({"fused": True} if fused else {}))
        self.fused = fused

    def loss(self, forward: Callable[..., Any]) -> Any:
        torch = self.torch
        noise = self.noise[self.calls % len(self.noise)]
        self.calls += 1
        if self.name == "pretrain_step":
            return forward(self.images, 0.75, noise)[0]
        return torch.nn.functional.cross_entropy(forward(self.images), self.labels, label_smoothing=0.1)

    def step(self, forward: Callable[..., Any], bf16w: bool = False) -> None:
        torch = self.torch
        autocast = torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None and not bf16w else None
        if not self.training:
            with torch.inference_mode():
                if autocast is not None:
                    with autocast:
                        self._infer(forward)
                else:
                    self._infer(forward)
            return
        if autocast is not None:
            with autocast:
                loss = self.loss(forward)
        else:
            loss = self.loss(forward)
        value = float(loss.detach())  # the official loop's one host read per step: the NaN check
        if not math.isfinite(value):
            raise SystemExit(f"{self.name}: the loss is {value}")
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _infer(self, forward: Callable[..., Any]) -> None:
        images = self.images.to(self.torch.bfloat16) if self.bf16_weights else self.images
        if self.name == "mae_forward":
            forward(images, 0.75, self.noise[self.calls % len(self.noise)])
            self.calls += 1
        else:
            forward(images)

    bf16_weights = False

    def forward_fn(self) -> Callable[..., Any]:
        return self.model.forward_features if self.name == "features" else self.model

    def count(self) -> int | None:
        """Counted FLOPs of one step (forward, and backward in training), by the library's counter (None in a
        checkout that lacks it)."""
        try:
            from mae.large.utils.flops import count_flops
        except ImportError:
            return None
        torch = self.torch
        autocast = torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else None

        def run() -> None:
            if self.training:
                with autocast if autocast is not None else _null():
                    loss = self.loss(self.model)
                loss.backward()
            else:
                with torch.inference_mode(), autocast if autocast is not None else _null():
                    self._infer(self.forward_fn())

        total = count_flops(run).total
        if self.training:
            self.model.zero_grad(set_to_none=True)
        return total

    # ---- measuring ------------------------------------------------------------------------------------------------
    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def timed(self, run: Callable[[], None], iters: int) -> float:
        self.sync()
        began = time.perf_counter()
        for _ in range(iters):
            run()
        self.sync()
        return iters * self.batch / (time.perf_counter() - began)

    def sdpa(self, run: Callable[[], None]) -> str:
        """The attention kernels one step ran (aten ops named scaled_dot_product), from the profiler."""
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        self.sync()
        names = sorted({e.key.removeprefix("aten::") for e in prof.key_averages()
                        if "scaled_dot_product" in e.key and not e.key.endswith("scaled_dot_product_attention")})
        return ", ".join(names) or "none seen (fused into the graph?)"

    def top_kernels(self, run: Callable[[], None], count: int = 12) -> str:
        """The kernels (CUDA) or ops (CPU) taking the most time over 3 steps, as the profiler's table."""
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(3):
                run()
            self.sync()
        key = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        return prof.key_averages().table(sort_by=key, row_limit=count, max_name_column_width=70)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: Any) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", choices=JOBS, required=True)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--arch", choices=("vit_large", "small"), default="vit_large")
    parser.add_argument("--variants", default="eager,compiled")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1, help="alternate the variants this many times (medians)")
    parser.add_argument("--code", type=Path, default=None, help="a checkout whose `mae` package to measure")
    parser.add_argument("--label", default="current")
    parser.add_argument("--profile", type=Path, default=None, help="append each compiled variant's top kernels here")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(args.code.resolve() if args.code else REPO))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    job = Job(args)
    flops = job.count()
    variants = [_parse_variant(v) for v in args.variants.split(",") if v]
    if args.rounds > 1 and any(v["bf16w"] for v in variants):
        raise SystemExit("--rounds alternates variants on one model: +bf16w (which converts it) runs with --rounds 1")
    runs: dict[str, Callable[[], None]] = {}
    info: dict[str, dict[str, Any]] = {}
    for v in variants:  # set up and warm up each variant (the compiled ones compile here)
        runs[v["name"]], info[v["name"]] = _prepare(job, v, args)
        if args.rounds == 1:  # measured at once, written at once
            _emit(job, v, info[v["name"]], [job.timed(runs[v["name"]], args.iters)], flops, args)
            _release(job, v, info[v["name"]])
    if args.rounds > 1:  # alternated: each round runs every variant once, in turn
        rates: dict[str, list[float]] = {v["name"]: [] for v in variants}
        for _ in range(args.rounds):
            for v in variants:
                _switch(job, v, info)
                rates[v["name"]].append(job.timed(runs[v["name"]], args.iters))
        for v in variants:
            _emit(job, v, info[v["name"]], rates[v["name"]], flops, args)


def _prepare(job: Job, v: dict[str, Any], args: argparse.Namespace) -> tuple[Callable[[], None], dict[str, Any]]:
    torch = job.torch
    state: dict[str, Any] = {"compiled": None, "undo": None}
    if v["bf16w"]:
        if job.training:
            raise SystemExit("+bf16w is for the inference jobs (training keeps float32 master weights)")
        job.model.to(torch.bfloat16)
        job.bf16_weights = True
    job.set_optimizer(v["fused"])
    forward = job.forward_fn()
    watch_seconds = _compile_seconds(torch)
    if v["kind"] == "compiled":  # the library's compile=True; a second variant of one mode reuses its graphs
        from mae.large.models.layers import compile_blocks, transformer_blocks
        from mae.large.utils.compile import CompileOptions

        if v["mode"] not in job.compiled:
            compile_blocks(job.model, CompileOptions(mode=v["mode"]))
            job.compiled[v["mode"]] = transformer_blocks(job.model)[0].compiled_forward
        state["compiled"] = job.compiled[v["mode"]]
        blocks = transformer_blocks(job.model)
        for block in blocks:
            block.compiled_forward = state["compiled"]
        state["undo"] = lambda: [block.__dict__.pop("compiled_forward", None) for block in blocks]
    elif v["kind"] == "whole":
        forward = torch.compile(forward, fullgraph=True, dynamic=False, **({"mode": v["mode"]} if v["mode"] else {}))

    def run() -> None:
        job.step(forward, v["bf16w"])

    if job.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(job.device)
    began = time.perf_counter()
    for _ in range(args.warmup):
        run()
    job.sync()
    state["warmup_s"] = time.perf_counter() - began
    state["compile_s"] = _compile_seconds(torch) - watch_seconds
    state["sdpa"] = job.sdpa(run)
    state["run"] = run
    if args.profile is not None and v["kind"] != "eager":
        with args.profile.open("a") as f:
            f.write(f"\n### {job.name} {args.dtype} {v['name']} batch {job.batch} ({job.device})\n\n```\n"
                    f"{job.top_kernels(run)}\n```\n")
    if job.device.type == "cuda":
        state["peak_gib"] = torch.cuda.max_memory_allocated(job.device) / 2**30
    return run, state


def _switch(job: Job, v: dict[str, Any], info: dict[str, dict[str, Any]]) -> None:
    """Make `v` the running variant (the compiled blocks on or off; the optimiser it uses). Where no variant is compiled
    the blocks are left alone: a baseline checkout (`--code`, e.g. 904620c's flat package) has no `compile_blocks`."""
    if any(i["compiled"] is not None for i in info.values()):
        from mae.large.models.layers import transformer_blocks

        for block in transformer_blocks(job.model):
            block.__dict__.pop("compiled_forward", None)
            if info[v["name"]]["compiled"] is not None:
                block.compiled_forward = info[v["name"]]["compiled"]
    job.set_optimizer(v["fused"])


def _release(job: Job, v: dict[str, Any], state: dict[str, Any]) -> None:
    if state.get("undo") is not None:
        state["undo"]()
    if v["bf16w"]:
        job.model.to(job.torch.float32)
        job.bf16_weights = False


def _compile_seconds(torch: Any) -> float:
    try:
        from torch._dynamo.utils import calculate_time_spent

        return float(calculate_time_spent().get("total_wall_time", 0.0))
    except Exception:
        return 0.0


def _emit(job: Job, v: dict[str, Any], state: dict[str, Any], rates: list[float], flops: int | None,
          args: argparse.Namespace) -> None:
    torch = job.torch
    row = {"job": job.name, "dtype": args.dtype, "variant": v["name"], "code": args.label, "batch": job.batch,
           "size": args.size, "arch": args.arch, "device": str(job.device),
           "device_name": torch.cuda.get_device_name(job.device) if job.device.type == "cuda" else "cpu",
           "torch": torch.__version__, "images_per_s": statistics.median(rates), "rounds": rates,
           "flops_per_step": flops, "compile_s": round(state["compile_s"], 1), "warmup_s": round(state["warmup_s"], 1),
           "sdpa": state["sdpa"], "peak_gib": round(state.get("peak_gib", float("nan")), 2)}
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
