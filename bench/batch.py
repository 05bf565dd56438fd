"""Batch reconstruction of a folder of 32 photographs through the CLI: --batch-size 8 against 1.

    .venv/bin/python bench/batch.py [--runs 3] [--count 32]

Each run is a fresh `mae-large reconstruct FOLDER -c CKPT -o OUT --json` process writing 32 figures.
Reported: images/s over the whole process (start-up, load and figures included) and over the
command's own loop (`seconds` of its JSON: decode, forward, figure, save), medians of `--runs`.
The images are 32 variants (crops, flips, sizes, JPEG and PNG) of matplotlib's sample photographs;
the checkpoint is a seeded random init in the official format (the released file is not available
offline).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PYTHON, bench_checkpoint, image_folder, machine_header, median, run_checked, spread, wait_for_quiet  # noqa: E402

# The CLI with the pipeline's overlap switched off (each batch computed only when the loop asks for it).
SERIAL = r"""
import functools, sys
import mae.large.jobs.forward as pipeline
pipeline.reconstruct_files = functools.partial(pipeline.reconstruct_files, overlap=False)
from cli.app import app
sys.argv[0] = "mae-large"
app()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--bf16", action="store_true", help="also run --dtype bfloat16 at batch 8")
    parser.add_argument("--ablation", action="store_true",
                        help="also run batch 8 with reconstruct_files(overlap=False): no forward/figure overlap")
    args = parser.parse_args()

    checkpoint = bench_checkpoint()
    folder = image_folder(args.count)
    mae_large = str(Path(PYTHON).parent / "mae-large")
    print(machine_header())
    print(f"# {args.count} images in {folder}; checkpoint {checkpoint} (seeded random init, official format)")
    variants = {"batch 1": ["--batch-size", "1"], "batch 8": ["--batch-size", "8"]}
    if args.bf16:
        variants["batch 8 bf16"] = ["--batch-size", "8", "--dtype", "bfloat16"]
    commands = {name: [mae_large, "reconstruct", str(folder), "-c", str(checkpoint), "--json", *extra]
                for name, extra in variants.items()}
    if args.ablation:
        variants["batch 8 serial"] = ["--batch-size", "8"]
        commands["batch 8 serial"] = [PYTHON, "-c", SERIAL, "reconstruct", str(folder), "-c", str(checkpoint),
                                      "--json", "--batch-size", "8"]
    wall: dict[str, list[float]] = {k: [] for k in variants}
    loop: dict[str, list[float]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            for name in variants:
                wait_for_quiet()
                out = Path(tmp) / name.replace(" ", "_")
                run = run_checked([*commands[name], "-o", str(out)])
                result = json.loads(run.stdout)
                assert result["failed"] == 0 and len(result["images"]) == args.count
                assert len(list(out.glob("*.png"))) == args.count
                wall[name].append(run.wall_s)
                loop[name].append(result["seconds"])

    print(f"\n{'variant':<14}{'process s':>20}{'images/s (process)':>20}{'loop s':>20}{'images/s (loop)':>18}")
    for name in variants:
        print(f"{name:<14}{spread(wall[name], '.2f'):>20}{args.count / median(wall[name]):>20.2f}"
              f"{spread(loop[name], '.2f'):>20}{args.count / median(loop[name]):>18.2f}")
    print(f"\nbatch 8 / batch 1, images/s end to end: {median(wall['batch 1']) / median(wall['batch 8']):.2f}x; "
          f"loop only: {median(loop['batch 1']) / median(loop['batch 8']):.2f}x")
    if args.ablation:
        print(f"overlap on / off at batch 8, end to end: {median(wall['batch 8 serial']) / median(wall['batch 8']):.2f}x; "
              f"loop only: {median(loop['batch 8 serial']) / median(loop['batch 8']):.2f}x")
    if args.bf16:
        print(f"batch 8 bf16 / batch 8 fp32, end to end: {median(wall['batch 8']) / median(wall['batch 8 bf16']):.2f}x; "
              f"loop only: {median(loop['batch 8']) / median(loop['batch 8 bf16']):.2f}x")


if __name__ == "__main__":
    main()
