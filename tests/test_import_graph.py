"""The import graph: the packages' ranks run one way, no cycle, and the loading steps import no model class.

Every module of `mae` and `cli` belongs to a package with a rank; a module may import from its own package or
from a package of a lower rank, never from one of the same rank or above (imports inside functions count too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

# The architecture, lowest first (docs/architecture.md draws it).
RANKS: dict[str, int] = {
    "mae.large.core": 0,  # catalog, config, errors, cost: torch-free facts and checks
    "mae.large.utils": 1,
    "mae.large.checkpoints": 2,
    "mae.large.models": 3,
    "mae.large.data": 3,
    "mae.large.evaluate": 4,
    "mae.large.viz": 4,
    "mae.large.train": 5,
    "mae.large.jobs": 6,
    "cli": 7,
}
CORE = ("mae.large.catalog", "mae.large.config", "mae.large.errors", "mae.large.cost")
FACADES = ("mae", "mae.large")  # version and lazy public names (PEP 562), resolved on use


def package_of(module: str) -> str:
    """The package whose rank a module has."""
    if module in CORE:
        return "mae.large.core"
    if module == "cli" or module.startswith("cli."):
        return "cli"
    parts = module.split(".")
    return ".".join(parts[:3])


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
    for facade in FACADES:
        edges[facade] = set()
    return edges


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """Every import that runs sideways or up the rank table, as `importer -> imported (rank a -> rank b)`."""
    bad = []
    for module, targets in sorted(edges.items()):
        if module in FACADES:
            continue
        here = package_of(module)
        for target in sorted(targets):
            if target in FACADES:
                continue
            there = package_of(target)
            if there != here and RANKS[there] >= RANKS[here]:
                bad.append(f"{module} -> {target} ({here} {RANKS[here]} -> {there} {RANKS[there]})")
    return bad


def test_every_module_has_a_rank() -> None:
    unranked = [m for m in _graph() if m not in FACADES and package_of(m) not in RANKS]
    assert unranked == []


def test_imports_run_down_the_rank_table() -> None:
    assert upward_imports(_graph()) == []


@pytest.mark.parametrize("importer, imported", [
    ("mae.large.models.mae", "mae.large.jobs.forward"),  # up
    ("mae.large.data.images", "mae.large.models.masks"),  # sideways: the same rank, another package
    ("mae.large.catalog", "mae.large.utils.device"),  # the core imports nothing of the packages
])
def test_one_upward_import_is_caught(importer: str, imported: str) -> None:
    edges = _graph()
    edges[importer] = edges[importer] | {imported}
    assert [line for line in upward_imports(edges) if line.startswith(f"{importer} -> {imported} ")]


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
    for module in ("mae.large.checkpoints.read", "mae.large.checkpoints.classify", "mae.large.checkpoints.load",
                   "mae.large.checkpoints.keys", "mae.large.checkpoints.save"):
        assert not edges[module] & {"mae.large.models.mae", "mae.large.models.vit"}, module


def test_the_library_never_imports_the_cli() -> None:
    edges = _graph()
    assert all(not any(t.startswith("cli") for t in targets) for m, targets in edges.items() if m.startswith("mae"))
