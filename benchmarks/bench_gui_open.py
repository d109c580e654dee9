"""How long the GUI session takes to open a folder of N images (no pixels decoded up front).

    python benchmarks/bench_gui_open.py [N]

Prints the time for AnnotatorSession.open (header check, content hashes into the label
store, vocabulary), one label change, and the label matrix the Embryos table shows.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    from napari_ish_annotator.session import AnnotatorSession

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(0)
        for i in range(n):  # BDGP-sized JPEG-like payloads are ~30 kB; PNG of noise is similar
            img = rng.integers(0, 255, (120, 240, 3), dtype=np.uint8)
            Image.fromarray(img).save(folder / f"emb{i:05d}.png")
        session = AnnotatorSession(cache_dir=folder / "cache")
        t0 = time.perf_counter()
        session.open([folder])
        t1 = time.perf_counter()
        session.labels.set_label(session.vocabulary[0], 1, index=n // 2)
        t2 = time.perf_counter()
        Y = session.labels.label_matrix()
        t3 = time.perf_counter()
        session.image(0)
        t4 = time.perf_counter()
        session.close()
    print(f"images: {n}")
    print(f"open folder (headers + hashes + label store): {t1 - t0:.2f} s")
    print(f"one label change (SQLite transaction): {1000 * (t2 - t1):.1f} ms")
    print(f"label matrix {Y.shape}: {1000 * (t3 - t2):.1f} ms")
    print(f"decode the image on screen: {1000 * (t4 - t3):.1f} ms")


if __name__ == "__main__":
    main()
