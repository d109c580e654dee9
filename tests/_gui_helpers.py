"""Shared fixtures-as-functions for the GUI tests (tests/conftest.py belongs to the core)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

TERMS = ("ventral nerve cord", "brain", "hindgut")


def embryo_png(path: Path, rng: np.random.Generator, present: set[str], size=(48, 96)) -> None:
    """A pale ellipse with blue blobs where the present terms sit (tiny, fast to decode)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy - h / 2) / (h * 0.42)) ** 2 + ((xx - w / 2) / (w * 0.45)) ** 2 <= 1
    img = np.full((h, w, 3), 235, np.float32)
    img[inside] = (215, 205, 185)
    centres = {"ventral nerve cord": (0.7, 0.5), "brain": (0.35, 0.2), "hindgut": (0.4, 0.85)}
    for term in present:
        cy, cx = centres[term]
        blob = ((yy - cy * h) ** 2 + (xx - cx * w) ** 2) <= (0.12 * h) ** 2
        img[blob & inside] = (70, 60, 150)
    img += rng.normal(0, 6, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)


def make_dataset(folder: Path, n: int = 8, seed: int = 0) -> Path:
    """n images, genes in pairs, every term present in some and absent in others."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        present = {t for k, t in enumerate(TERMS) if (i >> k) & 1 or (i == 7 and k == 0)}
        name = f"embryo_{i:02d}.png"
        embryo_png(folder / name, rng, present)
        rows.append({"image": name, "terms": ";".join(t for t in TERMS if t in present),
                     "stage": "13-16", "gene": f"gene{i // 2}"})
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "terms", "stage", "gene"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def press(viewer, key: str) -> None:
    """Press a key through napari's own key-map handler (as the canvas does)."""
    viewer.window._qt_viewer._key_map_handler.press_key(key)
    viewer.window._qt_viewer._key_map_handler.release_key(key)


def dock(viewer, name: str):
    """Open one of the plugin's dock widgets through napari's plugin machinery."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-ish-annotator", name)
    return widget


WAIT_MS = 120_000


def wait_done(qtbot, runner, timeout: int = WAIT_MS) -> None:
    """Wait for a widget's background task and fail with its error if it did not finish."""
    qtbot.waitUntil(lambda: not runner.running, timeout=timeout)
    assert runner.last_outcome == "done", runner.last_error


def wait_embryo_shown(qtbot, viewer, timeout: int = WAIT_MS):
    """Wait until the embryo layer is on the canvas (a background Open adds the session's
    first one in stages on timers) and return it."""
    from napari_ish_annotator.widgets._viewer_binding import (
        OPEN_HINT,
        embryo_layer,
        text_overlay,
    )

    def shown() -> bool:
        layer = embryo_layer(viewer)
        text = text_overlay(viewer).text
        return layer is not None and layer.visible and bool(text) and text != OPEN_HINT

    qtbot.waitUntil(shown, timeout=timeout)
    return embryo_layer(viewer)
