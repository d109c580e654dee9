"""The evaluation table printed by ``ish-annotator evaluate`` and the headless demo: the
paper's Table 2 layout, per layer, for images and (``--by``) gene x stage records."""

from __future__ import annotations

import math
from typing import Any

from .metrics import CALIBRATION_METRICS, METRICS

__all__ = ["format_table"]


# -------------------------------------------------------------------------------- the table
def _cell(value: Any, spread: Any = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}" if spread is None else f"{value:.3f} ± {spread:.3f}"


def format_table(results: dict, per_term: bool = False) -> str:
    """Plain-text table in the paper's Table 2 layout: one row per layer, mean metrics.

    ``results`` is the ``{"layers": {layer: summary}}`` dict of CONTRACTS.md; with ``std``
    in a layer (repeated partitions) each cell is ``mean ± std``. The title says over how
    many of the terms the means are; terms not evaluated are listed with their reason.
    With ``per_term`` a table per layer with one row per term (and its positives) follows.
    With ``"groups"`` (``evaluate --by gene,stage``) the records' table follows the images'.
    """
    text = _format_level(results.get("layers", {}), per_term)
    if not results.get("groups"):
        return text
    n_groups = {s.get("n_groups") for s in results["groups"].values()} - {None}
    counted = f" ({', '.join(map(str, sorted(n_groups)))} records)" if n_groups else ""
    return (f"Images\n{text}\n\nGene x stage records{counted}, same splits\n"
            + _format_level(results["groups"], per_term))


def _format_level(layers: dict, per_term: bool) -> str:
    columns = METRICS + CALIBRATION_METRICS
    spread = any(s.get("std") for s in layers.values())
    width = 15 if spread else 11
    counts = {(s.get("n_evaluated"), s.get("n_terms")) for s in layers.values()}
    if len(counts) == 1 and None not in next(iter(counts)):
        n_eval, n_terms = next(iter(counts))
        title = f"Mean over {n_eval} of {n_terms} terms"
    else:
        title = "Mean over the evaluated terms"
    if spread:
        title += f" (mean ± std over {max(s.get('n_partitions', 0) for s in layers.values())} " \
                 "random gene-grouped partitions)"
    header = f"{'layer':>8}  " + "  ".join(f"{m:>{width}}" for m in columns)
    if len(counts) > 1:
        header += "  terms"
    lines = [title, header, "-" * len(header)]
    for layer, summary in layers.items():
        mean, std = summary.get("mean", {}), summary.get("std") or {}
        row = f"{layer:>8}  " + "  ".join(
            f"{_cell(mean.get(m), std.get(m) if spread else None):>{width}}" for m in columns)
        if len(counts) > 1:
            row += f"  {summary.get('n_evaluated')}/{summary.get('n_terms')}"
        lines.append(row)
    missing: dict[str, str] = {}
    for summary in layers.values():
        for term, why in (summary.get("not_evaluated") or {}).items():
            missing.setdefault(term, why)
    if missing:
        lines += ["", f"Not evaluated ({len(missing)}):"]
        lines += [f"  {term}: {why}" for term, why in missing.items()]
    if per_term:
        for layer, summary in layers.items():
            terms = summary.get("terms", {})
            w = max([len("term")] + [len(t) for t in terms])
            head = f"{'term':<{w}}  {'n_pos':>5}  " + "  ".join(f"{m:>11}" for m in METRICS)
            lines += ["", f"Layer {layer}", head, "-" * len(head)]
            for term, res in terms.items():
                lines.append(f"{term:<{w}}  {res.get('n_pos', 0):>5}  "
                             + "  ".join(f"{_cell(res.get(m)):>11}" for m in METRICS))
    return "\n".join(lines)
