"""File > Save for the embryo layer: the session's labels as a manifest CSV (+ predictions)."""

from __future__ import annotations

from pathlib import Path
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
    return export_session(session, path)


def export_session(session: Any, path: str | Path) -> list[str]:
    path = Path(path)
    if path.suffix.lower() != ".csv":
        path = path.with_suffix(".csv")
    session.export_manifest(path)
    written = [str(path)]
    if session.probabilities is not None:
        pred = path.with_name(f"{path.stem}.predictions.csv")
        session.export_predictions(pred)
        written.append(str(pred))
    return written
