"""Simulated experiments on synthetic embryos: noisy annotators and label budgets.

Tests and benchmarks of the consensus (:mod:`.consensus`) and of active learning
(:mod:`.active`) need many labelled images and many fits, so they use cheap features of
small synthetic embryos (:mod:`.synthetic`): each 64 x 128 rendering is reduced to its stain
darkness averaged over 4 x 4 pixel cells (512 numbers). A CNN is not needed to ask how
label noise or the choice of labelled images changes held-out AUC, and these features keep
one trial under a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from ..data.vocabulary import default_vocabulary, resolve_stage
from ..labels.consensus import consensus
from ..learn.active import suggest
from ..learn.ensembles import EnsembleClassifier
from ..learn.logistic import EnsembleConfig
from ..learn.metrics import mean_auc, trainable_terms
from ..learn.splits import held_out_genes
from ..utils.progress import Progress, ProgressGen, drive
from .embryos import _images_per_gene, make_embryo, sample_label_sets

__all__ = ["SyntheticFeatures", "synthetic_features", "noisy_annotators", "fit_scores", "ConsensusTrial", "consensus_trial", "LearningCurve",
           "learning_curve"]


@dataclass(frozen=True)
class SyntheticFeatures:
    X: np.ndarray              # (n, 512) float32 pooled stain darkness
    Y: np.ndarray              # (n, T) int8 true labels
    genes: tuple[str, ...]     # images of one gene share their label set
    vocabulary: tuple[str, ...]


def iter_synthetic_features(n_images: int, seed: int = 0, stage: str = "13-16",
                            size: tuple[int, int] = (64, 128), cell: int = 4
                            ) -> ProgressGen[SyntheticFeatures]:
    """Render ``n_images`` embryos (1-3 per gene, real term co-occurrence) into features."""
    stage = resolve_stage(stage)
    vocab = default_vocabulary(stage)
    rng = np.random.default_rng([seed, 7919])
    counts = _images_per_gene(n_images, None, rng)
    sets = sample_label_sets(len(counts), vocab, stage, rng)
    h, w = size
    X = np.empty((n_images, (h // cell) * (w // cell)), np.float32)
    Y = np.zeros((n_images, len(vocab)), np.int8)
    genes: list[str] = []
    i = 0
    for g, (count, terms) in enumerate(zip(counts, sets, strict=True)):
        for _ in range(count):
            rgb, _masks = make_embryo(terms, vocab, np.random.default_rng([seed, i]), size=size)
            dark = 1.0 - rgb[: h // cell * cell, : w // cell * cell].mean(axis=2) / 255.0
            X[i] = dark.reshape(h // cell, cell, w // cell, cell).mean(axis=(1, 3)).ravel()
            Y[i] = [t in terms for t in vocab]
            genes.append(f"g{g}")
            i += 1
            yield Progress(i, n_images, "synthetic embryos")
    return SyntheticFeatures(X, Y, tuple(genes), tuple(vocab))


def synthetic_features(n_images: int, seed: int = 0, **kwargs: object) -> SyntheticFeatures:
    """Blocking :func:`iter_synthetic_features`."""
    return drive(iter_synthetic_features(n_images, seed, **kwargs))  # type: ignore[arg-type]


def noisy_annotators(Y: np.ndarray, flip: float | Sequence[float], seed: int = 0) -> np.ndarray:
    """(A, n, T) copies of ``Y``, annotator ``a`` flipping each label independently with
    probability ``flip[a]`` (a single float: three annotators with that rate)."""
    rates = [float(flip)] * 3 if np.isscalar(flip) else [float(f) for f in flip]
    rng = np.random.default_rng([seed, 104729])
    out = np.repeat(np.asarray(Y, np.int8)[None], len(rates), axis=0)
    for a, rate in enumerate(rates):
        flips = rng.random(Y.shape) < rate
        out[a][flips] = 1 - out[a][flips]
    return out


def fit_scores(X_train: np.ndarray, Y_train: np.ndarray, X_test: np.ndarray,
               vocabulary: Sequence[str], seed: int = 0, n_members: int = 11
               ) -> tuple[EnsembleClassifier, np.ndarray]:
    """Fit the project's ensemble classifier; terms without both classes score 0.5."""
    Y_train = np.asarray(Y_train, np.int8)
    ok = trainable_terms(Y_train)
    clf = EnsembleClassifier([vocabulary[t] for t in ok],
                             EnsembleConfig(n_members=n_members, seed=seed))
    clf.fit(X_train, Y_train[:, ok])
    scores = np.full((len(X_test), Y_train.shape[1]), 0.5)
    scores[:, ok] = clf.predict_proba(X_test)
    return clf, scores


@dataclass(frozen=True)
class ConsensusTrial:
    """Held-out mean AUC of models trained on different versions of noisy labels."""

    seed: int
    flip: tuple[float, ...]
    auc: dict[str, float]          # "truth", "single", "majority", "dawid-skene"
    label_accuracy: dict[str, float]  # share of training labels equal to the truth


def consensus_trial(data: SyntheticFeatures, flip: float | Sequence[float] = 0.25,
                    seed: int = 0, test_fraction: float = 0.5) -> ConsensusTrial:
    """Hold out whole genes (:func:`.splits.held_out_genes`), corrupt the training labels
    per annotator, train on each version.

    'single' is the first annotator's labels (the best one when rates differ, so the
    consensus must beat the best single annotator, not the average one).
    """
    train, test = held_out_genes(data.genes, test_fraction, seed)
    Xtr, Ytr, Xte, Yte = data.X[train], data.Y[train], data.X[test], data.Y[test]
    L = noisy_annotators(Ytr, flip, seed)
    versions = {"truth": Ytr, "single": L[0],
                "majority": consensus(L, "majority").labels,
                "dawid-skene": consensus(L, "dawid-skene").labels}
    auc, acc = {}, {}
    for name, labels in versions.items():
        with threadpool_limits(1):  # tiny matrices: BLAS threads only contend
            _, scores = fit_scores(Xtr, labels, Xte, data.vocabulary, seed)
        auc[name] = mean_auc(Yte, scores)
        known = labels >= 0
        acc[name] = float((labels[known] == Ytr[known]).mean())
    rates = (float(flip),) * 3 if np.isscalar(flip) else tuple(float(f) for f in flip)
    return ConsensusTrial(seed, rates, auc, acc)


@dataclass(frozen=True)
class LearningCurve:
    """Held-out mean AUC after each round of labelling (``n_labelled[k]`` images)."""

    strategy: str
    seed: int
    n_labelled: tuple[int, ...]
    auc: tuple[float, ...]


def learning_curve(data: SyntheticFeatures, strategy: str = "suggest", seed: int = 0,
                   start: int = 20, batch: int = 20, rounds: int = 8,
                   test_fraction: float = 0.4) -> LearningCurve:
    """Label ``start`` random pool images, then ``rounds`` batches picked by ``strategy``
    ('suggest': :func:`.active.suggest`; 'random'), training after each batch.

    Both strategies start from the same random images, so the curves differ only by the
    choice of what to label next.
    """
    pool, test = held_out_genes(data.genes, test_fraction, seed)
    rng = np.random.default_rng([seed, 17])
    labelled = list(rng.choice(pool, size=start, replace=False))
    genes = np.asarray(data.genes)
    sizes, aucs = [], []
    for step in range(rounds + 1):
        with threadpool_limits(1):
            clf, scores = fit_scores(data.X[labelled], data.Y[labelled], data.X[test],
                                     data.vocabulary, seed)
        sizes.append(len(labelled))
        aucs.append(mean_auc(data.Y[test], scores))
        if step == rounds:
            break
        rest = np.setdiff1d(pool, labelled)
        if strategy == "random":
            labelled += list(rng.choice(rest, size=min(batch, len(rest)), replace=False))
        else:
            with threadpool_limits(1):
                picks = suggest(clf, data.X[rest], genes[rest], batch).order
            labelled += list(rest[picks])
    return LearningCurve(strategy, seed, tuple(sizes), tuple(aucs))
