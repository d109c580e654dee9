"""Optional dependencies (the ``[bioimageio]``, ``[cluster]`` and ``[offline]`` extras).

One place imports them, so a missing or broken one is always the same kind of one-line
:class:`~.errors.InputError` (exit 2 on the CLI, a notification in the GUI) naming the extra
to install, or the versions at fault and the versions to use, never a traceback:

- :func:`require_extra` imports a module of an extra;
- :func:`check_compatible` refuses version combinations known to break (``KNOWN_BREAKS``),
  before any work is done;
- :func:`versions` names installed versions for messages about a break nobody knew of yet.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType

from .errors import InputError

__all__ = ["KNOWN_BREAKS", "Break", "check_compatible", "install_hint", "require_extra",
           "versions"]

PACKAGE = "napari-ish-annotator"


def install_hint(extra: str) -> str:
    """The command that installs ``extra``."""
    return f"pip install '{PACKAGE}[{extra}]'"


def versions(*distributions: str) -> str:
    """``"bioimageio.spec 0.5.12.0, pydantic 2.14.4"`` (``not installed`` where absent)."""
    return ", ".join(f"{d} {_version(d) or 'not installed'}" for d in distributions)


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    """``"2.14.4"`` -> ``(2, 14, 4)``; pre/post/local parts are ignored (enough for bounds)."""
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0].split("rc")[0])[:4])


def require_extra(module: str, extra: str, purpose: str, alternative: str = "",
                  distribution: str | None = None) -> ModuleType:
    """Import ``module`` of the optional ``extra`` or raise one InputError saying what to do.

    ``purpose`` says what needs it ("the bioimage.io export"), ``alternative`` what to do
    instead (", or choose --backbone vgg16"). An installed module whose import fails (e.g. an
    incompatible dependency) is named with its version and the cause.
    """
    dist = distribution or module
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or module
        if module == missing or module.startswith(missing + "."):
            raise InputError(f"{purpose} needs the optional package {dist}, which is not "
                             f"installed; install it with: {install_hint(extra)}"
                             f"{alternative}") from None
        cause = f"it needs {missing}, which is not installed"
    except Exception as exc:  # noqa: BLE001 - any import-time failure of a third-party package
        cause = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    raise InputError(f"{purpose} needs {module}, but {dist} {_version(dist) or '?'} does not "
                     f"import ({cause}); reinstall it with: {install_hint(extra)} "
                     f"--force-reinstall{alternative}")


@dataclass(frozen=True)
class Break:
    """``package`` versions below ``fixed_in`` fail together with ``other`` >= ``other_from``."""

    extra: str
    package: str
    fixed_in: str       # first release of ``package`` that works (may be unusable, see hint)
    other: str
    other_from: str     # first release of ``other`` that breaks ``package``
    why: str
    hint: str           # what to install instead


#: Combinations seen to fail. Each has a test that shows it (named in ``why``).
KNOWN_BREAKS: tuple[Break, ...] = (
    # bioimageio.spec < 0.5.14.3 calls pydantic's serializer handler as handler(value, info);
    # pydantic 2.14 takes the second argument as an index key and rejects it, so every
    # ModelDescr holding a file fails ("'index_key' is expected to be an integer or a
    # string"). bioimageio.core 0.11.0 (the newest) pins bioimageio.spec==0.5.12.0, so the fix
    # is pydantic<2.14 (pyproject's [bioimageio] extra). Shown by
    # tests/test_export_bioimageio.py::test_vgg16_package_passes_the_test_and_matches_predict.
    Break("bioimageio", "bioimageio.spec", "0.5.14.3", "pydantic", "2.14",
          "its package writer fails under pydantic 2.14",
          "install pydantic<2.14: pip install 'pydantic<2.14' (tested versions: "
          "docs/bioimageio.md)"),
)


def check_compatible(extra: str) -> None:
    """InputError naming both versions if the installed ``extra`` is a known break."""
    for b in KNOWN_BREAKS:
        if b.extra != extra:
            continue
        mine, other = _version(b.package), _version(b.other)
        if (mine and other and _release(mine) < _release(b.fixed_in)
                and _release(other) >= _release(b.other_from)):
            raise InputError(f"{b.package} {mine} does not work with {b.other} {other} "
                             f"({b.why}); {b.hint}")
