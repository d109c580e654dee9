"""Declared and honest (issue 25): every third-party package imported under src/ is declared
in pyproject.toml; each core package's face lists names that live in the module it says; the
napari manifest declares each command once."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as metadata
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "src" / "napari_ish_annotator"
CORE_PACKAGES = ("utils", "data", "labels", "backbones", "features", "learn", "explain",
                 "finetune", "export", "synthetic")


def imported_top_names() -> dict[str, str]:
    """``{top-level module: first file importing it}`` of every import statement under src/
    (function-level ones too), without the standard library and the package itself."""
    out: dict[str, str] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top and top not in sys.stdlib_module_names and top != "napari_ish_annotator":
                    out.setdefault(top, path.relative_to(ROOT).as_posix())
    out.pop("__future__", None)
    return out


def declared_distributions() -> set[str]:
    """Normalised names of every requirement in pyproject (dependencies and all extras)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return {_normalise(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in reqs}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_package_is_declared() -> None:
    """An import the package makes itself must not rely on napari or scikit-learn happening
    to install it (scipy, psygnal, superqt, threadpoolctl and pint were missing)."""
    declared = declared_distributions()
    owners = metadata.packages_distributions()
    imported = imported_top_names()
    assert {"numpy", "torch", "scipy"} <= set(imported)  # the scan sees imports at all
    missing = []
    for top, where in sorted(imported.items()):
        dists = owners.get(top)
        if not dists:
            missing.append(f"{top} (first in {where}): not installed here, cannot tell")
        elif not any(_normalise(d) in declared for d in dists):
            missing.append(f"{top} (first in {where}): distribution {', '.join(dists)}")
    assert not missing, "imported but not declared in pyproject.toml:\n  " + "\n  ".join(missing)


def check_face(package: str, own: tuple[str, ...] = ()) -> None:
    """A face says what is in its package and lists public names that resolve to objects
    whose home is a submodule of it: one object, no copy, no second definition. ``own``:
    the face's names defined in the face itself."""
    face = importlib.import_module(f"napari_ish_annotator.{package}")
    assert face.__doc__ and len(face.__doc__.strip()) > 40, f"{package} needs a docstring"
    assert face.__all__ == sorted(set(face.__all__)) and face.__all__
    for public in face.__all__:
        assert not public.startswith("_"), f"{package} exposes the private {public}"
        value = getattr(face, public)
        home = getattr(value, "__module__", None) or ""
        if (inspect.isclass(value) or inspect.isfunction(value)) and home.startswith(
                "napari_ish_annotator."):  # constants and aliases (tuple[...]) carry no home
            assert (home == face.__name__) if public in own else home.startswith(
                f"{face.__name__}."), (package, public, home)
            assert getattr(sys.modules[home], public) is value


@pytest.mark.parametrize("name", CORE_PACKAGES)
def test_core_package_face(name: str) -> None:
    check_face(f"core.{name}")


def test_widgets_face() -> None:
    """The helpers tests and scripts need of the widgets' ``_`` modules, on the face."""
    pytest.importorskip("qtpy")  # TaskRunner is a Qt widget
    check_face("widgets", own=("fit_view", "fit_window_to_screen", "open_annotator",
                               "open_demo", "open_docks", "session_of"))


def test_importing_a_face_imports_no_sibling() -> None:
    """Reading one module must not drag its whole package (or torch) in with it."""
    code = ("import sys\nimport napari_ish_annotator.core.learn.metrics\n"
            "loaded = sorted(m for m in sys.modules if m.startswith('napari_ish_annotator.core.'))\n"
            "assert 'torch' not in sys.modules\nprint(' '.join(loaded))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert "napari_ish_annotator.core.learn.metrics" in out
    assert not {m for m in out if m.startswith("napari_ish_annotator.core.learn.")} - {
        "napari_ish_annotator.core.learn.metrics"}, out


def test_napari_manifest_declares_each_command_once() -> None:
    manifest = yaml.safe_load((PACKAGE_DIR / "napari.yaml").read_text(encoding="utf-8"))
    ids = [c["id"] for c in manifest["contributions"]["commands"]]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    used = [w["command"] for w in manifest["contributions"]["widgets"]]
    assert set(used) <= set(ids)


SRC_DIR = PACKAGE_DIR.parent
USER_DIRS = ("src", "tests", "benchmarks", "scripts")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC_DIR).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module an ``ImportFrom`` names, relative imports resolved."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _project_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE_DIR.rglob("*.py")}


def _borrowed(module: str, path: Path) -> set[str]:
    """Names ``module`` takes at its head from another project module (``from .x import n``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            source = _absolute(node, module, path.name == "__init__.py")
            if source.startswith("napari_ish_annotator") and source != "__future__":
                out.update(a.asname or a.name for a in node.names)
    return out


def _declared_all(path: Path) -> set[str]:
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__"
                                                for t in node.targets):
            with_values = node.value
            if isinstance(with_values, ast.List | ast.Tuple):
                return {e.value for e in with_values.elts if isinstance(e, ast.Constant)}
    return set()


def re_exports() -> list[str]:
    """Names reachable from two modules of the package: a module lists in ``__all__`` a name
    it imported from a sibling, or a caller (src, tests, benchmarks, scripts) imports a name
    from a module that only borrowed it. Package faces (``__init__``) are the one exception:
    they are the public door of their package by design."""
    modules = _project_modules()
    borrowed = {m: _borrowed(m, p) for m, p in modules.items() if p.name != "__init__.py"}
    found = [f"{m}.{n} (listed in its __all__)" for m, p in modules.items() if m in borrowed
             for n in sorted(_declared_all(p) & borrowed[m])]
    for folder in USER_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            importer = _module_name(path) if folder == "src" else path.stem
            tree = ast.parse(path.read_text(encoding="utf-8"))
            aliases: dict[str, str] = {}  # local name -> project module (from pkg import mod)
            for node in ast.walk(tree):
                if not isinstance(node, ast.ImportFrom):
                    continue
                source = _absolute(node, importer, path.name == "__init__.py")
                for alias in node.names:
                    if alias.name in borrowed.get(source, ()):
                        found.append(f"{source}.{alias.name} (imported by "
                                     f"{path.relative_to(ROOT)})")
                    if f"{source}.{alias.name}" in borrowed:
                        aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
            patched = {(c.args[0].id, c.args[1].value) for c in ast.walk(tree)
                       if isinstance(c, ast.Call) and getattr(c.func, "attr", "") == "setattr"
                       and len(c.args) >= 2 and isinstance(c.args[0], ast.Name)
                       and isinstance(c.args[1], ast.Constant)}  # patched where it is used
            for node in ast.walk(tree):
                if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                        and (node.value.id, node.attr) not in patched
                        and node.attr in borrowed.get(aliases.get(node.value.id, ""), ())):
                    found.append(f"{aliases[node.value.id]}.{node.attr} (used by "
                                 f"{path.relative_to(ROOT)})")
    return sorted(set(found))


def test_no_name_has_two_import_paths() -> None:
    """One import path per name (issue 25): a name is imported from the module that defines
    it, never through another module that happens to import it too."""
    assert not re_exports(), "re-exported names:\n  " + "\n  ".join(re_exports())
