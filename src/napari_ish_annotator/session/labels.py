"""``session.labels``: the open images' vocabulary and labels.

Labels live in the SQLite label store (``core.labels``); this part keeps the full label
matrix and updates it row by row, so counting labels after a keypress costs no query.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.data.manifest import parse_vocabulary, read_manifest
from ..core.data.vocabulary import default_vocabulary
from ..core.utils.errors import InputError
from .owned import OwnedByOneThread
from .steps import LABEL_FALLBACK

if TYPE_CHECKING:
    from ..core.data.manifest import Dataset
    from ..core.labels.store import LabelStore
    from .shared import SessionState

#: unknown -> present -> absent -> unknown (the keys 1-9/0 and a click on a label cell)
LABEL_CYCLE = {None: 1, 1: 0, 0: None}


class SessionLabels(OwnedByOneThread):
    """Vocabulary and labels of a session's open images (``session.labels``).

    The vocabulary itself is the session's (every part reads it); the label caches are
    this part's own, and :meth:`forget` drops them when the images or the store change.
    """

    def __init__(self, session: SessionState) -> None:
        super().__init__(session._owner)
        self.session = session
        self._label_cache: dict[int, dict[str, int | None]] = {}
        self._Y: np.ndarray | None = None  # the full label matrix, kept row by row
        self._label_batches: list[frozenset[int]] = []  # event ids of each set_label_batch

    def forget(self, labels: np.ndarray | None = None, batches: bool = False) -> None:
        """Drop the cached labels (``labels``: the new full matrix, when known); ``batches``
        also forgets what :meth:`undo` reverts as one (another store or other images)."""
        self._label_cache = {}
        self._Y = labels
        if batches:
            self._label_batches = []

    # ------------------------------------------------------------------ vocabulary
    def set_vocabulary(self, terms: Sequence[str] | str | Path) -> None:
        s = self.session
        terms = parse_vocabulary(terms) if isinstance(terms, (str, Path)) else list(terms)
        if not terms:
            raise InputError("the vocabulary is empty; give at least one term")
        s.vocabulary = list(dict.fromkeys(terms))
        if s.store is not None and not s.store_read_only:
            s.store.add_terms(s.vocabulary)
        self.forget()
        s.vocabulary_changed.emit()
        s.labels_changed.emit(list(range(s.n_images)))

    def use_default_vocabulary(self, stage: str) -> None:
        self.session.update_settings(stage=stage)
        self.set_vocabulary(default_vocabulary(stage))

    def add_term(self, term: str) -> None:
        s = self.session
        term = term.strip()
        if not term:
            raise InputError("the new term is empty; type a term name")
        if term not in s.vocabulary:
            self.set_vocabulary([*s.vocabulary, term])

    # ------------------------------------------------------------------ labels
    def _require_store(self) -> LabelStore:
        s = self.session
        if s.store is None or s.store_read_only:
            raise InputError("labels cannot be saved: the label store is read-only, locked or "
                             "not open; choose a writable label file in the Embryos panel")
        return s.store

    def labels_for(self, index: int | None = None) -> dict[str, int | None]:
        s = self.session
        i = s.index if index is None else index
        if i < 0 or s.store is None:
            return {}
        if i not in self._label_cache:
            self._label_cache[i] = dict(s.store.labels_for(s.paths[i], fallback=LABEL_FALLBACK))
        return self._label_cache[i]

    def label_matrix(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """(n_images, n_terms) int8 with 1 present, 0 absent, -1 unknown (or those rows).

        The full matrix is read once and then kept up to date row by row (a read-only view:
        copy it to change it), so counting labels after a keypress costs no query.
        """
        s = self.session
        if indices is None:
            Y = self._Y
            if Y is None or Y.shape != (s.n_images, len(s.vocabulary)):
                Y = self._read_labels(s.paths)
                self._Y = Y
            view = Y.view()
            view.flags.writeable = False
            return view
        return self._read_labels([s.paths[i] for i in indices])

    def _read_labels(self, paths: Sequence[Path]) -> np.ndarray:
        s = self.session
        if s.store is None or not paths:
            return np.full((len(paths), len(s.vocabulary)), -1, np.int8)
        return np.asarray(s.store.label_matrix(list(paths), s.vocabulary, fallback=LABEL_FALLBACK),
                          dtype=np.int8)

    def _labels_written(self, rows: Sequence[int]) -> None:
        s = self.session
        for i in rows:
            self._label_cache.pop(i, None)
        if self._Y is not None and rows:
            self._Y[list(rows)] = self._read_labels([s.paths[i] for i in rows])
        s.labels_changed.emit(list(rows))

    def set_label(self, term: str, value: int | None, index: int | None = None) -> None:
        """Record one label change at once (one SQLite transaction)."""
        s = self.session
        store = self._require_store()
        i = s.index if index is None else index
        if term not in s.vocabulary:
            raise InputError(f"unknown term {term!r}; add it to the vocabulary first")
        store.set_label(s.paths[i], term, value)
        self._labels_written([i])

    def set_labels(self, term: str, value: int | None, indices: Sequence[int]) -> int:
        """One term's label of several images as one batch (the Gallery's marks): one
        :meth:`undo` reverts all of it. Images that already have ``value`` are left alone, so
        every write is a new event. Returns the number of labels changed."""
        s = self.session
        self._require_store()
        if term not in s.vocabulary:
            raise InputError(f"unknown term {term!r}; add it to the vocabulary first")
        rows = [int(i) for i in dict.fromkeys(indices) if 0 <= int(i) < s.n_images]
        current = self.label_matrix()[:, s.vocabulary.index(term)] if rows else []
        want = -1 if value is None else int(value)
        return self.set_label_batch([(i, term, value) for i in rows if current[i] != want])

    def set_label_batch(self, changes: Sequence[tuple[int, str, int | None]]) -> int:
        """Label changes (image index, term, value) in ONE transaction - all or none - that
        one :meth:`undo` reverts (the Gallery's marks, an accepted gene x stage record).
        Returns the number of labels changed (a no-op change writes nothing)."""
        s = self.session
        store = self._require_store()
        unknown = sorted({t for _, t, _ in changes if t not in s.vocabulary})
        if unknown:
            raise InputError(f"unknown term(s) {', '.join(unknown)}; add them to the "
                             "vocabulary first")
        if not changes:
            return 0
        events = store.set_labels([(s.paths[i], t, v) for i, t, v in changes])
        if events:
            self._label_batches.append(frozenset(e.id for e in events))
            self._labels_written(sorted({i for i, _, _ in changes}))
        return len(events)

    def cycle_label(self, term: str, index: int | None = None) -> int | None:
        """unknown -> present -> absent -> unknown; returns the new value."""
        i = self.session.index if index is None else index
        new = LABEL_CYCLE[self.labels_for(i).get(term)]
        self.set_label(term, new, i)
        return new

    def undo(self) -> bool:
        """Undo the annotator's latest change; a batch (:meth:`set_label_batch`) as one."""
        s = self.session
        store = self._require_store()
        batch = self._label_batches[-1] if self._label_batches else frozenset()
        events = store.undo_together(batch)
        if not events:
            return False
        if events[0].undo_of in batch:
            self._label_batches.pop()
        where = {str(e.image_path) for e in events}
        where_paths = {Path(w) for w in where}
        changed = [i for i, p in enumerate(s.paths) if str(p) in where or p in where_paths]
        if changed:
            self._labels_written(changed)
        else:
            self.forget()
            s.labels_changed.emit(list(range(s.n_images)))
        if len(events) == 1 and changed and changed[0] != s.index:
            s.set_index(changed[0])
        return True

    def import_manifest_labels(self, dataset: Dataset | str | Path | None = None,
                               emit: bool = True) -> int:
        """Copy a manifest's terms into the label store (terms not listed become absent)."""
        s = self.session
        store = self._require_store()
        if dataset is None or isinstance(dataset, (str, Path)):
            src = dataset if dataset is not None else s.source
            if src is None or Path(src).suffix.lower() != ".csv":
                raise InputError("no manifest to import from; open or choose a manifest CSV")
            dataset = read_manifest(src, vocabulary=s.vocabulary or None,
                                    require_positives=False, check_files=False)
        n = store.import_dataset(dataset, annotator=LABEL_FALLBACK[0])
        self.forget()
        if emit:
            s.labels_changed.emit(list(range(s.n_images)))
        return int(n)

    def export_manifest(self, path: str | Path) -> None:
        """Write a manifest CSV whose ``terms`` column holds the present labels."""
        s = self.session
        if s.store is None:
            raise InputError("no label store is open; open images or a manifest first")
        s.store.export_manifest(path, list(s.paths), s.vocabulary)
