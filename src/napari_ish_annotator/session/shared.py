"""What every part of a session reads: the signals, the open dataset, the vocabulary, the
label store, the settings and which image is shown (no Qt, no napari imports).

:class:`.state.AnnotatorSession` builds on it and composes the parts (:mod:`.labels`,
:mod:`.model`), which are given this state, never each other's insides.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

from ..core.learn.splits import group_ids
from .owned import OwnedByOneThread
from .results import SessionSettings

if TYPE_CHECKING:
    from ..core.data.manifest import Dataset
    from ..core.labels.store import LabelStore


class SessionState(OwnedByOneThread):
    """The signals and the shared data of a session; written only by its own thread."""

    dataset_changed = Signal()
    current_changed = Signal(int)
    vocabulary_changed = Signal()
    labels_changed = Signal(object)  # list[int] of image indices whose labels changed
    features_changed = Signal()
    model_changed = Signal()
    predictions_changed = Signal()
    settings_changed = Signal()
    term_selected = Signal(str)  # a widget asks "explain this term"
    table_selected = Signal(object)  # list[int]: images picked in the embryo table layer
    train_report_changed = Signal()
    label_order_changed = Signal()  # a new "next to label" ranking (session.model_outputs)

    def __init__(self, cache_dir: str | Path | None = None, annotator: str | None = None):
        super().__init__()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.annotator = annotator
        self.settings = SessionSettings()
        self.paths: tuple[Path, ...] = ()
        self.genes: tuple[str | None, ...] = ()
        self.stages: tuple[str | None, ...] = ()
        self.manifest_terms: tuple[tuple[str, ...] | None, ...] = ()
        self.source: Path | None = None
        self.dataset: Dataset | None = None
        self.skipped: tuple[str, ...] = ()
        self.vocabulary: list[str] = []
        self.store: LabelStore | None = None
        self.store_read_only = False
        self.index = -1
        self.generation = 0  # bumped on every open: late worker results are dropped

    @property
    def n_images(self) -> int:
        return len(self.paths)

    @property
    def current_path(self) -> Path | None:
        return self.paths[self.index] if 0 <= self.index < len(self.paths) else None

    def groups(self) -> np.ndarray:
        """Grouped-CV ids of the open images (by gene; see core.learn.splits.group_ids)."""
        return group_ids(self.genes, self.stages)

    # ------------------------------------------------------------------ settings
    def update_settings(self, **values: Any) -> None:
        """Replace some settings (unknown names raise) and tell the panels."""
        unknown = [k for k in values if k not in SessionSettings.__dataclass_fields__]
        if unknown:
            raise AttributeError(", ".join(unknown))
        new = replace(self.settings, **values)
        if new != self.settings:
            self.settings = new
            self.settings_changed.emit()

    # ------------------------------------------------------------------ navigation
    def set_index(self, index: int) -> None:
        if not self.paths:
            return
        index = int(np.clip(index, 0, len(self.paths) - 1))
        if index != self.index:
            self.index = index
            self.current_changed.emit(index)

    def step(self, delta: int) -> None:
        self.set_index(self.index + delta)

    def name(self, index: int) -> str:
        return self.paths[index].name
