"""The one owner of annotation state for a viewer (no Qt, no napari imports).

Every dock widget observes an :class:`AnnotatorSession` through its psygnal signals and changes
state only through its methods; widgets never talk to each other. Long steps are offered as
progress generators (``iter_*``) that a widget runs in a worker; their results come back
through ``set_*`` methods on the GUI thread, which emit the signals.

Images are decoded lazily (only the one on screen plus a tiny cache), so folders with thousands
of images open at once.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal

from ..core.errors import InputError
from ..core.progress import Progress, ProgressGen

#: how close to 0.5 a probability must be for a term to count as uncertain
UNCERTAIN_BAND = 0.15
#: seconds a label write waits for a lock held by another program before reporting it
STORE_TIMEOUT = 1.0
#: minimum positives and negatives per term before a cross-validated AUC is reported
MIN_CV_PER_CLASS = 3
#: images checked / hashed per progress step while opening
OPEN_CHUNK = 100
#: up to this many genes, cross-validation leaves one gene out; above, grouped k folds
LOGO_MAX_GROUPS = 12

#: annotators whose labels fill terms the user has not labelled (manifest imports)
LABEL_FALLBACK = ("manifest",)
LABEL_CYCLE = {None: 1, 1: 0, 0: None}  # unknown -> present -> absent -> unknown


@dataclass
class SessionSettings:
    """Model/extraction choices the Annotate panel edits (defaults follow the paper)."""

    backbone: str = "vgg16"
    weights: str = "imagenet"
    layer: str = "21"
    device: str = "auto"
    input_size: int = 224
    batch_size: int = 8
    seed: int = 0
    overlay_threshold: float = 0.5
    n_members: int = 11
    C: float = 10.0
    stage: str = "13-16"
    extra: dict[str, Any] = field(default_factory=dict)


def _check_image_header(path: Path) -> str | None:
    """Return why ``path`` is not a readable image, reading only its header (fast)."""
    try:
        if not path.is_file():
            return "file not found"
        if path.stat().st_size == 0:
            return "file is empty"
        if path.suffix.lower() in {".tif", ".tiff"}:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                if not tif.pages:
                    return "TIFF has no pages"
            return None
        from PIL import Image

        with Image.open(path) as im:
            im.size  # noqa: B018 - forces header parse
        return None
    except Exception as exc:  # any decoder error means: skip and report
        return f"cannot be read as an image ({type(exc).__name__}: {exc})"


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

    def __init__(self, cache_dir: str | Path | None = None, annotator: str | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.annotator = annotator
        self.settings = SessionSettings()
        self.paths: list[Path] = []
        self.genes: list[str | None] = []
        self.stages: list[str | None] = []
        self.manifest_terms: list[tuple[str, ...] | None] = []
        self.source: Path | None = None
        self.dataset: Any = None
        self.skipped: list[str] = []
        self.vocabulary: list[str] = []
        self.store: Any = None
        self.store_read_only = False
        self.index = -1
        self.features: np.ndarray | None = None
        self.features_signature: dict | None = None
        self.bundle: Any = None
        self.probabilities: np.ndarray | None = None
        self.votes: np.ndarray | None = None  # majority vote of each term's ensemble
        self.train_report: dict | None = None
        self.defer_layer = False
        self.generation = 0  # bumped on every open: late worker results are dropped  # set by the reader: napari adds the layer it returns
        self._extractor: Any = None
        self._extractor_key: tuple | None = None
        self._images: OrderedDict[int, np.ndarray] = OrderedDict()
        self._label_cache: dict[int, dict[str, int | None]] = {}

    # ------------------------------------------------------------------ dataset
    @property
    def n_images(self) -> int:
        return len(self.paths)

    @property
    def current_path(self) -> Path | None:
        return self.paths[self.index] if 0 <= self.index < len(self.paths) else None

    def open(
        self,
        inputs: Sequence[str | Path],
        store_path: str | Path | None = None,
        vocabulary: Sequence[str] | str | Path | None = None,
    ) -> None:
        """Open image files, folders or manifest CSVs; bad files are skipped and listed.

        A manifest's terms are imported into a fresh label store, so sample data and
        manifests come with their labels; an existing store keeps its own labels.
        Blocks until done: widgets run :meth:`iter_open` in a worker and then call
        :meth:`apply_open`, so thousands of files are checked and hashed off the GUI thread.
        """
        from ..core.progress import drive

        self.apply_open(drive(self.iter_open(inputs, store_path, vocabulary)))

    def iter_open(
        self,
        inputs: Sequence[str | Path],
        store_path: str | Path | None = None,
        vocabulary: Sequence[str] | str | Path | None = None,
    ) -> ProgressGen[dict]:
        """The slow part of opening (image headers, content hashes, label store), no state change.

        Safe in a worker thread: it only reads the session's settings; its result goes to
        :meth:`apply_open` on the GUI thread.
        """
        from ..core.images import SUPPORTED_SUFFIXES, list_images
        from ..core.labels import LabelStore
        from ..core.manifest import parse_vocabulary, read_manifest

        inputs = [Path(p) for p in inputs]
        if not inputs:
            raise InputError("nothing to open; choose image files, a folder or a manifest CSV")
        yield Progress(0, 0, "listing images")
        paths: list[Path] = []
        genes: list[str | None] = []
        stages: list[str | None] = []
        mterms: list[tuple[str, ...] | None] = []
        vocab: list[str] = []
        dataset = None
        skipped: list[str] = []
        # a dataset folder (manifest.csv + images, e.g. from generate_dataset) opens its manifest
        inputs = [item / "manifest.csv" if item.is_dir() and (item / "manifest.csv").is_file()
                  else item for item in inputs]
        for item in inputs:
            if item.suffix.lower() == ".csv":
                ds = read_manifest(item, require_positives=False, check_files=False)
                dataset = ds if dataset is None else dataset
                for sample in ds.samples:
                    paths.append(Path(sample.image))
                    genes.append(sample.gene)
                    stages.append(sample.stage)
                    mterms.append(tuple(sample.terms))
                vocab += [t for t in ds.vocabulary if t not in vocab]
            elif item.is_dir():
                listed = list_images(item)
                others = sorted(
                    p for p in item.iterdir()
                    if p.is_file() and p.suffix.lower() not in SUPPORTED_SUFFIXES
                    and p.suffix.lower() != ".sqlite" and not p.name.startswith(".")
                    and "sqlite" not in p.name
                )
                skipped += [f"{p}: not a supported image type ({p.suffix or 'no suffix'})"
                            for p in others if p.suffix.lower() not in {".csv", ".txt", ".json"}]
                for p in listed:
                    paths.append(p)
                    genes.append(None)
                    stages.append(None)
                    mterms.append(None)
            elif item.is_file():
                if item.suffix.lower() not in SUPPORTED_SUFFIXES:
                    skipped.append(f"{item}: not a supported image type")
                    continue
                paths.append(item)
                genes.append(None)
                stages.append(None)
                mterms.append(None)
            else:
                raise InputError("no such file or folder; check the path", path=item)
        keep: list[int] = []
        for i, p in enumerate(paths):
            if i % OPEN_CHUNK == 0:
                yield Progress(i, len(paths), f"checking images ({i}/{len(paths)})")
            why = _check_image_header(p)
            if why is None:
                keep.append(i)
            else:
                skipped.append(f"{p}: {why}")
        if not keep:
            detail = f" ({skipped[0]})" if skipped else ""
            raise InputError(f"no readable images found{detail}; choose a folder with "
                             "PNG/JPEG/TIFF/BMP images or a manifest CSV", path=inputs[0])
        paths = [paths[i] for i in keep]
        stage = self.settings.stage
        known_stages = {stages[i] for i in keep if stages[i]}
        if len(known_stages) == 1:
            stage = known_stages.pop()
        source = inputs[0]
        path = Path(store_path) if store_path else LabelStore.default_path_for(source)
        store, read_only, pending = yield from self._iter_open_store(path, paths)
        try:
            if vocabulary is not None:
                vocab = parse_vocabulary(vocabulary)
            if not vocab and store is not None:
                vocab = list(store.terms())
            if not vocab:
                from ..core.vocabulary import default_vocabulary

                vocab = list(default_vocabulary(stage))
            if store is not None and not read_only:
                yield Progress(len(paths), len(paths), "importing manifest labels")
                store.add_terms(vocab)
                if dataset is not None:  # idempotent: writes only what changed in the manifest
                    store.import_dataset(dataset, annotator=LABEL_FALLBACK[0])
        except BaseException:
            if store is not None:
                store.close()
            raise
        return {"paths": paths, "genes": [genes[i] for i in keep],
                "stages": [stages[i] for i in keep], "manifest_terms": [mterms[i] for i in keep],
                "dataset": dataset, "skipped": skipped, "source": source, "stage": stage,
                "vocabulary": vocab, "store": store, "store_read_only": read_only,
                "pending_error": pending}

    def apply_open(self, opened: dict) -> None:
        """Make an :meth:`iter_open` result the session's dataset (GUI thread; emits signals)."""
        if self.store is not None and self.store is not opened["store"]:
            self.store.close()
        self.store = opened["store"]
        self.store_read_only = opened["store_read_only"]
        self._pending_error = opened["pending_error"]
        self.paths = opened["paths"]
        self.genes = opened["genes"]
        self.stages = opened["stages"]
        self.manifest_terms = opened["manifest_terms"]
        self.dataset = opened["dataset"]
        self.skipped = opened["skipped"]
        self.source = opened["source"]
        self.settings.stage = opened["stage"]
        self.generation += 1
        self.features = None
        self.features_signature = None
        self.probabilities = None
        self.votes = None
        self.train_report = None
        self._images.clear()
        self._label_cache.clear()
        self.vocabulary = list(opened["vocabulary"])
        self.index = 0
        self.dataset_changed.emit()
        self.vocabulary_changed.emit()
        self.predictions_changed.emit()
        self.current_changed.emit(self.index)

    def _iter_open_store(self, path: Path, paths: Sequence[Path], hashes_from: Any = None,
                         ) -> ProgressGen[tuple[Any, bool, InputError | None]]:
        """(store, read_only, pending error): hashes every image into the store in chunks.

        ``hashes_from`` (the store being replaced) lends its path->hash cache, so switching
        label files only stat()s the images instead of hashing them all again.
        """
        from ..core.labels import LabelStore

        store = None
        done = False
        try:
            try:
                store = LabelStore(path, annotator=self.annotator, busy_timeout=STORE_TIMEOUT)
                if hashes_from is not None:
                    store.share_hash_cache(hashes_from)
                for start in range(0, len(paths), OPEN_CHUNK):
                    yield Progress(start, len(paths),
                                   f"reading images into the label store ({start}/{len(paths)})")
                    store.add_images(paths[start:start + OPEN_CHUNK])
                done = True
                return store, False, None
            except InputError as exc:
                reason = str(exc).removeprefix(f"{path}: ")
            if store is not None:
                store.close()
                store = None
            # read-only folder or locked file: fall back to reading, report clearly
            if path.exists():
                try:
                    store = LabelStore(path, annotator=self.annotator, read_only=True)
                    if hashes_from is not None:
                        store.share_hash_cache(hashes_from)
                except InputError:
                    store = None
            error = InputError(
                f"the label store cannot be written ({reason}); labels will not be saved - "
                "choose another label file in the Embryos panel", path=path)
            done = True
            return store, store is not None, error
        finally:
            if not done and store is not None:  # cancelled or failed: release the file
                store.close()

    def _open_store(self, store_path: str | Path | None) -> None:
        from ..core.labels import LabelStore
        from ..core.progress import drive

        if self.store is not None:
            self.store.close()
            self.store = None
        path = Path(store_path) if store_path else LabelStore.default_path_for(self.source)
        self.store, self.store_read_only, self._pending_error = drive(
            self._iter_open_store(path, self.paths))

    def take_pending_error(self) -> InputError | None:
        """A non-fatal problem from the last open (e.g. read-only store), once."""
        err = getattr(self, "_pending_error", None)
        self._pending_error = None
        return err

    def use_store(self, path: str | Path) -> None:
        """Switch to another label file (e.g. when the default one is read-only).

        A file that cannot be written (locked, read-only, not a label store) is refused while
        the current store is writable, so a wrong pick never stops labels from being saved.
        Blocks until done: the Embryos panel runs :meth:`iter_use_store` in a worker and then
        calls :meth:`apply_store`, so 10,000 images are registered off the GUI thread.
        """
        from ..core.progress import drive

        self.apply_store(drive(self.iter_use_store(path)))

    def iter_use_store(self, path: str | Path) -> ProgressGen[dict]:
        """Open another label file and register the open images in it; no state change.

        Safe in a worker thread; the current store lends its path->hash cache, so no image
        is hashed again (only stat()ed).
        """
        generation = self.generation
        store, read_only, error = yield from self._iter_open_store(
            Path(path), list(self.paths), hashes_from=self.store)
        return {"store": store, "read_only": read_only, "error": error,
                "generation": generation, "path": Path(path)}

    def apply_store(self, switched: dict) -> None:
        """Make an :meth:`iter_use_store` result the session's label store (GUI thread)."""
        store, read_only, error = switched["store"], switched["read_only"], switched["error"]
        if switched["generation"] != self.generation:  # other images were opened meanwhile
            if store is not None:
                store.close()
            raise InputError("other images were opened while the label file was being "
                             "prepared; choose the label file again", path=switched["path"])
        if error is not None and self.store is not None and not self.store_read_only:
            if store is not None:
                store.close()
            raise InputError(f"{error}; labels are still saved in {self.store.path}")
        if self.store is not None:
            self.store.close()
        self.store, self.store_read_only, self._pending_error = store, read_only, error
        if self.store is not None and not self.store_read_only:
            self.store.add_terms(self.vocabulary)
        self._label_cache.clear()
        self.labels_changed.emit(list(range(self.n_images)))
        err = self.take_pending_error()
        if err is not None:
            raise err

    def set_annotator(self, name: str) -> None:
        """Label as ``name`` from now on (each annotator's labels are kept apart)."""
        name = name.strip()
        if not name:
            raise InputError("the annotator name is empty; type your name or initials")
        self.annotator = name
        if self.store is not None:
            self.store.annotator = name
        self._label_cache.clear()
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

    def image(self, index: int | None = None) -> np.ndarray:
        """RGB pixels of one image, decoded on demand (small LRU cache)."""
        from ..core.images import read_rgb

        i = self.index if index is None else index
        if i in self._images:
            self._images.move_to_end(i)
            return self._images[i]
        rgb = read_rgb(self.paths[i])
        self._images[i] = rgb
        while len(self._images) > 4:
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
        self._label_cache.clear()
        self.vocabulary_changed.emit()
        self.labels_changed.emit(list(range(self.n_images)))

    def use_default_vocabulary(self, stage: str) -> None:
        from ..core.vocabulary import default_vocabulary

        self.settings.stage = stage
        self.set_vocabulary(default_vocabulary(stage))

    def add_term(self, term: str) -> None:
        term = term.strip()
        if not term:
            raise InputError("the new term is empty; type a term name")
        if term in self.vocabulary:
            return
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
        """(n_images, n_terms) int8 with 1 present, 0 absent, -1 unknown (or those rows)."""
        paths = self.paths if indices is None else [self.paths[i] for i in indices]
        if self.store is None or not paths:
            return np.full((len(paths), len(self.vocabulary)), -1, np.int8)
        return np.asarray(self.store.label_matrix(paths, self.vocabulary,
                                                  fallback=LABEL_FALLBACK), dtype=np.int8)

    def set_label(self, term: str, value: int | None, index: int | None = None) -> None:
        """Record one label change at once (one SQLite transaction)."""
        store = self._require_store()
        i = self.index if index is None else index
        if term not in self.vocabulary:
            raise InputError(f"unknown term {term!r}; add it to the vocabulary first")
        store.set_label(self.paths[i], term, value)
        self._label_cache.pop(i, None)
        self.labels_changed.emit([i])

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
        self._label_cache.clear()
        changed = [i for i, p in enumerate(self.paths)
                   if str(p) == str(event.image_path) or Path(event.image_path) == p]
        self.labels_changed.emit(changed or list(range(self.n_images)))
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
        self._label_cache.clear()
        if emit:
            self.labels_changed.emit(list(range(self.n_images)))
        return int(n)

    def export_manifest(self, path: str | Path) -> None:
        """Write a manifest CSV whose ``terms`` column holds the present labels."""
        self._require_open_store().export_manifest(path, self.paths, self.vocabulary)

    def _require_open_store(self) -> Any:
        if self.store is None:
            raise InputError("no label store is open; open images or a manifest first")
        return self.store

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
        """The feature extractor for ``config`` (default: current settings), reused."""
        from ..core.cache import default_cache_dir
        from ..core.features import FeatureExtractor

        config = self.extractor_config() if config is None else config
        key = tuple(sorted((k, str(v)) for k, v in vars(config).items()))
        if self._extractor is None or self._extractor_key != key:
            cache = self.cache_dir if self.cache_dir is not None else default_cache_dir()
            self._extractor = FeatureExtractor(config, cache_dir=cache)
            self._extractor_key = key
        return self._extractor

    def device_name(self) -> str:
        if self._extractor is not None:
            return str(self._extractor.device)
        try:
            from ..core.backbones import resolve_device

            return str(resolve_device(self.settings.device))
        except Exception:
            return self.settings.device

    def features_current(self, config: Any = None) -> bool:
        """Whether the session's features were made with ``config`` for the open images."""
        if self.features is None or self.features_signature is None:
            return False
        if len(self.features) != self.n_images:
            return False
        try:
            return self.features_signature == self.extractor(config).signature()
        except Exception:
            return False

    def iter_extract(self, config: Any = None) -> ProgressGen[tuple]:
        """Features of every open image (cache-aware); result goes to :meth:`set_features`.

        An image that turned unreadable since it was opened (truncated, deleted) is skipped,
        not fatal: its row is NaN (never given to a classifier, see :func:`failed_rows`) and
        its ``(index, reason)`` is the result's 4th item.
        """
        if not self.paths:
            raise InputError("no images are open; open a folder or manifest first")
        generation = self.generation
        paths = list(self.paths)
        yield Progress(0, len(paths), "loading backbone")
        extractor = self.extractor(config)
        X = yield from extractor.iter_extract(paths, on_error="skip")
        return np.asarray(X), extractor.signature(), generation, list(extractor.last_failed)

    def set_features(self, result: tuple) -> None:
        X, signature, *rest = result
        if rest and rest[0] != self.generation:
            return  # computed for a dataset that has since been replaced
        self.features, self.features_signature = X, signature
        failed = rest[1] if len(rest) > 1 else []
        new = [f"{self.paths[i]}: skipped at feature extraction ({why})" for i, why in failed
               if 0 <= i < len(self.paths)]
        new = [m for m in new if m not in self.skipped]
        self.features_changed.emit()
        if new:  # listed and announced like the files skipped at open time
            self.skipped = [*self.skipped, *new]
            self.dataset_changed.emit()

    def _features_or_extract(self, config: Any = None) -> ProgressGen[tuple]:
        """(X, new_features_or_None): reuse the session's features when they match."""
        if self.features_current(config):
            return self.features, None
        result = yield from self.iter_extract(config)
        return result[0], result

    def iter_predict(self) -> ProgressGen[dict]:
        """Probabilities of the session's model for every image (extracting if needed)."""
        if self.bundle is None:
            raise InputError("no model yet: load a model bundle or train one in the Train panel")
        generation = self.generation
        clf = self.bundle.classifier
        X, new = yield from self._features_or_extract()
        yield Progress(self.n_images, self.n_images, "predicting")
        probabilities, votes = classify_rows(clf, X)
        return {"probabilities": probabilities, "votes": votes,
                "features": new, "generation": generation}

    def set_predictions(self, result: dict | np.ndarray, votes: np.ndarray | None = None) -> None:
        """Probabilities (n, T) and the ensembles' majority votes (n, T) of every image."""
        if isinstance(result, dict):
            if result.get("generation", self.generation) != self.generation:
                return  # computed for a dataset that has since been replaced
            if result.get("features") is not None:
                self.set_features(result["features"])
            votes = result.get("votes")
            result = result["probabilities"]
        self.probabilities = np.asarray(result, dtype=np.float32)
        self.votes = (np.asarray(votes, dtype=bool) if votes is not None
                      else self.probabilities >= 0.5)
        self.predictions_changed.emit()

    def set_bundle(self, bundle: Any) -> None:
        self.bundle = bundle
        self.probabilities = None
        self.votes = None
        for term in bundle.classifier.vocabulary:
            if term not in self.vocabulary:
                self.vocabulary.append(term)
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
        """Grouped CV ids: images of one gene (and stage) share a group, else each alone."""
        keys: dict[tuple, int] = {}
        out = np.empty(self.n_images, dtype=np.int64)
        for i, (g, s) in enumerate(zip(self.genes, self.stages, strict=True)):
            key = ("gene", g, s) if g else ("image", i)
            out[i] = keys.setdefault(key, len(keys))
        return out

    def training_counts(self) -> dict[str, tuple[int, int]]:
        Y = self.label_matrix()
        return {t: (int((Y[:, j] == 1).sum()), int((Y[:, j] == 0).sum()))
                for j, t in enumerate(self.vocabulary)}

    def labels_fingerprint(self, Y: np.ndarray) -> str:
        """sha256 over (image name, label row) + vocabulary: which labels trained a model."""
        import hashlib

        h = hashlib.sha256()
        h.update("\x1f".join(self.vocabulary).encode())
        for path, row in zip(self.paths, Y, strict=True):
            h.update(path.name.encode() + b"\x1e" + np.asarray(row, np.int8).tobytes())
        return h.hexdigest()

    def check_trainable(self) -> None:
        counts = self.training_counts()
        bad = [f"{t} ({p} present, {n} absent)" for t, (p, n) in counts.items() if p == 0 or n == 0]
        if bad:
            raise InputError(
                "cannot train: every term needs at least one 'present' and one 'absent' label; "
                "missing for: " + ", ".join(bad) + ". Label more images or remove those terms.")

    def iter_train(self, cross_validate: bool = True, n_folds: int = 5) -> ProgressGen[dict]:
        """Fit per-term ensembles from the store's labels, CV AUC where possible, re-predict."""
        from ..core.classify import EnsembleConfig
        from ..core.pipeline import iter_fit_bundle
        from ..core.progress import sub_progress

        self.check_trainable()
        Y = self.label_matrix()
        vocab = list(self.vocabulary)
        generation = self.generation
        config = self.extractor_config(use_bundle=False)  # train with the panel's settings
        X, new = yield from self._features_or_extract(config)
        skipped = failed_rows(X)
        if skipped.any():  # images skipped at extraction have no features to learn from
            Y = Y.copy()
            Y[skipped] = -1
            lost = [t for j, t in enumerate(vocab)
                    if not ((Y[:, j] == 1).any() and (Y[:, j] == 0).any())]
            if lost:
                raise InputError(
                    f"cannot train: {int(skipped.sum())} image(s) could not be read (see the "
                    "skipped files), which leaves no 'present' or no 'absent' label for: "
                    + ", ".join(lost) + ". Replace those files or label more images.")
        ens = EnsembleConfig(n_members=self.settings.n_members, C=self.settings.C,
                             seed=self.settings.seed)
        counts = {t: (int((Y[:, j] == 1).sum()), int((Y[:, j] == 0).sum()))
                  for j, t in enumerate(vocab)}
        auc: dict[str, float] = {}
        if cross_validate:
            auc = yield from self._iter_cv_auc(X, Y, vocab, ens, n_folds)
        bundle = yield from sub_progress(
            iter_fit_bundle(X, Y, vocab, config, ens, fingerprint=self.labels_fingerprint(Y),
                            weights_id=self.extractor(config).weights_id), 0, prefix="fit: ")
        yield Progress(1, 1, "predicting")
        P, votes = classify_rows(bundle.classifier, X)
        report = {"counts": counts, "auc": auc, "n_labelled_images": int((Y >= 0).any(1).sum())}
        return {"bundle": bundle, "report": report,
                "probabilities": np.asarray(P, np.float32), "votes": np.asarray(votes, bool),
                "features": new, "generation": generation}

    def _iter_cv_auc(self, X: np.ndarray, Y: np.ndarray, vocab: list[str], ens: Any,
                     n_folds: int) -> ProgressGen[dict[str, float]]:
        from sklearn.metrics import roc_auc_score

        from ..core.classify import EnsembleClassifier
        from ..core.evaluate import grouped_folds

        ok = [j for j in range(len(vocab))
              if (Y[:, j] == 1).sum() >= MIN_CV_PER_CLASS and (Y[:, j] == 0).sum() >= MIN_CV_PER_CLASS]
        if not ok:
            return {}
        rows = np.flatnonzero((Y[:, ok] >= 0).any(1))
        groups = self.groups()[rows]
        unique = np.unique(groups)
        if len(unique) < 2:
            return {}
        if len(unique) <= LOGO_MAX_GROUPS:
            # few genes (typical while labelling): leave one gene out, so every training
            # split still sees both classes whenever two genes carry each
            folds = [(np.flatnonzero(groups != g), np.flatnonzero(groups == g)) for g in unique]
        else:
            folds = grouped_folds(groups, min(n_folds, len(unique)), self.settings.seed)
        scores = np.full((len(rows), len(ok)), np.nan)
        for f, (tr, te) in enumerate(folds):
            yield Progress(f, len(folds), f"cross-validation fold {f + 1}/{len(folds)}")
            Ytr = Y[rows[tr]][:, ok].astype(np.int8)
            usable = [c for c in range(len(ok)) if (Ytr[:, c] == 1).any() and (Ytr[:, c] == 0).any()]
            if not usable:
                continue
            clf = EnsembleClassifier(vocabulary=[vocab[ok[c]] for c in usable], config=ens)
            clf = yield from clf.iter_fit(X[rows[tr]], Ytr[:, usable])
            scores[np.ix_(te, usable)] = clf.predict_proba(X[rows[te]])
        auc: dict[str, float] = {}
        for c, j in enumerate(ok):
            y = Y[rows, j]
            m = (y >= 0) & ~np.isnan(scores[:, c])
            if len(np.unique(y[m])) == 2:
                auc[vocab[j]] = float(roc_auc_score(y[m], scores[m, c]))
        return auc

    def set_trained(self, result: dict) -> None:
        if result.get("generation", self.generation) != self.generation:
            return  # the dataset was replaced while training
        self.train_report = result["report"]
        if result.get("features") is not None:
            self.set_features(result["features"])
        self.set_bundle(result["bundle"])
        self.set_predictions(result["probabilities"], result.get("votes"))
        self.train_report_changed.emit()

    # ------------------------------------------------------------------ Grad-CAM
    def iter_gradcam(self, terms: Sequence[str], index: int | None = None) -> ProgressGen[dict]:
        """Grad-CAM maps (image height x width, in [0, 1]) of one image for ``terms``."""
        from ..core.gradcam import gradcam_all_terms

        if self.bundle is None:
            raise InputError("Grad-CAM needs a model: load a bundle or train one first")
        i = self.index if index is None else index
        missing = [t for t in terms if t not in self.model_vocabulary]
        if missing:
            raise InputError(f"the model has no classifier for {', '.join(missing)}; "
                             "retrain after labelling that term")
        rgb = self.image(i)
        yield Progress(0, 1, "Grad-CAM")
        maps, proba = gradcam_all_terms(self.bundle, self.extractor(), rgb, list(terms))
        yield Progress(1, 1, "Grad-CAM")
        return {"index": i, "terms": list(terms), "maps": np.asarray(maps, np.float32),
                "probabilities": np.asarray(proba, np.float32)}


# ---------------------------------------------------------------------- per-viewer registry
_SESSIONS: dict[int, tuple[Any, AnnotatorSession]] = {}


def failed_rows(X: np.ndarray) -> np.ndarray:
    """Bool mask of the feature rows of images skipped at extraction (all NaN)."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] == 0:
        return np.zeros(len(X), dtype=bool)
    return np.isnan(X[:, 0])


def classify_rows(clf: Any, X: np.ndarray, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities float32, votes bool) of every row; skipped images get NaN / False and
    never reach the classifier (rows are scored a block at a time: no copy of all of X)."""
    n, T = len(X), len(clf.vocabulary)
    probabilities = np.full((n, T), np.nan, dtype=np.float32)
    votes = np.zeros((n, T), dtype=bool)
    ok = np.flatnonzero(~failed_rows(X))
    if len(ok) == n:
        for r0 in range(0, n, block):
            probabilities[r0:r0 + block] = clf.predict_proba(X[r0:r0 + block])
            votes[r0:r0 + block] = clf.predict(X[r0:r0 + block])
    else:
        for r0 in range(0, len(ok), block):
            rows = ok[r0:r0 + block]
            probabilities[rows] = clf.predict_proba(X[rows])
            votes[rows] = clf.predict(X[rows])
    return probabilities, votes


def get_session(viewer: Any) -> AnnotatorSession:
    """The session of ``viewer`` (created and bound to the viewer on first use)."""
    import functools
    import weakref

    viewer = real_viewer(viewer)
    key = id(viewer)
    entry = _SESSIONS.get(key)
    if entry is not None and entry[0]() is viewer:
        return entry[1]
    session = AnnotatorSession()
    _SESSIONS[key] = (weakref.ref(viewer), session)
    with contextlib.suppress(TypeError):
        weakref.finalize(viewer, _forget, key, session)
    # closing the window closes the label store and drops the session (and its viewer refs)
    with contextlib.suppress(AttributeError, RuntimeError, TypeError):
        viewer.window._qt_window.destroyed.connect(functools.partial(_forget, key, session))
    from ._viewer_binding import bind_viewer

    bind_viewer(viewer, session)
    return session


def real_viewer(viewer: Any) -> Any:
    """napari hands plugins a public-only proxy; key sessions by the viewer itself."""
    while hasattr(viewer, "__wrapped__"):
        viewer = viewer.__wrapped__
    return viewer


def _forget(key: int, session: AnnotatorSession, *_: Any) -> None:
    entry = _SESSIONS.get(key)
    if entry is not None and entry[1] is session:
        del _SESSIONS[key]
    session.close()


def forget_session(viewer: Any) -> None:
    """Close the session's label store (used when a viewer closes)."""
    entry = _SESSIONS.pop(id(real_viewer(viewer)), None)
    if entry is not None:
        entry[1].close()
