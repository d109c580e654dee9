"""Embryos panel: open images, folders or a manifest and browse them in a sortable table."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import InputError
from ._session import get_session, real_viewer
from ._worker import TaskRunner, report_error

COLUMNS = ("#", "image", "gene", "stage", "labelled", "top predicted")


class _NumberItem(QTableWidgetItem):
    """Sorts numerically (Qt sorts display text otherwise)."""

    def __lt__(self, other: QTableWidgetItem) -> bool:
        a, b = self.data(Qt.UserRole + 1), other.data(Qt.UserRole + 1)
        if a is None or b is None:
            return super().__lt__(other)
        return a < b


class EmbryosWidget(QWidget):
    """Lists every open image (name, gene, stage, #labelled terms, top predictions)."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = real_viewer(napari_viewer)
        self.session = get_session(napari_viewer)
        self._updating = False
        # (dataset generation, vocabulary) the label counts were last filled for
        self._counts_for: tuple | None = None
        self._blank_predictions_for: int | None = None  # generation shown without predictions

        self.open_files_button = QPushButton("Images…")
        self.open_folder_button = QPushButton("Folder…")
        self.open_manifest_button = QPushButton("Manifest…")
        for b, tip in ((self.open_files_button, "open image files"),
                       (self.open_folder_button, "open every image in a folder"),
                       (self.open_manifest_button, "open a manifest CSV (image, terms, stage, gene)")):
            b.setToolTip(tip)
        self.open_files_button.clicked.connect(self._choose_files)
        self.open_folder_button.clicked.connect(self._choose_folder)
        self.open_manifest_button.clicked.connect(self._choose_manifest)
        open_row = QHBoxLayout()
        open_row.addWidget(QLabel("Open:"))
        for b in (self.open_files_button, self.open_folder_button, self.open_manifest_button):
            open_row.addWidget(b)

        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("filter by image, gene, stage or term…")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.textChanged.connect(self._apply_filter)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(220)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        header.setStretchLastSection(True)
        self.table.itemSelectionChanged.connect(self._row_selected)

        self.runner = TaskRunner()  # opening thousands of files: headers and hashes off the GUI
        self.runner.started.connect(lambda: self._busy(True))
        self.runner.finished.connect(lambda *_: self._busy(False))

        self.info_label = QLabel("Open images, a folder or a manifest CSV to start.")
        self.info_label.setWordWrap(True)
        self.skipped_label = QLabel("")
        self.skipped_label.setWordWrap(True)
        self.skipped_label.setStyleSheet("color: #e0a040;")

        self.store_label = QLabel("labels: –")
        self.store_label.setWordWrap(True)
        self.store_button = QPushButton("Label file…")
        self.store_button.setToolTip("store labels in another SQLite file")
        self.store_button.clicked.connect(self._choose_store)
        self.import_button = QPushButton("Import manifest labels")
        self.import_button.clicked.connect(self._import_labels)
        self.export_labels_button = QPushButton("Export labels…")
        self.export_labels_button.setToolTip("write a manifest CSV whose terms column holds the present labels")
        self.export_labels_button.clicked.connect(self._export_labels)
        self.export_pred_button = QPushButton("Export predictions…")
        self.export_pred_button.setToolTip("CSV with an image column and one probability column per term")
        self.export_pred_button.clicked.connect(self._export_predictions)
        self.annotator_edit = QLineEdit()
        self.annotator_edit.setPlaceholderText("annotator")
        self.annotator_edit.setToolTip("your name: labels are stored per annotator (with undo "
                                       "and history), so several people's labels can be combined")
        self.annotator_edit.editingFinished.connect(self._annotator_changed)
        store_row = QHBoxLayout()
        store_row.addWidget(QLabel("Annotator"))
        store_row.addWidget(self.annotator_edit)
        store_row.addWidget(self.store_button)
        store_row.addWidget(self.import_button)
        export_row = QHBoxLayout()
        export_row.addWidget(self.export_labels_button)
        export_row.addWidget(self.export_pred_button)

        nav = QHBoxLayout()
        self.prev_button = QPushButton("◀ Previous (p)")
        self.next_button = QPushButton("Next (n) ▶")
        self.prev_button.clicked.connect(lambda: self.session.step(-1))
        self.next_button.clicked.connect(lambda: self.session.step(+1))
        nav.addWidget(self.prev_button)
        nav.addWidget(self.next_button)

        layout = QVBoxLayout(self)
        layout.addLayout(open_row)
        layout.addWidget(self.runner)
        layout.addWidget(self.info_label)
        layout.addWidget(self.skipped_label)
        layout.addWidget(self.filter_edit)
        layout.addWidget(self.table, 1)
        layout.addLayout(nav)
        layout.addWidget(self.store_label)
        layout.addLayout(store_row)
        layout.addLayout(export_row)

        s = self.session
        s.dataset_changed.connect(self._rebuild)
        s.labels_changed.connect(self._update_labels)
        s.vocabulary_changed.connect(self._vocabulary_changed)
        s.predictions_changed.connect(self._predictions_changed)
        s.current_changed.connect(self._select_current)
        self.destroyed.connect(lambda *_: self._disconnect(s))
        if s.n_images:
            self._rebuild()
            self._select_current(s.index)

    def _disconnect(self, s: Any) -> None:
        for sig, slot in ((s.dataset_changed, self._rebuild), (s.labels_changed, self._update_labels),
                          (s.vocabulary_changed, self._vocabulary_changed),
                          (s.predictions_changed, self._predictions_changed),
                          (s.current_changed, self._select_current)):
            with contextlib.suppress(Exception):
                sig.disconnect(slot)

    # ------------------------------------------------------------------ opening
    def open_paths(self, paths: list[str | Path], store_path: str | Path | None = None,
                   background: bool = False) -> Any:
        """Open inputs into the session; errors become notifications.

        In the foreground (scripts, tests) returns success. With ``background`` (the Open
        buttons) image headers and content hashes are read in a worker with progress and
        Cancel, so a folder of thousands of images never freezes the viewer; returns the worker.
        """
        if not background:
            try:
                self.session.open(paths, store_path=store_path)
            except InputError as exc:
                report_error(exc)
                return False
            self._report_pending()
            return True
        return self.runner.start(self.session.iter_open, list(paths), store_path,
                                 on_done=self._opened, message="opening…", done_message="",
                                 needs_torch=False)

    def _opened(self, opened: dict) -> None:
        self.session.apply_open(opened)
        self._report_pending()

    def _report_pending(self) -> None:
        err = self.session.take_pending_error()
        if err is not None:
            report_error(err)

    def _busy(self, busy: bool) -> None:
        for b in (self.open_files_button, self.open_folder_button, self.open_manifest_button,
                  self.store_button, self.import_button):
            b.setEnabled(not busy)

    def _choose_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self, "Open images", "", "Images (*.png *.jpg *.jpeg *.tif *.tiff *.bmp)")
        if files:
            self.open_paths(files, background=True)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a folder of images")
        if folder:
            self.open_paths([folder], background=True)

    def _choose_manifest(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a manifest", "", "Manifest (*.csv)")
        if path:
            self.open_paths([path], background=True)

    def _choose_store(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Label file", "", "SQLite (*.sqlite)",
                                              options=QFileDialog.DontConfirmOverwrite)
        if path:  # registering thousands of images in the new file runs in the worker
            self.runner.start(self.session.iter_use_store, path, on_done=self._store_chosen,
                              message="opening the label file…", done_message="",
                              needs_torch=False)

    def _store_chosen(self, switched: dict) -> None:
        try:
            self.session.apply_store(switched)  # an InputError is reported by the runner
        finally:
            self._update_store_label()

    def _import_labels(self) -> None:
        try:
            n = self.session.import_manifest_labels()
            from napari.utils.notifications import show_info

            show_info(f"imported {n} labels from the manifest")
        except InputError as exc:
            report_error(exc)

    def _export_labels(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export labels as manifest", "labels.csv",
                                              "CSV (*.csv)")
        if path:
            try:
                self.session.export_manifest(path)
            except InputError as exc:
                report_error(exc)

    def _export_predictions(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export predictions", "predictions.csv",
                                              "CSV (*.csv)")
        if path:
            try:
                self.session.export_predictions(path)
            except InputError as exc:
                report_error(exc)

    # ------------------------------------------------------------------ table
    def _rebuild(self) -> None:
        s = self.session
        self._updating = True
        self.table.setSortingEnabled(False)
        self.table.setRowCount(s.n_images)
        for i, path in enumerate(s.paths):
            number = QTableWidgetItem()  # an int display value sorts in C++, not via __lt__
            number.setData(Qt.DisplayRole, i + 1)
            number.setData(Qt.UserRole, i)
            self.table.setItem(i, 0, number)
            name = QTableWidgetItem(path.name)
            name.setToolTip(str(path))
            self.table.setItem(i, 1, name)
            self.table.setItem(i, 2, QTableWidgetItem(s.genes[i] or ""))
            self.table.setItem(i, 3, QTableWidgetItem(s.stages[i] or ""))
            self.table.setItem(i, 4, _NumberItem(""))
            self.table.setItem(i, 5, QTableWidgetItem(""))
        self._updating = False
        self._update_labels(None)
        self._update_predictions()
        self.table.horizontalHeader().setSortIndicator(0, Qt.AscendingOrder)
        self.table.setSortingEnabled(True)
        n_skip = len(s.skipped)
        self.info_label.setText(f"{s.n_images} images from {s.source}" if s.source else "")
        if n_skip:
            self.skipped_label.setText(f"{n_skip} file(s) skipped - hover for details")
            self.skipped_label.setToolTip("\n".join(s.skipped[:50]))
            from napari.utils.notifications import show_warning

            show_warning(f"{n_skip} file(s) skipped: " + "; ".join(s.skipped[:3])
                         + (" …" if n_skip > 3 else ""))
        else:
            self.skipped_label.setText("")
            self.skipped_label.setToolTip("")
        self._update_store_label()
        self._apply_filter(self.filter_edit.text())

    def _annotator_changed(self) -> None:
        name = self.annotator_edit.text().strip()
        if name and name != self.session.annotator_name:
            try:
                self.session.set_annotator(name)
            except InputError as exc:
                report_error(exc)

    def _update_store_label(self) -> None:
        if not self.annotator_edit.hasFocus():
            self.annotator_edit.setText(self.session.annotator_name)
        store = self.session.store
        if store is None:
            self.store_label.setText("labels: not saved (no writable label file)")
        else:
            ro = " (read-only)" if self.session.store_read_only else ""
            self.store_label.setText(f"labels: {getattr(store, 'path', '')}{ro}")

    def _rows(self) -> dict[int, int]:
        """image index -> table row (rows move when the table is sorted)."""
        out = {}
        for r in range(self.table.rowCount()):
            item = self.table.item(r, 0)
            if item is not None:
                out[int(item.data(Qt.UserRole))] = r
        return out

    def _row_of_image(self, index: int) -> int:
        return self._rows().get(index, -1)

    def _vocabulary_changed(self) -> None:
        """Recount only if the counts shown are for another vocabulary or dataset.

        Opening emits dataset_changed (the table is rebuilt and counted) and then
        vocabulary_changed; counting 10,000 images twice would double the GUI-thread time.
        """
        if self._counts_for != (self.session.generation, tuple(self.session.vocabulary)):
            self._update_labels(None)

    def _update_labels(self, indices: Any) -> None:
        s = self.session
        if not s.n_images or self.table.rowCount() != s.n_images:
            return
        rows = list(range(s.n_images)) if not indices else list(indices)
        if len(rows) == s.n_images:
            self._counts_for = (s.generation, tuple(s.vocabulary))
        Y = s.label_matrix(rows)  # only the changed rows: one keypress stays cheap
        sorting = self.table.isSortingEnabled()
        self.table.setSortingEnabled(False)
        where = self._rows()
        n_labelled = (Y >= 0).sum(axis=1).tolist()  # whole-matrix sums: one numpy call each
        n_present = (Y == 1).sum(axis=1).tolist()
        for k, i in enumerate(rows):
            item = self.table.item(where.get(i, -1), 4)
            if item is None:
                continue
            labelled, present = n_labelled[k], n_present[k]
            item.setText(f"{labelled}/{Y.shape[1]}")
            item.setData(Qt.UserRole + 1, labelled)
            item.setToolTip(f"{present} present, {labelled - present} absent")
        self.table.setSortingEnabled(sorting)

    def _predictions_changed(self) -> None:
        """Skip the redraw when there are still no predictions (opening emits this after the
        rebuild has drawn the empty column; 10,000 rows cost a quarter second each time)."""
        s = self.session
        if s.probabilities is None and self._blank_predictions_for == s.generation:
            return
        self._update_predictions()

    def _update_predictions(self) -> None:
        s = self.session
        if self.table.rowCount() != s.n_images:
            return
        self._blank_predictions_for = s.generation if s.probabilities is None else None
        sorting = self.table.isSortingEnabled()
        self.table.setSortingEnabled(False)
        where = self._rows()
        for i in range(s.n_images):
            item = self.table.item(where.get(i, -1), 5)
            if item is not None:
                top = s.top_terms(i, 3)
                item.setToolTip("\n".join(f"{p:.2f}  {t}" for t, p in s.top_terms(i, 10)))
                item.setText(", ".join(f"{t} {p:.2f}" for t, p in top if p >= 0.5) or
                             ("–" if top else ""))
        self.table.setSortingEnabled(sorting)
        self._apply_filter(self.filter_edit.text())

    def _apply_filter(self, text: str) -> None:
        text = text.strip().lower()
        if not text:  # no filter: nothing to read (10,000 rows x 5 cells on every refresh)
            for r in range(self.table.rowCount()):
                self.table.setRowHidden(r, False)
            return
        for r in range(self.table.rowCount()):
            cells = [self.table.item(r, c) for c in range(1, len(COLUMNS))]
            hay = " ".join(c.text().lower() for c in cells if c is not None)
            self.table.setRowHidden(r, bool(text) and text not in hay)

    def visible_rows(self) -> int:
        return sum(not self.table.isRowHidden(r) for r in range(self.table.rowCount()))

    def _row_selected(self) -> None:
        if self._updating:
            return
        rows = self.table.selectionModel().selectedRows()
        if rows:
            item = self.table.item(rows[0].row(), 0)
            self.session.set_index(int(item.data(Qt.UserRole)))

    def _select_current(self, index: int) -> None:
        r = self._row_of_image(index)
        if r < 0:
            return
        self._updating = True
        self.table.selectRow(r)
        self.table.scrollToItem(self.table.item(r, 0))
        self._updating = False
