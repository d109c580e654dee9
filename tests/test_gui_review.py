"""Problems found by driving the plugin as a user would (one test per fixed problem)."""

from __future__ import annotations

import numpy as np
import pytest

from _gui_helpers import TERMS, dock, make_dataset

pytestmark = pytest.mark.gui
WAIT_MS = 120_000


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ISH_ANNOTATOR_CACHE", str(tmp_path / "cache"))


def _wait(qtbot, runner):
    qtbot.waitUntil(lambda: not runner.running, timeout=WAIT_MS)
    assert runner.last_outcome == "done", runner.last_error


def test_gradcam_follows_a_retrained_model(make_napari_viewer, qtbot, tmp_path):
    """A map computed with the previous model must not stay on screen after retraining."""
    from napari_ish_annotator.core.gradcam import gradcam_for_image
    from napari_ish_annotator.widgets._session import get_session
    from napari_ish_annotator.widgets.explain import gradcam_layer

    viewer = make_napari_viewer()
    embryos, annotate = dock(viewer, "Embryos"), dock(viewer, "Annotate")
    train, explain = dock(viewer, "Train"), dock(viewer, "Explain")
    assert embryos.open_paths([make_dataset(tmp_path / "data")])
    session = get_session(viewer)
    annotate.set_settings(weights="random", input_size=64, layer="21", device="cpu")
    train.members_spin.setValue(3)
    train.cv_check.setChecked(False)
    train.train()
    _wait(qtbot, train.runner)
    explain.term_combo.setCurrentText(TERMS[1])
    explain.show_map()
    _wait(qtbot, explain.runner)
    old = np.array(gradcam_layer(viewer).data)

    train.c_spin.setValue(0.01)  # a different model: other probabilities, other maps
    train.train()
    _wait(qtbot, train.runner)
    qtbot.waitUntil(lambda: not explain.runner.running, timeout=WAIT_MS)
    layer = gradcam_layer(viewer)
    new = gradcam_for_image(session.bundle, session.extractor(), session.image(), TERMS[1])
    assert not np.allclose(old, new, atol=1e-4)
    assert layer.visible and layer.name == f"Grad-CAM: {TERMS[1]}"
    np.testing.assert_allclose(layer.data, new, atol=1e-5)

    # without "update when the image or term changes" the stale map is hidden instead
    explain.follow_check.setChecked(False)
    train.c_spin.setValue(1.0)
    train.train()
    _wait(qtbot, train.runner)
    assert not gradcam_layer(viewer).visible
