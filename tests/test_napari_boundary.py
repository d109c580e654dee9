"""The napari boundary: the reader hands napari layer data and nothing else; the viewer's
binding finds that layer through napari's events and opens it; the plugin leaves the
process as it found it (sys.modules, the garbage collector, Pillow, the environment)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from _gui_helpers import TERMS, WAIT_MS, dock, make_dataset, wait_done

pytestmark = pytest.mark.gui


def test_the_reader_returns_layer_data_and_never_touches_a_viewer(tmp_path, monkeypatch):
    """No current viewer, no docks: the first image as the embryo layer, the inputs with it."""
    import napari

    from napari_ish_annotator import _reader
    from napari_ish_annotator.core.data.images import read_rgb

    def no_viewer() -> None:
        raise AssertionError("the reader asked napari for the current viewer")

    monkeypatch.setattr(napari, "current_viewer", no_viewer)
    manifest = make_dataset(tmp_path / "data", n=4)
    [(data, kwargs, kind)] = _reader.napari_get_reader(str(manifest))(str(manifest))
    assert kind == "image" and kwargs["rgb"]
    np.testing.assert_array_equal(data, read_rgb(tmp_path / "data" / "embryo_00.png"))
    meta = kwargs["metadata"]
    assert meta["ish_annotator"] == "embryo" and meta["ish_open"] == [str(manifest)]
    assert meta["ish_open_background"] is False

    # a manifest whose first images are broken: a grey pixel, the open says what is wrong
    bad = tmp_path / "bad.csv"
    bad.write_text("image,terms\nmissing.png,\nalso-missing.png,\n")
    [(data, kwargs, _)] = _reader.read_dataset(str(bad))
    assert data.shape == (1, 1, 3) and kwargs["metadata"]["ish_open"] == [str(bad)]


def test_a_received_folder_of_pipes_and_hidden_files_is_answered_at_once(tmp_path,
                                                                         monkeypatch):
    """File > Open of someone else's folder: a named pipe called .png, a macOS "._" fork and
    a link to /dev/zero are no images; the reader claims only what holds images, never
    opens a pipe (which would block), and counts no further than it needs."""
    import threading
    import time

    from napari_ish_annotator import _reader
    from napari_ish_annotator.core.data.images import read_rgb

    junk = tmp_path / "junk"
    junk.mkdir()
    os.mkfifo(junk / "pipe.png")
    (junk / "._embryo.png").write_bytes(b"\x00\x05\x16\x07")
    if os.path.exists("/dev/zero"):
        (junk / "zero.png").symlink_to("/dev/zero")
    box: list = []
    thread = threading.Thread(target=lambda: box.append(_reader.napari_get_reader(str(junk))),
                              daemon=True)
    thread.start()
    thread.join(10)
    assert box == [None]  # answered, and not claimed

    data = make_dataset(tmp_path / "data", n=4).parent
    (data / "manifest.csv").unlink()  # a plain folder of images: the reader lists it
    os.mkfifo(data / "aa_pipe.png")  # sorts first: never read as the first image
    monkeypatch.setattr(_reader, "BACKGROUND_MIN_FILES", 5)
    start = time.monotonic()
    [(first, kwargs, _)] = _reader.napari_get_reader(str(data))(str(data))
    assert time.monotonic() - start < 10
    np.testing.assert_array_equal(first, read_rgb(data / "embryo_00.png"))
    assert kwargs["metadata"]["ish_open_background"] is False  # 4 images, not 5 entries


def test_file_open_before_any_panel_waits_for_one(make_napari_viewer, qtbot, tmp_path,
                                                  monkeypatch):
    """A large File > Open before the annotator is open leaves the layer waiting; opening the
    panel finds it (napari's layer list), reads the files in its worker, keeps one layer."""
    from napari_ish_annotator import _reader
    from napari_ish_annotator.widgets import embryo_layer
    from napari_ish_annotator.widgets import session_of as get_session

    manifest = make_dataset(tmp_path / "data", n=6)
    monkeypatch.setattr(_reader, "BACKGROUND_MIN_FILES", 5)
    viewer = make_napari_viewer()
    viewer.open(str(manifest), plugin="napari-ish-annotator")
    assert len(viewer.window.dock_widgets) == 0  # the reader opened no dock
    session = get_session(viewer)
    assert session.n_images == 0  # many files and no panel to read them in: waiting
    assert "ish_open" in embryo_layer(viewer).metadata

    embryos = dock(viewer, "ISH Annotator").embryos
    assert embryos.runner.running  # the panel found the waiting layer
    wait_done(qtbot, embryos.runner)
    assert session.n_images == 6 and session.vocabulary == list(TERMS)
    layer = embryo_layer(viewer)
    assert "ish_open" not in layer.metadata and len(viewer.layers) == 1


def test_each_viewer_has_its_own_binding(make_napari_viewer, tmp_path):
    """Two viewers, two sessions: opening in one leaves the other empty (no shared state)."""
    from napari_ish_annotator.widgets import session_of as get_session

    manifest = make_dataset(tmp_path / "data", n=3)
    first, second = make_napari_viewer(), make_napari_viewer()
    second_session = get_session(second)
    first.open(str(manifest), plugin="napari-ish-annotator")
    assert get_session(first).n_images == 3  # bound on first use, the waiting layer opened
    assert second_session.n_images == 0 and len(second.layers) == 0
    assert get_session(first) is not second_session


SCRIPT = textwrap.dedent("""
    import gc, json, os, sys
    from PIL import Image
    import napari
    from qtpy.QtCore import QCoreApplication, QEvent
    from qtpy.QtWidgets import QApplication

    env, limit, frozen = dict(os.environ), Image.MAX_IMAGE_PIXELS, gc.get_freeze_count()
    import napari_ish_annotator.widgets
    from napari_ish_annotator.widgets import open_annotator
    from napari_ish_annotator.widgets import triton_blocked
    import_changed = gc.get_freeze_count() != frozen

    viewer = napari.Viewer(show=False)
    viewer.open(sys.argv[1], plugin="napari-ish-annotator")
    annotator = open_annotator(viewer)
    n = annotator.session.n_images
    frozen_in_use = gc.get_freeze_count() > frozen
    with triton_blocked():
        blocked = sys.modules.get("triton", 0) is None
    viewer.close()
    for _ in range(3):
        QApplication.processEvents()
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    print(json.dumps({
        "n": n, "import_changed": import_changed, "frozen_in_use": frozen_in_use,
        "blocked": blocked, "triton_left": "triton" in sys.modules,
        "frozen_after": gc.get_freeze_count() - frozen,
        "limit_same": Image.MAX_IMAGE_PIXELS == limit,
        "env_changed": sorted(k for k in set(env) | set(os.environ)
                              if env.get(k) != os.environ.get(k) and k.startswith("ISH")),
    }))
""")


def test_the_plugin_leaves_the_process_as_it_found_it(tmp_path):
    """Import, File > Open, the annotator, close: the garbage collector's freeze is undone,
    triton is not blocked outside the torch import, Pillow's limit and ISH_* are unchanged."""
    manifest = make_dataset(tmp_path / "data", n=4)
    env = {**os.environ, "ISH_ANNOTATOR_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(manifest)], env=env,
                         capture_output=True, text=True, timeout=WAIT_MS // 1000)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"n": 4, "import_changed": False, "frozen_in_use": True, "blocked": True,
                      "triton_left": False, "frozen_after": 0, "limit_same": True,
                      "env_changed": []}, result
