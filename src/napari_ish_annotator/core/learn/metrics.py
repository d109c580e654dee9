"""Per-term label rules and metrics: the one place each of them is written.

* *Trainable / evaluable*: a term can be fitted, or scored with an AUC, only on images that
  hold both a present (``1``) and an absent (``0``) label for it; unknown labels (``-1``)
  count for neither class. :func:`has_both_classes` and :func:`trainable_terms` are that
  rule (with a minimum count per class where a method needs more evidence, e.g. Platt
  scaling); every fit, split, calibration and check in the package asks them.
* *Mean over defined terms*: a metric undefined for a term (no AUC without both classes) is
  left out of the mean, never counted as 0 or 0.5: :func:`defined_mean`, :func:`mean_auc`.
* Table 2 of the paper per term (:func:`term_metrics`), AUC per term (:func:`per_term_auc`)
  and the expected calibration error (:func:`expected_calibration_error`).

scikit-learn is imported when a metric is computed, so fitting a model (which only asks
which terms are trainable) does not pay for importing ``sklearn.metrics``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..utils.errors import InputError

__all__ = ["METRICS", "CALIBRATION_METRICS", "ECE_BINS", "labelled_mask", "labelled_rows",
           "class_counts", "has_both_classes",
           "trainable_terms", "defined_mean", "term_metrics", "per_term_auc", "mean_auc",
           "expected_calibration_error"]

METRICS = ("accuracy", "sensitivity", "specificity", "auc")
CALIBRATION_METRICS = ("brier", "ece")
ECE_BINS = 10


# --------------------------------------------------------------------------- the label rule
def labelled_mask(Y: Any) -> np.ndarray:
    """Per image (row of ``Y``, ``(n, T)`` of 1 / 0 / unknown -1): at least one known label.
    The one rule for "this image takes part" in a fit, a CV, an export or a count."""
    return (np.asarray(Y) >= 0).any(axis=1)


def labelled_rows(Y: Any) -> np.ndarray:
    """Indices of the rows of ``Y`` that :func:`labelled_mask` keeps."""
    return np.flatnonzero(labelled_mask(Y))


def class_counts(Y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Present and absent labels per term of ``Y`` (``(n, T)``, or ``(n,)`` for one term);
    unknown labels ``-1`` count for neither."""
    Y = np.asarray(Y)
    return (Y == 1).sum(axis=0), (Y == 0).sum(axis=0)


def has_both_classes(Y: Any, min_per_class: int = 1) -> np.ndarray:
    """Per term of ``Y``: at least ``min_per_class`` present *and* absent labels (bool ``(T,)``;
    a single ``bool`` for a 1-D label vector). The rule for "this term can be trained, or
    scored with an AUC, on these images"."""
    n_pos, n_neg = class_counts(Y)
    k = max(1, int(min_per_class))
    return (n_pos >= k) & (n_neg >= k)


def trainable_terms(Y: Any, min_per_class: int = 1) -> list[int]:
    """Indices of the terms of ``Y`` (``(n, T)``) that :func:`has_both_classes` (what a fit
    can train)."""
    return [int(t) for t in np.flatnonzero(np.atleast_1d(has_both_classes(Y, min_per_class)))]


def defined_mean(values: Iterable[float | None]) -> float:
    """Mean of the values that are defined (neither None nor NaN); NaN if none is.

    The project's mean over terms: a term whose metric is undefined is left out, so the
    figure always says "mean over the terms where it could be measured"."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(kept)) if kept else math.nan


# ----------------------------------------------------------------------------------- metrics
def term_metrics(y_true: Any, y_pred: Any, y_score: Any) -> dict[str, float]:
    """Metrics of one term. Undefined ones are NaN: sensitivity without positives,
    specificity without negatives, AUC unless both classes occur."""
    from sklearn.metrics import confusion_matrix, roc_auc_score

    y_true = np.asarray(y_true).astype(int).ravel()
    y_pred = np.asarray(y_pred).astype(int).ravel()
    y_score = np.asarray(y_score, dtype=np.float64).ravel()
    if not (len(y_true) == len(y_pred) == len(y_score)):
        raise InputError(f"metric inputs differ in length: {len(y_true)} labels, "
                         f"{len(y_pred)} predictions, {len(y_score)} scores")
    if len(y_true) == 0:
        raise InputError("no labelled images to score; give a test set with labels")
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    n_pos, n_neg = tp + fn, tn + fp
    return {
        "accuracy": float((tp + tn) / len(y_true)),
        "sensitivity": float(tp / n_pos) if n_pos else math.nan,
        "specificity": float(tn / n_neg) if n_neg else math.nan,
        "auc": float(roc_auc_score(y_true, y_score)) if has_both_classes(y_true) else math.nan,
        "n_pos": int(n_pos),
    }


def per_term_auc(Y_true: Any, scores: Any) -> list[float | None]:
    """ROC AUC per term over known labels (``-1`` and NaN scores masked); None where undefined."""
    from sklearn.metrics import roc_auc_score

    Y_true = np.asarray(Y_true)
    scores = np.asarray(scores, dtype=np.float64)
    if Y_true.shape != scores.shape or Y_true.ndim != 2:
        raise InputError(f"labels have shape {Y_true.shape} but scores {scores.shape}; give "
                         "one score per image and term")
    out: list[float | None] = []
    for t in range(Y_true.shape[1]):
        ok = (Y_true[:, t] >= 0) & np.isfinite(scores[:, t])
        y = Y_true[ok, t]
        out.append(float(roc_auc_score(y, scores[ok, t])) if has_both_classes(y) else None)
    return out


def mean_auc(Y_true: Any, scores: Any) -> float:
    """Mean ROC AUC over the terms where it is defined (:func:`per_term_auc`,
    :func:`defined_mean`); NaN if no term has both classes among the scored images."""
    return defined_mean(per_term_auc(Y_true, scores))


def expected_calibration_error(y: Any, p: Any, bins: int = ECE_BINS) -> float:
    """ECE: mean over equal-width probability bins of |observed frequency - mean probability|,
    weighted by the share of pairs in the bin."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if len(y) == 0:
        return math.nan
    idx = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(idx, minlength=bins)
    gap = np.abs(np.bincount(idx, weights=y, minlength=bins)
                 - np.bincount(idx, weights=p, minlength=bins))
    return float(gap.sum() / count.sum())
