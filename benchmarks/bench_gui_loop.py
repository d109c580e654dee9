"""The annotation loop in a real viewer: Train (CV on) vs `ish-annotator train`, and how long
the GUI event loop is ever blocked during open, extract, train, predict, Grad-CAM, fine-tuning.

Synthetic data shaped like the BDGP check in issue 8: 167 images, 8 genes, 73 terms, features
cached (EfficientNet-Lite0, the offline ImageNet weights). A 10 ms QTimer on the GUI thread
records the longest gap between its ticks while each step runs in the panel's worker.

    xvfb-run -a python benchmarks/bench_gui_loop.py [--quick] [--why]
    python benchmarks/bench_gui_loop.py --headless [--profile]
    xvfb-run -a python benchmarks/bench_gui_loop.py --first-train [--bdgp] [--images N]
    xvfb-run -a python benchmarks/bench_gui_loop.py --open-only [--pause S] [--profile] [...]

``--first-train``: File > Open then Train (CV on) at once, as a biologist does, in a fresh
viewer whose feature cache is warm (an earlier `ish-annotator train` filled it), against
`ish-annotator train` on the same data; then Train again. ``--bdgp`` draws genes and their
stage 13-16 terms from the real FlyExpress annotations (/work/shared/data/flyexpress): most
terms are present in only one or two genes.

``--open-only`` (``--bdgp``, ``--images`` too): that File > Open, then after ``--pause`` s of
running event loop (default 1, the user's way to Plugins > ISH Annotator; 0: in one go as
``--first-train`` has it) the annotator dock: the longest GUI gap of each (``--profile``:
cProfile of the GUI thread).

``--headless`` times only the Train step: the session's train step (CV on, in a worker thread,
as the panel runs it; no viewer) against `ish-annotator train` in the same run, plus the CLI's
own fit in-process (no interpreter start or imports); ``--profile`` adds a cProfile of the
session's train step (the top functions by cumulative time).
"""

from __future__ import annotations

import cProfile
import csv
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_IMAGES, N_GENES, N_TERMS = 167, 8, 73
BACKBONE, WEIGHTS, SIZE = "efficientnet_lite0", "imagenet", 224


def make_manifest(root: Path) -> Path:
    """167 synthetic embryos; 73 terms, each present in some genes and absent in others."""
    import numpy as np

    from napari_ish_annotator.core.synthetic.embryos import generate_dataset

    base = Path(generate_dataset(root / "imgs", N_IMAGES, stage="13-16", seed=0,
                                 size=(128, 320), n_genes=N_GENES))
    base = base if base.suffix == ".csv" else base / "manifest.csv"
    with open(base, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    rng = np.random.default_rng(0)
    terms = [f"term {k:02d}" for k in range(N_TERMS)]
    genes = sorted({r["gene"] for r in rows})
    by_gene = {g: rng.random(N_TERMS) < rng.uniform(0.15, 0.5) for g in genes}
    out = root / "manifest.csv"
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "terms", "stage", "gene"])
        w.writeheader()
        for r in rows:
            present = by_gene[r["gene"]] ^ (rng.random(N_TERMS) < 0.05)
            w.writerow({"image": str(base.parent / r["image"]), "stage": "13-16",
                        "gene": r["gene"], "terms": ";".join(t for t, p in zip(terms, present,
                                                                                 strict=True) if p)})
    return out


FLYEXPRESS = Path(os.environ.get("ISH_FLYEXPRESS", "/work/shared/data/flyexpress"))


def make_bdgp_manifest(root: Path, n_images: int = N_IMAGES, seed: int = 0) -> Path:
    """Synthetic embryos labelled like BDGP stage 13-16: real genes' term sets and image
    counts (FlyExpress), genes drawn until ``n_images`` images; ``terms`` are the real ones."""
    import ast

    import numpy as np

    from napari_ish_annotator.core.synthetic.embryos import generate_dataset

    with open(FLYEXPRESS / "standard_annotations.csv", encoding="utf-8") as fh:
        terms_of = {r["gene"]: ast.literal_eval(r["annotation"]) for r in csv.DictReader(fh)
                    if r["stage"] == "6"}
    with open(FLYEXPRESS / "standard_images.csv", encoding="utf-8") as fh:
        n_of: dict[str, int] = {}
        for r in csv.DictReader(fh):
            if r["stage"] == "6" and r["gene"] in terms_of:
                n_of[r["gene"]] = n_of.get(r["gene"], 0) + len(ast.literal_eval(r["image_url"]))
    rng = np.random.default_rng(seed)
    genes, rows = list(rng.permutation(sorted(n_of))), []
    while len(rows) < n_images:
        gene = genes.pop()
        rows += [(gene, terms_of[gene])] * min(n_of[gene], n_images - len(rows))
    base = Path(generate_dataset(root / "imgs", n_images, stage="13-16", seed=seed,
                                 size=(128, 320), n_genes=len({g for g, _ in rows})))
    base = base if base.suffix == ".csv" else base / "manifest.csv"
    with open(base, encoding="utf-8") as fh:
        images = [r["image"] for r in csv.DictReader(fh)]
    out = root / "manifest.csv"
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "terms", "stage", "gene"])
        w.writeheader()
        for image, (gene, terms) in zip(images, rows, strict=True):
            w.writerow({"image": str(base.parent / image), "terms": ";".join(terms),
                        "stage": "13-16", "gene": gene})
    return out


def cli_train(manifest: Path, out: Path) -> float:
    cmd = [sys.executable, "-m", "napari_ish_annotator.cli", "train", str(manifest), "--out",
           str(out), "--backbone", BACKBONE, "--weights", WEIGHTS, "--device", "cpu", "-q"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


class GapMeter:
    """Longest gap between 10 ms QTimer ticks on the GUI thread; with ``why``, a watchdog
    thread prints where the GUI thread was when a tick is more than 0.15 s late."""

    def __init__(self, why: bool = False) -> None:
        from qtpy.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.last = time.perf_counter()
        self.worst = 0.0
        if why:
            import threading

            threading.Thread(target=self._watch, args=(threading.get_ident(),),
                             daemon=True).start()

    def _watch(self, gui: int) -> None:
        import traceback

        reported = 0.0
        while True:
            time.sleep(0.05)
            late = time.perf_counter() - self.last
            try:
                active = self.timer.isActive()
            except RuntimeError:  # the QTimer went with the application: the run is over
                return
            if active and late > 0.15 and self.last != reported:
                reported = self.last
                where = "".join(f"[{'GUI' if tid == gui else tid}]\n"
                                + "".join(traceback.format_stack(frame)[-3:])
                                for tid, frame in sys._current_frames().items())
                print(f"--- GUI thread {late:.2f} s late; threads at:\n{where}", file=sys.stderr)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.worst = max(self.worst, now - self.last)
        self.last = now

    def start(self) -> None:
        self.last, self.worst = time.perf_counter(), 0.0
        self.timer.start()

    def stop(self) -> float:
        self.timer.stop()
        return self.worst


def headless(profile: bool = False, repeats: int = 3) -> None:
    """Train with CV through the session (worker thread, no viewer) vs the CLI, same run."""
    from concurrent.futures import ThreadPoolExecutor

    from napari_ish_annotator.core.data.manifest import read_manifest
    from napari_ish_annotator.core.features.extractor import ExtractorConfig
    from napari_ish_annotator.core.learn.logistic import EnsembleConfig
    from napari_ish_annotator.core.utils.progress import drive, throttled
    from napari_ish_annotator.core.workflow import iter_train
    from napari_ish_annotator.session import AnnotatorSession, steps

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cache = tmp / "cache"
        os.environ["ISH_ANNOTATOR_CACHE"] = str(cache)
        manifest = make_manifest(tmp)
        cli_train(manifest, tmp / "model0")  # fills the feature cache
        cli = [cli_train(manifest, tmp / f"model{k + 1}") for k in range(repeats)]
        dataset = read_manifest(manifest)
        config = ExtractorConfig(backbone=BACKBONE, weights=WEIGHTS, layer="stage5",
                                 input_size=SIZE, device="cpu")
        ensemble = EnsembleConfig(n_members=11, C=10.0)
        fit = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            drive(iter_train(dataset, config, ensemble, cache_dir=cache))
            fit.append(time.perf_counter() - t0)

        s = AnnotatorSession(cache_dir=cache)
        s.open([manifest], store_path=tmp / "labels.sqlite")
        s.update_settings(backbone=BACKBONE, weights=WEIGHTS, layer="stage5", input_size=SIZE,
                          device="cpu", n_members=11, C=10.0)
        s.model.apply_features(drive(steps.iter_extract(s.model.extract_request())))
        gui = []
        with ThreadPoolExecutor(1) as pool:
            for k in range(repeats + profile):
                request = s.model.train_request(cross_validate=True)  # built on the GUI thread
                t0 = time.perf_counter()
                if k == repeats:  # the profiled run is not timed
                    prof = cProfile.Profile()
                    pool.submit(prof.runcall, drive, throttled(steps.iter_train(request))).result()
                    pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(30)
                    break
                s.model.apply_trained(pool.submit(drive, throttled(steps.iter_train(request))).result())
                gui.append(time.perf_counter() - t0)
        s.close()
    best = min(cli)
    print(f"{N_IMAGES} images, {N_GENES} genes, {N_TERMS} terms, {BACKBONE} features cached; "
          f"best of {repeats}")
    print(f"`ish-annotator train` (process incl. imports): {best:.2f} s "
          f"({', '.join(f'{t:.2f}' for t in cli)})")
    print(f"CLI fit in-process (core.pipeline.iter_train): {min(fit):.2f} s "
          f"({', '.join(f'{t:.2f}' for t in fit)})")
    print(f"session train step, CV on (worker thread): {min(gui):.2f} s "
          f"({', '.join(f'{t:.2f}' for t in gui)}) = {min(gui) / best:.2f}x the CLI process, "
          f"{min(gui) / min(fit):.2f}x its in-process fit (target <= 2x)")


def first_train(bdgp: bool, n_images: int) -> None:
    """File > Open, then Train (CV on) at once in a fresh viewer, warm feature cache, against
    `ish-annotator train`; then a repeated Train. Longest GUI gap of each."""
    import napari
    from qtpy.QtCore import QEventLoop
    from qtpy.QtWidgets import QApplication

    from napari_ish_annotator.widgets import open_annotator

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["ISH_ANNOTATOR_CACHE"] = str(tmp / "cache")
        manifest = make_bdgp_manifest(tmp, n_images) if bdgp else make_manifest(tmp)
        with open(manifest, encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        terms = {t for r in rows for t in r["terms"].split(";") if t}
        genes_of = {t: len({r["gene"] for r in rows if t in r["terms"].split(";")})
                    for t in terms}
        cli_train(manifest, tmp / "model0")  # fills the feature cache
        cli = [cli_train(manifest, tmp / f"model{k + 1}") for k in range(2)]
        viewer = napari.Viewer(show=True)
        app = QApplication.instance()
        meter = GapMeter()
        meter.start()
        viewer.open(str(manifest), plugin="napari-ish-annotator")  # File > Open
        annotator = open_annotator(viewer)
        while annotator.embryos.runner.running or annotator.session.n_images == 0:
            app.processEvents()  # many files open in the Embryos panel's worker
            time.sleep(0.01)
        open_gap = meter.stop()  # File > Open, the dock's first build, the open itself
        s, train = annotator.session, annotator.train
        s.update_settings(backbone=BACKBONE, weights=WEIGHTS, layer="stage5", input_size=SIZE,
                          device="cpu", n_members=11, C=10.0)
        train.cv_check.setChecked(True)
        times, gaps = [], []
        for _ in range(2):
            loop = QEventLoop()
            train.runner.finished.connect(loop.quit)
            meter.start()
            t0 = time.perf_counter()
            train.train_button.click()
            if train.runner.running:
                loop.exec()
            times.append(time.perf_counter() - t0)
            train.runner.finished.disconnect(loop.quit)
            app.processEvents()
            gaps.append(meter.stop())
            assert train.runner.last_outcome == "done", train.runner.last_error
        viewer.close()
    one_or_two = sum(1 for n in genes_of.values() if n <= 2)
    print(f"{len(rows)} images, {len({r['gene'] for r in rows})} genes, {len(terms)} terms "
          f"({one_or_two} present in only one or two genes), {BACKBONE} features cached")
    print(f"`ish-annotator train` (process incl. imports): {min(cli):.2f} s "
          f"({', '.join(f'{t:.2f}' for t in cli)})")
    for name, t, gap in zip(("first Train (CV on)", "repeated Train"), times, gaps,
                            strict=True):
        print(f"{name}: {t:.2f} s = {t / min(cli):.2f}x the CLI; longest GUI gap {gap:.3f} s")
    print(f"(before it, not a Train: File > Open + building the annotator dock, longest GUI "
          f"gap {open_gap:.3f} s)")


def open_only(bdgp: bool, n_images: int, pause: float, profile: bool) -> None:
    """File > Open in a fresh viewer, after ``pause`` s the annotator dock; GUI gaps."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_ish_annotator.widgets import open_annotator

    def run_events(seconds: float, busy=lambda: False) -> None:
        end = time.perf_counter() + seconds
        while busy() or time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.005)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["ISH_ANNOTATOR_CACHE"] = str(tmp / "cache")
        manifest = make_bdgp_manifest(tmp, n_images) if bdgp else make_manifest(tmp)
        viewer = napari.Viewer(show=True)
        app = QApplication.instance()
        run_events(1.0)  # the empty window's first paints
        meter, prof = GapMeter(why="--why" in sys.argv), cProfile.Profile()
        meter.start()
        if profile:
            prof.enable()
        viewer.open(str(manifest), plugin="napari-ish-annotator")  # File > Open
        if pause:
            run_events(pause)
            open_gap = meter.stop()
            meter.start()
        annotator = open_annotator(viewer)  # Plugins > ISH Annotator
        run_events(0, lambda: annotator.embryos.runner.running or not annotator.session.n_images)
        run_events(1.0)  # paints and timers the open left behind
        prof.disable()
        dock_gap = meter.stop()
        viewer.close()
    cache = "off" if sys.dont_write_bytecode else (sys.pycache_prefix or "beside the sources")
    head = f"{n_images if bdgp else N_IMAGES} images, writing bytecode {cache}: longest GUI gap"
    print(f"{head} of File > Open {open_gap:.3f} s, of the annotator dock {pause:g} s later "
          f"(its first build, the open it starts) {dock_gap:.3f} s" if pause else
          f"{head} of File > Open and the annotator dock in one go {dock_gap:.3f} s")
    if profile:
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(40)


def main() -> None:
    if "--open-only" in sys.argv:
        n = int(sys.argv[sys.argv.index("--images") + 1]) if "--images" in sys.argv else N_IMAGES
        pause = float(sys.argv[sys.argv.index("--pause") + 1]) if "--pause" in sys.argv else 1.0
        open_only("--bdgp" in sys.argv, n, pause, "--profile" in sys.argv)
        return
    if "--first-train" in sys.argv:
        n = int(sys.argv[sys.argv.index("--images") + 1]) if "--images" in sys.argv else N_IMAGES
        first_train("--bdgp" in sys.argv, n)
        return
    if "--headless" in sys.argv:
        headless(profile="--profile" in sys.argv)
        return
    quick = "--quick" in sys.argv
    import napari
    from qtpy.QtCore import QEventLoop
    from qtpy.QtWidgets import QApplication

    from napari_ish_annotator.widgets import open_annotator

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["ISH_ANNOTATOR_CACHE"] = str(tmp / "cache")
        manifest = make_manifest(tmp)
        cli_train(manifest, tmp / "model0")  # fills the feature cache
        cli = cli_train(manifest, tmp / "model1")
        print(f"  cli train (cached features): {cli:.1f} s", file=sys.stderr, flush=True)

        viewer = napari.Viewer(show=True)
        app = QApplication.instance()
        meter = GapMeter(why="--why" in sys.argv)
        t0 = time.perf_counter()
        meter.start()
        annotator = open_annotator(viewer)  # once per session: reported, not a loop step
        dock_build = time.perf_counter() - t0
        settle = time.perf_counter() + 1.0
        while time.perf_counter() < settle:
            app.processEvents()
            time.sleep(0.005)
        dock_gap = meter.stop()
        s = annotator.session
        s.update_settings(backbone=BACKBONE, weights=WEIGHTS, layer="stage5", input_size=SIZE,
                          device="cpu", n_members=11, C=10.0)
        from napari_ish_annotator.widgets import OPEN_HINT, embryo_layer, text_overlay

        def shown(viewer) -> bool:
            """The first embryo on the canvas, with its overlay text."""
            layer = embryo_layer(viewer)
            text = text_overlay(viewer).text
            return layer is not None and layer.visible and bool(text) and text != OPEN_HINT

        settle = time.perf_counter() + 1.0  # the window's and dock's first paint, not a step
        while time.perf_counter() < settle:
            app.processEvents()
            time.sleep(0.005)
        rows = []

        def run(name: str, start, runner, until=None) -> float:
            loop = QEventLoop()  # waits in Qt's C++ loop, as napari.run() does (no busy polling)
            runner.finished.connect(loop.quit)
            meter.start()
            t0 = time.perf_counter()
            start()
            if runner.running:
                loop.exec()
            runner.finished.disconnect(loop.quit)
            app.processEvents()
            while until is not None and not until():  # e.g. the embryo shown on the canvas
                loop.processEvents(QEventLoop.ProcessEventsFlag.WaitForMoreEvents, 50)
            wall = time.perf_counter() - t0
            tail = time.perf_counter() + 0.3  # paints and timers the step left behind
            while time.perf_counter() < tail:
                loop.processEvents(QEventLoop.ProcessEventsFlag.WaitForMoreEvents, 20)
            gap = meter.stop()
            assert runner.last_outcome in (None, "done"), runner.last_error
            rows.append((name, wall, gap))
            print(f"  {name}: {wall:.2f} s, longest gap {gap:.3f} s", file=sys.stderr, flush=True)
            return wall

        run("open", lambda: annotator.embryos.open_paths([manifest], background=True),
            annotator.embryos.runner, until=lambda: shown(viewer))
        run("extract (cached; imports torch)", annotator.model.extract, annotator.model.runner)
        annotator.train.cv_check.setChecked(True)
        train = run("train, CV on", annotator.train.train, annotator.train.runner)
        run("predict", annotator.model.predict, annotator.model.runner)
        annotator.explain.term_combo.setCurrentText(s.model.terms[0])
        run("Grad-CAM", annotator.explain.show_map, annotator.explain.runner)
        if not quick:
            ft = annotator.train.finetune
            ft.epochs_spin.setValue(1)
            ft.frozen_combo.setCurrentIndex(ft.frozen_combo.findData("all"))
            ft.augment_check.setChecked(False)
            ft.device_combo.setCurrentText("cpu")
            run("fine-tune 1 epoch + refit", ft.start, ft.runner)
        viewer.close()

    print(f"{N_IMAGES} images, {N_GENES} genes, {N_TERMS} terms, {BACKBONE} features cached")
    print(f"`ish-annotator train` (process incl. imports): {cli:.1f} s")
    print(f"Train panel, CV on: {train:.1f} s = {train / cli:.2f}x the CLI (target <= 2x)")
    print(f"{'step':32s} {'wall s':>8s} {'longest GUI gap s':>18s}")
    for name, wall, gap in rows:
        print(f"{name:32s} {wall:8.2f} {gap:18.3f}")
    print(f"longest gap overall: {max(g for _, _, g in rows):.3f} s (target <= 0.25 s)")
    print(f"(once per session, not a loop step: building the annotator dock {dock_build:.2f} s "
          f"on the GUI thread; longest gap in its first second {dock_gap:.3f} s)")


if __name__ == "__main__":
    main()
