"""Explain panel: Grad-CAM maps of the current embryo, one reused image layer over it."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
)

from ..session import GradcamMaps, steps
from ._base import SessionDock
from ._errors import shows_input_error
from ._layer_data import META_KEY
from ._viewer_binding import embryo_layer
from ._worker import TaskRunner

COLORMAPS = ("inferno", "magma", "viridis", "turbo")


def gradcam_layer(viewer: Any) -> Any | None:
    for layer in viewer.layers:
        if layer.metadata.get(META_KEY) == "gradcam":
            return layer
    return None


class ExplainWidget(SessionDock):
    """Pick a term (or click one in Annotate) to see where the model looks for it."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        s = self.session
        self._stack_terms: list[str] = []
        self._requested: tuple | None = None

        self.term_combo = QComboBox()
        self.show_button = QPushButton("Show")
        self.show_button.setToolTip("compute and show the Grad-CAM map of this term")
        self.show_button.clicked.connect(self.show_map)
        trow = QHBoxLayout()
        trow.addWidget(self.term_combo, 1)
        trow.addWidget(self.show_button)
        self.follow_check = QCheckBox("update when the image or term changes")
        self.follow_check.setChecked(True)
        self.stack_check = QCheckBox("all terms as a stack (slider picks the term)")
        self.source_combo = QComboBox()
        self.source_combo.addItem("logistic ensembles (layer features)", "ensemble")
        self.source_combo.addItem("fine-tuned network (its own term outputs)", "finetuned")
        self.source_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.source_combo.setMinimumContentsLength(14)
        self.source_combo.setToolTip("with a fine-tuned backbone in use, show where the network "
                                     "itself looks for a term (its multi-task head)")
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(60)
        self.opacity_slider.valueChanged.connect(self._style_layer)
        self.colormap_combo = QComboBox()
        self.colormap_combo.addItems(COLORMAPS)
        self.colormap_combo.currentTextChanged.connect(self._style_layer)
        self.blending_combo = QComboBox()
        self.blending_combo.addItems(["additive", "translucent"])
        self.blending_combo.setToolTip("additive keeps the embryo visible under dark map areas; "
                                       "translucent reads better on very pale images")
        self.blending_combo.currentTextChanged.connect(self._style_layer)
        self.runner = TaskRunner()
        self.info = QLabel("Grad-CAM at the model's layer, scaled by the term's probability: "
                           "a term predicted absent stays dark.")
        self.info.setWordWrap(True)
        self.info.setStyleSheet("color: gray;")

        form = QFormLayout()
        form.addRow("Term", trow)
        form.addRow("Explain", self.source_combo)
        form.addRow("Opacity", self.opacity_slider)
        form.addRow("Colormap", self.colormap_combo)
        form.addRow("Blending", self.blending_combo)
        layout = QVBoxLayout(self.body)
        layout.addLayout(form)
        layout.addWidget(self.follow_check)
        layout.addWidget(self.stack_check)
        layout.addWidget(self.runner)
        layout.addWidget(self.info)
        layout.addStretch(1)

        self.term_combo.activated.connect(lambda *_: self._maybe_update())
        self.stack_check.toggled.connect(lambda *_: self._maybe_update(force=True))
        self.source_combo.activated.connect(lambda *_: self._maybe_update(force=True))
        self.listen(s.model_changed, self._model_changed)
        self.listen(s.vocabulary_changed, self._fill_terms)
        self.listen(s.term_selected, self.select_term)
        self.listen(s.current_changed, self._image_changed)
        self.listen(self.viewer.dims.events.current_step, self._dims_changed)
        self._fill_terms()

    def _fill_terms(self) -> None:
        current = self.term_combo.currentText()
        terms = self.session.model.terms
        self.term_combo.blockSignals(True)
        self.term_combo.clear()
        self.term_combo.addItems(terms)
        if current in terms:
            self.term_combo.setCurrentText(current)
        self.term_combo.blockSignals(False)
        self.show_button.setEnabled(bool(terms))
        tuned = self.session.model.finetuned is not None
        self.source_combo.model().item(1).setEnabled(tuned)
        if not tuned:
            self.source_combo.setCurrentIndex(0)

    def _model_changed(self) -> None:
        self._fill_terms()
        layer = gradcam_layer(self.viewer)
        if layer is None:
            return
        # a map of the previous model must not stay on screen for the new one
        terms = layer.metadata.get("terms") or []
        if (self.follow_check.isChecked() and terms
                and all(t in self.session.model.terms for t in terms)):
            if len(terms) == 1:
                self.term_combo.setCurrentText(terms[0])
            self._maybe_update(force=True)
        else:
            layer.visible = False

    def select_term(self, term: str) -> None:
        """Show ``term`` (called when a term is clicked in the Annotate list)."""
        if term in self.session.model.terms:
            self.term_combo.setCurrentText(term)
            self.stack_check.setChecked(False)
            self.show_map()

    def _image_changed(self, *_: Any) -> None:
        layer = gradcam_layer(self.viewer)
        if layer is None:
            return
        if self.follow_check.isChecked():
            self._maybe_update(force=True)
        else:  # never leave another image's map over this embryo
            layer.visible = False

    def _maybe_update(self, force: bool = False) -> None:
        if ((self.follow_check.isChecked() or force) and self.session.model.bundle is not None
                and self.term_combo.currentText()):
            self.show_map()

    @shows_input_error
    def show_map(self) -> Any:
        """Compute the map(s) for the current image in the background and show them."""
        s = self.session
        terms = (s.model.terms if self.stack_check.isChecked()
                 else [self.term_combo.currentText()])
        request = s.model.gradcam_request(
            terms, finetuned=self.source_combo.currentData() == "finetuned")
        if self.runner.running:
            self.runner.cancel()
            self.runner.worker = None  # the newer request wins; the old result is ignored
        self._requested = (request.index, request.terms, request.finetuned)
        return self.runner.start(steps.iter_gradcam, request, on_done=self._show_result,
                                 message="computing Grad-CAM…")

    def _show_result(self, result: GradcamMaps) -> None:
        if (result.index, result.terms) != (self._requested or (None, None))[:2]:
            return  # the user moved on; a newer request is on its way
        maps = result.maps
        terms = list(result.terms)
        data = maps[0] if len(terms) == 1 else maps
        layer = gradcam_layer(self.viewer)
        base = embryo_layer(self.viewer)
        kwargs: dict[str, Any] = {}
        if base is not None:  # a large image's maps are smaller: napari scales them up
            scale = tuple(s * f for s, f in zip(base.scale[-2:], result.scale, strict=True))
            kwargs = {"scale": scale, "translate": tuple(base.translate[-2:])}
        if layer is not None and layer.data.ndim != data.ndim:
            self.viewer.layers.remove(layer)
            layer = None
        self._stack_terms = terms if len(terms) > 1 else []
        if layer is None:
            if data.ndim == 3:
                kwargs = {k: (1.0, *v) if k == "scale" else (0.0, *v) for k, v in kwargs.items()}
            layer = self.viewer.add_image(
                data, name=self._name(terms), colormap=self.colormap_combo.currentText(),
                blending=self.blending_combo.currentText(), contrast_limits=(0.0, 1.0),
                opacity=self.opacity_slider.value() / 100, metadata={META_KEY: "gradcam"},
                **kwargs)
        else:
            layer.data = data
            if "scale" in kwargs:
                layer.scale = (*tuple(layer.scale)[:-2], *kwargs["scale"])
            layer.contrast_limits = (0.0, 1.0)
            layer.metadata["terms"] = terms
        layer.metadata["terms"] = terms
        layer.metadata["index"] = result.index
        layer.metadata["source"] = result.source
        layer.visible = True
        layer.name = self._name(terms)
        self._style_layer()
        if base is not None:
            # keep the embryo selected so keyboard shortcuts keep working on it
            with contextlib.suppress(Exception):
                self.viewer.layers.selection.active = base
        probs = dict(zip(terms, result.probabilities, strict=False))
        if len(terms) == 1:
            self.info.setText(self._probability_text(terms[0], probs[terms[0]], result))
        else:
            self.info.setText(f"{len(terms)} terms; move the slider under the canvas")

    def _probability_text(self, term: str, p: float, result: Any) -> str:
        """Name the model behind each number: the fine-tuned network's own output differs
        from the term list's probability (the logistic ensembles'), so both are labelled."""
        if result.source != "finetuned":
            return f"{term}: p = {p:.2f} from the term ensemble (the term list's probability)"
        listed = self.session.model.probabilities_for(result.index).get(term)
        other = ("" if listed is None else
                 f"; the term list's p = {listed:.2f} is the term ensemble's")
        return f"{term}: p = {p:.2f} from the fine-tuned network's own output{other}"

    def _name(self, terms: list[str]) -> str:
        if len(terms) == 1:
            return f"Grad-CAM: {terms[0]}"
        step = int(self.viewer.dims.current_step[0]) if self.viewer.dims.ndim > 2 else 0
        return f"Grad-CAM: {terms[min(max(step, 0), len(terms) - 1)]}"

    def _dims_changed(self, *_: Any) -> None:
        layer = gradcam_layer(self.viewer)
        if layer is not None and self._stack_terms and layer.data.ndim == 3:
            layer.name = self._name(self._stack_terms)

    def _style_layer(self, *_: Any) -> None:
        layer = gradcam_layer(self.viewer)
        if layer is not None:
            layer.opacity = self.opacity_slider.value() / 100
            layer.colormap = self.colormap_combo.currentText()
            layer.blending = self.blending_combo.currentText()

    def current_map(self) -> np.ndarray | None:
        layer = gradcam_layer(self.viewer)
        return None if layer is None else np.asarray(layer.data)
