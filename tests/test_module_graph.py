"""No import cycle inside artray/: a cycle makes a module's import order decide whether it works
(the second module sees the first half-initialised), and it ties modules that should stay apart.

The graph holds every import a module makes, at any level. A function-level import counts: it hides
a cycle from the interpreter until that function runs, but the two modules still need each other. An
import under `if TYPE_CHECKING:` counts too: it never runs, but the module's signatures are written
in the other's types, so the two are still one piece (encoders ↔ families was such a circle: a
type-only import one way, a function-level import back). The fix is to move the shared piece into
a module both import, not to make an import lazier or type-only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import artray

ROOT = Path(artray.__file__).parent


def module_names(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package at `root`: dotted name → file."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _import_statements(tree: ast.Module):
    """Every import statement of the module, wherever it stands (functions, `if TYPE_CHECKING:` too)."""
    return (node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports (the deepest module each statement names)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in _import_statements(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from the importer's package, `level - 1` packages up
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in targets:
            while target and target not in modules:  # `import artray.x.y` where only artray.x is a module file
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):  # own packages load first anyway
                found.add(target)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = module_names(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle (a → … → a) for each strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm (the graph is a few hundred modules: recursion is fine)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_path_back(min(group), graph, group) for group in groups]


def _path_back(start: str, graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """The shortest import path from `start` back to itself inside `group`."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in a cycle group but has no path back")


def test_the_checker_sees_every_import_form(tmp_path):
    """Guards the checker itself: each import form yields the edge it should, and a cycle is named."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    sources = {
        "__init__.py": "",
        "a.py": "import pkg.b\n",
        "b.py": "from pkg.sub import c\n",
        "sub/__init__.py": "from . import d\n",
        "sub/c.py": "def f():\n    from ..a import x\n",  # function level still counts
        "sub/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import e\n",  # counts too
        "e.py": "from pkg.sub.d import name\nimport os\n",
    }
    for rel, text in sources.items():
        (pkg / rel).write_text(text)
    graph = import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.sub.c"}, "pkg.sub": {"pkg.sub.d"},
                     "pkg.sub.c": {"pkg.a"}, "pkg.sub.d": {"pkg.e"}, "pkg.e": {"pkg.sub.d"}}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"], ["pkg.e", "pkg.sub.d", "pkg.e"]]


def test_no_import_cycle_inside_artray():
    found = cycles(import_graph())
    assert not found, "import cycles inside artray/ (break each by moving the shared piece into a module both " \
                      "import):\n" + "\n".join("  " + " → ".join(c) for c in found)


# Modules outside artray.scaffold that may import it: the CLI offers `artray demo` and `make-sample`.
FRONT_DOORS = {"artray.cli"}


def test_the_library_does_not_import_the_scaffolding():
    """Sample corpora, tiny checkpoints and the demo serve tests, the demo and benchmarks; a library
    module that imported them would ship test fixtures as behaviour."""
    graph = import_graph()
    found = sorted(f"{name} → {target}" for name, targets in graph.items()
                   if not name.startswith("artray.scaffold") and name not in FRONT_DOORS
                   for target in targets if target.startswith("artray.scaffold"))
    assert not found, "library modules import artray.scaffold (move the piece into artray.scaffold, or pass " \
                      "it in):\n" + "\n".join("  " + f for f in found)
