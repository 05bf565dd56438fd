"""The HTML gallery (mae.large.viz.gallery): a page that parses, links that resolve, names escaped, worst first,
and never a file the tool did not write overwritten."""

from __future__ import annotations

import os
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlsplit

import pytest

from mae.large.errors import MAEError
from mae.large.viz.gallery import GENERATOR_META, GalleryEntry, is_our_index, write_gallery

VOID = {"meta", "img", "br", "input", "link", "hr"}
# File names a user may well have: markup characters, quotes, spaces, non-Latin scripts, a percent sign.
ODD_NAMES = ['a <b> & "c".png', "it's 100% fine #1?.png", "猫 の 写真.png", "naïve café.png", "plain.png"]


class Page(HTMLParser):
    """Parses the whole page, checking every non-void element is closed in order; collects what the tests read."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[dict[str, str | None]] = []
        self.cells: list[list[str]] = []
        self.in_cell = False
        self.data: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "tr" and "data-loss" in dict(attrs):
            self.rows.append(dict(attrs))
            self.cells.append([])
        if tag == "td":
            self.in_cell, self.data = True, []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()
        if tag == "td":
            self.in_cell = False
            self.cells[-1].append("".join(self.data))

    def handle_data(self, data: str) -> None:
        if self.in_cell:
            self.data.append(data)


def parse(index: Path) -> Page:
    page = Page()
    page.feed(index.read_text(encoding="utf-8"))
    page.close()
    assert page.stack == [], f"unclosed elements: {page.stack}"
    return page


def links(page: Page) -> list[str]:
    return [attrs[key] for _, attrs in page.tags for key in ("href", "src") if attrs.get(key) is not None]


def figures(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = folder / name
        path.write_bytes(b"\x89PNG fake")
        paths.append(path)
    return paths


def test_page_parses_and_every_link_resolves(tmp_path: Path) -> None:
    out = tmp_path / "out"
    paths = figures(out, ODD_NAMES) + figures(out / "sub dir", ["deep.png"]) + figures(tmp_path / "elsewhere", ["x.png"])
    entries = [GalleryEntry(p.name, 0.1 * i, p, note="random decoder" if i == 0 else None) for i, p in enumerate(paths)]
    index = write_gallery(out, entries, title="run <1> & more")
    assert index == out / "index.html"
    page = parse(index)
    found = links(page)
    assert len(found) == 3 * len(paths)  # per figure: the thumbnail, its link and the name's link
    for url in found:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and not url.startswith("/")  # relative, no network
        target = Path(os.fsdecode(os.path.join(os.fsencode(out), unquote_to_bytes(parts.path))))
        assert target.is_file(), url
    assert {Path(os.path.normpath(out / os.fsdecode(unquote_to_bytes(u)))) for u in found} == set(paths)
    # self-contained: no external script, style sheet or image
    assert all(attrs.get("src") is None for tag, attrs in page.tags if tag == "script")
    assert not any(tag == "link" for tag, _ in page.tags)
    assert ("meta", {"name": "generator", "content": "mae-large"}) in page.tags
    assert all(attrs.get("loading") == "lazy" for tag, attrs in page.tags if tag == "img")
    assert _title(index) == "run <1> & more"


def _title(index: Path) -> str:
    class Title(HTMLParser):
        text = ""
        inside = False

        def handle_starttag(self, tag, attrs):
            self.inside = tag == "title"

        def handle_endtag(self, tag):
            self.inside = False

        def handle_data(self, data):
            if self.inside:
                self.text += data

    parser = Title()
    parser.feed(index.read_text(encoding="utf-8"))
    return parser.text


def test_names_are_escaped_and_links_quoted(tmp_path: Path) -> None:
    paths = figures(tmp_path, ODD_NAMES)
    index = write_gallery(tmp_path, [(p.name, 1.0, p) for p in paths])
    raw = index.read_text(encoding="utf-8")
    page = parse(index)
    for name in ODD_NAMES:
        assert name in [cells[2] for cells in page.cells]  # shown exactly, after unescaping
    assert [row["data-name"] for row in page.rows] == sorted(ODD_NAMES)  # equal losses: by name
    assert "<b>" not in raw and 'a <b>' not in raw and "&amp;" in raw and "&lt;b&gt;" in raw
    for url in links(page):
        assert url.isascii() and " " not in url and '"' not in url and "<" not in url and "#" not in url and "?" not in url
    assert "a%20%3Cb%3E%20%26%20%22c%22.png" in links(page)
    assert "%E7%8C%AB%20%E3%81%AE%20%E5%86%99%E7%9C%9F.png" in links(page)
    assert "it%27s%20100%25%20fine%20%231%3F.png" in links(page)


def test_a_file_name_that_is_not_utf8_still_links(tmp_path: Path) -> None:
    raw_name = b"bad\xff name.png"
    try:
        (tmp_path / os.fsdecode(raw_name)).write_bytes(b"png")
    except (OSError, UnicodeError):
        pytest.skip("this file system does not take a name that is not UTF-8")
    name = os.fsdecode(raw_name)
    index = write_gallery(tmp_path, [(name, 0.5, tmp_path / name)])
    page = parse(index)  # the page itself is valid UTF-8
    (url,) = set(links(page))
    assert unquote_to_bytes(url) == raw_name
    assert page.cells[0][2] == "bad\\xff name.png"


def test_default_order_is_worst_loss_first(tmp_path: Path) -> None:
    losses = {"a.png": 0.2, "b.png": 0.9, "c.png": None, "d.png": 0.5, "e.png": float("nan"), "f.png": 0.05,
              "g.png": float("inf")}
    paths = figures(tmp_path, list(losses))
    index = write_gallery(tmp_path, [(p.name, losses[p.name], p) for p in paths])
    page = parse(index)
    assert [cells[2] for cells in page.cells] == ["g.png", "b.png", "d.png", "a.png", "f.png", "c.png", "e.png"]
    assert [cells[3] for cells in page.cells][1:5] == ["0.9000", "0.5000", "0.2000", "0.0500"]
    # what the inline script sorts by: numbers JavaScript's parseFloat reads (Infinity, not inf), none for no loss
    assert [row["data-loss"] for row in page.rows] == ["Infinity", "0.9", "0.5", "0.2", "0.05", "", ""]
    assert [cells[0] for cells in page.cells] == ["1", "2", "3", "4", "5", "6", "7"]
    assert "sortRows('best')" in index.read_text(encoding="utf-8")  # the other order is one click away


def test_a_foreign_index_is_refused_and_left_alone(tmp_path: Path) -> None:
    (path,) = figures(tmp_path, ["cat.png"])
    index = tmp_path / "index.html"
    foreign = "<html><head><meta name='generator' content='something else'></head><body>mine</body></html>"
    index.write_text(foreign)
    with pytest.raises(MAEError, match="not written by mae-large") as info:
        write_gallery(tmp_path, [("cat.png", 1.0, path)])
    assert info.value.argument == "out_dir"
    assert index.read_text() == foreign
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.png", "index.html"]  # no temporary left


def test_a_linked_or_folder_index_is_refused(tmp_path: Path) -> None:
    (path,) = figures(tmp_path / "a", ["cat.png"])
    ours = write_gallery(tmp_path / "a", [("cat.png", 1.0, path)])
    link = tmp_path / "b" / "index.html"
    link.parent.mkdir()
    link.symlink_to(ours)  # even a link to one of ours: replacing it would replace the user's link
    with pytest.raises(MAEError, match="not written by mae-large"):
        write_gallery(tmp_path / "b", [("cat.png", 1.0, path)])
    assert link.is_symlink()
    (tmp_path / "c" / "index.html").mkdir(parents=True)
    with pytest.raises(MAEError):
        write_gallery(tmp_path / "c", [])


def test_our_index_is_replaced(tmp_path: Path) -> None:
    first, second = figures(tmp_path, ["first.png", "second.png"])
    index = write_gallery(tmp_path, [("first.png", 1.0, first)])
    assert is_our_index(index) and GENERATOR_META in index.read_text(encoding="utf-8")
    write_gallery(tmp_path, [("second.png", 2.0, second)])
    assert [cells[2] for cells in parse(index).cells] == ["second.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.png", "index.html", "second.png"]


def test_a_failing_write_keeps_the_previous_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (path,) = figures(tmp_path, ["cat.png"])
    index = write_gallery(tmp_path, [("cat.png", 1.0, path)])
    before = index.read_bytes()

    def boom(self, *args, **kwargs):
        Path.write_bytes(self, b"<html half")
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", boom)
    with pytest.raises(OSError, match="disk full"):
        write_gallery(tmp_path, [("cat.png", 2.0, path)])
    assert index.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.png", "index.html"]


def test_bad_entries(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="entry 0"):
        write_gallery(tmp_path, [("cat.png", 1.0)])
    with pytest.raises(ValueError, match="entry 1: the loss"):
        write_gallery(tmp_path, [("a.png", 1.0, "a.png"), ("b.png", "high", "b.png")])
    assert list(tmp_path.iterdir()) == []
