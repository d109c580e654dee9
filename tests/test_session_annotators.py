"""Session steps for several annotators, "next to label" and the bioimage.io export (no Qt)."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from _gui_helpers import TERMS, make_dataset


def _in_thread(gen):
    """Drive a step in a worker thread (as the widgets do) and return its result."""
    from napari_ish_annotator.core.utils.progress import drive

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(drive, gen).result()


@pytest.fixture
def session(tmp_path):
    from napari_ish_annotator.session import AnnotatorSession

    s = AnnotatorSession(cache_dir=tmp_path / "cache", annotator="alice")
    s.open([make_dataset(tmp_path / "data", n=8)])
    s.update_settings(weights="random", input_size=64, layer="21", device="cpu", n_members=3)
    return s


def _flip(session, annotator, index, term):
    session.set_annotator(annotator)
    was = session.store.labels_for(session.paths[index], fallback=("manifest",)).get(term)
    session.labels.set_label(term, 1 - was, index)
    return 1 - was


def test_disagreement_and_each_annotators_label_on_hover(session):
    from napari_ish_annotator.session import annotators

    assert not annotators.disagreement(session).any()  # only the manifest's labels so far
    new = _flip(session, "alice", 2, "brain")
    mask = annotators.disagreement(session)
    assert mask.tolist() == [i == 2 for i in range(8)]
    tips = annotators.term_tooltips(session, 2)
    word = {1: "present", 0: "absent"}
    assert tips["brain"] == f"manifest: {word[1 - new]}, alice: {word[new]}"
    assert tips["hindgut"].startswith("manifest: ") and "alice" not in tips["hindgut"]


def test_consensus_request_trains_on_the_majority_and_keeps_my_labels(session):
    from napari_ish_annotator.core.labels.consensus import consensus
    from napari_ish_annotator.session import annotators, steps

    new = _flip(session, "alice", 0, "brain")
    _flip(session, "bob", 0, "brain")
    _flip(session, "bob", 5, "hindgut")  # one of two: a tie for majority vote
    mine = session.labels.label_matrix().copy()  # bob's view
    req = annotators.consensus_train_request(session, cross_validate=False, method="majority")
    b, h = session.vocabulary.index("brain"), session.vocabulary.index("hindgut")
    assert req.Y[0, b] == new          # two of three annotators
    assert req.Y[5, h] == -1           # manifest vs bob: no majority
    expected = consensus(annotators.annotator_labels(session), "majority").labels
    np.testing.assert_array_equal(req.Y, expected)
    result = _in_thread(steps.iter_train(req))
    session.model.apply_trained(result)
    assert session.model.bundle is not None
    np.testing.assert_array_equal(session.labels.label_matrix(), mine)  # no label lost or changed


def test_agreement_table_is_computed_in_a_worker(session):
    from napari_ish_annotator.session import annotators

    _flip(session, "alice", 1, "brain")
    table = _in_thread(annotators.iter_agreement(annotators.annotator_labels(session)))
    assert table.annotators == ("manifest", "alice")
    brain = {t.term: t for t in table.terms}["brain"]
    assert brain.images == 1 and brain.observed == 0.0  # the one shared image disagrees
    assert "overall" in table.format_table()


def test_next_to_label_follows_the_active_learning_order(session):
    from napari_ish_annotator.core.learn.active import suggest
    from napari_ish_annotator.core.utils.errors import InputError
    from napari_ish_annotator.session import model_outputs, steps

    with pytest.raises(InputError, match="needs a model"):
        model_outputs.suggest_request(session)
    session.model.apply_trained(_in_thread(steps.iter_train(session.model.train_request(False))))
    with pytest.raises(InputError, match="every open image is labelled"):
        model_outputs.suggest_request(session)  # the manifest labelled every term of every image
    for t in TERMS:  # an explicit "unknown" of alice's overrides the manifest
        session.labels.set_label(t, None, 3)
    session.labels.set_label("brain", None, 6)
    req = model_outputs.suggest_request(session)
    assert req.candidates.tolist() == [3, 6]
    order = _in_thread(model_outputs.iter_suggest(req))
    direct = suggest(session.model.bundle.classifier, session.model.features[[3, 6]],
                     [session.genes[3], session.genes[6]])
    assert order.images.tolist() == [[3, 6][k] for k in direct.order]
    session.model.apply_label_order(order)
    session.set_index(0)
    assert session.model.next_to_label() == order.images[0]
    assert session.model.next_to_label() == order.images[1]  # not the image on screen
    for t in TERMS:
        session.labels.set_label(t, 1, 3)
    session.labels.set_label("brain", 0, 6)
    assert session.model.next_to_label() is None  # every ranked image is labelled now
    old = session.generation
    session.open([session.source])
    assert session.generation != old
    session.model.apply_label_order(order)  # a ranking for images since replaced: dropped
    assert session.model.label_order is None or session.model.label_order.generation != session.generation


def test_export_request_and_missing_bioimageio_are_one_message(session, tmp_path, monkeypatch):
    from napari_ish_annotator.core.utils.errors import InputError
    from napari_ish_annotator.session import model_outputs, steps

    with pytest.raises(InputError, match="no model to export"):
        model_outputs.export_request(session, tmp_path / "m.zip")
    session.model.apply_trained(_in_thread(steps.iter_train(session.model.train_request(False))))
    with pytest.raises(InputError, match=r"\.zip"):
        model_outputs.export_request(session, tmp_path / "m.tar")
    req = model_outputs.export_request(session, tmp_path / "m.zip")
    monkeypatch.setitem(sys.modules, "bioimageio.core", None)
    with pytest.raises(InputError, match=r"\[bioimageio\]"):
        _in_thread(model_outputs.iter_export(req))
    assert not (tmp_path / "m.zip").exists()


@pytest.fixture
def ensemble_ckpt(session, tmp_path):
    """A 2-member fine-tuned ensemble (frozen backbone, one epoch: seconds)."""
    from napari_ish_annotator.core.finetune import FinetuneConfig, finetune_ensemble

    Y = session.labels.label_matrix().copy()
    config = FinetuneConfig(backbone="vgg16", weights="random", input_size=64, epochs=1,
                            batch_size=4, frozen="all", augment=False, device="cpu", seed=0)
    out = tmp_path / "ens.pt"
    finetune_ensemble(list(session.paths), Y, list(session.vocabulary), config, out, k=2)
    return out


@pytest.mark.slow  # the GUI test covers the same chain in the default suite
def test_member_spread_of_a_finetuned_ensemble(session, ensemble_ckpt):
    from napari_ish_annotator.core.finetune import load_ensemble
    from napari_ish_annotator.core.utils.errors import InputError
    from napari_ish_annotator.session import model_outputs, steps

    with pytest.raises(InputError, match="no fine-tuned model"):
        model_outputs.spread_request(session)
    session.model.apply_trained(_in_thread(steps.iter_train(session.model.train_request(False))))
    session.model.set_bundle(session.model.bundle, finetuned=ensemble_ckpt)
    spread = _in_thread(model_outputs.iter_member_spread(model_outputs.spread_request(session), batch=3))
    expected = load_ensemble(ensemble_ckpt).predict_proba(list(session.paths)).std
    np.testing.assert_allclose(spread.std, expected, atol=1e-5)
    assert spread.n_members == 2 and (spread.std > 0).any()
    session.model.apply_member_spread(spread)
    assert session.model.spread_for(4) == pytest.approx(dict(zip(TERMS, expected[4].tolist(), strict=True)))
    session.model.set_bundle(session.model.bundle, finetuned=None)  # another model: no stale spread
    assert session.model.spread_for(4) == {}
    session.model.apply_member_spread(spread)  # a late result for the model switched away from
    assert session.model.member_spread is None
