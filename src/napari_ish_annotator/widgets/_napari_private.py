"""The only place that reaches past napari's public plugin API, each use with the reason.

napari hands plugin widgets a ``PublicOnlyProxy`` of the viewer: a new proxy object per
widget, so a per-viewer session must be keyed by the viewer it wraps (``__wrapped__`` is the
wrapt proxy protocol, not napari API), and the proxy refuses private attributes. napari has
no public "window closed" event for plugins, so the session's label store is closed when the
Qt main window is destroyed, staged work checks that the window is still there, and the
layout test/screenshot script need that window's size. File > Save's dialog offers napari's
image writers first (npe2 orders plugins' writers after the builtins), so saving the embryo
layer to ``labels.csv`` with the dialog's default file type would reach the TIFF writer and
fail: :func:`route_csv_saves` sends such a save to this plugin's writer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any


def real_viewer(viewer: Any) -> Any:
    """The viewer behind napari's public-only proxy (the same object for every widget)."""
    while hasattr(viewer, "__wrapped__"):
        viewer = viewer.__wrapped__
    return viewer


def qt_main_window(viewer: Any) -> Any | None:
    """The viewer's QMainWindow (no public accessor exists), or None without a window."""
    window = getattr(real_viewer(viewer), "window", None)
    return getattr(window, "_qt_window", None)


def on_window_destroyed(viewer: Any, callback: Callable[..., None]) -> None:
    """Call ``callback`` when the viewer's Qt window goes away (napari has no public event)."""
    window = qt_main_window(viewer)
    if window is not None:
        with contextlib.suppress(AttributeError, RuntimeError, TypeError):
            window.destroyed.connect(callback)


def window_closed(viewer: Any) -> bool:
    """Whether the viewer's window was closed (napari drops ``_qt_window`` on close): a timer
    set before must not add layers to a torn-down viewer."""
    return getattr(real_viewer(viewer), "window", None) is not None \
        and qt_main_window(viewer) is None


def route_csv_saves(viewer: Any, is_ours: Callable[[Any], bool],
                    write: Callable[[str], list[str]]) -> None:
    """Save layers that are all ``is_ours`` to a ``.csv`` path with ``write``, whatever file
    type the Save dialog had selected; every other save goes to napari as before."""
    layers = real_viewer(viewer).layers
    original = layers.save

    def save(path: str, *, selected: bool = False, plugin: str | None = None,
             _writer: Any = None) -> list[str]:
        chosen = list(layers.selection) if selected else list(layers)
        if str(path).lower().endswith(".csv") and chosen and all(map(is_ours, chosen)):
            return write(str(path))
        return original(path, selected=selected, plugin=plugin, _writer=_writer)

    with contextlib.suppress(AttributeError, TypeError, ValueError):
        layers.save = save
