"""The one owner of annotation state for a viewer (no Qt, no napari imports).

Every dock widget observes an :class:`AnnotatorSession` through its psygnal signals and changes
state only through its methods and its parts' (``session.labels``, ``session.model``); widgets
never talk to each other. Long work is a step from :mod:`.steps`: a part builds its frozen
request (``*_request``), the step runs in a worker, and the part applies the frozen result
(``apply_*``) on the thread that owns the session, which emits the signals. Writing an
attribute of the session or a part from any other thread raises (:mod:`.owned`).

Images are decoded lazily (only the one on screen plus a tiny cache), so folders with thousands
of images open at once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..core.data.images import read_rgb
from ..core.learn.decision import CALL_THRESHOLD
from ..core.utils.errors import InputError
from ..core.utils.progress import drive
from . import steps
from .labels import SessionLabels
from .model import SessionModel
from .results import OpenedDataset, StoreSwitch
from .shared import SessionState

#: how close to 0.5 a probability must be for a term to count as uncertain
UNCERTAIN_BAND = 0.15
_IMAGE_CACHE = 4

__all__ = ["UNCERTAIN_BAND", "AnnotatorSession"]


class AnnotatorSession(SessionState):
    """Dataset, vocabulary, label store, settings and navigation for one viewer, composed
    with two parts that have their own state and methods:

    - ``session.labels`` (:class:`.labels.SessionLabels`): vocabulary changes and labels;
    - ``session.model`` (:class:`.model.SessionModel`): features, model, predictions,
      training, fine-tuning, Grad-CAM requests, the "next to label" ranking.

    The signals and the data every part reads are :class:`.shared.SessionState`'s.
    """

    def __init__(self, cache_dir: str | Path | None = None, annotator: str | None = None):
        super().__init__(cache_dir, annotator)
        self._pending_error: InputError | None = None
        self._images: OrderedDict[int, np.ndarray] = OrderedDict()
        self._images_lock = threading.Lock()
        self.labels = SessionLabels(self)
        self.model = SessionModel(self, self.labels)

    # ------------------------------------------------------------------ dataset
    def open_request(self, inputs: Sequence[str | Path], store_path: str | Path | None = None,
                     vocabulary: Sequence[str] | str | Path | None = None) -> steps.OpenRequest:
        return steps.OpenRequest(tuple(Path(p) for p in inputs),
                                 Path(store_path) if store_path else None,
                                 tuple(vocabulary) if isinstance(vocabulary, list) else vocabulary,
                                 self.annotator, self.settings.stage)

    def open(self, inputs: Sequence[str | Path], store_path: str | Path | None = None,
             vocabulary: Sequence[str] | str | Path | None = None) -> None:
        """Open image files, folders or manifest CSVs here and now (scripts, tests).

        Bad files are skipped and listed; a manifest's terms are imported into the label
        store. Widgets run :func:`.steps.iter_open` in a worker and then :meth:`apply_open`.
        """
        self.apply_open(drive(steps.iter_open(self.open_request(inputs, store_path, vocabulary))))

    def apply_open(self, opened: OpenedDataset) -> None:
        """Make an opened dataset the session's dataset (emits signals)."""
        if self.store is not None and self.store is not opened.store:
            self.store.close()
        self.store = opened.store
        self.store_read_only = opened.store_read_only
        self._pending_error = opened.pending_error
        self.paths = opened.paths
        self.genes = opened.genes
        self.stages = opened.stages
        self.manifest_terms = opened.manifest_terms
        self.dataset = opened.dataset
        self.skipped = opened.skipped
        self.source = opened.source
        self.settings = replace(self.settings, stage=opened.stage)
        self.generation += 1
        self.model.forget()
        with self._images_lock:
            self._images.clear()
        self.vocabulary = list(opened.vocabulary)
        self.labels.forget(opened.labels, batches=True)
        self.index = 0
        self.dataset_changed.emit()
        self.vocabulary_changed.emit()
        self.predictions_changed.emit()
        self.current_changed.emit(self.index)

    def take_pending_error(self) -> InputError | None:
        """A non-fatal problem from the last open (e.g. read-only store), once."""
        err = self._pending_error
        self._pending_error = None
        return err

    def store_request(self, path: str | Path) -> tuple:
        """Arguments of :func:`.steps.iter_use_store` for switching to label file ``path``."""
        return (Path(path), self.paths, self.annotator, self.store, self.generation)

    def use_store(self, path: str | Path) -> None:
        """Switch to another label file here and now (the panel runs it in a worker)."""
        self.apply_store(drive(steps.iter_use_store(*self.store_request(path))))

    def apply_store(self, switched: StoreSwitch) -> None:
        """Make another label file the session's store.

        A file that cannot be written is refused while the current store is writable, so a
        wrong pick never stops labels from being saved.
        """
        store, error = switched.store, switched.error
        if switched.generation != self.generation:  # other images were opened meanwhile
            if store is not None:
                store.close()
            raise InputError("other images were opened while the label file was being "
                             "prepared; choose the label file again", path=switched.path)
        if error is not None and self.store is not None and not self.store_read_only:
            if store is not None:
                store.close()
            cause = error.__cause__
            reason = f" ({cause.message})" if isinstance(cause, InputError) else ""
            raise InputError(f"that label file cannot be written{reason}, so labels stay in "
                             f"{self.store.path}; choose another label file",
                             path=switched.path) from error
        if self.store is not None:
            self.store.close()
        self.store, self.store_read_only, self._pending_error = store, switched.read_only, error
        if self.store is not None and not self.store_read_only:
            self.store.add_terms(self.vocabulary)
        self.labels.forget(batches=True)
        self.labels_changed.emit(list(range(self.n_images)))
        err = self.take_pending_error()
        if err is not None:
            raise err

    def set_annotator(self, name: str) -> None:
        """Label as ``name`` from now on (each annotator's labels are kept apart)."""
        name = name.strip()
        if not name:
            raise InputError("the annotator name is empty; type your name or initials")
        if name == self.annotator and name == self.annotator_name:
            return  # the same annotator: nothing to re-read
        self.annotator = name
        if self.store is not None:
            self.store.annotator = name
        self.labels.forget()
        self.labels_changed.emit(list(range(self.n_images)))

    @property
    def annotator_name(self) -> str:
        if self.store is not None:
            return str(self.store.annotator)
        return self.annotator or ""

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def export_all(self, path: str | Path) -> list[str]:
        """File > Save's output: the labels as a manifest CSV at ``path`` (``.csv`` added)
        and, with predictions, ``<stem>.predictions.csv`` beside it; returns what was written."""
        path = Path(path)
        if path.suffix.lower() != ".csv":
            path = path.with_suffix(".csv")
        self.labels.export_manifest(path)
        written = [str(path)]
        if self.model.probabilities is not None:
            pred = path.with_name(f"{path.stem}.predictions.csv")
            self.model.export_predictions(pred)
            written.append(str(pred))
        return written

    def next_uncertain(self, delta: int = 1) -> int | None:
        """Go to the next image (cyclically) with a term predicted near 0.5 and not yet
        labelled: the images a biologist's label teaches the model most."""
        P = self.model.probabilities
        if P is None or not self.n_images:
            return None
        model = self.model.terms
        labelled = np.asarray([t in self.vocabulary for t in model], bool)  # terms one can label
        near = (np.abs(P - CALL_THRESHOLD) < UNCERTAIN_BAND) & labelled
        n = self.n_images
        order = (self.index + delta * np.arange(1, n + 1)) % n
        for i in order[near[order].any(axis=1)]:
            labels = self.labels.labels_for(int(i))
            if any(labels.get(model[c]) is None for c in np.flatnonzero(near[i])):
                self.set_index(int(i))
                return int(i)
        return None

    def image(self, index: int | None = None) -> np.ndarray:
        """RGB pixels of one image, decoded on demand (small LRU cache, any thread)."""
        i = self.index if index is None else index
        with self._images_lock:
            if i in self._images:
                self._images.move_to_end(i)
                return self._images[i]
        rgb = read_rgb(self.paths[i])
        with self._images_lock:
            self._images[i] = rgb
            while len(self._images) > _IMAGE_CACHE:
                self._images.popitem(last=False)
        return rgb
