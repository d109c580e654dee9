"""The Train panel's per-term AUC chart after a CV run (issue 27): the same bars as
``evaluate --report``'s figure (:func:`core.learn.report.draw_auc_bars`), drawn from the
session's train report. A Train run makes one out-of-fold pass (gene-grouped folds): each bar
is that pass's AUC (:func:`core.learn.metrics.per_term_auc`, as the table's CV AUC column) and
its whisker the std over the folds of each fold's own AUC
(:func:`core.learn.folds.fold_auc_spread`; none where fewer than two folds could score the
term); terms that could not be scored are named below.

The chart is drawn in the training worker (matplotlib's Agg backend, :func:`render_chart`),
so the GUI thread only shows a finished picture: drawing 70 bars there took 0.2 s of freeze.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from ..core.learn.report import TermAUC, draw_auc_bars
from ..session import MIN_CV_PER_CLASS, TrainReport, steps
from ._base import SessionDock

XLABEL = "CV AUC (out-of-fold)\n± std over gene folds"  # short lines: the chart is 360 px
#: pixels of chart per term (plus a margin for the axis), so long vocabularies stay readable
ROW_PX, MARGIN_PX, MAX_PX = 16, 70, 1400
WIDTH_PX, DPI = 360, 100


@dataclass(frozen=True)
class RenderedChart:
    """A chart drawn off the GUI thread: the figure (kept for inspection), its pixels and
    the terms drawn, lowest AUC first."""

    report: TrainReport
    figure: Any
    rgba: np.ndarray  # (height, width, 4) uint8
    drawn: list[str]


def train_in_worker(request: steps.TrainRequest) -> Generator:
    """Training, then (with CV) its AUC chart drawn here, off the GUI thread."""
    result = yield from steps.iter_train(request)
    return result, (render_chart(result.report) if request.cross_validate else None)


def term_aucs(report: TrainReport) -> list[TermAUC]:
    """The report's CV AUC per term (None: not scored), in the vocabulary's order."""
    return [TermAUC(t, report.auc[t], report.auc_std.get(t, 0.0), 1) if t in report.auc
            else TermAUC(t, None, None, 0) for t in report.counts]


def render_chart(report: TrainReport | None) -> RenderedChart | None:
    """Draw the AUC bars with matplotlib's Agg backend (any thread); None without CV AUCs."""
    if report is None or not report.auc:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    aucs = term_aucs(report)
    n = sum(a.mean is not None for a in aucs)
    height = min(MAX_PX, MARGIN_PX + ROW_PX * n)
    figure = Figure(figsize=(WIDTH_PX / DPI, height / DPI), dpi=DPI)
    canvas = FigureCanvasAgg(figure)
    drawn = draw_auc_bars(figure.add_subplot(), aucs, xlabel=XLABEL)
    figure.tight_layout()
    canvas.draw()
    return RenderedChart(report, figure, np.asarray(canvas.buffer_rgba()).copy(), drawn)


class CvChart(QWidget):
    """AUC per term of the last CV run, shown as the picture the worker drew."""

    def __init__(self, dock: SessionDock, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = dock.session
        self.canvas: QLabel | None = None
        self.figure: Any = None
        self.drawn: list[str] = []
        self.pending: RenderedChart | None = None
        self.note = QLabel("Train with cross-validated AUC on to see the AUC of every term here.")
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: gray;")
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.addWidget(self.note)
        dock.listen(self.session.train_report_changed, self.refresh)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        """Show the chart of the session's train report (hidden without CV figures)."""
        report = self.session.model.train_report
        if report is None or not report.auc:
            self.drawn = []
            if self.canvas is not None:
                self.canvas.hide()
            if report is not None and report.cv_note:
                self.note.setText(f"no CV AUC chart: {report.cv_note}")
            return
        chart = self.pending if self.pending is not None and self.pending.report is report \
            else render_chart(report)  # a report from elsewhere: drawn here
        self.pending = None
        self._show(chart)
        missing = [t for t in report.counts if t not in report.auc]
        self.note.setText(
            f"not scored (a term needs {MIN_CV_PER_CLASS} present and {MIN_CV_PER_CLASS} "
            "absent labels, spread over genes so that every fold can learn it): "
            f"{', '.join(missing)}" if missing else "")

    def _show(self, chart: RenderedChart) -> None:
        if self.canvas is None:
            self.canvas = QLabel()
            self.canvas.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
            self._layout.insertWidget(0, self.canvas)
        h, w = chart.rgba.shape[:2]
        image = QImage(chart.rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()
        self.canvas.setPixmap(QPixmap.fromImage(image))
        self.canvas.setMinimumHeight(h)
        self.figure, self.drawn = chart.figure, chart.drawn
        self.canvas.show()
