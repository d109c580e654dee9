"""What every dock widget shares: its viewer's session and self-disconnecting signal
connections (a user-fixable problem is shown by :mod:`._errors`)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

from ._napari_private import real_viewer
from ._registry import get_session


def _disconnect_all(connections: list[tuple[Any, Callable]], *_: Any) -> None:
    for signal, slot in connections:
        with contextlib.suppress(Exception):
            signal.disconnect(slot)
    connections.clear()


def scrolling(widget: QWidget) -> QScrollArea:
    """``widget`` in a vertical scroll area: a tall panel never sets the window's minimum height."""
    area = QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    return area


class SessionDock(QWidget):
    """A dock widget over its viewer's session; :meth:`listen` connections end with it.

    Subclasses lay out their controls in :attr:`body`, which scrolls (``SCROLLS``), so any
    number of panels fits a laptop screen.
    """

    SCROLLS = True

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.body: QWidget = self
        if self.SCROLLS:
            self.body = QWidget()
            outer = QVBoxLayout(self)
            outer.setContentsMargins(0, 0, 0, 0)
            outer.addWidget(scrolling(self.body))
        self.viewer = real_viewer(napari_viewer)
        self.session = get_session(napari_viewer)
        self._connections: list[tuple[Any, Callable]] = []
        self.destroyed.connect(functools.partial(_disconnect_all, self._connections))

    def listen(self, signal: Any, slot: Callable) -> None:
        """Connect a session/viewer signal that is disconnected when this widget goes away."""
        signal.connect(slot)
        self._connections.append((signal, slot))
