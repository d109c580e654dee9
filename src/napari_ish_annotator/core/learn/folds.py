"""Fits of grouped folds on sub-blocks of one Gram matrix (no feature row read again).

A fold's training block of the raw Gram matrix is centred on the fold's own training mean
and normalised, its members fitted there (:mod:`.logistic`), and its test rows scored from
the cross block with the same treatment: exactly the decisions of an ensemble fitted on those
rows' features. Cross-validation (:mod:`.evaluation`) and Platt scaling's out-of-fold scores
(:mod:`.calibration`) both use it, so this module sits below both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import expit

from ..utils.progress import ProgressGen, sub_progress
from .logistic import iter_fit_members, prepare_gram
from .metrics import per_term_auc, trainable_terms
from .splits import grouped_folds

__all__ = ["fold_auc_spread", "iter_fold_decisions", "iter_out_of_fold"]


def iter_fold_decisions(K: np.ndarray, train: np.ndarray, test: np.ndarray, Y_train: np.ndarray,
                        config: Any, vocabulary: Sequence[str], terms: Sequence[int],
                        label: str = "") -> ProgressGen[np.ndarray]:
    """Member decision values ``(len(test), T, M)`` of a fit on rows ``train`` of the Gram ``K``.

    ``K`` is the raw (uncentred) Gram matrix; ``train`` / ``test`` index its rows. Only
    ``terms`` are fitted (others stay 0). The training block is centred on the fold's own
    mean and normalised (:func:`.logistic.prepare_gram`) and the test rows' cross block gets
    the same treatment, so the decisions equal those of an ``EnsembleClassifier`` fitted on
    these rows' features (up to float32 rounding of its stored weights).
    """
    n_terms, M = Y_train.shape[1], config.n_members
    K_tr = K[np.ix_(train, train)]
    train_mean = K_tr.mean(axis=1)  # x_i . mu for the training rows, before centring
    norms = prepare_gram(K_tr, config)
    alphas, b = yield from sub_progress(
        iter_fit_members(K_tr, Y_train, config, vocabulary, terms), offset=0, prefix=label)
    del K_tr
    K_x = K[np.ix_(test, train)]
    self_dot = K[test, test]
    if config.center:  # (x - mu) . (x_i - mu) with mu the fold's training mean row
        mu_mu = float(train_mean.mean())
        x_mu = K_x.mean(axis=1)
        K_x = K_x - x_mu[:, None] - train_mean[None, :] + mu_mu
        self_dot = self_dot - 2.0 * x_mu + mu_mu
    if config.normalize:
        norm_x = np.sqrt(np.maximum(self_dot, 0.0))
        norm_x[norm_x == 0] = 1.0
        K_x = K_x / norm_x[:, None] / norms[None, :]
    return (K_x @ alphas.T + b).reshape(len(test), n_terms, M)


def iter_out_of_fold(K: np.ndarray, rows: np.ndarray, Y: np.ndarray, groups: Any, config: Any,
                     vocabulary: Sequence[str], n_folds: int, seed: int = 0
                     ) -> ProgressGen[np.ndarray]:
    """Members' raw mean probability ``(len(rows), T)`` of each row from grouped folds that
    did not train on it (NaN where a fold could not train the term, or with < 2 groups).

    ``rows`` index the Gram matrix ``K``; ``Y`` and ``groups`` belong to those rows. Used to
    fit Platt scaling (:mod:`.calibration`) without recomputing any Gram matrix.
    """
    rows = np.asarray(rows)
    groups = np.asarray(groups)
    out = np.full((len(rows), Y.shape[1]), np.nan)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        return out
    for k, (tr, te) in enumerate(grouped_folds(groups, min(n_folds, n_groups), seed)):
        terms = trainable_terms(Y[tr])
        if not terms:
            continue
        dec = yield from iter_fold_decisions(K, rows[tr], rows[te], Y[tr], config, vocabulary,
                                             terms, label=f"calibration fold {k + 1}: ")
        out[np.ix_(te, terms)] = expit(dec).mean(axis=2)[:, terms]
    return out


def fold_auc_spread(Y: np.ndarray, scores: np.ndarray, groups: Any, n_folds: int, seed: int = 0
                    ) -> list[float | None]:
    """Per term, the std over grouped folds of each fold's AUC of its own out-of-fold
    ``scores`` (the folds :func:`iter_out_of_fold` used with the same arguments); None where
    fewer than two folds can score the term. How much a pooled out-of-fold AUC moves from
    one set of held-out genes to another: the Train panel draws it as the bar's ± std."""
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        return [None] * Y.shape[1]
    per_fold = [per_term_auc(Y[te], scores[te])
                for _, te in grouped_folds(groups, min(n_folds, n_groups), seed)]
    spread: list[float | None] = []
    for t in range(Y.shape[1]):
        vals = [fold[t] for fold in per_fold if fold[t] is not None]
        spread.append(float(np.std(vals)) if len(vals) >= 2 else None)
    return spread
