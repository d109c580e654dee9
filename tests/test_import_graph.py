"""The package's shape: every module imports on its own and in any order, no import circles
(not even ones hidden by function-level or ``TYPE_CHECKING`` imports), imports of the
package's own modules at module heads (at most :data:`MAX_LAZY_OWN` inside functions), no
file in src/, tests/ or benchmarks/ over 450 lines.

``python tests/test_import_graph.py`` prints the import graph's circles and the long files.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "napari_ish_annotator"
MAX_LINES = 450
#: imports of the package's own modules inside functions, in all of src/ (issue 25): a
#: module's head says what it needs; the few left keep torch or Qt out of a light module
MAX_LAZY_OWN = 25
#: folders whose .py files obey MAX_LINES
LINE_CHECKED = ("src", "tests", "benchmarks")
#: files over MAX_LINES that another developer is splitting now (issue 25 lists them)
LINES_PENDING: set[str] = set()


# ------------------------------------------------------------------------------- the graph
def module_files() -> dict[str, Path]:
    """Dotted module name (without the package prefix for brevity: ``core.learn.ensembles``) -> file;
    a package is named by its ``__init__.py`` (``core.finetune``); the root package is ``""``."""
    out: dict[str, Path] = {}
    root = SRC / PACKAGE
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


_NESTED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.For, ast.While)


def _import_nodes(body: Iterable[ast.stmt], top_level: bool) -> Iterable[ast.Import | ast.ImportFrom]:
    """Import statements at module level (inside ``if``/``try`` too, but not under
    ``if TYPE_CHECKING``: those never run); with ``top_level=False`` every import statement:
    inside functions and classes and under ``TYPE_CHECKING`` too (a lazy or typing-only
    import still says which module depends on which, so it must follow the layers)."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not (top_level and _is_type_checking(node.test)):
                yield from _import_nodes(node.body, top_level)
            yield from _import_nodes(node.orelse, top_level)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _import_nodes(block, top_level)
        elif isinstance(node, ast.With) or (not top_level and isinstance(node, _NESTED)):
            yield from _import_nodes(node.body, top_level)


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom,
             modules: set[str]) -> set[str]:
    """The package modules ``node`` makes Python execute (the named module and its packages,
    except the importer's own packages, which are already being imported)."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if module else []
            if not is_package:
                base = base[:-1]
            base = base[:len(base) - (node.level - 1)]
            stem = ".".join(base + ([node.module] if node.module else []))
            full = f"{PACKAGE}.{stem}" if stem else PACKAGE
        else:
            full = node.module or ""
        names = [full] + [f"{full}.{a.name}" for a in node.names]
    own = {".".join(module.split(".")[:i]) for i in range(len(module.split(".")) + 1)}
    out: set[str] = set()
    for name in names:
        if name != PACKAGE and not name.startswith(PACKAGE + "."):
            continue
        parts = name.split(".")[1:]
        for i in range(1, len(parts) + 1):
            target = ".".join(parts[:i])
            if target in modules and target not in own:
                out.add(target)
    return out


def import_graph(top_level: bool = True) -> dict[str, set[str]]:
    """``{module: package modules it imports}`` from the source's AST (:func:`_import_nodes`)."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in _import_nodes(tree.body, top_level):
            edges |= _targets(module, is_package, node, set(files))
        graph[module] = edges - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as one circle
    through its modules (a readable path, not just the set)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_circle(graph, comp) for comp in comps]


def _circle(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest circle from the component's first module back to itself (breadth first)."""
    start = min(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)


def long_files() -> dict[str, int]:
    """``{path under the repository: lines}`` of .py files in :data:`LINE_CHECKED` over
    :data:`MAX_LINES`."""
    out = {}
    for folder in LINE_CHECKED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            n = len(path.read_text(encoding="utf-8").splitlines())
            if n > MAX_LINES:
                out[path.relative_to(ROOT).as_posix()] = n
    return out


def _is_own(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return bool(node.level) or (node.module or "").split(".")[0] == PACKAGE
    return any(a.name.split(".")[0] == PACKAGE for a in node.names)


def lazy_own_imports() -> list[str]:
    """``path:line`` of every import of the package's own modules inside a function."""
    out = []

    def visit(node: ast.AST, path: str, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, ast.Import | ast.ImportFrom) and _is_own(child):
                out.append(f"{path}:{child.lineno}")
            visit(child, path, in_function or isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        visit(ast.parse(path.read_text(encoding="utf-8")), path.relative_to(SRC).as_posix(),
              False)
    return out


# ------------------------------------------------------------------------------- the tests
def test_graph_resolves_relative_imports_and_packages() -> None:
    """The graph builder itself: a relative import reaches the module and its packages; a
    ``TYPE_CHECKING`` or function-level import is an edge of the full graph only."""
    top, full = import_graph(top_level=True), import_graph(top_level=False)
    assert "core.utils.errors" in top["core.learn.ensembles"]
    assert "core.learn" not in top["core.learn.ensembles"]  # its own package is being imported already
    assert "core.finetune.config" in top["core.finetune.trainer"]
    assert "cli._common" in top["cli.demo"]
    assert "core.export.network" not in top["core.export.model"]  # torch at its head
    assert "core.export.network" in full["core.export.model"]
    assert top[""] == set()  # the root package imports nothing of its own
    assert set(top) == set(full) and all(top[m] <= full[m] for m in top)
    assert any(full[m] - top[m] for m in top)  # lazy imports exist and are seen
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


@pytest.mark.parametrize("top_level", [True, False], ids=["module-level", "all-imports"])
def test_no_import_circles(top_level: bool) -> None:
    """No circle among module-level imports, and none hidden by a function-level or
    ``TYPE_CHECKING`` import either (lazy imports of the package's own modules must follow
    the layers too; lazy imports of torch, matplotlib etc. are not edges)."""
    found = {frozenset(c): " -> ".join(c) for c in cycles(import_graph(top_level))}
    assert not found, "import circles:\n" + "\n".join(f"  {v}" for v in found.values())


def test_no_file_over_450_lines() -> None:
    long = {k: n for k, n in long_files().items() if k not in LINES_PENDING}
    assert not long, (f"files over {MAX_LINES} lines (split them by concern):\n"
                      + "\n".join(f"  {k}: {n} lines" for k, n in long.items()))


def test_own_imports_sit_at_module_heads() -> None:
    """At most MAX_LAZY_OWN imports of the package's own modules inside functions (there
    were 183): the rest are at module heads, where a reader sees what a module needs."""
    lazy = lazy_own_imports()
    assert len(lazy) <= MAX_LAZY_OWN, f"{len(lazy)} function-level imports:\n" + "\n".join(lazy)


#: modules that are programs, not libraries: importing one runs it
RUN_NOT_IMPORTED = {"cli.__main__"}


def _importable() -> list[str]:
    return sorted(set(module_files()) - RUN_NOT_IMPORTED)


def _import(modules: list[str]) -> subprocess.CompletedProcess:
    code = f"import importlib\nfor m in {modules!r}:\n    importlib.import_module(m)\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, env=env, timeout=300)


def _dotted(module: str) -> str:
    return f"{PACKAGE}.{module}" if module else PACKAGE


def _run_all(jobs: list[list[str]]) -> list[subprocess.CompletedProcess]:
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return list(pool.map(_import, jobs))


@pytest.mark.slow
def test_every_module_imports_alone() -> None:
    """Each module in a fresh interpreter on its own: no module relies on another having been
    imported first (all optional extras are installed in the test environment)."""
    modules = _importable()
    results = _run_all([[_dotted(m)] for m in modules])
    failed = [f"{m}: {(r.stderr.strip().splitlines() or [r.returncode])[-1]}"
              for m, r in zip(modules, results, strict=True) if r.returncode != 0]
    assert not failed, "\n".join(failed)


def test_all_modules_import_in_any_order() -> None:
    """All modules in one interpreter, in three orders: sorted, reversed, and the most-imported
    modules last (an order-dependent circle shows up as an ImportError of a partly
    initialised module in one of them)."""
    modules = _importable()
    graph = import_graph(top_level=False)
    fan_in = {m: sum(m in e for e in graph.values()) for m in modules}
    orders = {"sorted": modules, "reversed": modules[::-1],
              "leaves last": sorted(modules, key=lambda m: (fan_in[m], m))}
    results = _run_all([[_dotted(m) for m in order] for order in orders.values()])
    failed = [f"{name}: {r.stderr[-2000:]}" for name, r in zip(orders, results, strict=True)
              if r.returncode != 0]
    assert not failed, "\n".join(failed)


if __name__ == "__main__":  # pragma: no cover
    for top in (True, False):
        print("module-level" if top else "all imports (function-level, TYPE_CHECKING)")
        for c in cycles(import_graph(top)):
            print("  ", " -> ".join(c))
    for path, n in long_files().items():
        print(f"{path}: {n} lines")
    lazy = lazy_own_imports()
    print(f"{len(lazy)} function-level imports of the package's own modules:", *lazy, sep="\n  ")
