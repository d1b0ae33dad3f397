"""No import cycles in rescompile/: the import graph is read from the source with ``ast`` and must be acyclic.

An edge A -> B is any import of B written in A's source, wherever it stands: at module level, inside
a function, under ``if TYPE_CHECKING:`` (a type reference is a dependency too), relative
(``from ..x import y``), ``import a.b``, ``from a import b`` where ``b`` is a submodule (the edge
goes to ``a.b``), and ``importlib.import_module(...)``: a string literal names its module; a
computed name counts as every string in the file that names a rescompile module, and
``f"{__name__}.{x}"`` as every submodule of the package. The edge goes to the module named, not
to its parent packages (whose ``__init__`` runs first but is kept light).

A failure names each cycle as ``a -> b -> a`` with the file and line of every import in it.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import rescompile

ROOT = Path(rescompile.__file__).parent


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: str  # relative to the package's parent folder
    line: int

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def module_files(package_dir: Path) -> dict[str, Path]:
    """Every module of the package at ``package_dir`` by dotted name (a package by its own name)."""
    out = {}
    for f in sorted(package_dir.rglob("*.py")):
        parts = f.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` or its closest enclosing module that exists (``pkg.mod.attr`` -> ``pkg.mod``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _package_of(module: str, modules: dict[str, Path]) -> str:
    return module if modules[module].name == "__init__.py" else module.rpartition(".")[0]


def _dynamic_targets(module: str, call: ast.Call, strings: list[str], modules: dict[str, Path]) -> list[str]:
    """What ``importlib.import_module(...)`` in ``module`` may load."""
    if not call.args:
        return []
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [t for t in [_known(arg.value, modules)] if t]
    if (
        isinstance(arg, ast.JoinedStr)
        and arg.values
        and isinstance(arg.values[0], ast.FormattedValue)
        and isinstance(arg.values[0].value, ast.Name)
        and arg.values[0].value.id == "__name__"
    ):
        package = _package_of(module, modules)
        return [m for m in modules if m.rpartition(".")[0] == package and m != package]
    return [s for s in strings if s in modules]


def _is_import_module(call: ast.Call) -> bool:
    f = call.func
    return (isinstance(f, ast.Attribute) and f.attr == "import_module") or (isinstance(f, ast.Name) and f.id == "import_module")


def module_edges(module: str, modules: dict[str, Path]) -> list[Edge]:
    """Every import of another module of the package written anywhere in ``module``'s source."""
    path = modules[module]
    tree = ast.parse(path.read_text(), str(path))
    shown = "/".join(path.parts[-len(module.split(".")) - (path.name == "__init__.py") :])
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    edges: list[Edge] = []

    def add(target: str | None, line: int) -> None:
        if target is not None and target != module:
            edges.append(Edge(module, target, shown, line))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(_known(alias.name, modules), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package_of(module, modules).split(".")
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in modules else _known(base, modules), node.lineno)
        elif isinstance(node, ast.Call) and _is_import_module(node):
            for target in _dynamic_targets(module, node, strings, modules):
                add(target, node.lineno)
    return edges


def import_graph(package_dir: Path) -> dict[str, list[Edge]]:
    modules = module_files(package_dir)
    return {m: module_edges(m, modules) for m in modules}


def strongly_connected(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """The strongly connected components of more than one module (each sorted), in name order."""
    succ = {m: sorted({e.target for e in edges if e.target in graph}) for m, edges in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan, iterative over successors, recursive over depth (the graph is small)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(components)


def find_cycles(graph: dict[str, list[Edge]]) -> list[list[Edge]]:
    """One shortest cycle (as its edges) per strongly connected component of more than one module."""
    return [_shortest_cycle(graph, set(c), c[0]) for c in strongly_connected(graph)]


def _shortest_cycle(graph: dict[str, list[Edge]], component: set[str], start: str) -> list[Edge]:
    """Breadth-first from ``start`` back to itself inside one component."""
    came: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for e in sorted(graph[v], key=lambda e: (e.target, e.line)):
                if e.target not in component:
                    continue
                if e.target == start:
                    path = [e]
                    while path[0].source != start:
                        path.insert(0, came[path[0].source])
                    return path
                if e.target not in came:
                    came[e.target] = e
                    nxt.append(e.target)
        frontier = nxt
    raise AssertionError(f"{start} is in a cycle but no path returns to it")


def describe(cycle: list[Edge]) -> str:
    return " -> ".join([cycle[0].source] + [f"{e.target} ({e.where()})" for e in cycle])


def test_rescompile_has_no_import_cycles() -> None:
    graph = import_graph(ROOT)
    assert len(graph) > 80 and graph["rescompile.pipeline"], "the graph must see the package"
    lines = []
    for component in strongly_connected(graph):
        cycle = _shortest_cycle(graph, set(component), component[0])
        others = sorted(set(component) - {e.source for e in cycle})
        lines.append("  " + describe(cycle) + (f"\n    (same component: {', '.join(others)})" if others else ""))
    if lines:
        pytest.fail(
            f"{len(lines)} import cycle(s) in rescompile/, each as module -> imported module (file:line of "
            "the import):\n" + "\n".join(lines),
            pytrace=False,
        )


# The layers of docs/architecture.md, bottom (0) to top: a module may import its own layer and the ones below.
LAYERS = {
    "rescompile._version": 0,
    "rescompile.errors": 0,
    "rescompile.io": 0,
    "rescompile.progress": 0,
    "rescompile.readers": 1,
    "rescompile.buildfolder": 1,
    "rescompile.config": 1,
    "rescompile.publish": 1,
    "rescompile.graph": 2,
    "rescompile.engine": 3,
    "rescompile.scale": 3,
    "rescompile.data": 4,
    "rescompile.runtime": 4,
    "rescompile.calibrate": 5,
    "rescompile.quantize": 6,
    "rescompile.models": 7,
    "rescompile.export": 7,
    "rescompile.simplify": 7,
    "rescompile.equalize": 7,
    "rescompile.bias_correction": 7,
    "rescompile.validate": 8,
    "rescompile.report": 9,
    "rescompile.deploy": 10,
    "rescompile.pipeline": 11,
    "rescompile.sweep": 12,
    "rescompile.commands": 13,
    "rescompile.cli": 14,
    "rescompile": 15,
}
# Imports that go up, each named in docs/architecture.md (none may form a cycle). None is left: the layers were
# ranked by what each package imports, and the values two layers share live in the lower one. A new one fails the
# test below; if one is ever admitted, list it here with why, and strike it again when it disappears.
UPWARD: set[tuple[str, str]] = set()


def layer_of(module: str) -> tuple[str, int]:
    """The layer (its package or module in LAYERS) and rank of ``module``."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        if name in LAYERS:
            return name, LAYERS[name]
    raise KeyError(f"{module} is in no layer of LAYERS: add its package there and to docs/architecture.md")


def upward_edges(graph: dict[str, list[Edge]]) -> dict[tuple[str, str], Edge]:
    """Every import of a higher layer, by (importer, imported), with one place it is written."""
    out: dict[tuple[str, str], Edge] = {}
    for source, edges in graph.items():
        low, rank = layer_of(source)
        for e in edges:
            high, target_rank = layer_of(e.target)
            if target_rank > rank and high != low:
                out.setdefault((e.source, e.target), e)
    return out


def test_imports_go_down_the_layers_but_for_the_listed_ones() -> None:
    found = upward_edges(import_graph(ROOT))
    new = [f"  {a} -> {b} ({found[(a, b)].where()})" for a, b in sorted(found.keys() - UPWARD)]
    gone = [f"  {a} -> {b}" for a, b in sorted(UPWARD - found.keys())]
    assert not new, "imports of a higher layer (docs/architecture.md), not in UPWARD:\n" + "\n".join(new)
    assert not gone, "listed in UPWARD but no longer imported: strike them (and from docs/architecture.md):\n" + "\n".join(gone)


def test_the_layer_check_sees_an_upward_import() -> None:
    graph = {
        "rescompile.graph.x": [Edge("rescompile.graph.x", "rescompile.pipeline.y", "rescompile/graph/x.py", 3)],
        "rescompile.pipeline.y": [Edge("rescompile.pipeline.y", "rescompile.graph.x", "rescompile/pipeline/y.py", 1)],
    }
    assert list(upward_edges(graph)) == [("rescompile.graph.x", "rescompile.pipeline.y")]


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return root / "pkg"


def test_every_kind_of_import_is_an_edge(tmp_path: Path) -> None:
    pkg = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "import pkg.b.c\n",
            "pkg/b/__init__.py": "from . import c\n",
            "pkg/b/c.py": "def f():\n    from ..d import thing\n",
            "pkg/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.e import E\n",
            "pkg/e.py": "import importlib\nimportlib.import_module('pkg.f.g')\n",
            "pkg/f/__init__.py": "import importlib\nfor m in ('g',):\n    importlib.import_module(f'{__name__}.{m}')\n",
            "pkg/f/g.py": "from pkg import a\n",
            "pkg/h.py": "import importlib\nPLUGINS = {'x': 'pkg.a'}\ndef load(n):\n    return importlib.import_module(PLUGINS[n])\n",
            "pkg/i.py": "from pkg.d import name_in_d\nimport os.path\n",
        },
    )
    graph = import_graph(pkg)
    targets = {m: sorted({e.target for e in edges}) for m, edges in graph.items()}
    assert targets == {
        "pkg": [],
        "pkg.a": ["pkg.b.c"],
        "pkg.b": ["pkg.b.c"],
        "pkg.b.c": ["pkg.d"],
        "pkg.d": ["pkg.e"],
        "pkg.e": ["pkg.f.g"],
        "pkg.f": ["pkg.f.g"],
        "pkg.f.g": ["pkg.a"],
        "pkg.h": ["pkg.a"],
        "pkg.i": ["pkg.d"],
    }
    (cycle,) = find_cycles(graph)
    assert [e.source for e in cycle] == ["pkg.a", "pkg.b.c", "pkg.d", "pkg.e", "pkg.f.g"]
    assert describe(cycle).startswith("pkg.a -> pkg.b.c (pkg/a.py:1) -> pkg.d (pkg/b/c.py:2) -> pkg.e (pkg/d.py:3)")
    assert describe(cycle).endswith("-> pkg.a (pkg/f/g.py:1)")


def test_an_acyclic_package_passes_and_each_component_is_named_once(tmp_path: Path) -> None:
    pkg = _write(tmp_path, {"pkg/__init__.py": "", "pkg/low.py": "", "pkg/high.py": "from pkg import low\n"})
    assert find_cycles(import_graph(pkg)) == []
    (tmp_path / "pkg/low.py").write_text("def f():\n    from pkg.high import x\n")  # a function-level import back up
    (tmp_path / "pkg/x.py").write_text("import pkg.y\n")
    (tmp_path / "pkg/y.py").write_text("import pkg.x\nimport pkg.low\n")
    cycles = find_cycles(import_graph(pkg))
    assert [describe(c) for c in cycles] == [
        "pkg.high -> pkg.low (pkg/high.py:1) -> pkg.high (pkg/low.py:2)",
        "pkg.x -> pkg.y (pkg/x.py:1) -> pkg.x (pkg/y.py:1)",
    ]


@pytest.mark.parametrize("source", ["import pkgx.m\n", "import json\nfrom os import path\n"])
def test_imports_outside_the_package_are_not_edges(tmp_path: Path, source: str) -> None:
    pkg = _write(tmp_path, {"pkg/__init__.py": "", "pkg/m.py": source})
    assert import_graph(pkg)["pkg.m"] == []
