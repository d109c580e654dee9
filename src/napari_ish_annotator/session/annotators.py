"""Several annotators for the session (issue 10; no Qt): each one's labels, where they
disagree, the tooltip naming who said what, their agreement, and training on their consensus.

The session builds each request on the GUI thread from its own state (a label-store read, no
model fitting); the science is ``core.labels.consensus``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..core.labels.consensus import agreement, consensus, disagreement_mask, image_annotations
from ..core.labels.consensus import annotator_labels as stored_annotator_labels
from ..core.utils.errors import InputError
from ..core.utils.progress import Progress, ProgressGen
from .steps import TrainRequest

if TYPE_CHECKING:
    from ..core.labels.consensus import Agreement, AnnotatorLabels
    from ..core.labels.store import LabelStore
    from .state import AnnotatorSession

#: what the Train panel can learn from
TRAIN_SOURCES = ("my labels", "consensus of all annotators")


def _store(session: AnnotatorSession) -> LabelStore:
    if session.store is None or not session.n_images:
        raise InputError("no labels are open; open images or a manifest first")
    return session.store


# ---------------------------------------------------------------------- annotators
def annotator_labels(session: AnnotatorSession) -> AnnotatorLabels:
    """Every annotator's own labels of the open images (core.labels.consensus.AnnotatorLabels)."""
    return stored_annotator_labels(_store(session), session.paths, session.vocabulary)


def disagreement(session: AnnotatorSession, indices: Sequence[int] | None = None) -> np.ndarray:
    """(n,) True where two annotators gave different values for some term of an image; with
    ``indices``, only for those images (a label change re-reads its own image only)."""
    paths = session.paths if indices is None else [session.paths[i] for i in indices]
    return disagreement_mask(_store(session), paths, session.vocabulary)


def term_tooltips(session: AnnotatorSession, index: int | None = None) -> dict[str, str]:
    """{term: "alice: present, bob: absent"} for one image (default: the current one)."""
    i = session.index if index is None else index
    if session.store is None or not 0 <= i < session.n_images or not session.vocabulary:
        return {}
    notes = image_annotations(session.store, session.paths[i], session.vocabulary)
    return {t: notes.tooltip(t) for t in session.vocabulary}


def iter_agreement(labels: AnnotatorLabels) -> ProgressGen[Agreement]:
    """core.labels.consensus.agreement in a worker (it fits Dawid-Skene and imports scikit-learn)."""
    yield Progress(0, 1, "comparing annotators")
    return agreement(labels)


def consensus_train_request(session: AnnotatorSession, cross_validate: bool = True,
                            method: str = "dawid-skene") -> TrainRequest:
    """A Train request whose labels are the consensus of every annotator in the store.

    The consensus (numpy EM over at most 3^A label patterns per term) is cheap; the request
    is otherwise the session's own, so training, CV and prediction are the same step.
    """
    labels = annotator_labels(session)
    agreed = consensus(labels, method).labels
    if not (agreed >= 0).any():
        raise InputError("no consensus labels: nobody has labelled the open images yet; "
                         "label images or import annotators' manifests first")
    return session.model.train_request(cross_validate,
                                       Y=np.ascontiguousarray(agreed, dtype=np.int8))
