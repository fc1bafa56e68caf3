"""The package's floors: modules import downwards only, and no module imports one that imports it back.

Floors, bottom up: errors, _version and the compiled kernels; labels; pair; io (readers, writers,
geometry, the formats registry); everything else (report writers and exports, metrics,
transforms, segment, cohort, remote, cli). The import graph is read from the source with `ast`,
so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import medpanoptic

PACKAGE = Path(medpanoptic.__file__).resolve().parent
FLOORS = (
    ("base", ("medpanoptic._version", "medpanoptic._lazy", "medpanoptic.errors", "medpanoptic._kernels")),
    ("labels", ("medpanoptic.labels",)),
    ("pair", ("medpanoptic.pair",)),
    ("io", ("medpanoptic.io",)),
)
"""Floors below the top one, each the modules named or inside the packages named; any other module is on top."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def floor(module: str) -> int:
    """0 for the lowest floor; len(FLOORS) for the top (the package itself, with its public names, is there)."""
    for level, (_, members) in enumerate(FLOORS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return level
    return len(FLOORS)


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The package modules an import statement loads (a name imported from a module is that module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "medpanoptic"]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        where = ".".join(base + ([node.module] if node.module else []))
    elif (node.module or "").split(".")[0] == "medpanoptic":
        where = node.module
    else:
        return []
    return [f"{where}.{a.name}" if f"{where}.{a.name}" in MODULES else where for a in node.names]


class _Imports(ast.NodeVisitor):
    """Every package import of one module, split into those run at import time and those inside functions."""

    def __init__(self, module: str, is_package: bool = False):
        self.module, self.is_package, self.depth = module, is_package, 0
        self.at_import: set[str] = set()
        self.in_functions: set[str] = set()

    def visit_FunctionDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node):
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return  # for type checkers only: never run
        self.generic_visit(node)

    def visit_Import(self, node):
        targets = _targets(self.module, self.is_package, node)
        (self.in_functions if self.depth else self.at_import).update(t for t in targets if t != self.module)

    visit_ImportFrom = visit_Import


def import_graph(modules: dict[str, Path] = MODULES) -> dict[str, _Imports]:
    graph = {}
    for name, path in modules.items():
        visitor = _Imports(name, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        graph[name] = visitor
    return graph


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import loop, each once, as the modules along it (depth-first search over the edges)."""
    found, seen = [], set()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                loop = path[path.index(nxt):]
                key = frozenset(loop)
                if key not in seen:
                    seen.add(key)
                    found.append(loop + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def upward_imports(graph: dict[str, _Imports]) -> list[str]:
    """'a -> b (where)' for every import from a lower floor to a higher one, at import time or in a function."""
    bad = []
    for name, imports in sorted(graph.items()):
        for where, targets in (("at import", imports.at_import), ("in a function", imports.in_functions)):
            for target in sorted(targets):
                if floor(target) > floor(name):
                    bad.append(f"{name} -> {target} ({where})")
    return bad


GRAPH = import_graph()


def test_the_graph_sees_the_package():
    assert {"medpanoptic.pair", "medpanoptic.io.formats", "medpanoptic.segment", "medpanoptic.cli"} <= set(GRAPH)
    assert "medpanoptic.io.segments" in GRAPH["medpanoptic.io.labelmap"].at_import
    assert "medpanoptic.io.dicom_seg" in GRAPH["medpanoptic.io.formats"].in_functions


def test_no_module_imports_one_that_imports_it_back():
    assert cycles({name: imports.at_import for name, imports in GRAPH.items()}) == []


def test_lower_floors_import_no_higher_one():
    assert upward_imports(GRAPH) == []


def test_the_checks_can_fail():
    """A loop through a third module and an upward import in a function body are both caught."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    visitor = _Imports("medpanoptic.io.lower")
    visitor.visit(ast.parse("from .atomic import atomic_paths\n\ndef f():\n    from ..segment import PanopticResult\n"))
    assert visitor.at_import == {"medpanoptic.io.atomic"} and visitor.in_functions == {"medpanoptic.segment"}
    assert upward_imports({"medpanoptic.io.lower": visitor}) == ["medpanoptic.io.lower -> medpanoptic.segment (in a function)"]


@pytest.mark.parametrize("module, higher", [("medpanoptic.labels", "medpanoptic.io.atomic"),
                                            ("medpanoptic.pair", "medpanoptic.io.geometry"),
                                            ("medpanoptic.io.dicom_seg", "medpanoptic"),
                                            ("medpanoptic.io.inputs", "medpanoptic.remote")])
def test_the_floors_order_the_modules_that_once_climbed(module, higher):
    assert floor(higher) > floor(module)
