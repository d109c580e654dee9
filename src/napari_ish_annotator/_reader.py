"""File > Open for manifest CSVs and folders of images: plain napari layer data.

The reader never touches the viewer: it returns the embryo layer (the first image, tagged
with the inputs to open, :func:`~.widgets._layer_data.embryo_layer_data`) and the
viewer's :class:`~.widgets._viewer_binding.ViewerBinding` opens them in the session when
napari adds it (at once, or when the ISH Annotator panel is opened).
"""

from __future__ import annotations

import csv
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from .core.data.images import read_rgb
from .core.data.inputs import iter_images, list_images
from .core.data.manifest import is_manifest
from .core.utils.errors import InputError
from .widgets._layer_data import embryo_layer_data
from .widgets._loading import freeze_long_lived

#: from this many images on, opening (header checks, content hashes) runs in the Embryos
#: panel's worker with progress and Cancel; below it (~10 ms an image) it runs at once
BACKGROUND_MIN_FILES = 16


def _has_images(path: Path) -> bool:
    try:
        return path.is_dir() and next(iter_images(path), None) is not None
    except (OSError, InputError):
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


def _manifest_of(item: Path) -> Path:
    return item / "manifest.csv" if item.is_dir() and (item / "manifest.csv").is_file() else item


def _holds_many(inputs: list[str | Path], many: int) -> bool:
    """Whether ``inputs`` hold at least ``many`` images, by a cheap upper bound (folder
    entries and CSV rows), counting no further than ``many``."""
    n = 0
    for item in map(_manifest_of, map(Path, inputs)):
        try:
            if item.is_dir():
                n += sum(1 for _ in islice(iter_images(item), many))
            elif item.suffix.lower() == ".csv":
                with open(item, "rb") as fh:
                    n += max(sum(1 for _ in islice(fh, many + 1)) - 1, 0)
            else:
                n += 1
        except (OSError, InputError):
            pass
        if n >= many:
            return True
    return False


def _first_candidates(item: Path, limit: int = 3) -> list[Path]:
    """The first few images ``item`` names, without listing or checking all of them."""
    if item.is_dir():
        return list_images(item)[:limit]
    if item.suffix.lower() != ".csv":
        return [item]
    out: list[Path] = []
    with open(item, newline="", encoding="utf-8", errors="replace") as fh:
        for row in csv.DictReader(fh):
            name = (row.get("image") or "").strip()
            if name:
                p = Path(name)
                out.append(p if p.is_absolute() else item.parent / p)
            if len(out) >= limit:
                break
    return out


def first_image(inputs: list[str | Path]) -> tuple[np.ndarray, Path | None]:
    """The first readable image of ``inputs`` (a grey pixel if none of the first few reads:
    the session's open then says what is wrong)."""
    for item in map(_manifest_of, map(Path, inputs)):
        try:
            candidates = _first_candidates(item)
        except (OSError, csv.Error, InputError):
            continue
        for path in candidates:
            try:
                return read_rgb(path), path
            except (InputError, OSError):
                continue
    return np.full((1, 1, 3), 128, np.uint8), None


def read_dataset(path: str | list[str]) -> list[tuple]:
    """Reader function: the embryo layer's data, asking the session to open ``path``.

    napari builds the viewer's first layer from it at once, on the GUI thread: pint's unit
    registry and the xarray/pandas imports set off full garbage collections over napari's
    and Qt's objects (0.1-0.18 s each, there and when the panel opens next), so what lives
    now is frozen first (:func:`~.widgets._loading.freeze_long_lived`; undone when the last
    ISH session closes, kept for the process if no panel ever opens)."""
    freeze_long_lived("File > Open")
    paths = path if isinstance(path, list) else [path]
    rgb, first = first_image(paths)
    return [embryo_layer_data(rgb, first, paths,
                              background=_holds_many(paths, BACKGROUND_MIN_FILES))]
