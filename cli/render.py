"""Rich renderings shared by the commands. Pure functions: data in, renderable out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.markup import escape as _escape_markup
from rich.panel import Panel
from rich.table import Table

from mae.large.catalog import POOLING_WORDS

if TYPE_CHECKING:  # pragma: no cover
    from mae.large.jobs.inspect import CheckpointSummary, TensorGroup


def escape(value: object) -> str:
    """Text for rich: markup escaped, and file names that are not valid UTF-8 shown with backslash
    escapes (a surrogate-escaped name would otherwise make the terminal write fail)."""
    text = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _escape_markup(text)


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return f"{n} B"


def summary_panel(s: CheckpointSummary) -> Panel:
    c = s.classification
    kind_style = {"full": "green", "encoder-only": "yellow", "fine-tuned": "cyan"}.get(c.kind, "red")
    expected = {"full": c.num_expected, "encoder-only": c.num_encoder}.get(c.kind)
    if c.kind == "fine-tuned":
        count = f"{c.num_tensors} (the encoder without its final norm, fc_norm and head)"
    else:
        count = f"{c.num_tensors}" + (f" / {expected} expected" if expected else
                                      f" (full: {c.num_expected}, encoder-only: {c.num_encoder})")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows: list[tuple[str, str]] = [
        ("file", escape(str(s.path))),
        ("size", f"{human_bytes(s.size_bytes)} ({s.size_bytes:,} bytes)"),
        ("layout", f"{s.layout}: {escape(s.layout_words)}"),
        ("format", f"{s.source_format} ({s.container})"),
        ("kind", f"[{kind_style}]{c.kind}[/]"),
        ("tensors", count),
        *([("classes", str(c.num_classes)), ("pooling", escape(POOLING_WORDS.get(c.pooling or "", str(c.pooling))))]
          if c.kind == "fine-tuned" else []),
        ("parameters", f"{s.num_parameters:,}"),
        ("dtypes", ", ".join(f"{k} x{v}" for k, v in s.dtypes.items()) or "-"),
        ("decoder predicts", escape(s.target)),
        ("weights_only", "yes: plain tensors, safe to load" if s.weights_only else
         "[red]no[/]: the file asks for objects beyond tensors (read only because of --trust-checkpoint)"),
    ]
    bad = s.nonfinite
    rows.append(("values", f"[red]{len(bad)} tensors hold NaN or infinite values[/] (damaged)" if bad
                 else "all finite"))
    if s.extras:
        rows.append(("other entries", escape(", ".join(s.extras))))
    if len(s.files) > 1 or (s.files and s.files[0] != s.path):
        rows.append(("files", escape(", ".join(f.name for f in s.files))))
    for fix in s.fixes:
        rows.append(("read", escape(fix)))
    for note in s.notes:
        rows.append(("[yellow]note[/]", escape(note)))
    if s.config_problem:
        rows.append(("[red]config.json[/]", escape(s.config_problem)))
    if s.convert_hint:
        rows.append(("tip", f"a pickle; safetensors loads faster and runs no code: {escape(s.convert_hint)}"))
    for label, value in rows:
        grid.add_row(label, value)
    return Panel(grid, title="checkpoint", expand=False)


def tensor_table(groups: list[TensorGroup] | list[Any], folded: bool) -> Table:
    table = Table(title="tensors" + (" (blocks folded; --all lists every key)" if folded else ""), show_lines=False)
    table.add_column("name", overflow="fold")
    table.add_column("shape", no_wrap=True)
    table.add_column("dtype")
    if folded:
        table.add_column("count", justify="right")
    table.add_column("numel", justify="right")
    table.add_column("part")
    for g in groups:
        style = {"encoder": "", "decoder": "cyan", "classifier": "magenta", "other": "red"}.get(g.part, "")
        cells = [escape(g.name), str(list(g.shape)), g.dtype]
        if folded:
            cells.append(str(g.count))
        cells += [f"{g.numel:,}", f"[{style}]{g.part}[/]" if style else g.part]
        table.add_row(*cells)
    return table


def verdict_panel(s: CheckpointSummary) -> Panel:
    c = s.classification
    lines = [escape(s.verdict())]
    for t in s.nonfinite[:10]:
        lines.append(f"  non-finite  {escape(t.name)}: {t.nonfinite:,} of {t.numel:,} values")
    if len(s.nonfinite) > 10:
        lines.append(f"  ... and {len(s.nonfinite) - 10} more non-finite tensors (--json lists them all)")
    if not c.loadable:
        for m in c.mismatched[:10]:
            lines.append(f"  shape  {escape(str(m))}")
        for k in c.missing[:10]:
            lines.append(f"  missing  {escape(k)}")
        for k in c.unexpected[:10]:
            lines.append(f"  unexpected  {escape(k)}")
        hidden = max(0, len(c.mismatched) - 10) + max(0, len(c.missing) - 10) + max(0, len(c.unexpected) - 10)
        if hidden:
            lines.append(f"  ... and {hidden} more (--json lists them all)")
    colours = {"full": "green", "encoder-only": "yellow", "fine-tuned": "cyan"}
    style = "red" if s.damaged or s.config_problem else colours.get(c.kind, "red")
    return Panel("\n".join(lines), title=f"verdict against {s.model_name}", border_style=style, expand=False)
