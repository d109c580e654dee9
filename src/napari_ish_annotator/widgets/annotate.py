"""Annotate panel: model settings, Extract/Predict, and the per-term list of the current image."""

from __future__ import annotations

import contextlib
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
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
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import InputError
from ._session import UNCERTAIN_BAND, get_session, real_viewer
from ._worker import TaskRunner, report_error

LABEL_TEXT = {None: "unknown", 1: "present", 0: "absent"}
LABEL_VALUE = {"unknown": None, "present": 1, "absent": 0}
STAGES = ("4-6", "7-8", "9-10", "11-12", "13-16")
UNCERTAIN_COLOUR = QColor(110, 85, 25)


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


def _bar_colour(p: float) -> str:
    """Blue for absent, amber when uncertain, green for present."""
    if abs(p - 0.5) < UNCERTAIN_BAND:
        return "#d9a227"
    return "#3fa34d" if p >= 0.5 else "#4a6fa5"


class AnnotateWidget(QWidget):
    """Predict and label the current embryo, one row per vocabulary term."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = real_viewer(napari_viewer)
        self.session = get_session(napari_viewer)
        s = self.session
        self._filling = False

        # --- model -----------------------------------------------------------------
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
        self.backbone_combo.setCurrentText(s.settings.backbone)
        self.weights_combo = QComboBox()
        self.weights_combo.setEditable(True)
        self.weights_combo.addItems(["imagenet", "random"])
        self.weights_combo.setCurrentText(s.settings.weights)
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
        self.size_spin.setValue(s.settings.input_size)
        self.size_spin.setToolTip("input size in pixels (the paper uses 224)")
        form.addRow("Backbone", self.backbone_combo)
        form.addRow("Weights", wrow)
        form.addRow("Layer", self.layer_combo)
        form.addRow("Device", drow)
        form.addRow("Input size", self.size_spin)
        self._fill_layers()
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

        # --- vocabulary ------------------------------------------------------------
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

        # --- terms of the current image -------------------------------------------
        self.image_label = QLabel("")
        self.image_label.setStyleSheet("font-weight: bold;")
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["key", "term", "probability", "pred.", "label"])
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(240)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.Stretch)
        header.setSectionResizeMode(2, QHeaderView.Fixed)
        self.table.setColumnWidth(2, 110)
        self.table.cellClicked.connect(self._cell_clicked)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setValue(s.settings.overlay_threshold)
        self.threshold_spin.valueChanged.connect(self._threshold_changed)
        trow = QHBoxLayout()
        trow.addWidget(QLabel("Show on canvas terms with p ≥"))
        trow.addWidget(self.threshold_spin)
        trow.addStretch(1)
        hint = QLabel("Keys: 1-9, 0 cycle the first ten terms (unknown → present → absent); "
                      "n/p or PageDown/PageUp step; Ctrl+Z undoes. Amber rows are uncertain "
                      f"(|p - 0.5| < {UNCERTAIN_BAND}).")
        hint.setWordWrap(True)
        hint.setStyleSheet("color: gray;")

        layout = QVBoxLayout(self)
        layout.addWidget(model_box)
        layout.addLayout(brow)
        layout.addWidget(self.runner)
        layout.addWidget(vocab_box)
        layout.addWidget(self.image_label)
        layout.addWidget(self.table, 1)
        layout.addLayout(trow)
        layout.addWidget(hint)

        s.current_changed.connect(self._refresh)
        s.labels_changed.connect(self._labels_changed)
        s.vocabulary_changed.connect(self._refresh)
        s.predictions_changed.connect(self._refresh)
        s.model_changed.connect(self._model_changed)
        s.dataset_changed.connect(self._dataset_changed)
        self.destroyed.connect(lambda *_: self._disconnect(s))
        self._model_changed()
        self._refresh()

    def _disconnect(self, s: Any) -> None:
        for sig, slot in ((s.current_changed, self._refresh), (s.labels_changed, self._labels_changed),
                          (s.vocabulary_changed, self._refresh), (s.predictions_changed, self._refresh),
                          (s.model_changed, self._model_changed),
                          (s.dataset_changed, self._dataset_changed)):
            with contextlib.suppress(Exception):
                sig.disconnect(slot)

    # ------------------------------------------------------------------ settings
    def _fill_layers(self) -> None:
        layers, default = _layer_names(self.backbone_combo.currentText())
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(layers)
        want = self.session.settings.layer
        self.layer_combo.setCurrentText(want if want in layers else default)
        self.layer_combo.blockSignals(False)

    def _backbone_changed(self, name: str) -> None:
        self.session.settings.backbone = name
        self.session.settings.layer = _layer_names(name)[1]
        self._fill_layers()
        self._settings_from_ui()

    def _settings_from_ui(self, *_: Any) -> None:
        st = self.session.settings
        st.backbone = self.backbone_combo.currentText()
        st.weights = self.weights_combo.currentText().strip() or "imagenet"
        st.layer = self.layer_combo.currentText()
        st.device = self.device_combo.currentText()
        st.input_size = int(self.size_spin.value())
        self._show_device()
        self.session.settings_changed.emit()

    def set_settings(self, **values: Any) -> None:
        """Set model settings programmatically (scripts, tests) and update the controls."""
        st = self.session.settings
        for k, v in values.items():
            if not hasattr(st, k):
                raise AttributeError(k)
            setattr(st, k, v)
        for w in (self.backbone_combo, self.weights_combo, self.layer_combo, self.device_combo,
                  self.size_spin):
            w.blockSignals(True)
        self.backbone_combo.setCurrentText(st.backbone)
        self._fill_layers()
        self.weights_combo.setCurrentText(st.weights)
        self.layer_combo.setCurrentText(str(st.layer))
        self.device_combo.setCurrentText(st.device)
        self.size_spin.setValue(int(st.input_size))
        for w in (self.backbone_combo, self.weights_combo, self.layer_combo, self.device_combo,
                  self.size_spin):
            w.blockSignals(False)
        self._show_device()
        self.session.settings_changed.emit()

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

    def load_bundle(self, path: str) -> None:
        try:
            self.session.load_bundle(path)
        except InputError as exc:
            report_error(exc)

    def _model_changed(self) -> None:
        b = self.session.bundle
        if b is None:
            self.model_label.setText("no model (train one in the Train panel, or load a bundle)")
        else:
            e = b.extractor
            self.model_label.setText(
                f"{len(b.classifier.vocabulary)} terms · {e.backbone} layer {e.layer} · "
                f"weights {e.weights} · {e.input_size}px")
            self.set_settings(backbone=e.backbone, weights=str(e.weights),
                              layer=str(e.layer), input_size=int(e.input_size))
        self._show_device()

    def _dataset_changed(self) -> None:
        self.stage_combo.setCurrentText(self.session.settings.stage)

    # ------------------------------------------------------------------ long work
    def _busy(self, busy: bool) -> None:
        for w in (self.extract_button, self.predict_button, self.load_model_button):
            w.setEnabled(not busy)

    def extract(self) -> Any:
        """Extract (cached) features of every open image in the background."""
        self._settings_from_ui()
        return self.runner.start(self.session.iter_extract, on_done=self._extracted,
                                 message="extracting features…", done_message="features ready")

    def _extracted(self, result: Any) -> None:
        self.session.set_features(result)
        self._show_device()

    def predict(self) -> Any:
        """Probabilities of every open image (extracts first if needed)."""
        return self.runner.start(self.session.iter_predict, on_done=self.session.set_predictions,
                                 message="predicting…", done_message="predictions ready")

    # ------------------------------------------------------------------ vocabulary
    def _use_defaults(self) -> None:
        try:
            self.session.use_default_vocabulary(self.stage_combo.currentText())
        except InputError as exc:
            report_error(exc)

    def _choose_term_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Term file (one term per line)", "",
                                              "Text (*.txt *.csv);;All files (*)")
        if path:
            try:
                from pathlib import Path

                self.session.set_vocabulary(Path(path))
            except InputError as exc:
                report_error(exc)

    def _add_term(self) -> None:
        try:
            self.session.add_term(self.new_term_edit.text())
            self.new_term_edit.clear()
        except InputError as exc:
            report_error(exc)

    def _threshold_changed(self, value: float) -> None:
        self.session.settings.overlay_threshold = float(value)
        self.session.settings_changed.emit()

    # ------------------------------------------------------------------ term list
    def _labels_changed(self, indices: Any) -> None:
        if not indices or self.session.index in indices:
            self._refresh()

    def _refresh(self, *_: Any) -> None:
        s = self.session
        self._filling = True
        path = s.current_path
        self.image_label.setText(f"{s.index + 1}/{s.n_images}: {path.name}" if path else "")
        probs = s.probabilities_for()
        votes = s.predicted_for()
        labels = s.labels_for() if path is not None else {}
        self.table.setRowCount(len(s.vocabulary))
        for r, term in enumerate(s.vocabulary):
            key = QTableWidgetItem(str((r + 1) % 10) if r < 10 else "")
            key.setTextAlignment(Qt.AlignCenter)
            self.table.setItem(r, 0, key)
            name = QTableWidgetItem(term)
            name.setToolTip("click to show its Grad-CAM map in the Explain panel")
            self.table.setItem(r, 1, name)
            p = probs.get(term)
            bar = self.table.cellWidget(r, 2)
            if not isinstance(bar, QProgressBar):
                bar = QProgressBar()
                bar.setRange(0, 1000)
                bar.setTextVisible(True)
                bar.setAlignment(Qt.AlignCenter)
                self.table.setCellWidget(r, 2, bar)
            if p is None:
                bar.setValue(0)
                bar.setFormat("–")
                bar.setStyleSheet("")
            else:
                bar.setValue(int(round(p * 1000)))
                bar.setFormat(f"{p:.2f}")
                bar.setStyleSheet(f"QProgressBar::chunk {{ background-color: {_bar_colour(p)}; }}")
            vote = votes.get(term)
            pred = QTableWidgetItem("" if vote is None else ("yes" if vote else "no"))
            pred.setToolTip("majority vote of the term's ensemble")
            pred.setTextAlignment(Qt.AlignCenter)
            self.table.setItem(r, 3, pred)
            combo = self.table.cellWidget(r, 4)
            if not isinstance(combo, QComboBox):
                combo = QComboBox()
                combo.addItems(list(LABEL_VALUE))
                combo.currentTextChanged.connect(
                    lambda text, combo=combo: self._label_chosen(combo, text))
                self.table.setCellWidget(r, 4, combo)
            combo.setProperty("term", term)
            combo.setEnabled(path is not None)
            combo.setCurrentText(LABEL_TEXT[labels.get(term)])
            uncertain = p is not None and abs(p - 0.5) < UNCERTAIN_BAND
            if uncertain:
                pred.setText(pred.text() + "?")
                for c in (0, 1):
                    item = self.table.item(r, c)
                    item.setBackground(UNCERTAIN_COLOUR)
                    item.setToolTip("uncertain (probability near 0.5): please check this term")
        self._filling = False

    def _label_chosen(self, combo: QComboBox, text: str) -> None:
        if self._filling:
            return
        term = combo.property("term")
        try:
            self.session.set_label(term, LABEL_VALUE[text])
        except InputError as exc:
            report_error(exc)
            self._refresh()

    def _cell_clicked(self, row: int, column: int) -> None:
        if column in (0, 1, 3) and row < len(self.session.vocabulary):
            self.session.term_selected.emit(self.session.vocabulary[row])

    # ------------------------------------------------------------------ for tests/scripts
    def row_values(self) -> list[tuple[str, str, str, str]]:
        """(term, probability text, predicted, label) per row, as displayed."""
        out = []
        for r in range(self.table.rowCount()):
            out.append((self.table.item(r, 1).text(), self.table.cellWidget(r, 2).format(),
                        self.table.item(r, 3).text(), self.table.cellWidget(r, 4).currentText()))
        return out
