"""Make the user guide's screenshots from a real napari session (headless under Xvfb).

    xvfb-run -a python scripts/make_screenshots.py            # writes docs/images/gui-*.png

Everything shown is computed live: synthetic embryos opened through File > Open, features with the chosen
backbone and weights (default EfficientNet-Lite0 with its ImageNet weights from the ``[offline]``
extra, which needs no download; pass ``--backbone vgg16`` on a machine with VGG16's ImageNet
weights for the paper's network), ensembles trained from the sample labels, predictions and
Grad-CAM.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--size", default="1800x1100", help="window size WxH")
    parser.add_argument("--n-images", type=int, default=40)
    parser.add_argument("--C", type=float, default=10.0,
                        help="logistic-regression C set in the Train panel (package default 10)")
    args = parser.parse_args()

    if not os.environ.get("DISPLAY") and shutil.which("xvfb-run") and not os.environ.get("_ISH_XVFB"):
        env = dict(os.environ, _ISH_XVFB="1")
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1920x1200x24", sys.executable, *sys.argv]
        return subprocess.call(cmd, env=env)
    os.environ.setdefault("ISH_ANNOTATOR_CACHE", tempfile.mkdtemp(prefix="ish-shots-"))

    import warnings

    warnings.filterwarnings("ignore", message=".*PyQt5 backend is deprecated.*")
    import napari
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    from napari_ish_annotator.core.synthetic import generate_dataset
    from napari_ish_annotator.widgets import _worker, open_docks
    from napari_ish_annotator.widgets._registry import get_session

    _worker.SYNCHRONOUS = True  # deterministic script: run the same generators inline
    args.out.mkdir(parents=True, exist_ok=True)
    w, h = (int(v) for v in args.size.split("x"))
    manifest = generate_dataset(Path(os.environ["ISH_ANNOTATOR_CACHE"]) / "shots-data",
                                args.n_images, stage="13-16", seed=3, size=(240, 480))

    viewer = napari.Viewer(title="napari-ish-annotator", show=True)
    qt_window = viewer.window._qt_window
    qt_window.resize(w, h)
    viewer.open(str(manifest), plugin="napari-ish-annotator")  # File > Open on a manifest
    docks = open_docks(viewer)
    embryos, annotate, explain, train = (docks[k] for k in ("Embryos", "Annotate", "Explain", "Train"))
    from napari_ish_annotator.core.backbones import get_spec

    annotate.set_settings(backbone=args.backbone, weights=args.weights,
                          layer=get_spec(args.backbone).default_layer,
                          input_size=args.input_size, device="cpu")
    session = get_session(viewer)

    def dock_of(widget):
        for dock in viewer.window._dock_widgets.values():
            if dock.isAncestorOf(widget):
                return dock
        raise LookupError(widget)

    # layout: layer list + Embryos on the left, Annotate/Explain/Train tabs on the right
    viewer.window._qt_viewer.dockLayerControls.setVisible(False)
    left = dock_of(embryos)
    qt_window.addDockWidget(Qt.LeftDockWidgetArea, left)
    qt_window.resizeDocks([left, dock_of(annotate)], [520, 560], Qt.Horizontal)
    qt_window.resizeDocks([viewer.window._qt_viewer.dockLayerList, left], [170, h - 250],
                          Qt.Vertical)

    def settle() -> None:
        for _ in range(10):
            QApplication.processEvents()

    def shot(name: str) -> None:
        for note in qt_window.findChildren(NapariQtNotification):
            note.close()
        settle()
        from PIL import Image

        img = viewer.screenshot(canvas_only=False, flash=False)
        Image.fromarray(img).save(args.out / name)
        print(f"wrote {args.out / name} {img.shape[1]}x{img.shape[0]}")

    def raise_tab(widget) -> None:
        dock = dock_of(widget)
        dock.show()
        dock.raise_()
        settle()

    train.c_spin.setValue(args.C)
    train.train()
    if session.bundle is None:
        print("training failed:", train.runner.last_error, file=sys.stderr)
        return 1
    # show an embryo with a confident prediction
    best = int(session.probabilities.max(1).argmax())
    session.set_index(best)
    annotate.threshold_spin.setValue(0.5)
    settle()
    viewer.reset_view()

    raise_tab(annotate)
    shot("gui-overview.png")

    raise_tab(train)
    shot("gui-train.png")

    raise_tab(explain)
    top = max(session.probabilities_for().items(), key=lambda kv: kv[1])[0]
    explain.select_term(top)
    shot("gui-explain.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
