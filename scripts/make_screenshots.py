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
    parser.add_argument("--sizes", default="1920x1080,1366x768",
                        help="screen sizes WxH; the first one makes the main screenshots")
    parser.add_argument("--n-images", type=int, default=40)
    parser.add_argument("--C", type=float, default=10.0,
                        help="logistic-regression C set in the Train panel (package default 10)")
    args = parser.parse_args()

    if not os.environ.get("DISPLAY") and shutil.which("xvfb-run") and not os.environ.get("_ISH_XVFB"):
        env = dict(os.environ, _ISH_XVFB="1")
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1920x1080x24", sys.executable, *sys.argv]
        return subprocess.call(cmd, env=env)
    os.environ.setdefault("ISH_ANNOTATOR_CACHE", tempfile.mkdtemp(prefix="ish-shots-"))

    import napari

    from napari_ish_annotator.core.synthetic.embryos import generate_dataset

    args.out.mkdir(parents=True, exist_ok=True)
    manifest = generate_dataset(Path(os.environ["ISH_ANNOTATOR_CACHE"]) / "shots-data",
                                args.n_images, stage="13-16", seed=3, size=(240, 480))
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
    for k, (w, h) in enumerate(sizes):
        suffix = "" if k == 0 else f"-{w}x{h}"
        if _shots(napari, manifest, args, w, h, suffix, full=k == 0):
            return 1
    return 0


def _shots(napari, manifest: Path, args: argparse.Namespace, w: int, h: int, suffix: str,
           full: bool) -> int:
    """The default layout (Plugins > ISH Annotator) in a window of w x h; no rearranging."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtWidgets import QApplication

    from napari_ish_annotator.core.backbones.specs import get_spec
    from napari_ish_annotator.widgets import open_annotator, qt_main_window

    os.environ["ISH_ANNOTATOR_SYNC"] = "1"  # deterministic script: the same generators inline
    viewer = napari.Viewer(title="napari-ish-annotator", show=True)
    window = qt_main_window(viewer)
    window.resize(w, h)
    viewer.open(str(manifest), plugin="napari-ish-annotator")  # File > Open on a manifest
    annotator = open_annotator(viewer)  # Plugins > ISH Annotator
    session = annotator.session
    session.update_settings(backbone=args.backbone, weights=args.weights,
                            layer=str(get_spec(args.backbone).default_layer),
                            input_size=args.input_size, device="cpu")

    def settle() -> None:
        for _ in range(10):
            QApplication.processEvents()

    def shot(name: str) -> None:
        for note in window.findChildren(NapariQtNotification):
            note.close()
        settle()
        from PIL import Image

        img = viewer.screenshot(canvas_only=False, flash=False)
        Image.fromarray(img).save(args.out / name)
        print(f"wrote {args.out / name} {img.shape[1]}x{img.shape[0]}")

    annotator.train.c_spin.setValue(args.C)
    annotator.train.train()
    if session.model.bundle is None:
        print("training failed:", annotator.train.runner.last_error, file=sys.stderr)
        return 1
    best = int(session.model.probabilities.max(1).argmax())  # an embryo with a confident prediction
    session.set_index(best)
    settle()
    viewer.reset_view()
    annotator.tabs.setCurrentIndex(0)
    shot(f"gui-overview{suffix}.png")
    if full:
        annotator.tabs.setCurrentIndex(3)
        shot("gui-train.png")
    top = max(session.model.probabilities_for().items(), key=lambda kv: kv[1])[0]
    annotator.tabs.setCurrentIndex(2)
    annotator.explain.select_term(top)
    shot(f"gui-explain{suffix}.png")
    # Plugins > ISH Annotator > Gallery on the most-called term, highest p first
    _, gallery = viewer.window.add_plugin_dock_widget("napari-ish-annotator", "Gallery")
    gallery.term_combo.setCurrentText(top)
    gallery.sort_combo.setCurrentText("p high first")
    while gallery.loading:
        settle()
    gallery.view.selectionModel().select(gallery.model.index(0),
                                         gallery.view.selectionModel().SelectionFlag.Select)
    shot(f"gui-gallery{suffix}.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
