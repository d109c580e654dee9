"""The command line is a package of one module per command with no import circle."""

from __future__ import annotations

import ast
from pathlib import Path

import napari_ish_annotator

PACKAGE = Path(napari_ish_annotator.__file__).parent
CLI = PACKAGE / "cli"


def _relative_imports(path: Path) -> set[str]:
    """Modules a file imports relative to its package (``from .x`` / ``from ..x``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = "." * node.level + (node.module or "")
            names.add(base)
            if node.module is None:
                names.update("." * node.level + alias.name for alias in node.names)
    return names


def test_command_modules_import_only_the_shared_module_and_core():
    commands = [p for p in CLI.glob("*.py") if not p.name.startswith("_")]
    assert {p.stem for p in commands} >= {"train", "predict", "evaluate", "gradcam", "demo",
                                          "finetune"}
    for path in commands:
        siblings = {name for name in _relative_imports(path)
                    if name.startswith(".") and not name.startswith("..")}
        assert siblings <= {".", "._common"}, f"{path.name} imports another command: {siblings}"


def test_nothing_outside_the_cli_imports_it():
    """core, demo and widgets never import the command line (the circle of old)."""
    for path in PACKAGE.rglob("*.py"):
        if CLI in path.parents:
            continue
        imports = _relative_imports(path)
        assert not any(name.lstrip(".").startswith("cli") for name in imports), path
