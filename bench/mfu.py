"""Model FLOPs utilisation of every job: images/s, achieved TFLOP/s from counted FLOPs, and the share of the card's
spec-sheet dense peak and of a matrix-product peak measured in the same run; eager and compiled, bfloat16 and float32.

    bash bench/gpu_mfu.sh                                              # the GPU table: one command, <= 8 min
    python bench/mfu.py --device cpu --arch small --size 64 --batch 2 --iters 2 --warmup 2   # a smoke pass, every row
    python bench/mfu.py --device cpu --dtypes fp32 --jobs features,mae_forward --warmup 2 --iters 1 --rounds 3  # ViT-L

Jobs and variants are `bench/_mfu_jobs.py`'s (features on 197 tokens, the MAE forward at 0.75, the fine-tuning and
pre-training steps; eager, `compiled` = the library's `compile=True`, levers). Each job and precision runs in a fresh
process (`_mfu_jobs.py`), which prints a JSON line per variant as soon as it is measured; this script writes each row
as it comes (`--out` JSON lines, `--table` markdown) and stops starting processes at `--deadline` seconds. FLOPs are
counted once per job by `mae.large.utils.flops.count_flops` (forward; forward + backward for the training steps; the
optimiser's elementwise update is not matrix work). `--baseline DIR` also runs the eager variant of another checkout's
`mae` package (e.g. commit 904620c) right after each job, on the same card, with the current code's FLOP count.

Peaks: the spec-sheet dense figures of NVIDIA's datasheets (H100 SXM and H200: 989.4 TFLOP/s bf16 tensor core dense
(1,979 with sparsity), 66.9 float32 non-tensor; H100 PCIe 756.5 / 51.2; H200 NVL 835.5 / 60; torch's float32 matrix
products do not use TF32 unless asked, so 66.9 is float32's peak); none known for a CPU. The measured peak is the
best of a few large `torch.mm` (8192^3 on a GPU) in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _mfu_jobs import JOBS, TRAINING  # noqa: E402

# Dense TFLOP/s (bf16 tensor core, float32 non-tensor) by the device name torch reports; NVIDIA's H100 and H200
# datasheets (nvidia.com/en-us/data-center/h100, /h200) list them with sparsity for bf16: halved here.
SPEC_TFLOPS = (
    ("H200 NVL", {"bf16": 835.5, "fp32": 60.0}),
    ("H200", {"bf16": 989.4, "fp32": 66.9}),
    ("H100 PCIe", {"bf16": 756.5, "fp32": 51.2}),
    ("H100 NVL", {"bf16": 835.5, "fp32": 60.0}),
    ("H100", {"bf16": 989.4, "fp32": 66.9}),  # SXM5 ("NVIDIA H100 80GB HBM3")
)
BATCH = {"cuda": {"features": 128, "mae_forward": 128, "finetune_step": 64, "pretrain_step": 128},
         "cpu": {"features": 8, "mae_forward": 8, "finetune_step": 4, "pretrain_step": 8}}


def spec_peak(device_name: str, dtype: str) -> float | None:
    for name, peaks in SPEC_TFLOPS:
        if name.lower() in device_name.lower():
            return peaks[dtype]
    return None


def matmul_peak(device: str, dtype: str) -> dict[str, Any]:
    """The best TFLOP/s of a few large matrix products on `device` in `dtype`, and the device's name."""
    import torch

    dev = torch.device(device)
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    shapes = [(8192, 8192, 8192), (16384, 4096, 4096)] if dev.type == "cuda" else [(2048, 2048, 2048),
                                                                                    (4096, 1024, 4096)]
    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k, device=dev, dtype=dt), torch.randn(k, n, device=dev, dtype=dt)
        reps = 20 if dev.type == "cuda" else 3
        for _ in range(3):
            a @ b
        for _ in range(3):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
            for _ in range(reps):
                a @ b
            if dev.type == "cuda":
                torch.cuda.synchronize()
            best = max(best, 2 * m * k * n * reps / (time.perf_counter() - began) / 1e12)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {"matmul_tflops": best, "device_name": name, "torch": torch.__version__}


class Table:
    """The rows as they come: printed, appended to `--out` (JSON lines) and `--table` (markdown)."""

    HEADER = ("| job | dtype | variant | code | batch | images/s | GFLOP/image | TFLOP/s | MFU (spec) | MFU (matmul) | "
              "compile s | attention kernel | peak GiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    def __init__(self, out: Path | None, table: Path | None) -> None:
        self.out, self.table, self.rows = out, table, []
        self._write(self.HEADER)

    def _write(self, line: str) -> None:
        print(line, flush=True)
        if self.table is not None:
            with self.table.open("a") as f:
                f.write(line + "\n")

    def add(self, row: dict[str, Any], peaks: dict[str, Any]) -> None:
        flops = row.get("flops_per_step")
        if flops is None:  # a baseline checkout: the current code's count for the same job, dtype and batch
            flops = next((r["flops_per_step"] for r in self.rows if r["job"] == row["job"] and r["dtype"] == row["dtype"]
                          and r["batch"] == row["batch"] and r.get("flops_per_step")), None)
            row["flops_per_step"] = flops
        peak = peaks.get(row["dtype"], {})
        spec = spec_peak(row["device_name"], row["dtype"])
        if flops:
            tflops = flops / row["batch"] * row["images_per_s"] / 1e12
            row.update(gflop_per_image=flops / row["batch"] / 1e9, tflops=tflops, spec_tflops=spec,
                       mfu_spec=tflops / spec if spec else None,
                       matmul_tflops=peak.get("matmul_tflops"),
                       mfu_matmul=tflops / peak["matmul_tflops"] if peak.get("matmul_tflops") else None)
        self.rows.append(row)
        if self.out is not None:
            with self.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
        pct = lambda x: f"{100 * x:.1f}%" if x is not None else "n/a"  # noqa: E731
        spread = "" if len(row["rounds"]) < 2 else f" ({min(row['rounds']):.1f}-{max(row['rounds']):.1f})"
        self._write(f"| {row['job']} | {row['dtype']} | {row['variant']} | {row['code']} | {row['batch']} | "
                    f"{row['images_per_s']:.1f}{spread} | {row.get('gflop_per_image', float('nan')):.1f} | "
                    f"{row.get('tflops', float('nan')):.2f} | {pct(row.get('mfu_spec'))} | {pct(row.get('mfu_matmul'))} | "
                    f"{row['compile_s']} | {row['sdpa']} | {_gib(row['peak_gib'])} |")

    def note(self, text: str) -> None:
        self._write(text)

    def ratios(self) -> None:
        """compiled / eager and each variant / the baseline's eager, per job and dtype."""
        lines = []
        for row in self.rows:
            same = [r for r in self.rows if r["job"] == row["job"] and r["dtype"] == row["dtype"]
                    and r["batch"] == row["batch"]]
            eager = next((r for r in same if r["variant"] == "eager" and r["code"] == "current"), None)
            base = next((r for r in same if r["variant"] == "eager" and r["code"] != "current"), None)
            if row["code"] != "current" or row["variant"] == "eager":
                continue
            parts = [f"{row['images_per_s'] / eager['images_per_s']:.2f}x eager" if eager else None,
                     f"{row['images_per_s'] / base['images_per_s']:.2f}x {base['code']} eager" if base else None]
            lines.append(f"- {row['job']} {row['dtype']} {row['variant']}: " + ", ".join(p for p in parts if p))
        if lines:
            self._write("\n" + "\n".join(lines))


def run_child(cmd: list[str], deadline: float, table: Table, peaks: dict[str, Any]) -> bool:
    """Run one child, adding each row it prints as it comes; killed at the deadline. True if it finished."""
    remaining = deadline - time.monotonic()
    if remaining < 20:
        table.note(f"<!-- not run (deadline): {' '.join(cmd[2:])} -->")
        return False
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE.parent,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    timer = threading.Timer(remaining, proc.kill)
    timer.start()
    errors: list[str] = []
    drain = threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    drain.start()
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("{"):
                table.add(json.loads(line), peaks)
        proc.wait()
    finally:
        timer.cancel()
        drain.join(timeout=5)
    if proc.returncode != 0:
        tail = "".join(errors)[-1500:].replace("--", "- -")
        table.note(f"<!-- {' '.join(cmd[2:])} exited {proc.returncode} (killed at the deadline if -9):\n{tail}\n-->")
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--jobs", default=",".join(JOBS))
    parser.add_argument("--dtypes", default="bf16,fp32", help="in this order (bf16 first)")
    parser.add_argument("--variants", default="eager,compiled")
    parser.add_argument("--levers", default="", help="more variants per kind, e.g. infer=compiled+bf16w;train=compiled+fused")
    parser.add_argument("--batch", type=int, default=None, help="one batch for every job (default: per job and device)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--arch", choices=("vit_large", "small"), default="vit_large")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--baseline", type=Path, default=None, help="a checkout whose `mae` package is the baseline")
    parser.add_argument("--baseline-label", default="baseline")
    parser.add_argument("--deadline", type=float, default=1e9, help="seconds after which no process is started")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--table", type=Path, default=None)
    parser.add_argument("--profile", type=Path, default=None, help="top kernels of each compiled variant, appended")
    parser.add_argument("--matmul", default=None, help=argparse.SUPPRESS)  # child: the measured peak of a dtype
    args = parser.parse_args()
    if args.matmul:
        print(json.dumps(matmul_peak(args.device, args.matmul)), flush=True)
        return 0
    deadline = time.monotonic() + args.deadline
    table = Table(args.out, args.table)
    levers = dict(part.split("=", 1) for part in args.levers.split(";") if "=" in part)
    peaks: dict[str, Any] = {}
    for dtype in args.dtypes.split(","):
        done = subprocess.run([sys.executable, __file__, "--device", args.device, "--matmul", dtype],
                              capture_output=True, text=True, cwd=HERE.parent)
        if done.returncode == 0:
            peaks[dtype] = json.loads(done.stdout.strip().splitlines()[-1])
            table.note(f"<!-- {peaks[dtype]['device_name']}, torch {peaks[dtype]['torch']}: {dtype} matmul peak "
                       f"measured {peaks[dtype]['matmul_tflops']:.1f} TFLOP/s; spec-sheet dense "
                       f"{spec_peak(peaks[dtype]['device_name'], dtype) or 'n/a'} -->")
        for job in args.jobs.split(","):
            batch = args.batch or BATCH["cuda" if args.device.startswith("cuda") else "cpu"][job]
            extra = levers.get("train" if job in TRAINING else "infer", "")
            if dtype == "fp32":  # bf16 weights are a bf16 row's lever, not a float32 one
                extra = ",".join(v for v in extra.split(",") if "bf16w" not in v)
            variants = ",".join(v for v in (args.variants, extra) if v)
            common = ["--job", job, "--dtype", dtype, "--device", args.device, "--batch", str(batch), "--size",
                      str(args.size), "--arch", args.arch, "--warmup", str(args.warmup), "--iters", str(args.iters),
                      "--rounds", str(args.rounds), *(["--threads", str(args.threads)] if args.threads else [])]
            child = [sys.executable, str(HERE / "_mfu_jobs.py"), *common]
            run_child([*child, "--variants", variants, *(["--profile", str(args.profile)] if args.profile else [])],
                      deadline, table, peaks)
            if args.baseline is not None:
                run_child([*child, "--variants", "eager", "--code", str(args.baseline), "--label", args.baseline_label],
                          deadline, table, peaks)
    table.ratios()
    return 0


def _gib(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}"  # NaN: no device memory counter (the CPU)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
