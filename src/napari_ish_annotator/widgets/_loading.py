"""Heavy loading that must not freeze the viewer: torch imported in a worker (its shared
libraries loaded with the GIL released, triton kept out while it loads) and ``gc.freeze``
after the big imports while a session is bound, so full garbage collections do not stall
the GUI thread. Both are scoped: ``sys.modules`` is restored after the import, and the
freeze is undone when the last ISH session closes (:func:`release_frozen`)."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Iterator
from pathlib import Path

#: set to "1" to let torch load triton in the viewer's process (read when torch is imported)
ALLOW_TRITON_ENV = "ISH_ANNOTATOR_ALLOW_TRITON"


@contextlib.contextmanager
def triton_blocked() -> Iterator[None]:
    """Keep torchvision from loading ``triton`` while torch is imported in the viewer's
    process; ``sys.modules`` is restored afterwards.

    triton's bundled LLVM clashes with the LLVM inside Mesa's OpenGL driver that napari's
    canvas has already loaded, and the process segfaults (seen with Xvfb/llvmpipe); the
    import of torchvision is what loads it. The plugin never uses ``torch.compile``, so
    inference is unaffected. Set ``ISH_ANNOTATOR_ALLOW_TRITON=1`` to opt out.
    """
    if "triton" in sys.modules or "torchvision" in sys.modules \
            or os.environ.get(ALLOW_TRITON_ENV) == "1":
        yield
        return
    sys.modules["triton"] = None  # type: ignore[assignment]  # `import triton` raises ImportError
    try:
        yield
    finally:
        if "triton" in sys.modules and sys.modules["triton"] is None:
            del sys.modules["triton"]


_FROZEN: set[str] = set()


def freeze_long_lived(after: str) -> None:
    """Exclude the objects alive now from future garbage collections (``gc.freeze``), once
    per ``after`` ("start-up", "layer imports", "torch") while an ISH session is bound to a
    viewer; :func:`release_frozen` undoes it when the last one closes.

    napari, Qt and torch keep ~0.4-0.5 million long-lived objects. A full collection scans
    them all, 0.17-0.24 s here, holding the GIL, so the viewer stalls; a worker that builds
    many lasting objects (pint's unit registry for the first image layer, a network) sets
    one off. What is alive after start-up and the heavy imports is module state that lives
    as long as the process, so full collections need only look at what came later. (Frozen
    objects are still freed by reference counting; only cycles among them stay.)
    """
    if after in _FROZEN:
        return
    _FROZEN.add(after)
    gc.freeze()


def release_frozen() -> None:
    """Give the objects :func:`freeze_long_lived` froze back to the garbage collector."""
    if _FROZEN:
        _FROZEN.clear()
        gc.unfreeze()


def load_torch() -> None:
    """Import torch/torchvision and the core modules using them (any thread), with triton
    kept out (:func:`triton_blocked`).

    The first long task does this in its worker: on the GUI thread the import froze the
    viewer for ~1.5 s; in a worker, with torch's libraries loaded first without the GIL, the
    viewer stalls for no more than ~0.1-0.2 s (the Python bindings' initialisation).
    """
    _open_torch_libraries()
    with triton_blocked():
        import torch  # noqa: F401
        import torchvision  # noqa: F401

        from ..core.features import extractor  # noqa: F401

    freeze_long_lived("torch")


#: torch's largest shared libraries (Linux), in dependency order
TORCH_LIBRARIES = ("libc10.so", "libtorch_cpu.so", "libtorch.so", "libtorch_python.so")


def _open_torch_libraries() -> None:
    """Load torch's big shared libraries before ``import torch`` (Linux only), GIL released.

    Loading them and running their C++ static initialisers takes ~0.3 s, which ``import
    torch`` (and ``ctypes.CDLL``) do holding the GIL: the viewer stalls. libc's ``dlopen``
    called through ctypes runs with the GIL released; ``import torch`` then finds them
    loaded (same soname). A library that fails to load here is left to torch.
    """
    if not sys.platform.startswith("linux") or "torch" in sys.modules:
        return
    import ctypes
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    try:
        dlopen = ctypes.CDLL(None).dlopen
    except (AttributeError, OSError):
        return
    dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    dlopen.restype = ctypes.c_void_p
    for name in TORCH_LIBRARIES:
        path = lib / name
        if not path.is_file() or not dlopen(str(path).encode(), os.RTLD_LAZY | os.RTLD_LOCAL):
            return  # torch's own import reports what is wrong


def torch_loaded() -> bool:
    """Whether torch, torchvision and the feature code are imported already."""
    return "napari_ish_annotator.core.features.extractor" in sys.modules and "torchvision" in sys.modules
