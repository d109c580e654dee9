"""The per-term list of the current image (:class:`TermsSection`): label, probability bar,
ensemble spread, tooltips naming each annotator's label. Long lists stay cheap: the label
column is plain items with a combo-box editor opened on click (:class:`LabelDelegate`), and
probabilities are painted by :class:`ProbabilityDelegate`, not widgets per cell."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHeaderView,
    QLabel,
    QStyledItemDelegate,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.learn.decision import CALL_THRESHOLD, calls
from ..core.utils.errors import InputError
from ..session import UNCERTAIN_BAND, annotators
from ._base import SessionDock
from ._errors import report_error
from ._viewer_binding import forward_annotation_keys

LABEL_TEXT = {None: "unknown", 1: "present", 0: "absent"}
LABEL_VALUE = {"unknown": None, "present": 1, "absent": 0}
UNCERTAIN_COLOUR = QColor(110, 85, 25)
READ_ONLY = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
LABEL_FLAGS = READ_ONLY | Qt.ItemFlag.ItemIsEditable


PROBABILITY_ROLE = Qt.ItemDataRole.UserRole


def _bar_colour(p: float) -> str:
    """Blue for absent, amber when uncertain, green for present."""
    if abs(p - CALL_THRESHOLD) < UNCERTAIN_BAND:
        return "#d9a227"
    return "#3fa34d" if calls(p) else "#4a6fa5"


#: probability column width once an ensemble's spread is shown
SPREAD_WIDTH = 112


class ProbabilityDelegate(QStyledItemDelegate):
    """Draws a term's probability as a coloured bar under its number (no widget per row)."""

    def paint(self, painter: Any, option: Any, index: Any) -> None:
        p = index.data(PROBABILITY_ROLE)
        if p is not None:
            rect = option.rect.adjusted(2, 3, -2, -3)
            painter.save()
            painter.fillRect(rect, QColor(60, 60, 60))
            rect.setWidth(int(rect.width() * float(p)))
            painter.fillRect(rect, QColor(_bar_colour(float(p))))
            painter.restore()
        super().paint(painter, option, index)


class LabelDelegate(QStyledItemDelegate):
    """The label column: plain text per row, a three-state combo box only while one is being
    edited (73 live combo boxes cost 0.1-1 s of GUI time whenever a vocabulary appears)."""

    def displayText(self, value: Any, locale: Any) -> str:  # noqa: N802 - Qt API
        return f"{value}  ▾" if value else ""  # looks like the combo box a click opens

    def createEditor(self, parent: Any, option: Any, index: Any) -> QComboBox:
        editor = QComboBox(parent)
        editor.addItems(list(LABEL_VALUE))
        editor.activated.connect(lambda _i: self._commit(editor))
        return editor

    def _commit(self, editor: QComboBox) -> None:
        self.commitData.emit(editor)
        self.closeEditor.emit(editor)

    def setEditorData(self, editor: QComboBox, index: Any) -> None:
        editor.setCurrentText(index.data() or "unknown")

    def setModelData(self, editor: QComboBox, model: Any, index: Any) -> None:
        if editor.currentText() != index.data():
            model.setData(index, editor.currentText())


class TermsSection(QWidget):
    """The current image's terms: probability bar, the call, label (click: Grad-CAM)."""

    def __init__(self, dock: SessionDock) -> None:
        super().__init__()
        self.session = s = dock.session
        self._filling = False
        self.image_label = QLabel("")
        self.image_label.setStyleSheet("font-weight: bold;")
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["key", "term", "probability", "pred.", "label"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeaderItem(2).setToolTip(
            "the term ensemble's probability (the model named in the Model tab)")
        self.table.setMinimumHeight(110)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        triggers = QAbstractItemView.EditTrigger  # only label cells are editable (item flags)
        self.table.setEditTriggers(triggers.CurrentChanged | triggers.SelectedClicked
                                   | triggers.DoubleClicked | triggers.EditKeyPressed)
        header = self.table.horizontalHeader()  # fixed widths: no re-measuring on each update
        header.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        for column, width in ((0, 34), (2, 84), (3, 46), (4, 104)):
            self.table.setColumnWidth(column, width)
        self.table.setItemDelegateForColumn(2, ProbabilityDelegate(self.table))
        self.table.setItemDelegateForColumn(4, LabelDelegate(self.table))
        self.table.itemChanged.connect(self._item_changed)
        self.table.cellClicked.connect(self._cell_clicked)
        forward_annotation_keys(self.table, s)  # 1-0, n, u, Shift+N... with the list focused
        hint = QLabel("Keys: 1-9, 0 cycle the first ten terms (unknown → present → absent); "
                      "n/p step; u next uncertain; Shift+N next to label; Ctrl+Z undo. Called: p ≥ "
                      f"{CALL_THRESHOLD}; amber: uncertain (|p - {CALL_THRESHOLD}| < "
                      f"{UNCERTAIN_BAND}).")
        hint.setWordWrap(True)
        hint.setStyleSheet("color: gray;")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.image_label)
        layout.addWidget(self.table, 1)
        layout.addWidget(hint)
        for signal in (s.current_changed, s.vocabulary_changed, s.predictions_changed):
            dock.listen(signal, self._refresh)
        dock.listen(s.labels_changed, self._labels_changed)
        self._refresh()

    def _labels_changed(self, indices: Any) -> None:
        if not indices or self.session.index in indices:
            self._refresh()

    def _refresh(self, *_: Any) -> None:
        """Update the rows in place (items and combos are made once per vocabulary size):
        a refresh after training costs a few milliseconds, not a rebuild."""
        s = self.session
        self._filling = True
        path = s.current_path
        self.image_label.setText(f"{s.index + 1}/{s.n_images}: {path.name}" if path else "")
        probs = s.model.probabilities_for()
        spread = s.model.spread_for() if probs else {}
        if spread and self.table.columnWidth(2) < SPREAD_WIDTH:
            self.table.setColumnWidth(2, SPREAD_WIDTH)  # room for "0.72 ± 0.05"
        called = s.model.called_for()
        labels = s.labels.labels_for() if path is not None else {}
        others = self._annotator_tips()
        table = self.table
        table.setUpdatesEnabled(False)
        try:
            if table.rowCount() != len(s.vocabulary):
                self._make_rows(len(s.vocabulary))
            for r, term in enumerate(s.vocabulary):
                key, name, prob, pred = (table.item(r, c) for c in range(4))
                name.setText(term)
                p = probs.get(term)
                prob.setData(PROBABILITY_ROLE, p)
                sd = spread.get(term)
                prob.setText("–" if p is None else f"{p:.2f}" if sd is None
                             else f"{p:.2f} ± {sd:.2f}")
                prob.setToolTip("" if sd is None else "± std of the fine-tuned ensemble's "
                                "members for this term")
                call = called.get(term)
                uncertain = p is not None and abs(p - CALL_THRESHOLD) < UNCERTAIN_BAND
                pred.setText(("" if call is None else ("yes" if call else "no"))
                             + ("?" if uncertain else ""))
                for item in (key, name):
                    item.setBackground(UNCERTAIN_COLOUR if uncertain else QBrush())
                name.setToolTip(("uncertain (probability near 0.5): please check this term"
                                 if uncertain else
                                 "click to show its Grad-CAM map in the Explain panel")
                                + (f"\nlabels: {others[term]}" if term in others else ""))
                label = table.item(r, 4)
                label.setFlags(LABEL_FLAGS if path is not None else READ_ONLY)
                text = LABEL_TEXT[labels.get(term)] if path is not None else ""
                if label.text() != text:
                    label.setText(text)
        finally:
            table.setUpdatesEnabled(True)
            self._filling = False

    def _annotator_tips(self) -> dict[str, str]:
        """Each annotator's label per term of this image, once the store has several."""
        s = self.session
        if s.store is None or s.current_path is None or len(s.store.annotators()) < 2:
            return {}
        try:
            return annotators.term_tooltips(s)
        except InputError:
            return {}

    def term_tooltip(self, term: str) -> str:
        """The hover text of a term's name (for tests and scripts)."""
        return self.table.item(self.session.vocabulary.index(term), 1).toolTip()

    def _make_rows(self, n: int) -> None:
        table = self.table
        old = table.rowCount()
        table.setRowCount(n)
        for r in range(old, n):
            for c in range(5):
                item = QTableWidgetItem("")
                item.setFlags(READ_ONLY)
                if c != 1:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                table.setItem(r, c, item)
            table.item(r, 0).setText(str((r + 1) % 10) if r < 10 else "")
            table.item(r, 3).setToolTip(f"called present when the calibrated probability is "
                                        f"at least {CALL_THRESHOLD} (the rule the canvas, "
                                        "Gallery and 'predict' calls use)")
            table.item(r, 4).setToolTip("click to choose unknown, present or absent")

    def _item_changed(self, item: QTableWidgetItem) -> None:
        """A label chosen in the list (the delegate's combo box) goes to the store."""
        if self._filling or item.column() != 4 or item.row() >= len(self.session.vocabulary):
            return
        term = self.session.vocabulary[item.row()]
        try:
            self.session.labels.set_label(term, LABEL_VALUE[item.text()])
        except InputError as exc:
            report_error(exc)
            self._refresh()  # the list shows what is stored

    def choose_label(self, term: str, text: str) -> None:
        """Pick a label in the term list as a user does: open the row's editor, choose ``text``
        (for tests and scripts)."""
        item = self.table.item(self.session.vocabulary.index(term), 4)
        self.table.setCurrentItem(item)
        self.table.editItem(item)
        editor = self.table.indexWidget(self.table.indexFromItem(item))
        if editor is None:
            raise RuntimeError(f"the label of {term!r} cannot be edited now")
        editor.setCurrentText(text)
        editor.activated.emit(editor.currentIndex())

    def _cell_clicked(self, row: int, column: int) -> None:
        if column in (0, 1, 3) and row < len(self.session.vocabulary):
            self.session.term_selected.emit(self.session.vocabulary[row])

    # ------------------------------------------------------------------ for tests/scripts
    def row_values(self) -> list[tuple[str, str, str, str]]:
        """(term, probability text, predicted, label) per row, as displayed."""
        out = []
        for r in range(self.table.rowCount()):
            out.append((self.table.item(r, 1).text(), self.table.item(r, 2).text(),
                        self.table.item(r, 3).text(), self.table.item(r, 4).text()))
        return out
