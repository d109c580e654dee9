"""Per-term ensembles of L2 logistic regressions on undersampled data (Zhang et al. 2015).

For every vocabulary term we fit ``n_members`` logistic regressions, each on *all* positive
images plus an equal-sized random undersample (without replacement) of the negatives, so each
member sees a balanced problem while the ensemble as a whole still uses most negatives. When
a term has fewer negatives than positives the roles swap: all negatives plus an undersample of
the positives. Unknown labels (``-1``) are simply left out of that term's training rows.

Why a Gram-matrix (kernel) fit: features are huge (VGG16 layer 21 = 401,408 dims) while the
number of labelled images is small, so the members are fitted from ``K = X X^T`` alone
(:mod:`.logistic`: the representer theorem, an exact Newton solver of scikit-learn's
objective). ``K`` is computed here once, accumulated in float64 feature block by feature
block, so ``X`` can be a float16/float32 memmap (:func:`iter_gram`; :class:`GramBlock` hands
one Gram matrix to several fits). The primal weights of all members are then recovered with
one pass over ``X`` (one matmul per feature block), stored as float32, and prediction of all
``T * M`` members is one matmul.

The member settings and solver live in :mod:`.logistic` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import expit

from ..utils.errors import InputError
from ..utils.files import release_pages
from ..utils.progress import (
    CancelToken,
    Progress,
    ProgressCallback,
    ProgressGen,
    drive,
    sub_progress,
)
from .logistic import (
    EnsembleConfig,
    iter_fit_members,
    majority_vote,
    prepare_gram,
)
from .metrics import class_counts, has_both_classes, labelled_rows

__all__ = ["TermEnsemble", "EnsembleClassifier", "GramBlock", "iter_gram", "gram_matrix"]

#: bytes of float64 scratch per feature block (Gram and weight recovery passes)
_BLOCK_BYTES = 128 * 2**20
#: widest feature block (bounds the float32 rounding of one block's partial Gram sums)
_MAX_BLOCK_COLS = 4096
_MEMMAP_ROWS = 256  # rows of a memmap mapped at once (256 x 0.8 MB at VGG16 layer 21)
#: rows per block at prediction time
_PREDICT_ROWS = 256


@dataclass
class TermEnsemble:
    """The members of one term: ``decision = coef @ x_prepared + intercept`` per member.

    ``x_prepared`` is the feature row minus the classifier's ``center`` (if centring), then
    divided by its norm (if normalising).
    """

    term: str
    coef: np.ndarray  # (M, d) float32
    intercept: np.ndarray  # (M,) float64
    n_pos: int = 0
    n_neg: int = 0
    n_unknown: int = 0


# --------------------------------------------------------------------------------------------
# Gram matrix and the dual (representer-form) logistic solver
# --------------------------------------------------------------------------------------------


def _feature_blocks(n_rows: int, d: int) -> list[tuple[int, int]]:
    width = min(_MAX_BLOCK_COLS, max(512, _BLOCK_BYTES // (8 * max(n_rows, 1))))
    return [(c0, min(d, c0 + width)) for c0 in range(0, d, width)]


def _take_rows(X: Any, rows: np.ndarray | None, c0: int, c1: int,
               dtype: Any = np.float64) -> np.ndarray:
    """Rows ``rows`` and columns ``c0:c1`` of ``X`` as ``dtype`` (only this block is copied).

    A memmap is read :data:`_MEMMAP_ROWS` rows at a time, its pages released after each: the
    kernel maps whole (large) page-cache folios, so one column block of a row-major file would
    otherwise map nearly all of it; this keeps the resident size bounded at any n.
    """
    if getattr(X, "_mmap", None) is None:
        block = X[:, c0:c1] if rows is None else X[rows, c0:c1]
        return np.ascontiguousarray(block, dtype=dtype)

    n = X.shape[0] if rows is None else len(rows)
    out = np.empty((n, c1 - c0), dtype=dtype)
    for r0 in range(0, n, _MEMMAP_ROWS):
        r1 = min(n, r0 + _MEMMAP_ROWS)
        out[r0:r1] = X[r0:r1, c0:c1] if rows is None else X[rows[r0:r1], c0:c1]
        release_pages(X)
    return out


def iter_gram(X: Any, rows: np.ndarray | None = None, reuse: GramBlock | None = None
              ) -> ProgressGen[np.ndarray]:
    """``K = X[rows] X[rows]^T`` accumulated in float64, one feature block at a time.

    With ``reuse`` (a :class:`GramBlock` computed before) holding all of ``rows``, its
    sub-block is returned and no feature is read.

    Memory stays bounded (one block of at most ``_MAX_BLOCK_COLS`` columns is copied), so ``X``
    can be a float16/float32 memmap. For float16/float32 features each block product runs in
    float32 (BLAS ssyrk, twice the speed of float64 and the precision sklearn itself uses on
    float32 data: about 1e-6 relative per block of non-negative features) and the blocks are
    summed in float64; float64 features are multiplied in float64 throughout.
    """
    if reuse is not None:
        K = reuse.take(rows, X.shape[0])
        if K is not None:
            return K
    n = X.shape[0] if rows is None else len(rows)
    blocks = _feature_blocks(n, X.shape[1])
    work = np.float64 if np.dtype(X.dtype).itemsize > 4 else np.float32
    K = np.zeros((n, n), dtype=np.float64)
    for i, (c0, c1) in enumerate(blocks):
        B = _take_rows(X, rows, c0, c1, work)
        K += B @ B.T  # numpy dispatches A @ A.T to BLAS syrk
        yield Progress(i + 1, len(blocks), "Gram matrix")
    # syrk fills one triangle exactly; make the result exactly symmetric anyway
    K = 0.5 * (K + K.T)
    return K


def gram_matrix(X: Any, rows: np.ndarray | None = None) -> np.ndarray:
    """Blocking version of :func:`iter_gram`."""
    return drive(iter_gram(X, rows))


@dataclass(frozen=True)
class GramBlock:
    """A raw Gram matrix ``K`` of the feature rows ``rows``, computed once and handed to every
    fit over a subset of them (the Train panel's CV folds and its final fit): each takes its
    sub-block instead of reading the features again."""

    rows: np.ndarray  # ascending, as np.flatnonzero gives them
    K: np.ndarray

    def take(self, rows: np.ndarray | None, n_rows: int) -> np.ndarray | None:
        """The Gram matrix of ``rows`` (None: all ``n_rows``), or None if not all are here."""
        want = np.arange(n_rows) if rows is None else np.asarray(rows)
        pos = np.searchsorted(self.rows, want)
        if len(self.rows) == 0 or (pos >= len(self.rows)).any() \
                or not np.array_equal(self.rows[np.minimum(pos, len(self.rows) - 1)], want):
            return None
        return self.K[np.ix_(pos, pos)]


# --------------------------------------------------------------------------------------------
# The ensemble classifier
# --------------------------------------------------------------------------------------------


@dataclass
class EnsembleClassifier:
    """One undersampled logistic-regression ensemble per vocabulary term."""

    vocabulary: list[str]
    config: EnsembleConfig = field(default_factory=EnsembleConfig)
    terms: list[TermEnsemble] = field(default_factory=list)
    #: mean training feature row subtracted before normalising, (d,) float32 (``center``)
    center: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.vocabulary = [str(t) for t in self.vocabulary]
        if not self.vocabulary:
            raise InputError("the vocabulary is empty; give at least one term to classify")
        if len(set(self.vocabulary)) != len(self.vocabulary):
            raise InputError(f"the vocabulary has duplicate terms: {self.vocabulary}")
        self._W: np.ndarray | None = None
        self._b: np.ndarray | None = None

    # ----- fitting -----------------------------------------------------------------------

    @property
    def n_features(self) -> int | None:
        return int(self.terms[0].coef.shape[1]) if self.terms else None

    @property
    def is_fitted(self) -> bool:
        return len(self.terms) == len(self.vocabulary)

    def _check_labels(self, X: Any, Y: np.ndarray) -> np.ndarray:
        if getattr(X, "ndim", None) != 2:
            raise InputError(f"features must be a 2-D array (images x features), got shape "
                             f"{getattr(X, 'shape', None)}")
        Y = np.asarray(Y)
        if Y.ndim == 1 and len(self.vocabulary) == 1:
            Y = Y[:, None]
        if Y.ndim != 2 or Y.shape != (X.shape[0], len(self.vocabulary)):
            raise InputError(f"labels have shape {Y.shape} but features have {X.shape[0]} rows "
                             f"and the vocabulary {len(self.vocabulary)} terms; give one label "
                             "row per image and one column per term")
        bad = ~np.isin(Y, (-1, 0, 1))
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise InputError(f"image row {r}: label {Y[r, c].item()!r} for term "
                             f"{self.vocabulary[c]!r} is not 1 "
                             "(present), 0 (absent) or -1 (unknown)", row=int(r))
        Y = Y.astype(np.int8)
        both = has_both_classes(Y)
        if not both.all():
            t = int(np.flatnonzero(~both)[0])
            n_pos, n_neg = (int(c[t]) for c in class_counts(Y))
            missing = "positive" if n_pos == 0 else "negative"
            raise InputError(f"term {self.vocabulary[t]!r} has no {missing} training image "
                             f"({n_pos} positive, {n_neg} negative); label at least one image "
                             f"as {'present' if n_pos == 0 else 'absent'} for it, or remove "
                             "the term from the vocabulary")
        return Y

    def iter_fit(self, X: Any, Y: np.ndarray, gram: np.ndarray | None = None
                 ) -> ProgressGen[EnsembleClassifier]:
        """Fit all terms; yields progress per Gram block, per member and per recovery block.

        ``gram``: the Gram matrix of the labelled rows (rows of ``Y`` with any known label),
        if the caller already has it (e.g. to fit the calibration too); it is modified in
        place.

        ``X`` is (n, d), any float dtype, may be a memmap (read block-wise, never copied whole).
        ``Y`` is (n, T) with 1 = present, 0 = absent, -1 = unknown (skipped for that term).
        Members are seeded from ``SeedSequence(config.seed)`` spawned per term, so results
        are reproducible and one term's draws do not depend on the others.
        """
        Y = self._check_labels(X, Y)
        cfg = self.config
        labelled = labelled_rows(Y)
        Yl = Y[labelled]
        n_lab, d = len(labelled), int(X.shape[1])
        n_terms, M = len(self.vocabulary), cfg.n_members
        rows_arg = None if n_lab == X.shape[0] else labelled
        blocks = _feature_blocks(n_lab, d)
        total = 2 * len(blocks) + n_terms * M
        done = 0

        if gram is not None:
            if gram.shape != (n_lab, n_lab):
                raise ValueError(f"gram has shape {gram.shape}, expected ({n_lab}, {n_lab})")
            K = gram
            done += len(blocks)
        else:
            K = yield from sub_progress(iter_gram(X, rows_arg), offset=0, scale_total=total)
            done += len(blocks)

        diag = np.diag(K)
        if not np.isfinite(diag).all():
            r = int(labelled[np.flatnonzero(~np.isfinite(diag))[0]])
            raise InputError(f"feature row {r} contains NaN or infinite values; re-extract "
                             "the features of this image", row=r)
        norms = prepare_gram(K, cfg)
        n_pos, n_neg = class_counts(Yl)
        counts = [(int(n_pos[t]), int(n_neg[t]), int((Y[:, t] == -1).sum()))
                  for t in range(n_terms)]
        alphas, intercepts = yield from sub_progress(
            iter_fit_members(K, Yl, cfg, self.vocabulary), offset=done, scale_total=total)
        done += n_terms * M
        del K

        # primal weights w = sum_i a_i (x_i - mean) = X^T (a - mean(a)) with a = alpha / norm,
        # one pass over X for all members; the mean row rides along as one more "member"
        alphas /= norms[None, :]
        if cfg.center:
            alphas -= alphas.sum(axis=1, keepdims=True) / n_lab
            alphas = np.vstack([alphas, np.full((1, n_lab), 1.0 / n_lab)])
        W = np.empty((alphas.shape[0], d), dtype=np.float32)
        for c0, c1 in blocks:
            W[:, c0:c1] = alphas @ _take_rows(X, rows_arg, c0, c1)
            done += 1
            yield Progress(done, total, "recovering weights")
        self.center = W[-1].copy() if cfg.center else None
        W = W[:n_terms * M]

        self.terms = [
            TermEnsemble(term=term, coef=W[t * M:(t + 1) * M],
                         intercept=intercepts[t * M:(t + 1) * M].copy(),
                         n_pos=counts[t][0], n_neg=counts[t][1], n_unknown=counts[t][2])
            for t, term in enumerate(self.vocabulary)
        ]
        self._W, self._b = W, intercepts
        return self

    def fit(
        self,
        X: Any,
        Y: np.ndarray,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> EnsembleClassifier:
        """Blocking :meth:`iter_fit`."""
        return drive(self.iter_fit(X, Y), progress, cancel)

    # ----- prediction --------------------------------------------------------------------

    def set_terms(self, terms: Sequence[TermEnsemble], center: np.ndarray | None = None
                  ) -> EnsembleClassifier:
        """Install fitted members and the centring row (used by the bundle loader)."""
        terms = list(terms)
        if self.config.center:
            d = terms[0].coef.shape[1] if terms else 0
            if center is None or np.shape(center) != (d,):
                raise InputError("the model has no valid centring row for its features; the "
                                 "model is damaged, train it again")
            self.center = np.asarray(center, dtype=np.float32)
        if [t.term for t in terms] != self.vocabulary:
            raise InputError(f"classifier terms {[t.term for t in terms]} do not match the "
                             f"vocabulary {self.vocabulary}")
        shapes = {t.coef.shape for t in terms}
        if len(shapes) != 1 or any(t.intercept.shape != (t.coef.shape[0],) for t in terms):
            raise InputError("classifier arrays have inconsistent shapes across terms; the "
                             "model is damaged, train it again")
        self.terms = terms
        self._W = None
        self._b = None
        return self

    def _stacked(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.is_fitted:
            raise InputError("the classifier is not trained yet; train a model first")
        if self._W is None or self._b is None:
            self._W = np.ascontiguousarray(np.concatenate([t.coef for t in self.terms]),
                                           dtype=np.float32)
            self._b = np.concatenate([t.intercept for t in self.terms]).astype(np.float64)
        return self._W, self._b

    def decision_members(self, X: Any) -> np.ndarray:
        """Decision value of every member, (n, T, M); all members in one matmul per row block."""
        W, b = self._stacked()
        if getattr(X, "ndim", None) != 2 or X.shape[1] != W.shape[1]:
            raise InputError(f"features have shape {getattr(X, 'shape', None)} but the model "
                             f"expects (n, {W.shape[1]}); extract features with the model's "
                             "backbone, layer and input size")
        n = X.shape[0]
        mu = self.center if self.config.center else None
        out = np.empty((n, W.shape[0]), dtype=np.float64)
        for r0 in range(0, n, _PREDICT_ROWS):
            Xc = np.asarray(X[r0:r0 + _PREDICT_ROWS], dtype=np.float32)
            if mu is not None:
                Xc = Xc - mu
            dec = (Xc @ W.T).astype(np.float64)
            if self.config.normalize:
                norms = np.sqrt(np.einsum("ij,ij->i", Xc, Xc, dtype=np.float64))
                norms[norms == 0] = 1.0
                dec /= norms[:, None]
            out[r0:r0 + len(Xc)] = dec + b
        return out.reshape(n, len(self.terms), W.shape[0] // len(self.terms))  # n may be 0

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, T) probability of each term: the *mean* of the members' logistic probabilities.

        The mean (rather than the vote fraction) is the reported probability because it is
        smooth, ranks images well for AUC, and agrees with the vote when members agree.
        """
        return expit(self.decision_members(X)).mean(axis=2)

    def vote_fraction(self, X: Any) -> np.ndarray:
        """(n, T) fraction of members whose decision value is positive (voting 'present')."""
        return (self.decision_members(X) > 0).mean(axis=2)

    def predict(self, X: Any) -> np.ndarray:
        """(n, T) bool majority vote; with an even ensemble a tie goes to mean probability > 0.5."""
        return majority_vote(self.decision_members(X))
