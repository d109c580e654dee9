"""End-to-end steps of the transfer-learning pipeline, shared by the CLI and the widgets.

Every step is a progress generator (see :mod:`.progress`), so the CLI drives it with a tqdm
bar and the widgets run it in a ``thread_worker`` with a Cancel button.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .backbones.specs import get_spec
from .backbones.weights import load_backbone
from .data.manifest import Dataset
from .features.extractor import FeatureExtractor
from .learn.bundle import ModelBundle
from .learn.calibration import DEFAULT_METHOD, iter_calibrate
from .learn.decision import calls_text, calls_texts
from .learn.ensembles import EnsembleClassifier, iter_gram
from .learn.evaluation import iter_cross_validate
from .learn.groups import GroupRecords, record_groups
from .learn.metrics import labelled_rows
from .learn.report import write_report
from .learn.splits import grouped_folds, random_partitions
from .utils.csvio import write_csv
from .utils.errors import InputError
from .utils.files import release_pages, scratch_memmap
from .utils.progress import Progress, ProgressGen, sub_progress

if TYPE_CHECKING:  # pragma: no cover
    from .features.distributed import DaskExecutor


def make_extractor(config, cache_dir=None, loaded=None, executor: DaskExecutor | None = None):
    """A :class:`~.features.extractor.FeatureExtractor` computing here, or the one the
    ``executor`` makes (:class:`~.features.distributed.DaskExecutor`: cache misses computed
    on its dask cluster). Either builds no network until a miss. The executor is an argument
    of every step below, so where the work runs is never decided by what happens to be
    imported."""
    if executor is not None:
        return executor.extractor(config, cache_dir, loaded)
    return FeatureExtractor(config, cache_dir=cache_dir, loaded=loaded)


#: feature matrices larger than this live in a float16 scratch file (np.memmap), not in RAM
MEMMAP_BYTES = 1 << 30


def feature_matrix(n: int, dim: int, folder: str | Path | None = None) -> np.ndarray:
    """An ``(n, dim)`` float16 matrix for features: in memory when small, else memory-mapped.

    At the paper's scale (7,564 images at VGG16 layer 21: 6.1 GB) the features would not leave
    room for anything else in 8 GiB; a memmap keeps only the pages in use resident and the
    classifier streams over it block by block. Free disk space is checked first.
    """
    if n * dim * 2 <= MEMMAP_BYTES:
        return np.empty((n, dim), dtype=np.float16)

    return scratch_memmap((n, dim), np.float16, folder, what=f"the features of {n} images")


def iter_features(extractor, images: Sequence[Path | np.ndarray], stage: str = "features",
                  on_error: str = "raise") -> ProgressGen[np.ndarray]:
    """Features of ``images`` at the extractor's layer (cached), ``(n, d)`` float16.

    float16 halves the memory of training on thousands of images (layer 21: 0.8 instead of
    1.6 MB per image) and loses nothing, as the extractor rounds every feature through float16;
    the classifier reads it block-wise in float32/float64. Large matrices are memory-mapped
    scratch files next to the feature cache (see :func:`feature_matrix`). If an in-memory
    image's features overflow float16 the extractor returns a float32 matrix instead, so no
    value becomes inf. ``on_error="skip"``: unreadable images get NaN rows, listed in the
    extractor's ``last_failed`` (see :meth:`~.features.FeatureExtractor.iter_extract`).
    """
    images = list(images)
    cache = getattr(extractor, "cache", None)
    out = feature_matrix(len(images), extractor.dim, cache.root if cache is not None else None)
    gen = extractor.iter_extract(images, out=out, on_error=on_error)
    try:
        while True:
            done, total, message = next(gen)
            release_pages(out)  # written rows go to the file, not the resident set
            yield Progress(done, total, f"{stage}: {message}" if message else stage)
    except StopIteration as stop:
        return stop.value


def iter_fit_bundle(
    features: np.ndarray,
    Y: np.ndarray,
    vocabulary: Sequence[str],
    extractor,
    ensemble,
    fingerprint: str = "",
    weights_id: str | None = None,
    groups: np.ndarray | None = None,
    calibration: str | None = None,
    gram: Any = None,
    oof: np.ndarray | None = None,
) -> ProgressGen:
    """Fit the per-term ensembles on precomputed features and wrap them in a model bundle.

    ``Y`` is ``(n, T)`` with 1 present, 0 absent and -1 unknown (skipped for that term).
    The bundle's probabilities are calibrated (:mod:`.calibration`, default Platt scaling on
    out-of-fold scores from folds grouped by ``groups``, e.g. ``Dataset.groups()``; without
    groups every image is its own group). The Gram matrix is computed once for the
    calibration folds and the final fit (or taken from ``gram``, a
    :class:`.learn.ensembles.GramBlock` that holds the labelled rows). ``fingerprint`` is
    :func:`.manifest.training_fingerprint` of the training images and ``Y``. ``oof``: the
    labelled rows' out-of-fold raw scores for Platt scaling, when the caller made them already
    (:func:`.evaluation.iter_out_of_fold`; the Train panel shows their AUC), else made here.
    """
    if extractor.layer is None:  # record the layer actually used, not "the default"
        extractor = replace(extractor, layer=get_spec(extractor.backbone).default_layer)
    Y = np.asarray(Y)
    classifier = EnsembleClassifier(vocabulary=list(vocabulary), config=ensemble)
    Y = classifier._check_labels(features, Y)  # before the Gram matrix: fail fast
    labelled = labelled_rows(Y)
    rows = None if len(labelled) == features.shape[0] else labelled
    K = yield from sub_progress(iter_gram(features, rows, reuse=gram), 0, prefix="fit: ")
    if not np.isfinite(np.diag(K)).all():
        K = None  # let the fit name the bad row
        cal = None
    else:
        g = np.arange(len(labelled)) if groups is None else np.asarray(groups)[labelled]
        cal = yield from sub_progress(iter_calibrate(
            K, np.arange(len(labelled)), Y[labelled], g, ensemble, list(vocabulary),
            DEFAULT_METHOD if calibration is None else calibration, oof=oof), 0,
            prefix="calibration: ")
    classifier = yield from sub_progress(classifier.iter_fit(features, Y, gram=K), 0,
                                         prefix="fit: ")
    counts = {
        term: {"positives": int((Y[:, i] == 1).sum()), "negatives": int((Y[:, i] == 0).sum())}
        for i, term in enumerate(vocabulary)
    }
    meta = {
        "weights_id": weights_id,
        "training": {"fingerprint": fingerprint, "n_images": int(features.shape[0]),
                     "term_counts": counts},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return ModelBundle(extractor=extractor, classifier=classifier, meta=meta,
                       calibration=cal)


def iter_train(dataset: Dataset, extractor, ensemble, cache_dir=None, loaded=None,
               executor: DaskExecutor | None = None) -> ProgressGen:
    """Extract (cached) features for a labelled dataset and fit its model bundle."""
    fx = make_extractor(extractor, cache_dir, loaded, executor)
    X = yield from iter_features(fx, dataset.paths)
    bundle = yield from iter_fit_bundle(
        X, dataset.labels().astype(np.int8), dataset.vocabulary, fx.config, ensemble,
        fingerprint=dataset.fingerprint(), weights_id=fx.weights_id, groups=dataset.groups(),
    )
    return bundle


def failed_rows(X: np.ndarray) -> np.ndarray:
    """Bool mask of the feature rows of images that could not be read (all NaN: what
    ``iter_features(..., on_error="skip")`` leaves for them)."""
    X = np.asarray(X) if not hasattr(X, "shape") else X
    if X.ndim != 2 or X.shape[1] == 0:
        return np.zeros(len(X), dtype=bool)
    return np.isnan(np.asarray(X[:, 0], dtype=np.float32))


def predict_rows(bundle, X: np.ndarray, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The one way a model scores feature rows (CLI ``predict``, the napari session): the
    calibrated probabilities and the members' majority votes, ``(n, T)`` each.

    Rows of unreadable images (:func:`failed_rows`) get NaN / False and never reach the
    model; the others are scored ``block`` rows at a time (no float32 copy of all of ``X``).
    """
    n, T = len(X), len(bundle.classifier.vocabulary)
    probabilities = np.full((n, T), np.nan)
    votes = np.zeros((n, T), dtype=bool)
    ok = np.flatnonzero(~failed_rows(X))
    for r0 in range(0, len(ok), block):
        rows = ok[r0:r0 + block]
        sel = slice(rows[0], rows[-1] + 1) if rows[-1] - rows[0] + 1 == len(rows) else rows
        probabilities[sel], votes[sel] = bundle.predict_both(X[sel])
    return probabilities, votes


def iter_predict(bundle, images: Sequence[Path | np.ndarray], cache_dir=None, device=None,
                 loaded=None, executor: DaskExecutor | None = None) -> ProgressGen[np.ndarray]:
    """Calibrated probabilities ``(n, T)`` of the bundle's terms for ``images``."""
    config = bundle.extractor if device is None else replace(bundle.extractor, device=device)
    X = yield from iter_features(make_extractor(config, cache_dir, loaded, executor), images)
    return predict_rows(bundle, X)[0]


def iter_score_chunked(bundle, images: Sequence[Path], score: Callable[[np.ndarray], Any],
                       cache_dir=None, device: str | None = None, chunk_size: int = 256,
                       on_error: str = "raise", executor: DaskExecutor | None = None
                       ) -> ProgressGen[list]:
    """``score(X)`` of the features of ``chunk_size`` images at a time, one result per chunk.

    Batch work on thousands of images (predict, suggest) holds only one chunk's features: at
    VGG16 layer 21 an image has 401,408 floats (0.8 MB as float16), so 5,000 images at once
    would need 4 GB, while the scores are tiny. The network is built once for all chunks.
    ``on_error="skip"``: unreadable images get NaN feature rows (see :func:`iter_features`).
    """
    config = bundle.extractor if device is None else replace(bundle.extractor, device=device)
    extractor = make_extractor(config, cache_dir, executor=executor)  # network built on a miss
    results = []
    for start in range(0, len(images), chunk_size):
        part = list(images[start:start + chunk_size])
        X = yield from sub_progress(iter_features(extractor, part, on_error=on_error),
                                    offset=start, scale_total=len(images))
        results.append(score(X))
        del X
    return results


def iter_predict_chunked(bundle, images: Sequence[Path], cache_dir=None,
                         device: str | None = None, chunk_size: int = 256,
                         on_error: str = "raise", executor: DaskExecutor | None = None
                         ) -> ProgressGen[tuple[np.ndarray, np.ndarray]]:
    """:func:`predict_rows` of image files, ``chunk_size`` images' features at a time
    (``ish-annotator predict``); with ``on_error="skip"`` an unreadable image's row is NaN /
    False, as in the napari session."""
    parts = yield from iter_score_chunked(bundle, images, lambda X: predict_rows(bundle, X),
                                          cache_dir, device, chunk_size, on_error, executor)
    T = len(bundle.classifier.vocabulary)
    if not parts:
        return np.empty((0, T)), np.zeros((0, T), dtype=bool)
    return (np.concatenate([p for p, _ in parts]),
            np.concatenate([v for _, v in parts]).astype(bool, copy=False))


def iter_evaluate(
    dataset: Dataset,
    extractor,
    ensemble,
    layers: Sequence[str] = ("21",),
    folds: int = 5,
    test_dataset: Dataset | None = None,
    cache_dir=None,
    repeats: int | None = None,
    test_fraction: float = 0.25,
    by: Sequence[str] | None = None,
    report: str | Path | None = None,
    executor: DaskExecutor | None = None,
) -> ProgressGen[dict]:
    """Accuracy, sensitivity, specificity and AUC per term and layer (the paper's Table 2).

    With ``test_dataset`` the model is trained on ``dataset`` and scored on it; with
    ``repeats`` R seeded random gene-grouped partitions (mean and std over them); otherwise
    k-fold cross-validation grouped by gene (images of one gene share labels, so a random
    split would leak). Returns ``{"layers": {layer: summary}}`` (CONTRACTS.md, see
    :class:`~.evaluation.Evaluation`). With ``by`` (``("gene", "stage")``) the same figures
    for the gene x stage records of the test genes go under ``"groups"``, same shape.
    ``report`` (a folder) receives PNG figures and an ``index.md`` (:mod:`.learn.report`).
    """
    vocabulary = list(dataset.vocabulary)
    if test_dataset is not None:
        missing = [t for t in vocabulary if t not in test_dataset.vocabulary]
        test_dataset = replace(test_dataset, vocabulary=vocabulary) if missing or \
            test_dataset.vocabulary != vocabulary else test_dataset
        paths = list(dataset.paths) + list(test_dataset.paths)
        Y_all = np.vstack([dataset.labels(), test_dataset.labels()]).astype(np.int8)
        n_train = len(dataset.paths)
        splits = [(np.arange(n_train), np.arange(n_train, len(paths)))]
        train_groups = dataset.groups()
        groups = np.concatenate([train_groups, train_groups.max(initial=-1) + 1
                                 + test_dataset.groups()])
    else:
        paths = list(dataset.paths)
        Y_all = dataset.labels().astype(np.int8)
        groups = dataset.groups()
        if repeats:
            splits = random_partitions(groups, repeats, test_fraction, seed=ensemble.seed)
        else:
            splits = grouped_folds(groups, folds, seed=ensemble.seed)
    if not layers:
        raise InputError("no layers to evaluate; pass --layers, e.g. --layers 21")
    records = None
    if by:
        samples = list(dataset.samples) + (list(test_dataset.samples) if test_dataset else [])
        records = record_groups([s.gene for s in samples], [s.stage for s in samples], by)

    loaded = load_backbone(extractor.backbone, extractor.weights, seed=extractor.seed)
    results: dict = {"layers": {}}
    evaluations: dict = {}
    for layer in layers:
        config = replace(extractor, layer=str(layer))
        X = yield from iter_features(make_extractor(config, cache_dir, loaded, executor), paths,
                                     stage=f"layer {layer} features")
        evaluation = yield from sub_progress(
            iter_cross_validate(X, Y_all, vocabulary, splits, ensemble, groups=groups,
                                records=records),
            offset=0, prefix=f"layer {layer}: ")
        results["layers"][str(layer)] = evaluation.summary
        evaluations[str(layer)] = evaluation
        if evaluation.groups is not None:
            results.setdefault("groups", {})[str(layer)] = evaluation.groups.summary
        del X  # free this layer's features before the next layer's are extracted
    if report is not None:
        yield Progress(0, 1, "writing the report")
        write_report(report, evaluations, Y_all, records,
                     title=f"Evaluation of {getattr(dataset.source, 'name', 'the manifest')}")
    return results


def write_predictions(path: str | Path, images: Sequence[Path | str],
                      vocabulary: Sequence[str], probabilities: np.ndarray,
                      votes: np.ndarray | None = None) -> None:
    """Write the predictions CSV of CONTRACTS.md: ``image``, one probability column per term and
    ``calls`` (the terms called present by :mod:`.learn.decision`, the rule the GUI shows,
    ``;``-joined), atomically, formula-like cells neutralised (:mod:`.csvio`).

    With ``votes`` (the members' majority vote, ``predict --votes``) a ``<term> vote`` column
    (1 present / 0 absent) per term follows, labelled as the paper's vote.
    """
    probabilities = np.asarray(probabilities)
    if probabilities.shape != (len(images), len(vocabulary)):
        raise ValueError(f"probabilities have shape {probabilities.shape}, expected "
                         f"({len(images)}, {len(vocabulary)})")
    if votes is not None:
        votes = np.asarray(votes, dtype=bool)
        if votes.shape != probabilities.shape:
            raise ValueError(f"votes have shape {votes.shape}, expected {probabilities.shape}")
    header = ["image", *vocabulary, "calls"]
    if votes is not None:
        header += [f"{term} vote" for term in vocabulary]
    rows = []
    texts = calls_texts(vocabulary, probabilities)
    for i, (image, row) in enumerate(zip(images, probabilities, strict=True)):
        cells = [str(image), *(f"{float(p):.6f}" for p in row), texts[i]]
        if votes is not None:
            cells += [str(int(v)) for v in votes[i]]
        rows.append(cells)
    write_csv(path, header, rows)


def write_records(path: str | Path, records: GroupRecords, vocabulary: Sequence[str],
                  probabilities: np.ndarray) -> None:
    """Write ``predict --by``'s CSV: ``gene``, ``stage``, ``images``, one probability column per
    term, ``calls`` (the one decision rule, :mod:`.learn.decision`) and ``note`` (why a record
    holds one image only), one row per record."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape != (len(records), len(vocabulary)):
        raise ValueError(f"probabilities have shape {probabilities.shape}, expected "
                         f"({len(records)}, {len(vocabulary)})")
    sizes = records.sizes()
    rows = [[records.genes[g], records.stages[g], str(int(sizes[g])),
             *(f"{float(p):.6f}" for p in probabilities[g]),
             calls_text(vocabulary, probabilities[g]), records.notes[g]]
            for g in range(len(records))]
    write_csv(path, ["gene", "stage", "images", *vocabulary, "calls", "note"], rows)
