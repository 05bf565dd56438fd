"""An HTML gallery of reconstruction figures: `index.html` beside the PNGs, worst loss first.

The page is self-contained (no network, no external script or style sheet): thumbnails are the figure files
themselves, scaled by CSS and loaded lazily, and a few lines of inline script re-sort the table (worst or
best loss first, by name). Every name is HTML-escaped and every link URL-quoted relative to the index, so
any file name, in any script, shows and opens. The index is written atomically and marked as ours
(`GENERATOR_META`); an `index.html` the tool did not write is never overwritten. The settings of the run that
drew the figures (checkpoint, mask, ratios, seed, ...) are listed above the table, escaped as the names are.
"""

from __future__ import annotations

import html
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

from ..errors import MAEError, invalid_argument
from ..utils.atomic import atomic_path

__all__ = ["GALLERY_INDEX", "GENERATOR_META", "GalleryEntry", "is_our_index", "write_gallery"]

GALLERY_INDEX = "index.html"
# Marks an index this tool wrote; only such a file is replaced.
GENERATOR_META = '<meta name="generator" content="mae-large">'
# How much of an existing index is read to find the mark (it is in the head, near the start).
_SNIFF_BYTES = 64 * 1024


class GalleryEntry(NamedTuple):
    """One row of the gallery: the image's name (as shown), its loss, the figure file, a note.

    A plain tuple `(name, loss, figure[, note])` is taken as well. `figure` is a path as the caller uses it
    (absolute, or relative to the current folder, like `out_dir`); the page links to it relative to itself.
    A loss of None or NaN sorts last."""

    name: str
    loss: float | None
    figure: str | os.PathLike[str]
    note: str | None = None


def is_our_index(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a regular file (not a link) that this tool wrote: its head carries `GENERATOR_META`."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    return GENERATOR_META.encode("ascii") in head


def write_gallery(
    out_dir: str | os.PathLike[str],
    entries: Sequence[GalleryEntry | tuple],
    *,
    title: str = "mae-large reconstructions",
    settings: Mapping[str, object] | None = None,
) -> Path:
    """Write `out_dir/index.html` listing `entries` (worst loss first) and return its path.

    Each row shows the figure as a thumbnail linking to the full file, the image's name, its loss and
    note. `settings` (e.g. `{"checkpoint": ..., "mask": "block:0.6", "seed": 2}`) are listed above the table,
    in the order given, each value as `str(value)` (a list joined by ", "), escaped. Raises `MAEError` (argument
    `out_dir`), leaving the file as it is, when `index.html` exists and was not written by this tool. The
    figures are not checked: the page links to where `entries` say they are.
    """
    out_dir = Path(out_dir)
    index = out_dir / GALLERY_INDEX
    rows = [_check_entry(i, e) for i, e in enumerate(entries)]
    if settings is not None and not isinstance(settings, Mapping):
        raise invalid_argument("settings", f"settings must be a mapping of names to values, got {type(settings).__name__}")
    if (index.exists() or index.is_symlink()) and not is_our_index(index):
        error = MAEError(f"{index} exists and was not written by mae-large; choose another out_dir or remove the file")
        error.argument = "out_dir"
        raise error
    rows.sort(key=_worst_first)
    page = _page(title, [_row(rank, entry, out_dir) for rank, entry in enumerate(rows, 1)], len(rows), settings or {})
    with atomic_path(index) as tmp:
        tmp.write_text(page, encoding="utf-8", newline="\n")
    return index


# ---- the page -------------------------------------------------------------------------------------
def _check_entry(i: int, entry: GalleryEntry | tuple) -> GalleryEntry:
    if not isinstance(entry, tuple) or len(entry) not in (3, 4):
        raise invalid_argument("entries", f"entry {i} must be (name, loss, figure[, note]), got {type(entry).__name__}")
    entry = GalleryEntry(*entry)
    if not isinstance(entry.name, str):
        raise invalid_argument("entries", f"entry {i}: the name must be a string, got {type(entry.name).__name__}")
    if entry.loss is not None and (isinstance(entry.loss, bool) or not isinstance(entry.loss, numbers.Real)):
        raise invalid_argument("entries", f"entry {i}: the loss must be a number or None, got {entry.loss!r}")
    if not isinstance(entry.figure, (str, os.PathLike)):
        raise invalid_argument("entries", f"entry {i}: the figure must be a path, got {type(entry.figure).__name__}")
    return entry


def _has_loss(loss: float | None) -> bool:
    return loss is not None and not math.isnan(float(loss))


def _worst_first(entry: GalleryEntry) -> tuple[int, float, str]:
    """Largest loss first, entries without one last; ties by name."""
    known = _has_loss(entry.loss)
    return (0 if known else 1, -float(entry.loss) if known else 0.0, entry.name)  # type: ignore[arg-type]


def _text(value: str) -> str:
    """Escaped for HTML text and attribute values; bytes that are not UTF-8 (surrogate escapes in a file
    name) shown as backslash escapes, so the page is valid UTF-8."""
    shown = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return html.escape(shown, quote=True)


def _href(figure: str | os.PathLike[str], out_dir: Path) -> str:
    """The figure's URL relative to the index: a POSIX relative path, each byte outside the safe set
    percent-encoded (the file name's own bytes, so a name that is not UTF-8 still resolves)."""
    relative = os.path.relpath(os.path.abspath(figure), os.path.abspath(out_dir))
    url = quote(os.fsencode(Path(relative).as_posix()), safe="/")
    return html.escape(url, quote=True)


def _js_number(value: float) -> str:
    """`value` as JavaScript's parseFloat reads it back exactly (repr, and Infinity for an overflowed loss)."""
    return repr(value) if math.isfinite(value) else ("Infinity" if value > 0 else "-Infinity")


def _value(value: object) -> str:
    """A setting as shown: a list or tuple joined by ", ", anything else as `str`."""
    if isinstance(value, (list, tuple)):
        return ", ".join(_value(v) for v in value)
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def _settings(settings: Mapping[str, object]) -> list[str]:
    """The run's settings as a definition list (nothing when there are none)."""
    if not settings:
        return []
    items = "".join(f"<dt>{_text(str(name))}</dt><dd>{_text(_value(value))}</dd>" for name, value in settings.items())
    return [f'<dl class="settings">{items}</dl>']


def _row(rank: int, entry: GalleryEntry, out_dir: Path) -> str:
    href = _href(entry.figure, out_dir)
    name = _text(entry.name)
    known = _has_loss(entry.loss)
    loss_text = f"{float(entry.loss):.4f}" if known else "n/a"  # type: ignore[arg-type]
    loss_attr = _js_number(float(entry.loss)) if known else ""  # type: ignore[arg-type]
    note = _text(entry.note) if entry.note else ""
    return (
        f'<tr data-loss="{loss_attr}" data-name="{name}" data-rank="{rank}">'
        f'<td class="rank">{rank}</td>'
        f'<td><a href="{href}"><img src="{href}" alt="{name}" loading="lazy"></a></td>'
        f'<td class="name"><a href="{href}">{name}</a></td>'
        f'<td class="loss">{loss_text}</td>'
        f'<td class="note">{note}</td></tr>'
    )


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { padding: 0.3em 0.8em; border-bottom: 1px solid #ddd; text-align: left; vertical-align: middle; }
td.loss, td.rank { text-align: right; font-variant-numeric: tabular-nums; }
td.name { word-break: break-all; max-width: 24em; }
img { width: 480px; max-width: 60vw; height: auto; display: block; }
button { margin-right: 0.4em; }
dl.settings { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; margin: 0 0 1em 0; }
dl.settings dt { font-weight: bold; }
dl.settings dd { margin: 0; word-break: break-all; }
"""

# Sorts the rows in place: by loss (rows without one last) or by name; no network, no library.
_SCRIPT = """
function sortRows(key) {
  var body = document.getElementById("rows");
  var rows = Array.prototype.slice.call(body.rows);
  function loss(r) { return r.dataset.loss === "" ? null : parseFloat(r.dataset.loss); }
  rows.sort(function (a, b) {
    if (key === "name") { return a.dataset.name.localeCompare(b.dataset.name); }
    var x = loss(a), y = loss(b);
    if (x === null || y === null) { return (x === null) - (y === null); }
    return key === "worst" ? y - x : x - y;
  });
  rows.forEach(function (r) { body.appendChild(r); });
}
"""


def _page(title: str, rows: list[str], count: int, settings: Mapping[str, object]) -> str:
    title_html = _text(title)
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        GENERATOR_META,
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{title_html}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{title_html}</h1>",
        *_settings(settings),
        f"<p>{count} figure{'' if count == 1 else 's'}, worst loss first. Sort: "
        '<button type="button" onclick="sortRows(\'worst\')">worst loss first</button>'
        '<button type="button" onclick="sortRows(\'best\')">best loss first</button>'
        '<button type="button" onclick="sortRows(\'name\')">by name</button></p>',
        "<table>",
        "<thead><tr><th>rank</th><th>figure</th><th>image</th><th>loss</th><th>note</th></tr></thead>",
        '<tbody id="rows">',
        *rows,
        "</tbody>",
        "</table>",
        f"<script>{_SCRIPT}</script>",
        "</body>",
        "</html>",
        "",
    ])
