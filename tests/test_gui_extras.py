"""Several annotators, "next to label" and the bioimage.io export, driven through the widgets."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from _gui_helpers import TERMS, answer_save_dialog, click, dock, make_dataset, press
from _gui_helpers import wait_done as _wait

pytestmark = pytest.mark.gui


@pytest.fixture
def gui(make_napari_viewer, tmp_path):
    from napari_ish_annotator.widgets import session_of as get_session

    viewer = make_napari_viewer()
    embryos, annotate, train = dock(viewer, "Embryos"), dock(viewer, "Annotate"), dock(viewer, "Train")
    assert embryos.open_paths([make_dataset(tmp_path / "data")])
    annotate.model.set_settings(weights="random", input_size=64, layer="21", device="cpu")
    train.members_spin.setValue(3)
    train.cv_check.setChecked(False)
    return viewer, get_session(viewer), embryos, annotate, train


def _flip(session, who, index, term):
    session.set_annotator(who)
    was = session.store.labels_for(session.paths[index], fallback=("manifest",))[term]
    session.labels.set_label(term, 1 - was, index)
    return 1 - was


def test_disagreement_filter_hover_consensus_training_and_agreement(gui, qtbot, monkeypatch):
    viewer, session, embryos, annotate, train = gui
    new = _flip(session, "alice", 2, "brain")
    _flip(session, "bob", 2, "brain")
    embryos.disagree_check.setChecked(True)
    assert embryos.row_count() == 1 and embryos.image_at(0) == 2

    # with the filter on, a label change re-reads only its own image and the list follows
    from napari_ish_annotator.session import annotators

    read: list[int] = []
    real = annotators.disagreement_mask

    def counting(store, images, vocabulary=None):
        read.append(len(images))
        return real(store, images, vocabulary)

    session.set_annotator("alice")  # switching annotator re-reads every image, rightly
    monkeypatch.setattr(annotators, "disagreement_mask", counting)
    _flip(session, "alice", 5, "hindgut")  # alice now differs from the manifest on image 5
    assert read == [1]
    assert sorted(embryos.image_at(r) for r in range(embryos.row_count())) == [2, 5]
    monkeypatch.undo()
    embryos.disagree_check.setChecked(False)
    assert embryos.row_count() == 8

    session.set_index(2)
    word = {1: "present", 0: "absent"}
    assert annotate.terms.term_tooltip("brain").endswith(
        f"labels: manifest: {word[1 - new]}, alice: {word[new]}, bob: {word[new]}")

    mine = session.labels.label_matrix().copy()
    train.source_combo.setCurrentIndex(1)  # consensus of all annotators
    click(qtbot, train.train_button)
    _wait(qtbot, train.runner)
    assert session.model.bundle is not None and session.model.bundle.classifier.vocabulary == list(TERMS)
    np.testing.assert_array_equal(session.labels.label_matrix(), mine)  # no label lost

    click(qtbot, train.agreement_button)
    _wait(qtbot, train.runner)
    text = train.agreement_text.toPlainText()
    assert train.agreement_text.isVisibleTo(train) and "overall" in text and "bob" in text


def test_next_to_label_ranks_lists_first_and_shift_n_goes_on(gui, qtbot):
    viewer, session, embryos, annotate, train = gui
    from napari_ish_annotator.core.learn.active import suggest

    click(qtbot, embryos.suggest_button)  # no model yet: one message, nothing runs
    assert not embryos.runner.running and session.model.label_order is None
    click(qtbot, train.train_button)
    _wait(qtbot, train.runner)
    session.set_annotator("alice")
    for i in (1, 4, 6):
        session.labels.set_label("hindgut", None, i)
    click(qtbot, embryos.suggest_button)
    _wait(qtbot, embryos.runner)
    X = session.model.features[[1, 4, 6]]
    expected = np.array([1, 4, 6])[suggest(session.model.bundle.classifier, X,
                                           [session.genes[i] for i in (1, 4, 6)]).order]
    assert [embryos.image_at(r) for r in range(3)] == expected.tolist()
    assert session.index == expected[0]
    press(viewer, "Shift-N")
    assert session.index == expected[1]
    press(viewer, "Shift-N")
    assert session.index == expected[2]


def test_export_without_bioimageio_is_one_message_and_writes_nothing(gui, qtbot, tmp_path,
                                                                     monkeypatch):
    viewer, session, embryos, annotate, train = gui
    answer_save_dialog(monkeypatch, tmp_path / "m.zip")
    click(qtbot, train.export_button)  # no model yet
    assert not train.runner.running
    click(qtbot, train.train_button)
    _wait(qtbot, train.runner)
    monkeypatch.setitem(sys.modules, "bioimageio.core", None)
    click(qtbot, train.export_button)
    qtbot.waitUntil(lambda: not train.runner.running, timeout=60_000)
    assert train.runner.last_outcome == "error"
    assert "[bioimageio]" in train.runner.last_error
    assert not (tmp_path / "m.zip").exists()
    assert session.model.bundle is not None  # the model in use is untouched


def test_export_writes_a_package_that_passes_bioimageio_test(gui, qtbot, tmp_path, monkeypatch):
    viewer, session, embryos, annotate, train = gui
    click(qtbot, train.train_button)
    _wait(qtbot, train.runner)
    answer_save_dialog(monkeypatch, tmp_path / "m.zip")
    click(qtbot, train.export_button)
    _wait(qtbot, train.runner)
    assert (tmp_path / "m.zip").is_file()
    assert "passed" in train.summary.text()


def test_term_list_shows_the_finetuned_ensembles_spread(gui, qtbot, tmp_path, monkeypatch):
    """An ensemble from `finetune --ensemble K`, chosen as Weights with Weights file…, trained
    on, then Ensemble spread: the term list shows p ± the members' std."""
    from qtpy.QtWidgets import QFileDialog

    from napari_ish_annotator.core.finetune import FinetuneConfig, finetune_ensemble, load_ensemble

    viewer, session, embryos, annotate, train = gui
    click(qtbot, train.train_button)
    _wait(qtbot, train.runner)
    click(qtbot, train.spread_button)  # a model on random weights: one message, nothing runs
    assert not train.runner.running and session.model.member_spread is None
    config = FinetuneConfig(backbone="vgg16", weights="random", input_size=64, epochs=1,
                            batch_size=4, frozen="all", augment=False, device="cpu", seed=0)
    ckpt = tmp_path / "ens.pt"
    finetune_ensemble(list(session.paths), session.labels.label_matrix().copy(),
                      list(session.vocabulary), config, ckpt, k=2)
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        staticmethod(lambda *_a, **_k: (str(ckpt), "")))
    click(qtbot, annotate.model.weights_file_button)  # the user picks the ensemble file
    assert session.settings.weights == str(ckpt)
    click(qtbot, train.train_button)
    _wait(qtbot, train.runner)
    assert session.model.bundle.extractor.weights == str(ckpt) and session.model.finetuned is None
    session.set_index(5)
    click(qtbot, train.spread_button)
    _wait(qtbot, train.runner)
    std = load_ensemble(ckpt).predict_proba([session.paths[5]]).std[0]
    P = session.model.probabilities[5]
    for k, (term, ptext, _pred, _label) in enumerate(annotate.terms.row_values()):
        assert ptext == f"{P[k]:.2f} ± {std[k]:.2f}", term
