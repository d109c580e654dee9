"""Annotate panel: model settings, Extract/Predict, vocabulary (:class:`ModelSection`) and the
per-term list of the current image (:class:`.terms.TermsSection`); the annotator dock shows
the two apart, so the term list stays visible whatever tab is open."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.backbones.specs import REGISTRY, get_spec
from ..core.data.vocabulary import STAGE_RANGES
from ..session import steps
from ..session.first_run import back_to_paper, first_run_model
from ._base import SessionDock
from ._errors import shows_input_error
from ._worker import TaskRunner
from .terms import TermsSection


def _backbone_names() -> list[str]:
    return list(REGISTRY)


def _layer_names(backbone: str) -> tuple[list[str], str]:
    """The backbone's feature layers and its default (the registry is plain data: no torch)."""
    spec = get_spec(backbone)
    return list(spec.layers), str(spec.default_layer)


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
        self.backbone_combo.setSizeAdjustPolicy(  # room for the first-run note beside it
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.backbone_combo.setMinimumContentsLength(8)
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
        self.first_run_label = QLabel("")  # why the panel does not start on VGG16
        self.first_run_label.setVisible(False)
        self._first_run: Any = None  # the settings the first-run choice left (None: over)
        bbrow = QHBoxLayout()
        bbrow.addWidget(self.backbone_combo, 1)
        bbrow.addWidget(self.first_run_label)
        form.addRow("Backbone", bbrow)
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
        self.stage_combo.addItems(STAGE_RANGES)
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
        form.insertRow(1, brow)  # the main actions right under the model's name
        form.insertRow(2, self.runner)
        layout.addWidget(model_box)
        layout.addWidget(vocab_box)
        layout.addStretch(1)

        dock.listen(s.model_changed, self._model_changed)
        dock.listen(s.dataset_changed, self._dataset_changed)
        dock.listen(s.settings_changed, self._show_settings)
        dock.listen(s.features_changed, self._show_device)  # a model ran: torch names it
        self._model_changed()
        self._start_first_run()

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
        if self._first_run is not None and (st.backbone, st.weights) != self._first_run:
            self._end_first_run()  # changed here, by a bundle or by fine-tuning

    def _start_first_run(self) -> None:
        """Start on a network whose weights are here (files only: no torch), and say so."""
        has_model = self.session.model.bundle is not None
        choice = None if has_model else first_run_model(self.session.settings)
        if choice is None:
            return
        if choice.values:
            self.session.update_settings(**choice.values)
        st = self.session.settings
        self._first_run = (st.backbone, st.weights)
        self.first_run_label.setText(choice.note)
        self.first_run_label.setToolTip(choice.detail)
        self.first_run_label.setVisible(True)

    def _end_first_run(self) -> None:
        self._first_run = None
        self.first_run_label.setVisible(False)

    def _changed_settings(self, values: dict) -> dict:
        """Other weights than ImageNet end the first-run stand-in (back to VGG16)."""
        return back_to_paper(values) if self._first_run is not None else values

    def _fill_layers(self) -> None:
        layers, default = _layer_names(self.backbone_combo.currentText())
        self.layer_combo.clear()
        self.layer_combo.addItems(layers)
        want = str(self.session.settings.layer)
        self.layer_combo.setCurrentText(want if want in layers else default)

    def _backbone_changed(self, name: str) -> None:
        self._end_first_run()  # the user chose a network
        self.session.update_settings(backbone=name, layer=_layer_names(name)[1])

    def _settings_from_ui(self, *_: Any) -> None:
        self.session.update_settings(**self._changed_settings(dict(
            backbone=self.backbone_combo.currentText(),
            weights=self.weights_combo.currentText().strip() or "imagenet",
            layer=self.layer_combo.currentText(), device=self.device_combo.currentText(),
            input_size=int(self.size_spin.value()))))
        self._show_device()

    def set_settings(self, **values: Any) -> None:
        """Set model settings programmatically (scripts, tests); the controls follow."""
        self.session.update_settings(**self._changed_settings(values))

    def _show_device(self) -> None:
        self.device_label.setText(f"using: {self.session.model.device_name()}")

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
        """Load a model; say which of its terms this folder does not label (none are added)."""
        from napari.utils.notifications import show_info

        left_out = self.session.model.load_bundle(path)
        if left_out:
            show_info(f"The model predicts {len(left_out)} terms this folder does not label "
                      "(shown on the canvas and in exports; Add term to label one): "
                      + ", ".join(left_out[:5]) + (" …" if len(left_out) > 5 else ""))

    def _model_changed(self) -> None:
        b = self.session.model.bundle
        if b is None:
            self.model_label.setText("no model (train one in the Train panel, or load a bundle)")
        else:
            self._end_first_run()  # the model's own network from now on
            e = b.extractor
            tuned = " (fine-tuned)" if self.session.model.finetuned is not None else ""
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
        return self.runner.start(steps.iter_extract, self.session.model.extract_request(),
                                 on_done=self._extracted, message="extracting features…",
                                 done_message="features ready")

    def _extracted(self, result: Any) -> None:
        self.session.model.apply_features(result)
        self._show_device()

    @shows_input_error
    def predict(self) -> Any:
        """Probabilities of every open image (extracts first if needed)."""
        return self.runner.start(steps.iter_predict, self.session.model.predict_request(),
                                 on_done=self.session.model.apply_predictions,
                                 message="predicting…", done_message="predictions ready")

    # ------------------------------------------------------------------ vocabulary
    @shows_input_error
    def _use_defaults(self) -> None:
        self.session.labels.use_default_vocabulary(self.stage_combo.currentText())

    @shows_input_error
    def _choose_term_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Term file (one term per line)", "",
                                              "Text (*.txt *.csv);;All files (*)")
        if path:
            self.session.labels.set_vocabulary(Path(path))

    @shows_input_error
    def _add_term(self) -> None:
        self.session.labels.add_term(self.new_term_edit.text())
        self.new_term_edit.clear()


class AnnotateWidget(SessionDock):
    """Predict and label the current embryo, one row per vocabulary term."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.model = ModelSection(self)
        self.terms = TermsSection(self)
        layout = QVBoxLayout(self.body)
        layout.addWidget(self.model)
        layout.addWidget(self.terms, 1)
