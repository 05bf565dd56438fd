"""Start-up time of the CLI: `mae-large --help` and `mae-large inspect CKPT`, fresh processes.

    .venv/bin/python bench/startup.py [--runs 7]

Each command runs `--runs` times (medians, min-max); a separate run under `python -X importtime`
tells whether torch and matplotlib got imported. `python -c "import torch"` and a bare interpreter
are the reference points.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PYTHON, bench_checkpoint, machine_header, run_checked, spread, wait_for_quiet  # noqa: E402


def imported(args: list[str]) -> dict[str, bool]:
    run = run_checked([PYTHON, "-X", "importtime", "-m", "cli", *args])
    names = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    return {m: m in names for m in ("torch", "matplotlib", "numpy", "PIL")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    checkpoint = bench_checkpoint()
    mae_large = str(Path(PYTHON).parent / "mae-large")
    print(machine_header())
    commands = {
        "python (bare)": [PYTHON, "-c", "pass"],
        'python -c "import torch"': [PYTHON, "-c", "import torch"],
        "mae-large --help": [mae_large, "--help"],
        "mae-large inspect CKPT": [mae_large, "inspect", str(checkpoint)],
        "mae-large inspect CKPT --json": [mae_large, "inspect", str(checkpoint), "--json"],
    }
    times: dict[str, list[float]] = {k: [] for k in commands}
    rss: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(args.runs):
        for name, cmd in commands.items():
            wait_for_quiet()
            run = run_checked(cmd)
            times[name].append(run.wall_s)
            rss[name].append(run.peak_rss_mb)
    probes = {"mae-large --help": imported(["--help"]), "mae-large inspect CKPT": imported(["inspect", str(checkpoint)])}
    print(f"\n{'command':<32}{'wall s median (min-max)':>26}{'peak RSS MiB':>16}   imports")
    for name in commands:
        probe = probes.get(name, probes.get(name.removesuffix(" --json")))
        note = ", ".join(f"{m} {'yes' if v else 'no'}" for m, v in probe.items()) if probe else ""
        print(f"{name:<32}{spread(times[name], '.3f'):>26}{spread(rss[name], '.0f'):>16}   {note}")


if __name__ == "__main__":
    main()
