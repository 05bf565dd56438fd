"""Output files of the jobs that write one file (or a few) per input: names that never clash.

`output_stems` gives every input a file stem (`cat.jpg` -> `cat`, then `cat_2`, `cat_3` ...) such that none of
its files (`stem + suffix` for each suffix a job writes) is another input's file or an input image itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["output_stems"]


def output_stems(paths: Sequence[Path], out_dir: Path, suffixes: Sequence[str] | str) -> dict[Path, str]:
    """A file stem per input path, in `out_dir`: the input's own stem, numbered (`_2`, `_3` ...) until none of the
    files `stem + suffix` clashes with one given to an earlier input or resolves to one of the input images."""
    suffixes = [suffixes] if isinstance(suffixes, str) else list(suffixes)
    inputs = {p.resolve() for p in paths}
    taken: set[str] = set()
    names: dict[Path, str] = {}
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
