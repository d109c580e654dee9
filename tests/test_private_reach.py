"""Tests use the public API where one exists (issue 25): no test reaches a private name of
the package, of napari or of another library. :func:`private_reaches` reads a test file's
AST; what it finds must be in :data:`ALLOWED`, each entry saying why no public API serves.

``python tests/test_private_reach.py`` lists every reach, allowed or not.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path
from typing import NamedTuple

import yaml

TESTS = Path(__file__).resolve().parent
PACKAGE = "napari_ish_annotator"
#: names that start with "_" and are public all the same (namedtuple's API, os._exit)
PUBLIC_UNDERSCORE = {"_asdict", "_replace", "_fields", "_make", "_field_defaults", "_exit"}
#: calls that reach an attribute named by their second argument (a string)
BY_NAME = {"setattr", "getattr", "hasattr", "delattr", "object"}  # object: mock.patch.object
#: calls that reach an object named by their first argument (a dotted string)
BY_PATH = {"setattr", "delattr", "patch"}  # monkeypatch.setattr("pkg.mod.name", ...)


def entry_modules() -> set[str]:
    """Modules napari.yaml names: their ``_`` is napari's convention, the manifest their
    contract (``napari_ish_annotator._reader``)."""
    manifest = yaml.safe_load((TESTS.parent / "src" / PACKAGE / "napari.yaml").read_text(
        encoding="utf-8"))
    return {c["python_name"].split(":")[0] for c in manifest["contributions"]["commands"]}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in PUBLIC_UNDERSCORE


def _private_module(dotted: str, entries: set[str]) -> bool:
    return dotted.split(".")[0] == PACKAGE and dotted not in entries and any(
        _private(part) for part in dotted.split("."))


class Reach(NamedTuple):
    file: str
    line: int
    name: str  # the private name, or the private module's dotted path


def private_reaches(source: str, file: str, entries: set[str] | None = None) -> list[Reach]:
    """Every private reach in ``source``: an import of a private project module or of a
    private name from one, ``obj._name`` (``self._x``/``cls._x`` inside a class the file
    defines excepted), a private name passed as a string to setattr/getattr/mock.patch, and
    the same inside code strings the test runs (``python -c`` scripts)."""
    entries = entry_modules() if entries is None else entries
    found: list[Reach] = []

    def visit(node: ast.AST, in_class: bool, line0: int) -> None:
        line = line0 + getattr(node, "lineno", 1) - 1
        if isinstance(node, ast.Import):
            found.extend(Reach(file, line, a.name) for a in node.names
                         if _private_module(a.name, entries))
        elif isinstance(node, ast.ImportFrom) and not node.level:
            module = node.module or ""
            if _private_module(module, entries):
                found.append(Reach(file, line, module))
            elif module.split(".")[0] == PACKAGE:
                found.extend(Reach(file, line, f"{module}.{a.name}") for a in node.names
                             if _private(a.name) and f"{module}.{a.name}" not in entries)
        elif isinstance(node, ast.Attribute) and _private(node.attr) and not (
                in_class and getattr(node.value, "id", None) in ("self", "cls")):
            found.append(Reach(file, line, node.attr))
        elif isinstance(node, ast.Call):
            called = getattr(node.func, "attr", getattr(node.func, "id", ""))
            args = [a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else None
                    for a in node.args[:2]]
            if called in BY_NAME and len(args) == 2 and args[1] and _private(args[1]):
                found.append(Reach(file, line, args[1]))
            if called in BY_PATH and args and args[0] and "." in args[0]:
                found.extend(Reach(file, line, p) for p in args[0].split(".") if _private(p))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and "\n" in node.value and ("import " in node.value or "def " in node.value):
            try:
                inner = ast.parse(textwrap.dedent(node.value))
            except SyntaxError:
                inner = None
            if inner is not None:
                visit(inner, False, line)
                return
        for child in ast.iter_child_nodes(node):
            visit(child, in_class or isinstance(node, ast.ClassDef), line0)

    visit(ast.parse(source), False, 1)
    return found


def reaches_in_tests() -> list[Reach]:
    """Every reach in tests/*.py but this file (its SAMPLE holds reaches on purpose)."""
    entries = entry_modules()
    return [r for path in sorted(TESTS.glob("*.py")) if path.name != Path(__file__).name
            for r in private_reaches(path.read_text(encoding="utf-8"), path.name, entries)]


_WINDOWED = ("the synthetic embryo's windowed part evaluation is an internal speed-up with no "
             "switch outside; the test compares it with the whole grid")
#: (test file, private name) -> why no public API serves. Keep it short: prefer a public
#: function, a public seam patched where it is used, or a real failure.
ALLOWED: dict[tuple[str, str], str] = {
    ("test_backbones.py", "_hub_dir"):
        "torch has no public way to undo torch.hub.set_dir(); None makes torch.hub follow "
        "TORCH_HOME again",
    ("test_backbones_extra.py", "napari_ish_annotator.cli._common"):
        "the CLI's per-backbone --input-size default has no public function; a command "
        "would extract with inception_v3 to show it",
    ("test_hostile_images.py", "_PILLOW_DEFAULT_LIMIT"):
        "Pillow's default limit scaled down with Pillow's own, or the test must decode a "
        "180-megapixel image",
    ("test_hostile_labels.py", "_conn"):
        "the CLI's Ctrl-C/SIGTERM test needs a store query that never ends, on the store's "
        "own connection (a hostile file is refused before any query runs)",
    ("test_synthetic.py", "_embryo_coords"): _WINDOWED,
    ("test_synthetic.py", "_low_freq_noise"): _WINDOWED,
    ("test_synthetic.py", "_term_density"): _WINDOWED,
}
MAX_ALLOWED = 8


def test_tests_reach_only_the_allowed_private_names() -> None:
    found = reaches_in_tests()
    new = [f"{r.file}:{r.line}: {r.name}" for r in found if (r.file, r.name) not in ALLOWED]
    assert not new, ("private names reached by tests (use the public API, or list them in "
                     "ALLOWED saying why none serves):\n  " + "\n  ".join(new))
    stale = sorted(set(ALLOWED) - {(r.file, r.name) for r in found})
    assert not stale, f"listed in ALLOWED but no longer reached (remove them): {stale}"
    assert len(ALLOWED) <= MAX_ALLOWED and all(len(why) > 40 for why in ALLOWED.values())


SAMPLE = '''\
import napari_ish_annotator.widgets._loading
from napari_ish_annotator.widgets._errors import error_text
from napari_ish_annotator.core.labels.store import _HASH_RE, LabelStore
from napari_ish_annotator import _reader
from napari_ish_annotator.widgets import embryo_layer
store._conn.execute("SELECT 1")
monkeypatch.setattr(extras, "_version", None)
monkeypatch.setattr("napari_ish_annotator.core.learn.ensembles._MEMMAP_ROWS", 7)
point._replace(x=1), os._exit(0), obj.__class__


class Helper:
    def run(self):
        return self._state, cls._kind


def outside(self):
    return self._write()


SCRIPT = """
    import sys
    from napari_ish_annotator.widgets._worker import TaskRunner
"""
'''


def test_the_scanner_sees_each_kind_of_reach() -> None:
    """Module-private imports, private names imported or reached (as attributes, by name in
    setattr, by dotted path), inside code strings too; a test's own class's ``self._x``,
    public names that start with ``_`` and napari's entry modules are not reaches."""
    found = {(r.line, r.name) for r in private_reaches(SAMPLE, "test_x.py",
                                                       {"napari_ish_annotator._reader"})}
    assert found == {(1, "napari_ish_annotator.widgets._loading"),
                     (2, "napari_ish_annotator.widgets._errors"),
                     (3, "napari_ish_annotator.core.labels.store._HASH_RE"),
                     (6, "_conn"), (7, "_version"), (8, "_MEMMAP_ROWS"),
                     (18, "_write"), (23, "napari_ish_annotator.widgets._worker")}
    # a reach added to any test file is reported unless ALLOWED lists it
    added = private_reaches("store._conn.execute('SELECT 1')\n", "test_labels.py", set())
    assert [(r.file, r.name) for r in added] == [("test_labels.py", "_conn")]
    assert ("test_labels.py", "_conn") not in ALLOWED


if __name__ == "__main__":  # pragma: no cover
    all_reaches = reaches_in_tests()
    for reach in all_reaches:
        print(f"{reach.file}:{reach.line}: {reach.name}")
    print(len(all_reaches), "reaches")
