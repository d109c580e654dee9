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

__all__ = ["CALL_THRESHOLD", "CALLS_SEPARATOR", "calls", "called_terms", "calls_text",
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


def uncertainty(probabilities: Any) -> np.ndarray:
    """How close each probability is to the decision, in [0, 1] (1 = at the threshold);
    NaN stays NaN. Sorting by it puts the calls most worth checking first."""
    P = np.asarray(probabilities, dtype=np.float64)
    return 1.0 - 2.0 * np.abs(P - CALL_THRESHOLD)
