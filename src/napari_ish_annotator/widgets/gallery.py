"""Gallery dock (Plugins > ISH Annotator > Gallery): many embryos at once for one term.

A thin view: which images and in which order is :func:`..session.review.gallery_order`, a mark
is :meth:`..session.labels.SessionLabels.set_labels` (one undoable batch), a call is
:mod:`..core.learn.decision`'s. The grid is a ``QListView`` in icon mode over a list model
that only knows indices (virtualised: Qt asks for the visible cells only); previews are made
in a napari worker, visible ones first, through :mod:`..core.data.thumbnails` (vetted
decoding, cached on disk by content hash).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import QAbstractListModel, QModelIndex, QSize, Qt
from qtpy.QtGui import QColor, QIcon, QImage, QKeySequence, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QListView,
    QPushButton,
    QVBoxLayout,
)

from ..core.data.thumbnails import THUMB_SIZE, iter_thumbnails
from ..core.learn.decision import calls
from ..core.utils.errors import InputError
from ..session.review import SORTS, GalleryFilter, gallery_order, term_labels, term_probabilities
from ._base import SessionDock
from ._errors import report_error

LABEL_WORD = {1: "present", 0: "absent", -1: "unknown"}
ANY = "any"
#: border colours: called present / not called / no prediction
CALL_COLOUR = {True: QColor("#3fa34d"), False: QColor("#4a6fa5"), None: QColor("#777777")}


class GalleryModel(QAbstractListModel):
    """Rows = image indices in Gallery order; previews arrive from the worker."""

    def __init__(self) -> None:
        super().__init__()
        self.order = np.zeros(0, dtype=np.int64)
        self.p = np.zeros(0)
        self.labels = np.zeros(0, dtype=np.int8)
        self.names: list[str] = []
        self.icons: dict[int, QIcon] = {}
        self.blank = QIcon(_pixmap(np.full((THUMB_SIZE // 2, THUMB_SIZE, 3), 40, np.uint8)))

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self.order)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self.order):
            return None
        i = int(self.order[index.row()])
        p = self.p[i] if i < len(self.p) else np.nan
        if role == Qt.ItemDataRole.DisplayRole:
            return (f"{p:.2f} " if np.isfinite(p) else "– ") + LABEL_WORD[int(self.labels[i])]
        if role == Qt.ItemDataRole.DecorationRole:
            return self.icons.get(i, self.blank)
        if role == Qt.ItemDataRole.BackgroundRole:
            return CALL_COLOUR[bool(calls(p)) if np.isfinite(p) else None]
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{self.names[i]}\np = {p:.3f}\nlabel: {LABEL_WORD[int(self.labels[i])]}"
        if role == Qt.ItemDataRole.UserRole:
            return i
        return None

    def show(self, order: np.ndarray, p: np.ndarray, labels: np.ndarray, names: list[str]) -> None:
        self.beginResetModel()
        self.order, self.p, self.labels, self.names = order, p, labels, names
        self.endResetModel()

    def set_icon(self, i: int, icon: QIcon) -> None:
        self.icons[i] = icon
        rows = np.flatnonzero(self.order == i)
        for r in rows:
            ix = self.index(int(r))
            self.dataChanged.emit(ix, ix, [Qt.ItemDataRole.DecorationRole])


class GalleryView(QListView):
    """The grid; P / A / U mark the selection and Ctrl+Z undoes (an item view takes letter
    keys for its type-ahead search before any shortcut sees them, so they are handled here)."""

    def __init__(self, keys: dict[int, Any], undo: Any) -> None:
        super().__init__()
        self.keys, self.undo = keys, undo

    def keyPressEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        mods = event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier
        if event.matches(QKeySequence.StandardKey.Undo):
            self.undo()
        elif mods == Qt.KeyboardModifier.NoModifier and event.key() in self.keys:
            self.keys[event.key()]()
        else:
            super().keyPressEvent(event)


def _pixmap(rgb: np.ndarray) -> QPixmap:
    rgb = np.ascontiguousarray(rgb)
    h, w = rgb.shape[:2]
    image = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(image.copy())  # copy: the numpy buffer may go


class GalleryWidget(SessionDock):
    """Embryo previews for one term: sort, filter, select many, mark them in one batch."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        s = self.session
        self._worker: Any = None
        self.term_combo, self.sort_combo = QComboBox(), QComboBox()
        self.sort_combo.addItems(list(SORTS))
        self.sort_combo.setToolTip(
            "label contradicts the model: |label - p| with the last Train's out-of-fold p (the "
            "embryo's gene held out), as 'ish-annotator suspicious' ranks; images labelled "
            "since use the current p")
        self.gene_combo, self.stage_combo, self.labelled_combo = QComboBox(), QComboBox(), QComboBox()
        self.labelled_combo.addItems([ANY, "labelled", "unlabelled"])
        self.annotator_combo = QComboBox()
        self.annotator_combo.setToolTip("only embryos this annotator labelled for the term")
        self.model = GalleryModel()
        keys = {Qt.Key.Key_P: 1, Qt.Key.Key_A: 0, Qt.Key.Key_U: None}
        self.view = GalleryView({k: (lambda v=v: self.mark(v)) for k, v in keys.items()},
                                self.undo)
        self.view.setModel(self.model)
        self.view.setViewMode(QListView.ViewMode.IconMode)
        self.view.setResizeMode(QListView.ResizeMode.Adjust)
        self.view.setUniformItemSizes(True)
        self.view.setLayoutMode(QListView.LayoutMode.Batched)
        self.view.setBatchSize(200)
        self.view.setMovement(QListView.Movement.Static)
        # embryos are about twice as wide as high: a grid cell of that shape wastes no rows
        self.view.setIconSize(QSize(THUMB_SIZE, THUMB_SIZE * 2 // 3))
        self.view.setGridSize(QSize(THUMB_SIZE + 12, THUMB_SIZE * 2 // 3 + 30))
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.setMinimumHeight(300)
        self.view.doubleClicked.connect(self._show_embryo)
        self.buttons = {}
        row = QHBoxLayout()
        for word, value, key in (("present", 1, "P"), ("absent", 0, "A"), ("unknown", None, "U")):
            b = QPushButton(f"{word} ({key})")
            b.setToolTip(f"mark the selected embryos {word} for the term (key {key}); "
                         "Ctrl+Z undoes the whole mark")
            b.clicked.connect(lambda _=False, v=value: self.mark(v))
            self.buttons[word] = b
            row.addWidget(b)
        self.status = QLabel("")
        self.status.setStyleSheet("color: gray;")
        grid = QGridLayout()
        for r, (text, combo) in enumerate((("term", self.term_combo), ("sort", self.sort_combo),
                                           ("gene", self.gene_combo), ("stage", self.stage_combo),
                                           ("labels", self.labelled_combo),
                                           ("labelled by", self.annotator_combo))):
            grid.addWidget(QLabel(text), r // 2, 2 * (r % 2))
            grid.addWidget(combo, r // 2, 2 * (r % 2) + 1)
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(6)  # a narrow dock keeps every combo box visible
            combo.currentTextChanged.connect(self.refresh)
        layout = QVBoxLayout(self.body)
        layout.addLayout(grid)
        layout.addWidget(self.view, 1)
        layout.addLayout(row)
        layout.addWidget(self.status)
        for signal in (s.dataset_changed, s.vocabulary_changed):
            self.listen(signal, self._reset_choices)
        self.listen(s.predictions_changed, self.refresh)
        self.listen(s.labels_changed, self._labels_changed)
        self.listen(s.table_selected, self.select_images)
        self._reset_choices()

    # ------------------------------------------------------------------ state -> view
    def _reset_choices(self, *_: Any) -> None:
        s = self.session
        combos = ((self.term_combo, list(s.vocabulary), False),
                  (self.gene_combo, sorted({g for g in s.genes if g}), True),
                  (self.stage_combo, sorted({x for x in s.stages if x}), True),
                  (self.annotator_combo, list(s.store.annotators()) if s.store else [], True))
        for combo, items, with_any in combos:
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(([ANY] if with_any else []) + items)
            if current in items:
                combo.setCurrentText(current)
            combo.blockSignals(False)
        self.model.icons.clear()
        self.refresh()

    def current_filter(self) -> GalleryFilter:
        pick = {ANY: None}
        return GalleryFilter(gene=pick.get(self.gene_combo.currentText(),
                                           self.gene_combo.currentText() or None),
                             stage=pick.get(self.stage_combo.currentText(),
                                            self.stage_combo.currentText() or None),
                             labelled=pick.get(self.labelled_combo.currentText(),
                                               self.labelled_combo.currentText()),
                             annotator=pick.get(self.annotator_combo.currentText(),
                                                self.annotator_combo.currentText() or None))

    def refresh(self, *_: Any) -> None:
        """Order, filter and show the images for the chosen term; previews follow."""
        s, term = self.session, self.term_combo.currentText()
        if not term or s.n_images == 0:
            self.model.show(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0, np.int8), [])
            self.status.setText("open embryo images first" if s.n_images == 0 else "")
            return
        try:
            order = gallery_order(s, term, self.sort_combo.currentText(), self.current_filter())
        except InputError as exc:
            report_error(exc)
            return
        self.model.show(order, term_probabilities(s, term), term_labels(s, term),
                        [p.name for p in s.paths])
        self.status.setText(f"{len(order)} of {s.n_images} embryos; colour: called present "
                            "(green) or not (blue) by p ≥ 0.5")
        self._start_thumbnails(order)

    def _labels_changed(self, indices: Any) -> None:
        term = self.term_combo.currentText()
        if term and term in self.session.vocabulary:
            self.model.labels = term_labels(self.session, term)
            self.model.dataChanged.emit(self.model.index(0), self.model.index(
                max(0, self.model.rowCount() - 1)))

    def _start_thumbnails(self, order: np.ndarray) -> None:
        from napari.qt.threading import thread_worker

        todo = [int(i) for i in order if int(i) not in self.model.icons]
        if self._worker is not None:
            self._worker.quit()
            self._worker = None
        if not todo:
            return
        from ..core.features.cache import default_cache_dir

        paths, cache = list(self.session.paths), self.session.cache_dir or default_cache_dir()
        worker = thread_worker(iter_thumbnails, start_thread=False)(paths, todo, cache)
        worker.yielded.connect(self._thumb_ready)
        worker.finished.connect(lambda w=worker: self._worker_done(w))
        self._worker = worker
        worker.start()

    def _worker_done(self, worker: Any) -> None:
        if self._worker is worker:
            self._worker = None

    def _thumb_ready(self, item: tuple[int, Any]) -> None:
        i, rgb = item
        if rgb is not None and i < self.session.n_images:
            self.model.set_icon(i, QIcon(_pixmap(rgb)))

    @property
    def loading(self) -> bool:
        """Whether previews are still being made (for tests and benchmarks)."""
        return self._worker is not None

    # ------------------------------------------------------------------ user actions
    def selected_images(self) -> list[int]:
        rows = sorted(ix.row() for ix in self.view.selectionModel().selectedIndexes())
        return [int(self.model.order[r]) for r in rows]

    def mark(self, value: int | None) -> None:
        """Label the selected embryos ``value`` for the term, as one undoable batch."""
        images, term = self.selected_images(), self.term_combo.currentText()
        if not images or not term:
            return
        try:
            n = self.session.labels.set_labels(term, value, images)
        except InputError as exc:
            report_error(exc)
            return
        word = {1: "present", 0: "absent", None: "unknown"}[value]
        self.status.setText(f"marked {n} embryo(s) {word} for {term} (Ctrl+Z undoes it)")

    def undo(self) -> None:
        try:
            if not self.session.labels.undo():
                self.status.setText("nothing to undo")
        except InputError as exc:
            report_error(exc)

    def _show_embryo(self, index: QModelIndex) -> None:
        if index.isValid():
            self.session.set_index(int(self.model.order[index.row()]))

    def select_images(self, images: Any) -> None:
        """Select these images where the grid shows them (the embryo table layer's picks)."""
        from qtpy.QtCore import QItemSelection, QItemSelectionModel

        where = {int(i): r for r, i in enumerate(self.model.order)}
        selection = QItemSelection()
        for i in images:
            r = where.get(int(i))
            if r is not None:
                selection.select(self.model.index(r), self.model.index(r))
        self.view.selectionModel().select(selection,
                                          QItemSelectionModel.SelectionFlag.ClearAndSelect)
