"""The embryo layer as napari data: its name, the metadata keys the reader sets, its data.

Apart from the viewer binding so that File > Open's reader imports no session: napari
imports the reader on the GUI thread to ask whether it can read *any* file the user opens,
and the session with the learning code behind it took 0.2-0.3 s of a frozen viewer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

EMBRYO_LAYER = "ISH embryo"
META_KEY = "ish_annotator"
#: layer metadata: the inputs a reader's embryo layer asks the session to open
OPEN_KEY = "ish_open"
#: layer metadata: whether those inputs are many (read in a worker)
BACKGROUND_KEY = "ish_open_background"


def embryo_layer_data(rgb: Any, path: Path | str | None, inputs: list | None = None,
                      background: bool = False, visible: bool = True) -> tuple:
    """The embryo layer as napari layer data: the one description of it (the reader's and
    the sample data's layer, and the binding's own). ``inputs``: what the session should open
    when the layer appears (read in a worker with ``background``)."""
    metadata: dict[str, Any] = {META_KEY: "embryo", "path": str(path or "")}
    if inputs is not None:
        metadata[OPEN_KEY] = [str(p) for p in inputs]
        metadata[BACKGROUND_KEY] = bool(background)
    return rgb, {"name": EMBRYO_LAYER, "rgb": True, "visible": visible,
                 "metadata": metadata}, "image"
