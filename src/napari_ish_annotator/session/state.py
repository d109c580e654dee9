"""The one owner of annotation state for a viewer (no Qt, no napari imports).

Every dock widget observes an :class:`AnnotatorSession` through its psygnal signals and changes
state only through its methods; widgets never talk to each other. Long work is a step from
:mod:`.steps`: the session builds its frozen request (``*_request``), the step runs in a worker,
and the session applies the frozen result (``apply_*``) on the thread that owns it, which
emits the signals. Writing a session attribute from any other thread raises.

Images are decoded lazily (only the one on screen plus a tiny cache), so folders with thousands
of images open at once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

from ..core.data.images import read_rgb
from ..core.learn.decision import CALL_THRESHOLD
from ..core.utils.errors import InputError
from ..core.utils.progress import drive
from . import steps
from .labels import LabelsPart
from .model import ModelPart
from .results import (
    ExtractedFeatures,
    HeldOutScores,
    LabelOrder,
    MemberSpread,
    ModelState,
    OpenedDataset,
    SessionSettings,
    StoreSwitch,
    TrainReport,
)

if TYPE_CHECKING:
    from ..core.data.manifest import Dataset
    from ..core.labels.store import LabelStore
    from ..core.learn.bundle import ModelBundle


#: how close to 0.5 a probability must be for a term to count as uncertain
UNCERTAIN_BAND = 0.15
_IMAGE_CACHE = 4


class WrongThreadError(RuntimeError):
    """A session attribute was written from a thread other than the one that owns it."""


class AnnotatorSession(LabelsPart, ModelPart):
    """Dataset, vocabulary, label store, features, model and predictions for one viewer.

    The dataset, label store, settings and navigation are here; the vocabulary and labels
    in :class:`.labels.LabelsPart`, everything about the model in :class:`.model.ModelPart`.
    """

    dataset_changed = Signal()
    current_changed = Signal(int)
    vocabulary_changed = Signal()
    labels_changed = Signal(object)  # list[int] of image indices whose labels changed
    features_changed = Signal()
    model_changed = Signal()
    predictions_changed = Signal()
    settings_changed = Signal()
    term_selected = Signal(str)  # a widget asks "explain this term"
    table_selected = Signal(object)  # list[int]: images picked in the embryo table layer
    train_report_changed = Signal()
    label_order_changed = Signal()  # a new "next to label" ranking (session.model_outputs)

    def __init__(self, cache_dir: str | Path | None = None, annotator: str | None = None):
        object.__setattr__(self, "_owner", threading.get_ident())
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.annotator = annotator
        self.settings = SessionSettings()
        self.paths: tuple[Path, ...] = ()
        self.genes: tuple[str | None, ...] = ()
        self.stages: tuple[str | None, ...] = ()
        self.manifest_terms: tuple[tuple[str, ...] | None, ...] = ()
        self.source: Path | None = None
        self.dataset: Dataset | None = None
        self.skipped: tuple[str, ...] = ()
        self.vocabulary: list[str] = []
        self.store: LabelStore | None = None
        self.store_read_only = False
        self.index = -1
        self.extracted: ExtractedFeatures | None = None
        self.bundle: ModelBundle | None = None
        self.finetuned: Path | None = None  # checkpoint of the fine-tuned backbone in use
        self.probabilities: np.ndarray | None = None
        self.votes: np.ndarray | None = None  # majority vote of each term's ensemble
        self.train_report: TrainReport | None = None
        self.held_out: HeldOutScores | None = None  # the last Train's out-of-fold p
        self.previous_model: ModelState | None = None  # what "switch model" goes back to
        self.label_order: LabelOrder | None = None  # the "next to label" ranking
        self.member_spread: MemberSpread | None = None  # a fine-tuned ensemble's spread
        self.generation = 0  # bumped on every open: late worker results are dropped
        self._pending_error: InputError | None = None
        self._extractors = steps.Extractors(self.cache_dir)
        self._images: OrderedDict[int, np.ndarray] = OrderedDict()
        self._images_lock = threading.Lock()
        self._label_cache: dict[int, dict[str, int | None]] = {}
        self._Y: np.ndarray | None = None  # the full label matrix, kept row by row
        self._label_batches: list[frozenset[int]] = []  # event ids of each set_label_batch

    def __setattr__(self, name: str, value: Any) -> None:
        if threading.get_ident() != self._owner:
            raise WrongThreadError(
                f"AnnotatorSession.{name} written from thread {threading.current_thread().name}; "
                "steps return results and only the owning (GUI) thread applies them")
        object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ dataset
    @property
    def n_images(self) -> int:
        return len(self.paths)

    @property
    def current_path(self) -> Path | None:
        return self.paths[self.index] if 0 <= self.index < len(self.paths) else None

    @property
    def features(self) -> np.ndarray | None:
        """Feature rows of the open images (see :attr:`extracted` for their signature)."""
        return None if self.extracted is None else self.extracted.X

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
        self.extracted = None
        self.probabilities = None
        self.votes = None
        self.train_report = None
        self.held_out = None
        with self._images_lock:
            self._images.clear()
        self._label_cache = {}
        self._label_batches = []
        self.vocabulary = list(opened.vocabulary)
        self._Y = opened.labels
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
        self._label_cache = {}
        self._label_batches = []
        self._Y = None
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
        self._label_cache = {}
        self._Y = None
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

    # ------------------------------------------------------------------ settings
    def update_settings(self, **values: Any) -> None:
        """Replace some settings (unknown names raise) and tell the panels."""
        unknown = [k for k in values if k not in SessionSettings.__dataclass_fields__]
        if unknown:
            raise AttributeError(", ".join(unknown))
        new = replace(self.settings, **values)
        if new != self.settings:
            self.settings = new
            self.settings_changed.emit()

    # ------------------------------------------------------------------ navigation
    def set_index(self, index: int) -> None:
        if not self.paths:
            return
        index = int(np.clip(index, 0, len(self.paths) - 1))
        if index != self.index:
            self.index = index
            self.current_changed.emit(index)

    def step(self, delta: int) -> None:
        self.set_index(self.index + delta)

    def next_uncertain(self, delta: int = 1) -> int | None:
        """Go to the next image (cyclically) with a term predicted near 0.5 and not yet
        labelled: the images a biologist's label teaches the model most."""
        if self.probabilities is None or not self.n_images:
            return None
        model = self.model_vocabulary
        labelled = np.asarray([t in self.vocabulary for t in model], bool)  # terms one can label
        near = (np.abs(self.probabilities - CALL_THRESHOLD) < UNCERTAIN_BAND) & labelled
        n = self.n_images
        order = (self.index + delta * np.arange(1, n + 1)) % n
        for i in order[near[order].any(axis=1)]:
            labels = self.labels_for(int(i))
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

    def name(self, index: int) -> str:
        return self.paths[index].name
