"""The session's long steps: progress generators over ``core`` from a frozen request to a result.

Each ``iter_*`` runs in any thread: it reads only its request (built on the GUI thread by the
session's ``*_request`` methods) and returns a frozen result from :mod:`.results`; it never
touches the session. :func:`core.utils.progress.throttled` limits how often the GUI hears.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.data.images import read_rgb
from ..core.data.inputs import iter_scan_inputs
from ..core.data.manifest import parse_vocabulary, training_fingerprint
from ..core.data.vocabulary import default_vocabulary
from ..core.explain.finetuned import gradcam_mtl
from ..core.explain.gradcam import display_shape, gradcam_all_terms
from ..core.features.cache import default_cache_dir
from ..core.features.extractor import FeatureExtractor
from ..core.finetune import iter_finetune as core_finetune
from ..core.finetune import load_finetuned
from ..core.labels.store import LabelStore
from ..core.learn.calibration import CALIBRATION_FOLDS
from ..core.learn.ensembles import GramBlock, iter_gram
from ..core.learn.folds import fold_auc_spread, iter_out_of_fold
from ..core.learn.logistic import EnsembleConfig
from ..core.learn.metrics import (
    class_counts,
    has_both_classes,
    labelled_rows,
    per_term_auc,
    trainable_terms,
)
from ..core.learn.splits import group_ids
from ..core.utils.errors import InputError
from ..core.utils.hashing import content_hash
from ..core.utils.progress import Progress, ProgressGen, sub_progress
from ..core.workflow import (
    failed_rows,
    iter_features,  # float16, memory-mapped at paper scale
    iter_fit_bundle,
    predict_rows,
)
from .results import (
    ExtractedFeatures,
    FinetuneOutcome,
    GradcamMaps,
    HeldOutScores,
    OpenedDataset,
    Predictions,
    SessionSettings,
    StoreSwitch,
    TrainedModel,
    TrainReport,
)

if TYPE_CHECKING:
    from ..core.features.extractor import ExtractorConfig
    from ..core.finetune.config import FinetuneConfig
    from ..core.learn.bundle import ModelBundle


#: seconds a label write waits for a lock held by another program before reporting it
STORE_TIMEOUT = 1.0
#: images hashed into the label store per progress step
STORE_CHUNK = 100
#: minimum positives and negatives per term before a cross-validated AUC is reported
MIN_CV_PER_CLASS = 3
#: annotators whose labels fill terms the user has not labelled (manifest imports)
LABEL_FALLBACK = ("manifest",)
class Extractors:
    """Feature extractors by config, created once and shared by steps (thread-safe)."""

    def __init__(self, cache_dir: Path | None, keep: int = 2) -> None:
        self.cache_dir = cache_dir
        self._keep = keep
        self._lock = threading.Lock()
        self._made: dict[tuple, Any] = {}

    @staticmethod
    def key(config: ExtractorConfig) -> tuple:
        return tuple(sorted((k, str(v)) for k, v in vars(config).items()))

    def get(self, config: ExtractorConfig) -> FeatureExtractor:
        key = self.key(config)
        with self._lock:
            fx = self._made.pop(key, None)
            if fx is None:
                cache = self.cache_dir if self.cache_dir is not None else default_cache_dir()
                fx = FeatureExtractor(config, cache_dir=cache)
            self._made[key] = fx  # most recent last
            while len(self._made) > self._keep:
                self._made.pop(next(iter(self._made)))
            return fx

    def latest(self) -> FeatureExtractor | None:
        with self._lock:
            return next(reversed(self._made.values()), None)


# ---------------------------------------------------------------------- opening
@dataclass(frozen=True)
class OpenRequest:
    inputs: tuple[Path, ...]
    store_path: Path | None
    vocabulary: Any  # a term list, a term file, or None
    annotator: str | None
    default_stage: str


def iter_open(req: OpenRequest) -> ProgressGen[OpenedDataset]:
    """Check image headers, hash images into the label store, import manifest labels."""
    scanned = yield from iter_scan_inputs(req.inputs, check="header", dataset_folders=True,
                                          missing_inputs=False)
    paths = scanned.paths
    dataset = _readable_rows(scanned.dataset, paths)  # a missing image is listed, not fatal
    stage = req.default_stage
    known = {s for s in scanned.stages if s}
    if len(known) == 1:
        stage = known.pop()
    path = req.store_path or LabelStore.default_path_for(scanned.source)
    store, read_only, pending = yield from iter_open_store(path, paths, req.annotator)
    try:
        vocab = list(scanned.vocabulary)
        if req.vocabulary is not None:
            vocab = parse_vocabulary(req.vocabulary)
        if not vocab and store is not None:
            vocab = list(store.terms())
        if not vocab:
            vocab = list(default_vocabulary(stage))
        if store is not None and not read_only:
            yield Progress(len(paths), len(paths), "importing manifest labels")
            store.add_terms(vocab)
            if dataset is not None:  # idempotent: writes only what changed
                store.import_dataset(dataset, annotator=LABEL_FALLBACK[0])
        labels = None
        if store is not None:  # counted here, so the GUI shows the counts without a query
            yield Progress(len(paths), len(paths), "counting labels")
            labels = np.asarray(store.label_matrix(list(paths), vocab, fallback=LABEL_FALLBACK),
                                dtype=np.int8)
    except BaseException:
        if store is not None:
            store.close()
        raise
    return OpenedDataset(paths, scanned.genes, scanned.stages, scanned.manifest_terms,
                         dataset, scanned.skipped, scanned.source, stage, tuple(vocab),
                         store, read_only, pending, labels)


def _readable_rows(dataset: Any, paths: Sequence[Path]) -> Any:
    """The manifest's rows whose image was opened (the skipped ones are listed apart)."""
    keep = set(paths)
    return dataset and replace(dataset, samples=[x for x in dataset.samples if x.image in keep])


def iter_open_store(path: Path, paths: Sequence[Path], annotator: str | None,
                    hashes_from: Any = None) -> ProgressGen[tuple[Any, bool, InputError | None]]:
    """(store, read_only, pending error): hashes every image into the store in chunks.

    ``hashes_from`` (the store being replaced) lends a copy of its path->hash cache, so switching
    label files only stat()s the images instead of hashing them all again. A store that
    cannot be written opens read-only (or not at all) with an error to show, never fatal.
    """
    store = None
    done = False
    try:
        try:
            store = LabelStore(path, annotator=annotator, busy_timeout=STORE_TIMEOUT)
            if hashes_from is not None:
                store.copy_hashes_from(hashes_from)
            for start in range(0, len(paths), STORE_CHUNK):
                yield Progress(start, len(paths),
                               f"reading images into the label store ({start}/{len(paths)})")
                store.add_images(list(paths[start:start + STORE_CHUNK]))
            done = True
            return store, False, None
        except InputError as exc:
            reason, cause = str(exc).removeprefix(f"{path}: "), exc
        if store is not None:
            store.close()
            store = None
        if path.exists():  # read-only folder or locked file: read, and say so
            try:
                store = LabelStore(path, annotator=annotator, read_only=True)
                if hashes_from is not None:
                    store.copy_hashes_from(hashes_from)
            except InputError:
                store = None
        error = InputError(
            f"the label file cannot be written ({reason}), so labels are not saved; choose "
            "another label file in the Embryos panel", path=path)
        error.__cause__ = cause  # the reason, for a message that goes on differently
        done = True
        return store, store is not None, error
    finally:
        if not done and store is not None:  # cancelled or failed: release the file
            store.close()


def iter_use_store(path: Path, paths: Sequence[Path], annotator: str | None, hashes_from: Any,
                   generation: int) -> ProgressGen[StoreSwitch]:
    """Open another label file and register the open images in it."""
    store, read_only, error = yield from iter_open_store(path, paths, annotator, hashes_from)
    return StoreSwitch(path, store, read_only, error, generation)


# ---------------------------------------------------------------------- features
@dataclass(frozen=True)
class ExtractRequest:
    paths: tuple[Path, ...]
    config: ExtractorConfig
    extractors: Extractors
    generation: int


def iter_extract(req: ExtractRequest) -> ProgressGen[ExtractedFeatures]:
    """Features of every image (cache-aware); unreadable images become NaN rows, listed."""
    if not req.paths:
        raise InputError("no images are open; open a folder or manifest first")
    yield Progress(0, len(req.paths), "loading backbone")

    extractor = req.extractors.get(req.config)
    X = yield from iter_features(extractor, list(req.paths), on_error="skip")
    return ExtractedFeatures(X, extractor.signature(), req.generation,
                             tuple(extractor.last_failed))


def needs_network(features: ExtractedFeatures | None,
                  extract: ExtractRequest) -> bool:
    """Whether getting the features runs the network (some image not in the feature cache).
    Hashes every file not hashed yet (once per process): call it in a worker."""
    if features is not None:
        return False
    cache = extract.extractors.get(extract.config).cache
    if cache is None:
        return True
    try:
        return not all(content_hash(p, "image") in cache for p in extract.paths)
    except (InputError, OSError):
        return True


def _features(features: ExtractedFeatures | None, extract: ExtractRequest
              ) -> ProgressGen[tuple[np.ndarray, ExtractedFeatures | None]]:
    """(X, newly extracted or None): the session's features if current, else extracted."""
    if features is not None:
        return features.X, None
    new = yield from iter_extract(extract)
    return new.X, new


@dataclass(frozen=True)
class PredictRequest:
    bundle: ModelBundle
    features: ExtractedFeatures | None  # None: extract first
    extract: ExtractRequest


def iter_predict(req: PredictRequest) -> ProgressGen[Predictions]:
    """Probabilities of the model for every image (extracting if needed)."""
    X, new = yield from _features(req.features, req.extract)
    yield Progress(len(X), len(X), "predicting")
    P, votes = predict_rows(req.bundle, X)
    return Predictions(P, votes, req.extract.generation, new)


# ---------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainRequest:
    """Labels, settings and (current) features of one Train run."""

    Y: np.ndarray  # (n, T) int8: 1 present, 0 absent, -1 unknown
    vocabulary: tuple[str, ...]
    paths: tuple[Path, ...]
    genes: tuple[str | None, ...]  # for the CV groups (computed in the step: core.learn.evaluation
    stages: tuple[str | None, ...]  # imports scikit-learn, not something for the GUI thread)
    ensemble: dict  # core.learn.logistic.EnsembleConfig arguments (made in the step: no import
    #                 of the classifier modules on the GUI thread)
    cross_validate: bool
    n_folds: int | None  # None: core.learn.calibration.CALIBRATION_FOLDS, as `train` calibrates
    seed: int
    features: ExtractedFeatures | None
    extract: ExtractRequest

    @property
    def groups(self) -> np.ndarray:
        """Grouped-CV ids (by gene; see core.learn.splits.group_ids)."""
        return group_ids(self.genes, self.stages)


def term_counts(Y: np.ndarray, vocabulary: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(present, absent) labels per term, as the Train panel's table shows them."""
    n_pos, n_neg = class_counts(Y)
    return {t: (int(n_pos[j]), int(n_neg[j])) for j, t in enumerate(vocabulary)}


def iter_train(req: TrainRequest) -> ProgressGen[TrainedModel]:
    """Fit per-term ensembles (CV AUC where possible) and predict every image.

    With CV the work is the CLI's ``train`` plus nothing: one Gram matrix of the labelled
    rows serves every fit, and one out-of-fold pass (gene-grouped folds) gives both the AUCs
    shown and the scores Platt scaling is fitted on, which ``train`` computes anyway.
    """
    X, new = yield from _features(req.features, req.extract)
    ensemble = EnsembleConfig(**req.ensemble)
    vocab = list(req.vocabulary)
    Y = req.Y
    skipped = failed_rows(X)
    if skipped.any():  # images skipped at extraction have no features to learn from
        Y = Y.copy()
        Y[skipped] = -1
        lost = np.flatnonzero(~has_both_classes(Y)).tolist()
        if lost:
            raise InputError(
                f"cannot train: {int(skipped.sum())} image(s) could not be read (see the "
                "skipped files), which leaves no 'present' or no 'absent' label for: "
                + ", ".join(vocab[j] for j in lost) + ". Replace those files or label more "
                "images.")
    counts = term_counts(Y, vocab)
    auc: dict[str, float] = {}
    std: dict[str, float] = {}
    note = ""
    gram = oof = None
    groups = req.groups
    if req.cross_validate:  # one Gram matrix of the labelled rows for the CV and the fit
        labelled = labelled_rows(Y)
        K = yield from sub_progress(iter_gram(X, labelled), 0, prefix="features: ")
        gram = GramBlock(labelled, K)
        auc, std, note, oof = yield from iter_cv_auc(gram, Y, vocab, groups, ensemble,
                                                     req.n_folds or CALIBRATION_FOLDS, req.seed)
    extractor = req.extract.extractors.get(req.extract.config)
    bundle = yield from sub_progress(
        iter_fit_bundle(X, Y, vocab, req.extract.config, ensemble,
                        fingerprint=training_fingerprint(req.paths, Y, vocab),
                        weights_id=extractor.weights_id, groups=groups, gram=gram, oof=oof),
        0, prefix="fit: ")  # gene-grouped calibration folds, as `ish-annotator train` uses
    yield Progress(1, 1, "predicting")
    P, votes = predict_rows(bundle, X)
    report = TrainReport(counts, auc, len(labelled_rows(Y)), note, std)
    generation = req.extract.generation
    held_out = None if oof is None else HeldOutScores.of(bundle, oof, gram.rows, len(X), generation)
    return TrainedModel(bundle, report, Predictions(P, votes, generation, None), new, held_out)


def iter_cv_auc(gram: GramBlock, Y: np.ndarray, vocab: list[str], groups: np.ndarray,
                ensemble: EnsembleConfig, n_folds: int, seed: int
                ) -> ProgressGen[tuple[dict, dict, str, np.ndarray | None]]:
    """({term: CV AUC}, {term: its std over folds}, note, out-of-fold scores) from ONE pass.

    ``gram`` is the :class:`core.learn.ensembles.GramBlock` of the labelled rows (those of ``Y``
    with any known label). The pass is :func:`core.learn.folds.iter_out_of_fold`: gene-grouped
    folds (``n_folds``, or the number of genes when fewer), the members' raw mean of every
    labelled image from the fold that did not train on it. Its AUCs (terms with at least
    :data:`MIN_CV_PER_CLASS` of each class) are ``evaluate --folds K``'s when every image is
    labelled, the std :func:`core.learn.folds.fold_auc_spread`'s; Platt scaling is fitted on
    the same scores (with ``n_folds`` = ``CALIBRATION_FOLDS`` the model is ``train``'s).
    """
    rows = gram.rows
    Yl = Y[rows]
    ok = trainable_terms(Yl, MIN_CV_PER_CLASS)
    g = np.asarray(groups)[rows]
    if len(np.unique(g)) < 2:
        return {}, {}, "all labelled images belong to one gene", None
    oof = yield from iter_out_of_fold(gram.K, np.arange(len(rows)), Yl, g, ensemble, vocab,
                                      n_folds, seed=seed)
    if not ok:
        return {}, {}, (f"no term has {MIN_CV_PER_CLASS} present and {MIN_CV_PER_CLASS} "
                        "absent labels"), oof
    aucs = per_term_auc(Yl[:, ok], oof[:, ok])
    spread = fold_auc_spread(Yl[:, ok], oof[:, ok], g, n_folds, seed)
    auc = {vocab[j]: float(a) for j, a in zip(ok, aucs, strict=True) if a is not None}
    return auc, {vocab[j]: sd for j, sd in zip(ok, spread, strict=True)
                 if sd is not None and vocab[j] in auc}, "", oof


# ---------------------------------------------------------------------- Grad-CAM
@dataclass(frozen=True)
class GradcamRequest:
    index: int
    path: Path
    terms: tuple[str, ...]
    bundle: ModelBundle
    extract: ExtractRequest  # the extractor the bundle's features come from
    finetuned: Path | None = None  # a fine-tuned checkpoint: use its own MTL head


def iter_gradcam(req: GradcamRequest) -> ProgressGen[GradcamMaps]:
    """Grad-CAM maps of one image: the logistic ensembles' (default) or the fine-tuned
    network's own term outputs (``finetuned``)."""
    yield Progress(0, 1, "Grad-CAM")
    rgb = read_rgb(req.path)
    shape = display_shape(rgb.shape[:2])  # a stack of T maps stays small for a huge image
    if req.finetuned is not None:
        model = load_finetuned(req.finetuned, device=req.extract.config.device
                               if req.extract.config.device != "auto" else "cpu")
        missing = [t for t in req.terms if t not in model.vocabulary]
        if missing:
            raise InputError(f"the fine-tuned network has no output for {', '.join(missing)}; "
                             "fine-tune again after labelling that term", path=req.finetuned)
        maps = gradcam_mtl(model, rgb, list(req.terms), layer=str(req.extract.config.layer),
                           out_shape=shape)
        cols = [model.vocabulary.index(t) for t in req.terms]
        proba = model.predict_batch(model.preprocess(rgb)[None])[0, cols]
        source = "finetuned"
    else:
        maps, proba = gradcam_all_terms(req.bundle, req.extract.extractors.get(req.extract.config),
                                        rgb, list(req.terms), out_shape=shape)
        source = "ensemble"
    yield Progress(1, 1, "Grad-CAM")
    scale = (rgb.shape[0] / shape[0], rgb.shape[1] / shape[1])
    return GradcamMaps(req.index, req.terms, np.asarray(maps, np.float32),
                       np.asarray(proba, np.float32), source, scale)


# ---------------------------------------------------------------------- fine-tuning
@dataclass(frozen=True)
class FinetuneRequest:
    images: tuple[Path, ...]
    Y: np.ndarray
    vocabulary: tuple[str, ...]
    rows: np.ndarray  # the labelled images' rows in ``refit``
    config: FinetuneConfig
    out: Path
    refit: TrainRequest  # its extractor config is switched to the checkpoint after training
    settings: SessionSettings  # the settings the refit will use (weights = ``out``)
    init: Path | None = None  # a fine-tuned checkpoint this run continues (finetune --init)


def iter_finetune(req: FinetuneRequest) -> ProgressGen[FinetuneOutcome]:
    """Fine-tune on the labelled images, then refit and re-predict with the new backbone."""
    result = yield from core_finetune(list(req.images), req.Y, list(req.vocabulary), req.config,
                                      req.out, groups=req.refit.groups[req.rows], init=req.init)
    return FinetuneOutcome(result, (yield from iter_train(req.refit)), req.settings)


def finetune_refit(train: TrainRequest, settings: SessionSettings, out: Path) -> tuple:
    """(refit request, refit settings): ``train`` switched to the checkpoint ``out``."""
    new = replace(settings, weights=str(out))
    config = replace(train.extract.config, weights=str(out), backbone=new.backbone,
                     layer=new.layer, input_size=new.input_size)
    return replace(train, features=None, extract=replace(train.extract, config=config)), new
