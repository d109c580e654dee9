"""The members of the ensembles: L2 logistic regressions fitted from a Gram matrix alone.

Features are huge (VGG16 layer 21 = 401,408 dims) while the number of labelled images is
small (a few thousand). Every member's weight vector lies in the span of its training rows
(representer theorem), ``w = sum_i alpha_i x_i``, so with the Gram matrix ``K = X X^T``
(:func:`.ensembles.iter_gram`) each member becomes a small ``m x m`` problem in ``alpha``. That
problem is solved by Newton's method in the *w-space* metric (strictly convex there even when
``K`` is singular), so the optimum is exactly scikit-learn's ``LogisticRegression`` objective

    0.5 * ||w||^2 + C * sum_i log(1 + exp(-y_i (w . x_i + b)))      (intercept unpenalised)

Each member sees all images of a term's minority class plus an equal random undersample of
the other (:func:`member_rows`); :func:`iter_fit_members` fits them all, :func:`majority_vote`
is the paper's decision. :mod:`.ensembles` recovers the primal weights and predicts;
:mod:`.folds` fits cross-validation folds on sub-blocks of one Gram matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from ..utils.errors import InputError
from ..utils.progress import Progress, ProgressGen

__all__ = ["EnsembleConfig", "fit_logistic_gram", "member_rows", "prepare_gram",
           "iter_fit_members", "majority_vote"]

#: members with at least this many rows factorise their Newton systems in float32 first
_SINGLE_MIN_ROWS = 256


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
