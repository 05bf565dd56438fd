"""Where the jobs write: never onto what they read, never into a run they were not asked to continue, in names
that never clash.

`guard_output` is the one check every writer makes before its work (figures, galleries, animations, features files
and shard folders, converted checkpoints, ONNX files, probe heads, training runs): the output may not be, contain,
lie inside, or resolve through a link to an input. `guard_run_folder` keeps a finished or interrupted run from being
started over. `output_stems` gives every input a file stem (`cat.jpg` -> `cat`, then `cat_2` ...) such that none of
its files (`stem + suffix` for each suffix a job writes) is another input's file or an input image itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import invalid_argument

__all__ = ["RUN_FILES", "guard_output", "guard_run_folder", "output_stems"]


def output_stems(paths: Sequence[Any], out_dir: Path, suffixes: Sequence[str] | str) -> dict[Any, str]:
    """A file stem per input, in `out_dir`: the input's own stem, numbered (`_2`, `_3` ...) until none of the
    files `stem + suffix` clashes with one given to an earlier input or resolves to one of the input images. An input
    is a path, or an image inside a data set's file (`data.records.Record`: its own `stem`, no file to resolve)."""
    suffixes = [suffixes] if isinstance(suffixes, str) else list(suffixes)
    inputs = {p.resolve() for p in paths if isinstance(p, Path)}
    taken: set[str] = set()
    names: dict[Any, str] = {}
    for path in paths:
        n = 1
        while True:
            stem = path.stem if n == 1 else f"{path.stem}_{n}"
            files = [stem + suffix for suffix in suffixes]
            if not any(f in taken or (out_dir / f).resolve() in inputs for f in files):
                break
            n += 1
        taken.update(files)
        names[path] = stem
    return names


# ---- outputs never destroy inputs ---------------------------------------------------------------------------------
RUN_FILES = ("config.json", "log.jsonl", "checkpoint-last.pth")  # what marks a folder as a training run's


def guard_output(out: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]], *, argument: str = "out") -> None:
    """Refuse an output path that is an input, contains one, lies inside an input folder, or resolves through a link
    to any of these: `overwrite` replaces an earlier output, never an input. `inputs` are every file a job reads
    and every folder it scans (a checkpoint and each file of a model folder, image files and folders, a list file;
    not the folder a list file lies in). Each path counts as given and as resolved (a link and its target).
    `InvalidArgumentError` about `argument`, naming both paths."""
    out = Path(out).expanduser()
    outs = _forms(out)
    given_out = Path(os.path.abspath(out))
    present = out.exists() or out.is_symlink()  # else no input can be it or lie inside it: only folders matter
    for given in inputs:
        path = Path(given).expanduser()
        if not present and not path.is_dir():
            continue
        for source in _forms(path):
            folder = source.is_dir()
            for target in outs:
                link = "" if target == given_out else f" (through a link: it resolves to {target})"
                if target == source:
                    why = f"is the input {path}" + (link or ("" if Path(os.path.abspath(path)) == source else
                                                             f" (through a link: it resolves to {source})"))
                elif present and _inside(source, target):
                    why = f"contains the input {path}{link}"
                elif folder and _inside(target, source):
                    why = f"lies inside the input folder {path}{link}"
                else:
                    continue
                raise invalid_argument(argument, f"the output {out} {why}; write somewhere that holds no input, since "
                                                 "an output never replaces or mixes with what a command reads (nothing "
                                                 "was written)")


def guard_run_folder(out: str | os.PathLike[str], resume: bool, *, argument: str = "out_dir") -> None:
    """Refuse to start a run in a folder that holds one (`RUN_FILES`) unless it is resumed: naming both ways out."""
    out = Path(out).expanduser()
    found = [name for name in RUN_FILES if (out / name).exists()] if out.is_dir() else []
    if found and not resume:
        raise invalid_argument(argument, f"{out} already holds a run ({', '.join(found)}); continue it with "
                                         f"resume='{out}', or give a new run another {argument}=FOLDER (nothing was "
                                         "written)")


def _forms(path: Path) -> set[Path]:
    """The path made absolute as given (links kept), and resolved through every link."""
    return {Path(os.path.abspath(path)), path.resolve()}


def _inside(path: Path, folder: Path) -> bool:
    return folder in path.parents
