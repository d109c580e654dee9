"""The one evaluation engine: grouped splits, the paper's Table-2 metrics, calibration scores.

Used by ``ish-annotator evaluate``, the headless demo, the Train panel's cross-validation and
fine-tuning validation, so they all give the same answer to the same question.

* Splits keep every gene's images together (images of one gene share labels; a near-duplicate
  of a test image in the training set would inflate every metric): :func:`group_ids`,
  :func:`grouped_folds` (k-fold), :func:`random_partitions` (the paper's repeated random
  partitions), :func:`validation_split` (fine-tuning).
* Per term: accuracy, sensitivity, specificity and AUC on the labelled images (unknown labels
  ``-1`` masked). A term is *evaluated* when its scored test images hold both a present and an
  absent label; otherwise it is "not evaluated" with a reason, left out of the means and
  counted. A fold whose training part lacks a class for a term contributes no scores for it.
* ``brier`` and ``ece`` (expected calibration error, 10 equal-width bins) of the calibrated
  probability, over all labelled (image, term) pairs of the evaluated terms.
* :func:`iter_cross_validate` computes the Gram matrix of the features once and fits every
  fold on its sub-blocks (centred on the fold's own training mean), which gives exactly the
  models a per-fold refit gives at a fraction of the cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.metrics import confusion_matrix, roc_auc_score

from .errors import InputError
from .progress import Progress, ProgressGen, sub_progress

__all__ = [
    "METRICS", "CALIBRATION_METRICS", "ECE_BINS", "Evaluation", "group_ids", "grouped_folds",
    "random_partitions", "validation_split", "per_term_auc", "term_metrics",
    "expected_calibration_error", "score_predictions", "combine_partitions", "trainable_terms",
    "iter_fold_decisions", "iter_out_of_fold", "iter_cross_validate", "format_table",
]

METRICS = ("accuracy", "sensitivity", "specificity", "auc")
CALIBRATION_METRICS = ("brier", "ece")
ECE_BINS = 10


# ------------------------------------------------------------------------------------ splits
def _first_appearance_ids(keys: Sequence[Any]) -> np.ndarray:
    ids: dict[Any, int] = {}
    return np.array([ids.setdefault(k, len(ids)) for k in keys], dtype=np.int64)


def group_ids(genes: Sequence[str | None], stages: Sequence[str | None]) -> np.ndarray:
    """One group id per image (ints in order of first appearance).

    By gene (images of one gene share their pattern across stages); if that leaves a single
    group (one gene only), by gene and stage; if still one group, every image on its own.
    An image without a gene is always its own group.
    """
    genes = [g if g else None for g in genes]
    stages = list(stages)
    if len(stages) != len(genes):
        raise ValueError(f"{len(genes)} genes but {len(stages)} stages")
    by_gene = [("g", g) if g else ("i", i) for i, g in enumerate(genes)]
    if len(set(by_gene)) >= 2:
        return _first_appearance_ids(by_gene)
    by_stage = [("g", g, s or "") if g else ("i", i)
                for i, (g, s) in enumerate(zip(genes, stages, strict=True))]
    if len(set(by_stage)) >= 2:
        return _first_appearance_ids(by_stage)
    return np.arange(len(genes), dtype=np.int64)


def grouped_folds(groups: Any, n_splits: int, seed: int = 0
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_splits`` (train, test) index pairs; all images of a group land in one test fold.

    scikit-learn's ``GroupKFold(shuffle=True)``: the assignment of groups to folds is random
    (seeded) but fold sizes stay balanced.
    """
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(groups)
    n_splits = int(n_splits)
    if n_splits < 2:
        raise InputError(f"cross-validation needs at least 2 folds, got {n_splits}; "
                         "use e.g. --folds 5")
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise InputError(f"only {n_groups} gene group(s) for {n_splits}-fold cross-validation; "
                         f"use --folds {max(2, n_groups)} or fewer, add images of more genes, "
                         "or give a separate --test manifest")
    splitter = GroupKFold(n_splits=n_splits, shuffle=True, random_state=int(seed))
    dummy = np.zeros((len(groups), 1))
    return [(train, test) for train, test in splitter.split(dummy, groups=groups)]


def random_partitions(groups: Any, repeats: int, test_fraction: float = 0.25, seed: int = 0
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``repeats`` seeded random (train, test) partitions of whole groups (the paper's protocol).

    ``test_fraction`` is the share of *groups* held out in each partition.
    """
    from sklearn.model_selection import GroupShuffleSplit

    groups = np.asarray(groups)
    repeats = int(repeats)
    if repeats < 1:
        raise InputError(f"--repeats must be at least 1, got {repeats}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise InputError(f"--test-fraction must be between 0 and 1, got {test_fraction}; "
                         "use e.g. --test-fraction 0.25")
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise InputError(f"only {n_groups} gene group(s): random partitions need images of at "
                         "least two genes, or give a separate --test manifest")
    n_test = min(n_groups - 1, max(1, int(round(n_groups * float(test_fraction)))))
    splitter = GroupShuffleSplit(n_splits=repeats, test_size=n_test, random_state=int(seed))
    return [(np.sort(tr), np.sort(te))
            for tr, te in splitter.split(np.zeros((len(groups), 1)), groups=groups)]


def validation_split(groups: Any, Y: Any, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Grouped (train, validation) split for fine-tuning; empty validation if impossible.

    Up to 20 seeded draws; the first whose validation part can score an AUC for some term
    (and whose training part has a positive) is taken.
    """
    from sklearn.model_selection import GroupShuffleSplit

    groups = np.asarray(groups)
    Y = np.asarray(Y)
    n = len(groups)
    if fraction <= 0 or len(np.unique(groups)) < 2:
        return np.arange(n), np.zeros(0, dtype=int)
    best = None
    for attempt in range(20):
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed + attempt)
        tr, va = next(splitter.split(np.zeros(n), groups=groups))
        if best is None:
            best = (tr, va)
        yv = Y[va]
        if ((yv == 1).any(axis=0) & (yv == 0).any(axis=0)).any() and (Y[tr] == 1).any():
            return np.sort(tr), np.sort(va)
    return np.sort(best[0]), np.sort(best[1])


# ----------------------------------------------------------------------------------- metrics
def term_metrics(y_true: Any, y_pred: Any, y_score: Any) -> dict[str, float]:
    """Metrics of one term. Undefined ones are NaN: sensitivity without positives,
    specificity without negatives, AUC unless both classes occur."""
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
    both = n_pos > 0 and n_neg > 0
    return {
        "accuracy": float((tp + tn) / len(y_true)),
        "sensitivity": float(tp / n_pos) if n_pos else math.nan,
        "specificity": float(tn / n_neg) if n_neg else math.nan,
        "auc": float(roc_auc_score(y_true, y_score)) if both else math.nan,
        "n_pos": int(n_pos),
    }


def per_term_auc(Y_true: Any, scores: Any) -> list[float | None]:
    """ROC AUC per term over known labels (``-1`` and NaN scores masked); None where undefined."""
    Y_true = np.asarray(Y_true)
    scores = np.asarray(scores, dtype=np.float64)
    out: list[float | None] = []
    for t in range(Y_true.shape[1]):
        ok = (Y_true[:, t] >= 0) & np.isfinite(scores[:, t])
        y = Y_true[ok, t]
        out.append(float(roc_auc_score(y, scores[ok, t]))
                   if (y == 1).any() and (y == 0).any() else None)
    return out


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


def _number(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one feature layer: the CONTRACTS.md ``{"mean", "terms"}`` dict plus counts.

    ``summary`` is plain JSON: ``mean`` (the four metrics averaged over evaluated terms, plus
    ``brier`` and ``ece``), ``terms`` (per term, ``None`` where not evaluated), ``n_evaluated``,
    ``n_terms``, ``not_evaluated`` (term -> reason) and, for repeated partitions, ``std``.
    """

    vocabulary: tuple[str, ...]
    summary: dict
    std: dict | None
    n_evaluated: int
    n_terms: int
    not_evaluated: dict[str, str]
    #: pooled out-of-fold probabilities ``(n, T)`` in the rows of ``X`` (NaN where a row was
    #: not scored for a term); only from :func:`iter_cross_validate` with disjoint test sets
    scores: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def mean_auc(self) -> float | None:
        return self.summary["mean"].get("auc")

    def term_auc(self) -> dict[str, float | None]:
        return {t: self.summary["terms"][t]["auc"] for t in self.vocabulary}


def _not_evaluated_reason(y: np.ndarray) -> str:
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos + n_neg == 0:
        return "no labelled test image was scored for it"
    missing = "present" if n_pos == 0 else "absent"
    return f"no test image labelled {missing} was scored for it ({n_pos + n_neg} scored)"


def score_predictions(Y_true: Any, votes: Any, probabilities: Any, vocabulary: Sequence[str],
                      reasons: dict[str, str] | None = None, ranking: Any = None
                      ) -> Evaluation:
    """Evaluate predictions: ``votes`` (the decision) and calibrated ``probabilities``.

    All ``(n, T)``; labels ``-1`` and NaN probabilities (rows a fold did not score) are left
    out per term. AUC ranks by ``ranking`` when given (cross-validation passes the members'
    raw mean: pooled over folds, calibrated probabilities would mix the folds' different
    prevalence shifts into the ranking), else by ``probabilities``; brier and ece are always
    of ``probabilities``. ``reasons`` gives a better explanation for terms that turn out not
    evaluable (e.g. "all positives in one gene").
    """
    vocabulary = tuple(str(t) for t in vocabulary)
    Y_true, votes, P = (np.asarray(a) for a in (Y_true, votes, probabilities))
    R = P if ranking is None else np.asarray(ranking, dtype=np.float64)
    shape = (Y_true.shape[0], len(vocabulary))
    for name, arr in (("labels", Y_true), ("predictions", votes), ("probabilities", P),
                      ("ranking scores", R)):
        if arr.shape != shape:
            raise InputError(f"{name} have shape {arr.shape}, expected {shape} "
                             "(images x vocabulary terms)")
    P = P.astype(np.float64)
    terms: dict[str, dict] = {}
    not_evaluated: dict[str, str] = {}
    per_metric: dict[str, list[float]] = {m: [] for m in METRICS}
    ys, ps = [], []
    for t, term in enumerate(vocabulary):
        ok = (Y_true[:, t] >= 0) & np.isfinite(P[:, t])
        y = Y_true[ok, t]
        if not ((y == 1).any() and (y == 0).any()):
            why = (reasons or {}).get(term) or _not_evaluated_reason(y)
            not_evaluated[term] = why
            terms[term] = {**{m: None for m in METRICS}, "n_pos": int((y == 1).sum()),
                           "evaluated": False, "reason": why}
            continue
        res = term_metrics(y, votes[ok, t], R[ok, t])
        for m in METRICS:
            per_metric[m].append(res[m])
        terms[term] = {**{m: _number(res[m]) for m in METRICS}, "n_pos": res["n_pos"],
                       "evaluated": True}
        ys.append(y)
        ps.append(P[ok, t])
    mean: dict[str, float | None] = {
        m: (float(np.mean(v)) if v else None) for m, v in per_metric.items()}
    if ys:
        y_all, p_all = np.concatenate(ys), np.concatenate(ps)
        mean["brier"] = float(np.mean((p_all - y_all) ** 2))
        mean["ece"] = expected_calibration_error(y_all, p_all)
    else:
        mean["brier"] = mean["ece"] = None
    n_eval = len(vocabulary) - len(not_evaluated)
    summary = {"mean": mean, "terms": terms, "n_evaluated": n_eval,
               "n_terms": len(vocabulary), "not_evaluated": not_evaluated}
    return Evaluation(vocabulary, summary, None, n_eval, len(vocabulary), not_evaluated)


def combine_partitions(parts: Sequence[Evaluation], reasons: dict[str, str] | None = None,
                       n_pos: Sequence[int] | None = None) -> Evaluation:
    """Mean and std over repeated partitions (the paper's Table 2: mean ± std).

    Each metric's per-partition mean over terms is averaged over partitions (std beside it);
    a term's own figures are its mean over the partitions that evaluated it; a term no
    partition evaluated is "not evaluated". ``n_pos`` (per term) replaces the per-partition
    test positives in ``terms`` (e.g. by the term's positives in the whole data set).
    """
    if not parts:
        raise InputError("no partitions to combine")
    vocabulary = parts[0].vocabulary
    keys = METRICS + CALIBRATION_METRICS
    mean: dict[str, float | None] = {}
    std: dict[str, float | None] = {}
    for m in keys:
        vals = [p.summary["mean"][m] for p in parts if p.summary["mean"].get(m) is not None]
        mean[m] = float(np.mean(vals)) if vals else None
        std[m] = float(np.std(vals)) if vals else None
    terms: dict[str, dict] = {}
    not_evaluated: dict[str, str] = {}
    for t, term in enumerate(vocabulary):
        scored = [p.summary["terms"][term] for p in parts if term not in p.not_evaluated]
        count = int(n_pos[t]) if n_pos is not None else \
            int(round(np.mean([p.summary["terms"][term]["n_pos"] for p in parts])))
        if not scored:
            why = (reasons or {}).get(term) or parts[0].not_evaluated[term]
            not_evaluated[term] = f"in none of the {len(parts)} partitions: {why}"
            terms[term] = {**{m: None for m in METRICS}, "n_pos": count, "evaluated": False,
                           "reason": not_evaluated[term]}
            continue
        entry: dict = {}
        for m in METRICS:
            vals = [s[m] for s in scored if s[m] is not None]
            entry[m] = float(np.mean(vals)) if vals else None
        terms[term] = {**entry, "n_pos": count, "evaluated": True,
                       "n_partitions": len(scored)}
    n_eval = len(vocabulary) - len(not_evaluated)
    summary = {"mean": mean, "std": std, "terms": terms, "n_evaluated": n_eval,
               "n_terms": len(vocabulary), "not_evaluated": not_evaluated,
               "n_partitions": len(parts)}
    return Evaluation(vocabulary, summary, std, n_eval, len(vocabulary), not_evaluated)


# -------------------------------------------------------------------------- cross-validation
def _untrainable_reasons(Y: np.ndarray, groups: np.ndarray | None, vocabulary: Sequence[str],
                         trained_anywhere: np.ndarray) -> dict[str, str]:
    """Why each term no split could evaluate, from the labels alone."""
    out: dict[str, str] = {}
    for t, term in enumerate(vocabulary):
        y = Y[:, t]
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        if n_pos == 0 or n_neg == 0:
            out[term] = f"no image is labelled {'present' if n_pos == 0 else 'absent'}"
        elif groups is not None and len(np.unique(groups[y == 1])) == 1:
            out[term] = (f"all {n_pos} present image(s) belong to one gene group, so no split "
                         "both trains and tests it")
        elif groups is not None and len(np.unique(groups[y == 0])) == 1:
            out[term] = (f"all {n_neg} absent image(s) belong to one gene group, so no split "
                         "both trains and tests it")
        elif not trained_anywhere[t]:
            out[term] = "no split's training part has both a present and an absent image"
    return out


def _disjoint(splits: Sequence[tuple[np.ndarray, np.ndarray]]) -> bool:
    tests = np.concatenate([np.asarray(te) for _, te in splits]) if splits else np.zeros(0)
    return len(tests) == len(np.unique(tests))


def trainable_terms(Y: np.ndarray) -> list[int]:
    """Term indices with both a present and an absent label in ``Y`` (what a fit can train)."""
    return [t for t in range(Y.shape[1]) if (Y[:, t] == 1).any() and (Y[:, t] == 0).any()]


def iter_fold_decisions(K: np.ndarray, train: np.ndarray, test: np.ndarray, Y_train: np.ndarray,
                        config: Any, vocabulary: Sequence[str], terms: Sequence[int],
                        label: str = "") -> ProgressGen[np.ndarray]:
    """Member decision values ``(len(test), T, M)`` of a fit on rows ``train`` of the Gram ``K``.

    ``K`` is the raw (uncentred) Gram matrix; ``train`` / ``test`` index its rows. Only
    ``terms`` are fitted (others stay 0). The training block is centred on the fold's own
    mean and normalised (:func:`.classify.prepare_gram`) and the test rows' cross block gets
    the same treatment, so the decisions equal those of an ``EnsembleClassifier`` fitted on
    these rows' features (up to float32 rounding of its stored weights).
    """
    from .classify import iter_fit_members, prepare_gram

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


def iter_cross_validate(
    X: Any,
    Y: Any,
    vocabulary: Sequence[str],
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    ensemble: Any,
    *,
    groups: Any = None,
    calibration: str | None = None,
    gram: Any = None,
) -> ProgressGen[Evaluation]:
    """Fit on each split's training rows, score its test rows, evaluate.

    ``X`` ``(n, d)`` feature rows (float16/32, may be a memmap; rows holding NaN are failed
    images and are left out), ``Y`` ``(n, T)`` with 1 / 0 / -1 unknown. The Gram matrix of
    the rows the splits use is computed once; every split centres and normalises a copy of its
    training block and fits its members there (``core.classify``), and its test rows are
    scored from the cross block, so no feature row is read again. A split whose training part
    lacks a class for a term contributes no scores for that term.

    Test sets that do not overlap (k-fold, one held-out set) are pooled and scored once;
    overlapping ones (:func:`random_partitions`) are scored one by one and combined into mean
    and std (:func:`combine_partitions`). ``calibration`` (default: the bundles' method,
    :data:`.calibration.DEFAULT_METHOD`) is fitted inside each split's training part exactly
    as training a bundle fits it (Platt: on grouped out-of-fold scores of that part, by
    ``groups``; without groups every image is its own group), so the brier and ece figures
    are those of the probabilities a bundle reports; AUC ranks by the members' raw mean (see
    :func:`score_predictions`). ``groups`` also improves the "not evaluated" reasons.
    ``gram`` (a :class:`.classify.GramBlock` holding those rows) saves computing it again.
    """
    from .calibration import DEFAULT_METHOD, METHODS, iter_calibrate
    from .classify import iter_gram, majority_vote

    calibration = DEFAULT_METHOD if calibration is None else calibration
    vocabulary = [str(t) for t in vocabulary]
    Y = np.asarray(Y)
    n_terms = len(vocabulary)
    if getattr(X, "ndim", None) != 2 or Y.shape != (X.shape[0], n_terms):
        raise InputError(f"labels have shape {Y.shape} but features have shape "
                         f"{getattr(X, 'shape', None)} and the vocabulary {n_terms} terms")
    if calibration not in METHODS:
        raise InputError(f"unknown calibration {calibration!r}; use one of {', '.join(METHODS)}")
    if not splits:
        raise InputError("no splits to evaluate")
    Y = Y.astype(np.int8)
    cfg = ensemble
    used = np.unique(np.concatenate([np.concatenate([np.asarray(tr), np.asarray(te)])
                                     for tr, te in splits]))
    K = yield from iter_gram(X, used if len(used) < X.shape[0] else None, reuse=gram)
    pos = np.full(X.shape[0], -1)
    pos[used] = np.arange(len(used))
    finite = np.isfinite(np.diag(K))
    labelled = (Y[used] != -1).any(axis=1)
    Yu = Y[used]
    g = np.arange(len(used)) if groups is None else np.asarray(groups)[used]

    pooled = _disjoint(splits)
    P = np.full((len(used), n_terms), np.nan)
    R = np.full((len(used), n_terms), np.nan)
    V = np.zeros((len(used), n_terms), dtype=bool)
    tested = np.zeros(len(used), dtype=bool)
    parts: list[Evaluation] = []
    trained_anywhere = np.zeros(n_terms, dtype=bool)
    for k, (train, test) in enumerate(splits):
        label = f"split {k + 1}/{len(splits)}: "
        yield Progress(k, len(splits), f"split {k + 1}/{len(splits)}")
        tr = pos[np.asarray(train)]
        tr = tr[finite[tr] & labelled[tr]]
        te = pos[np.asarray(test)]
        te = te[finite[te]]
        tested[te] = True
        Ytr = Yu[tr]
        fit_terms = trainable_terms(Ytr)
        trained_anywhere[fit_terms] = True
        P_k = np.full((len(te), n_terms), np.nan)
        R_k = np.full((len(te), n_terms), np.nan)
        V_k = np.zeros((len(te), n_terms), dtype=bool)
        if fit_terms and len(te):
            dec = yield from iter_fold_decisions(K, tr, te, Ytr, cfg, vocabulary, fit_terms,
                                                 label=label)
            raw = expit(dec).mean(axis=2)[:, fit_terms]
            cal = yield from sub_progress(iter_calibrate(
                K, tr, Ytr[:, fit_terms], g[tr], cfg, [vocabulary[t] for t in fit_terms],
                calibration), offset=0, prefix=label)
            R_k[:, fit_terms] = raw
            P_k[:, fit_terms] = cal.apply(raw)
            V_k[:, fit_terms] = majority_vote(dec)[:, fit_terms]
        if pooled:
            P[te], R[te], V[te] = P_k, R_k, V_k
        else:
            parts.append(score_predictions(Yu[te], V_k, P_k, vocabulary, ranking=R_k))
    yield Progress(len(splits), len(splits), "scoring")
    del K
    reasons = _untrainable_reasons(np.where(finite[:, None], Yu, -1),
                                   None if groups is None else g, vocabulary, trained_anywhere)
    if pooled:
        result = score_predictions(Yu[tested], V[tested], P[tested], vocabulary, reasons,
                                   ranking=R[tested])
        scores = np.full((X.shape[0], n_terms), np.nan)
        scores[used] = P
        return replace(result, scores=scores)
    n_pos = (Yu[finite] == 1).sum(axis=0)
    return combine_partitions(parts, reasons, n_pos=n_pos)


# -------------------------------------------------------------------------------- the table
def _cell(value: Any, spread: Any = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}" if spread is None else f"{value:.3f} ± {spread:.3f}"


def format_table(results: dict, per_term: bool = False) -> str:
    """Plain-text table in the paper's Table 2 layout: one row per layer, mean metrics.

    ``results`` is the ``{"layers": {layer: summary}}`` dict of CONTRACTS.md; with ``std``
    in a layer (repeated partitions) each cell is ``mean ± std``. The title says over how
    many of the terms the means are; terms not evaluated are listed with their reason.
    With ``per_term`` a table per layer with one row per term (and its positives) follows.
    """
    layers = results.get("layers", {})
    columns = METRICS + CALIBRATION_METRICS
    spread = any(s.get("std") for s in layers.values())
    width = 15 if spread else 11
    counts = {(s.get("n_evaluated"), s.get("n_terms")) for s in layers.values()}
    if len(counts) == 1 and None not in next(iter(counts)):
        n_eval, n_terms = next(iter(counts))
        title = f"Mean over {n_eval} of {n_terms} terms"
    else:
        title = "Mean over the evaluated terms"
    if spread:
        title += f" (mean ± std over {max(s.get('n_partitions', 0) for s in layers.values())} " \
                 "random gene-grouped partitions)"
    header = f"{'layer':>8}  " + "  ".join(f"{m:>{width}}" for m in columns)
    if len(counts) > 1:
        header += "  terms"
    lines = [title, header, "-" * len(header)]
    for layer, summary in layers.items():
        mean, std = summary.get("mean", {}), summary.get("std") or {}
        row = f"{layer:>8}  " + "  ".join(
            f"{_cell(mean.get(m), std.get(m) if spread else None):>{width}}" for m in columns)
        if len(counts) > 1:
            row += f"  {summary.get('n_evaluated')}/{summary.get('n_terms')}"
        lines.append(row)
    missing: dict[str, str] = {}
    for summary in layers.values():
        for term, why in (summary.get("not_evaluated") or {}).items():
            missing.setdefault(term, why)
    if missing:
        lines += ["", f"Not evaluated ({len(missing)}):"]
        lines += [f"  {term}: {why}" for term, why in missing.items()]
    if per_term:
        for layer, summary in layers.items():
            terms = summary.get("terms", {})
            w = max([len("term")] + [len(t) for t in terms])
            head = f"{'term':<{w}}  {'n_pos':>5}  " + "  ".join(f"{m:>11}" for m in METRICS)
            lines += ["", f"Layer {layer}", head, "-" * len(head)]
            for term, res in terms.items():
                lines.append(f"{term:<{w}}  {res.get('n_pos', 0):>5}  "
                             + "  ".join(f"{_cell(res.get(m)):>11}" for m in METRICS))
    return "\n".join(lines)
