"""What every dock widget shares: its viewer's session and self-disconnecting signal
connections (a user-fixable problem is shown by :mod:`._errors`)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QToolButton, QVBoxLayout, QWidget

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


class Collapsible(QWidget):
    """A titled section that opens on click: what is rarely used stays one line tall, so a
    tab's main controls fit a 1366x768 laptop without scrolling."""

    def __init__(self, title: str, content: QWidget, expanded: bool = False) -> None:
        super().__init__()
        self.toggle = QToolButton()
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setAutoRaise(True)
        self.content = content
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.toggle)
        layout.addWidget(content)
        self.toggle.toggled.connect(self._show)
        self.toggle.setChecked(expanded)
        self._show(expanded)

    def _show(self, on: bool) -> None:
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.content.setVisible(on)

    def expand(self, on: bool = True) -> None:
        """Open (or close) the section as a click on its title does."""
        self.toggle.setChecked(on)


#: the height a panel docked on its own asks for: napari shares the dock area by size hints,
#: and a scroll area's own hint (a few lines) left Embryos and Annotate 60-90 px tall
PANEL_HEIGHT = 420


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

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        hint = super().sizeHint()
        return QSize(hint.width(), max(hint.height(), PANEL_HEIGHT)) if self.SCROLLS else hint

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt API
        hint = super().minimumSizeHint()
        return QSize(hint.width(), max(hint.height(), 160)) if self.SCROLLS else hint

    def listen(self, signal: Any, slot: Callable) -> None:
        """Connect a session/viewer signal that is disconnected when this widget goes away."""
        signal.connect(slot)
        self._connections.append((signal, slot))
