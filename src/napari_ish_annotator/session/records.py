"""The current image's gene x stage record (issue 27), Qt-free: what the Embryos panel shows
and what "Accept record" writes.

A curator submits terms per gene and stage, not per image, so the panel shows the record the
current image belongs to (:func:`core.learn.groups.record_groups`), its probability per term
combined from its images' predictions (:func:`core.learn.groups.combine_probabilities`, the
same combination as ``predict --by gene,stage``) and the terms called present by the one
decision rule (:func:`core.learn.decision.calls`). Accepting writes those calls as the
current annotator's labels of every image of the record in one transaction, undone by one
Undo (:meth:`.labels.SessionLabels.set_label_batch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from ..core.learn.decision import calls
from ..core.learn.groups import GroupRecords, combine_probabilities, record_groups
from ..core.utils.errors import InputError

if TYPE_CHECKING:
    from .state import AnnotatorSession

__all__ = ["RecordView", "current_record", "record_changes", "unpredicted", "accept_record"]


@dataclass(frozen=True)
class RecordView:
    """One gene x stage record: its images and, with predictions, its combined calls."""

    gene: str
    stage: str
    note: str  # "" or why the record holds this image only
    members: tuple[int, ...]  # image indices
    terms: tuple[str, ...]  # the model's terms ((): no predictions yet)
    probabilities: np.ndarray  # (len(terms),) combined; NaN: no image of it was scored

    @property
    def predicted(self) -> bool:
        """True when at least one term has a combined probability."""
        return bool(np.isfinite(self.probabilities).any())

    @property
    def called(self) -> tuple[tuple[str, float], ...]:
        """(term, combined probability) of the terms called present, most probable first."""
        hit = np.flatnonzero(calls(self.probabilities))
        order = hit[np.argsort(-self.probabilities[hit], kind="stable")]
        return tuple((self.terms[j], float(self.probabilities[j])) for j in order)


@lru_cache(maxsize=4)
def _records(genes: tuple[str | None, ...], stages: tuple[str | None, ...]) -> GroupRecords:
    """The open images' records, computed once per dataset (the panel asks on every step)."""
    return record_groups(genes, stages)


def current_record(session: AnnotatorSession, index: int | None = None) -> RecordView | None:
    """The record of image ``index`` (default: the current one); None without images."""
    i = session.index if index is None else index
    if not 0 <= i < session.n_images:
        return None
    records = _records(tuple(session.genes), tuple(session.stages))
    g = int(records.index[i])
    members = records.members(g)
    terms: tuple[str, ...] = ()
    combined = np.zeros(0)
    P = session.model.probabilities
    if P is not None and len(P) == session.n_images:
        terms = tuple(session.model.terms)
        one = GroupRecords((records.genes[g],), (records.stages[g],), (records.notes[g],),
                           np.zeros(len(members), dtype=np.int64))
        combined = combine_probabilities(P[members], one)[0]
    return RecordView(records.genes[g], records.stages[g], records.notes[g],
                      tuple(int(m) for m in members), terms, combined)


def record_changes(session: AnnotatorSession, record: RecordView
                   ) -> list[tuple[int, str, int]]:
    """(image, term, value) of accepting ``record``: present for its called terms, absent for
    the other terms it has a probability of (as a manifest's unlisted terms), on each image.
    A term the model does not predict (added since training) is left as it is: no call, no
    evidence to write."""
    if not record.predicted:
        raise InputError("this record has no prediction yet; train a model or press Predict "
                         "first, then accept the record")
    present = {term for term, _ in record.called}
    scored = {t for t, p in zip(record.terms, record.probabilities, strict=True)
              if np.isfinite(p)}
    return [(i, term, int(term in present)) for i in record.members
            for term in session.vocabulary if term in scored]


def unpredicted(session: AnnotatorSession, record: RecordView) -> list[str]:
    """Vocabulary terms accepting ``record`` leaves alone (no probability for them)."""
    scored = {t for t, p in zip(record.terms, record.probabilities, strict=True)
              if np.isfinite(p)}
    return [t for t in session.vocabulary if t not in scored]


def accept_record(session: AnnotatorSession, index: int | None = None) -> int:
    """Write the record's calls as labels of all its images (one batch, one Undo); returns the
    number of labels that changed."""
    record = current_record(session, index)
    if record is None:
        raise InputError("no image is open; open a folder or manifest first")
    return session.labels.set_label_batch(record_changes(session, record))
