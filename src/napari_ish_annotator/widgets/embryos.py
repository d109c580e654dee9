"""Embryos panel: open images, folders or a manifest and browse them in a sortable list."""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from pathlib import Path
from typing import Any

from qtpy.QtCore import QItemSelectionModel, Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from ..core.data.images import SUPPORTED_SUFFIXES
from ..core.utils.errors import InputError
from ..session import OpenedDataset, StoreSwitch, annotators, model_outputs, steps
from ._base import Collapsible, SessionDock
from ._embryo_table import IMAGE_ROLE, EmbryoFilterProxy, EmbryoTableModel
from ._errors import report_error, shows_input_error
from ._loading import freeze_long_lived
from ._viewer_binding import add_opener, forward_annotation_keys, stage_first_show
from ._worker import TaskRunner
from .records_section import RecordSection

#: what napari imports the first time it builds an image layer (about two seconds of a
#: frozen viewer on the GUI thread): the opening worker imports them first instead
LAYER_IMPORTS = ("xarray", "scipy.ndimage", "pint")


def _open_in_worker(request: steps.OpenRequest) -> Generator:
    """The opening step, after the imports napari needs for its first image layer."""
    import importlib
    import importlib.util

    for name in LAYER_IMPORTS:
        if importlib.util.find_spec(name.split(".")[0]) is not None:
            importlib.import_module(name)
    with contextlib.suppress(Exception):  # an optimisation only
        import pint  # napari's layers use pint's application registry, built on first use

        pint.get_application_registry().Unit("pixel")
    freeze_long_lived("layer imports")  # the registry lives as long as the process
    return (yield from steps.iter_open(request))


class EmbryosWidget(SessionDock):
    """Lists every open image (name, gene, stage, #labelled terms, top predictions)."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self._updating = False

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

        self.model = EmbryoTableModel(self.session)
        self.proxy = EmbryoFilterProxy(self.model)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.setMinimumHeight(110)
        # its preferred height (192 px) would set the tab's height through the word-wrapped
        # labels' height-for-width and push the controls under it below a laptop's fold
        self.table.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Ignored)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # names differ at the end
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        for c, width in enumerate((52, 150, 70, 56, 64)):
            self.table.setColumnWidth(c, width)
        self.table.setSortingEnabled(True)
        header.setSortIndicator(0, Qt.SortOrder.AscendingOrder)
        self.table.selectionModel().currentRowChanged.connect(self._row_selected)
        forward_annotation_keys(self.table, self.session)

        self.runner = TaskRunner()  # opening thousands of files: headers and hashes off the GUI
        self.runner.started.connect(lambda: self._busy(True))
        self.runner.finished.connect(lambda *_: self._busy(False))

        self.info_label = QLabel("Open images, a folder or a manifest CSV to start.")
        self.info_label.setWordWrap(True)
        self.skipped_label = QLabel("")
        self.skipped_label.setWordWrap(True)
        self.skipped_label.setStyleSheet("color: #e0a040;")
        self.skipped_label.setVisible(False)  # a line only when files were skipped

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
        files = QWidget()  # used now and then: folded under one line
        files_layout = QVBoxLayout(files)
        files_layout.setContentsMargins(0, 0, 0, 0)
        store_row = QHBoxLayout()
        store_row.addWidget(self.store_button)
        store_row.addWidget(self.import_button)
        export_row = QHBoxLayout()
        export_row.addWidget(self.export_labels_button)
        export_row.addWidget(self.export_pred_button)
        files_layout.addWidget(self.store_label)
        files_layout.addLayout(store_row)
        files_layout.addLayout(export_row)
        self.files_section = Collapsible("Label file, import, export", files)

        nav = QHBoxLayout()
        self.prev_button = QPushButton("◀ (p)")
        self.prev_button.setToolTip("previous image (p, PageUp)")
        self.next_button = QPushButton("(n) ▶")
        self.next_button.setToolTip("next image (n, PageDown)")
        self.prev_button.clicked.connect(lambda: self.session.step(-1))
        self.next_button.clicked.connect(lambda: self.session.step(+1))
        nav.addWidget(self.prev_button)
        nav.addWidget(self.next_button)

        # several annotators and active learning (issue 10)
        self.disagree_check = QCheckBox("disagreements only")
        self.disagree_check.setToolTip("list only images where two annotators gave a term "
                                       "different labels (annotators disagree)")
        self.disagree_check.toggled.connect(self._disagree_toggled)
        self.suggest_button = QPushButton("Next to label (Shift+N)")
        self.suggest_button.setToolTip(
            "rank the images the current model is least sure about (near 0.5, ensemble "
            "members disagree, rare terms first, spread over genes), list them first and go "
            "to the best; Shift+N goes on to the next one")
        self.suggest_button.clicked.connect(self.rank_next_to_label)
        nav.addWidget(self.suggest_button)  # one row of moves: a laptop's height is short
        annotator_row = QHBoxLayout()
        annotator_row.addWidget(QLabel("Annotator"))
        annotator_row.addWidget(self.annotator_edit, 1)
        annotator_row.addWidget(self.disagree_check)

        layout = QVBoxLayout(self.body)
        layout.addLayout(open_row)
        layout.addWidget(self.runner)
        layout.addWidget(self.info_label)
        layout.addWidget(self.skipped_label)
        layout.addWidget(self.filter_edit)
        layout.addWidget(self.table, 1)
        layout.addLayout(nav)
        self.record = RecordSection(self)  # the current image's gene x stage record
        layout.addWidget(self.record)
        layout.addLayout(annotator_row)
        layout.addWidget(self.files_section)

        s = self.session
        self.listen(s.dataset_changed, self._rebuild)
        self.listen(s.labels_changed, self._labels_changed)
        self.listen(s.vocabulary_changed, self._vocabulary_changed)
        self.listen(s.predictions_changed, self._predictions_changed)
        self.listen(s.current_changed, self._select_current)
        self.listen(s.label_order_changed, self._label_order_changed)
        if s.n_images:
            self._rebuild()
            self._select_current(s.index)
        add_opener(s, self)  # File > Open of many files reads them in this panel's worker

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
        try:
            request = self.session.open_request(list(paths), store_path)
        except InputError as exc:
            report_error(exc)
            return None
        return self.runner.start(_open_in_worker, request, on_done=self._opened,
                                 message="opening…", done_message="", needs_torch=False)

    def _opened(self, opened: OpenedDataset) -> None:
        stage_first_show(self.viewer, self.session)  # no 0.5 s freeze for layer one
        self.session.apply_open(opened)
        self._report_pending()

    def _report_pending(self) -> None:
        err = self.session.take_pending_error()
        if err is not None:
            report_error(err)

    def _busy(self, busy: bool) -> None:
        for b in (self.open_files_button, self.open_folder_button, self.open_manifest_button,
                  self.store_button, self.import_button, self.suggest_button):
            b.setEnabled(not busy)

    def _choose_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self, "Open images", "",
            f"Images ({' '.join(f'*{s}' for s in sorted(SUPPORTED_SUFFIXES))})")
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
                                              options=QFileDialog.Option.DontConfirmOverwrite)
        if path:  # registering thousands of images in the new file runs in the worker
            self.runner.start(steps.iter_use_store, *self.session.store_request(path),
                              on_done=self._store_chosen,
                              message="opening the label file…", done_message="",
                              needs_torch=False)

    def _store_chosen(self, switched: StoreSwitch) -> None:
        try:
            self.session.apply_store(switched)  # an InputError is reported by the runner
        finally:
            self._update_store_label()

    @shows_input_error
    def _import_labels(self) -> None:
        from napari.utils.notifications import show_info

        n = self.session.labels.import_manifest_labels()
        show_info(f"imported {n} labels from the manifest")

    @shows_input_error
    def _export_labels(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export labels as manifest", "labels.csv",
                                              "CSV (*.csv)")
        if path:
            self.session.labels.export_manifest(path)

    @shows_input_error
    def _export_predictions(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export predictions", "predictions.csv",
                                              "CSV (*.csv)")
        if path:
            self.session.model.export_predictions(path)

    # ------------------------------------------------------------------ table
    def _rebuild(self) -> None:
        s = self.session
        self._updating = True
        self.model.reset()
        self.model.restrict = None
        self.disagree_check.setChecked(False)
        self.proxy.set_filter(self.filter_edit.text())
        self.table.horizontalHeader().setSortIndicator(0, Qt.SortOrder.AscendingOrder)
        self._updating = False
        n_skip = len(s.skipped)
        self.info_label.setText(f"{s.n_images} images from {s.source}" if s.source else "")
        if n_skip:
            self.skipped_label.setText(f"{n_skip} file(s) skipped (missing or unreadable) "
                                       "- hover for the list")
            self.skipped_label.setToolTip("\n".join(s.skipped[:50]))
            from napari.utils.notifications import show_warning

            show_warning(f"{n_skip} file(s) skipped: " + "; ".join(s.skipped[:3])
                         + (" …" if n_skip > 3 else ""))
        else:
            self.skipped_label.setText("")
            self.skipped_label.setToolTip("")
        self.skipped_label.setVisible(bool(n_skip))
        self._update_store_label()

    @shows_input_error
    def _annotator_changed(self) -> None:
        name = self.annotator_edit.text().strip()
        if name and name != self.session.annotator_name:
            self.session.set_annotator(name)

    def _update_store_label(self) -> None:
        if not self.annotator_edit.hasFocus():
            self.annotator_edit.setText(self.session.annotator_name)
        store = self.session.store
        if store is None:
            self.store_label.setText("labels: not saved (no writable label file)")
        else:
            ro = " (read-only)" if self.session.store_read_only else ""
            self.store_label.setText(f"labels: {getattr(store, 'path', '')}{ro}")

    def _vocabulary_changed(self) -> None:
        self.model.labels_changed(None)

    def _labels_changed(self, indices: Any) -> None:
        self.model.labels_changed(list(indices) if indices else None)
        if self.disagree_check.isChecked():
            self._update_disagreement(sorted(set(indices)) if indices else None)
        self.proxy.refilter()

    def _update_disagreement(self, rows: list[int] | None) -> None:
        """Re-read the changed images only (the whole store once per toggle)."""
        restrict = self.model.restrict
        if rows and restrict is not None and len(restrict) == self.session.n_images:
            restrict = restrict.copy()
            restrict[rows] = annotators.disagreement(self.session, rows)
            self.model.restrict = restrict
        else:
            self.model.restrict = annotators.disagreement(self.session)

    def _predictions_changed(self) -> None:
        self.model.predictions_changed()
        self.proxy.refilter()

    # ------------------------------------------------------------------ annotators, next to label
    def _disagree_toggled(self, on: bool) -> None:
        try:
            self.model.restrict = annotators.disagreement(self.session) if on else None
        except InputError as exc:
            report_error(exc)
            self.disagree_check.setChecked(False)
            return
        self._apply_filter(self.filter_edit.text())

    def rank_next_to_label(self) -> Any:
        """Rank the images to label next in a worker; the rows follow when it is done."""
        return self.runner.start_request(lambda: model_outputs.suggest_request(self.session),
                                         model_outputs.iter_suggest,
                                         on_done=self.session.model.apply_label_order,
                                         message="ranking images to label…", done_message="")

    def _label_order_changed(self) -> None:
        order = self.session.model.label_order
        if order is None:
            return
        self._updating = True
        self.table.horizontalHeader().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)
        self._updating = False
        self.model.put_first(order.images)  # after the indicator: no column sorts them
        self.info_label.setText(f"{len(order.images)} images to label, most informative "
                                "first (Shift+N: next)")
        self.session.model.next_to_label(from_top=True)
        self._select_current(self.session.index)

    def _apply_filter(self, text: str) -> None:
        self.proxy.set_filter(text)
        self._select_current(self.session.index)

    # ------------------------------------------------------------------ rows
    def row_count(self) -> int:
        """Rows shown (after the filter)."""
        return self.proxy.rowCount()

    visible_rows = row_count

    def cell_text(self, row: int, column: int) -> str:
        """The text shown in a cell (row as displayed, after sorting and filtering)."""
        return str(self.proxy.index(row, column).data() or "")

    def cell_tip(self, row: int, column: int) -> str:
        return str(self.proxy.index(row, column).data(Qt.ItemDataRole.ToolTipRole) or "")

    def image_at(self, row: int) -> int:
        """The image index shown in a displayed row."""
        return int(self.proxy.index(row, 0).data(IMAGE_ROLE))

    def select_row(self, row: int) -> None:
        self.table.selectRow(row)

    def sort_by(self, column: int, descending: bool = False) -> None:
        self.table.sortByColumn(column, Qt.SortOrder.DescendingOrder if descending
                                else Qt.SortOrder.AscendingOrder)

    def _row_selected(self, current: Any, _previous: Any = None) -> None:
        if self._updating or not current.isValid():
            return
        self.session.set_index(int(current.data(IMAGE_ROLE)))

    def _select_current(self, index: int) -> None:
        r = self.model.row_of(index)
        if r < 0:
            return
        proxy_index = self.proxy.mapFromSource(self.model.index(r, 0))
        if not proxy_index.isValid():
            return  # filtered out
        self._updating = True
        self.table.selectionModel().setCurrentIndex(
            proxy_index, QItemSelectionModel.SelectionFlag.ClearAndSelect
            | QItemSelectionModel.SelectionFlag.Rows)
        self.table.scrollTo(proxy_index)
        self._updating = False
