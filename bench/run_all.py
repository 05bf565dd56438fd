"""Run every benchmark in turn, as recorded in docs/benchmarks.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = [
    ["load.py", "--runs", "5"],
    ["cold_start.py", "--runs", "5", "--bf16", "--ablation"],
    ["throughput.py", "--rounds", "7"],
    ["startup.py", "--runs", "7"],
    ["batch.py", "--runs", "3", "--bf16", "--ablation"],
    ["nonfinite_scan.py", "--runs", "5"],
    ["sweep.py", "--rounds", "5"],
    ["features_pipeline.py", "--images", "48"],
    ["evaluate.py", "--rounds", "3"],
    ["attention.py", "--rounds", "5"],
    ["datasets.py"],
]


def main() -> int:
    failed = 0
    for script, *args in RUNS:
        print(f"\n=== {script} {' '.join(args)}", flush=True)
        failed += subprocess.call([sys.executable, str(HERE / script), *args]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
