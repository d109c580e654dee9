"""The Embryos list as a Qt model over the session's arrays: nothing per row is built up front.

Qt asks only for the rows on screen, so opening 100,000 images costs a model reset, and new
predictions cost one ``dataChanged``. Sorting and filtering are numpy over whole columns
(the proxy's own sort would call back into Python for every comparison).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt

from ..core.learn.decision import calls
from ..session import AnnotatorSession

COLUMNS = ("#", "image", "gene", "stage", "labelled", "top predicted")
IMAGE_ROLE = Qt.ItemDataRole.UserRole  # the image index of a row
MATCH_ROLE = Qt.ItemDataRole.UserRole + 1  # "1" if the row matches the filter text
DISPLAY = Qt.ItemDataRole.DisplayRole
TOOLTIP = Qt.ItemDataRole.ToolTipRole


class EmbryoTableModel(QAbstractTableModel):
    """One row per open image; row order is a permutation kept in ``order``."""

    def __init__(self, session: AnnotatorSession) -> None:
        super().__init__()
        self.session = session
        self.order = np.arange(0, dtype=np.int64)  # row -> image index
        self.n_labelled = np.zeros(0, np.int32)
        self.n_present = np.zeros(0, np.int32)
        self.n_terms = 0
        self.sort_key: tuple[int, bool] = (0, False)
        self.mask: np.ndarray | None = None  # images matching the filter (None: all)
        self.restrict: np.ndarray | None = None  # e.g. "annotators disagree" (None: all)

    # ------------------------------------------------------------------ Qt model API
    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self.order)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Any, role: int = DISPLAY) -> Any:  # noqa: N802
        if role == DISPLAY and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section]
        return None

    def data(self, index: QModelIndex, role: int = DISPLAY) -> Any:
        if not index.isValid():
            return None
        i = int(self.order[index.row()])
        c = index.column()
        if role == IMAGE_ROLE:
            return i
        if role == MATCH_ROLE:
            return "1" if self.mask is None or self.mask[i] else "0"
        if role == DISPLAY:
            return self.text(i, c)
        if role == TOOLTIP:
            if c == 1:
                return str(self.session.paths[i])
            if c == 4 and i < len(self.n_labelled):
                return f"{self.n_present[i]} present, {self.n_labelled[i] - self.n_present[i]} absent"
            if c == 5:
                return "\n".join(f"{p:.2f}  {t}" for t, p in self.session.model.top_terms(i, 10))
        return None

    def text(self, i: int, column: int) -> str:
        s = self.session
        if column == 0:
            return str(i + 1)
        if column == 1:
            return s.paths[i].name
        if column == 2:
            return s.genes[i] or ""
        if column == 3:
            return s.stages[i] or ""
        if column == 4:
            return f"{self.n_labelled[i]}/{self.n_terms}" if i < len(self.n_labelled) else ""
        top = s.model.top_terms(i, 3)
        return ", ".join(f"{t} {p:.2f}" for t, p in top if calls(p)) or ("–" if top else "")

    # ------------------------------------------------------------------ session changes
    def reset(self) -> None:
        """A new dataset: counts from the session's label matrix, rows in file order."""
        self.beginResetModel()
        self.order = np.arange(self.session.n_images, dtype=np.int64)
        self.sort_key = (0, False)
        self._count(None)
        self.endResetModel()

    def _count(self, rows: list[int] | None) -> None:
        Y = self.session.labels.label_matrix()
        self.n_terms = Y.shape[1]
        if rows is None or len(self.n_labelled) != len(Y):
            self.n_labelled = (Y >= 0).sum(axis=1, dtype=np.int32)
            self.n_present = (Y == 1).sum(axis=1, dtype=np.int32)
        else:
            self.n_labelled[rows] = (Y[rows] >= 0).sum(axis=1)
            self.n_present[rows] = (Y[rows] == 1).sum(axis=1)

    def labels_changed(self, images: list[int] | None) -> None:
        if not len(self.order):
            return
        few = images and len(images) < len(self.order)
        self._count(list(images) if few else None)
        if few:
            where = np.flatnonzero(np.isin(self.order, images))
            for r in where.tolist():
                self.dataChanged.emit(self.index(r, 4), self.index(r, 4))
        else:
            self.dataChanged.emit(self.index(0, 4), self.index(len(self.order) - 1, 4))
        if self.sort_key[0] == 4:
            self.sort(4, Qt.SortOrder.DescendingOrder if self.sort_key[1]
                      else Qt.SortOrder.AscendingOrder)

    def predictions_changed(self) -> None:
        """New probabilities: Qt re-asks for the visible rows only."""
        if len(self.order):
            self.dataChanged.emit(self.index(0, 5), self.index(len(self.order) - 1, 5))

    def put_first(self, images: np.ndarray) -> None:
        """Rows in this order first (e.g. "next to label"), the other images after them."""
        n = self.session.n_images
        images = np.asarray(images, np.int64)
        rest = np.setdiff1d(np.arange(n, dtype=np.int64), images, assume_unique=False)
        perm = np.concatenate([images, rest])
        self.layoutAboutToBeChanged.emit()
        old = self.order
        self.order = perm
        self.sort_key = (-1, False)
        inverse = np.empty(n, np.int64)
        inverse[self.order] = np.arange(n)
        froms = self.persistentIndexList()
        self.changePersistentIndexList(
            froms, [self.index(int(inverse[old[p.row()]]), p.column()) for p in froms])
        self.layoutChanged.emit()

    def row_of(self, image: int) -> int:
        hit = np.flatnonzero(self.order == image)
        return int(hit[0]) if len(hit) else -1

    # ------------------------------------------------------------------ sorting
    def sort(self, column: int, order: Any = Qt.SortOrder.AscendingOrder) -> None:
        """Sort rows by a column with numpy (stable; file order breaks ties)."""
        s = self.session
        n = s.n_images
        if not n:
            return
        descending = order == Qt.SortOrder.DescendingOrder
        if column == 0:
            key: Any = np.arange(n)
        elif column in (1, 2, 3):
            values = ([p.name for p in s.paths], s.genes, s.stages)[column - 1]
            key = np.asarray([v or "" for v in values])
        elif column == 4:
            key = self.n_labelled
        else:
            P = s.model.probabilities
            key = (np.zeros(n) if P is None or not P.shape[1]
                   else np.nan_to_num(np.nanmax(np.where(np.isnan(P), -1, P), axis=1), nan=-1))
        perm = np.argsort(key, kind="stable")
        if descending:
            perm = perm[::-1]
        self.layoutAboutToBeChanged.emit()
        old = self.order
        self.order = perm.astype(np.int64)
        self.sort_key = (column, descending)
        # keep Qt's persistent indexes (selection, current row) on their images
        inverse = np.empty(n, np.int64)
        inverse[self.order] = np.arange(n)
        froms = self.persistentIndexList()
        tos = [self.index(int(inverse[old[p.row()]]), p.column()) for p in froms]
        self.changePersistentIndexList(froms, tos)
        self.layoutChanged.emit()

    def matching(self, text: str) -> np.ndarray | None:
        """Bool mask of images whose name, gene, stage or top terms contain ``text``."""
        text = text.strip().lower()
        if not text:
            return None
        s = self.session
        hits = [text in f"{p.name} {g or ''} {st or ''}".lower()
                for p, g, st in zip(s.paths, s.genes, s.stages, strict=True)]
        mask = np.asarray(hits, dtype=bool)
        P = s.model.probabilities
        terms = [j for j, t in enumerate(s.model.terms) if text in t.lower()]
        if P is not None and terms:
            mask |= calls(P[:, terms]).any(axis=1)
        return mask


class EmbryoFilterProxy(QSortFilterProxyModel):
    """Filters by the source's precomputed match mask; sorting is the source's (numpy).

    With no filter text Qt accepts every row without asking the model, so a reset of
    100,000 rows never calls back into Python per row.
    """

    def __init__(self, source: EmbryoTableModel) -> None:
        super().__init__()
        self.setSourceModel(source)
        self.setFilterRole(MATCH_ROLE)
        self._text = ""

    def set_filter(self, text: str) -> None:
        self._text = text
        source: EmbryoTableModel = self.sourceModel()
        mask = source.matching(text)
        if source.restrict is not None and len(source.restrict) == source.session.n_images:
            mask = source.restrict if mask is None else mask & source.restrict
        source.mask = mask
        want = "" if source.mask is None else "1"
        if self.filterRegularExpression().pattern() == want:
            self.invalidateFilter()
        else:
            self.setFilterFixedString(want)

    def refilter(self) -> None:
        """Labels or predictions changed: recompute the mask if a filter is active."""
        source: EmbryoTableModel = self.sourceModel()
        if source.mask is not None or source.restrict is not None:
            self.set_filter(self._text)

    def sort(self, column: int, order: Any = Qt.SortOrder.AscendingOrder) -> None:
        if column >= 0:  # -1: the indicator was cleared (a ranking put its rows first)
            self.sourceModel().sort(column, order)
