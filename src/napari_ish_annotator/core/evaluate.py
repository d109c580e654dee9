"""Metrics of the paper's Table 2 and gene-grouped cross-validation folds.

Accuracy, sensitivity (recall of positives), specificity (recall of negatives) and AUC per
term, computed with scikit-learn; the summary averages them over terms. Images of one gene
share their labels, so folds keep every gene's images together (otherwise a near-duplicate of
a test image would sit in the training set and inflate every metric).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score
from sklearn.model_selection import GroupKFold

from .errors import InputError

__all__ = ["METRICS", "term_metrics", "summarise", "grouped_folds", "format_table"]

METRICS = ("accuracy", "sensitivity", "specificity", "auc")


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


def _json_number(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def summarise(Y_true: Any, Y_pred: Any, Y_score: Any, vocabulary: Sequence[str]) -> dict:
    """``{"mean": {metric: ...}, "terms": {term: {metric: ..., "n_pos": k}}}`` (CONTRACTS.md).

    Entries of ``Y_true`` equal to -1 (unknown) are left out for that term. Means are over
    the terms where a metric is defined (e.g. AUC needs both classes). Undefined values are
    ``None`` so the result is plain JSON.
    """
    Y_true, Y_pred, Y_score = (np.asarray(a) for a in (Y_true, Y_pred, Y_score))
    shape = (Y_true.shape[0], len(vocabulary))
    for name, arr in (("labels", Y_true), ("predictions", Y_pred), ("scores", Y_score)):
        if arr.shape != shape:
            raise InputError(f"{name} have shape {arr.shape}, expected {shape} "
                             "(images x vocabulary terms)")
    terms: dict[str, dict] = {}
    per_metric: dict[str, list[float]] = {m: [] for m in METRICS}
    for t, term in enumerate(vocabulary):
        known = Y_true[:, t] != -1
        if not known.any():
            terms[term] = {**{m: None for m in METRICS}, "n_pos": 0}
            continue
        res = term_metrics(Y_true[known, t], Y_pred[known, t], Y_score[known, t])
        for m in METRICS:
            per_metric[m].append(res[m])
        terms[term] = {**{m: _json_number(res[m]) for m in METRICS}, "n_pos": res["n_pos"]}
    mean = {}
    for m in METRICS:
        vals = [v for v in per_metric[m] if not math.isnan(v)]
        mean[m] = float(np.mean(vals)) if vals else None
    return {"mean": mean, "terms": terms}


def grouped_folds(groups: Any, n_splits: int, seed: int = 0
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_splits`` (train, test) index pairs; all images of a group land in one test fold.

    Uses scikit-learn's ``GroupKFold(shuffle=True)`` so the assignment of groups to folds is
    random (seeded) but fold sizes stay balanced.
    """
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


def _cell(value: Any) -> str:
    return "   n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:6.3f}"


def format_table(results: dict, per_term: bool = False) -> str:
    """Plain-text table in the paper's Table 2 layout: one row per layer, mean metrics.

    ``results`` is the ``{"layers": {layer: summary}}`` dict of CONTRACTS.md. With
    ``per_term`` a table per layer with one row per term (and its positives) follows.
    """
    layers = results.get("layers", {})
    header = f"{'layer':>8}  " + "  ".join(f"{m:>11}" for m in METRICS)
    lines = ["Mean over terms", header, "-" * len(header)]
    for layer, summary in layers.items():
        mean = summary.get("mean", {})
        lines.append(f"{layer:>8}  " + "  ".join(f"{_cell(mean.get(m)):>11}" for m in METRICS))
    if per_term:
        for layer, summary in layers.items():
            terms = summary.get("terms", {})
            width = max([len("term")] + [len(t) for t in terms])
            head = f"{'term':<{width}}  {'n_pos':>5}  " + "  ".join(f"{m:>11}" for m in METRICS)
            lines += ["", f"Layer {layer}", head, "-" * len(head)]
            for term, res in terms.items():
                lines.append(f"{term:<{width}}  {res.get('n_pos', 0):>5}  "
                             + "  ".join(f"{_cell(res.get(m)):>11}" for m in METRICS))
    return "\n".join(lines)
