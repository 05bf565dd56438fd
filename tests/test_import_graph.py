"""The import graph: layers run downward, no cycle, and the loading steps import no model class."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO


def _graph() -> dict[str, set[str]]:
    modules: dict[str, Path] = {}
    for root in ("mae", "cli"):
        for path in (REPO / root).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):  # imports inside functions count too
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join([*base, *([node.module] if node.module else [])])
                found = [target, *(f"{target}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            edges[name] |= {f for f in found if f in modules and f != name}
    edges["mae.large"] = set()  # the package's lazy re-exports (PEP 562) are resolved on use
    return edges


def test_no_import_cycle() -> None:
    edges = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif not state.get(nxt):
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if not state.get(node):
            visit(node, [])
    assert cycles == []


def test_reading_and_loading_import_no_model_class() -> None:
    edges = _graph()
    for module in ("mae.large.checkpoints.read", "mae.large.checkpoints.load", "mae.large.checkpoints.keys"):
        assert not edges[module] & {"mae.large.models.mae", "mae.large.models.vit"}, module


def test_the_library_never_imports_the_cli() -> None:
    edges = _graph()
    assert all(not any(t.startswith("cli") for t in targets) for m, targets in edges.items() if m.startswith("mae"))
