"""Per-term probability calibration: a logit-affine map of the members' mean probability.

Every ensemble member is fitted on a balanced undersample (all positives plus as many
negatives), so the members' mean probability is calibrated to a 50 % prevalence, not to the
term's real one: on real data a model called ten terms "present" per image where one was.
The reported probability is therefore

    p = sigmoid(a[t] * logit(clip(p_mean, 1e-6, 1 - 1e-6)) + b[t])

with either the *prior correction* (``a = 1``, ``b = logit(prevalence)``: the shift of the
log-odds that undersampling to 50 % introduced, King & Zeng 2001) or *Platt scaling* (``a``,
``b`` fitted on gene-grouped out-of-fold scores of the training images). ``docs/benchmarks.md``
measures both; Platt scaling is the default (see :data:`DEFAULT_METHOD`). The paper's
decision, the members' majority vote, does not use this map. The bioimage.io exporter
implements the same map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit, logit

from ..utils.errors import InputError
from ..utils.progress import ProgressGen
from .folds import iter_out_of_fold
from .metrics import class_counts, has_both_classes

__all__ = ["METHODS", "DEFAULT_METHOD", "CALIBRATION_FOLDS", "PLATT_MIN_PER_CLASS",
           "Calibration", "apply", "identity", "prior_correction", "fit_platt", "fit",
           "iter_calibrate"]

METHODS = ("none", "prior", "platt")
#: Platt scaling: on held-out synthetic embryos with FlyExpress prevalences it cut the ECE of
#: the members' raw mean about 7-fold, the prior correction only by a quarter (the members are
#: over-confident as well as shifted, which a pure shift cannot fix); docs/benchmarks.md
DEFAULT_METHOD = "platt"
#: gene-grouped folds for the out-of-fold scores Platt scaling is fitted on (two parameters
#: per term need few scores; every fold is one more fit of the members)
CALIBRATION_FOLDS = 3
#: below this many out-of-fold present (or absent) scores a term keeps the prior correction
PLATT_MIN_PER_CLASS = 5
_EPS = 1e-6


def apply(p_raw: Any, a: Any, b: Any) -> np.ndarray:
    """Calibrated probabilities ``(n, T)`` from the members' mean ``p_raw`` ``(n, T)``."""
    p = np.clip(np.asarray(p_raw, dtype=np.float64), _EPS, 1.0 - _EPS)
    return expit(np.asarray(a, dtype=np.float64) * logit(p) + np.asarray(b, dtype=np.float64))


@dataclass(frozen=True, eq=False)
class Calibration:
    """The map's coefficients per term and how they were obtained."""

    method: str
    a: np.ndarray  # (T,)
    b: np.ndarray  # (T,)
    prevalence: np.ndarray | None = None  # (T,) training prevalence, where known

    def apply(self, p_raw: Any) -> np.ndarray:
        return apply(p_raw, self.a, self.b)

    def to_json(self) -> dict:
        """The ``"calibration"`` entry of a bundle's model.json (the arrays live in the npz)."""
        out: dict = {"method": self.method,
                     "map": "sigmoid(a * logit(clip(p_mean, 1e-6, 1-1e-6)) + b)",
                     "arrays": ["calibration_a", "calibration_b"]}
        if self.prevalence is not None:
            out["prevalence"] = [float(p) for p in self.prevalence]
        return out


def identity(n_terms: int) -> Calibration:
    """No calibration (``a = 1``, ``b = 0``): what a version-1 bundle reports."""
    return Calibration("none", np.ones(n_terms), np.zeros(n_terms))


def _prevalence(Y: Any) -> np.ndarray:
    if not has_both_classes(Y).all():
        raise InputError("calibration needs at least one present and one absent label per "
                         "term; label more images")
    pos, neg = (c.astype(np.float64) for c in class_counts(Y))
    return pos / (pos + neg)


def prior_correction(Y: Any) -> Calibration:
    """Shift each term's log-odds from the members' 50 % training prevalence to its own.

    ``Y`` is the ``(n, T)`` training label matrix (1 / 0 / -1 unknown, left out).
    """
    prev = _prevalence(Y)
    return Calibration("prior", np.ones(len(prev)), logit(prev), prev)


def fit_platt(p_raw: Any, Y: Any) -> Calibration:
    """Platt scaling per term: logistic regression of the label on ``logit(p_raw)``.

    ``p_raw`` must be out-of-fold scores (scores of a model on its own training images are
    over-confident). A term with fewer than :data:`PLATT_MIN_PER_CLASS` scored present or
    absent labels keeps the prior correction (two parameters need some evidence), and so
    does a term whose fitted slope is not positive: the map must keep the members' ranking
    of images (their AUC), never reverse or flatten it.
    """
    from sklearn.linear_model import LogisticRegression

    p_raw = np.asarray(p_raw, dtype=np.float64)
    Y = np.asarray(Y)
    prior = prior_correction(Y)
    a, b = prior.a.copy(), prior.b.copy()
    z = logit(np.clip(p_raw, _EPS, 1.0 - _EPS))
    for t in range(Y.shape[1]):
        ok = (Y[:, t] >= 0) & np.isfinite(z[:, t])
        y = Y[ok, t]
        if not has_both_classes(y, PLATT_MIN_PER_CLASS):
            continue
        model = LogisticRegression(C=1e4).fit(z[ok, t][:, None], y)
        if model.coef_[0, 0] > 0:  # else the scores carry no usable order: keep the prior
            a[t], b[t] = float(model.coef_[0, 0]), float(model.intercept_[0])
    return Calibration("platt", a, b, prior.prevalence)


def fit(method: str, Y: Any, p_raw_oof: Any = None) -> Calibration:
    """The calibration ``method`` (one of :data:`METHODS`) for training labels ``Y``."""
    if method == "none":
        return identity(np.asarray(Y).shape[1])
    if method == "prior":
        return prior_correction(Y)
    if method == "platt":
        if p_raw_oof is None:
            raise InputError("Platt scaling needs out-of-fold scores of the training images")
        return fit_platt(p_raw_oof, Y)
    raise InputError(f"unknown calibration {method!r}; use one of {', '.join(METHODS)}")


def iter_calibrate(K: np.ndarray, rows: np.ndarray, Y: np.ndarray, groups: Any, config: Any,
                   vocabulary: Sequence[str], method: str = DEFAULT_METHOD,
                   oof: np.ndarray | None = None) -> ProgressGen[Calibration]:
    """The calibration of a model fitted on rows ``rows`` of the Gram matrix ``K``.

    ``Y`` and ``groups`` belong to those rows. Platt scaling fits on out-of-fold scores from
    :data:`CALIBRATION_FOLDS` gene-grouped folds, each fitted on sub-blocks of ``K`` (no
    feature row is read again); the prior correction and "none" need no fits. ``oof``: those
    scores, when the caller already has them (the Train panel's CV makes them once and shows
    their AUC too, :func:`.evaluation.iter_out_of_fold`), so no fold is fitted here.
    """
    if method != "platt":
        return fit(method, Y)
    if oof is None:
        oof = yield from iter_out_of_fold(K, rows, Y, groups, config, vocabulary,
                                          CALIBRATION_FOLDS, seed=config.seed)
    elif np.shape(oof) != np.shape(Y):
        raise ValueError(f"out-of-fold scores have shape {np.shape(oof)}, expected "
                         f"{np.shape(Y)}")
    return fit_platt(oof, Y)
