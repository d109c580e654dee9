"""The one decision shown to a biologist: a term is *called present* when its calibrated
probability is at least :data:`CALL_THRESHOLD`.

Why one rule on the calibrated probability: the bundle's probabilities are Platt-scaled on
gene-grouped out-of-fold scores (:mod:`.calibration`), so ``p >= 0.5`` is the call that makes
the fewest expected mistakes per (image, term), and it agrees with the number printed beside
it. The paper's majority vote of balanced members answers a different question (each member
sees 50 % prevalence), called a rare term "present" beside p = 0.11 and several times as many
terms per image as are true (docs/benchmarks.md, "One decision on screen"). The vote stays
available, labelled as such, with ``predict --votes``.

A per-term threshold chosen on the out-of-fold scores (the F1-optimal one) was measured too and
did not beat 0.5 on held-out genes (docs/benchmarks.md), so there is no per-term state to store
and every bundle, old or new, decides the same way. The Annotate pred. column, the canvas text,
the Embryos table, the Gallery and ``predict``'s ``calls`` column all call :func:`calls`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["CALL_THRESHOLD", "CALLS_SEPARATOR", "calls", "called_terms", "calls_text", "calls_texts",
           "uncertainty"]

#: calibrated probability at or above which a term is called present
CALL_THRESHOLD = 0.5
#: joins the called terms in ``predict``'s ``calls`` column (as the manifest's ``terms``)
CALLS_SEPARATOR = ";"


def calls(probabilities: Any) -> np.ndarray:
    """Bool array of the same shape: called present. NaN (an unreadable image) is never
    called."""
    P = np.asarray(probabilities, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(P, nan=-1.0) >= CALL_THRESHOLD


def called_terms(vocabulary: Sequence[str], probabilities: Any) -> list[str]:
    """The terms of one image's probability row that are called present, in vocabulary order."""
    row = calls(probabilities)
    if row.shape != (len(vocabulary),):
        raise ValueError(f"probability row has shape {row.shape}, expected ({len(vocabulary)},)")
    return [t for t, c in zip(vocabulary, row, strict=True) if c]


def calls_text(vocabulary: Sequence[str], probabilities: Any) -> str:
    """``predict``'s ``calls`` cell: the called terms joined by ``;`` (empty if none)."""
    return CALLS_SEPARATOR.join(called_terms(vocabulary, probabilities))


def calls_texts(vocabulary: Sequence[str], probabilities: Any) -> list[str]:
    """:func:`calls_text` of every row of ``(n, T)`` probabilities, built once per distinct
    pattern of calls (100,000 images hold few patterns: a fraction of a second, not seconds)."""
    C = calls(probabilities)
    if C.ndim != 2 or C.shape[1] != len(vocabulary):
        raise ValueError(f"probabilities have shape {C.shape}, expected (n, {len(vocabulary)})")
    if not len(C):
        return []
    if C.shape[1] <= 62:  # each row as one integer: a 1-D unique, ten times faster
        keys = C.astype(np.int64) @ (np.int64(1) << np.arange(C.shape[1], dtype=np.int64))
        _, first, which = np.unique(keys, return_index=True, return_inverse=True)
        patterns = C[first]
    else:
        patterns, which = np.unique(C, axis=0, return_inverse=True)
    terms = np.asarray(list(vocabulary), dtype=object)
    texts = [CALLS_SEPARATOR.join(terms[row]) for row in patterns]
    return [texts[k] for k in which.ravel()]


def uncertainty(probabilities: Any) -> np.ndarray:
    """How close each probability is to the decision, in [0, 1] (1 = at the threshold);
    NaN stays NaN. Sorting by it puts the calls most worth checking first."""
    P = np.asarray(probabilities, dtype=np.float64)
    return 1.0 - 2.0 * np.abs(P - CALL_THRESHOLD)
