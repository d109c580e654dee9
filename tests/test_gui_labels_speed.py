"""Embryos table: the per-image label counts are computed once per open, and stay right."""

from __future__ import annotations

import pytest

from _gui_helpers import TERMS, click, dock, make_dataset

pytestmark = pytest.mark.gui


def test_open_counts_labels_once_and_counts_follow_changes(make_napari_viewer, tmp_path,
                                                           monkeypatch):
    """Every count is a LabelStore.label_matrix query (rows read, per call)."""
    from napari_ish_annotator.core.labels import LabelStore
    from napari_ish_annotator.widgets import session_of as get_session

    viewer = make_napari_viewer()
    embryos = dock(viewer, "Embryos")
    session = get_session(viewer)
    calls: list[int] = []
    real = LabelStore.label_matrix

    def counting(store, images, *args, **kwargs):
        calls.append(len(images))
        return real(store, images, *args, **kwargs)

    monkeypatch.setattr(LabelStore, "label_matrix", counting)
    assert embryos.open_paths([make_dataset(tmp_path / "a", n=6)])
    assert calls == [6]  # counted once, by the opening step (a worker in the GUI)
    assert [embryos.cell_text(r, 5) for r in range(6)] == [""] * 6
    counts = [embryos.cell_text(r, 4) for r in range(6)]
    assert counts == ["3/3"] * 6  # every manifest term is present or absent
    Y = session.labels.label_matrix()
    for r in range(6):
        i = int(embryos.cell_text(r, 0)) - 1
        assert embryos.cell_tip(r, 4).startswith(f"{int((Y[i] == 1).sum())} present")

    calls.clear()
    session.labels.set_label(TERMS[1], None, index=2)  # a keypress recounts its row only
    assert calls == [1] and embryos.cell_text(2, 4) == "2/3"

    calls.clear()
    session.labels.set_vocabulary([*TERMS, "new term"])  # a new vocabulary is counted again
    assert calls and embryos.cell_text(2, 4) == "2/4"
    assert embryos.cell_text(0, 4) == "3/4"

    calls.clear()  # opening another dataset: counted by the opening step again
    assert embryos.open_paths([make_dataset(tmp_path / "b", n=5, seed=1)])
    assert calls == [5]
    assert [embryos.cell_text(r, 4) for r in range(5)] == ["3/3"] * 5


def test_switching_label_file_runs_in_the_worker_without_rehashing(make_napari_viewer, qtbot,
                                                                   tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    from napari_ish_annotator.core.utils.errors import InputError
    from napari_ish_annotator.core.utils.hashing import FILE_HASHES
    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.session import steps
    from napari_ish_annotator.widgets import session_of as get_session

    viewer = make_napari_viewer()
    embryos = dock(viewer, "Embryos")
    assert embryos.open_paths([make_dataset(tmp_path / "a", n=6)])
    session = get_session(viewer)
    hashed = FILE_HASHES.hashed
    other = tmp_path / "mine.sqlite"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(other), ""))
    click(qtbot, embryos.store_button)
    qtbot.waitUntil(lambda: not embryos.runner.running, timeout=60_000)
    assert embryos.runner.last_outcome == "done", embryos.runner.last_error
    assert session.store.path == other and str(other) in embryos.store_label.text()
    assert FILE_HASHES.hashed == hashed  # the previous store's hashes were reused
    # the new file has no labels (not even the manifest's): counts show that
    assert [embryos.cell_text(r, 4) for r in range(6)] == ["0/3"] * 6
    session.labels.set_label(TERMS[0], 1, index=1)
    assert session.labels.labels_for(1)[TERMS[0]] == 1

    # a result prepared for images that are no longer open is refused, and its file released
    late = drive(steps.iter_use_store(*session.store_request(tmp_path / "late.sqlite")))
    assert embryos.open_paths([make_dataset(tmp_path / "b", n=4, seed=1)])
    current = session.store
    with pytest.raises(InputError, match="choose the label file again"):
        session.apply_store(late)
    assert session.store is current
    with pytest.raises(Exception, match="closed"):
        late.store.terms()
