"""Heavy loading that must not freeze the viewer: torch imported in a worker (its shared
libraries loaded with the GIL released, triton kept out) and ``gc.freeze`` after the big
imports, so later full garbage collections do not stall the GUI thread."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def block_triton() -> None:
    """Keep torchvision from loading ``triton`` in the viewer's process.

    triton's bundled LLVM clashes with the LLVM inside Mesa's OpenGL driver that napari's
    canvas has already loaded, and the process segfaults (seen with Xvfb/llvmpipe). The plugin
    never uses ``torch.compile``, so inference is unaffected. Only the GUI does this, right
    before it imports torch; set ``ISH_ANNOTATOR_ALLOW_TRITON=1`` to opt out.
    """
    if "triton" not in sys.modules and os.environ.get("ISH_ANNOTATOR_ALLOW_TRITON") != "1" \
            and "torchvision" not in sys.modules:
        sys.modules["triton"] = None  # makes `import triton` raise ImportError


_FROZEN: set[str] = set()


def freeze_long_lived(after: str) -> None:
    """Exclude the objects alive now from future garbage collections (``gc.freeze``), once
    per ``after`` ("start-up", "layer imports", "torch"): at most three times a process.

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
    import gc

    gc.freeze()


def load_torch() -> None:
    """Import torch/torchvision and the core modules using them (any thread; call
    :func:`block_triton` on the GUI thread first).

    The first long task does this in its worker: on the GUI thread the import froze the
    viewer for ~1.5 s; in a worker, with torch's libraries loaded first without the GIL, the
    viewer stalls for no more than ~0.1-0.2 s (the Python bindings' initialisation).
    """
    _open_torch_libraries()
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
