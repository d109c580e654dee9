"""Reading current labels from a label store: one image's labels, and the (n, T) label
matrix behind the label counts, training and the consensus.

A mixin of :class:`~napari_ish_annotator.core.labels.store.LabelStore` (which owns the connection,
the image identities and the error handling); kept apart so each file holds one concern.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .connection import guarded
from .schema import EFFECTIVE, LabelValue

#: up to this many images, label queries name them (SQL IN list) instead of reading all labels
_FEW = 200


def _lookup(keys: dict[int, int], query: np.ndarray) -> np.ndarray:
    """``keys[q]`` for each id in ``query``, -1 where absent (memory follows len(keys))."""
    if not keys or not len(query):
        return np.full(len(query), -1, dtype=np.int64)
    k = np.fromiter(keys.keys(), np.int64, len(keys))
    v = np.fromiter(keys.values(), np.int64, len(keys))
    order = np.argsort(k)
    k, v = k[order], v[order]
    pos = np.minimum(np.searchsorted(k, query), len(k) - 1)
    return np.where(k[pos] == query, v[pos], -1)


class CurrentLabels:
    """The latest value per (image, term, annotator), with fallback annotators."""

    def _current(self, annotators: Sequence[str] | None,
                 image: str | None = None) -> dict[tuple[str, str, str], LabelValue]:
        """{(hash, term, annotator): latest value} for the given annotators (None = all)."""
        where, args = [EFFECTIVE.format(e="label_events")], []
        if annotators is not None:
            where.append("annotator IN (SELECT id FROM annotators WHERE name IN "
                         f"({','.join('?' * len(annotators))}))")
            args = list(annotators)
        if image is not None:
            where.append("image = (SELECT id FROM images WHERE content_hash = ?)")
            args.append(image)
        sql = ("SELECT i.content_hash, t.name, a.name, e.value FROM label_events e "
               "JOIN (SELECT max(id) AS id FROM label_events WHERE " + " AND ".join(where) +
               " GROUP BY image, term, annotator) last ON last.id = e.id "
               "JOIN images i ON i.id = e.image JOIN terms t ON t.id = e.term "
               "JOIN annotators a ON a.id = e.annotator")
        return {(h, t, a): v for h, t, a, v in self._conn.execute(sql, args)}

    @guarded
    def labels_for(self, image: str | Path, annotator: str | None = None,
                   fallback: Sequence[str] = ("manifest",)) -> dict[str, LabelValue]:
        """Latest value per term for one annotator; ``fallback`` annotators fill unlabelled terms."""
        digest = self._resolve(image)[0]
        chain = [annotator or self.annotator, *fallback]
        current = self._current(chain, digest)
        out: dict[str, LabelValue] = {}
        for name in chain:  # earlier annotators in the chain win
            for (h, term, a), value in current.items():
                if h == digest and a == name and term not in out:
                    out[term] = value
        return out

    @guarded
    def label_matrix(self, images: Sequence[str | Path], vocabulary: Sequence[str],
                     annotator: str | None = None,
                     fallback: Sequence[str] = ("manifest",)) -> np.ndarray:
        """(n, T) int8 of 1/0, -1 unknown; unseen images are all -1.

        ``fallback`` annotators (by default the imported manifest) fill terms the annotator
        never labelled; an explicit "unknown" from the annotator is kept. ``fallback=()``
        gives the annotator's own labels only.
        """
        out = np.full((len(images), len(vocabulary)), -1, dtype=np.int8)
        if not len(images) or not len(vocabulary):
            return out
        chain = list(dict.fromkeys([annotator or self.annotator, *fallback]))
        digests = self._hashes(images)
        wanted = {d for d in digests if d is not None}
        if not wanted:
            return out
        conn = self._conn
        if len(wanted) <= _FEW:  # one row (a keypress): only that image's events
            ids = dict(conn.execute("SELECT content_hash, id FROM images WHERE content_hash IN "
                                    f"({','.join('?' * len(wanted))})", list(wanted)))
        else:
            ids = {h: i for h, i in conn.execute("SELECT content_hash, id FROM images")
                   if h in wanted}
        if not ids:
            return out
        term_ids = dict(conn.execute("SELECT name, id FROM terms"))
        names = dict(conn.execute("SELECT name, id FROM annotators"))
        chain_ids = [names[a] for a in chain if a in names]
        if not chain_ids or not any(t in term_ids for t in vocabulary):
            return out
        where = [EFFECTIVE.format(e="label_events"),
                 f"annotator IN ({','.join('?' * len(chain_ids))})"]
        args: list[object] = list(chain_ids)
        if len(ids) <= _FEW:
            where.append(f"image IN ({','.join('?' * len(ids))})")
            args += list(ids.values())
        sql = ("SELECT e.image, e.term, e.annotator, coalesce(e.value, -1) FROM label_events e "
               "JOIN (SELECT max(id) AS id FROM label_events WHERE " + " AND ".join(where) +
               " GROUP BY image, term, annotator) last ON last.id = e.id")
        events = np.array(conn.execute(sql, args).fetchall(), dtype=np.int64).reshape(-1, 4)
        # image id -> first row showing it (same content under two paths: copied below);
        # lookups are sized by the number of rows, never by how large an id is
        first: dict[str, int] = {}
        for i, d in enumerate(digests):
            if d in ids and d not in first:
                first[d] = i
        first_col: dict[int, int] = {}
        for j, term in enumerate(vocabulary):
            if term in term_ids:
                first_col.setdefault(term_ids[term], j)
        image, term, who, value = events.T
        rows = _lookup({ids[d]: i for d, i in first.items()}, image)
        cols = _lookup(first_col, term)
        for annotator_id in reversed(chain_ids):  # earlier annotators in the chain win: last
            pick = (who == annotator_id) & (rows >= 0) & (cols >= 0)
            out[rows[pick], cols[pick]] = value[pick]
        if len(vocabulary) != len(set(vocabulary)):  # a repeated term column copies the first
            for j, term in enumerate(vocabulary):
                if term in term_ids and first_col[term_ids[term]] != j:
                    out[:, j] = out[:, first_col[term_ids[term]]]
        for i, d in enumerate(digests):
            if d in first and first[d] != i:
                out[i] = out[first[d]]
        return out
