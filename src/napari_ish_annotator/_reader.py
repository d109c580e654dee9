"""File > Open for manifest CSVs and folders of images: fills the Embryos session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .core.data.images import has_image_suffix, read_rgb
from .core.data.inputs import collect_inputs
from .core.data.manifest import is_manifest
from .widgets import open_in_viewer

#: from this many images on, File > Open reads them in the Embryos panel's worker (progress,
#: Cancel) instead of freezing the viewer while every file is checked and hashed
BACKGROUND_MIN_FILES = 500


def _has_images(path: Path) -> bool:
    try:
        return path.is_dir() and any(has_image_suffix(p) for p in path.iterdir())
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
                n += sum(1 for p in item.iterdir() if has_image_suffix(p))
            elif item.suffix.lower() == ".csv":
                with open(item, "rb") as fh:
                    n += max(sum(1 for _ in fh) - 1, 0)
            else:
                n += 1
        except OSError:
            pass
    return n


def open_in_session(viewer: Any, inputs: list[str | Path]) -> list[tuple]:
    """Open ``inputs`` in the viewer's session (:func:`widgets.open_in_viewer`, which shows
    the embryo layer itself); datasets of :data:`BACKGROUND_MIN_FILES` images or more open
    in the annotator's worker."""
    return open_in_viewer(viewer, inputs,
                          background=_count_images(inputs) >= BACKGROUND_MIN_FILES)


def read_dataset(path: str | list[str]) -> list[tuple]:
    """Reader function: open the dataset in the current viewer's session."""
    import napari

    paths = path if isinstance(path, list) else [path]
    viewer = napari.current_viewer()
    if viewer is None:  # no viewer to attach a session to: show the first image only

        first = collect_inputs(paths)[0]
        return [(read_rgb(first), {"name": first.name, "rgb": True}, "image")]
    return open_in_session(viewer, paths)
