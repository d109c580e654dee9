"""Evaluation you can look at: ``evaluate --report DIR`` writes PNG figures and an ``index.md``.

Biologists read a figure faster than a table of 73 rows. Per layer:

* ``auc-per-term-L<layer>.png`` - each evaluated term's AUC, mean ± std over the splits (folds
  or repeated partitions), images and (with ``--by``) gene x stage records side by side; terms
  that could not be evaluated are named with their reason, never drawn as a bar of 0;
* ``roc-L<layer>.png`` - ROC curves of the best and the worst evaluated terms, from every
  split's held-out images;
* ``reliability-L<layer>.png`` - a reliability diagram of the calibrated probabilities, with
  the members' raw mean for comparison (what calibration fixes).

The numbers come from the same :class:`.evaluation.Evaluation` as the JSON; the AUC per split
uses :func:`.metrics.per_term_auc`, the bins :data:`.metrics.ECE_BINS`. matplotlib is imported
here only (Agg backend, no window), when a report is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..utils.files import atomic_path, write_text_atomic
from .evaluation import Evaluation
from .groups import GroupRecords, combine_probabilities, group_labels
from .metrics import ECE_BINS, defined_mean, per_term_auc

__all__ = ["TermAUC", "draw_auc_bars", "split_aucs", "write_report"]
N_CURVES = 3  # best and worst terms drawn in the ROC figure


@dataclass(frozen=True)
class TermAUC:
    """A term's AUC over the splits that could score it (``mean``/``std`` None if none)."""

    term: str
    mean: float | None
    std: float | None
    n_splits: int


def split_aucs(ev: Evaluation, Y: np.ndarray, records: GroupRecords | None = None
               ) -> list[TermAUC]:
    """Per term: AUC of each split's held-out images (or records), mean and std over splits.
    Terms the evaluation left out get no figure."""
    held = ev.held_out
    if held is None:
        raise ValueError("the evaluation kept no held-out predictions")
    per_split: list[list[float | None]] = []
    for k in np.unique(held.split):
        sel = held.split == k
        rows, R = held.rows[sel], held.raw[sel]
        if records is None:
            per_split.append(per_term_auc(Y[rows], R))
            continue
        sub = GroupRecords(records.genes, records.stages, records.notes, records.index[rows])
        Pg = combine_probabilities(R, sub)
        keep = np.isfinite(Pg).any(axis=1)
        per_split.append(per_term_auc(group_labels(Y[rows], sub)[keep], Pg[keep]))
    out = []
    for t, term in enumerate(ev.vocabulary):
        vals = [s[t] for s in per_split if s[t] is not None]
        if term in ev.not_evaluated or not vals:
            out.append(TermAUC(term, None, None, 0))
        else:
            out.append(TermAUC(term, defined_mean(vals), float(np.std(vals)), len(vals)))
    return out


def draw_auc_bars(ax, images: list[TermAUC], groups: list[TermAUC] | None = None,
                  xlabel: str = "AUC (mean ± std over splits)") -> list[str]:
    """Horizontal AUC bars per evaluated term onto the matplotlib Axes ``ax`` (the report's
    figure and the Train panel's chart); terms without a figure get no bar. Returns the
    terms drawn, lowest AUC first."""
    scored = [a for a in images if a.mean is not None]
    scored.sort(key=lambda a: a.mean)
    names = [a.term for a in scored]
    y = np.arange(len(scored))
    height = 0.4 if groups else 0.8
    ax.barh(y + (height / 2 if groups else 0), [a.mean for a in scored], height,
            xerr=[a.std for a in scored], label="images", color="#4c72b0", capsize=2)
    if groups:
        by_term = {a.term: a for a in groups}
        g = [by_term[n] for n in names]
        ax.barh(y - height / 2, [a.mean if a.mean is not None else np.nan for a in g], height,
                xerr=[a.std or 0.0 for a in g], label="gene x stage records", color="#dd8452",
                capsize=2)
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y, names, fontsize=7)
    ax.axvline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel(xlabel)
    return names


def _roc(ax, ev: Evaluation, Y: np.ndarray, aucs: list[TermAUC]) -> list[str]:
    from sklearn.metrics import roc_curve

    scored = sorted((a for a in aucs if a.mean is not None), key=lambda a: a.mean)
    picks = scored[-N_CURVES:][::-1] + [a for a in scored[:N_CURVES] if a not in
                                         scored[-N_CURVES:]]
    held = ev.held_out
    for a in picks:
        t = ev.vocabulary.index(a.term)
        y, r = Y[held.rows, t], held.raw[:, t]
        keep = (y != -1) & np.isfinite(r)
        fpr, tpr, _ = roc_curve(y[keep], r[keep])
        ax.plot(fpr, tpr, lw=1.2, label=f"{a.term} ({a.mean:.2f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(loc="lower right", fontsize=7)
    return [a.term for a in picks]


def _reliability(ax, ev: Evaluation, Y: np.ndarray) -> None:
    held = ev.held_out
    y = Y[held.rows]
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    for name, P, style in (("calibrated", held.probabilities, "o-"),
                           ("members' raw mean", held.raw, "s--")):
        keep = (y != -1) & np.isfinite(P)
        p, lab = P[keep], y[keep]
        which = np.clip(np.digitize(p, edges) - 1, 0, ECE_BINS - 1)
        xs, ys = [], []
        for b in range(ECE_BINS):
            sel = which == b
            if sel.any():
                xs.append(p[sel].mean())
                ys.append(lab[sel].mean())
        ax.plot(xs, ys, style, ms=3, label=name)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed share present")
    ax.legend(loc="upper left", fontsize=8)


def write_report(out_dir: str | Path, evaluations: dict[str, Evaluation], Y: np.ndarray,
                 records: GroupRecords | None = None, title: str = "Evaluation") -> Path:
    """Write the figures of every layer and ``index.md``; returns the index's path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    for layer, ev in evaluations.items():
        images = split_aucs(ev, Y)
        groups = split_aucs(ev, Y, records) if records is not None else None
        n = sum(a.mean is not None for a in images)
        fig = Figure(figsize=(7, max(2.5, 0.28 * n + 1.2)))
        draw_auc_bars(fig.add_subplot(), images, groups)
        fig.tight_layout()
        _save(fig, out / f"auc-per-term-L{layer}.png")
        fig = Figure(figsize=(5, 4.5))
        _roc(fig.add_subplot(), ev, Y, images)
        fig.tight_layout()
        _save(fig, out / f"roc-L{layer}.png")
        fig = Figure(figsize=(4.5, 4.5))
        _reliability(fig.add_subplot(), ev, Y)
        fig.tight_layout()
        _save(fig, out / f"reliability-L{layer}.png")
        lines += _layer_markdown(layer, ev, images, groups)
    index = out / "index.md"
    write_text_atomic(index, "\n".join(lines) + "\n")
    return index


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _layer_markdown(layer: str, ev: Evaluation, images: Sequence[TermAUC],
                    groups: Sequence[TermAUC] | None) -> list[str]:
    def cell(a: TermAUC | None) -> str:
        return "n/a" if a is None or a.mean is None else f"{a.mean:.3f} ± {a.std:.3f}"

    by_term = {a.term: a for a in groups or ()}
    lines = [f"## Layer {layer}", "",
             f"Evaluated {ev.n_evaluated} of {ev.n_terms} terms.", "",
             f"![AUC per term](auc-per-term-L{layer}.png)", "",
             f"![ROC curves of the best and worst terms](roc-L{layer}.png)",
             f"![Reliability diagram](reliability-L{layer}.png)", "",
             "| term | images: AUC | " + ("records: AUC | " if groups else "") + "splits |",
             "|---|---|" + ("---|" if groups else "") + "---|"]
    for a in sorted(images, key=lambda a: -(a.mean if a.mean is not None else -1)):
        if a.mean is None:
            continue
        lines.append(f"| {a.term} | {cell(a)} | "
                     + (f"{cell(by_term.get(a.term))} | " if groups else "") + f"{a.n_splits} |")
    if ev.not_evaluated:
        lines += ["", "Not evaluated (no bar is drawn for them):", ""]
        lines += [f"- {term}: {why}" for term, why in ev.not_evaluated.items()]
    return lines + [""]
