"""No import cycle inside ``gradleak``, function-level imports included.

Every ``import``/``from ... import`` statement that runs (top level or inside functions; not the type checker's
``if TYPE_CHECKING:`` blocks) is an edge to the ``gradleak`` modules it loads: the modules it names and the packages
above them, whose ``__init__`` Python runs first. An edge from a module to a package that contains it is left out
(that package is already initialising). The graph must have no strongly connected component of more than one
module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "gradleak").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The ``gradleak`` modules an import statement loads (``from a import b`` loads ``a`` and, if it is a module,
    ``a.b``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join([*base, node.module] if node.module else base)
        else:
            prefix = node.module or ""
        names = [prefix, *(f"{prefix}.{alias.name}" for alias in node.names)]
    loaded = set()
    for name in names:
        parts = name.split(".")
        loaded |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {n for n in loaded if n in known}


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Import statements outside ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text(), filename=str(path))):
            edges |= _targets(module, path, node, known)
        graph[module] = {t for t in edges if t != module and not module.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_the_checker_finds_a_cycle_hidden_in_a_function() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_function_level_imports_are_edges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "gradleak"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "one.py").write_text("def f():\n    from gradleak import two\n")
    (package / "two.py").write_text("from gradleak.one import f\n")
    monkeypatch.setitem(globals(), "SRC", tmp_path)
    assert cycles(import_graph()) == [["gradleak.one", "gradleak.two"]]


def test_no_import_cycle_in_gradleak() -> None:
    graph = import_graph()
    assert "gradleak.records" in graph and len(graph) > 50
    assert cycles(graph) == []


def test_records_is_a_leaf() -> None:
    """The data contracts import nothing else of gradleak when they run (their annotations name types of other
    packages for the type checker only): every other package may use them."""
    assert import_graph()["gradleak.records"] == set()


def test_parent_packages_and_type_checking_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "gradleak"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from gradleak.sub.leaf import x\n")
    (package / "sub" / "leaf.py").write_text("from gradleak import base\nx = 1\n")
    (package / "base.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                     "    from gradleak.sub.leaf import x\n")
    monkeypatch.setitem(globals(), "SRC", tmp_path)
    assert cycles(import_graph()) == []  # base's import is for the type checker only
    (package / "base.py").write_text("from gradleak.sub.leaf import x\n")  # runs gradleak.sub's __init__ first
    assert cycles(import_graph()) == [["gradleak.base", "gradleak.sub", "gradleak.sub.leaf"]]
