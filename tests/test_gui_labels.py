"""Labels: keys and the Annotate list write to SQLite at once, undo, reopen, locked store."""

from __future__ import annotations

import sqlite3

import pytest

from _gui_helpers import TERMS, dock, make_dataset, press

pytestmark = pytest.mark.gui


def _fresh_store_labels(path, image):
    """Read the SQLite file with a new connection, as another program would."""
    from napari_ish_annotator.core.labels.store import LabelStore

    with LabelStore(path, read_only=True) as store:
        return store.labels_for(image, fallback=("manifest",))


def _errors():
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records]


def test_labels_written_at_once_undone_and_restored(make_napari_viewer, qtbot, tmp_path):
    from napari_ish_annotator.core.labels.store import LabelStore
    from napari_ish_annotator.widgets import session_of as get_session

    manifest = make_dataset(tmp_path / "data")
    store_path = LabelStore.default_path_for(manifest)
    viewer = make_napari_viewer()
    embryos = dock(viewer, "Embryos")
    annotate = dock(viewer, "Annotate")
    assert embryos.open_paths([manifest])
    session = get_session(viewer)
    image0 = session.paths[0]
    # image 0 has no term in the manifest: all absent
    assert [row[3] for row in annotate.terms.row_values()] == ["absent"] * 3

    press(viewer, "2")  # brain: absent -> unknown
    assert _fresh_store_labels(store_path, image0)["brain"] is None
    press(viewer, "2")  # unknown -> present
    assert _fresh_store_labels(store_path, image0)["brain"] == 1
    assert annotate.terms.row_values()[1][3] == "present"
    assert embryos.cell_text(0, 4) == "3/3"
    assert embryos.cell_tip(0, 4) == "1 present, 2 absent"

    # the three-state control in the list writes too
    annotate.terms.choose_label("hindgut", "present")
    assert _fresh_store_labels(store_path, image0)["hindgut"] == 1

    # Ctrl+Z reverts the latest change only
    press(viewer, "Control-Z")
    assert _fresh_store_labels(store_path, image0)["hindgut"] != 1
    assert _fresh_store_labels(store_path, image0)["brain"] == 1
    assert annotate.terms.row_values()[2][3] != "present"

    # a second annotator's labels are kept apart; the first one's come back when switching
    me = session.annotator_name
    assert embryos.annotator_edit.text() == me
    embryos.annotator_edit.setText("second-annotator")
    embryos.annotator_edit.editingFinished.emit()
    assert session.annotator_name == "second-annotator"
    assert annotate.terms.row_values()[1][3] == "absent"  # falls back to the manifest
    press(viewer, "1")
    assert "second-annotator" in session.store.annotators()
    embryos.annotator_edit.setText(me)
    embryos.annotator_edit.editingFinished.emit()
    assert annotate.terms.row_values()[1][3] == "present"
    assert annotate.terms.row_values()[0][3] == "absent"

    # step on and label image 1 with the keyboard, then close the viewer
    press(viewer, "n")
    press(viewer, "3")  # hindgut of image 1 (absent in manifest) -> unknown
    press(viewer, "3")  # -> present
    viewer.close()
    qtbot.waitUntil(lambda: session.store is None, timeout=5000)  # store closed with the window

    viewer2 = make_napari_viewer()
    viewer2.open(str(manifest), plugin="napari-ish-annotator")
    session2 = get_session(viewer2)
    assert session2 is not session
    assert session2.labels.labels_for(0)["brain"] == 1
    assert session2.labels.labels_for(1)["hindgut"] == 1
    annotate2 = dock(viewer2, "Annotate")
    assert annotate2.terms.row_values()[1][3] == "present"
    Y = session2.labels.label_matrix()
    assert Y[0, TERMS.index("brain")] == 1 and Y[1, TERMS.index("hindgut")] == 1


def test_locked_store_gives_message_not_crash(make_napari_viewer, tmp_path):
    from napari_ish_annotator.core.labels.store import LabelStore
    from napari_ish_annotator.widgets import session_of as get_session

    manifest = make_dataset(tmp_path / "data")
    viewer = make_napari_viewer()
    annotate = dock(viewer, "Annotate")
    embryos = dock(viewer, "Embryos")
    assert embryos.open_paths([manifest])
    session = get_session(viewer)
    other = sqlite3.connect(LabelStore.default_path_for(manifest), isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another program holds the write lock
    try:
        before = len(_errors())
        press(viewer, "1")
        annotate.terms.choose_label(session.vocabulary[0], "present")
        messages = _errors()[before:]
        assert any("locked" in m for m in messages), messages
        assert annotate.terms.row_values()[0][3] == "absent"  # the list shows what is stored
    finally:
        other.execute("ROLLBACK")
        other.close()
    press(viewer, "1")  # works again once the lock is gone
    assert session.labels.labels_for(0)["ventral nerve cord"] is None


def test_export_labels_and_import_round_trip(make_napari_viewer, tmp_path):
    from napari_ish_annotator.core.data.manifest import read_manifest
    from napari_ish_annotator.widgets import session_of as get_session

    manifest = make_dataset(tmp_path / "data")
    viewer = make_napari_viewer()
    embryos = dock(viewer, "Embryos")
    assert embryos.open_paths([manifest])
    session = get_session(viewer)
    session.labels.set_label("brain", 1, index=0)
    out = tmp_path / "labels.csv"
    session.labels.export_manifest(out)
    ds = read_manifest(out, vocabulary=list(TERMS), require_positives=False)
    assert "brain" in ds.samples[0].terms
    original = read_manifest(manifest, require_positives=False)
    for a, b in list(zip(ds.samples, original.samples, strict=True))[1:]:
        assert set(a.terms) == set(b.terms)


def test_label_cell_click_opens_a_three_state_editor(make_napari_viewer, qtbot, tmp_path):
    """The label column is plain items (a live combo box per term cost 0.1-1 s of GUI time
    per vocabulary); a click on a label opens a combo box for that row only."""
    from qtpy.QtCore import Qt

    from napari_ish_annotator.core.labels.store import LabelStore
    from napari_ish_annotator.widgets import session_of as get_session

    manifest = make_dataset(tmp_path / "data")
    viewer = make_napari_viewer(show=True)
    annotator = dock(viewer, "ISH Annotator")  # the term list is always visible there
    terms = annotator.terms
    assert annotator.embryos.open_paths([manifest])
    session = get_session(viewer)
    table = terms.table
    qtbot.waitUntil(table.isVisible, timeout=5000)
    cells = [table.model().index(r, 4) for r in range(table.rowCount())]
    assert all(table.indexWidget(i) is None for i in cells)  # no widget per row

    row = TERMS.index("hindgut")
    rect = table.visualRect(cells[row])
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    editor = table.indexWidget(cells[row])
    assert editor is not None and editor.currentText() == "absent"
    assert [editor.itemText(k) for k in range(editor.count())] == ["unknown", "present", "absent"]
    editor.setCurrentText("present")
    editor.activated.emit(editor.currentIndex())  # what choosing from the popup emits
    qtbot.waitUntil(lambda: table.indexWidget(cells[row]) is None, timeout=2000)  # closed
    store = LabelStore.default_path_for(manifest)
    assert _fresh_store_labels(store, session.paths[0])["hindgut"] == 1
    assert terms.row_values()[row][3] == "present"

    # names and probabilities are not editable: a click there opens nothing
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton,
                     pos=table.visualRect(table.model().index(row, 1)).center())
    assert table.indexWidget(table.model().index(row, 1)) is None
