"""One layout that fits a laptop: the annotator dock, its size, and the demo's first minute."""

from __future__ import annotations

import pytest

from _gui_helpers import canvas_widget, dock, main_window, make_dataset, press, wait_done

pytestmark = pytest.mark.gui


def test_everything_open_fits_a_laptop_and_leaves_half_the_canvas(make_napari_viewer, qtbot):
    from napari_ish_annotator.widgets import DOCK_NAMES, open_annotator, open_docks

    viewer = make_napari_viewer(show=True)
    annotator = open_annotator(viewer)
    window = main_window(viewer)
    window.resize(1920, 1080)
    qtbot.wait(50)
    canvas = canvas_widget(viewer)
    assert canvas.width() >= window.width() / 2, (canvas.width(), window.width())
    assert annotator.terms.isVisible()  # the term list is visible whatever tab is open
    for i in range(annotator.tabs.count()):
        annotator.tabs.setCurrentIndex(i)
        assert annotator.terms.isVisible()

    open_docks(viewer, DOCK_NAMES)  # and every individual panel as well
    qtbot.wait(50)
    size = window.minimumSizeHint().expandedTo(window.minimumSize())
    assert size.width() <= 1366 and size.height() <= 768, (size.width(), size.height())


def test_keys_step_label_undo_and_jump_to_uncertain(make_napari_viewer, tmp_path):
    import numpy as np

    from napari_ish_annotator.session import Predictions
    from napari_ish_annotator.widgets import open_annotator

    viewer = make_napari_viewer()
    annotator = open_annotator(viewer)
    assert annotator.embryos.open_paths([make_dataset(tmp_path / "data", n=6)])
    s = annotator.session
    press(viewer, "n")
    assert s.index == 1
    before = s.labels.labels_for(1)[s.vocabulary[0]]
    press(viewer, "1")
    assert s.labels.labels_for(1)[s.vocabulary[0]] != before
    press(viewer, "Control-Z")
    assert s.labels.labels_for(1)[s.vocabulary[0]] == before
    press(viewer, "p")
    assert s.index == 0

    # "u": the next image with a term near 0.5 that is not labelled yet
    s.labels.set_vocabulary([*s.vocabulary, "new"])  # unlabelled everywhere
    P = np.full((6, len(s.vocabulary)), 0.95, np.float32)
    P[4, -1] = 0.5
    s.model.bundle = type("B", (), {"classifier": type("C", (), {"vocabulary": list(s.vocabulary)})})
    s.model.apply_predictions(Predictions(P, P >= 0.5, s.generation))
    press(viewer, "u")
    assert s.index == 4
    assert annotator.terms.image_label.text().startswith("5/6")


@pytest.mark.slow
def test_demo_trains_in_the_background_and_shows_predictions_and_gradcam(make_napari_viewer,
                                                                         qtbot):
    import time

    from napari_ish_annotator.widgets import open_demo
    from napari_ish_annotator.widgets.explain import gradcam_layer

    viewer = make_napari_viewer()
    t0 = time.perf_counter()
    annotator = open_demo(viewer, weights="random", backbone="efficientnet_lite0")
    assert annotator.train.runner.running  # returned at once: training runs in a worker
    wait_done(qtbot, annotator.train.runner)
    qtbot.waitUntil(lambda: gradcam_layer(viewer) is not None, timeout=60_000)
    wait_done(qtbot, annotator.explain.runner)
    elapsed = time.perf_counter() - t0
    s = annotator.session
    assert s.model.probabilities is not None and s.model.probabilities.shape[0] == s.n_images
    assert annotator.terms.table.rowCount() == len(s.vocabulary)
    assert gradcam_layer(viewer).data.shape == s.image().shape[:2]
    print(f"demo: predictions and Grad-CAM after {elapsed:.1f} s")


def test_individual_panels_stay_available(make_napari_viewer):
    viewer = make_napari_viewer()
    for name in ("Embryos", "Annotate", "Explain", "Train"):
        assert dock(viewer, name).session is dock(viewer, "Embryos").session


def test_importing_the_widgets_has_no_side_effects():
    """The triton guard is scoped to the GUI's torch import, not on `import widgets`; the
    face lists its helpers without importing Qt, torch or the session."""
    import subprocess
    import sys

    code = ("import sys\nimport napari_ish_annotator.widgets\n"
            "assert 'triton' not in sys.modules, 'import blocked triton'\n"
            "heavy = {'qtpy', 'torch', 'napari_ish_annotator.session'} & set(sys.modules)\n"
            "assert not heavy, heavy\n"
            "from napari_ish_annotator.widgets import triton_blocked\n"
            "with triton_blocked():\n    assert sys.modules['triton'] is None\n"
            "assert 'triton' not in sys.modules, 'the guard outlived its block'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_private_napari_api_only_in_its_module():
    from pathlib import Path

    import napari_ish_annotator

    root = Path(napari_ish_annotator.__file__).parent
    private = ("._qt_window", "_relay_error", "__wrapped__", "._qt_viewer", "._dock_widgets")
    offenders = [f"{p.name}: {name}" for p in root.rglob("*.py")
                 if p.name != "_napari_private.py"
                 for name in private if name in p.read_text(encoding="utf-8")]
    assert offenders == []


def _scrolled_out(widget) -> bool:
    """Below or above a vertical scroll area's view: reachable by scrolling down, not cut."""
    from qtpy.QtWidgets import QScrollArea

    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QScrollArea):
        parent = parent.parentWidget()
    if parent is None:
        return False
    view = parent.viewport()
    top = widget.mapTo(view, widget.rect().topLeft()).y()
    return top + widget.height() <= 0 or top >= view.height()


@pytest.mark.parametrize("size", [(1920, 1080), (1366, 768)])
def test_no_button_label_is_cut_off(make_napari_viewer, qtbot, size):
    """At 1920x1080 the Train tab's third button in a row showed "Export to bioimag…"."""
    from qtpy.QtWidgets import QPushButton, QScrollArea

    from napari_ish_annotator.widgets import open_annotator

    viewer = make_napari_viewer(show=True)
    annotator = open_annotator(viewer)
    main_window(viewer).resize(*size)
    qtbot.wait(50)
    cut = []
    for i in range(annotator.tabs.count()):
        annotator.tabs.setCurrentIndex(i)
        qtbot.wait(20)
        for area in annotator.findChildren(QScrollArea):  # nothing wider than its view
            if area.isVisible() and area.widget() is not None:
                need = area.widget().minimumSizeHint().width()
                if need > area.viewport().width():
                    cut.append((annotator.tabs.tabText(i), "scroll area", area.viewport().width(),
                                need))
        for button in annotator.findChildren(QPushButton):
            if not button.isVisible():
                continue
            shown = button.visibleRegion().boundingRect()  # clipped by a scroll area too
            if shown.width() < button.sizeHint().width() and not _scrolled_out(button):
                cut.append((annotator.tabs.tabText(i), button.text(), shown.width(),
                            button.sizeHint().width()))
    assert not cut, cut


def _fully_shown(widget) -> bool:
    """Visible and wholly inside its scroll area's view (no scrolling needed to reach it)."""
    if not widget.isVisible():
        return False
    shown = widget.visibleRegion().boundingRect()
    return shown.width() >= widget.width() - 1 and shown.height() >= widget.height() - 1


def test_main_controls_of_every_tab_fit_1366x768_without_scrolling(make_napari_viewer, qtbot):
    """A laptop: each tab's main action and the controls a day needs are on screen as the
    tab opens; the rarely used fold under one line; names elide in the middle."""
    from qtpy.QtCore import Qt

    from napari_ish_annotator.widgets import open_annotator

    viewer = make_napari_viewer(show=True)
    annotator = open_annotator(viewer)
    main_window(viewer).resize(1366, 768)
    qtbot.wait(100)
    e, m, t = annotator.embryos, annotator.model, annotator.train
    need = {
        "Embryos": [e.open_files_button, e.open_folder_button, e.open_manifest_button,
                    e.suggest_button, e.prev_button, e.next_button, e.annotator_edit,
                    e.files_section.toggle],
        "Model": [m.load_model_button, m.extract_button, m.predict_button, m.defaults_button,
                  m.add_term_button],
        "Explain": [annotator.explain.show_button],
        "Train": [t.train_button, t.save_button, t.export_button, t.options_section.toggle,
                  t.finetune_section.toggle],
    }
    hidden = []
    for i in range(annotator.tabs.count()):
        annotator.tabs.setCurrentIndex(i)
        qtbot.wait(30)
        name = annotator.tabs.tabText(i)
        hidden += [(name, getattr(w, "text", lambda: "")() or type(w).__name__)
                   for w in need[name] if not _fully_shown(w)]
        bar = annotator.tabs.tabBar()  # the tab's own label is whole
        assert bar.tabRect(i).width() >= bar.fontMetrics().horizontalAdvance(name), name
    assert not hidden, hidden
    assert annotator.terms.table.rowCount() == 0 or annotator.terms.table.height() >= 110
    assert e.table.textElideMode() == Qt.TextElideMode.ElideMiddle
    assert annotator.terms.table.textElideMode() == Qt.TextElideMode.ElideMiddle

    e.files_section.toggle.click()  # unfolding shows what was folded
    qtbot.wait(30)
    annotator.tabs.setCurrentIndex(0)
    assert e.export_labels_button.isVisible() and e.store_button.isVisible()


def test_single_panels_keep_a_usable_height_at_1366x768(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    main_window(viewer).resize(1366, 768)
    embryos, annotate = dock(viewer, "Embryos"), dock(viewer, "Annotate")
    qtbot.wait(100)
    assert embryos.height() >= 150 and annotate.height() >= 150, \
        (embryos.height(), annotate.height())


def test_frozen_layers_name_the_selected_backbone(make_napari_viewer):
    from napari_ish_annotator.widgets import open_annotator

    annotator = open_annotator(make_napari_viewer())
    combo = annotator.train.finetune.frozen_combo
    annotator.model.backbone_combo.setCurrentText("efficientnet_lite0")
    assert "efficientnet_lite0" in combo.itemText(0) and "VGG16" not in combo.itemText(0)
    assert combo.findData("17") < 0  # VGG16's layer numbers are not offered for it
    annotator.model.backbone_combo.setCurrentText("vgg16")
    assert "VGG16" in combo.itemText(0) and combo.findData("17") >= 0
