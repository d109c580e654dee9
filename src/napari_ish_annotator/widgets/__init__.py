"""napari dock widgets: thin views over :mod:`napari_ish_annotator.core`.

Importing this package keeps torchvision from loading ``triton`` later in the process:
triton's bundled LLVM clashes with the LLVM inside Mesa's OpenGL driver that napari's
canvas has already loaded, and the process segfaults (seen with Xvfb/llvmpipe). The
plugin never uses ``torch.compile``, so CPU/GPU inference is unaffected. Set
``ISH_ANNOTATOR_ALLOW_TRITON=1`` to opt out.
"""

import os as _os
import sys as _sys

if "triton" not in _sys.modules and _os.environ.get("ISH_ANNOTATOR_ALLOW_TRITON") != "1":
    _sys.modules["triton"] = None  # makes `import triton` raise ImportError

PLUGIN = "napari-ish-annotator"
DOCK_NAMES = ("Embryos", "Annotate", "Explain", "Train")


def open_docks(viewer, names=DOCK_NAMES) -> dict:
    """Open the plugin's dock widgets (Explain and Train as tabs) and return them by name."""
    out = {}
    for name in names:
        _, widget = viewer.window.add_plugin_dock_widget(
            PLUGIN, name, tabify=name in ("Explain", "Train"))
        out[name] = widget
    return out


def open_demo(viewer, weights: str = "imagenet", backbone: str = "vgg16") -> dict:
    """The `ish-annotator demo` window: synthetic sample embryos and all four panels."""
    from ..core.backbones import get_spec

    viewer.open_sample(PLUGIN, "synthetic")
    widgets = open_docks(viewer)
    widgets["Annotate"].set_settings(backbone=backbone, weights=weights,
                                     layer=get_spec(backbone).default_layer)
    fit_view(viewer)
    return widgets


def fit_view(viewer) -> None:
    """Fit the embryo to the canvas the docks leave (napari fitted it before they opened)."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is not None:
        app.processEvents()  # lay out the new docks so the canvas has its final size
    viewer.reset_view()
