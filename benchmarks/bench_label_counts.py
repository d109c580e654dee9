"""GUI-thread cost of the label counts for a large folder (what the Embryos table shows).

    python benchmarks/bench_label_counts.py [N] [--gui]

Tiny distinct PNGs: hashing and header checks run in the open worker and are not measured.
Prints the store's label matrix over all N images (half labelled by an imported manifest, some
by the user), one row (a keypress), and switching the label file (worker part vs GUI part).
``--gui`` (needs a display, e.g. ``xvfb-run -a``) also builds the Embryos panel (hidden napari
viewer) over the same labelled store and times what opening N images costs on the GUI thread
and how often the labels are recounted.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _images(folder: Path, n: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
            folder / f"emb{i:05d}.png")


def _gui(tmp: Path, folder: Path, terms: list[str]) -> None:
    import napari

    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.session import steps
    from napari_ish_annotator.widgets import session_of as get_session
    from napari_ish_annotator.widgets.embryos import EmbryosWidget

    viewer = napari.Viewer(show=False)
    try:
        embryos = EmbryosWidget(viewer)
        session = get_session(viewer)
        opened = drive(steps.iter_open(session.open_request(
            [folder], store_path=tmp / "a.sqlite", vocabulary=terms)))  # the worker's part
        calls, spent = [], {}
        matrix = session.labels.label_matrix

        def counted(indices=None):
            calls.append(1)
            return matrix(indices)

        session.labels.label_matrix = counted
        rebuild = embryos._rebuild

        def timed_rebuild() -> None:
            t = time.perf_counter()
            rebuild()
            spent["rebuild"] = time.perf_counter() - t

        session.dataset_changed.disconnect(embryos._rebuild)
        session.dataset_changed.connect(timed_rebuild)
        t0 = time.perf_counter()
        session.apply_open(opened)
        t1 = time.perf_counter()
        recounts = len(calls)
        embryos._labels_changed(None)
        t2 = time.perf_counter()
        print(f"Embryos panel on open (table rows, label counts, predictions, filter): "
              f"{1000 * spent['rebuild']:.0f} ms; all open signals incl. the first image "
              f"layer: {1000 * (t1 - t0):.0f} ms; full label recounts: {recounts}")
        print(f"Embryos label counts refresh, all rows: {1000 * (t2 - t1):.0f} ms")
    finally:
        viewer.close()


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 10000
    from napari_ish_annotator.core.data.manifest import Dataset, Sample
    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.session import AnnotatorSession, steps

    terms = [f"term{k}" for k in range(12)]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "imgs"
        _images(folder, n)
        session = AnnotatorSession(cache_dir=tmp / "cache")
        session.open([folder], store_path=tmp / "a.sqlite", vocabulary=terms)
        samples = [Sample(image=p, terms=(terms[i % 12],)) for i, p in enumerate(session.paths)
                   if i % 2 == 0]
        session.labels.import_manifest_labels(Dataset(samples=samples, vocabulary=terms), emit=False)
        for i in range(0, n, max(1, n // 50)):
            session.labels.set_label(terms[1], 1, index=i)
        t0 = time.perf_counter()
        Y = session.labels.label_matrix()
        t1 = time.perf_counter()
        session.labels.label_matrix([n // 2])
        t2 = time.perf_counter()
        switched = drive(steps.iter_use_store(*session.store_request(tmp / "b.sqlite")))
        t3 = time.perf_counter()
        session.apply_store(switched)
        t4 = time.perf_counter()
        session.close()
        print(f"images: {n}, terms: {len(terms)}, labelled rows: {int((Y >= 0).any(1).sum())}")
        print(f"label matrix, all images: {1000 * (t1 - t0):.0f} ms")
        print(f"label matrix, one row (keypress): {1000 * (t2 - t1):.1f} ms")
        print(f"switch label file: worker {1000 * (t3 - t2):.0f} ms, "
              f"GUI thread {1000 * (t4 - t3):.0f} ms")
        if "--gui" in sys.argv:
            _gui(tmp, folder, terms)


if __name__ == "__main__":
    main()
