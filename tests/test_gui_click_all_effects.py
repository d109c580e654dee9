"""The buttons of issue 22 do their work when clicked, and every documented key works on
the canvas and in the term table (clicks and key presses only; the walk over every control
is in test_gui_click_all.py)."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel

from _gui_helpers import (
    TERMS,
    Watch,
    click,
    dock,
    make_dataset,
    open_and_train,
    press,
    wait_done,
    wait_embryo_shown,
)

pytestmark = pytest.mark.gui


def test_issue_22_buttons_do_their_work(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from napari_ish_annotator.core.data.manifest import read_manifest
    from napari_ish_annotator.core.data.vocabulary import default_vocabulary
    from napari_ish_annotator.widgets import session_of as get_session
    from napari_ish_annotator.widgets.explain import gradcam_layer

    viewer = make_napari_viewer(show=True)
    annotator = dock(viewer, "ISH Annotator")
    watch = Watch(monkeypatch)
    dialogs = open_and_train(qtbot, viewer, annotator.model, annotator.train, tmp_path,
                             monkeypatch, watch)  # clicks Train from labels and Save model…
    session = get_session(viewer)
    embryos, model, explain = annotator.embryos, annotator.model, annotator.explain
    saved = dialogs.model()
    assert (saved / "manifest.json").exists() or any(saved.iterdir())

    click(qtbot, embryos.import_button)
    click(qtbot, embryos.export_labels_button)
    exported = read_manifest(dialogs.saved[-1], vocabulary=list(TERMS), require_positives=False)
    manifest = read_manifest(tmp_path / "data" / "manifest.csv")
    np.testing.assert_array_equal(exported.labels(), manifest.labels())

    click(qtbot, model.extract_button)
    wait_done(qtbot, model.runner)
    assert session.model.features is not None and session.model.features.shape[0] == 6
    session_probabilities = session.model.probabilities
    click(qtbot, model.predict_button)
    wait_done(qtbot, model.runner)
    assert session.model.probabilities is not session_probabilities
    click(qtbot, embryos.export_pred_button)
    rows = dialogs.saved[-1].read_text().splitlines()
    assert rows[0].split(",") == ["image", *TERMS, "calls"] and len(rows) == 7
    # predictions add the embryo table layer; the embryo layer stays active, so the number
    # keys on the canvas still label (a selected Points layer would take them over)
    assert viewer.layers.selection.active is not None
    assert viewer.layers.selection.active.name != "ISH embryo table"
    before = session.labels.labels_for()[TERMS[0]]
    press(viewer, "1")
    assert session.labels.labels_for()[TERMS[0]] != before
    press(viewer, "Control-Z")

    explain.term_combo.setCurrentText(TERMS[1])
    click(qtbot, explain.show_button)
    wait_done(qtbot, explain.runner)
    assert gradcam_layer(viewer).name == f"Grad-CAM: {TERMS[1]}"

    click(qtbot, model.defaults_button)
    assert session.vocabulary == list(default_vocabulary(model.stage_combo.currentText()))
    click(qtbot, model.term_file_button)  # answered with a file of TERMS
    assert session.vocabulary == list(TERMS)
    qtbot.keyClicks(model.new_term_edit, "midgut")
    qtbot.keyClick(model.new_term_edit, Qt.Key.Key_Return)  # returnPressed
    qtbot.keyClicks(model.new_term_edit, "amnioserosa")
    click(qtbot, model.add_term_button)
    assert session.vocabulary == [*TERMS, "midgut", "amnioserosa"]
    assert model.new_term_edit.text() == ""

    trained = session.model.bundle
    click(qtbot, model.load_model_button)  # answered with the bundle Save model… wrote
    assert session.model.bundle is not trained
    assert session.model.bundle.classifier.vocabulary == list(TERMS)
    assert model.model_label.text().startswith(f"{len(TERMS)} terms")
    assert watch.problems() == []


def _open(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    make_dataset(tmp_path / "data", n=6)
    viewer.open(str(tmp_path / "data" / "manifest.csv"), plugin="napari-ish-annotator")
    annotator = dock(viewer, "ISH Annotator")
    wait_embryo_shown(qtbot, viewer)
    return viewer, annotator


def test_documented_keys_on_the_canvas(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """n/p and PageDown/PageUp step, 1-9/0 cycle the first ten terms, Ctrl+Z undoes, u and
    Shift+N say what they need (the term list's hint documents these keys)."""
    from napari_ish_annotator.widgets import session_of as get_session

    viewer, annotator = _open(make_napari_viewer, qtbot, tmp_path)
    session = get_session(viewer)
    hint = " ".join(w.text() for w in annotator.terms.findChildren(QLabel))
    for documented in ("1-9, 0", "n/p", "u next uncertain", "Shift+N", "Ctrl+Z"):
        assert documented in hint
    watch = Watch(monkeypatch)
    for key, index in (("n", 1), ("n", 2), ("p", 1), ("PageDown", 2), ("PageUp", 1)):
        press(viewer, key)
        assert session.index == index
    before = dict(session.labels.labels_for())
    for k, key in enumerate("123"):
        press(viewer, key)
        assert session.labels.labels_for()[TERMS[k]] != before[TERMS[k]]
    for key in "490":  # beyond the 3 terms: nothing
        press(viewer, key)
    for _ in range(3):
        press(viewer, "Control-Z")
    assert session.labels.labels_for() == before
    press(viewer, "u")
    press(viewer, "Shift-N")
    assert session.index == 1
    assert watch.problems() == []


def test_documented_keys_in_the_term_table(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """After a click on a term, the keys still label and step: the user's hand stays on the
    keyboard (issue 22: they did nothing until the canvas was clicked)."""
    from napari_ish_annotator.widgets import session_of as get_session

    viewer, annotator = _open(make_napari_viewer, qtbot, tmp_path)
    session = get_session(viewer)
    table = annotator.terms.table
    watch = Watch(monkeypatch)
    rect = table.visualItemRect(table.item(0, 1))  # the "term" cell of the first row
    click(qtbot, table.viewport(), rect.center())
    before = dict(session.labels.labels_for())
    pressed = [Qt.Key.Key_1, Qt.Key.Key_Z, Qt.Key.Key_N, Qt.Key.Key_P, Qt.Key.Key_U,
               Qt.Key.Key_PageDown]
    for key in pressed:
        modifier = (Qt.KeyboardModifier.ControlModifier if key == Qt.Key.Key_Z
                    else Qt.KeyboardModifier.NoModifier)
        qtbot.keyClick(table, key, modifier)
    assert watch.problems() == []  # whatever the keys do, nothing may break
    assert session.index == 1  # n, p, u (no model: a status-bar hint), PageDown
    assert session.labels.labels_for(0) == before  # 1 then Ctrl+Z
