"""File > Open for manifest CSVs and folders of images: fills the Embryos session."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from .core.images import SUPPORTED_SUFFIXES
from .core.manifest import is_manifest

PLUGIN = "napari-ish-annotator"
ANNOTATOR = "ISH Annotator"  # the dock with every panel (widgets.ANNOTATOR_DOCK)
#: from this many images on, File > Open reads them in the Embryos panel's worker (progress,
#: Cancel) instead of freezing the viewer while every file is checked and hashed
BACKGROUND_MIN_FILES = 500


def _has_images(path: Path) -> bool:
    try:
        return path.is_dir() and any(p.suffix.lower() in SUPPORTED_SUFFIXES for p in path.iterdir())
    except OSError:
        return False


def napari_get_reader(path: str | list[str]) -> Any:
    """Claim a manifest CSV (with an ``image`` column) or a folder holding images."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir() and is_manifest(p / "manifest.csv"):
        return read_dataset  # a dataset folder: its manifest is opened
    if is_manifest(p) or _has_images(p):
        return read_dataset
    return None


def _count_images(inputs: list[str | Path]) -> int:
    """A cheap upper bound on how many images ``inputs`` hold (names and CSV rows only)."""
    n = 0
    for item in map(Path, inputs):
        if item.is_dir() and (item / "manifest.csv").is_file():
            item = item / "manifest.csv"
        try:
            if item.is_dir():
                n += sum(1 for p in item.iterdir() if p.suffix.lower() in SUPPORTED_SUFFIXES)
            elif item.suffix.lower() == ".csv":
                with open(item, "rb") as fh:
                    n += max(sum(1 for _ in fh) - 1, 0)
            else:
                n += 1
        except OSError:
            pass
    return n


def open_in_session(viewer: Any, inputs: list[str | Path]) -> list[tuple]:
    """Open ``inputs`` in the viewer's session; return the embryo layer for napari to add.

    Large datasets open in the background in the annotator's Embryos tab; napari gets no
    layer now, and the embryo layer appears when the worker is done.
    """
    from .widgets._registry import get_session
    from .widgets._viewer_binding import embryo_layer, embryo_layer_kwargs

    session = get_session(viewer)
    if _count_images(inputs) >= BACKGROUND_MIN_FILES:
        embryos = None
        with contextlib.suppress(Exception):  # no Qt window (headless model): open below
            embryos = viewer.window.add_plugin_dock_widget(PLUGIN, ANNOTATOR)[1].embryos
        if embryos is not None and hasattr(embryos, "open_paths"):
            embryos.open_paths(list(inputs), background=True)
            return [(None,)]
    old = embryo_layer(viewer)
    if old is not None:
        viewer.layers.remove(old)
    session.defer_layer = True  # napari adds the layer we return; do not add a second one
    try:
        session.open(inputs)
    finally:
        session.defer_layer = False
    err = session.take_pending_error()
    if err is not None:
        from napari.utils.notifications import show_error

        show_error(str(err))
    if session.skipped:
        from napari.utils.notifications import show_warning

        show_warning(f"{len(session.skipped)} file(s) skipped: " + "; ".join(session.skipped[:3]))
    # no Qt window (headless model): the session is still filled
    with contextlib.suppress(Exception):
        viewer.window.add_plugin_dock_widget(PLUGIN, ANNOTATOR)
    return [(session.image(), embryo_layer_kwargs(session), "image")]


def read_dataset(path: str | list[str]) -> list[tuple]:
    """Reader function: open the dataset in the current viewer's session."""
    import napari

    paths = path if isinstance(path, list) else [path]
    viewer = napari.current_viewer()
    if viewer is None:  # no viewer to attach a session to: show the first image only
        from .core.images import read_rgb
        from .core.opening import collect_inputs

        first = collect_inputs(paths)[0]
        return [(read_rgb(first), {"name": first.name, "rgb": True}, "image")]
    return open_in_session(viewer, paths)
