"""Active learning: which unlabelled images would a label help most?

An image is informative for a term when the term's ensemble is unsure about it: the members'
mean probability is near 0.5 (close to the decision boundary) and the members disagree
(some vote present, some absent). Each image's score sums this over the terms, weighted
towards rare terms (their few positives are what the classifier lacks most; a term with
prevalence ``p`` weighs ``1 / sqrt(min(p, 1 - p))``, normalised to mean 1). Images of one
gene show the same pattern, so the ranking spreads picks across genes: every image already
picked from a gene multiplies the scores of its other images by ``gene_discount``.

Used by ``ish-annotator suggest`` and by the Embryos panel's "next to label" order.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit

from ..utils.csvio import write_csv
from ..utils.progress import ProgressGen
from ..workflow import iter_score_chunked
from .ensembles import EnsembleClassifier

__all__ = ["Suggestion", "term_weights", "informativeness", "rank", "suggest", "iter_suggest",
           "write_suggestions"]

GENE_DISCOUNT = 0.5


@dataclass(frozen=True)
class Suggestion:
    """Images to label next: ``order`` indexes the candidates, best first."""

    order: np.ndarray            # (k,) candidate indices
    score: np.ndarray            # (k,) ranking score after spreading across genes, non-increasing
    informativeness: np.ndarray  # (n,) every candidate's score before spreading


def term_weights(classifier: EnsembleClassifier) -> np.ndarray:
    """(T,) weight per term from its training prevalence: rare terms weigh more, mean 1."""
    prevalence = []
    for term in classifier.terms:
        n = term.n_pos + term.n_neg
        p = term.n_pos / n if n else 0.5
        prevalence.append(min(p, 1.0 - p))
    minority = np.maximum(np.asarray(prevalence, dtype=np.float64), 1e-3)
    weights = 1.0 / np.sqrt(minority)
    return weights / weights.mean()


def informativeness(decisions: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """(n,) weighted sum over terms of boundary closeness and member disagreement.

    ``decisions`` are the members' decision values (n, T, M)
    (:meth:`EnsembleClassifier.decision_members`). Per term both parts lie in [0, 1]:
    closeness ``1 - |2 p - 1|`` of the mean probability ``p`` and disagreement
    ``1 - |2 v - 1|`` of the share ``v`` of members voting present.
    """
    decisions = np.asarray(decisions, dtype=np.float64)
    p = expit(decisions).mean(axis=2)
    v = (decisions > 0).mean(axis=2)
    per_term = 0.5 * ((1.0 - np.abs(2 * p - 1)) + (1.0 - np.abs(2 * v - 1)))
    if weights is None:
        weights = np.ones(decisions.shape[1])
    return per_term @ np.asarray(weights, dtype=np.float64)


def rank(scores: np.ndarray, genes: Sequence[str | None] | None = None, n: int | None = None,
         gene_discount: float = GENE_DISCOUNT) -> Suggestion:
    """Best ``n`` candidates (all with None), greedily spread across genes.

    Picking an image of gene ``g`` multiplies the scores of ``g``'s remaining images by
    ``gene_discount`` (images without a gene are their own group). Ties keep input order.
    """
    scores = np.asarray(scores, dtype=np.float64)
    total = len(scores) if n is None else max(0, min(int(n), len(scores)))
    groups = [None if genes is None or genes[i] is None else genes[i] for i in range(len(scores))]
    picked: dict[str, int] = {}
    heap = [(-s, i, 0) for i, s in enumerate(scores)]  # (-score, index, gene picks seen)
    heapq.heapify(heap)
    order, ranked = [], []
    while heap and len(order) < total:
        neg, i, seen = heapq.heappop(heap)
        gene = groups[i]
        now = picked.get(gene, 0) if gene is not None else 0
        if now != seen:  # the gene got picks since this entry was scored: re-score
            heapq.heappush(heap, (-scores[i] * gene_discount ** now, i, now))
            continue
        order.append(i)
        ranked.append(-neg)
        if gene is not None:
            picked[gene] = now + 1
    return Suggestion(np.asarray(order, dtype=np.int64), np.asarray(ranked), scores)


def suggest(classifier: EnsembleClassifier, X: Any, genes: Sequence[str | None] | None = None,
            n: int | None = None) -> Suggestion:
    """Rank the feature rows ``X`` (n, d) of unlabelled images for labelling."""
    decisions = classifier.decision_members(X)
    return rank(informativeness(decisions, term_weights(classifier)), genes, n)


def iter_suggest(bundle, images: Sequence[Path], genes: Sequence[str | None] | None = None,
                 n: int | None = None, cache_dir: Path | None = None,
                 device: str | None = None, chunk_size: int = 256) -> ProgressGen[Suggestion]:
    """:func:`suggest` for image files: features are extracted ``chunk_size`` at a time, so
    only one chunk's features (0.8 MB per image at VGG16 layer 21) is in memory at once."""
    classifier = bundle.classifier
    weights = term_weights(classifier)
    parts = yield from iter_score_chunked(
        bundle, images, lambda X: informativeness(classifier.decision_members(X), weights),
        cache_dir, device, chunk_size)
    scores = np.concatenate(parts) if parts else np.empty(0)
    return rank(scores, genes, n)


def write_suggestions(path: str | Path, images: Sequence[Path | str],
                      suggestion: Suggestion) -> None:
    """The ``image,score`` CSV of CONTRACTS.md, best first, written atomically (formula-like
    cells neutralised, :mod:`.csvio`)."""
    write_csv(path, ["image", "score"],
              ([str(images[i]), f"{float(score):.6f}"]
               for i, score in zip(suggestion.order, suggestion.score, strict=True)))
