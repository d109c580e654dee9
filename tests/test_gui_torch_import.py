"""The first model step imports torch in its worker, not on the GUI thread (a 1.5 s freeze).

torch is already imported in the test process, so this runs a fresh viewer in a subprocess
and records, with an audit hook, which thread imports torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from _gui_helpers import make_dataset

pytestmark = [pytest.mark.gui, pytest.mark.slow]

SCRIPT = textwrap.dedent("""
    import json, sys, threading
    seen = {}

    def hook(event, args):
        if event == "import" and args[0] in ("torch", "torchvision") and args[0] not in seen:
            seen[args[0]] = threading.current_thread() is threading.main_thread()

    sys.addaudithook(hook)
    import napari
    from qtpy.QtCore import QEventLoop, Qt
    from qtpy.QtTest import QTest
    from napari_ish_annotator.widgets import open_annotator

    viewer = napari.Viewer(show=False)
    annotator = open_annotator(viewer)
    assert "torch" not in sys.modules, "building the dock imported torch"
    assert annotator.embryos.open_paths([sys.argv[1]])
    annotator.session.update_settings(backbone="vgg16", weights="random", input_size=64)
    runner = annotator.model.runner
    loop = QEventLoop()
    runner.finished.connect(loop.quit)
    QTest.mouseClick(annotator.model.extract_button, Qt.MouseButton.LeftButton)
    if runner.running:
        loop.exec()
    print(json.dumps({"outcome": runner.last_outcome, "error": runner.last_error,
                      "on_gui_thread": seen,
                      "features": annotator.session.model.features is not None}))
    viewer.close()
""")


def test_first_model_step_imports_torch_in_its_worker(tmp_path):
    manifest = make_dataset(tmp_path / "data", n=4)
    env = {**os.environ, "ISH_ANNOTATOR_CACHE": str(tmp_path / "cache")}
    env.pop("ISH_ANNOTATOR_SYNC", None)
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(manifest)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["outcome"] == "done", result["error"]
    assert result["features"]
    assert result["on_gui_thread"] == {"torch": False, "torchvision": False}, result


TRAIN_SCRIPT = textwrap.dedent("""
    import json, sys
    import napari
    from qtpy.QtCore import QEventLoop, Qt
    from qtpy.QtTest import QTest
    from napari_ish_annotator.widgets import open_annotator

    viewer = napari.Viewer(show=False)
    viewer.open(sys.argv[1], plugin="napari-ish-annotator")  # File > Open
    annotator = open_annotator(viewer)
    annotator.session.update_settings(backbone="vgg16", weights="random", layer="21",
                                      input_size=64, device="cpu")
    panel = annotator.model if sys.argv[2] == "extract" else annotator.train
    button = panel.extract_button if sys.argv[2] == "extract" else panel.train_button
    if sys.argv[2] == "train":
        panel.cv_check.setChecked(True)
    loop = QEventLoop()
    panel.runner.finished.connect(loop.quit)
    QTest.mouseClick(button, Qt.MouseButton.LeftButton)
    if panel.runner.running:
        loop.exec()
    print(json.dumps({"outcome": panel.runner.last_outcome, "error": panel.runner.last_error,
                      "torch": "torch" in sys.modules,
                      "trained": annotator.session.model.bundle is not None}))
    viewer.close()
""")


def test_train_on_cached_features_imports_no_torch(tmp_path):
    """The first Train after opening, features cached by an earlier session: like the CLI's
    warm path it imports no torch (~4 s, and on the GUI thread when the panel named the
    device), and the CV folds need no sklearn.model_selection of their own."""
    manifest = make_dataset(tmp_path / "data", n=8)
    env = {**os.environ, "ISH_ANNOTATOR_CACHE": str(tmp_path / "cache")}
    env.pop("ISH_ANNOTATOR_SYNC", None)
    results = []
    for step in ("extract", "train"):  # a first session fills the cache, a second trains
        out = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, str(manifest), step],
                             env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    extract, train = results
    assert extract["outcome"] == "done" and extract["torch"], extract
    assert train == {"outcome": "done", "error": None, "torch": False, "trained": True}, train
