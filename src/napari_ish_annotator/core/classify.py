"""Per-term ensembles of L2 logistic regressions on undersampled data (Zhang et al. 2015).

For every vocabulary term we fit ``n_members`` logistic regressions, each on *all* positive
images plus an equal-sized random undersample (without replacement) of the negatives, so each
member sees a balanced problem while the ensemble as a whole still uses most negatives. When
a term has fewer negatives than positives the roles swap: all negatives plus an undersample of
the positives. Unknown labels (``-1``) are simply left out of that term's training rows.

Why a Gram-matrix (kernel) fit: features are huge (VGG16 layer 21 = 401,408 dims) while the
number of labelled images is small (a few thousand). Every member's weight vector lies in the
span of its training rows (representer theorem), ``w = sum_i alpha_i x_i``, so with the Gram
matrix ``K = X X^T`` computed once (accumulated in float64, feature block by feature block
so ``X`` can be a float16/float32 memmap) each member becomes a small ``m x m`` problem in
``alpha``. That problem is solved by Newton's method in the *w-space* metric (strictly convex there even when ``K`` is
singular), so the optimum is exactly scikit-learn's ``LogisticRegression`` objective

    0.5 * ||w||^2 + C * sum_i log(1 + exp(-y_i (w . x_i + b)))      (intercept unpenalised)

The primal weights of all members are then recovered with one pass over ``X`` (one matmul per
feature block), stored as float32, and prediction of all ``T * M`` members is one matmul.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import expit

from .errors import InputError
from .progress import CancelToken, Progress, ProgressCallback, ProgressGen, drive, sub_progress

__all__ = [
    "EnsembleConfig",
    "TermEnsemble",
    "EnsembleClassifier",
    "fit_logistic_gram",
    "GramBlock",
    "gram_matrix",
    "member_rows",
    "prepare_gram",
    "iter_fit_members",
    "majority_vote",
]

#: bytes of float64 scratch per feature block (Gram and weight recovery passes)
_BLOCK_BYTES = 128 * 2**20
#: widest feature block (bounds the float32 rounding of one block's partial Gram sums)
_MAX_BLOCK_COLS = 4096
_MEMMAP_ROWS = 256  # rows of a memmap mapped at once (256 x 0.8 MB at VGG16 layer 21)
#: members with at least this many rows factorise their Newton systems in float32 first
_SINGLE_MIN_ROWS = 256
#: rows per block at prediction time
_PREDICT_ROWS = 256


@dataclass
class EnsembleConfig:
    """Ensemble settings.

    ``center`` subtracts the training images' mean feature row and ``normalize`` then
    L2-normalises every row (both done on ``K``, never on a copy of ``X``). CNN activations
    are non-negative and nearly parallel (cosine similarity ~0.97 between embryos), so
    without centring the discriminative part is a tiny residual and, at a sensible ``C``,
    every probability sits at ~0.5; centring keeps the ranking and makes the probabilities
    meaningful.
    """

    n_members: int = 11
    #: 10 rather than sklearn's 1: rows are centred and unit-norm, where C=1 regularises so
    #: hard that on tens of labelled images every probability lands in 0.45-0.55. On
    #: held-out synthetic embryos C=10 raised mean AUC (0.837 -> 0.848) and spread the
    #: probabilities (positives 0.64 vs negatives 0.36 on average).
    C: float = 10.0
    seed: int = 0
    normalize: bool = True
    center: bool = True

    def __post_init__(self) -> None:
        if int(self.n_members) < 1:
            raise InputError(f"ensemble size must be at least 1, got {self.n_members}; "
                             "use e.g. --ensemble 11")
        if not (float(self.C) > 0 and np.isfinite(float(self.C))):
            raise InputError(f"C must be a positive number, got {self.C}; use e.g. --C 10")
        self.n_members = int(self.n_members)
        self.C = float(self.C)
        self.seed = int(self.seed)
        self.normalize = bool(self.normalize)
        self.center = bool(self.center)


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
    from .io import release_pages

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


def _objective(Ka: np.ndarray, alpha: np.ndarray, b: float, y: np.ndarray, C: float) -> float:
    f = Ka + b
    return 0.5 * float(alpha @ Ka) + C * float(np.logaddexp(0.0, -y * f).sum())


def _newton_step(K: np.ndarray, alpha: np.ndarray, r: np.ndarray, Kr: np.ndarray,
                 g: np.ndarray, D: np.ndarray, C: float, single: bool = False
                 ) -> tuple[np.ndarray, float]:
    """Exact Newton step ``(da, db)`` of the primal problem, in alpha coordinates.

    The primal Newton system restricted to the span of the rows is

        [[I + C D K, C D 1], [1^T, 0]] [da; db] = [-(alpha + C g); -1^T alpha].

    With ``S = sqrt(D)`` and ``u = K da + 1 db`` (the change of the decision values) it becomes
    the SPD system ``(I + C S K S) (S u) = S (-K r + 1 db)``, solved by one Cholesky
    factorisation (half the cost of LU, no division by small ``D``), and ``da = -r - C D u``.
    Falls back to the general LU solve if the SPD route is numerically degenerate.
    ``single`` factorises in float32 (twice as fast; the caller checks the step is a descent
    direction and that the float64 gradient converges, so accuracy is not affected).
    """
    import scipy.linalg

    m = len(alpha)
    S = np.sqrt(D)
    M = (C * S)[:, None] * K * S[None, :]
    M[np.arange(m), np.arange(m)] += 1.0
    try:
        if single:
            M = M.astype(np.float32)
        factor = scipy.linalg.cho_factor(M, lower=False, overwrite_a=True, check_finite=False)
        rhs = np.stack([-S * Kr, S], axis=1).astype(M.dtype)
        p, q = scipy.linalg.cho_solve(factor, rhs, check_finite=False).T.astype(np.float64)
        denom = float(S @ q)
        if not (denom > 1e-300 and np.isfinite(p).all() and np.isfinite(q).all()):
            raise np.linalg.LinAlgError("degenerate curvature")
        db = -(float(g.sum()) + float(S @ p)) / denom
        Su = p + db * q
        da = -r - C * S * Su
        return da, db
    except np.linalg.LinAlgError:
        if single:
            raise
        A = np.empty((m + 1, m + 1))
        A[:m, :m] = (C * D)[:, None] * K
        A[np.arange(m), np.arange(m)] += 1.0
        A[:m, m] = C * D
        A[m, :m] = 1.0
        A[m, m] = 0.0
        rhs = np.concatenate([-r, [-alpha.sum()]])
        try:
            step = np.linalg.solve(A, rhs)
        except np.linalg.LinAlgError:  # curvature underflowed to 0 everywhere (huge margins)
            step = np.linalg.lstsq(A, rhs, rcond=None)[0]
        return step[:m], float(step[m])


def fit_logistic_gram(
    K: np.ndarray, y: np.ndarray, C: float, tol: float = 1e-12, grad_tol: float = 1e-7,
    max_iter: int = 200,
) -> tuple[np.ndarray, float]:
    """L2 logistic regression from the Gram matrix only; returns dual ``alpha`` and intercept.

    Minimises sklearn's objective ``0.5 |w|^2 + C sum log(1 + exp(-y (w.x + b)))`` with
    ``w = sum alpha_i x_i``. Each step is the exact Newton step of the *primal* problem
    restricted to the span of the rows (see :func:`_newton_step`), which is well defined for
    any positive semi-definite ``K`` (singular or separable data included) because the primal
    objective is strictly convex in ``(w, b)``; so no ridge on alpha is needed and the
    decision values equal sklearn's. Backtracking line search. Stops when the w-space
    gradient norm ``sqrt(|X^T (alpha + C g)|^2 + (C sum g)^2)`` falls below ``grad_tol * |w|``
    (checked before factorising, so the converged iterate costs no solve; since the Hessian
    is at least the identity, ``|w - w*| <= |gradient|``, so ``w`` is then within
    ``grad_tol`` relative of the optimum), or when the Newton decrement is below ``tol``
    relative to the objective.
    """
    K = np.asarray(K, dtype=np.float64)
    y = np.where(np.asarray(y) > 0, 1.0, -1.0)
    m = len(y)
    if K.shape != (m, m):
        raise ValueError(f"K has shape {K.shape}, expected ({m}, {m})")
    n_pos = int((y > 0).sum())
    if n_pos == 0 or n_pos == m:
        raise ValueError("fit_logistic_gram needs both classes")
    alpha = np.zeros(m)
    b = float(np.log(n_pos / (m - n_pos)))  # the exact optimum when w = 0
    Ka = np.zeros(m)
    J = _objective(Ka, alpha, b, y, C)
    for _ in range(max_iter):
        f = Ka + b
        s = expit(-y * f)  # P(wrong class)
        g = -y * s  # d loss / d f
        D = s * (1.0 - s)  # d2 loss / d f2
        r = alpha + C * g  # w-space gradient is X^T r
        Kr = K @ r
        grad2 = float(r @ Kr) + (C * float(g.sum())) ** 2
        w_norm = float(np.sqrt(max(float(alpha @ Ka), 0.0)))
        if np.sqrt(max(grad2, 0.0)) <= grad_tol * w_norm:
            break
        slope = 0.0
        if m >= _SINGLE_MIN_ROWS:  # float32 factorisation first, float64 if it is not good
            try:
                da, db = _newton_step(K, alpha, r, Kr, g, D, C, single=True)
                # directional derivative of J along (da, db) in w-space: <K r, da> + C (1.g) db
                slope = float(Kr @ da) + C * float(g.sum()) * db
            except np.linalg.LinAlgError:
                pass
        if not slope < 0:
            da, db = _newton_step(K, alpha, r, Kr, g, D, C)
            slope = float(Kr @ da) + C * float(g.sum()) * db
        Kda = K @ da
        converged = -slope <= tol * max(1.0, abs(J))
        t = 1.0
        while True:
            alpha_t = alpha + t * da
            Ka_t = Ka + t * Kda
            b_t = b + t * db
            J_t = _objective(Ka_t, alpha_t, b_t, y, C)
            if J_t <= J + 1e-4 * t * slope or t < 1e-10:
                break
            t *= 0.5
        if J_t > J:  # no progress possible in floating point: we are at the optimum
            break
        alpha, Ka, b, J = alpha_t, Ka_t, b_t, J_t
        if converged:  # the (tiny) final Newton step is taken; nothing left to gain
            break
    return alpha, b


def member_rows(
    y: np.ndarray, n_members: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Training rows of each member: all of the minority class + an equal random undersample.

    ``y`` holds 1 / 0 / -1 (unknown, never used). Normally the minority class is the positives:
    every member gets all positives and ``n_pos`` negatives drawn without replacement. If a term
    has *fewer negatives than positives*, the negatives are kept whole and the positives are
    undersampled instead, so every member is still balanced.
    """
    pos = np.flatnonzero(y == 1)
    neg = np.flatnonzero(y == 0)
    keep, sample = (pos, neg) if len(pos) <= len(neg) else (neg, pos)
    out = []
    for _ in range(n_members):
        drawn = rng.choice(sample, size=len(keep), replace=False)
        out.append(np.sort(np.concatenate([keep, drawn])))
    return out


def prepare_gram(K: np.ndarray, config: EnsembleConfig) -> np.ndarray:
    """Centre (``config.center``) and unit-normalise (``config.normalize``) ``K`` in place.

    Centring on the rows' mean is ``H K H`` with ``H = I - 11^T / n``, so a cross-validation
    fold centres on its own training mean by preparing a copy of its sub-block of the full
    Gram matrix. Returns the row norms (ones without ``normalize``) that the primal weights
    and test-time decisions divide by.
    """
    if config.center:
        row_mean = K.mean(axis=1)
        K -= row_mean[:, None]
        K -= row_mean[None, :]
        K += row_mean.mean()
    if not config.normalize:
        return np.ones(K.shape[0])
    norms = np.sqrt(np.maximum(np.diag(K).copy(), 0.0))
    norms[norms == 0] = 1.0  # an all-zero row stays zero
    K /= norms[:, None]
    K /= norms[None, :]
    return norms


def iter_fit_members(K: np.ndarray, Y: np.ndarray, config: EnsembleConfig,
                     vocabulary: Sequence[str], terms: Sequence[int] | None = None
                     ) -> ProgressGen[tuple[np.ndarray, np.ndarray]]:
    """Dual coefficients ``(T*M, n)`` and intercepts ``(T*M,)`` of every member.

    ``K`` is the prepared Gram matrix of the ``n`` training rows, ``Y`` their ``(n, T)``
    labels. Only the term indices in ``terms`` (default all) are fitted; the others keep zero
    rows. Term ``t`` draws its members from ``SeedSequence(seed).spawn(T)[t]`` whichever other
    terms are fitted, so a cross-validation fold that cannot train one term does not change
    the members of the rest.
    """
    M = config.n_members
    n_terms = Y.shape[1]
    terms = range(n_terms) if terms is None else list(terms)
    alphas = np.zeros((n_terms * M, K.shape[0]))
    intercepts = np.zeros(n_terms * M)
    seqs = np.random.SeedSequence(config.seed).spawn(n_terms)
    done = 0
    for t in terms:
        y = Y[:, t]
        rng = np.random.default_rng(seqs[t])
        for j, rows in enumerate(member_rows(y, M, rng)):
            alpha, b = fit_logistic_gram(K[np.ix_(rows, rows)], y[rows], config.C)
            alphas[t * M + j, rows] = alpha
            intercepts[t * M + j] = b
            done += 1
            yield Progress(done, len(terms) * M, f"{vocabulary[t]}: member {j + 1}/{M}")
    return alphas, intercepts


def majority_vote(decisions: np.ndarray) -> np.ndarray:
    """The paper's decision from member decision values ``(n, T, M)``: ``(n, T)`` bool.

    Majority of members voting present; with an even ensemble a tie goes to the members'
    mean probability > 0.5.
    """
    votes = (decisions > 0).mean(axis=2)
    proba = expit(decisions).mean(axis=2)
    return (votes > 0.5) | ((votes == 0.5) & (proba > 0.5))


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
        for t, term in enumerate(self.vocabulary):
            n_pos = int((Y[:, t] == 1).sum())
            n_neg = int((Y[:, t] == 0).sum())
            if n_pos == 0 or n_neg == 0:
                missing = "positive" if n_pos == 0 else "negative"
                raise InputError(f"term {term!r} has no {missing} training image ({n_pos} "
                                 f"positive, {n_neg} negative); label at least one image as "
                                 f"{'present' if n_pos == 0 else 'absent'} for it, or remove "
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
        labelled = np.flatnonzero((Y != -1).any(axis=1))
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
        counts = [(int((Yl[:, t] == 1).sum()), int((Yl[:, t] == 0).sum()),
                   int((Y[:, t] == -1).sum())) for t in range(n_terms)]
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
