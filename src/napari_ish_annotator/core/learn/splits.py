"""Gene-grouped splits of images: every split in the package comes from here.

Images of one gene share labels (one expression pattern across its images), so a
near-duplicate of a test image in the training set would inflate every metric: splits keep
every gene's images together. :func:`group_ids` (the groups), :func:`grouped_folds` (k-fold),
:func:`random_partitions` (the paper's repeated random partitions) and its single draw
:func:`held_out_genes`, :func:`validation_split` (fine-tuning).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..utils.errors import InputError
from .metrics import has_both_classes

__all__ = ["group_ids", "grouped_folds", "random_partitions", "held_out_genes",
           "validation_split"]


def _first_appearance_ids(keys: Sequence[Any]) -> np.ndarray:
    ids: dict[Any, int] = {}
    return np.array([ids.setdefault(k, len(ids)) for k in keys], dtype=np.int64)


def group_ids(genes: Sequence[str | None], stages: Sequence[str | None]) -> np.ndarray:
    """One group id per image (ints in order of first appearance).

    By gene (images of one gene share their pattern across stages); if that leaves a single
    group (one gene only), by gene and stage; if still one group, every image on its own.
    An image without a gene is always its own group.
    """
    genes = [g if g else None for g in genes]
    stages = list(stages)
    if len(stages) != len(genes):
        raise ValueError(f"{len(genes)} genes but {len(stages)} stages")
    by_gene = [("g", g) if g else ("i", i) for i, g in enumerate(genes)]
    if len(set(by_gene)) >= 2:
        return _first_appearance_ids(by_gene)
    by_stage = [("g", g, s or "") if g else ("i", i)
                for i, (g, s) in enumerate(zip(genes, stages, strict=True))]
    if len(set(by_stage)) >= 2:
        return _first_appearance_ids(by_stage)
    return np.arange(len(genes), dtype=np.int64)


def grouped_folds(groups: Any, n_splits: int, seed: int = 0
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_splits`` (train, test) index pairs; all images of a group land in one test fold.

    scikit-learn's ``GroupKFold(shuffle=True, random_state=seed)``, the same assignment in
    numpy (the seeded permutation of the sorted groups, cut into ``n_splits`` near-equal
    runs): Train in the GUI does not wait 1.4 s for ``sklearn.model_selection``.
    """
    groups = np.asarray(groups)
    n_splits = int(n_splits)
    if n_splits < 2:
        raise InputError(f"cross-validation needs at least 2 folds, got {n_splits}; "
                         "use e.g. --folds 5")
    unique = np.unique(groups)
    if len(unique) < n_splits:
        raise InputError(f"only {len(unique)} gene group(s) for {n_splits}-fold "
                         f"cross-validation; use --folds {max(2, len(unique))} or fewer, add "
                         "images of more genes, or give a separate --test manifest")
    order = np.random.RandomState(int(seed)).permutation(unique)
    out = []
    for test_groups in np.array_split(order, n_splits):
        test = np.isin(groups, test_groups)
        out.append((np.flatnonzero(~test), np.flatnonzero(test)))
    return out


def random_partitions(groups: Any, repeats: int, test_fraction: float = 0.25, seed: int = 0
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``repeats`` seeded random (train, test) partitions of whole groups (the paper's protocol).

    ``test_fraction`` is the share of *groups* held out in each partition.
    """
    from sklearn.model_selection import GroupShuffleSplit

    groups = np.asarray(groups)
    repeats = int(repeats)
    if repeats < 1:
        raise InputError(f"--repeats must be at least 1, got {repeats}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise InputError(f"--test-fraction must be between 0 and 1, got {test_fraction}; "
                         "use e.g. --test-fraction 0.25")
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise InputError(f"only {n_groups} gene group(s): random partitions need images of at "
                         "least two genes, or give a separate --test manifest")
    n_test = min(n_groups - 1, max(1, int(round(n_groups * float(test_fraction)))))
    splitter = GroupShuffleSplit(n_splits=repeats, test_size=n_test, random_state=int(seed))
    return [(np.sort(tr), np.sort(te))
            for tr, te in splitter.split(np.zeros((len(groups), 1)), groups=groups)]


def held_out_genes(groups: Any, test_fraction: float, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """One seeded (train, test) partition of whole groups: :func:`random_partitions` with
    one repeat (the demo's and the simulations' held-out genes)."""
    return random_partitions(groups, 1, test_fraction, seed=seed)[0]


def validation_split(groups: Any, Y: Any, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Grouped (train, validation) split for fine-tuning; empty validation if impossible.

    Up to 20 seeded draws; the first whose validation part can score an AUC for some term
    (and whose training part has a positive) is taken.
    """
    from sklearn.model_selection import GroupShuffleSplit

    groups = np.asarray(groups)
    Y = np.asarray(Y)
    n = len(groups)
    if fraction <= 0 or len(np.unique(groups)) < 2:
        return np.arange(n), np.zeros(0, dtype=int)
    best = None
    for attempt in range(20):
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed + attempt)
        tr, va = next(splitter.split(np.zeros(n), groups=groups))
        if best is None:
            best = (tr, va)
        yv = Y[va]
        if has_both_classes(yv).any() and (Y[tr] == 1).any():
            return np.sort(tr), np.sort(va)
    return np.sort(best[0]), np.sort(best[1])
