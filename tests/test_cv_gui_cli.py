"""The Train panel's cross-validation and ``ish-annotator evaluate --folds K`` agree (issue 9).

Same labels (one manifest), same gene-grouped folds (same seed and K), same features (one
shared cache folder, seeded random-weight VGG16 at 64 px): the per-term AUCs must be equal,
because both go through core.evaluation (grouped_folds + iter_cross_validate).
"""

from __future__ import annotations

import csv
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from _gui_helpers import TERMS, make_dataset


@pytest.mark.parametrize("seed", [3])
def test_session_cv_equals_cli_evaluate_folds(tmp_path, seed):
    from napari_ish_annotator.cli import main
    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.session import AnnotatorSession, steps

    folds = 4  # not the calibration's 3: the panel's folds are the ones asked for
    # 28 images of 14 genes: more genes than folds, so both use grouped k folds
    manifest = make_dataset(tmp_path / "data", n=28)
    _shuffle_some_labels(manifest, 12)  # the blobs alone make every AUC 1.0
    cache = tmp_path / "cache"
    out = tmp_path / "cv.json"
    code = main(["evaluate", str(manifest), "--folds", str(folds), "--layers", "21",
                 "--ensemble", "3", "--C", "10", "--seed", str(seed), "--json", str(out),
                 "--cache", str(cache), "--weights", "random", "--input-size", "64",
                 "--device", "cpu", "--quiet"])
    assert code == 0
    cli = {t: m["auc"] for t, m in json.loads(out.read_text())["layers"]["21"]["terms"].items()}

    session = AnnotatorSession(cache_dir=cache)
    session.open([manifest], store_path=tmp_path / "labels.sqlite")
    session.update_settings(weights="random", input_size=64, layer="21", device="cpu",
                            n_members=3, C=10.0, seed=seed)
    request = session.model.train_request(cross_validate=True, n_folds=folds)
    with ThreadPoolExecutor(1) as pool:  # in a worker, as the Train panel runs it
        gui = pool.submit(drive, steps.iter_train(request)).result().report.auc
    assert set(gui) == set(cli) == set(TERMS)
    for term in TERMS:
        assert gui[term] == pytest.approx(cli[term], abs=1e-9), term
    assert len({round(a, 6) for a in gui.values()}) > 1  # real, term-specific figures


def _shuffle_some_labels(manifest, k: int) -> None:
    """Permute the terms of ``k`` rows among themselves (seeded): label noise."""
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    rng = np.random.default_rng(0)
    picked = rng.choice(len(rows), k, replace=False)
    terms = [rows[i]["terms"] for i in picked]
    for i, t in zip(picked, np.roll(terms, 1), strict=True):
        rows[i]["terms"] = str(t)
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_train_with_cv_reads_the_features_once(tmp_path, monkeypatch):
    """The panel's CV and its final fit share one Gram matrix (its sub-blocks), one
    out-of-fold pass gives both the AUCs and the Platt calibration (3 fold fits, not the CV's
    plus the calibration's), and the model is the one trained without CV."""
    from napari_ish_annotator.core.learn import ensembles as classify
    from napari_ish_annotator.core.learn import folds as fold_fits
    from napari_ish_annotator.core.learn.calibration import CALIBRATION_FOLDS
    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.session import AnnotatorSession, steps

    manifest = make_dataset(tmp_path / "data", n=28)
    _shuffle_some_labels(manifest, 12)
    session = AnnotatorSession(cache_dir=tmp_path / "cache")
    session.open([manifest], store_path=tmp_path / "labels.sqlite")
    session.update_settings(weights="random", input_size=64, layer="21", device="cpu",
                            n_members=3, C=10.0, seed=3)
    session.labels.set_label(TERMS[0], None, 5)  # an unknown label: CV and fit use other rows
    plain = drive(steps.iter_train(session.model.train_request(cross_validate=False)))

    calls: list[int] = []
    real = classify.iter_gram

    def counting(X, rows=None, reuse=None):
        if reuse is None or reuse.take(rows, X.shape[0]) is None:  # features read
            calls.append(X.shape[0] if rows is None else len(rows))
        return (yield from real(X, rows, reuse))

    folds: list[int] = []
    real_fold = fold_fits.iter_fold_decisions

    def counting_folds(K, train, test, *args, **kwargs):
        folds.append(len(test))
        return (yield from real_fold(K, train, test, *args, **kwargs))

    monkeypatch.setattr(steps, "iter_gram", counting)  # where the session looks it up
    monkeypatch.setattr(fold_fits, "iter_fold_decisions", counting_folds)
    with_cv = drive(steps.iter_train(session.model.train_request(cross_validate=True)))
    assert len(calls) == 1, calls
    assert len(folds) == CALIBRATION_FOLDS and sum(folds) == 28, folds  # each image once
    assert with_cv.report.auc and set(with_cv.report.auc) <= set(TERMS)
    np.testing.assert_allclose(with_cv.predictions.probabilities,
                               plain.predictions.probabilities, atol=1e-6)
