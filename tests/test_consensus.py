"""Consensus of several annotators: agreement on hand-computed cases, Dawid-Skene on known
annotator noise, and training on the consensus of simulated noisy annotators."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ish_annotator.core.labels.consensus import (
    AnnotatorLabels,
    agreement,
    annotator_labels,
    consensus,
    consensus_labels,
    dawid_skene,
    disagreement_mask,
    fleiss_kappa,
    image_annotations,
    majority_vote,
)
from napari_ish_annotator.core.labels.store import LabelStore
from napari_ish_annotator.core.synthetic.simulate import (
    consensus_trial,
    noisy_annotators,
    synthetic_features,
)
from napari_ish_annotator.core.utils.errors import InputError


def labels_of(*rows: list[list[int]], terms: tuple[str, ...] = ("t",)) -> AnnotatorLabels:
    """AnnotatorLabels from one (n, T) list per annotator."""
    L = np.array(rows, dtype=np.int8)
    return AnnotatorLabels(tuple(f"a{i}" for i in range(len(rows))), terms, L)


def test_fleiss_kappa_matches_the_textbook_example():
    # Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories -> 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0],
             [2, 2, 8, 1, 1], [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2],
             [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa(np.array(table)) == pytest.approx(0.20993, abs=1e-4)
    assert fleiss_kappa(np.array([[3, 0], [2, 0]])) is None  # one category only


def test_agreement_of_two_annotators_is_cohens_kappa():
    # 50 images: both yes 20, a yes/b no 5, a no/b yes 10, both no 15 -> p_o 0.7, p_e 0.5
    a = [1] * 20 + [1] * 5 + [0] * 10 + [0] * 15
    b = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    res = agreement(labels_of([[x] for x in a], [[x] for x in b]))
    term = res.terms[0]
    assert (term.annotators, term.images, term.kappa_kind) == (2, 50, "cohen")
    assert term.observed == pytest.approx(0.7) and term.kappa == pytest.approx(0.4)
    assert res.overall.kappa == pytest.approx(0.4)


def test_agreement_of_three_annotators_is_fleiss_kappa_and_skips_single_labels():
    # per image (yes, no): (3,0) (2,1) (0,3) (1,2) -> P = 1, 1/3, 1, 1/3; mean 2/3;
    # p_yes = 6/12 -> P_e = 0.5 -> kappa 1/3. The fifth image has one label only.
    a = [[1], [1], [0], [1], [1]]
    b = [[1], [1], [0], [0], [-1]]
    c = [[1], [0], [0], [0], [-1]]
    term = agreement(labels_of(a, b, c)).terms[0]
    assert (term.images, term.kappa_kind) == (4, "fleiss")
    assert term.observed == pytest.approx(2 / 3) and term.kappa == pytest.approx(1 / 3)


def test_agreement_of_nothing_is_an_input_error():
    with pytest.raises(InputError, match="no labels"):
        agreement(labels_of([[-1]], [[-1]]))


def test_majority_vote_ties_and_min_agreement():
    # 3 annotators, 1 image, 3 terms: a 1-1 tie, 2 of 3 present, a single "present"
    L = np.array([[[1, 1, 1]], [[0, 0, -1]], [[-1, 1, -1]]], np.int8)
    np.testing.assert_array_equal(majority_vote(L), [[-1, 1, 1]])
    res = consensus(L, "majority", min_agreement=0.9)
    np.testing.assert_array_equal(res.labels, [[-1, -1, 1]])
    assert res.n_unsettled == 2 and res.n_images_left_out == 0


def test_dawid_skene_recovers_known_annotator_noise_and_beats_majority():
    rng = np.random.default_rng(0)
    truth = (rng.random((3000, 3)) < [0.5, 0.3, 0.15]).astype(np.int8)
    L = noisy_annotators(truth, (0.05, 0.2, 0.4), seed=1)
    model = dawid_skene(L)
    # three annotators barely identify 7 rates per term (noisy), hence the tolerance
    np.testing.assert_allclose(model.accuracy, [0.95, 0.8, 0.6], atol=0.05)
    np.testing.assert_allclose(model.prevalence, truth.mean(axis=0), atol=0.03)
    ds = consensus(L, "dawid-skene").labels
    maj = consensus(L, "majority").labels
    assert (ds == truth).mean() > (maj == truth).mean() + 0.02
    # the careful annotator outweighs the other two: DS follows her more closely
    assert (ds == L[0]).mean() > (maj == L[0]).mean() + 0.02
    stats = agreement(AnnotatorLabels(("good", "fair", "poor"), ("x", "y", "z"), L))
    assert stats.accuracy[0] > stats.accuracy[1] > stats.accuracy[2]


def test_one_annotator_alone_is_its_own_consensus():
    L = np.array([[[1, 0], [0, 1], [1, -1]]], np.int8)
    np.testing.assert_array_equal(consensus(L).labels, L[0])


def test_store_functions_for_the_gui(tmp_path):
    from test_labels import make_images

    imgs = make_images(tmp_path / "imgs")
    with LabelStore(tmp_path / "l.sqlite") as store:
        store.set_label(imgs[0], "brain", 1, annotator="ann")
        store.set_label(imgs[0], "brain", 0, annotator="bob")
        store.set_label(imgs[0], "gut", 1, annotator="bob")
        store.set_label(imgs[1], "brain", 1, annotator="ann")
        store.set_label(imgs[1], "brain", 1, annotator="bob")
        labels = annotator_labels(store, imgs, ["brain", "gut"])
        assert labels.annotators == ("ann", "bob") and labels.labels.shape == (2, 3, 2)
        np.testing.assert_array_equal(disagreement_mask(store, imgs, ["brain", "gut"]),
                                      [True, False, False])
        train = consensus_labels(store, imgs, ["brain", "gut"], "majority")
        np.testing.assert_array_equal(train.labels, [[-1, 1], [1, -1], [-1, -1]])
        tip = image_annotations(store, imgs[0], ["brain", "gut"])
        assert tip.tooltip("brain") == "ann: present, bob: absent"
        assert tip.of("gut") == {"bob": 1}
        assert image_annotations(store, imgs[2], ["gut"]).tooltip("gut").startswith("no ")
        with pytest.raises(InputError, match="unknown annotator.*'carl'.*'ann', 'bob'"):
            annotator_labels(store, imgs, annotators=["carl"])
        assert store.labelled_images() == store.labelled_images()[:2]
        assert store.unlabelled(imgs) == [imgs[2]]


@pytest.fixture(scope="module")
def features():
    return synthetic_features(600, seed=0)


def test_training_on_the_consensus_of_noisy_annotators_beats_one_annotator(features):
    trial = consensus_trial(features, flip=0.25, seed=0)
    auc = trial.auc
    assert auc["majority"] >= auc["single"] + 0.02
    assert auc["dawid-skene"] >= auc["majority"]
    assert auc["truth"] > auc["dawid-skene"]  # noise still costs something
    assert trial.label_accuracy["single"] == pytest.approx(0.75, abs=0.03)
