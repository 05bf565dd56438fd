"""Helpers shared by the benchmarks: fresh-process timing with peak RSS, medians, the machine header,
a cached ViT-L checkpoint and real sample photographs.

Nothing here asserts a time: the scripts print measurements and ratios, docs/benchmarks.md records them.

The released checkpoint (mae_visualize_vit_large.pth, 1.32 GB) is not on this machine and there is no
network, so `bench_checkpoint()` writes a file of the same format, keys, shapes and size from a seeded
random init: `torch.save({"model": state_dict}, path)`. Every timing and memory figure depends only on
the format and the size, not on the values; the reconstructions look like noise, of course.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CACHE = Path(os.environ.get("MAE_BENCH_CACHE", "/tmp/mae-bench"))
CHECKPOINT_SEED = 0


# ---- fresh processes ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChildRun:
    wall_s: float  # from fork to exit of the command, timed by the launcher
    peak_rss_mb: float  # the child's own high-water mark (ru_maxrss of wait4, KiB on Linux)
    returncode: int
    stdout: str
    stderr: str


# The child is started by a small launcher interpreter, not forked from this process: on Linux a forked
# child inherits its parent's RSS high-water mark (the copied address space counts until exec), so a
# benchmark that has imported torch would see every child start at ~290 MiB. The launcher is tiny
# (python -S, ~10 MiB), forks and execs the command, and reports the command's wait4 rusage.
_LAUNCHER = r"""
import json, os, sys, time
result_path, argv = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(result_path, "w") as f:
    json.dump({"wall_s": wall, "maxrss_kib": usage.ru_maxrss, "code": os.waitstatus_to_exitcode(status)}, f)
"""


def run_child(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> ChildRun:
    """Run `cmd` in a fresh process; return its wall time and ITS peak RSS (wait4's ru_maxrss, KiB)."""
    import json

    CACHE.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    tag = f"{os.getpid()}"
    out_path, err_path, res_path = (CACHE / f".{name}.{tag}" for name in ("stdout", "stderr", "result"))
    with out_path.open("w+") as out_f, err_path.open("w+") as err_f:
        proc = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, str(res_path), *map(str, cmd)],
                                stdout=out_f, stderr=err_f, env=full_env, cwd=cwd or REPO)
        proc.wait()
        out_f.seek(0)
        err_f.seek(0)
        stdout, stderr = out_f.read(), err_f.read()
    result = json.loads(res_path.read_text())
    for path in (out_path, err_path, res_path):
        path.unlink(missing_ok=True)
    return ChildRun(result["wall_s"], result["maxrss_kib"] / 1024, result["code"], stdout, stderr)


def run_checked(cmd: Sequence[str], **kwargs) -> ChildRun:
    run = run_child(cmd, **kwargs)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {run.returncode}:\n{run.stderr[-3000:]}")
    return run


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], fmt: str = ".3g") -> str:
    """`median (min-max)`, 3 significant digits unless `fmt` says otherwise."""
    return f"{median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def wait_for_quiet(max_load: float = 1.5, timeout_s: float = 600.0, poll_s: float = 5.0) -> float:
    """Wait (at most `timeout_s`) until the 1-minute load average is below `max_load`; return the load.

    The machine has two cores that other processes may share; timings under load are noise.
    """
    deadline = time.monotonic() + timeout_s
    load = os.getloadavg()[0]
    while load >= max_load and time.monotonic() < deadline:
        time.sleep(poll_s)
        load = os.getloadavg()[0]
    if load >= max_load:
        print(f"# warning: 1-minute load still {load:.2f} after {timeout_s:.0f} s; numbers below are disturbed")
    return load


# ---- the machine ----------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def machine_header(*, with_torch: bool = True) -> str:
    """The lines every benchmark prints first: CPU, cores, memory, versions, current load."""
    flags = cpu_flags()
    isa = ", ".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "no AVX-512"
    lines = [
        f"# cpu: {cpu_model()} ({os.cpu_count()} logical cores; {isa})",
        f"# memory: {memory_gb():.1f} GB; python {platform.python_version()}; {platform.platform()}",
    ]
    if with_torch:
        import torch

        versions = f"torch {torch.__version__} (threads {torch.get_num_threads()}, cpu capability " \
                   f"{torch.backends.cpu.get_cpu_capability()})"
        try:
            import transformers

            versions += f", transformers {transformers.__version__}"
        except ImportError:
            versions += ", transformers not installed"
        lines.append(f"# {versions}")
    lines.append(f"# load average (1 min) at start: {os.getloadavg()[0]:.2f}")
    return "\n".join(lines)


# ---- data -----------------------------------------------------------------------------------------
def bench_checkpoint() -> Path:
    """A full ViT-L checkpoint in the official format (seeded random init), written once into CACHE.

    Stands in for mae_visualize_vit_large.pth (not available offline): same container, keys, shapes,
    dtype and size (1.32 GB), different values.
    """
    path = CACHE / "mae_visualize_vit_large.pth"
    if path.exists():
        return path
    import torch

    from mae.large import MAEConfig, MaskedAutoencoderViT

    CACHE.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(CHECKPOINT_SEED)
    sd = MaskedAutoencoderViT(MAEConfig.vit_large()).state_dict()
    tmp = path.with_suffix(".tmp")
    torch.save({"model": sd}, tmp)
    tmp.replace(path)
    return path


def sample_photographs() -> list[Path]:
    """The photographs bundled with matplotlib (grace_hopper.jpg and a PNG photograph of a gift pack)."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "sample_data"
    names = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
    return [folder / n for n in names if (folder / n).exists()]


def image_folder(count: int = 32) -> Path:
    """`count` different image files made from the sample photographs (crops, flips, sizes, JPEG/PNG)."""
    from PIL import Image, ImageOps

    folder = CACHE / f"images{count}"
    if folder.is_dir() and len(list(folder.iterdir())) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    sources = [Image.open(p).convert("RGB") for p in sample_photographs()]
    for i in range(count):
        img = sources[i % len(sources)]
        w, h = img.size
        f = 0.55 + 0.45 * ((i * 7) % 10) / 9  # crop fraction 0.55 .. 1.0
        cw, ch = int(w * f), int(h * f)
        x0, y0 = (w - cw) * ((i * 3) % 5) // 4, (h - ch) * ((i * 5) % 5) // 4
        variant = img.crop((x0, y0, x0 + cw, y0 + ch))
        if i % 4 == 1:
            variant = ImageOps.mirror(variant)
        side = (256, 320, 480, 640)[i % 4]
        variant = variant.resize((side, int(side * ch / cw)), Image.Resampling.BICUBIC)
        suffix = ".jpg" if i % 2 == 0 else ".png"
        variant.save(folder / f"photo_{i:02d}{suffix}")
    return folder


def flops_per_image(config=None, mask_ratio: float = 0.75) -> dict[str, float]:
    """Multiply-add FLOPs (2 per MAC) of one MAE forward, counted from the configuration.

    Counts every matmul: the patch projection over all L patches (the official code embeds before
    masking), the encoder on 1 + kept tokens, decoder_embed, the decoder on 1 + L tokens, decoder_pred.
    Attention scores and the weighted sum are included (2 * 2 * T^2 * D per block); LayerNorm, GELU,
    softmax and additions are not (they are a fraction of a percent).
    """
    from mae.large import MAEConfig
    from mae.large.models.mae import check_mask_ratio

    c = config or MAEConfig.vit_large()
    length = c.num_patches
    kept = check_mask_ratio(mask_ratio, length)

    def blocks(tokens: int, dim: int, hidden: int, depth: int) -> float:
        per = 2 * tokens * dim * (3 * dim) + 2 * tokens * dim * dim + 2 * 2 * tokens * dim * hidden
        per += 2 * 2 * tokens * tokens * dim  # q k^T and attn @ v over all heads
        return depth * per

    patch = 2 * length * c.patch_dim * c.embed_dim
    encoder = blocks(1 + kept, c.embed_dim, c.mlp_hidden_dim, c.depth)
    dec_embed = 2 * (1 + kept) * c.embed_dim * c.decoder_embed_dim
    decoder = blocks(1 + length, c.decoder_embed_dim, c.decoder_mlp_hidden_dim, c.decoder_depth)
    pred = 2 * (1 + length) * c.decoder_embed_dim * c.patch_dim
    total = patch + encoder + dec_embed + decoder + pred
    return {"patch_embed": patch, "encoder": encoder, "decoder_embed": dec_embed, "decoder": decoder,
            "decoder_pred": pred, "total": total}
