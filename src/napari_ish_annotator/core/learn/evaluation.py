"""The one evaluation engine: the paper's Table-2 metrics and calibration scores of predictions
on held-out genes, and cross-validation.

Used by ``ish-annotator evaluate``, the headless demo, the Train panel's cross-validation and
fine-tuning validation, so they all give the same answer to the same question. The pieces
below it, each written once: gene-grouped splits (:mod:`.splits`), the per-term rules and
metrics (:mod:`.metrics`: "a term has both classes", "mean over defined terms", AUC, ECE),
fits of folds on one Gram matrix (:mod:`.folds`); their names are re-exported here.

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

from ..utils.errors import InputError
from ..utils.progress import Progress, ProgressGen, sub_progress
from . import ensembles as classify
from .calibration import DEFAULT_METHOD, METHODS, iter_calibrate
from .decision import calls
from .folds import iter_fold_decisions
from .groups import DEFAULT_COMBINATION, GroupRecords, combine_probabilities, group_labels
from .logistic import majority_vote
from .metrics import (
    CALIBRATION_METRICS,
    METRICS,
    class_counts,
    defined_mean,
    expected_calibration_error,
    has_both_classes,
    labelled_mask,
    term_metrics,
    trainable_terms,
)

__all__ = ["Evaluation", "HeldOut", "score_predictions", "score_groups", "combine_partitions",
           "iter_cross_validate"]


# ----------------------------------------------------------------------------------- metrics
def _number(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


@dataclass(frozen=True)
class HeldOut:
    """Held-out predictions of every split, concatenated: ``rows`` index the feature rows,
    ``split`` says which split scored them, ``probabilities`` are calibrated, ``raw`` the
    members' mean (NaN where a split did not fit a term)."""

    rows: np.ndarray
    split: np.ndarray
    probabilities: np.ndarray
    raw: np.ndarray


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
    #: the same figures for gene x stage records (``records=`` of :func:`iter_cross_validate`)
    groups: Evaluation | None = field(default=None, compare=False, repr=False)
    #: every split's held-out predictions, for figures (:mod:`.report`)
    held_out: HeldOut | None = field(default=None, compare=False, repr=False)

    @property
    def mean_auc(self) -> float | None:
        return self.summary["mean"].get("auc")

    def term_auc(self) -> dict[str, float | None]:
        return {t: self.summary["terms"][t]["auc"] for t in self.vocabulary}


def _not_evaluated_reason(y: np.ndarray) -> str:
    n_pos, n_neg = (int(c) for c in class_counts(y))
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
        if not has_both_classes(y):
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
    mean: dict[str, float | None] = {m: _number(defined_mean(v)) for m, v in per_metric.items()}
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
        mean[m] = _number(defined_mean(vals))
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
            entry[m] = _number(defined_mean(s[m] for s in scored))
        terms[term] = {**entry, "n_pos": count, "evaluated": True,
                       "n_partitions": len(scored)}
    n_eval = len(vocabulary) - len(not_evaluated)
    summary = {"mean": mean, "std": std, "terms": terms, "n_evaluated": n_eval,
               "n_terms": len(vocabulary), "not_evaluated": not_evaluated,
               "n_partitions": len(parts)}
    return Evaluation(vocabulary, summary, std, n_eval, len(vocabulary), not_evaluated)


def score_groups(Y: Any, P: Any, records: GroupRecords, vocabulary: Sequence[str],
                 not_evaluated: dict[str, str] | None = None,
                 method: str = DEFAULT_COMBINATION, raw: Any = None) -> Evaluation:
    """Table-2 metrics of gene x stage records (:mod:`.groups`) from held-out image
    probabilities ``P`` (NaN where not scored); a record is called by the one decision rule
    (:mod:`.decision`) on its combined probability. Records with no scored image are left out;
    terms in ``not_evaluated`` (the image level's verdicts) are left out here too, so a term is
    never scored at one level and silently dropped at the other. AUC ranks by the combined
    ``raw`` (the members' mean) when given, as :func:`score_predictions` does for images.
    """
    vocabulary = [str(t) for t in vocabulary]
    Pg = combine_probabilities(P, records, method)
    skip = {t: why for t, why in (not_evaluated or {}).items() if t in vocabulary}
    for term in skip:
        Pg[:, vocabulary.index(term)] = np.nan
    Yg = group_labels(Y, records)
    scored = np.isfinite(Pg).any(axis=1)
    ranking = None if raw is None else combine_probabilities(raw, records, method)[scored]
    result = score_predictions(Yg[scored], calls(Pg[scored]), Pg[scored], vocabulary,
                               reasons={t: f"not evaluated for images: {why}"
                                        for t, why in skip.items()}, ranking=ranking)
    result.summary["n_groups"] = int(scored.sum())
    return result


# -------------------------------------------------------------------------- cross-validation
def _untrainable_reasons(Y: np.ndarray, groups: np.ndarray | None, vocabulary: Sequence[str],
                         trained_anywhere: np.ndarray) -> dict[str, str]:
    """Why each term no split could evaluate, from the labels alone."""
    out: dict[str, str] = {}
    for t, term in enumerate(vocabulary):
        y = Y[:, t]
        n_pos, n_neg = (int(c) for c in class_counts(y))
        if not has_both_classes(y):
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
    records: GroupRecords | None = None,
) -> ProgressGen[Evaluation]:
    """Fit on each split's training rows, score its test rows, evaluate.

    ``X`` ``(n, d)`` feature rows (float16/32, may be a memmap; rows holding NaN are failed
    images and are left out), ``Y`` ``(n, T)`` with 1 / 0 / -1 unknown. The Gram matrix of
    the rows the splits use is computed once; every split centres and normalises a copy of its
    training block and fits its members there (``core.learn.ensembles``), and its test rows are
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
    ``gram`` (a :class:`.ensembles.GramBlock` holding those rows) saves computing it again.
    With ``records`` (gene x stage records of the rows, :func:`.groups.record_groups`) the
    result's ``groups`` holds the same figures for the records of the test genes
    (:func:`score_groups`), on the same splits.
    """
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
    # through the module: the one Gram computation, one place to count feature reads
    K = yield from classify.iter_gram(X, used if len(used) < X.shape[0] else None, reuse=gram)
    pos = np.full(X.shape[0], -1)
    pos[used] = np.arange(len(used))
    finite = np.isfinite(np.diag(K))
    labelled = labelled_mask(Y[used])
    Yu = Y[used]
    g = np.arange(len(used)) if groups is None else np.asarray(groups)[used]

    pooled = _disjoint(splits)
    P = np.full((len(used), n_terms), np.nan)
    R = np.full((len(used), n_terms), np.nan)
    V = np.zeros((len(used), n_terms), dtype=bool)
    tested = np.zeros(len(used), dtype=bool)
    parts: list[Evaluation] = []
    group_parts: list[Evaluation] = []
    held_rows: list[np.ndarray] = []
    held_split: list[np.ndarray] = []
    held_p: list[np.ndarray] = []
    held_r: list[np.ndarray] = []
    trained_anywhere = np.zeros(n_terms, dtype=bool)
    for k, (train, test) in enumerate(splits):
        label = f"split {k + 1}/{len(splits)}: "
        yield Progress(k, len(splits), f"split {k + 1}/{len(splits)}")
        tr = pos[np.asarray(train)]
        tr = tr[finite[tr] & labelled[tr]]
        te = pos[np.asarray(test)]
        te = te[finite[te]]
        tested[te] = True
        held_rows.append(used[te])
        held_split.append(np.full(len(te), k))
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
        held_p.append(P_k)
        held_r.append(R_k)
        if pooled:
            P[te], R[te], V[te] = P_k, R_k, V_k
        else:
            parts.append(score_predictions(Yu[te], V_k, P_k, vocabulary, ranking=R_k))
            if records is not None:
                P_rows = np.full((X.shape[0], n_terms), np.nan)
                R_rows = P_rows.copy()
                P_rows[used[te]], R_rows[used[te]] = P_k, R_k
                group_parts.append(score_groups(Y, P_rows, records, vocabulary,
                                                parts[-1].not_evaluated, raw=R_rows))
    yield Progress(len(splits), len(splits), "scoring")
    del K
    held_out = HeldOut(np.concatenate(held_rows), np.concatenate(held_split),
                       np.concatenate(held_p), np.concatenate(held_r))
    reasons = _untrainable_reasons(np.where(finite[:, None], Yu, -1),
                                   None if groups is None else g, vocabulary, trained_anywhere)
    if pooled:
        result = score_predictions(Yu[tested], V[tested], P[tested], vocabulary, reasons,
                                   ranking=R[tested])
        scores = np.full((X.shape[0], n_terms), np.nan)
        scores[used] = P
        raw = np.full((X.shape[0], n_terms), np.nan)
        raw[used] = R
        groups_result = None if records is None else \
            score_groups(Y, scores, records, vocabulary, result.not_evaluated, raw=raw)
        return replace(result, scores=scores, groups=groups_result, held_out=held_out)
    n_pos = (Yu[finite] == 1).sum(axis=0)
    combined = replace(combine_partitions(parts, reasons, n_pos=n_pos), held_out=held_out)
    if records is None:
        return combined
    return replace(combined, groups=combine_partitions(group_parts))
