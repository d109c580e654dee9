"""The Embryos list is a Qt model over the session's arrays: 100,000 images open at once."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from _gui_helpers import dock, make_dataset

pytestmark = pytest.mark.gui

N = 100_000


def _opened(first: Path, n: int, n_terms: int = 12):
    """An opening step's result for n images (only the first exists: nothing else is read)."""
    from napari_ish_annotator.session import OpenedDataset

    rng = np.random.default_rng(0)
    paths = (first, *(first.with_name(f"img_{i:06d}.png") for i in range(1, n)))
    genes = tuple(f"gene{i // 4}" for i in range(n))
    labels = rng.integers(-1, 2, size=(n, n_terms), dtype=np.int8)
    return OpenedDataset(paths, genes, ("13-16",) * n, (None,) * n, None, (), first.parent,
                         "13-16", tuple(f"term{k}" for k in range(n_terms)), None, False, None,
                         labels)


def test_100000_images_open_sort_and_filter_quickly(make_napari_viewer, qtbot, tmp_path):
    from napari_ish_annotator.session import Predictions

    viewer = make_napari_viewer()
    embryos = dock(viewer, "Embryos")
    # a first small dataset: napari's one-time imports for its first image layer happen here
    assert embryos.open_paths([make_dataset(tmp_path / "data", n=2)])
    s = embryos.session
    opened = _opened(tmp_path / "data" / "embryo_00.png", N)
    qtbot.wait(10)
    t0 = time.perf_counter()
    s.apply_open(opened)  # everything the GUI thread does after the worker's part
    opened_in = time.perf_counter() - t0
    assert embryos.row_count() == N
    assert embryos.cell_text(N - 1, 1) == f"img_{N - 1:06d}.png"
    assert embryos.cell_text(5, 4) == f"{int((opened.labels[5] >= 0).sum())}/12"
    print(f"open {N} images: {1000 * opened_in:.0f} ms on the GUI thread")
    assert opened_in < 0.4  # target 0.2 s (measured ~0.05 s idle; CI machines are loaded)

    P = np.random.default_rng(1).random((N, 12)).astype(np.float32)
    s.model.bundle = type("B", (), {"classifier": type("C", (), {"vocabulary": list(s.vocabulary)})})
    t0 = time.perf_counter()
    s.model.apply_predictions(Predictions(P, P >= 0.5, s.generation))
    assert time.perf_counter() - t0 < 0.2  # only the visible rows are redrawn
    t0 = time.perf_counter()
    embryos.sort_by(1, descending=True)
    assert time.perf_counter() - t0 < 1.0
    assert embryos.image_at(0) == N - 1
    embryos.select_row(0)
    assert s.index == N - 1

    embryos.filter_edit.setText("IMG_00002")  # images 20..29, by name
    assert embryos.row_count() == 10
    assert sorted(embryos.image_at(r) for r in range(10)) == list(range(20, 30))
    embryos.filter_edit.setText("")
    assert embryos.row_count() == N
    embryos.table.scrollToBottom()  # Qt asks for the rows on screen only
    qtbot.wait(10)
