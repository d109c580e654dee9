"""Several annotators' labels: agreement, each annotator's accuracy, and a consensus.

Labels of ``A`` annotators for ``n`` images and ``T`` terms are one ``(A, n, T)`` int8 array
(1 present, 0 absent, -1 not labelled by that annotator), read from the label store by
:func:`annotator_labels`. Everything else here is plain array arithmetic, so the CLI
(``ish-annotator labels``), the napari session and the tests share one implementation.

* **Agreement** per term and overall: observed agreement (share of agreeing annotator pairs
  per image, averaged over images labelled by at least two) and chance-corrected agreement:
  Cohen's kappa (scikit-learn) for two annotators, Fleiss' kappa for more.
* **Consensus** by majority vote (strict majority, ties unknown) or by a per-term
  Dawid-Skene model: EM over the true label of every image and each annotator's sensitivity
  and specificity, so a careful annotator outweighs a careless one. The consensus label is
  the sign of the annotators' evidence (log-likelihood ratio), not of the posterior: the
  posterior also weighs in the term's prevalence, which would turn a rare term's 2-of-3
  "present" votes into "absent" and starve the classifier (which balances classes itself by
  undersampling) of positives. The posterior is kept for display and confidence. The
  Dawid-Skene estimates also give each annotator's accuracy.
* ``min_agreement`` leaves a term of an image unknown when fewer than that share of the
  image's annotators agree with the consensus value; such cells are counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..learn.metrics import has_both_classes
from ..utils.errors import InputError

if TYPE_CHECKING:
    from .schema import LabelValue
    from .store import LabelStore

__all__ = [
    "METHODS", "AnnotatorLabels", "TermAgreement", "Agreement", "DawidSkene", "Consensus",
    "ImageAnnotations", "annotator_labels", "fleiss_kappa", "agreement", "majority_vote",
    "dawid_skene", "consensus", "consensus_labels", "disagreement_mask", "image_annotations",
]

METHODS = ("dawid-skene", "majority")
#: pseudo-counts (Beta(1, 1) prior) keep Dawid-Skene sensitivities away from 0 and 1
_PSEUDO = 1.0
#: pseudo-counts pulling a term's annotator rates towards their rates over all terms
SHRINK = 1000.0
#: label patterns are coded base 3 in an int64 together with the term index
_MAX_ANNOTATORS = 30


# ----------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class AnnotatorLabels:
    """Every annotator's own labels (no fallback): ``labels[a, i, t]`` in {1, 0, -1}."""

    annotators: tuple[str, ...]
    vocabulary: tuple[str, ...]
    labels: np.ndarray  # (A, n, T) int8


def annotator_labels(store: LabelStore, images: Sequence[str | Path],
                     vocabulary: Sequence[str] | None = None,
                     annotators: Sequence[str] | None = None) -> AnnotatorLabels:
    """Each annotator's latest labels of ``images`` (paths or content hashes).

    ``annotators=None`` takes everyone in the store (an imported manifest counts as the
    annotator it was imported under). Unknown annotator names raise :class:`InputError`.
    """
    known = store.annotators()
    names = list(known) if annotators is None else list(dict.fromkeys(annotators))
    missing = [a for a in names if a not in known]
    if missing:
        raise InputError(f"unknown annotator(s) {', '.join(map(repr, missing))}; this store "
                         f"has {', '.join(map(repr, known)) or 'no annotators yet'}",
                         path=store.path)
    vocab = list(store.terms() if vocabulary is None else vocabulary)
    labels = np.stack([store.label_matrix(images, vocab, annotator=a, fallback=())
                       for a in names]) if names else \
        np.full((0, len(images), len(vocab)), -1, np.int8)
    return AnnotatorLabels(tuple(names), tuple(vocab), labels)


# ----------------------------------------------------------------------------- agreement
@dataclass(frozen=True)
class TermAgreement:
    """Agreement on one term (or, for ``term=None``, on all terms pooled)."""

    term: str | None
    annotators: int        # annotators who labelled this term at least once
    images: int            # images labelled by at least two annotators
    observed: float | None  # mean share of agreeing annotator pairs per image
    kappa: float | None     # chance-corrected; None where undefined (one class only)
    kappa_kind: str         # "cohen" (two annotators), "fleiss" (more) or "" (fewer)


@dataclass(frozen=True)
class Agreement:
    annotators: tuple[str, ...]
    terms: tuple[TermAgreement, ...]
    overall: TermAgreement
    #: each annotator's estimated accuracy (Dawid-Skene), None without any label
    accuracy: tuple[float | None, ...]
    n_images: int

    def to_json(self) -> dict:
        """Plain JSON (for ``labels agreement --json``)."""
        def row(t: TermAgreement) -> dict:
            return {"annotators": t.annotators, "images": t.images, "observed": t.observed,
                    "kappa": t.kappa, "kappa_kind": t.kappa_kind or None}

        return {"annotators": list(self.annotators), "n_images": self.n_images,
                "overall": row(self.overall),
                "terms": {t.term: row(t) for t in self.terms},
                "accuracy": dict(zip(self.annotators, self.accuracy, strict=True))}

    def format_table(self) -> str:
        """Human-readable table for the terminal."""
        def cell(x: float | None) -> str:
            return "-" if x is None else f"{x:.3f}"

        width = max([len("overall"), *(len(t.term or "") for t in self.terms)])
        lines = [f"{'term':<{width}}  annot  images  observed  kappa"]
        for t in (*self.terms, self.overall):
            lines.append(f"{t.term or 'overall':<{width}}  {t.annotators:>5}  {t.images:>6}  "
                         f"{cell(t.observed):>8}  {cell(t.kappa):>5} {t.kappa_kind}")
        lines.append("")
        lines.append("estimated accuracy (Dawid-Skene):")
        for name, acc in zip(self.annotators, self.accuracy, strict=True):
            lines.append(f"  {name}: {cell(acc)}")
        return "\n".join(lines)


def fleiss_kappa(counts: np.ndarray) -> float | None:
    """Fleiss' kappa of an ``(items, categories)`` table of rating counts.

    Items may have different numbers of raters (at least two each): per-item agreement is
    the share of agreeing rater pairs, chance agreement uses the pooled category shares.
    None when chance agreement is 1 (every rating in one category).
    """
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum(axis=1)
    counts, n = counts[n >= 2], n[n >= 2]
    if not len(n):
        return None
    p_obs = ((counts * (counts - 1)).sum(axis=1) / (n * (n - 1))).mean()
    shares = counts.sum(axis=0) / counts.sum()
    p_chance = float((shares ** 2).sum())
    if p_chance >= 1.0 - 1e-12:
        return None
    return float((p_obs - p_chance) / (1.0 - p_chance))


def _term_agreement(L: np.ndarray, term: str | None) -> TermAgreement:
    """``L``: (A, items) in {1, 0, -1} for one term (or all terms pooled)."""
    from sklearn.metrics import cohen_kappa_score

    known = L >= 0
    n_raters = known.sum(axis=0)
    multi = n_raters >= 2
    who = int(known.any(axis=1).sum())
    if not multi.any():
        return TermAgreement(term, who, 0, None, None, "")
    pos = ((L == 1) & known).sum(axis=0)[multi].astype(np.float64)
    counts = np.stack([pos, n_raters[multi] - pos], axis=1)
    n = counts.sum(axis=1)
    observed = float(((counts * (counts - 1)).sum(axis=1) / (n * (n - 1))).mean())
    active = known[:, multi].any(axis=1)
    if active.sum() == 2:
        a, b = L[active][:, multi]
        both = (a >= 0) & (b >= 0)
        if len(set(a[both]) | set(b[both])) < 2:
            kappa = None
        else:
            kappa = float(cohen_kappa_score(a[both], b[both]))
        kind = "cohen"
    else:
        kappa, kind = fleiss_kappa(counts), "fleiss"
    if kappa is not None and not math.isfinite(kappa):
        kappa = None
    return TermAgreement(term, who, int(multi.sum()), observed, kappa, kind)


def agreement(labels: AnnotatorLabels) -> Agreement:
    """Agreement per term and pooled over terms, plus each annotator's estimated accuracy."""
    L = labels.labels
    if L.shape[0] == 0 or not (L >= 0).any():
        raise InputError("no labels to compare: the label store has no labels of these "
                         "images; import annotators' manifests first (ish-annotator labels "
                         "import STORE MANIFEST --annotator NAME)")
    terms = tuple(_term_agreement(L[:, :, t], term) for t, term in enumerate(labels.vocabulary))
    overall = _term_agreement(L.reshape(L.shape[0], -1), None)
    model = dawid_skene(L)
    return Agreement(labels.annotators, terms, overall, model.accuracy, int(L.shape[1]))


# ----------------------------------------------------------------------------- consensus
@dataclass(frozen=True)
class DawidSkene:
    """Per-term Dawid-Skene fit: posterior of 'present' and each annotator's error rates."""

    posterior: np.ndarray     # (n, T) P(present | labels); NaN where nobody labelled
    evidence: np.ndarray      # (n, T) annotators' log-likelihood ratio present:absent; NaN
    prevalence: np.ndarray    # (T,)
    sensitivity: np.ndarray   # (A, T)
    specificity: np.ndarray   # (A, T)
    accuracy: tuple[float | None, ...]  # (A,) expected share of each annotator's labels right
    iterations: int


def dawid_skene(L: np.ndarray, shrink: float = SHRINK, max_iter: int = 2000,
                tol: float = 1e-7) -> DawidSkene:
    """Fit a Dawid-Skene model per term of ``L`` (A, n, T) by EM, all terms at once.

    Each annotator has a sensitivity and a specificity per term (a binary confusion matrix);
    the true label's prior is the term's prevalence. With a few hundred images per term the
    per-term rates are noisy (an annotator can look no better than chance on one term by
    bad luck and lose every vote there), so each term's rates are shrunk towards the
    annotator's rates over all terms by ``shrink`` pseudo-counts (0: independent terms;
    large: one confusion matrix per annotator). The default 1000 lets a term's own rates
    dominate only once it has well over a thousand labelled images; on the simulated
    annotators of ``benchmarks/bench_consensus.py`` it trained better models than 50
    (unequal annotators: 0.858 vs 0.855 mean AUC; equal ones: the same as majority vote).
    EM starts from the soft majority vote; it can take hundreds of iterations.
    """
    L = np.asarray(L)
    A, n, T = L.shape
    if A > _MAX_ANNOTATORS:
        raise InputError(f"{A} annotators; the Dawid-Skene consensus handles up to "
                         f"{_MAX_ANNOTATORS}: pass fewer with annotators=[...]")
    # EM runs on distinct (term, label pattern) groups: with A annotators a term has at most
    # 3**A patterns, so 10,000 images x 50 terms shrink to a few hundred weighted groups
    code = ((L.astype(np.int64) + 1) * (3 ** np.arange(A, dtype=np.int64))[:, None, None]
            ).sum(axis=0)
    key = code * T + np.arange(T)[None, :]
    groups, inverse, weight = np.unique(key.ravel(), return_inverse=True, return_counts=True)
    term = groups % T
    pattern = (groups // T)[None, :] // (3 ** np.arange(A, dtype=np.int64))[:, None] % 3 - 1
    yes = (pattern == 1).astype(np.float64)           # (A, G)
    no = (pattern == 0).astype(np.float64)
    known = yes + no
    w = weight.astype(np.float64)
    labelled = known.any(axis=0)
    wl = w * labelled
    q = np.where(labelled, (yes.sum(axis=0) / np.maximum(known.sum(axis=0), 1)), 0.0)

    def per_term(values: np.ndarray) -> np.ndarray:  # (A, G) or (G,) -> (A, T) or (T,)
        if values.ndim == 1:
            return np.bincount(term, weights=values, minlength=T)
        return np.stack([np.bincount(term, weights=v, minlength=T) for v in values])

    k = float(shrink)
    n_lab = per_term(wl)
    n_yes, n_known = per_term(yes * w), per_term(known * w)
    for iterations in range(1, max(int(max_iter), 1) + 1):  # noqa: B007 (reported)
        prevalence = np.clip((per_term(wl * q) + _PSEUDO) / (n_lab + 2 * _PSEUDO),
                             1e-6, 1 - 1e-6)
        # expected counts per annotator and term: (A, T)
        tp, pos = per_term(yes * (w * q)), per_term(known * (w * q))
        neg = n_known - pos
        tn = (n_known - n_yes) - (pos - tp)
        pooled_sens = (tp.sum(axis=1) + _PSEUDO) / (pos.sum(axis=1) + 2 * _PSEUDO)
        pooled_spec = (tn.sum(axis=1) + _PSEUDO) / (neg.sum(axis=1) + 2 * _PSEUDO)
        sens = (tp + k * pooled_sens[:, None] + _PSEUDO) / (pos + k + 2 * _PSEUDO)
        spec = (tn + k * pooled_spec[:, None] + _PSEUDO) / (neg + k + 2 * _PSEUDO)
        log_yes = np.log(sens / (1 - spec))   # evidence of a "present" label, (A, T)
        log_no = np.log((1 - sens) / spec)    # evidence of an "absent" label
        evidence = (yes * log_yes[:, term] + no * log_no[:, term]).sum(axis=0)
        logit = np.log(prevalence / (1 - prevalence))[term] + evidence
        new = np.where(labelled, 1.0 / (1.0 + np.exp(-np.clip(logit, -500, 500))), 0.0)
        change = float(np.abs(new - q).max()) if q.size else 0.0
        q = new
        if change < tol:
            break
    right = ((yes * q + no * (1 - q)) * w).sum(axis=1)
    total = (known * w).sum(axis=1)
    accuracy = tuple(float(r / c) if c else None for r, c in zip(right, total, strict=True))
    has = n_known > 0  # (A, T): rates only where the annotator labelled the term
    cell = labelled[inverse].reshape(n, T)
    return DawidSkene(np.where(cell, q[inverse].reshape(n, T), np.nan),
                      np.where(cell, evidence[inverse].reshape(n, T), np.nan),
                      prevalence, np.where(has, sens, np.nan), np.where(has, spec, np.nan),
                      accuracy, iterations)


@dataclass(frozen=True)
class Consensus:
    """Consensus labels (n, T) in {1, 0, -1} and what ``min_agreement`` left out."""

    labels: np.ndarray
    method: str
    min_agreement: float
    #: (n, T) share of the image's annotators agreeing with the consensus value (NaN: none)
    support: np.ndarray
    #: cells that had labels but are unknown in the consensus (tie or below min_agreement)
    n_unsettled: int
    #: images with labels whose every term ended unknown
    n_images_left_out: int
    posterior: np.ndarray | None = None  # Dawid-Skene only


def majority_vote(L: np.ndarray, min_agreement: float = 0.5) -> np.ndarray:
    """Strict majority of the known labels, needing ``min_agreement`` of them; -1 otherwise.

    (Ties and unlabelled cells are -1.)
    """
    known = (L >= 0).sum(axis=0)
    share = np.where(known > 0, (L == 1).sum(axis=0) / np.maximum(known, 1), np.nan)
    out = np.full(share.shape, -1, dtype=np.int8)
    with np.errstate(invalid="ignore"):
        out[(share > 0.5) & (share >= min_agreement)] = 1
        out[(1 - share > 0.5) & (1 - share >= min_agreement)] = 0
    return out


def consensus(labels: AnnotatorLabels | np.ndarray, method: str = "dawid-skene",
              min_agreement: float = 0.0) -> Consensus:
    """Consensus of every annotator's labels by ``method`` (see :data:`METHODS`).

    A cell is left unknown (and counted) when fewer than ``min_agreement`` of the annotators
    who labelled it agree with the consensus value; majority vote also leaves ties unknown.
    """
    L = labels.labels if isinstance(labels, AnnotatorLabels) else np.asarray(labels)
    if method not in METHODS:
        raise InputError(f"unknown consensus method {method!r}; use one of {', '.join(METHODS)}")
    if not 0.0 <= float(min_agreement) <= 1.0:
        raise InputError(f"--min-agreement must lie between 0 and 1, got {min_agreement}")
    known = (L >= 0).sum(axis=0)
    posterior = None
    if method == "majority":
        out = majority_vote(L, 0.5)
    else:
        model = dawid_skene(L)
        posterior = model.posterior
        out = np.full(posterior.shape, -1, dtype=np.int8)
        with np.errstate(invalid="ignore"):  # NaN (nobody labelled) stays -1
            out[model.evidence > 0] = 1
            out[model.evidence < 0] = 0
    agree = ((out[None] == L) & (L >= 0)).sum(axis=0)
    support = np.where(known > 0, agree / np.maximum(known, 1), np.nan)
    with np.errstate(invalid="ignore"):
        out[support < float(min_agreement)] = -1
    had = known > 0
    unsettled = had & (out < 0)
    left_out = had.any(axis=1) & (out < 0).all(axis=1)
    return Consensus(out, method, float(min_agreement), support, int(unsettled.sum()),
                     int(left_out.sum()), posterior)


# ----------------------------------------------------------------------------- for the GUI
def consensus_labels(store: LabelStore, images: Sequence[str | Path],
                     vocabulary: Sequence[str] | None = None, method: str = "dawid-skene",
                     min_agreement: float = 0.0) -> Consensus:
    """The consensus of every annotator in ``store`` on ``images`` (the Train panel's
    "consensus of all annotators"; ``.labels`` is the (n, T) training matrix, -1 unknown)."""
    return consensus(annotator_labels(store, images, vocabulary), method, min_agreement)


def disagreement_mask(store: LabelStore, images: Sequence[str | Path],
                      vocabulary: Sequence[str] | None = None) -> np.ndarray:
    """(n,) True where two annotators gave different known values for some term
    (the Embryos panel's "annotators disagree" filter)."""
    L = annotator_labels(store, images, vocabulary).labels
    return has_both_classes(L).any(axis=1)  # over annotators: someone said 1, someone 0


@dataclass(frozen=True)
class ImageAnnotations:
    """Each annotator's label of every term of one image (the term list's hover text)."""

    annotators: tuple[str, ...]
    vocabulary: tuple[str, ...]
    values: tuple[tuple[LabelValue, ...], ...]  # [term][annotator]

    def of(self, term: str) -> dict[str, LabelValue]:
        """{annotator: value} of the annotators who labelled ``term`` (value None = unknown)."""
        row = self.values[self.vocabulary.index(term)]
        return {a: v for a, v in zip(self.annotators, row, strict=True) if v is not None}

    def tooltip(self, term: str) -> str:
        """'alice: present, bob: absent' (or 'no annotator labelled this term')."""
        got = self.of(term)
        if not got:
            return "no annotator labelled this term"
        return ", ".join(f"{a}: {'present' if v else 'absent'}" for a, v in got.items())


def image_annotations(store: LabelStore, image: str | Path,
                      vocabulary: Sequence[str] | None = None) -> ImageAnnotations:
    """Every annotator's current label of each term of one image."""
    labels = annotator_labels(store, [image], vocabulary)
    values = tuple(tuple(None if v < 0 else int(v) for v in labels.labels[:, 0, t])
                   for t in range(len(labels.vocabulary)))
    return ImageAnnotations(labels.annotators, labels.vocabulary, values)
