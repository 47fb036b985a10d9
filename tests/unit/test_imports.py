"""The import direction, read from the source with ``ast`` (nothing is imported).

``aiplane.api`` and ``aiplane.policies`` are pure: no I/O, no event loop, no runtime.
The gateway depends on a Discovery, never on a runtime. No module imports back into
a module that imports it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "aiplane"
# Being written by other engineers; not part of the committed graph yet.
EXCLUDED = (PACKAGE / "dev",)

IO_MODULES = {"asyncio", "aiohttp", "sqlite3", "subprocess", "socket", "kubernetes_asyncio", "kopf"}
OUTER_LAYERS = {"aiplane.runtime", "aiplane.gateway", "aiplane.cli"}


@dataclass(frozen=True)
class Import:
    target: str  # the absolute dotted name as written (``from a import b`` gives a.b and a)
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_in(code: str, module: str, *, is_package: bool = False) -> list[Import]:
    """Every import executed at run time (``if TYPE_CHECKING:`` blocks are skipped)."""
    tree = ast.parse(code)
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[Import] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append(Import(base, node.lineno))
            found.extend(Import(f"{base}.{alias.name}", node.lineno) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def imports_of(path: Path) -> list[Import]:
    code = path.read_text(encoding="utf-8")
    return imports_in(code, module_name(path), is_package=path.name == "__init__.py")


def sources(*packages: str) -> list[Path]:
    roots = [ROOT.joinpath(*p.split(".")) for p in packages] or [PACKAGE]
    files = sorted(f for root in roots for f in root.rglob("*.py"))
    return [f for f in files if not any(f.is_relative_to(ex) for ex in EXCLUDED)]


def under(name: str, prefixes: set[str]) -> str | None:
    return next((p for p in prefixes if name == p or name.startswith(p + ".")), None)


def test_the_scan_finds_the_package() -> None:
    names = {module_name(f) for f in sources()}
    assert {"aiplane.api.loader", "aiplane.policies.routing.strategies", "aiplane.gateway.app"} <= names
    assert not any(n.startswith("aiplane.dev.") or n == "aiplane.dev" for n in names)
    # The scanner sees what it must forbid: the gateway imports aiohttp, the store sqlite3.
    assert "aiohttp" in {i.target for i in imports_of(PACKAGE / "gateway" / "app.py")}
    assert "sqlite3" in {i.target for i in imports_of(PACKAGE / "runtime" / "local" / "store.py")}


def test_the_scanner_resolves_relative_imports_and_skips_type_checking() -> None:
    code = (
        "import os.path\n"
        "from .base import X\n"
        "from .. import autoscaling\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import sqlite3\n"
        "def later():\n"
        "    import asyncio\n"
    )
    targets = {i.target for i in imports_in(code, "aiplane.policies.routing.strategies")}
    assert targets == {
        "os.path",
        "aiplane.policies.routing.base",
        "aiplane.policies.routing.base.X",
        "aiplane.policies",
        "aiplane.policies.autoscaling",
        "typing",
        "typing.TYPE_CHECKING",
        "asyncio",  # a function-level import still runs: it counts
    }
    in_init = {i.target for i in imports_in("from .base import X\n", "aiplane.gateway", is_package=True)}
    assert "aiplane.gateway.base" in in_init


@pytest.mark.parametrize("path", sources("aiplane.api", "aiplane.policies"), ids=module_name)
def test_pure_packages_import_no_io_and_no_outer_layer(path: Path) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{imp.line} imports {imp.target}"
        for imp in imports_of(path)
        if imp.target.split(".")[0] in IO_MODULES or under(imp.target, OUTER_LAYERS)
    ]
    assert bad == []


@pytest.mark.parametrize("path", sources("aiplane.policies"), ids=module_name)
def test_policies_read_no_clock_and_no_other_aiplane_package(path: Path) -> None:
    targets = {i.target for i in imports_of(path)}
    assert not targets & {"time", "datetime", "random", "os", "threading"}
    assert {t for t in targets if t.startswith("aiplane.") and not t.startswith("aiplane.policies")} == set()


@pytest.mark.parametrize("path", sources("aiplane.api"), ids=module_name)
def test_api_imports_nothing_of_aiplane_but_errors(path: Path) -> None:
    outside = {
        i.target
        for i in imports_of(path)
        if i.target.startswith("aiplane.") and not under(i.target, {"aiplane.api", "aiplane.errors"})
    }
    assert outside == set()


@pytest.mark.parametrize("path", sources("aiplane.gateway"), ids=module_name)
def test_gateway_does_not_import_a_runtime_or_the_cli(path: Path) -> None:
    assert [i.target for i in imports_of(path) if under(i.target, {"aiplane.runtime", "aiplane.cli"})] == []


def import_graph() -> dict[str, set[str]]:
    """Module -> the aiplane modules it imports (a name resolves to the longest known module)."""
    files = sources()
    modules = {module_name(f) for f in files}
    graph: dict[str, set[str]] = {}
    for f in files:
        me = module_name(f)
        edges: set[str] = set()
        for imp in imports_of(f):
            parts = imp.target.split(".")
            for n in range(len(parts), 0, -1):
                candidate = ".".join(parts[:n])
                if candidate in modules:
                    if candidate != me:
                        edges.add(candidate)
                    break
        graph[me] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path (first node repeated at the end), or None: iterative DFS."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    for start in sorted(graph):
        if color[start] != white:
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        path = [start]
        color[start] = grey
        while stack:
            node, todo = stack[-1]
            if not todo:
                color[node] = black
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop()
            if color.get(nxt, black) == grey:
                return [*path[path.index(nxt) :], nxt]
            if color.get(nxt) == white:
                color[nxt] = grey
                path.append(nxt)
                stack.append((nxt, sorted(graph[nxt])))
    return None


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_among_aiplane_modules() -> None:
    graph = import_graph()
    assert "aiplane.api.model" in graph["aiplane.engines.base"]
    assert "aiplane.gateway.discovery" in graph["aiplane.runtime.local.discovery"]
    assert find_cycle(graph) is None
