"""Suspicious labels: which (image, term) labels the model, not having seen the image's gene,
disagrees with most.

Why out-of-fold: a model scoring its own training images agrees with their labels, wrong ones
included. Every image's probability here comes from gene-grouped folds (:mod:`.splits`, via
:func:`.folds.iter_out_of_fold`, the machinery Platt scaling uses) that held its gene out, then
passes through Platt scaling fitted on those same out-of-fold scores, so ``p`` is a calibrated
probability comparable across terms.

The rule, :func:`contradiction`, is ``|label - p|``: one minus cleanlab's default
"self-confidence" label-quality score, which for one binary term is the same ranking, so
cleanlab itself is not needed (docs/consensus.md measures it against random picks with known
flipped labels). The Gallery's "label contradicts the model" sort calls the same function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..utils.errors import InputError
from ..utils.progress import ProgressGen, sub_progress
from .calibration import fit_platt
from .folds import iter_out_of_fold
from .metrics import labelled_rows, trainable_terms

__all__ = ["REVIEW_FOLDS", "SuspiciousLabel", "contradiction", "iter_out_of_fold_probabilities",
           "rank_suspicious"]

#: gene-grouped folds for the out-of-fold probabilities (each image's gene is held out once)
REVIEW_FOLDS = 5


def contradiction(labels: Any, probabilities: Any) -> np.ndarray:
    """How strongly each label contradicts the model: ``|label - p|`` in [0, 1].

    ``labels`` 1 present / 0 absent / -1 or None unknown; unknown labels and NaN probabilities
    give NaN (nothing to contradict).
    """
    L = np.asarray([-1 if v is None else v for v in np.ravel(labels)], dtype=np.float64)
    L = L.reshape(np.shape(labels))
    P = np.asarray(probabilities, dtype=np.float64)
    out = np.abs(L - P)
    out[(L < 0) | ~np.isfinite(P)] = np.nan
    return out


@dataclass(frozen=True)
class SuspiciousLabel:
    """One (image, term) label and the model's out-of-fold probability of "present"."""

    row: int
    term: int
    label: int
    p: float
    score: float


def rank_suspicious(Y: Any, P: Any) -> list[SuspiciousLabel]:
    """Every known label of ``Y`` with a finite ``P``, most suspicious first (ties: image
    order, then term order, so the ranking is reproducible)."""
    Y = np.asarray(Y)
    score = contradiction(Y, P)
    rows, terms = np.nonzero(np.isfinite(score))
    order = np.lexsort((terms, rows, -score[rows, terms]))
    P = np.asarray(P, dtype=np.float64)
    return [SuspiciousLabel(int(rows[k]), int(terms[k]), int(Y[rows[k], terms[k]]),
                            float(P[rows[k], terms[k]]), float(score[rows[k], terms[k]]))
            for k in order]


def iter_out_of_fold_probabilities(X: Any, Y: np.ndarray, groups: Any, config: Any,
                                   vocabulary: Sequence[str], folds: int = REVIEW_FOLDS
                                   ) -> ProgressGen[np.ndarray]:
    """Calibrated out-of-fold probabilities ``(n, T)``: each image scored by a fit that held
    its gene group out. NaN for unlabelled rows and for terms a fold could not train.

    ``Y`` is ``(n, T)`` with 1 / 0 / -1 unknown; ``config`` an :class:`.logistic.EnsembleConfig`.
    The Gram matrix of the labelled rows is computed once and every fold fits on its
    sub-blocks (no feature row read twice).
    """
    from .ensembles import iter_gram

    Y = np.asarray(Y, dtype=np.int8)
    groups = np.asarray(groups)
    labelled = labelled_rows(Y)
    if len(np.unique(groups[labelled])) < 2:
        raise InputError("the labelled images belong to fewer than two genes; out-of-fold "
                         "probabilities hold each image's gene out, so give images of several "
                         "genes (the manifest's 'gene' column)")
    if not trainable_terms(Y[labelled]):
        raise InputError("no term has both a present and an absent label; nothing to review")
    rows = None if len(labelled) == len(Y) else labelled
    K = yield from sub_progress(iter_gram(X, rows), 0, prefix="Gram matrix: ")
    if not np.isfinite(np.diag(K)).all():
        bad = int(labelled[np.flatnonzero(~np.isfinite(np.diag(K)))[0]])
        raise InputError(f"the features of image row {bad} contain NaN or infinite values; "
                         "re-extract them (--no-cache)", row=bad)
    n_groups = len(np.unique(groups[labelled]))
    raw = yield from iter_out_of_fold(K, np.arange(len(labelled)), Y[labelled], groups[labelled],
                                      config, list(vocabulary), min(folds, n_groups),
                                      seed=config.seed)
    out = np.full(Y.shape, np.nan)
    # Platt scaling per term on the scores it has (a term some fold could not train keeps
    # NaN there); NaN scores stay NaN through the map
    seen = np.where(np.isfinite(raw), Y[labelled], -1)
    cols = trainable_terms(seen)
    if cols:
        out[np.ix_(labelled, cols)] = fit_platt(raw[:, cols], seen[:, cols]).apply(raw[:, cols])
    return out
