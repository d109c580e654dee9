"""Probability calibration: the map, prior correction on a set of known prevalence, Platt."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, logit

from napari_ish_annotator.core.learn.calibration import (
    apply,
    fit,
    fit_platt,
    identity,
    prior_correction,
)
from napari_ish_annotator.core.learn.ensembles import EnsembleClassifier
from napari_ish_annotator.core.learn.logistic import EnsembleConfig
from napari_ish_annotator.core.learn.metrics import expected_calibration_error
from napari_ish_annotator.core.utils.errors import InputError


def test_map_is_the_agreed_logit_affine_form():
    p = np.array([[0.0, 0.3], [0.9, 1.0]])
    a, b = np.array([2.0, 0.5]), np.array([-1.0, 0.25])
    q = np.clip(p, 1e-6, 1 - 1e-6)
    np.testing.assert_allclose(apply(p, a, b), expit(a * logit(q) + b))
    np.testing.assert_allclose(identity(2).apply(p), q)


def _known_prevalence(n: int, seed: int):
    """Features whose true P(present | x) = sigmoid(2 x0 - 3): about 10 % prevalence."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 30))
    y = (rng.random(n) < expit(2.0 * X[:, 0] - 3.0)).astype(np.int8)
    return X.astype(np.float32), y[:, None]


def test_prior_correction_recovers_the_prevalence_on_held_out_data():
    """Members fitted on balanced undersamples call far too many positives at 10 %
    prevalence; the prior correction brings the mean probability and the calls back."""
    X, Y = _known_prevalence(1600, seed=0)
    train, test = np.arange(800), np.arange(800, 1600)
    clf = EnsembleClassifier(["t"], EnsembleConfig(n_members=7, C=1.0)).fit(X[train], Y[train])
    raw = clf.predict_proba(X[test])[:, 0]
    cal = prior_correction(Y[train])
    assert cal.prevalence[0] == pytest.approx(Y[train].mean())
    p = cal.apply(raw[:, None])[:, 0]
    truth = Y[test, 0]
    # the undersampling bias this fixes: about 3x too many "present" calls and probability
    assert raw.mean() > 2 * truth.mean() and (raw >= 0.5).mean() > 2 * truth.mean()
    assert abs(p.mean() - truth.mean()) < 0.35 * truth.mean()
    assert (p >= 0.5).mean() <= truth.mean()
    assert expected_calibration_error(truth, p) < 0.5 * expected_calibration_error(truth, raw)
    # a monotone map per term: the ranking (AUC) is unchanged
    assert np.array_equal(np.argsort(raw, kind="stable"), np.argsort(p, kind="stable"))


def test_platt_fits_held_out_scores_and_falls_back_to_the_prior():
    rng = np.random.default_rng(1)
    s = rng.normal(size=4000)
    y = (rng.random(4000) < expit(1.5 * s - 2.0)).astype(np.int8)
    p_raw = expit(s)  # logit(p_raw) = s, so Platt should find a = 1.5, b = -2
    Y = np.stack([y, np.zeros_like(y)], axis=1)
    Y[:, 1] = -1
    Y[:3, 1] = 1  # term 1: only 3 present labels, too few for Platt's two parameters
    Y[3:13, 1] = 0
    cal = fit_platt(np.stack([p_raw, p_raw], axis=1), Y)
    assert cal.method == "platt"
    assert cal.a[0] == pytest.approx(1.5, abs=0.15) and cal.b[0] == pytest.approx(-2.0, abs=0.15)
    assert cal.a[1] == 1.0 and cal.b[1] == pytest.approx(logit(3 / 13))  # too few: prior
    # scores that rank the wrong way round would give a < 0: keep the prior, never reverse
    flipped = fit_platt(np.stack([1 - p_raw, p_raw], axis=1), Y)
    assert flipped.a[0] == 1.0 and flipped.b[0] == pytest.approx(logit(y.mean()))
    assert fit("prior", Y).a.tolist() == [1.0, 1.0]
    with pytest.raises(InputError, match="out-of-fold"):
        fit("platt", Y)
    with pytest.raises(InputError, match="unknown calibration"):
        fit("isotonic", Y)
    with pytest.raises(InputError, match="present and one absent"):
        prior_correction(np.zeros((4, 1)))
