"""File > Save for the embryo layer: the session's labels as a manifest CSV (+ predictions)."""

from __future__ import annotations

from typing import Any

from .core.utils.errors import InputError
from .widgets import session_of


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Single-layer writer for the embryo image layer: write the session's labels to ``path``
    (manifest CSV, ``terms`` = present labels) and, when there are predictions,
    ``<stem>.predictions.csv`` beside it (``image`` + one column per term)."""
    import napari

    viewer = napari.current_viewer()
    if viewer is None:
        raise InputError("no viewer with an open ISH dataset; open one in the Embryos panel")
    session = session_of(viewer)
    return session.export_all(path)
