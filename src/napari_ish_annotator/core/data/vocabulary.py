"""Built-in stage-range vocabularies and label statistics (derived from FlyExpress/BDGP).

``scripts/derive_vocabularies.py`` distils the FlyExpress annotation tables into
``napari_ish_annotator/data/flyexpress_stats.json`` (ten most frequent anatomical terms per
stage range, their per-image prevalence and real co-occurring label sets). This module only
reads that packaged file, so the product never needs the shared data folder at run time.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources

from ..utils.errors import InputError
from .manifest import normalise_stage

STAGE_RANGES: tuple[str, ...] = ("4-6", "7-8", "9-10", "11-12", "13-16")
_STATS_FILE = "flyexpress_stats.json"


@lru_cache(maxsize=1)
def _stats() -> dict:
    ref = resources.files("napari_ish_annotator").joinpath("data", _STATS_FILE)
    return json.loads(ref.read_text(encoding="utf-8"))


def resolve_stage(stage: str) -> str:
    """Map user text (``"13-17"``, ``"stage 9_10"``) to one of :data:`STAGE_RANGES`."""
    norm = normalise_stage(stage)
    if norm not in STAGE_RANGES:
        raise InputError(f"unknown stage range {stage!r}; choose one of "
                         f"{', '.join(STAGE_RANGES)} (13-17 is accepted for 13-16)")
    return norm


def default_vocabulary(stage: str) -> list[str]:
    """The ten most frequent anatomical terms of a stage range, most frequent first."""
    return list(_stats()["stages"][resolve_stage(stage)]["terms"])


def term_statistics(stage: str) -> dict:
    """Statistics of a stage range (a fresh copy, safe to modify).

    Keys: ``terms``, ``prevalence`` (fraction of lateral images per term), ``image_counts``,
    ``n_images``, ``n_gene_stages``, ``label_sets`` (one list of term indices per gene-stage
    annotation; may be empty) and ``images_per_label_set`` (lateral images behind each row,
    capped at 9; use as sampling weights to follow per-image statistics).
    """
    return copy.deepcopy(_stats()["stages"][resolve_stage(stage)])


def all_default_terms() -> list[str]:
    """Every term of every built-in vocabulary, once, in stage order."""
    seen: dict[str, None] = {}
    for stage in STAGE_RANGES:
        for term in _stats()["stages"][stage]["terms"]:
            seen.setdefault(term, None)
    return list(seen)
