"""The whole annotator in one dock: the current image's terms on top, the panels as tabs.

Sized for a laptop: every tab scrolls, so the main window's minimum size stays small, and
the dock asks for a third of a full-HD screen, so the embryo keeps most of the canvas.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QSplitter, QTabWidget, QVBoxLayout

from ._base import SessionDock, scrolling
from .annotate import ModelSection
from .embryos import EmbryosWidget
from .explain import ExplainWidget
from .terms import TermsSection
from .train import TrainWidget

DOCK_WIDTH = 440


class AnnotatorWidget(SessionDock):
    """Terms of the current image (always visible) above tabs: Embryos, Model, Explain, Train."""

    SCROLLS = False  # the splitter fills the dock; each tab scrolls on its own

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.terms = TermsSection(self)
        self.model = ModelSection(self)
        self.embryos = EmbryosWidget(napari_viewer)
        self.explain = ExplainWidget(napari_viewer)
        self.train = TrainWidget(napari_viewer)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.setElideMode(Qt.TextElideMode.ElideNone)  # "Model" was clipped to "Mo…"
        self.tabs.tabBar().setExpanding(False)
        for widget, name in ((self.embryos, "Embryos"), (scrolling(self.model), "Model"),
                             (self.explain, "Explain"), (self.train, "Train")):
            self.tabs.addTab(widget, name)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.terms)
        splitter.addWidget(self.tabs)
        splitter.setChildrenCollapsible(False)
        splitter.setStretchFactor(0, 2)  # the tabs' main controls fit a 768 px screen
        splitter.setStretchFactor(1, 3)
        splitter.setSizes([240, 360])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(splitter)
        self.setMinimumWidth(320)
        self.listen(self.session.term_selected, lambda *_: self.tabs.setCurrentWidget(
            self.tabs.widget(2)))

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(DOCK_WIDTH, 600)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(320, 300)

    # ------------------------------------------------------------------ demo
    def train_and_explain(self) -> Any:
        """Train on the current labels (CV off, fast) in the background, then show the top
        term's Grad-CAM of the current image: what `ish-annotator demo` shows at start."""
        self.train.cv_check.setChecked(False)
        worker = self.train.train()
        if worker is None:
            return None

        def explain(outcome: str) -> None:
            self.train.runner.finished.disconnect(explain)
            self.train.cv_check.setChecked(True)
            top = self.session.model.top_terms(self.session.index, 1)
            if outcome == "done" and top:
                self.explain.select_term(top[0][0])
                self.tabs.setCurrentIndex(2)

        self.train.runner.finished.connect(explain)
        return worker
