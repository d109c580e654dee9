"""Label stores and manifest CSVs: import a manifest's labels as one annotator's, export an
annotator's labels (or a consensus) as a manifest.

A mixin of :class:`~napari_ish_annotator.core.labels.store.LabelStore`; kept apart so each file
holds one concern.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.manifest import Sample, write_manifest
from ..utils.errors import InputError
from .connection import guarded

if TYPE_CHECKING:
    from ..data.manifest import Dataset


class ManifestIO:
    """Manifest import (one transaction) and export (atomic file)."""

    @guarded
    def import_dataset(self, dataset: Dataset, annotator: str = "manifest") -> int:
        """Write the manifest's labels (unlisted vocabulary terms = 0) in ONE transaction.

        Only values that differ from the annotator's current ones are written, so importing
        the same manifest again writes nothing. Returns the number of events written.
        """
        hashes = [self._resolve(s.image)[0] for s in dataset.samples]  # before taking the lock
        written = 0
        with self._write():
            term_ids = {t: self._named_id("terms", t) for t in dataset.vocabulary}
            annotator_id = self._named_id("annotators", annotator)
            for sample, digest in zip(dataset.samples, hashes, strict=True):
                image_id = self._upsert_image(digest, str(Path(sample.image).resolve()),
                                              sample.gene, sample.stage)
                positives = set(sample.terms)
                for term in positives - term_ids.keys():
                    term_ids[term] = self._named_id("terms", term)
                for term, term_id in term_ids.items():
                    value = 1 if term in positives else 0
                    latest = self._latest(image_id, term_id, annotator_id)
                    if latest is None or latest[1] != value:
                        self._insert(image_id, term_id, value, annotator_id)
                        written += 1
        return written

    @guarded
    def export_manifest(self, path: str | Path, images: Sequence[Path], vocabulary: Sequence[str],
                        annotator: str | None = None,
                        fallback: Sequence[str] = ("manifest",),
                        matrix: np.ndarray | None = None) -> None:
        """Write a manifest CSV (image, terms[, stage, gene], unknown_terms) atomically.

        Labels are this annotator's, with imported manifest labels filling terms it never
        labelled, or ``matrix`` (n, T) in {1, 0, -1} (e.g. a consensus) when given;
        ``unknown_terms`` lists the terms still without a label.
        """
        if matrix is None:
            matrix = self.label_matrix(images, vocabulary, annotator, fallback)
        samples, unknown = [], []
        for image, labels in zip(images, matrix, strict=True):
            digest, file_path = self._resolve(image)
            stored = self._conn.execute("SELECT path, gene, stage FROM images "
                                        "WHERE content_hash = ?", (digest,)).fetchone()
            gene, stage = (stored[1], stored[2]) if stored else (None, None)
            full = Path(file_path or stored[0])
            samples.append(Sample(image=full, gene=gene, stage=stage, terms=tuple(
                t for t, v in zip(vocabulary, labels, strict=True) if v == 1)))
            unknown.append(";".join(t for t, v in zip(vocabulary, labels, strict=True) if v == -1))
        try:
            write_manifest(path, samples, extra_columns={"unknown_terms": unknown})
        except OSError as exc:
            raise InputError(f"cannot write the manifest ({exc.strerror}); pick a writable "
                             "location", path=path) from None
