"""File > Save for the embryo layer: the session's labels as a manifest CSV (+ predictions).

Layer-driven: the session is the one that owns the layer being saved (the viewer binding
tags its embryo layer's metadata), never "the current viewer's": with two viewers open, each
embryo layer saves its own session's labels.
"""

from __future__ import annotations

from typing import Any

from .core.utils.errors import InputError
from .widgets._layer_data import EMBRYO_LAYER
from .widgets._viewer_binding import layer_session


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Single-layer writer for the embryo image layer: write its session's labels to ``path``
    (manifest CSV, ``terms`` = present labels) and, when there are predictions,
    ``<stem>.predictions.csv`` beside it (``image`` + one column per term)."""
    session = layer_session(meta.get("metadata") or {})
    if session is None:
        raise InputError(
            f"layer {meta.get('name', '')!r} holds no ISH Annotator labels to save; select "
            f"the {EMBRYO_LAYER!r} layer of images opened in the Embryos panel, or save this "
            "layer as another file type")
    return session.export_all(path)
