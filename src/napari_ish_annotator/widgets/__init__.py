"""napari dock widgets: thin views over :mod:`napari_ish_annotator.session`.

Importing this package has no side effects (the triton guard is scoped to the GUI's torch
import, see :func:`._loading.triton_blocked`) and imports neither Qt nor the session: the
helpers other modules, scripts and tests need (the embryo layer, the canvas text, the
error wording, the task runner...) are listed here and reached lazily
(:func:`..core.utils.lazy.attach`), each the same object as in its home module.
"""

from __future__ import annotations

from typing import Any

from ..core.utils.lazy import attach

PLUGIN = "napari-ish-annotator"
DOCK_NAMES = ("Embryos", "Annotate", "Explain", "Train")
ANNOTATOR_DOCK = "ISH Annotator"

__getattr__, __dir__, _LAZY = attach(__name__, {
    "_viewer_binding": ["OPEN_HINT", "embryo_layer", "layer_session", "overlay_text",
                        "text_overlay"],
    "_embryo_features": ["table_layer"],
    "_errors": ["error_text", "gui_words", "shows_input_error"],
    "_loading": ["freeze_long_lived", "triton_blocked"],
    "_napari_private": ["qt_main_window"],
    "_worker": ["TaskRunner"],
})
__all__ = sorted([*_LAZY, "ANNOTATOR_DOCK", "DOCK_NAMES", "PLUGIN", "fit_view",
                  "fit_window_to_screen", "open_annotator", "open_demo", "open_docks",
                  "session_of"])


def session_of(viewer: Any) -> Any:
    """The viewer's :class:`~napari_ish_annotator.session.AnnotatorSession` (made on first use)."""
    from ._registry import get_session

    return get_session(viewer)


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
