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

import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal

from ..core.errors import InputError
from . import steps
from .results import (
    ExtractedFeatures,
    FinetuneOutcome,
    ModelState,
    OpenedDataset,
    Predictions,
    SessionSettings,
    StoreSwitch,
    TrainedModel,
    TrainReport,
)
from .steps import LABEL_FALLBACK

#: how close to 0.5 a probability must be for a term to count as uncertain
UNCERTAIN_BAND = 0.15
LABEL_CYCLE = {None: 1, 1: 0, 0: None}  # unknown -> present -> absent -> unknown
_IMAGE_CACHE = 4


class WrongThreadError(RuntimeError):
    """A session attribute was written from a thread other than the one that owns it."""


class AnnotatorSession:
    """Dataset, vocabulary, label store, features, model and predictions for one viewer."""

    dataset_changed = Signal()
    current_changed = Signal(int)
    vocabulary_changed = Signal()
    labels_changed = Signal(object)  # list[int] of image indices whose labels changed
    features_changed = Signal()
    model_changed = Signal()
    predictions_changed = Signal()
    settings_changed = Signal()
    term_selected = Signal(str)  # a widget asks "explain this term"
    train_report_changed = Signal()
    label_order_changed = Signal()  # a new "next to label" ranking (session.multi)

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
        self.dataset: Any = None
        self.skipped: tuple[str, ...] = ()
        self.vocabulary: list[str] = []
        self.store: Any = None
        self.store_read_only = False
        self.index = -1
        self.extracted: ExtractedFeatures | None = None
        self.bundle: Any = None
        self.finetuned: Path | None = None  # checkpoint of the fine-tuned backbone in use
        self.probabilities: np.ndarray | None = None
        self.votes: np.ndarray | None = None  # majority vote of each term's ensemble
        self.train_report: TrainReport | None = None
        self.previous_model: ModelState | None = None  # what "switch model" goes back to
        self.label_order: Any = None  # multi.LabelOrder: the "next to label" ranking
        self.member_spread: Any = None  # multi.MemberSpread of the fine-tuned ensemble in use
        self.generation = 0  # bumped on every open: late worker results are dropped
        self._pending_error: InputError | None = None
        self._extractors = steps.Extractors(self.cache_dir)
        self._images: OrderedDict[int, np.ndarray] = OrderedDict()
        self._images_lock = threading.Lock()
        self._label_cache: dict[int, dict[str, int | None]] = {}
        self._Y: np.ndarray | None = None  # the full label matrix, kept row by row

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
        from ..core.progress import drive

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
        with self._images_lock:
            self._images.clear()
        self._label_cache = {}
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
        from ..core.progress import drive

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
            raise InputError(f"{error}; labels are still saved in {self.store.path}")
        if self.store is not None:
            self.store.close()
        self.store, self.store_read_only, self._pending_error = store, switched.read_only, error
        if self.store is not None and not self.store_read_only:
            self.store.add_terms(self.vocabulary)
        self._label_cache = {}
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
        near = np.abs(self.probabilities - 0.5) < UNCERTAIN_BAND
        n = self.n_images
        order = (self.index + delta * np.arange(1, n + 1)) % n
        model = self.model_vocabulary
        for i in order[near[order].any(axis=1)]:
            labels = self.labels_for(int(i))
            if any(labels.get(model[c]) is None for c in np.flatnonzero(near[i])):
                self.set_index(int(i))
                return int(i)
        return None

    def image(self, index: int | None = None) -> np.ndarray:
        """RGB pixels of one image, decoded on demand (small LRU cache, any thread)."""
        from ..core.images import read_rgb

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

    # ------------------------------------------------------------------ vocabulary
    def set_vocabulary(self, terms: Sequence[str] | str | Path) -> None:
        from ..core.manifest import parse_vocabulary

        terms = parse_vocabulary(terms) if isinstance(terms, (str, Path)) else list(terms)
        if not terms:
            raise InputError("the vocabulary is empty; give at least one term")
        self.vocabulary = list(dict.fromkeys(terms))
        if self.store is not None and not self.store_read_only:
            self.store.add_terms(self.vocabulary)
        self._label_cache = {}
        self._Y = None
        self.vocabulary_changed.emit()
        self.labels_changed.emit(list(range(self.n_images)))

    def use_default_vocabulary(self, stage: str) -> None:
        from ..core.vocabulary import default_vocabulary

        self.update_settings(stage=stage)
        self.set_vocabulary(default_vocabulary(stage))

    def add_term(self, term: str) -> None:
        term = term.strip()
        if not term:
            raise InputError("the new term is empty; type a term name")
        if term not in self.vocabulary:
            self.set_vocabulary([*self.vocabulary, term])

    # ------------------------------------------------------------------ labels
    def _require_store(self) -> Any:
        if self.store is None or self.store_read_only:
            raise InputError("labels cannot be saved: the label store is read-only, locked or "
                             "not open; choose a writable label file in the Embryos panel")
        return self.store

    def labels_for(self, index: int | None = None) -> dict[str, int | None]:
        i = self.index if index is None else index
        if i < 0 or self.store is None:
            return {}
        if i not in self._label_cache:
            self._label_cache[i] = dict(self.store.labels_for(self.paths[i],
                                                              fallback=LABEL_FALLBACK))
        return self._label_cache[i]

    def label_matrix(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """(n_images, n_terms) int8 with 1 present, 0 absent, -1 unknown (or those rows).

        The full matrix is read once and then kept up to date row by row (a read-only view:
        copy it to change it), so counting labels after a keypress costs no query.
        """
        if indices is None:
            Y = self._Y
            if Y is None or Y.shape != (self.n_images, len(self.vocabulary)):
                Y = self._read_labels(self.paths)
                self._Y = Y
            view = Y.view()
            view.flags.writeable = False
            return view
        return self._read_labels([self.paths[i] for i in indices])

    def _read_labels(self, paths: Sequence[Path]) -> np.ndarray:
        if self.store is None or not paths:
            return np.full((len(paths), len(self.vocabulary)), -1, np.int8)
        return np.asarray(self.store.label_matrix(list(paths), self.vocabulary,
                                                  fallback=LABEL_FALLBACK), dtype=np.int8)

    def _labels_written(self, rows: Sequence[int]) -> None:
        for i in rows:
            self._label_cache.pop(i, None)
        if self._Y is not None and rows:
            self._Y[list(rows)] = self._read_labels([self.paths[i] for i in rows])
        self.labels_changed.emit(list(rows))

    def set_label(self, term: str, value: int | None, index: int | None = None) -> None:
        """Record one label change at once (one SQLite transaction)."""
        store = self._require_store()
        i = self.index if index is None else index
        if term not in self.vocabulary:
            raise InputError(f"unknown term {term!r}; add it to the vocabulary first")
        store.set_label(self.paths[i], term, value)
        self._labels_written([i])

    def cycle_label(self, term: str, index: int | None = None) -> int | None:
        """unknown -> present -> absent -> unknown; returns the new value."""
        i = self.index if index is None else index
        new = LABEL_CYCLE[self.labels_for(i).get(term)]
        self.set_label(term, new, i)
        return new

    def undo(self) -> bool:
        store = self._require_store()
        event = store.undo()
        if event is None:
            return False
        changed = [i for i, p in enumerate(self.paths)
                   if str(p) == str(event.image_path) or Path(event.image_path) == p]
        if changed:
            self._labels_written(changed)
        else:
            self._label_cache = {}
            self._Y = None
            self.labels_changed.emit(list(range(self.n_images)))
        if changed and changed[0] != self.index:
            self.set_index(changed[0])
        return True

    def import_manifest_labels(self, dataset: Any = None, emit: bool = True) -> int:
        """Copy a manifest's terms into the label store (terms not listed become absent)."""
        from ..core.manifest import read_manifest

        store = self._require_store()
        if dataset is None or isinstance(dataset, (str, Path)):
            src = dataset if dataset is not None else self.source
            if src is None or Path(src).suffix.lower() != ".csv":
                raise InputError("no manifest to import from; open or choose a manifest CSV")
            dataset = read_manifest(src, vocabulary=self.vocabulary or None,
                                    require_positives=False, check_files=False)
        n = store.import_dataset(dataset, annotator=LABEL_FALLBACK[0])
        self._label_cache = {}
        self._Y = None
        if emit:
            self.labels_changed.emit(list(range(self.n_images)))
        return int(n)

    def export_manifest(self, path: str | Path) -> None:
        """Write a manifest CSV whose ``terms`` column holds the present labels."""
        if self.store is None:
            raise InputError("no label store is open; open images or a manifest first")
        self.store.export_manifest(path, list(self.paths), self.vocabulary)

    # ------------------------------------------------------------------ features & model
    def extractor_config(self, use_bundle: bool = True) -> Any:
        """The model's extractor settings when a model is loaded, else the panel's."""
        from ..core.features import ExtractorConfig

        if use_bundle and self.bundle is not None:
            return replace(self.bundle.extractor, device=self.settings.device,
                           batch_size=self.settings.batch_size)
        s = self.settings
        return ExtractorConfig(backbone=s.backbone, weights=s.weights, layer=s.layer,
                               input_size=s.input_size, device=s.device,
                               batch_size=s.batch_size, seed=s.seed)

    def extractor(self, config: Any = None) -> Any:
        """The (shared, cached) feature extractor for ``config`` (default: current)."""
        return self._extractors.get(self.extractor_config() if config is None else config)

    def device_name(self) -> str:
        fx = self._extractors.latest()
        if fx is not None:
            return str(fx.device)
        from ..core.backbones import resolve_device_type

        known = resolve_device_type(self.settings.device)
        if known is not None:
            return known
        if "torch" not in sys.modules:  # importing torch (1.5 s) only to name the device: no
            return f"{self.settings.device} (GPU if present; known once a model runs)"
        try:
            from ..core.backbones import resolve_device

            return str(resolve_device(self.settings.device))
        except Exception:
            return self.settings.device

    def extract_request(self, config: Any = None) -> steps.ExtractRequest:
        if not self.paths:
            raise InputError("no images are open; open a folder or manifest first")
        return steps.ExtractRequest(self.paths, self.extractor_config() if config is None
                                    else config, self._extractors, self.generation)

    def current_features(self, config: Any = None) -> ExtractedFeatures | None:
        """The session's features if they were made with ``config`` for the open images."""
        f = self.extracted
        if f is None or len(f.X) != self.n_images or f.generation != self.generation:
            return None
        try:
            return f if f.signature == self.extractor(config).signature() else None
        except Exception:
            return None

    def features_current(self, config: Any = None) -> bool:
        return self.current_features(config) is not None

    def apply_features(self, result: ExtractedFeatures | None) -> None:
        """Keep extracted features (ignored if made for a dataset since replaced)."""
        if result is None or result.generation != self.generation:
            return
        self.extracted = result
        new = [f"{self.paths[i]}: skipped at feature extraction ({why})" for i, why in result.failed
               if 0 <= i < len(self.paths)]
        new = [m for m in new if m not in self.skipped]
        self.features_changed.emit()
        if new:  # listed and announced like the files skipped at open time
            self.skipped = (*self.skipped, *new)
            self.dataset_changed.emit()

    def predict_request(self) -> steps.PredictRequest:
        if self.bundle is None:
            raise InputError("no model yet: load a model bundle or train one in the Train panel")
        extract = self.extract_request()
        return steps.PredictRequest(self.bundle, self.current_features(), extract)

    def apply_predictions(self, result: Predictions) -> None:
        """Show a model's probabilities (dropped if made for a dataset since replaced)."""
        if result.generation != self.generation:
            return
        self.apply_features(result.features)
        self.probabilities = np.asarray(result.probabilities, dtype=np.float32)
        self.votes = np.asarray(result.votes, dtype=bool)
        self.predictions_changed.emit()

    def set_bundle(self, bundle: Any, finetuned: Path | None = None) -> None:
        self.bundle = bundle
        if finetuned != self.finetuned:
            self.member_spread = None
        self.finetuned = finetuned
        self.probabilities = None
        self.votes = None
        new_terms = [t for t in bundle.classifier.vocabulary if t not in self.vocabulary]
        if new_terms:
            self.vocabulary = [*self.vocabulary, *new_terms]
        if self.store is not None and not self.store_read_only:
            self.store.add_terms(self.vocabulary)
        self.model_changed.emit()
        self.vocabulary_changed.emit()
        self.predictions_changed.emit()

    def load_bundle(self, path: str | Path) -> None:
        from ..core.bundle import load_bundle

        self.set_bundle(load_bundle(path))

    def save_bundle(self, path: str | Path) -> None:
        from ..core.bundle import save_bundle

        if self.bundle is None:
            raise InputError("no model to save; train one first")
        save_bundle(path, self.bundle)

    @property
    def model_vocabulary(self) -> list[str]:
        return list(self.bundle.classifier.vocabulary) if self.bundle is not None else []

    def probabilities_for(self, index: int | None = None) -> dict[str, float]:
        i = self.index if index is None else index
        if self.probabilities is None or not (0 <= i < len(self.probabilities)) or \
                np.isnan(self.probabilities[i]).all():  # skipped at extraction: no prediction
            return {}
        return {t: float(p) for t, p in zip(self.model_vocabulary, self.probabilities[i],
                                            strict=False)}

    def predicted_for(self, index: int | None = None) -> dict[str, bool]:
        """The ensembles' majority vote per model term (the paper's prediction)."""
        i = self.index if index is None else index
        if self.votes is None or not (0 <= i < len(self.votes)) or not self.probabilities_for(i):
            return {}
        return {t: bool(v) for t, v in zip(self.model_vocabulary, self.votes[i], strict=False)}

    def top_terms(self, index: int, k: int = 3) -> list[tuple[str, float]]:
        probs = self.probabilities_for(index)
        return sorted(probs.items(), key=lambda kv: -kv[1])[:k]

    def export_predictions(self, path: str | Path) -> None:
        """predictions CSV: ``image`` + one probability column per model term (CONTRACTS)."""
        from ..core.pipeline import write_predictions

        if self.probabilities is None:
            raise InputError("no predictions yet; press Predict first")
        keep = np.flatnonzero(~np.isnan(self.probabilities).all(axis=1))  # not the skipped
        write_predictions(path, [self.paths[i] for i in keep], self.model_vocabulary,
                          self.probabilities[keep])

    # ------------------------------------------------------------------ training
    def groups(self) -> np.ndarray:
        """Grouped-CV ids of the open images (by gene; see core.evaluation.group_ids)."""
        from ..core.evaluation import group_ids

        return group_ids(self.genes, self.stages)

    def training_counts(self) -> dict[str, tuple[int, int]]:
        Y = self.label_matrix()
        return {t: (int((Y[:, j] == 1).sum()), int((Y[:, j] == 0).sum()))
                for j, t in enumerate(self.vocabulary)}

    def check_trainable(self, Y: np.ndarray | None = None) -> None:
        Y = self.label_matrix() if Y is None else Y
        bad = [f"{t} ({int((Y[:, j] == 1).sum())} present, {int((Y[:, j] == 0).sum())} absent)"
               for j, t in enumerate(self.vocabulary)
               if not ((Y[:, j] == 1).any() and (Y[:, j] == 0).any())]
        if bad:
            raise InputError(
                "cannot train: every term needs at least one 'present' and one 'absent' label; "
                "missing for: " + ", ".join(bad) + ". Label more images or remove those terms.")

    def train_request(self, cross_validate: bool = True, n_folds: int | None = None,
                      Y: np.ndarray | None = None) -> steps.TrainRequest:
        """Everything a Train run needs, frozen now (labels, settings, features).

        ``n_folds``: the gene-grouped folds of the one out-of-fold pass that gives the CV AUCs
        and the calibration (default: the calibration's own, so the model is ``train``'s).

        ``Y`` trains on other labels of the open images (e.g. the annotators' consensus,
        :func:`.multi.consensus_train_request`) instead of the session's own.
        """
        if not self.paths:
            raise InputError("no images are open; open a folder or manifest first")
        Y = self.label_matrix().copy() if Y is None else Y  # the request owns its labels
        self.check_trainable(Y)
        s = self.settings
        config = self.extractor_config(use_bundle=False)  # train with the panel's settings
        return steps.TrainRequest(
            Y, tuple(self.vocabulary), self.paths, self.genes, self.stages,
            {"n_members": s.n_members, "C": s.C, "seed": s.seed}, cross_validate, n_folds,
            s.seed, self.current_features(config), self.extract_request(config))

    def apply_trained(self, result: TrainedModel) -> None:
        """Use a freshly trained model and its predictions (dropped if the dataset changed)."""
        if result.predictions.generation != self.generation:
            return
        self.train_report = result.report
        self.apply_features(result.features)
        finetuned = Path(self.settings.weights) if self.finetuned is not None and \
            str(self.finetuned) == self.settings.weights else None
        self.set_bundle(result.bundle, finetuned)
        self.apply_predictions(result.predictions)
        self.train_report_changed.emit()

    # ------------------------------------------------------------------ fine-tuning
    def finetune_request(self, config: Any, out: Path) -> steps.FinetuneRequest:
        """Fine-tune on the labelled images, then refit on the checkpoint's features."""
        if not self.paths:
            raise InputError("no images are open; open a folder or manifest first")
        train = self.train_request(True)
        rows = np.flatnonzero((train.Y >= 0).any(axis=1))
        if len(rows) < 2:
            raise InputError("fine-tuning needs at least two labelled images; label more")
        settings = replace(self.settings, backbone=config.backbone,
                           input_size=int(config.input_size))
        refit, refit_settings = steps.finetune_refit(train, settings, Path(out))
        return steps.FinetuneRequest(tuple(self.paths[i] for i in rows), train.Y[rows],
                                     train.vocabulary, rows, config, Path(out),
                                     refit, refit_settings)

    def model_state(self) -> ModelState:
        return ModelState(self.settings, self.bundle, self.extracted, self.probabilities,
                          self.votes, self.train_report, {"finetuned": self.finetuned})

    def apply_finetuned(self, outcome: FinetuneOutcome) -> None:
        """Switch to the fine-tuned backbone's model; the current one becomes 'previous'."""
        if outcome.trained.predictions.generation != self.generation:
            return
        previous = self.model_state()
        self.settings = outcome.settings
        self.finetuned = Path(outcome.settings.weights)
        self.apply_trained(outcome.trained)
        self.previous_model = previous
        self.settings_changed.emit()

    def switch_model(self) -> bool:
        """Swap the model in use with :attr:`previous_model` (False if there is none)."""
        snap = self.previous_model
        if snap is None:
            return False
        current = self.model_state()
        self.settings = snap.settings
        self.train_report = snap.train_report
        self.extracted = snap.features if snap.features is not None and \
            snap.features.generation == self.generation else None
        self.features_changed.emit()
        if snap.bundle is not None:
            self.set_bundle(snap.bundle, snap.extra.get("finetuned"))
            if snap.probabilities is not None and len(snap.probabilities) == self.n_images:
                self.probabilities, self.votes = snap.probabilities, snap.votes
                self.predictions_changed.emit()
        else:
            self.bundle, self.finetuned, self.probabilities, self.votes = None, None, None, None
            self.model_changed.emit()
            self.predictions_changed.emit()
        self.previous_model = current
        self.settings_changed.emit()
        self.train_report_changed.emit()
        return True

    # ------------------------------------------------------------------ Grad-CAM
    def gradcam_request(self, terms: Sequence[str], index: int | None = None,
                        finetuned: bool = False) -> steps.GradcamRequest:
        """Grad-CAM of one image for ``terms`` (the fine-tuned network's own head if asked)."""
        if self.bundle is None:
            raise InputError("Grad-CAM needs a model: load a bundle or train one first")
        if finetuned and self.finetuned is None:
            raise InputError("no fine-tuned model is in use; fine-tune in the Train panel first")
        i = self.index if index is None else index
        if not 0 <= i < self.n_images:
            raise InputError("no image is open; open a folder or manifest first")
        missing = [t for t in terms if t not in self.model_vocabulary]
        if missing:
            raise InputError(f"the model has no classifier for {', '.join(missing)}; "
                             "retrain after labelling that term")
        return steps.GradcamRequest(i, self.paths[i], tuple(terms), self.bundle,
                                    self.extract_request(), self.finetuned if finetuned else None)

    # ------------------------------------------------------------------ next to label
    def apply_label_order(self, order: Any) -> None:
        """Keep a "next to label" ranking (:func:`.multi.iter_suggest`; dropped if stale)."""
        if order.generation != self.generation:
            return
        self.label_order = order
        self.label_order_changed.emit()

    def next_to_label(self) -> int | None:
        """Go to the next ranked image after this one (cyclically; from the best one when
        this image is not ranked) that still has an unknown model term; None without a
        ranking or when every other ranked image is labelled."""
        order = self.label_order
        if order is None or order.generation != self.generation or self.bundle is None:
            return None
        cols = [self.vocabulary.index(t) for t in self.model_vocabulary if t in self.vocabulary]
        Y = self.label_matrix()
        images = order.images.tolist()
        start = images.index(self.index) + 1 if self.index in images else 0
        for i in images[start:] + images[:start]:
            if i != self.index and (Y[i, cols] < 0).any():
                self.set_index(int(i))
                return int(i)
        return None

    # ------------------------------------------------------------------ ensemble spread
    def apply_member_spread(self, spread: Any) -> None:
        """Show a fine-tuned ensemble's member spread (:func:`.multi.iter_member_spread`)."""
        if spread.generation != self.generation or self.finetuned is None or \
                Path(spread.checkpoint) != Path(self.finetuned):
            return  # made for other images or another model
        self.member_spread = spread
        self.predictions_changed.emit()

    def spread_for(self, index: int | None = None) -> dict[str, float]:
        """{term: std over the ensemble's members} of one image ({} without a spread)."""
        spread = self.member_spread
        i = self.index if index is None else index
        if spread is None or spread.generation != self.generation or \
                not 0 <= i < len(spread.std):
            return {}
        return {t: float(v) for t, v in zip(spread.vocabulary, spread.std[i], strict=True)}
