"""Extract, train, predict and explain in background workers, driven through the widgets."""

from __future__ import annotations

import numpy as np
import pytest

from _gui_helpers import TERMS, WAIT_MS, click, dock, embryo_png, make_dataset
from _gui_helpers import wait_done as _wait

pytestmark = pytest.mark.gui


def test_extract_train_predict_overlay_and_gradcam(make_napari_viewer, qtbot, tmp_path):
    from napari_ish_annotator.core.explain.gradcam import gradcam_for_image
    from napari_ish_annotator.widgets import session_of as get_session
    from napari_ish_annotator.widgets import text_overlay
    from napari_ish_annotator.widgets.explain import gradcam_layer

    manifest = make_dataset(tmp_path / "data")
    viewer = make_napari_viewer()
    embryos, annotate = dock(viewer, "Embryos"), dock(viewer, "Annotate")
    train, explain = dock(viewer, "Train"), dock(viewer, "Explain")
    assert embryos.open_paths([manifest])
    session = get_session(viewer)
    annotate.model.set_settings(weights="random", input_size=64, layer="21", device="cpu")
    assert annotate.model.device_label.text() == "using: cpu"

    click(qtbot, annotate.model.extract_button)
    assert annotate.model.runner.running  # in a worker: the GUI thread is free meanwhile
    _wait(qtbot, annotate.model.runner)
    X = session.model.features
    assert X.shape == (8, 512 * 8 * 8)  # relu4_2 at 64 px: 512 x 8 x 8

    # every term has 4 present / 4 absent labels (from the manifest), genes in pairs
    assert [train.table.item(r, 1).text() for r in range(3)] == ["4", "4", "4"]
    train.members_spin.setValue(3)
    click(qtbot, train.train_button)
    _wait(qtbot, train.runner)
    bundle = session.model.bundle
    assert bundle.classifier.vocabulary == list(TERMS)
    expected = bundle.classifier.predict_proba(X)
    np.testing.assert_allclose(session.model.probabilities, expected, rtol=1e-5, atol=1e-6)
    auc = session.model.train_report.auc  # 3 gene-grouped folds of 4 genes: not every term has one
    assert auc and set(auc) <= set(TERMS) and all(0.0 <= a <= 1.0 for a in auc.values())
    shown = {train.table.item(r, 0).text(): train.table.item(r, 3).text() for r in range(3)}
    assert all(shown[t] == f"{a:.2f}" for t, a in auc.items())

    # the Annotate list shows the model's numbers for the current image (image 3)
    session.set_index(3)
    for term, ptext, pred, _label in annotate.terms.row_values():
        p = expected[3, TERMS.index(term)]
        assert ptext == f"{p:.2f}"
        word = "yes" if p >= 0.5 else "no"  # the one rule, not the members' vote
        assert pred == (word + "?" if abs(p - 0.5) < 0.15 else word)
    # ... and the canvas lists exactly the terms called present
    text = text_overlay(viewer).text
    assert text_overlay(viewer).visible
    for k, term in enumerate(TERMS):
        assert (f"{expected[3, k]:.2f}  {term}" in text) == (expected[3, k] >= 0.5)
    # the table lists the top predicted terms
    assert embryos.cell_text(3, 5) != ""

    # Predict again from the (cached) features: same numbers
    session.model.probabilities = None
    click(qtbot, annotate.model.predict_button)
    _wait(qtbot, annotate.model.runner)
    np.testing.assert_allclose(session.model.probabilities, expected, rtol=1e-5, atol=1e-6)

    # Grad-CAM: one layer with the image's shape, and it follows the chosen term
    image = session.image()
    explain.term_combo.setCurrentText(TERMS[0])
    click(qtbot, explain.show_button)
    _wait(qtbot, explain.runner)
    layer = gradcam_layer(viewer)
    assert layer.name == f"Grad-CAM: {TERMS[0]}"
    assert layer.data.shape == image.shape[:2]
    assert layer.blending == "additive" and layer.colormap.name == "inferno"
    ref0 = gradcam_for_image(bundle, session.model.extractor(), image, TERMS[0])
    np.testing.assert_allclose(layer.data, ref0, atol=1e-5)

    table = annotate.terms.table  # click "brain" in the Annotate list
    click(qtbot, table.viewport(), table.visualItemRect(table.item(1, 1)).center())
    _wait(qtbot, explain.runner)
    assert gradcam_layer(viewer) is layer and layer.name == f"Grad-CAM: {TERMS[1]}"
    ref1 = gradcam_for_image(bundle, session.model.extractor(), image, TERMS[1])
    np.testing.assert_allclose(layer.data, ref1, atol=1e-5)
    assert not np.allclose(ref0, ref1)
    explain.opacity_slider.setValue(30)
    assert layer.opacity == pytest.approx(0.3)

    # all terms as a stack: one (T, H, W) layer, the slider picks the term
    explain.stack_check.setChecked(True)
    _wait(qtbot, explain.runner)
    stack = gradcam_layer(viewer)
    assert stack.data.shape == (3, *image.shape[:2])
    viewer.dims.set_current_step(0, 2)
    assert stack.name == f"Grad-CAM: {TERMS[2]}"
    assert len([lay for lay in viewer.layers if lay.metadata.get("ish_annotator") == "gradcam"]) == 1

    # File > Save on the embryo layer: labels manifest + predictions CSV (CONTRACTS.md)
    from napari_ish_annotator.core.data.manifest import read_manifest
    from napari_ish_annotator.widgets import embryo_layer

    out = tmp_path / "export" / "labels.csv"
    out.parent.mkdir()
    viewer.layers.selection = {embryo_layer(viewer)}
    viewer.layers.save(str(out), selected=True, plugin="napari-ish-annotator")
    exported = read_manifest(out, vocabulary=list(TERMS), require_positives=False)
    np.testing.assert_array_equal(exported.labels(), read_manifest(manifest).labels())
    rows = (out.parent / "labels.predictions.csv").read_text().splitlines()
    assert rows[0].split(",") == ["image", *TERMS, "calls"]
    first = [float(v) for v in rows[1].split(",")[1:1 + len(TERMS)]]
    np.testing.assert_allclose(first, expected[0], atol=1e-6)


def test_cancel_stops_extraction(make_napari_viewer, qtbot, tmp_path):
    from napari_ish_annotator.widgets import session_of as get_session

    manifest = make_dataset(tmp_path / "data", n=8)
    viewer = make_napari_viewer()
    embryos, annotate = dock(viewer, "Embryos"), dock(viewer, "Annotate")
    assert embryos.open_paths([manifest])
    session = get_session(viewer)
    annotate.model.set_settings(weights="random", input_size=224, batch_size=1, device="cpu")
    steps = []

    def on_step(step):
        steps.append(step)
        if step[0] >= 1 and annotate.model.runner.cancel_button.isEnabled():
            click(qtbot, annotate.model.runner.cancel_button)

    click(qtbot, annotate.model.extract_button)
    annotate.model.runner.worker.yielded.connect(on_step)
    qtbot.waitUntil(lambda: not annotate.model.runner.running, timeout=WAIT_MS)
    assert annotate.model.runner.last_outcome == "cancelled"
    assert annotate.model.runner.status.text() == "cancelled"
    assert session.model.features is None
    assert max(s[0] for s in steps) < 8
    assert annotate.model.extract_button.isEnabled()

    # an error in the worker (no ImageNet weights offline) is a message, not a crash
    from napari.utils.notifications import notification_manager

    before = len(notification_manager.records)
    annotate.model.set_settings(weights="imagenet")
    click(qtbot, annotate.model.extract_button)
    qtbot.waitUntil(lambda: not annotate.model.runner.running, timeout=WAIT_MS)
    if session.model.features is None:  # a machine with the weights in its cache just extracts
        assert annotate.model.runner.last_outcome == "error"
        assert "imagenet" in annotate.model.runner.last_error
        assert any("imagenet" in str(n.message) for n in notification_manager.records[before:])
        assert annotate.model.runner.status.text() == annotate.model.runner.last_error


def test_train_refuses_terms_without_both_labels(make_napari_viewer, qtbot, tmp_path):
    from napari_ish_annotator.widgets import session_of as get_session

    manifest = make_dataset(tmp_path / "data")
    viewer = make_napari_viewer()
    embryos, train = dock(viewer, "Embryos"), dock(viewer, "Train")
    assert embryos.open_paths([manifest])
    get_session(viewer).labels.add_term("midgut")
    assert train.table.rowCount() == 4
    click(qtbot, train.train_button)
    assert not train.runner.running
    assert "midgut (0 present, 0 absent)" in train.summary.text()
    assert get_session(viewer).model.bundle is None


def test_gradcam_layer_takes_the_maps_scale(make_napari_viewer, qtbot, tmp_path):
    """A large image's maps come smaller (GradcamMaps.scale); the layer is scaled up to cover
    the embryo exactly, also when a later map of another scale replaces its data."""
    from napari_ish_annotator.widgets import embryo_layer
    from napari_ish_annotator.widgets import session_of as get_session
    from napari_ish_annotator.widgets.explain import gradcam_layer

    manifest = make_dataset(tmp_path / "data")
    large = (1100, 2200)  # maps are at most 1024 px on a side: 512 x 1024 here
    embryo_png(tmp_path / "data" / "embryo_00.png", np.random.default_rng(9), set(), large)
    viewer = make_napari_viewer()
    embryos, annotate = dock(viewer, "Embryos"), dock(viewer, "Annotate")
    train, explain = dock(viewer, "Train"), dock(viewer, "Explain")
    assert embryos.open_paths([manifest])
    session = get_session(viewer)
    annotate.model.set_settings(weights="random", input_size=64, layer="21", device="cpu")
    train.members_spin.setValue(3)
    train.cv_check.setChecked(False)
    click(qtbot, train.train_button)
    _wait(qtbot, train.runner)
    explain.follow_check.setChecked(False)  # each map is the Show button's
    explain.term_combo.setCurrentText(TERMS[0])
    for index, map_shape in ((0, (512, 1024)), (1, (48, 96)), (0, (512, 1024))):
        session.set_index(index)
        click(qtbot, explain.show_button)
        _wait(qtbot, explain.runner)
        layer, base = gradcam_layer(viewer), embryo_layer(viewer)
        assert layer.visible and layer.data.shape == map_shape
        covered = np.multiply(layer.data.shape, layer.scale[-2:])
        np.testing.assert_allclose(covered, np.multiply(base.data.shape[:2], base.scale[-2:]))
        assert tuple(layer.translate[-2:]) == tuple(base.translate[-2:])
