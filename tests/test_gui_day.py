"""A biologist's day in the annotator, by user actions only: clicks, keys, dialogs answered.

Open a manifest with one image missing, step, label by keys in the term list, undo, a second
annotator, train, threshold, u / Next to label / Shift+N, Explain, save the model, load it
and predict other images, fine-tune, switch models, export (panel and File > Save), reopen.
Each step asserts what the user would see: the list, the store, the files, the layers.
"""

from __future__ import annotations

import csv

import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog

from _gui_helpers import WAIT_MS, main_window, make_dataset, wait_done, wait_embryo_shown

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def _click(qtbot, button) -> None:
    assert button.isVisible() and button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def _answer(monkeypatch, method: str, value) -> None:
    """The next file dialog of this kind returns ``value`` (what the user picked)."""
    monkeypatch.setattr(QFileDialog, method, staticmethod(lambda *a, **k: value))


def _rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _notifications() -> int:
    from napari.utils.notifications import notification_manager

    return len(notification_manager.records)


def test_a_biologists_day(make_napari_viewer, qtbot, tmp_path, monkeypatch):  # noqa: PLR0915
    from napari_ish_annotator.widgets import embryo_layer, open_annotator, text_overlay
    from napari_ish_annotator.widgets.explain import gradcam_layer

    manifest = make_dataset(tmp_path / "data", n=10)
    (tmp_path / "data" / "embryo_05.png").unlink()  # one image went missing
    other = tmp_path / "other"
    make_dataset(other, n=4, seed=3)
    (other / "manifest.csv").unlink()  # a plain folder of new images

    viewer = make_napari_viewer(show=True)
    a = open_annotator(viewer)
    s, e, m, t, terms = a.session, a.embryos, a.model, a.train, a.terms
    main_window(viewer).resize(1366, 768)  # a laptop
    qtbot.waitUntil(e.open_manifest_button.isVisible)

    # open: the rest opens, the missing image is listed
    _answer(monkeypatch, "getOpenFileName", (str(manifest), "Manifest (*.csv)"))
    _click(qtbot, e.open_manifest_button)
    wait_done(qtbot, e.runner)
    wait_embryo_shown(qtbot, viewer)
    assert s.n_images == 9 and e.row_count() == 9
    assert "1 file(s) skipped" in e.skipped_label.text()
    assert "embryo_05.png" in e.skipped_label.toolTip()

    # a term the manifest does not have: add it, label it by keys on four images
    a.tabs.setCurrentIndex(1)
    qtbot.keyClicks(m.new_term_edit, "midgut")
    _click(qtbot, m.add_term_button)
    assert terms.row_values()[3][0] == "midgut" and terms.row_values()[3][3] == "unknown"
    terms.table.setFocus()
    for presses in (1, 1, 2, 2):  # unknown -> present -> absent
        for _ in range(presses):
            qtbot.keyClick(terms.table, Qt.Key.Key_4)
        qtbot.keyClick(terms.table, Qt.Key.Key_N)
    assert s.index == 4 and [s.labels.labels_for(i).get("midgut") for i in range(5)] == [1, 1, 0, 0, None]
    a.tabs.setCurrentIndex(0)
    for _ in range(4):
        _click(qtbot, e.prev_button)

    # step, label by keys while the term list has focus, undo
    _click(qtbot, e.next_button)
    assert s.index == 1 and terms.image_label.text().startswith("2/9")
    terms.table.setFocus()
    first = s.vocabulary[0]
    before, shown = s.labels.labels_for().get(first), terms.row_values()[0][3]
    n_notes = _notifications()
    qtbot.keyClick(terms.table, Qt.Key.Key_1)
    assert s.labels.labels_for().get(first) != before and terms.row_values()[0][3] != shown
    assert _notifications() == n_notes  # the list shows the change: no toast per key
    qtbot.keyClick(terms.table, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert s.labels.labels_for().get(first) == before and terms.row_values()[0][3] == shown
    qtbot.keyClick(terms.table, Qt.Key.Key_N)
    assert s.index == 2
    qtbot.keyClick(terms.table, Qt.Key.Key_2)  # image 3: the second term cycles to present
    second = s.vocabulary[1]
    mine = s.labels.labels_for().get(second)
    assert terms.row_values()[1][3] == {1: "present", 0: "absent", None: "unknown"}[mine]

    # a second annotator labels the same image; the first one's label stays in the store
    first_name = s.annotator_name
    e.annotator_edit.selectAll()
    qtbot.keyClicks(e.annotator_edit, "bob")
    qtbot.keyClick(e.annotator_edit, Qt.Key.Key_Return)
    assert s.annotator_name == "bob"
    terms.table.setFocus()
    qtbot.keyClick(terms.table, Qt.Key.Key_3)
    assert {first_name, "bob"} <= set(s.store.annotators())
    e.annotator_edit.selectAll()  # back to one's own labels (training reads them)
    qtbot.keyClicks(e.annotator_edit, first_name)
    qtbot.keyClick(e.annotator_edit, Qt.Key.Key_Return)
    assert s.annotator_name == first_name and s.labels.labels_for().get(second) == mine

    # train (small and fast: random weights at 64 px), then the calls on the canvas
    a.tabs.setCurrentIndex(1)
    m.weights_combo.setCurrentText("random")
    m.size_spin.setValue(64)
    a.tabs.setCurrentIndex(3)
    t.options_section.expand()
    t.cv_check.setChecked(False)
    t.members_spin.setValue(3)
    _click(qtbot, t.train_button)
    assert t.runner.running, t.summary.text()
    wait_done(qtbot, t.runner)
    assert s.model.probabilities is not None and s.model.probabilities.shape[0] == 9
    assert all(row[1] != "–" for row in terms.row_values())
    # the canvas lists the terms called present (one rule, issue 26), as the pred. column says
    called = [t for t, c in s.model.called_for().items() if c]
    assert len(text_overlay(viewer).text.splitlines()) == 1 + max(1, len(called))
    assert sum(row[2].rstrip("?") == "yes" for row in terms.row_values()) == len(called)

    # u, then Next to label opens the top of the ranking and Shift+N walks on from it
    terms.table.setFocus()
    qtbot.keyClick(terms.table, Qt.Key.Key_U)  # moves or says why in the status bar
    qtbot.keyClick(terms.table, Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)
    assert "no 'next to label' order yet" in str(viewer.status)
    a.tabs.setCurrentIndex(0)
    e.sort_by(0)
    _click(qtbot, e.suggest_button)
    wait_done(qtbot, e.runner)
    order = s.model.label_order.images.tolist()
    assert s.index == order[0] and e.image_at(0) == order[0]
    assert e.table.horizontalHeader().sortIndicatorSection() == -1  # no stale "#" arrow
    terms.table.setFocus()
    qtbot.keyClick(terms.table, Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)
    assert s.index == order[1]

    # Explain: the map and which model its probability comes from
    a.tabs.setCurrentIndex(2)
    _click(qtbot, a.explain.show_button)
    wait_done(qtbot, a.explain.runner)
    assert gradcam_layer(viewer) is not None
    assert "term ensemble" in a.explain.info.text()

    # save the model, export labels and predictions from the panel and with File > Save
    bundle_dir = tmp_path / "model"
    _answer(monkeypatch, "getSaveFileName", (str(bundle_dir), ""))
    a.tabs.setCurrentIndex(3)
    _click(qtbot, t.save_button)
    assert bundle_dir.is_dir() and any(bundle_dir.iterdir())
    labels_before = {i: s.labels.labels_for(i) for i in range(s.n_images)}
    a.tabs.setCurrentIndex(0)
    e.files_section.expand()
    qtbot.wait(20)
    _answer(monkeypatch, "getSaveFileName", (str(tmp_path / "labels.csv"), "CSV (*.csv)"))
    _click(qtbot, e.export_labels_button)
    assert len(_rows(tmp_path / "labels.csv")) == 9
    _answer(monkeypatch, "getSaveFileName", (str(tmp_path / "pred.csv"), "CSV (*.csv)"))
    _click(qtbot, e.export_pred_button)
    pred = _rows(tmp_path / "pred.csv")
    assert len(pred) == 9 and set(s.model.terms) <= set(pred[0])
    viewer.layers.selection = {embryo_layer(viewer)}
    builtin = _default_writer(embryo_layer(viewer))  # the dialog's first, default file type
    saved = viewer.layers.save(str(tmp_path / "saved.csv"), selected=True, _writer=builtin)
    assert saved[0].endswith("saved.csv") and len(_rows(tmp_path / "saved.csv")) == 9
    assert (tmp_path / "saved.predictions.csv").is_file()

    # fine-tune (tiny, random weights), then switch back to the model before it
    a.tabs.setCurrentIndex(3)
    t.finetune_section.expand()
    sec = t.finetune
    sec.epochs_spin.setValue(1)
    sec.batch_spin.setValue(4)
    sec.frozen_combo.setCurrentIndex(sec.frozen_combo.findData("24"))
    sec.augment_check.setChecked(False)
    sec.device_combo.setCurrentText("cpu")
    qtbot.wait(20)
    _click(qtbot, sec.start_button)
    qtbot.waitUntil(lambda: not sec.runner.running, timeout=WAIT_MS)
    assert sec.runner.last_outcome == "done", sec.runner.last_error
    assert s.model.finetuned is not None
    _click(qtbot, sec.switch_button)
    assert s.model.finetuned is None and s.model.bundle is not None

    # other images: open the folder, load the saved model, predict
    _answer(monkeypatch, "getExistingDirectory", str(other))
    a.tabs.setCurrentIndex(0)
    _click(qtbot, e.open_folder_button)
    wait_done(qtbot, e.runner)
    assert s.n_images == 4
    _answer(monkeypatch, "getExistingDirectory", str(bundle_dir))
    a.tabs.setCurrentIndex(1)
    folder_terms, listed = set(s.store.terms()), list(s.vocabulary)
    _click(qtbot, m.load_model_button)  # its terms predict here; none join this label file
    assert set(s.store.terms()) == folder_terms and s.vocabulary == listed
    _click(qtbot, m.predict_button)
    wait_done(qtbot, m.runner)
    assert s.model.probabilities is not None and s.model.probabilities.shape == (4, 4)
    assert "midgut" in text_overlay(viewer).text  # the model's own terms are on the canvas

    # reopen the first manifest: every label is back
    _answer(monkeypatch, "getOpenFileName", (str(manifest), "Manifest (*.csv)"))
    a.tabs.setCurrentIndex(0)
    _click(qtbot, e.open_manifest_button)
    wait_done(qtbot, e.runner)
    assert s.n_images == 9
    assert {i: s.labels.labels_for(i) for i in range(9)} == labels_before


def _default_writer(layer):
    """The writer File > Save Selected Layer(s) selects by default (its first file type)."""
    from napari.plugins import _npe2

    _, writers = _npe2.file_extensions_string_for_layers([layer])
    return writers[0]
