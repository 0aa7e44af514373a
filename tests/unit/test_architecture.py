"""The shape of the house, checked by walking every import of the package (module-level and
inside functions), not by grepping for a few names.  docs/architecture.md explains it."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "cloudvac"

#: What each part may import besides itself (``cloudvac`` itself, for ``__version__``, is
#: always allowed).  Parts are the sub-packages and the top-level modules.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "model": frozenset(),
    "logs": frozenset({"model"}),
    # one line per stored event, for `cloudvac events`, `logs` and the demo: pure, on the
    # vocabulary only, so every command can print events without the store's imports
    "events": frozenset({"model"}),
    "config": frozenset({"model"}),
    "auth": frozenset({"model", "config"}),
    "store": frozenset({"model"}),
    "clouds": frozenset({"model", "config", "auth"}),
    "context": frozenset({"model", "config", "auth"}),
    "status": frozenset({"model", "config", "store"}),
    "web": frozenset({"model", "config", "auth", "store", "status"}),
    "engine": frozenset({"model", "config", "clouds", "store", "context"}),
    "simulate": frozenset({"model", "config", "clouds", "store", "engine"}),
    "service": frozenset({"model", "config", "auth", "clouds", "store", "context", "web",
                          "engine"}),
    "demo": frozenset({"model", "config", "store", "engine", "status", "service", "events"}),
    # clouds: `cloudvac sim-cloud` serves the simulated cloud itself (clouds/simapi.py)
    "cli": frozenset({"model", "config", "auth", "store", "context", "engine", "status",
                      "service", "logs", "web", "simulate", "demo", "events", "clouds"}),
    "__main__": frozenset({"cli"}),
}
#: The planner and its pure helpers: no I/O, only the vocabulary, the configuration and
#: each other.
PURE = frozenset({"cloudvac.engine.planner", "cloudvac.engine.rules",
                  "cloudvac.engine.removal", "cloudvac.engine.lifecycle",
                  "cloudvac.engine.reconcile", "cloudvac.engine.decide"})
PURE_MAY_IMPORT = frozenset({"model", "config"})


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every cloudvac module ``module`` imports, wherever the import statement is."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "cloudvac")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level
                                           + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "cloudvac":
                continue
            yield base
            for alias in node.names:  # ``from cloudvac.x import y`` may import module x.y
                if is_module(f"{base}.{alias.name}"):
                    yield f"{base}.{alias.name}"


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


@cache
def graph() -> dict[str, frozenset[str]]:
    edges: dict[str, frozenset[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts:
            continue  # alembic loads these by path; they import nothing of cloudvac
        name = module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        found = set(imported(tree, name, path.name == "__init__.py")) - {name}
        edges[name] = frozenset(found)
    return edges


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "cloudvac"


def test_every_part_is_listed() -> None:
    parts = {part(m) for m in graph()} - {"cloudvac"}
    assert parts == set(MAY_IMPORT), "add the new part to MAY_IMPORT (and the docs)"


@pytest.mark.parametrize("module", sorted(graph()))
def test_imports_follow_the_layers(module: str) -> None:
    own = part(module)
    allowed = PURE_MAY_IMPORT if module in PURE else MAY_IMPORT.get(own, frozenset())
    wrong = sorted(target for target in graph()[module]
                   if part(target) not in {own, "cloudvac"} and part(target) not in allowed)
    if module in PURE:
        wrong += sorted(t for t in graph()[module] if part(t) == own and t not in PURE)
    assert wrong == [], f"{module} may not import {wrong}"


def cycles(edges: dict[str, frozenset[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, frozenset()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_between_modules() -> None:
    assert cycles(graph()) == []


def test_no_import_circle_between_parts() -> None:
    parts: dict[str, set[str]] = {}
    for module, targets in graph().items():
        parts.setdefault(part(module), set()).update(
            part(t) for t in targets if part(t) != part(module))
    assert cycles({k: frozenset(v) for k, v in parts.items()}) == []


def test_the_walk_sees_imports_inside_functions() -> None:
    """A self-check: the cli's commands import the demo and the service only inside
    functions (so that ``cloudvac --help`` starts fast), and the walk still sees them."""
    tree = ast.parse((PACKAGE / "cli" / "commands.py").read_text())
    statements: list[ast.stmt] = [n for n in tree.body
                                  if isinstance(n, ast.Import | ast.ImportFrom)]
    top = set(imported(ast.Module(body=statements, type_ignores=[]), "cloudvac.cli.commands",
                       False))
    assert "cloudvac.cli.base" in top
    for nested in ("cloudvac.demo", "cloudvac.service"):
        assert nested not in top
        assert nested in graph()["cloudvac.cli.commands"]
    assert "cloudvac.clouds.openstack" in graph()["cloudvac.clouds.factory"]


def test_a_forbidden_import_is_caught(tmp_path: Path) -> None:
    """The checks can fail: an engine import in the store and a circle are found."""
    edges = dict(graph())
    edges["cloudvac.store.store"] = edges["cloudvac.store.store"] | {"cloudvac.engine.cycle"}
    assert cycles(edges) != []
    assert part("cloudvac.engine.cycle") not in MAY_IMPORT["store"]


FUNCTION_LINES = 60
#: Modules are kept under ~400 lines; this is the ceiling that fails the build.
MODULE_LINES = 450


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_function_over_sixty_lines() -> None:
    long = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} "
                                f"({lines} lines)")
    assert long == []


def test_no_module_over_the_ceiling() -> None:
    big = [f"{p.relative_to(PACKAGE)} ({n} lines)" for p in sources()
           if (n := len(p.read_text().splitlines())) > MODULE_LINES]
    assert big == []
