"""Record section of the Embryos panel (issue 27): the current image's gene x stage record and
"Accept record", a thin view over :mod:`..session.records`."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..session import records
from ._base import SessionDock
from ._errors import shows_input_error

#: called terms listed at most (the rest are counted)
SHOWN_TERMS = 8


class RecordSection(QWidget):
    """Gene, stage, number of images and the record's called terms; Accept record."""

    def __init__(self, dock: SessionDock, parent: QWidget | None = None) -> None:
        super().__init__(parent if parent is not None else dock.body)  # never a window
        self.session = dock.session
        self.title = QLabel("Record: –")
        self.title.setWordWrap(True)
        self.terms_label = QLabel("")
        self.terms_label.setWordWrap(True)
        self.accept_button = QPushButton("Accept record")
        self.accept_button.setToolTip(
            "label every image of this gene x stage record at once: the called terms present, "
            "the other predicted terms absent (as your labels; one Ctrl+Z takes it back)")
        self.accept_button.clicked.connect(self.accept)
        row = QHBoxLayout()
        row.addWidget(self.title, 1)
        row.addWidget(self.accept_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.terms_label)
        s = self.session
        for signal in (s.current_changed, s.dataset_changed, s.predictions_changed,
                       s.model_changed, s.labels_changed):  # labels: a store switch
            dock.listen(signal, self.refresh)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        """Show the current image's record (called on every image or prediction change)."""
        record = records.current_record(self.session)
        self.setVisible(record is not None)  # no images: no line taken from the table
        if record is None:
            self.title.setText("Record: –")
            self.terms_label.setText("")
            self.accept_button.setEnabled(False)
            return
        n = len(record.members)
        if record.note:
            self.title.setText(f"Record: this image alone ({record.note})")
        else:
            self.title.setText(f"Record: {record.gene or '–'} · stage {record.stage or '–'} · "
                               f"{n} image{'s' if n != 1 else ''}")
        self.accept_button.setEnabled(record.predicted and self.session.store is not None
                                      and not self.session.store_read_only)
        if not record.predicted:
            self.terms_label.setText("train a model or press Predict to see the record's terms")
            return
        called = record.called
        shown = ", ".join(f"{t} {p:.2f}" for t, p in called[:SHOWN_TERMS])
        more = f" and {len(called) - SHOWN_TERMS} more" if len(called) > SHOWN_TERMS else ""
        left = records.unpredicted(self.session, record)
        self.terms_label.setText(
            (f"called: {shown}{more}" if called else "no term is called present")
            + (f" (not predicted, left as they are: {', '.join(left)})" if left else ""))

    @shows_input_error
    def accept(self) -> None:
        """Write the record's calls as labels of all its images (one batch, one Undo)."""
        n = records.accept_record(self.session)
        self.terms_label.setText(f"{self.terms_label.text()} - accepted: {n} "
                                 f"label{'s' if n != 1 else ''} changed (Ctrl+Z undoes)")
