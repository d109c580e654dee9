"""The Train panel's per-term AUC chart after a CV run (issue 27): the same bars as
``evaluate --report``'s figure (:func:`core.learn.report.draw_auc_bars`), drawn from the
session's train report. A Train run keeps one out-of-fold pass (gene-grouped folds), not
per-split predictions, so each bar is that pass's AUC (:func:`core.learn.metrics.per_term_auc`,
as the table's CV AUC column) with no spread; terms that could not be scored are named below.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from ..core.learn.report import TermAUC, draw_auc_bars
from ..session import MIN_CV_PER_CLASS, TrainReport, steps
from ._base import SessionDock

XLABEL = "cross-validated AUC (out-of-fold, folds by gene)"
#: pixels of chart per term (plus a margin for the axis), so long vocabularies stay readable
ROW_PX, MARGIN_PX, MAX_PX = 16, 70, 1400


def train_in_worker(request: steps.TrainRequest) -> Generator:
    """Training, after importing what the chart needs (off the GUI thread: 0.4-0.5 s)."""
    if request.cross_validate:
        import matplotlib.backends.backend_qtagg  # noqa: F401
        import matplotlib.figure  # noqa: F401
    return (yield from steps.iter_train(request))


def term_aucs(report: TrainReport) -> list[TermAUC]:
    """The report's CV AUC per term (None: not scored), in the vocabulary's order."""
    return [TermAUC(t, report.auc[t], 0.0, 1) if t in report.auc else TermAUC(t, None, None, 0)
            for t in report.counts]


class CvChart(QWidget):
    """AUC per term of the last CV run; built on first use (matplotlib's Qt canvas)."""

    def __init__(self, dock: SessionDock, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = dock.session
        self.canvas: Any = None
        self.figure: Any = None
        self.drawn: list[str] = []
        self.note = QLabel("Train with cross-validated AUC on to see the AUC of every term here.")
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: gray;")
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.addWidget(self.note)
        dock.listen(self.session.train_report_changed, self.refresh)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        """Redraw from the session's train report (hidden without CV figures)."""
        report = self.session.train_report
        if report is None or not report.auc:
            self.drawn = []
            if self.canvas is not None:
                self.canvas.hide()
            if report is not None and report.cv_note:
                self.note.setText(f"no CV AUC chart: {report.cv_note}")
            return
        self._ensure_canvas()
        aucs = term_aucs(report)
        self.figure.clear()
        self.drawn = draw_auc_bars(self.figure.add_subplot(), aucs, xlabel=XLABEL)
        self.figure.tight_layout()
        self.canvas.setMinimumHeight(min(MAX_PX, MARGIN_PX + ROW_PX * len(self.drawn)))
        self.canvas.show()
        self.canvas.draw_idle()
        missing = [a.term for a in aucs if a.mean is None]
        self.note.setText(
            f"not scored (a term needs {MIN_CV_PER_CLASS} present and {MIN_CV_PER_CLASS} "
            "absent labels, spread over genes so that every fold can learn it): "
            f"{', '.join(missing)}" if missing else "")

    def _ensure_canvas(self) -> None:
        if self.canvas is not None:
            return
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.6, 2.4))
        self.canvas = FigureCanvasQTAgg(self.figure)
        self._layout.insertWidget(0, self.canvas)
