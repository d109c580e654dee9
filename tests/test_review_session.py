"""The Qt-free review layer (session.review): Gallery order and filters, marks as one undoable
batch, the per-image features table."""

from __future__ import annotations

import numpy as np
import pytest

from _gui_helpers import TERMS, make_dataset
from napari_ish_annotator.core.utils.progress import drive
from napari_ish_annotator.session import AnnotatorSession, Predictions, steps
from napari_ish_annotator.session.review import (
    SORTS,
    GalleryFilter,
    embedding,
    features_table,
    gallery_order,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("review")
    s = AnnotatorSession(cache_dir=tmp / "cache", annotator="ana")
    s.open([make_dataset(tmp / "data", n=8)])
    s.update_settings(weights="random", input_size=64, layer="21", device="cpu", n_members=3)
    s.model.apply_trained(drive(steps.iter_train(s.model.train_request(cross_validate=False))))
    return s


def test_sorts_follow_the_probability_and_the_labels(trained):
    s, term = trained, TERMS[0]
    p = s.model.probabilities[:, 0].astype(np.float64)
    assert list(gallery_order(s, term, "list order")) == list(range(8))
    high = gallery_order(s, term, "p high first")
    assert np.all(np.diff(p[high]) <= 0) and sorted(high) == list(range(8))
    assert list(gallery_order(s, term, "p low first")) == list(np.argsort(p, kind="stable"))
    near = gallery_order(s, term, "uncertain first")
    assert np.all(np.diff(np.abs(p[near] - 0.5)) >= 0)
    Y = s.labels.label_matrix()[:, 0]
    wrong = gallery_order(s, term, "label contradicts the model")
    assert np.all(np.diff(np.abs(Y[wrong] - p[wrong])) <= 1e-12)
    with pytest.raises(Exception, match="unknown sort"):
        gallery_order(s, term, "by colour")
    assert len(SORTS) == 6


def test_filters_by_gene_stage_and_labelled(trained):
    s, term = trained, TERMS[1]
    gene = s.genes[0]
    rows = gallery_order(s, term, "list order", GalleryFilter(gene=gene))
    assert len(rows) and all(s.genes[i] == gene for i in rows)
    assert len(gallery_order(s, term, "list order", GalleryFilter(stage="4-6"))) == 0
    assert len(gallery_order(s, term, "list order", GalleryFilter(labelled="unlabelled"))) == 0


def test_marks_are_one_batch_that_one_undo_reverts(tmp_path):
    s = AnnotatorSession(cache_dir=tmp_path / "cache", annotator="ana")
    s.open([make_dataset(tmp_path / "data", n=8)])
    term = TERMS[2]
    before = s.labels.label_matrix()[:, 2].copy()
    v0 = int(s.labels.label_matrix()[7, 0])
    s.labels.set_label(TERMS[0], 1 if v0 != 1 else 0, 7)  # an ordinary single change first
    changed = s.labels.set_labels(term, 1, [0, 1, 2, 3, 4, 5, 5])
    assert changed == int((before[:6] != 1).sum()) > 1  # images already present: no event
    assert (s.labels.label_matrix()[:6, 2] == 1).all()
    mine = gallery_order(s, term, "list order", GalleryFilter(annotator="ana"))
    assert list(mine) == [i for i in range(6) if before[i] != 1]  # what ana labelled
    assert s.labels.undo()  # one undo: the whole batch
    np.testing.assert_array_equal(s.labels.label_matrix()[:, 2], before)
    assert s.labels.label_matrix()[7, 0] != v0  # the single change before it stays ...
    assert s.labels.undo() and s.labels.label_matrix()[7, 0] == v0  # ... until the next undo


def test_features_table_has_one_row_per_image_with_calls_and_a_map(trained):
    table = features_table(trained)
    assert len(table) == 8 and list(table["index"]) == list(range(8))
    for k, term in enumerate(TERMS):
        np.testing.assert_allclose(table[f"p: {term}"], trained.model.probabilities[:, k], rtol=1e-6)
    for i in range(8):
        called = [t for t in TERMS if trained.model.called_for(i)[t]]
        assert table["calls"][i] == ";".join(called) and table["n_calls"][i] == len(called)
    assert np.isfinite(table[["pc1", "pc2"]].to_numpy()).all()
    P = np.array([[0.9, 0.1], [0.1, 0.9], [np.nan, 0.5]])
    xy = embedding(P)
    assert np.isnan(xy[2]).all() and abs(xy[0, 0] - xy[1, 0]) > 1.0


def test_previews_are_cached_by_content_and_a_planted_cache_file_is_remade(tmp_path):
    from PIL import Image

    from napari_ish_annotator.core.data.budget import pixel_budget
    from napari_ish_annotator.core.data.thumbnails import iter_thumbnails, thumbnail
    from napari_ish_annotator.core.utils.hashing import content_hash

    img = tmp_path / "a.png"
    Image.fromarray(np.full((50, 200, 3), 120, np.uint8)).save(img)
    thumb = thumbnail(img, tmp_path / "cache", size=40)
    assert thumb.shape == (10, 40, 3) and thumb.dtype == np.uint8
    digest = content_hash(img)
    cached = tmp_path / "cache" / "thumbnails" / "40" / digest[:2] / f"{digest}.npy"
    assert cached.is_file()
    np.save(cached, np.zeros((3, 3), np.float64))  # damaged / planted: wrong shape and dtype
    again = thumbnail(img, tmp_path / "cache", size=40)
    np.testing.assert_array_equal(again, thumb)
    assert np.load(cached, allow_pickle=False).shape == (10, 40, 3)  # remade
    # an image over the pixel budget, or not an image, gives no preview instead of an error
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not a png")
    with pixel_budget(100):
        out = dict(iter_thumbnails([img, bad], [1, 0], tmp_path / "cache2", size=40))
    assert out == {1: None, 0: None}


def test_contradicts_sort_judges_labels_by_the_trains_held_out_p(tmp_path):
    """After a cross-validated Train the "contradicts" sort uses the p of ensembles that held
    the image's gene out: the very p `ish-annotator suspicious` computes (same folds), not the
    current model's p, which saw the label; images labelled since fall back to the current p."""
    from napari_ish_annotator.core.learn.logistic import EnsembleConfig
    from napari_ish_annotator.core.learn.review import contradiction, iter_out_of_fold_probabilities
    from napari_ish_annotator.session.review import held_out_probabilities

    s = AnnotatorSession(cache_dir=tmp_path / "cache", annotator="ana")
    s.open([make_dataset(tmp_path / "data", n=8)])
    s.update_settings(weights="random", input_size=64, layer="21", device="cpu", n_members=3)
    term = TERMS[1]
    before = s.labels.label_matrix()[5].copy()
    for t in TERMS:  # one image without any label at Train time
        s.labels.set_label(t, None, 5)
    genes = 4
    s.model.apply_trained(drive(steps.iter_train(s.model.train_request(cross_validate=True, n_folds=genes))))
    assert s.model.held_out is not None and s.model.held_out.bundle is s.model.bundle

    Y, X = s.labels.label_matrix(), s.model.extracted.X
    cfg = EnsembleConfig(n_members=3, C=s.settings.C, seed=s.settings.seed)
    suspicious_p = drive(iter_out_of_fold_probabilities(X, Y, s.dataset.groups(), cfg,
                                                        s.vocabulary, folds=genes))
    held = held_out_probabilities(s, term)
    np.testing.assert_allclose(held[Y[:, 1] >= 0], suspicious_p[Y[:, 1] >= 0, 1], rtol=1e-5)
    current = s.model.probabilities[:, 1].astype(np.float64)
    assert not np.allclose(held, current)  # a model that saw the labels says something else
    assert held[5] == current[5]  # unlabelled at Train time: the current p

    s.labels.set_label(term, int(before[1]), 5)  # labelled since: judged by the current p
    order = gallery_order(s, term, "label contradicts the model")
    expected = np.argsort(-contradiction(s.labels.label_matrix()[:, 1], held), kind="stable")
    assert list(order) == list(expected)

    s.model.set_bundle(s.model.bundle.__class__(**{**s.model.bundle.__dict__}))  # another model: no held-out p
    s.model.apply_predictions(Predictions(current.repeat(len(TERMS)).reshape(8, -1),
                                          np.zeros((8, len(TERMS)), bool), s.generation))
    np.testing.assert_array_equal(held_out_probabilities(s, term), current)
