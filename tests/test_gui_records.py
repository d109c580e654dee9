"""Gene x stage records in the Embryos panel (issue 27): the current image's record, Accept
record writing every image's labels as one batch, one Ctrl+Z / Undo taking it all back."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt
from scipy.special import expit, logit

from _gui_helpers import (
    choose_small_model,
    click,
    dock,
    make_dataset,
    open_annotator,
    press,
    wait_done,
)


def _own(session, i):
    """The current annotator's own labels of image ``i`` (no manifest fallback)."""
    return {t: v for t, v in session.store.labels_for(session.paths[i], fallback=()).items()
            if v is not None}


@pytest.mark.gui
def test_accept_record_labels_every_image_and_one_undo_restores_all(
        make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from napari_ish_annotator.core.data.vocabulary import default_vocabulary
    from napari_ish_annotator.core.synthetic.embryos import generate_dataset
    manifest = generate_dataset(tmp_path / "data", 12, size=(64, 128), seed=0,
                                vocabulary=default_vocabulary("13-16")[:3], write_masks=False)
    viewer, annotator, session, watch = open_annotator(qtbot, make_napari_viewer, manifest,
                                                       monkeypatch)
    embryos, model, train = annotator.embryos, annotator.model, annotator.train
    section = embryos.record
    assert not section.accept_button.isEnabled()  # no prediction yet
    assert "Predict" in section.terms_label.text()

    embryos.annotator_edit.clear()
    qtbot.keyClicks(embryos.annotator_edit, "curator")
    qtbot.keyClick(embryos.annotator_edit, Qt.Key.Key_Return)
    assert session.annotator_name == "curator"
    choose_small_model(qtbot, model, train)
    click(qtbot, train.cv_check)
    click(qtbot, train.train_button)
    wait_done(qtbot, train.runner)

    qtbot.keyClicks(model.new_term_edit, "amnioserosa")  # added after training: no prediction
    click(qtbot, model.add_term_button)
    assert session.vocabulary[-1] == "amnioserosa"
    sizes = {g: session.genes.count(g) for g in session.genes}
    target = next(i for i, g in enumerate(session.genes) if 2 <= sizes[g] <= 3 and i > 0)
    while session.index < target:
        click(qtbot, embryos.next_button)
    gene = session.genes[target]
    members = [i for i, g in enumerate(session.genes) if g == gene]
    assert f"{gene} · stage 13-16 · {len(members)} images" in section.title.text()
    # the record's calls: the log-odds mean of its images' probabilities, called at 0.5
    P = np.clip(session.model.probabilities[members].astype(float), 1e-6, 1 - 1e-6)
    combined = expit(logit(P).mean(axis=0))
    called = {t for t, p in zip(session.model.terms, combined, strict=True) if p >= 0.5}
    for t in called:
        assert t in section.terms_label.text()
    assert "left as they are: amnioserosa" in section.terms_label.text()
    others = [i for i in range(session.n_images) if i not in members]
    before = {i: _own(session, i) for i in range(session.n_images)}
    assert all(not v for v in before.values())

    click(qtbot, section.accept_button)
    for i in members:  # every image of the record, as the curator's labels
        assert _own(session, i) == {t: int(t in called) for t in session.model.terms}
        assert {e.annotator for e in session.store.history(session.paths[i])
                if e.annotator != "manifest"} == {"curator"}
    assert all(_own(session, i) == {} for i in others)
    assert "accepted" in section.terms_label.text()

    press(viewer, "Control-Z")  # one undo takes the whole record back
    assert all(_own(session, i) == {} for i in range(session.n_images))
    press(viewer, "Control-Z")
    assert all(_own(session, i) == {} for i in range(session.n_images))
    assert watch.problems() == []


@pytest.mark.gui
def test_an_image_without_a_gene_is_a_record_of_its_own(make_napari_viewer, tmp_path):
    from napari_ish_annotator.widgets import session_of

    data = tmp_path / "data"
    make_dataset(data, n=4)
    (data / "manifest.csv").unlink()
    viewer = make_napari_viewer()
    embryos = dock(viewer, "Embryos")
    assert embryos.open_paths([data])
    assert session_of(viewer).genes[0] is None
    assert "this image alone" in embryos.record.title.text()
    assert "gene" in embryos.record.title.text()
    assert not embryos.record.accept_button.isEnabled()


def test_a_batch_is_undone_as_one_and_a_later_single_change_first(tmp_path):
    """Session level: a single change after a batch is undone first, then the whole batch."""
    from napari_ish_annotator.session import AnnotatorSession

    session = AnnotatorSession(cache_dir=tmp_path / "cache", annotator="a")
    session.open([make_dataset(tmp_path / "data", n=6)])
    terms = session.vocabulary
    assert session.labels.set_label_batch([(i, t, 1) for i in (0, 1, 2) for t in terms]) == 3 * len(terms)
    assert session.labels.set_label_batch([(0, t, 1) for t in terms]) == 0  # nothing changed: no batch
    session.labels.set_label(terms[0], 0, 4)
    assert session.labels.undo()
    assert _own(session, 4) == {} and _own(session, 1) == dict.fromkeys(terms, 1)
    assert session.index == 4
    assert session.labels.undo()
    assert all(_own(session, i) == {} for i in range(6))
    assert session.labels.label_matrix()[:3].tolist() == session.labels.label_matrix([0, 1, 2]).tolist()
    assert not session.labels.undo()
    with pytest.raises(Exception, match="unknown term"):
        session.labels.set_label_batch([(0, "no such term", 1)])
    with pytest.raises(Exception, match="label value"):  # all or nothing: nothing written
        session.store.set_labels([(session.paths[0], terms[0], 1), (session.paths[1], terms[0], 2)])
    assert all(_own(session, i) == {} for i in range(6))
