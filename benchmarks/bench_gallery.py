#!/usr/bin/env python
"""Gallery dock: time to the first previews on N embryos, and the longest GUI stall while
scrolling the whole grid (issue 26 targets: <= 2 s to first thumbnails at 2,000 embryos,
no stall over 0.25 s while scrolling).

    xvfb-run -a python benchmarks/bench_gallery.py [N]        # default 2000

Writes N embryo-sized PNGs (240 x 480 px noise: decoding costs like a BDGP image), opens them
in a napari viewer, opens the Gallery dock and measures, with a cold and then a warm preview
cache: the dock's opening (model + first layout) and the time until the first 40 previews
(about a screenful) are on the grid. Then it scrolls from top to bottom in 20 steps while a
10 ms timer records the longest gap of the event loop.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _wait(app, cond, timeout: float = 120.0) -> float:
    t0 = time.perf_counter()
    while not cond():
        app.processEvents()
        time.sleep(0.002)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("gave up waiting")
    return time.perf_counter() - t0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    import napari
    from qtpy.QtCore import QElapsedTimer, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_ish_annotator.widgets import session_of as get_session

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        rng = np.random.default_rng(0)
        base = rng.integers(0, 255, (240, 480, 3), dtype=np.uint8)
        for i in range(n):
            img = base.copy()
            img[i % 240, :, :] = i % 251  # distinct content hash per file
            Image.fromarray(img).save(folder / f"emb{i:05d}.png", compress_level=1)
        viewer = napari.Viewer(show=True)
        app = QApplication.instance()
        session = get_session(viewer)
        session.cache_dir = Path(tmp) / "cache"
        session.open([folder])
        for label in ("cold", "warm"):
            t0 = time.perf_counter()
            _, gallery = viewer.window.add_plugin_dock_widget("napari-ish-annotator", "Gallery")
            t_open = time.perf_counter() - t0
            first = _wait(app, lambda g=gallery: len(g.model.icons) >= min(40, n))
            print(f"{label} preview cache, {n} embryos: dock open {t_open:.2f} s, first 40 "
                  f"previews {t_open + first:.2f} s after the click")
            if label == "cold":
                _wait(app, lambda g=gallery: not g.loading, timeout=1800)
                viewer.window.remove_dock_widget(gallery.parent() or gallery)
        # scrolling: the longest event-loop gap while paging through the grid
        gaps: list[float] = []
        clock = QElapsedTimer()
        clock.start()
        last = [clock.elapsed()]

        def tick() -> None:
            now = clock.elapsed()
            gaps.append((now - last[0]) / 1000.0)
            last[0] = now
        timer = QTimer()
        timer.timeout.connect(tick)
        timer.start(10)
        bar = gallery.view.verticalScrollBar()
        _wait(app, lambda: bar.maximum() > 0, timeout=30)
        for k in range(21):
            bar.setValue(int(bar.maximum() * k / 20))
            end = time.perf_counter() + 0.1
            while time.perf_counter() < end:
                app.processEvents()
        timer.stop()
        print(f"scrolling {n} embryos top to bottom in 20 steps: longest GUI stall "
              f"{max(gaps):.3f} s (target <= 0.25 s)")
        viewer.close()


if __name__ == "__main__":
    main()
