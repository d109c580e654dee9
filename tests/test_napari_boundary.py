"""The napari boundary: the reader hands napari layer data and nothing else; the viewer's
binding finds that layer through napari's events and opens it; the plugin leaves the
process as it found it (sys.modules, the garbage collector, Pillow, the environment)."""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from _gui_helpers import (
    TERMS,
    WAIT_MS,
    choose_small_model,
    click,
    dock,
    make_dataset,
    open_annotator,
    press,
    wait_done,
)

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


def test_the_reader_imports_no_session():
    """napari imports the reader on the GUI thread when a file is opened (to ask whether it
    can read it): the session and the learning code behind it (0.2-0.3 s) are the panel's."""
    code = ("import sys, napari_ish_annotator._reader; "
            "print(sorted(m for m in sys.modules if m.startswith('napari_ish_annotator.session')"
            " or m in ('napari_ish_annotator.core.workflow', 'pandas', 'sklearn', 'torch',"
            " 'scipy.special')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout


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


PLUGIN = "napari-ish-annotator"


def _rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _present(row: dict) -> set[str]:
    return {t for t in row["terms"].split(";") if t}


def test_file_save_writes_the_saved_layers_own_session(make_napari_viewer, qtbot, tmp_path,
                                                      monkeypatch):
    """Two viewers, each with its own dataset open: saving an embryo layer with the plugin's
    writer writes THAT layer's session (labels; predictions once a model predicted),
    whichever viewer napari calls current."""
    import napari

    from napari_ish_annotator.widgets import embryo_layer, layer_session

    first, annotator, session, watch = open_annotator(
        qtbot, make_napari_viewer, make_dataset(tmp_path / "a", n=6), monkeypatch)
    choose_small_model(qtbot, annotator.model, annotator.train)
    click(qtbot, annotator.train.cv_check)
    click(qtbot, annotator.train.train_button)
    wait_done(qtbot, annotator.train.runner)
    assert session.model.probabilities is not None
    term = session.vocabulary[0]
    assert session.index == 0 and session.labels.labels_for(0).get(term) != 1
    for _ in range(3):  # the first key cycles the first term to 'present' on the canvas
        if session.labels.labels_for(0).get(term) != 1:
            press(first, "1")
    assert session.labels.labels_for(0).get(term) == 1
    second, _, other, _ = open_annotator(
        qtbot, make_napari_viewer, make_dataset(tmp_path / "b", n=3, seed=1), monkeypatch)

    for viewer, own, n in ((first, session, 6), (second, other, 3)):
        out = tmp_path / f"{n}.csv"
        written = napari.save_layers(str(out), [embryo_layer(viewer)], plugin=PLUGIN)
        rows = _rows(out)
        assert len(rows) == n  # the layer's own images, relative to the manifest
        assert {(tmp_path / r["image"]).resolve() for r in rows} == set(own.paths)
        predictions = out.with_name(f"{n}.predictions.csv")
        assert written == [str(out)] + ([str(predictions)] if n == 6 else [])
        assert predictions.is_file() == (n == 6)
    assert _present(_rows(tmp_path / "6.csv")[0]) == {term}  # the label set on the canvas
    tag = embryo_layer(first).metadata["ish_session"]  # what the crafted-tag test forges
    assert tag() is session
    copied = copy.deepcopy(embryo_layer(first).metadata)  # as a copying plugin might
    assert layer_session(copied) is session  # the weak reference survives, no session copy
    first.layers.selection = {embryo_layer(first)}  # napari's public Save, to a .csv
    saved = first.layers.save(str(tmp_path / "sel.csv"), selected=True, plugin=PLUGIN)
    assert len(saved) == 2 and len(_rows(tmp_path / "sel.csv")) == 6
    assert watch.problems() == []


def _file_save_selected(qtbot, viewer, monkeypatch, path, file_type: str) -> list[tuple]:
    """File > Save Selected Layers..., the dialog answered with ``path`` and the file type
    named ``file_type``; returns what it raised (napari shows it) as (type, message) pairs:
    a traceback's frames would keep the viewer alive."""
    import napari
    from qtpy.QtWidgets import QFileDialog

    def answer(_parent=None, _caption="", _directory="", filter="", **_k):  # noqa: A002
        return str(path), next(f for f in filter.split(";;") if file_type in f)

    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(answer))
    viewer.window.activate()  # the user clicks on its window; its menu acts on it
    qtbot.waitUntil(lambda: napari.current_viewer() is viewer, timeout=5000)
    menu = viewer.window.file_menu
    menu.aboutToShow.emit()  # napari enables the menu's actions as it opens
    action = next(a for a in menu.actions() if a.text().startswith("Save Selected Layers"))
    assert action.isEnabled()
    with qtbot.capture_exceptions() as raised:
        action.trigger()
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):  # where PyQt left it to print, frames and all
            setattr(sys, name, None)
    return [(kind, str(exc)) for kind, exc, _ in raised]


def test_saving_a_layer_without_a_session_says_what_to_do(make_napari_viewer, qtbot,
                                                          tmp_path, monkeypatch):
    """A plain image layer saved as "ISH labels manifest" (beside an open session, or in a
    viewer without one): one line saying what is wrong and what to do, nothing written."""
    from napari_ish_annotator.core.utils.errors import InputError

    with_session, *_ = open_annotator(qtbot, make_napari_viewer,
                                      make_dataset(tmp_path / "a", n=3), monkeypatch)
    without = make_napari_viewer()
    for k, viewer in enumerate((with_session, without)):
        plain = viewer.add_image(np.zeros((8, 8), np.uint8), name="plain")
        viewer.layers.selection = {plain}
        out = tmp_path / f"plain{k}.csv"
        raised = _file_save_selected(qtbot, viewer, monkeypatch, out, "ISH labels manifest")
        assert [kind for kind, _ in raised] == [InputError], raised
        message = raised[0][1]
        assert "'plain' holds no ISH Annotator labels" in message and "select" in message
        assert "\n" not in message and not out.exists()


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
    frozen_by_open = gc.get_freeze_count() > frozen  # before napari's first layer
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
        "n": n, "import_changed": import_changed, "frozen_by_open": frozen_by_open,
        "frozen_in_use": frozen_in_use,
        "blocked": blocked, "triton_left": "triton" in sys.modules,
        "frozen_after": gc.get_freeze_count() - frozen,
        "limit_same": Image.MAX_IMAGE_PIXELS == limit,
        "env_changed": sorted(k for k in set(env) | set(os.environ)
                              if env.get(k) != os.environ.get(k) and k.startswith("ISH")),
    }))
""")


def test_the_plugin_leaves_the_process_as_it_found_it(tmp_path):
    """Import, File > Open (the reader freezes what lives before napari's first layer), the
    annotator, close: the garbage collector's freeze is undone, triton is not blocked
    outside the torch import, Pillow's limit and ISH_* are unchanged."""
    manifest = make_dataset(tmp_path / "data", n=4)
    env = {**os.environ, "ISH_ANNOTATOR_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(manifest)], env=env,
                         capture_output=True, text=True, timeout=WAIT_MS // 1000)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"n": 4, "import_changed": False, "frozen_by_open": True,
                      "frozen_in_use": True, "blocked": True,
                      "triton_left": False, "frozen_after": 0, "limit_same": True,
                      "env_changed": []}, result


def test_a_layers_crafted_session_tag_names_no_session(tmp_path):
    """Layer metadata comes from whoever made the layer (another plugin, a saved project):
    the session tag is only believed as a live weak reference to a session bound to a
    viewer, so File > Save never writes labels of a session the layer does not belong to."""
    import weakref

    from napari_ish_annotator.session import AnnotatorSession
    from napari_ish_annotator.widgets import layer_session

    class Other:
        pass

    unbound, other = AnnotatorSession(cache_dir=tmp_path), Other()
    dead = AnnotatorSession(cache_dir=tmp_path)
    dead_ref = weakref.ref(dead)
    del dead
    for value in ("ish", 42, None, [unbound], weakref.ref(other), weakref.ref(unbound),
                  dead_ref, lambda: unbound):
        assert layer_session({"ish_session": value}) is None, value
    assert layer_session({}) is None
