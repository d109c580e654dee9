"""napari dock widgets: thin views over :mod:`napari_ish_annotator.session`.

Importing this package has no side effects (the triton guard runs where the GUI imports
torch, see :func:`._loading.block_triton`).
"""

from __future__ import annotations

import contextlib
from typing import Any

from ._errors import report_error

PLUGIN = "napari-ish-annotator"
DOCK_NAMES = ("Embryos", "Annotate", "Explain", "Train")
ANNOTATOR_DOCK = "ISH Annotator"


def session_of(viewer: Any) -> Any:
    """The viewer's :class:`~napari_ish_annotator.session.AnnotatorSession` (made on first use)."""
    from ._registry import get_session

    return get_session(viewer)


def open_in_viewer(viewer: Any, inputs: list, background: bool = False) -> list[tuple]:
    """Open images, folders or manifests in the viewer's session: the one entry for File >
    Open (``_reader``) and the sample data; returns the napari layer data they hand back.

    The embryo layer is :mod:`._viewer_binding`'s: here its data for napari to add (the old
    one is removed), or with ``background`` nothing (the files are read in the annotator's
    Embryos worker, with progress and Cancel, and the binding shows the layer when done; a
    viewer with no Qt window opens at once).
    """
    from napari.utils.notifications import show_warning

    from ._registry import get_session
    from ._viewer_binding import open_returning_layer

    session = get_session(viewer)
    if background:
        try:
            embryos = open_annotator(viewer).embryos
        except Exception:  # noqa: BLE001 - no Qt window (a headless viewer model): open at once
            embryos = None
        if embryos is not None:
            embryos.open_paths(list(inputs), background=True)
            return [(None,)]
    layers = open_returning_layer(viewer, session, list(inputs))
    err = session.take_pending_error()
    if err is not None:
        report_error(err)
    if session.skipped:
        show_warning(f"{len(session.skipped)} file(s) skipped: " + "; ".join(session.skipped[:3]))
    with contextlib.suppress(Exception):  # no Qt window: the session is still filled
        open_annotator(viewer)
    return layers


def open_docks(viewer: Any, names: tuple[str, ...] = DOCK_NAMES) -> dict:
    """Open individual dock widgets (Explain and Train as tabs) and return them by name."""
    out = {}
    for name in names:
        _, widget = viewer.window.add_plugin_dock_widget(
            PLUGIN, name, tabify=name in ("Explain", "Train"))
        out[name] = widget
    return out


def open_annotator(viewer: Any) -> Any:
    """Open the whole annotator as one dock (term list on top, the panels as tabs)."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, ANNOTATOR_DOCK)
    return widget


def open_demo(viewer: Any, weights: str = "imagenet", backbone: str = "vgg16",
              train: bool = True) -> Any:
    """The `ish-annotator demo` window: sample embryos in the annotator layout; with ``train``
    the sample labels train a model in the background, then predictions and a Grad-CAM show."""
    from ..core.backbones.specs import get_spec

    viewer.open_sample(PLUGIN, "synthetic")
    annotator = open_annotator(viewer)
    annotator.session.update_settings(backbone=backbone, weights=weights,
                                      layer=str(get_spec(backbone).default_layer))
    fit_view(viewer)
    if train:
        annotator.train_and_explain()
    return annotator


def fit_window_to_screen(viewer: Any, fraction: float = 0.9) -> None:
    """Size the main window to most of the screen (napari's default can exceed a laptop's)."""
    from qtpy.QtWidgets import QApplication

    from ._napari_private import qt_main_window

    window, app = qt_main_window(viewer), QApplication.instance()
    screen = app.primaryScreen() if app is not None else None
    if window is None or screen is None:
        return
    area = screen.availableGeometry()
    window.resize(int(area.width() * fraction), int(area.height() * fraction))
    window.move(area.x() + int(area.width() * (1 - fraction) / 2),
                area.y() + int(area.height() * (1 - fraction) / 2))


def fit_view(viewer: Any) -> None:
    """Fit the embryo to the canvas the docks leave (napari fitted it before they opened)."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is not None:
        app.processEvents()  # lay out the new docks so the canvas has its final size
    viewer.reset_view()
