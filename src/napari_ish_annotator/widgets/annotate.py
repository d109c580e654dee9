"""Annotate panel: model settings, Extract/Predict, vocabulary (:class:`ModelSection`) and the
per-term list of the current image (:class:`TermsSection`); the annotator dock shows the two
apart, so the term list stays visible whatever tab is open."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QStyledItemDelegate,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import InputError
from ..session import UNCERTAIN_BAND, multi, steps
from ._base import SessionDock
from ._errors import report_error, shows_input_error
from ._worker import TaskRunner

LABEL_TEXT = {None: "unknown", 1: "present", 0: "absent"}
LABEL_VALUE = {"unknown": None, "present": 1, "absent": 0}
STAGES = ("4-6", "7-8", "9-10", "11-12", "13-16")
UNCERTAIN_COLOUR = QColor(110, 85, 25)
READ_ONLY = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
LABEL_FLAGS = READ_ONLY | Qt.ItemFlag.ItemIsEditable


def _backbone_names() -> list[str]:
    try:
        from ..core.backbones import REGISTRY

        return list(REGISTRY)
    except Exception:
        return ["vgg16"]


def _layer_names(backbone: str) -> tuple[list[str], str]:
    try:
        from ..core.backbones import get_spec

        spec = get_spec(backbone)
        return list(spec.layers), str(spec.default_layer)
    except Exception:
        return ["17", "21", "24", "30"], "21"


PROBABILITY_ROLE = Qt.ItemDataRole.UserRole


def _bar_colour(p: float) -> str:
    """Blue for absent, amber when uncertain, green for present."""
    if abs(p - 0.5) < UNCERTAIN_BAND:
        return "#d9a227"
    return "#3fa34d" if p >= 0.5 else "#4a6fa5"


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


class ModelSection(QWidget):
    """Backbone/weights/layer/device/size, Extract and Predict, vocabulary tools."""

    def __init__(self, dock: SessionDock) -> None:
        super().__init__()
        self.session = s = dock.session

        model_box = QGroupBox("Model")
        form = QFormLayout(model_box)
        self.model_label = QLabel("no model (train one, or load a bundle)")
        self.model_label.setWordWrap(True)
        self.load_model_button = QPushButton("Load bundle…")
        self.load_model_button.clicked.connect(self._choose_bundle)
        row = QHBoxLayout()
        row.addWidget(self.model_label, 1)
        row.addWidget(self.load_model_button)
        form.addRow(row)
        self.backbone_combo = QComboBox()
        self.backbone_combo.addItems(_backbone_names())
        self.weights_combo = QComboBox()
        self.weights_combo.setEditable(True)
        self.weights_combo.addItems(["imagenet", "random"])
        self.weights_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.weights_combo.setMinimumContentsLength(12)
        self.weights_combo.setToolTip("imagenet, random, or a path to a state dict / fine-tuned checkpoint")
        self.weights_file_button = QPushButton("File…")
        self.weights_file_button.clicked.connect(self._choose_weights)
        wrow = QHBoxLayout()
        wrow.addWidget(self.weights_combo, 1)
        wrow.addWidget(self.weights_file_button)
        self.layer_combo = QComboBox()
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        self.device_label = QLabel("")
        drow = QHBoxLayout()
        drow.addWidget(self.device_combo)
        drow.addWidget(self.device_label, 1)
        self.size_spin = QSpinBox()
        self.size_spin.setRange(32, 1024)
        self.size_spin.setSingleStep(16)
        self.size_spin.setToolTip("input size in pixels (the paper uses 224)")
        form.addRow("Backbone", self.backbone_combo)
        form.addRow("Weights", wrow)
        form.addRow("Layer", self.layer_combo)
        form.addRow("Device", drow)
        form.addRow("Input size", self.size_spin)
        self._show_settings()
        self.backbone_combo.currentTextChanged.connect(self._backbone_changed)
        for w in (self.weights_combo, self.layer_combo, self.device_combo):
            w.currentTextChanged.connect(self._settings_from_ui)
        self.size_spin.valueChanged.connect(self._settings_from_ui)

        self.extract_button = QPushButton("Extract features")
        self.extract_button.setToolTip("features of every open image (cached on disk)")
        self.predict_button = QPushButton("Predict")
        self.extract_button.clicked.connect(self.extract)
        self.predict_button.clicked.connect(self.predict)
        brow = QHBoxLayout()
        brow.addWidget(self.extract_button)
        brow.addWidget(self.predict_button)
        self.runner = TaskRunner()
        self.runner.started.connect(lambda: self._busy(True))
        self.runner.finished.connect(lambda *_: self._busy(False))

        vocab_box = QGroupBox("Vocabulary")
        vlay = QVBoxLayout(vocab_box)
        self.stage_combo = QComboBox()
        self.stage_combo.addItems(STAGES)
        self.stage_combo.setCurrentText(s.settings.stage)
        self.defaults_button = QPushButton("Use defaults")
        self.defaults_button.setToolTip("the ten most frequent FlyExpress terms of this stage range")
        self.defaults_button.clicked.connect(self._use_defaults)
        self.term_file_button = QPushButton("Term file…")
        self.term_file_button.clicked.connect(self._choose_term_file)
        r1 = QHBoxLayout()
        r1.addWidget(QLabel("Stage"))
        r1.addWidget(self.stage_combo)
        r1.addWidget(self.defaults_button)
        r1.addWidget(self.term_file_button)
        self.new_term_edit = QLineEdit()
        self.new_term_edit.setPlaceholderText("new term…")
        self.add_term_button = QPushButton("Add term")
        self.add_term_button.clicked.connect(self._add_term)
        self.new_term_edit.returnPressed.connect(self._add_term)
        r2 = QHBoxLayout()
        r2.addWidget(self.new_term_edit, 1)
        r2.addWidget(self.add_term_button)
        vlay.addLayout(r1)
        vlay.addLayout(r2)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(model_box)
        layout.addLayout(brow)
        layout.addWidget(self.runner)
        layout.addWidget(vocab_box)
        layout.addStretch(1)

        dock.listen(s.model_changed, self._model_changed)
        dock.listen(s.dataset_changed, self._dataset_changed)
        dock.listen(s.settings_changed, self._show_settings)
        dock.listen(s.features_changed, self._show_device)  # a model ran: torch names it
        self._model_changed()

    # ------------------------------------------------------------------ settings
    def _show_settings(self) -> None:
        """Controls follow the session's settings (changed here, by fine-tuning or scripts)."""
        st = self.session.settings
        widgets = (self.backbone_combo, self.weights_combo, self.layer_combo, self.device_combo,
                   self.size_spin)
        for w in widgets:
            w.blockSignals(True)
        self.backbone_combo.setCurrentText(st.backbone)
        self._fill_layers()
        self.weights_combo.setCurrentText(st.weights)
        self.layer_combo.setCurrentText(str(st.layer))
        self.device_combo.setCurrentText(st.device)
        self.size_spin.setValue(int(st.input_size))
        for w in widgets:
            w.blockSignals(False)
        self._show_device()

    def _fill_layers(self) -> None:
        layers, default = _layer_names(self.backbone_combo.currentText())
        self.layer_combo.clear()
        self.layer_combo.addItems(layers)
        want = str(self.session.settings.layer)
        self.layer_combo.setCurrentText(want if want in layers else default)

    def _backbone_changed(self, name: str) -> None:
        self.session.update_settings(backbone=name, layer=_layer_names(name)[1])

    def _settings_from_ui(self, *_: Any) -> None:
        self.session.update_settings(
            backbone=self.backbone_combo.currentText(),
            weights=self.weights_combo.currentText().strip() or "imagenet",
            layer=self.layer_combo.currentText(), device=self.device_combo.currentText(),
            input_size=int(self.size_spin.value()))
        self._show_device()

    def set_settings(self, **values: Any) -> None:
        """Set model settings programmatically (scripts, tests); the controls follow."""
        self.session.update_settings(**values)

    def _show_device(self) -> None:
        self.device_label.setText(f"using: {self.session.device_name()}")

    def _choose_weights(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Backbone weights", "",
                                              "Weights (*.pt *.pth *.ckpt);;All files (*)")
        if path:
            self.weights_combo.setCurrentText(path)

    def _choose_bundle(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Model bundle folder")
        if path:
            self.load_bundle(path)

    @shows_input_error
    def load_bundle(self, path: str) -> None:
        self.session.load_bundle(path)

    def _model_changed(self) -> None:
        b = self.session.bundle
        if b is None:
            self.model_label.setText("no model (train one in the Train panel, or load a bundle)")
        else:
            e = b.extractor
            tuned = " (fine-tuned)" if self.session.finetuned is not None else ""
            self.model_label.setText(
                f"{len(b.classifier.vocabulary)} terms · {e.backbone} layer {e.layer} · "
                f"weights {e.weights}{tuned} · {e.input_size}px")
            self.session.update_settings(backbone=e.backbone, weights=str(e.weights),
                                         layer=str(e.layer), input_size=int(e.input_size))
        self._show_device()

    def _dataset_changed(self) -> None:
        self.stage_combo.setCurrentText(self.session.settings.stage)

    # ------------------------------------------------------------------ long work
    def _busy(self, busy: bool) -> None:
        for w in (self.extract_button, self.predict_button, self.load_model_button):
            w.setEnabled(not busy)

    @shows_input_error
    def extract(self) -> Any:
        """Extract (cached) features of every open image in the background."""
        self._settings_from_ui()
        return self.runner.start(steps.iter_extract, self.session.extract_request(),
                                 on_done=self._extracted, message="extracting features…",
                                 done_message="features ready")

    def _extracted(self, result: Any) -> None:
        self.session.apply_features(result)
        self._show_device()

    @shows_input_error
    def predict(self) -> Any:
        """Probabilities of every open image (extracts first if needed)."""
        return self.runner.start(steps.iter_predict, self.session.predict_request(),
                                 on_done=self.session.apply_predictions,
                                 message="predicting…", done_message="predictions ready")

    # ------------------------------------------------------------------ vocabulary
    @shows_input_error
    def _use_defaults(self) -> None:
        self.session.use_default_vocabulary(self.stage_combo.currentText())

    @shows_input_error
    def _choose_term_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Term file (one term per line)", "",
                                              "Text (*.txt *.csv);;All files (*)")
        if path:
            self.session.set_vocabulary(Path(path))

    @shows_input_error
    def _add_term(self) -> None:
        self.session.add_term(self.new_term_edit.text())
        self.new_term_edit.clear()


class TermsSection(QWidget):
    """The current image's terms: probability bar, ensemble vote, label (click: Grad-CAM)."""

    def __init__(self, dock: SessionDock) -> None:
        super().__init__()
        self.session = s = dock.session
        self._filling = False
        self.image_label = QLabel("")
        self.image_label.setStyleSheet("font-weight: bold;")
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["key", "term", "probability", "pred.", "label"])
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(120)
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
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setValue(s.settings.overlay_threshold)
        self.threshold_spin.valueChanged.connect(
            lambda v: self.session.update_settings(overlay_threshold=float(v)))
        trow = QHBoxLayout()
        trow.addWidget(QLabel("On canvas: p ≥"))
        trow.addWidget(self.threshold_spin)
        trow.addStretch(1)
        hint = QLabel("Keys: 1-9, 0 cycle the first ten terms (unknown → present → absent); "
                      "n/p step; u next uncertain; Shift+N next to label; Ctrl+Z undo. Amber: uncertain "
                      f"(|p - 0.5| < {UNCERTAIN_BAND}).")
        hint.setWordWrap(True)
        hint.setStyleSheet("color: gray;")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.image_label)
        layout.addWidget(self.table, 1)
        layout.addLayout(trow)
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
        probs = s.probabilities_for()
        spread = s.spread_for() if probs else {}
        if spread and self.table.columnWidth(2) < SPREAD_WIDTH:
            self.table.setColumnWidth(2, SPREAD_WIDTH)  # room for "0.72 ± 0.05"
        votes = s.predicted_for()
        labels = s.labels_for() if path is not None else {}
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
                vote = votes.get(term)
                uncertain = p is not None and abs(p - 0.5) < UNCERTAIN_BAND
                pred.setText(("" if vote is None else ("yes" if vote else "no"))
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
            return multi.term_tooltips(s)
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
            table.item(r, 3).setToolTip("majority vote of the term's ensemble")
            table.item(r, 4).setToolTip("click to choose unknown, present or absent")

    def _item_changed(self, item: QTableWidgetItem) -> None:
        """A label chosen in the list (the delegate's combo box) goes to the store."""
        if self._filling or item.column() != 4 or item.row() >= len(self.session.vocabulary):
            return
        term = self.session.vocabulary[item.row()]
        try:
            self.session.set_label(term, LABEL_VALUE[item.text()])
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


class AnnotateWidget(SessionDock):
    """Predict and label the current embryo, one row per vocabulary term."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.model = ModelSection(self)
        self.terms = TermsSection(self)
        layout = QVBoxLayout(self.body)
        layout.addWidget(self.model)
        layout.addWidget(self.terms, 1)

    def __getattr__(self, name: str) -> Any:  # annotate.predict_button, annotate.table, ...
        for part in ("model", "terms"):
            section = self.__dict__.get(part)
            if section is not None and hasattr(section, name):
                return getattr(section, name)
        raise AttributeError(name)
