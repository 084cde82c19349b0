"""The package's import graph: no cycle, and the web side apart from the notifier.

The graph is read from the source with ``ast``: a module imports what its top-level
statements import (also inside ``if``/``try`` at the top, but not under ``if TYPE_CHECKING``),
and importing ``a.b.c`` runs ``a`` and ``a.b`` too. A second, stricter graph also counts the
imports inside functions, for the modules that must not lean on a late import to hide a
circle (the web side, the notifier and the links both use).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import commgraph

ROOT = Path(commgraph.__file__).parent
Graph = Mapping[str, frozenset[str]]


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ["commgraph", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level(body: Iterable[ast.stmt]) -> Iterable[ast.stmt]:
    """The statements that run when the module is imported."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _top_level(node.body)
            yield from _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _top_level(block)


def _everywhere(node: ast.AST) -> Iterable[ast.AST]:
    """Every statement that may run some time (function bodies too), ``TYPE_CHECKING`` aside."""
    for child in ast.iter_child_nodes(node):
        yield child
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _everywhere(other)
        else:
            yield from _everywhere(child)


def _imported(name: str, path: Path, *, lazy: bool) -> frozenset[str]:
    """The commgraph modules importing ``name`` runs (its own statements only); with
    ``lazy``, also those its functions import when called."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    statements = _everywhere(tree) if lazy else _top_level(tree.body)
    dotted: set[str] = set()
    for node in statements:
        if isinstance(node, ast.Import):
            dotted.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            dotted.add(module)
            dotted.update(f"{module}.{alias.name}" for alias in node.names)
    runs = set()
    for text in dotted:
        parts = text.split(".")
        for end in range(1, len(parts) + 1):
            candidate = ".".join(parts[:end])
            if candidate in MODULES and candidate != name:
                runs.add(candidate)
    return frozenset(runs)


def import_graph(*, lazy: bool = False) -> Graph:
    return {name: _imported(name, path, lazy=lazy) for name, path in MODULES.items()}


def cycles(graph: Graph, among: Iterable[str] | None = None) -> list[list[str]]:
    """The import circles of ``graph`` restricted to ``among`` (Tarjan's strongly connected
    components of more than one module, or a module importing itself)."""
    keep = set(graph if among is None else among)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v] & keep:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(keep):
        if v not in index:
            visit(v)
    return found


def _web_side() -> list[str]:
    return [
        m
        for m in MODULES
        if m.startswith("commgraph.web") or m in {"commgraph.notify", "commgraph.links"}
    ]


def test_the_graph_is_read_from_the_source() -> None:
    graph = import_graph()
    assert "commgraph.engine" in graph["commgraph.daemon"]
    assert "commgraph.web" in graph["commgraph.web.api"]  # the package runs first
    # A circle is found where there is one.
    assert cycles({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"})}) == [
        ["a", "b", "c"]
    ]
    assert cycles({"a": frozenset({"b"}), "b": frozenset()}) == []


def test_no_module_level_import_cycle_in_the_package() -> None:
    assert cycles(import_graph()) == []


def test_the_web_side_has_no_circle_even_through_late_imports() -> None:
    assert cycles(import_graph(lazy=True), among=_web_side()) == []


def test_the_notifier_and_the_links_do_not_import_the_web_side() -> None:
    graph = import_graph(lazy=True)
    for name in ("commgraph.notify", "commgraph.links"):
        assert not {m for m in graph[name] if m.startswith("commgraph.web")}, name


def test_every_module_imports_on_its_own() -> None:
    """Each module imported first, in a fresh set of modules: a circle that the order of
    imports hides in the suite fails here."""
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'commgraph']:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {exc!r}')\n"
        "print('\\n'.join(failed))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *sorted(MODULES)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
