"""The Gallery dock driven as a user does: choose a term and a sort, click and Shift-click
previews, mark them with a button, undo with Ctrl+Z, double-click to show an embryo."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from _gui_helpers import TERMS, WAIT_MS, choose, click, dock, make_dataset

pytestmark = pytest.mark.gui


def _click(qtbot, gallery, row: int, modifier=Qt.KeyboardModifier.NoModifier) -> None:
    view = gallery.view
    rect = view.visualRect(gallery.model.index(row))
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, modifier, rect.center())


def test_gallery_marks_a_selection_in_one_undoable_batch(make_napari_viewer, qtbot, tmp_path):
    from napari_ish_annotator.widgets import session_of as get_session

    viewer = make_napari_viewer()
    embryos = dock(viewer, "Embryos")
    assert embryos.open_paths([make_dataset(tmp_path / "data", n=8)])
    session = get_session(viewer)
    gallery = dock(viewer, "Gallery")
    gallery.show()
    choose(qtbot, gallery.term_combo, TERMS[1])
    choose(qtbot, gallery.sort_combo, "list order")
    assert gallery.model.rowCount() == 8
    # previews arrive from the worker, each with the image's aspect ratio
    qtbot.waitUntil(lambda: len(gallery.model.icons) == 8, timeout=WAIT_MS)
    icon = gallery.model.data(gallery.model.index(0), Qt.ItemDataRole.DecorationRole)
    assert icon.availableSizes()[0].width() == 2 * icon.availableSizes()[0].height()

    before = session.labels.label_matrix()[:, 1].copy()
    _click(qtbot, gallery, 1)
    _click(qtbot, gallery, 4, Qt.KeyboardModifier.ShiftModifier)
    assert gallery.selected_images() == [1, 2, 3, 4]
    click(qtbot, gallery.buttons["absent"])
    assert (session.labels.label_matrix()[1:5, 1] == 0).all()
    assert "absent" in gallery.model.data(gallery.model.index(2), Qt.ItemDataRole.DisplayRole)
    # a key does the same for Ctrl-clicked images (both present in the manifest)
    _click(qtbot, gallery, 6)
    _click(qtbot, gallery, 7, Qt.KeyboardModifier.ControlModifier)
    assert gallery.selected_images() == [6, 7] and (before[6:8] == 1).all()
    qtbot.keyClick(gallery.view, Qt.Key.Key_A)
    assert (session.labels.label_matrix()[6:8, 1] == 0).all()
    # one Ctrl+Z per batch, newest first
    qtbot.keyClick(gallery.view, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    np.testing.assert_array_equal(session.labels.label_matrix()[6:8, 1], before[6:8])
    assert (session.labels.label_matrix()[1:5, 1] == 0).all()
    qtbot.keyClick(gallery.view, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    np.testing.assert_array_equal(session.labels.label_matrix()[:, 1], before)

    # filters and double-click
    choose(qtbot, gallery.gene_combo, "gene2")
    assert [int(i) for i in gallery.model.order] == [4, 5]
    qtbot.waitUntil(lambda: gallery.view.visualRect(gallery.model.index(1)).isValid())
    rect = gallery.view.visualRect(gallery.model.index(1))
    _click(qtbot, gallery, 1)  # a double-click is a click, then the second press
    qtbot.mouseDClick(gallery.view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert session.index == 5


def test_gallery_sorts_by_the_model_and_follows_the_table_layer(make_napari_viewer, qtbot,
                                                                 tmp_path):
    from _gui_helpers import wait_done
    from napari_ish_annotator.widgets import session_of as get_session
    from napari_ish_annotator.widgets import table_layer

    viewer = make_napari_viewer()
    embryos, annotate, train = dock(viewer, "Embryos"), dock(viewer, "Annotate"), dock(viewer, "Train")
    assert embryos.open_paths([make_dataset(tmp_path / "data", n=8)])
    session = get_session(viewer)
    annotate.model.set_settings(weights="random", input_size=64, layer="21", device="cpu")
    train.members_spin.setValue(3)
    train.cv_check.setChecked(False)
    train.train()
    wait_done(qtbot, train.runner)
    gallery = dock(viewer, "Gallery")
    choose(qtbot, gallery.term_combo, TERMS[0])
    choose(qtbot, gallery.sort_combo, "p high first")
    p = session.model.probabilities[:, 0]
    shown = [int(i) for i in gallery.model.order]
    assert np.all(np.diff(p[shown]) <= 0)
    choose(qtbot, gallery.sort_combo, "label contradicts the model")
    Y = session.labels.label_matrix()[:, 0]
    shown = [int(i) for i in gallery.model.order]
    assert np.all(np.diff(np.abs(Y[shown] - p[shown])) <= 1e-6)

    # the predictions are a layer's features table; picking points there selects embryos
    layer = table_layer(viewer)
    assert layer is not None and len(layer.features) == 8
    np.testing.assert_allclose(layer.features[f"p: {TERMS[0]}"], p, rtol=1e-6)
    layer.selected_data = {2, 5}
    assert sorted(gallery.selected_images()) == [2, 5]
