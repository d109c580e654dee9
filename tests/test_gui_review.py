"""Problems found by driving the plugin as a user would (one test per fixed problem)."""

from __future__ import annotations

import numpy as np
import pytest

from _gui_helpers import TERMS, WAIT_MS, click, dock, main_window, make_dataset, wait_embryo_shown
from _gui_helpers import wait_done as _wait

pytestmark = pytest.mark.gui


def test_gradcam_follows_a_retrained_model(make_napari_viewer, qtbot, tmp_path):
    """A map computed with the previous model must not stay on screen after retraining."""
    from napari_ish_annotator.core.explain.gradcam import gradcam_for_image
    from napari_ish_annotator.widgets import session_of as get_session
    from napari_ish_annotator.widgets.explain import gradcam_layer

    viewer = make_napari_viewer()
    embryos, annotate = dock(viewer, "Embryos"), dock(viewer, "Annotate")
    train, explain = dock(viewer, "Train"), dock(viewer, "Explain")
    assert embryos.open_paths([make_dataset(tmp_path / "data")])
    session = get_session(viewer)
    annotate.model.set_settings(weights="random", input_size=64, layer="21", device="cpu")
    train.members_spin.setValue(3)
    train.cv_check.setChecked(False)
    click(qtbot, train.train_button)
    _wait(qtbot, train.runner)
    explain.term_combo.setCurrentText(TERMS[1])
    click(qtbot, explain.show_button)
    _wait(qtbot, explain.runner)
    old = np.array(gradcam_layer(viewer).data)

    train.c_spin.setValue(0.01)  # a different model: other probabilities, other maps
    click(qtbot, train.train_button)
    _wait(qtbot, train.runner)
    qtbot.waitUntil(lambda: not explain.runner.running, timeout=WAIT_MS)
    layer = gradcam_layer(viewer)
    new = gradcam_for_image(session.model.bundle, session.model.extractor(), session.image(), TERMS[1])
    assert not np.allclose(old, new, atol=1e-4)
    assert layer.visible and layer.name == f"Grad-CAM: {TERMS[1]}"
    np.testing.assert_allclose(layer.data, new, atol=1e-5)

    # without "update when the image or term changes" the stale map is hidden instead
    explain.follow_check.setChecked(False)
    train.c_spin.setValue(1.0)
    click(qtbot, train.train_button)
    _wait(qtbot, train.runner)
    assert not gradcam_layer(viewer).visible


def test_folder_button_opens_in_a_worker_and_cancel_keeps_the_open_dataset(
        make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """Checking and hashing thousands of files must not freeze the viewer."""
    from qtpy.QtWidgets import QFileDialog

    from napari_ish_annotator.core.data import inputs as opening
    from napari_ish_annotator.widgets import embryo_layer
    from napari_ish_annotator.widgets import session_of as get_session

    first = make_dataset(tmp_path / "first", n=4)
    folder = tmp_path / "plain"
    make_dataset(folder, n=8, seed=1)
    (folder / "manifest.csv").unlink()  # a plain folder of images
    monkeypatch.setattr(opening, "CHECK_CHUNK", 2)  # several progress steps for 8 images
    check = opening.check_image

    def slow_check(path):  # a slow network share: the cancel lands before the end
        import time

        time.sleep(0.1)
        return check(path)

    monkeypatch.setattr(opening, "check_image", slow_check)
    viewer = make_napari_viewer()
    embryos = dock(viewer, "Embryos")
    assert embryos.open_paths([first])
    session = get_session(viewer)
    session.labels.set_label(TERMS[0], 1, 2)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(folder))

    # Cancel: the dataset on screen stays, with its labels and its label store
    steps = []

    def on_step(step):
        steps.append(step)
        if embryos.runner.cancel_button.isEnabled():
            click(qtbot, embryos.runner.cancel_button)

    click(qtbot, embryos.open_folder_button)
    worker = embryos.runner.worker
    assert embryos.runner.running and not embryos.open_folder_button.isEnabled()
    worker.yielded.connect(on_step)
    qtbot.waitUntil(lambda: not embryos.runner.running, timeout=WAIT_MS)
    assert embryos.runner.last_outcome == "cancelled"
    assert session.n_images == 4 and embryos.row_count() == 4
    assert session.labels.labels_for(2)[TERMS[0]] == 1
    session.labels.set_label(TERMS[1], 1, 2)  # the store is still open and writable
    assert embryos.open_folder_button.isEnabled()

    click(qtbot, embryos.open_folder_button)
    assert embryos.runner.running  # the click returned at once; the work is in a worker
    _wait(qtbot, embryos.runner)
    assert session.n_images == 8 and embryos.row_count() == 8
    assert session.source == folder
    assert session.store.path == folder / "ish-labels.sqlite"
    assert embryo_layer(viewer).data.shape == session.image(0).shape
    assert len(viewer.layers) == 1
    session.labels.set_label(session.vocabulary[2], 0, 5)  # default vocabulary: no manifest here
    assert session.labels.label_matrix()[5, 2] == 0


def test_closing_napari_mid_task_stops_the_worker_without_crashing(
        make_napari_viewer, qtbot, tmp_path):
    """Late worker signals used to reach deleted Qt widgets (RuntimeError -> process abort)."""
    from napari_ish_annotator.widgets import session_of as get_session

    viewer = make_napari_viewer()
    embryos, annotate = dock(viewer, "Embryos"), dock(viewer, "Annotate")
    assert embryos.open_paths([make_dataset(tmp_path / "data", n=8)])
    session = get_session(viewer)
    session.labels.set_label(TERMS[0], 1, 0)
    annotate.model.set_settings(weights="random", input_size=224, batch_size=1, device="cpu")
    steps, ended = [], []
    click(qtbot, annotate.model.extract_button)
    worker = annotate.model.runner.worker
    worker.yielded.connect(lambda step: steps.append(step))
    worker.finished.connect(lambda: ended.append(True))
    qtbot.waitUntil(lambda: any(s[0] >= 1 for s in steps), timeout=WAIT_MS)
    viewer.close()
    qtbot.waitUntil(lambda: bool(ended), timeout=WAIT_MS)
    qtbot.wait(200)  # let any late queued signal arrive
    assert max(s[0] for s in steps) < 8  # stopped, not run to the end
    assert session.model.features is None


def test_file_open_on_a_large_folder_reads_it_in_a_worker(make_napari_viewer, qtbot, tmp_path,
                                                          monkeypatch):
    """File > Open used to check and hash every file on the GUI thread."""
    from napari_ish_annotator import _reader
    from napari_ish_annotator.widgets import session_of as get_session

    manifest = make_dataset(tmp_path / "data", n=8)
    monkeypatch.setattr(_reader, "BACKGROUND_MIN_FILES", 8)  # "large" for this test
    viewer = make_napari_viewer()
    viewer.open(str(manifest), plugin="napari-ish-annotator")
    embryos = dock(viewer, "ISH Annotator").embryos  # File > Open shows the annotator
    assert embryos.runner.running  # File > Open returned; the files are read in a worker
    _wait(qtbot, embryos.runner)
    session = get_session(viewer)
    assert session.n_images == 8 and embryos.row_count() == 8
    assert session.labels.labels_for(1)[TERMS[0]] == 1  # manifest labels imported
    layer = wait_embryo_shown(qtbot, viewer)
    assert layer.data.shape == session.image(0).shape
    assert len(viewer.layers) == 1

    # a second large open leaves one embryo layer (the reader's new one)
    viewer.open(str(manifest), plugin="napari-ish-annotator")
    _wait(qtbot, embryos.runner)
    assert [lay.name for lay in viewer.layers] == [layer.name]

    monkeypatch.setattr(_reader, "BACKGROUND_MIN_FILES", 9)  # small sets open at once
    viewer.open(str(manifest), plugin="napari-ish-annotator")
    assert not embryos.runner.running and session.n_images == 8
    assert len(viewer.layers) == 1


def test_a_wrong_label_file_keeps_the_working_store(make_napari_viewer, qtbot, tmp_path,
                                                     monkeypatch):
    """Picking a non-SQLite file used to close the store ('read-only or locked') and stop saving."""
    from napari.utils.notifications import notification_manager
    from qtpy.QtWidgets import QFileDialog

    from napari_ish_annotator.core.labels.store import LabelStore
    from napari_ish_annotator.widgets import session_of as get_session

    manifest = make_dataset(tmp_path / "data")
    viewer = make_napari_viewer()
    embryos = dock(viewer, "Embryos")
    assert embryos.open_paths([manifest])
    session = get_session(viewer)
    default = LabelStore.default_path_for(manifest)
    notes = tmp_path / "notes.sqlite"
    notes.write_text("my notes, not a database\n" * 10)
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(notes), ""))
    before = len(notification_manager.records)
    click(qtbot, embryos.store_button)  # the new file is prepared in the worker
    qtbot.waitUntil(lambda: not embryos.runner.running, timeout=WAIT_MS)
    assert embryos.runner.last_outcome == "error"
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("not a label store" in m and str(default) in m for m in messages), messages
    assert session.store is not None and session.store.path == default
    assert not session.store_read_only
    session.labels.set_label(TERMS[2], 1, 0)  # labels are still saved
    with LabelStore(default, read_only=True) as store:
        assert store.labels_for(session.paths[0])[TERMS[2]] == 1
    assert str(default) in embryos.store_label.text()
    assert notes.read_text().startswith("my notes")  # the user's file is untouched

    other = tmp_path / "mine.sqlite"  # a good pick switches
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(other), ""))
    click(qtbot, embryos.store_button)
    _wait(qtbot, embryos.runner)
    assert session.store.path == other and str(other) in embryos.store_label.text()
    session.labels.set_label(TERMS[0], 1, 3)
    assert session.labels.labels_for(3)[TERMS[0]] == 1


def test_switching_back_to_the_previous_model_restores_its_votes(make_napari_viewer, qtbot,
                                                                  tmp_path):
    """The 'pred.' column is the one decision rule (calibrated p >= 0.5), never the members'
    majority vote, also after 'Switch to previous model' (back from a fine-tuned one)."""
    from napari_ish_annotator.session import Predictions
    from napari_ish_annotator.widgets import overlay_text
    from napari_ish_annotator.widgets import session_of as get_session

    viewer = make_napari_viewer()
    embryos, annotate, train = dock(viewer, "Embryos"), dock(viewer, "Annotate"), dock(viewer, "Train")
    assert embryos.open_paths([make_dataset(tmp_path / "data")])
    session = get_session(viewer)
    annotate.model.set_settings(weights="random", input_size=64, layer="21", device="cpu")
    train.members_spin.setValue(3)
    train.cv_check.setChecked(False)
    click(qtbot, train.train_button)
    _wait(qtbot, train.runner)
    old_bundle = session.model.bundle
    # predictions whose p for (image 0, term 0) is clearly on the other side of its vote
    votes = old_bundle.classifier.predict(session.model.features).astype(bool)
    P = session.model.probabilities.copy()
    P[0, 0] = 0.1 if votes[0, 0] else 0.9
    session.model.apply_predictions(Predictions(P, votes, session.generation))
    assert (votes != (session.model.probabilities >= 0.5)).any()
    sec = train.finetune  # fine-tuning keeps the model before it for "switch back"
    sec.epochs_spin.setValue(1)
    sec.batch_spin.setValue(4)
    sec.frozen_combo.setCurrentIndex(sec.frozen_combo.findData("17"))
    sec.augment_check.setChecked(False)
    sec.device_combo.setCurrentText("cpu")
    assert not sec.switch_button.isEnabled()
    click(qtbot, sec.start_button)
    qtbot.waitUntil(lambda: not sec.runner.running, timeout=180_000)
    assert sec.runner.last_outcome == "done", sec.runner.last_error
    assert session.model.bundle is not old_bundle
    assert sec.switch_button.text() == "Switch to previous model"
    click(qtbot, sec.switch_button)
    assert session.model.bundle is old_bundle
    np.testing.assert_array_equal(session.model.votes, votes)
    p00 = session.model.probabilities[0, 0]
    assert p00 == P[0, 0]
    word = "yes" if p00 >= 0.5 else "no"  # not the vote's word
    assert annotate.terms.row_values()[0][2].rstrip("?") == word
    session.set_index(0)  # the canvas gives the same answer for the term
    assert (TERMS[0] in overlay_text(session).split("\n", 1)[1]) == (p00 >= 0.5)


def test_changing_backbone_during_fine_tuning_does_not_break_the_refit(make_napari_viewer, qtbot,
                                                                       tmp_path):
    """The refit after fine-tuning read the Annotate panel's backbone at the end of the run."""
    from napari_ish_annotator.widgets import session_of as get_session

    viewer = make_napari_viewer()
    embryos, annotate, train = dock(viewer, "Embryos"), dock(viewer, "Annotate"), dock(viewer, "Train")
    assert embryos.open_paths([make_dataset(tmp_path / "data")])
    session = get_session(viewer)
    annotate.model.set_settings(weights="random", input_size=64, layer="21", device="cpu")
    train.members_spin.setValue(3)
    sec = train.finetune
    sec.epochs_spin.setValue(1)
    sec.batch_spin.setValue(4)
    sec.frozen_combo.setCurrentIndex(sec.frozen_combo.findData("17"))
    sec.augment_check.setChecked(False)
    sec.device_combo.setCurrentText("cpu")
    click(qtbot, sec.start_button)
    assert sec.runner.running
    annotate.model.backbone_combo.setCurrentText("resnet50")  # the user browses the settings meanwhile
    qtbot.waitUntil(lambda: not sec.runner.running, timeout=180_000)
    assert sec.runner.last_outcome == "done", sec.runner.last_error
    e = session.model.bundle.extractor
    assert (e.backbone, str(e.layer), str(e.weights)) == ("vgg16", "21", str(sec.checkpoint))
    assert annotate.model.backbone_combo.currentText() == "vgg16"
    assert annotate.model.layer_combo.currentText() == "21"


def test_demo_window_shows_the_whole_embryo(make_napari_viewer, qtbot):
    """The demo fitted the embryo before its docks opened, so the canvas showed a cropped part."""
    from napari_ish_annotator.widgets import embryo_layer, open_demo

    viewer = make_napari_viewer(show=True)
    main_window(viewer).resize(1400, 900)
    open_demo(viewer, weights="random")
    qtbot.wait(300)  # any pending layout
    h, w = embryo_layer(viewer).data.shape[:2]
    canvas_h, canvas_w = viewer.canvas.size  # napari's model of the canvas: (height, width)
    zoom = viewer.camera.zoom
    assert zoom * w <= canvas_w + 1 and zoom * h <= canvas_h + 1, (zoom, (h, w), (canvas_h, canvas_w))
    assert zoom * w >= 0.5 * canvas_w or zoom * h >= 0.5 * canvas_h  # and it is not tiny


def test_first_embryo_is_shown_in_stages_after_a_background_open(make_napari_viewer, qtbot,
                                                                  tmp_path):
    """napari's first layer of a session held the GUI thread for ~0.5 s in the same event
    that applied the open; it now comes in its own timer events: hidden layer, shown, text."""
    from napari_ish_annotator.widgets import OPEN_HINT, embryo_layer, text_overlay

    manifest = make_dataset(tmp_path / "data", n=4)
    viewer = make_napari_viewer()
    embryos = dock(viewer, "Embryos")
    # the panel's hint comes in timer events after its first build (the glyphs' own paint)
    qtbot.waitUntil(lambda: text_overlay(viewer).text == OPEN_HINT, timeout=5000)
    order: list[str] = []
    viewer.layers.events.inserted.connect(
        lambda e: order.append(f"added visible={e.value.visible}"))
    text_overlay(viewer).events.text.connect(
        lambda e: order.append("text" if text_overlay(viewer).text else "no text"))
    embryos.runner.finished.connect(lambda *_: order.append("open applied"))
    embryos.open_paths([manifest], background=True)
    _wait(qtbot, embryos.runner)
    layer = wait_embryo_shown(qtbot, viewer)
    order_text = [o for o in order if o != "no text"]
    assert order_text[:3] == ["open applied", "added visible=False", "text"], order
    assert layer.visible and layer.data.shape == get_session_image(viewer).shape

    # the next open reuses the shown layer at once, in the same event
    embryos.open_paths([manifest], background=True)
    _wait(qtbot, embryos.runner)
    assert embryo_layer(viewer) is layer and len(viewer.layers) == 1


def test_the_panels_first_build_leaves_the_canvas_text_to_timer_events(make_napari_viewer,
                                                                        qtbot):
    """vispy renders each new glyph on the GUI thread (~3 ms each): the hint's ~45 made the
    panel's first build and paint one longer stall; it now comes after, in two pieces."""
    from napari_ish_annotator.widgets import OPEN_HINT, text_overlay

    viewer = make_napari_viewer()
    texts: list[str] = []
    text_overlay(viewer).events.text.connect(lambda e: texts.append(text_overlay(viewer).text))
    dock(viewer, "ISH Annotator")
    assert texts == []  # nothing written in the event that built the panel
    qtbot.waitUntil(lambda: OPEN_HINT in texts, timeout=5000)
    assert texts == [OPEN_HINT.split(" ", 1)[0], OPEN_HINT]


def get_session_image(viewer):
    from napari_ish_annotator.widgets import session_of as get_session

    return get_session(viewer).image()


def test_closing_before_the_first_embryo_is_shown_adds_nothing(make_napari_viewer, qtbot,
                                                                tmp_path):
    """The staged first show must not touch a viewer closed in between."""
    from napari_ish_annotator.widgets import embryo_layer

    manifest = make_dataset(tmp_path / "data", n=4)
    viewer = make_napari_viewer()
    embryos = dock(viewer, "Embryos")
    embryos.open_paths([manifest], background=True)
    qtbot.waitUntil(lambda: not embryos.runner.running, timeout=WAIT_MS)
    assert embryo_layer(viewer) is None  # staged: not yet added
    viewer.close()
    qtbot.wait(150)  # every stage's timer has fired
    assert len(viewer.layers) == 0


def test_long_lived_objects_are_frozen_once_per_reason():
    """gc.freeze keeps full collections (0.2 s over napari+torch's objects, GIL held) from
    stalling the viewer; it happens once per reason, so later garbage cycles stay collectable."""
    import gc

    from napari_ish_annotator.widgets import freeze_long_lived

    keep = [[i] for i in range(1000)]
    before = gc.get_freeze_count()
    freeze_long_lived("a test's reason")
    frozen = gc.get_freeze_count()
    assert frozen >= before + len(keep)
    keep += [[i] for i in range(1000)]
    freeze_long_lived("a test's reason")
    assert gc.get_freeze_count() == frozen
