"""Gene x stage records: the annotation a curator submits, built from several embryo images.

BDGP and FlyExpress record terms per gene and stage range; the images of one (gene, stage)
group share them. Here image-level results become group-level ones:

* :func:`record_groups` - which images form one record (an image without a gene or a stage
  is a record of its own, and says so);
* :func:`combine_probabilities` - a group's probability per term from its images' calibrated
  probabilities. The default is the mean of the images' log-odds (a geometric mean of
  odds): a group's images are correlated views of one pattern, so summing their evidence
  (noisy-OR, naive Bayes) is over-confident, while the arithmetic mean lets one washed-out
  image pull a clear pattern down. ``benchmarks/bench_groups.py`` measures the three
  (docs/benchmarks.md, "Gene x stage records"): the two means tie on AUC and Brier, the
  log-odds mean has the lower ECE, noisy-OR twice the ECE;
* :func:`group_labels` - a group's label per term: present if any of its images is
  labelled present (curators annotate what any view shows), absent if all its labelled
  images are absent, unknown otherwise;
* :func:`.evaluation.score_groups` applies the image-level evaluation engine to records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit, logit

from ..utils.errors import InputError

__all__ = ["COMBINATIONS", "DEFAULT_COMBINATION", "GroupRecords", "record_groups",
           "combine_probabilities", "group_labels", "parse_by"]

COMBINATIONS = ("logit-mean", "mean", "noisy-or")
DEFAULT_COMBINATION = "logit-mean"
#: the group keys ``--by`` accepts (CONTRACTS.md: ``--by gene,stage``)
BY_KEYS = ("gene", "stage")
NO_GROUP_NOTE = "no gene or stage: a record of this image alone"
_EPS = 1e-6


@dataclass(frozen=True)
class GroupRecords:
    """The records some images form: ``index[i]`` is image ``i``'s record."""

    genes: tuple[str, ...]
    stages: tuple[str, ...]
    notes: tuple[str, ...]  # "" or why the record holds one image only
    index: np.ndarray  # (n_images,) int

    def __len__(self) -> int:
        return len(self.genes)

    def sizes(self) -> np.ndarray:
        return np.bincount(self.index, minlength=len(self))

    def members(self, g: int) -> np.ndarray:
        return np.flatnonzero(self.index == g)


def parse_by(spec: str) -> tuple[str, ...]:
    """``--by gene,stage`` -> ``("gene", "stage")``; anything else is a usage error."""
    keys = tuple(k.strip() for k in str(spec).split(",") if k.strip())
    if not keys or any(k not in BY_KEYS for k in keys) or len(set(keys)) != len(keys):
        raise InputError(f"--by takes gene, stage or gene,stage, not {spec!r}")
    return keys


def record_groups(genes: Sequence[str | None], stages: Sequence[str | None],
                  by: Sequence[str] = BY_KEYS) -> GroupRecords:
    """Records in order of first appearance. An image lacking a key it is grouped by forms a
    record of its own (its images cannot be told to belong with any other)."""
    if len(genes) != len(stages):
        raise ValueError(f"{len(genes)} genes but {len(stages)} stages")
    keys: dict[Any, int] = {}
    out_genes: list[str] = []
    out_stages: list[str] = []
    notes: list[str] = []
    index = np.empty(len(genes), dtype=np.int64)
    for i, (gene, stage) in enumerate(zip(genes, stages, strict=True)):
        values = {"gene": gene or "", "stage": stage or ""}
        complete = all(values[k] for k in by)
        key = tuple(values[k] for k in by) if complete else ("image", i)
        if key not in keys:
            keys[key] = len(keys)
            out_genes.append(values["gene"] if "gene" in by or not complete else "")
            out_stages.append(values["stage"] if "stage" in by or not complete else "")
            notes.append("" if complete else NO_GROUP_NOTE.replace(
                "gene or stage", " or ".join(k for k in by if not values[k])))
        index[i] = keys[key]
    return GroupRecords(tuple(out_genes), tuple(out_stages), tuple(notes), index)


def combine_probabilities(P: Any, records: GroupRecords,
                          method: str = DEFAULT_COMBINATION) -> np.ndarray:
    """``(n_groups, T)`` group probabilities from ``(n, T)`` image probabilities.

    NaN (an image a fold did not score for a term) is left out of its group's combination; a
    group with no scored image for a term stays NaN.
    """
    if method not in COMBINATIONS:
        raise InputError(f"unknown combination {method!r}; use one of {', '.join(COMBINATIONS)}")
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 2 or P.shape[0] != len(records.index):
        raise ValueError(f"probabilities have shape {P.shape}, expected ({len(records.index)}, T)")
    scored = np.isfinite(P)
    clipped = np.clip(np.where(scored, P, 0.5), _EPS, 1 - _EPS)
    if method == "mean":
        values = np.where(scored, clipped, 0.0)
    elif method == "logit-mean":
        values = np.where(scored, logit(clipped), 0.0)
    else:  # noisy-or: 1 - prod(1 - p), summed in log space
        values = np.where(scored, np.log1p(-clipped), 0.0)
    G = len(records)
    total = np.zeros((G, P.shape[1]))
    count = np.zeros((G, P.shape[1]))
    np.add.at(total, records.index, values)
    np.add.at(count, records.index, scored)
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "mean":
            out = total / count
        elif method == "logit-mean":
            out = expit(total / count)
        else:
            out = -np.expm1(total)
    out[count == 0] = np.nan
    return out


def group_labels(Y: Any, records: GroupRecords) -> np.ndarray:
    """``(n_groups, T)`` labels: 1 if any image is labelled present, 0 if every labelled image
    is absent, -1 if none is labelled."""
    Y = np.asarray(Y)
    G = len(records)
    present = np.zeros((G, Y.shape[1]), dtype=bool)
    labelled = np.zeros((G, Y.shape[1]), dtype=bool)
    np.logical_or.at(present, records.index, Y == 1)
    np.logical_or.at(labelled, records.index, Y != -1)
    return np.where(present, 1, np.where(labelled, 0, -1)).astype(np.int8)
