"""Click what users click: every visible, enabled button, check box and combo box of the
docks in a real viewer, found by walking the widget tree (a new control is covered without
editing this test). Dialogs are answered, long jobs are started and then cancelled, and any
exception reaching an excepthook or any notification that is not a one-line user message
fails the test (issue 22: 10 of 21 buttons raised a TypeError, no test caught it)."""

from __future__ import annotations

import pytest

from _gui_helpers import (
    WAIT_MS,
    Dialogs,
    Watch,
    choose,
    click,
    click_tab,
    dock,
    main_window,
    open_and_train,
)

pytestmark = [pytest.mark.gui, pytest.mark.slow]  # about two minutes each

PANELS = ("Embryos", "Annotate", "Explain", "Train", "Gallery")  # napari.yaml's single panels


# ---------------------------------------------------------------------- walking the tree
def _shown(widget, root) -> bool:
    return widget.isVisibleTo(root) and widget.isEnabled()


def _label(widget) -> str:
    text = widget.text() if hasattr(widget, "text") else ""
    return f"{type(widget).__name__} {text or widget.toolTip() or widget.objectName()!r}"


def settle(qtbot, root) -> None:
    """Let a click's work run; a started job is cancelled with its own Cancel (Stop) button."""
    from qtpy.QtWidgets import QPushButton

    from napari_ish_annotator.widgets import TaskRunner

    qtbot.wait(30)
    for runner in root.findChildren(TaskRunner):
        if not runner.running:
            continue
        stop = runner.cancel_button
        if not stop.isVisibleTo(root):  # fine-tuning: its Stop button cancels
            stop = next(b for b in runner.parent().findChildren(QPushButton)
                        if b.text() == "Stop" and _shown(b, root))
        if stop.isEnabled():
            click(qtbot, stop)
        qtbot.waitUntil(lambda r=runner: not r.running, timeout=WAIT_MS)
        assert runner.last_outcome in ("done", "cancelled", "error")


def click_every_button(qtbot, root, done: set[int]) -> list[str]:
    """Click each visible, enabled push/tool button under ``root`` once (the list is read
    again after every click: a click may show, hide or enable others)."""
    from qtpy.QtWidgets import QPushButton, QToolButton

    clicked = []
    while True:
        buttons = [b for kind in (QPushButton, QToolButton) for b in root.findChildren(kind)
                   if _shown(b, root) and id(b) not in done]
        if not buttons:
            return clicked
        button = buttons[0]
        done.add(id(button))
        clicked.append(_label(button))
        click(qtbot, button)
        settle(qtbot, root)


def toggle_every_check_box(qtbot, root) -> list[str]:
    """Click each visible, enabled check box twice (on and back off, or the reverse)."""
    from qtpy.QtWidgets import QCheckBox

    toggled = []
    for box in root.findChildren(QCheckBox):
        for _ in range(2):
            if not _shown(box, root):
                break
            before = box.isChecked()
            click(qtbot, box)
            settle(qtbot, root)
            toggled.append(f"{_label(box)} {before} -> {box.isChecked()}")
    return toggled


def change_every_combo_box(qtbot, root) -> list[str]:
    """Step each visible, enabled combo box through its items with the keys, then back."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QComboBox

    changed = []
    for combo in root.findChildren(QComboBox):
        if not _shown(combo, root) or combo.count() < 2:
            continue
        start = combo.currentText()
        combo.setFocus()
        for key in (Qt.Key.Key_Down,) * combo.count() + (Qt.Key.Key_Up,) * combo.count():
            qtbot.keyClick(combo, key)
            settle(qtbot, root)
        if combo.findText(start) >= 0 and combo.currentText() != start:
            choose(qtbot, combo, start)
            settle(qtbot, root)
        changed.append(f"{_label(combo)} back to {combo.currentText()!r}")
    return changed


def check_outputs(dialogs: Dialogs, clicked: list[str]) -> None:
    """The buttons of issue 22 were reached and did their work."""
    for text in ("Import manifest labels", "Export labels…", "Export predictions…",
                 "Extract features", "Predict", "Use defaults", "Term file…", "Add term",
                 "Show", "Save model…", "Load bundle…"):
        assert any(f"{text!r}" in c for c in clicked), f"{text} was never clicked"
    written = {p.name.split("_", 1)[1]: p for p in dialogs.saved}
    assert written["labels.csv"].read_text().startswith("image,")
    # (predictions.csv: the walk's Open buttons re-open the data first; see test_gui_click_all_effects.py)
    assert not [a for a in dialogs.asked if a.startswith("unanswered")], dialogs.asked


def test_every_control_of_the_whole_annotator(make_napari_viewer, qtbot, tmp_path,
                                              monkeypatch):
    viewer = make_napari_viewer(show=True)
    main_window(viewer).resize(1366, 768)
    annotator = dock(viewer, "ISH Annotator")
    watch = Watch(monkeypatch)
    dialogs = open_and_train(qtbot, viewer, annotator.model, annotator.train, tmp_path,
                             monkeypatch, watch)
    done: set[int] = set()
    clicked, toggled, changed = [], [], []
    for index in range(annotator.tabs.count()):
        click_tab(qtbot, annotator.tabs, index)
        clicked += click_every_button(qtbot, annotator, done)
        toggled += toggle_every_check_box(qtbot, annotator)
        changed += change_every_combo_box(qtbot, annotator)
    assert watch.problems() == []
    assert len(clicked) >= 20 and len(toggled) >= 6 and len(changed) >= 6, (clicked, toggled,
                                                                            changed)
    check_outputs(dialogs, clicked)


def test_every_control_of_each_single_panel(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    viewer = make_napari_viewer(show=True)
    main_window(viewer).resize(1366, 768)
    panels = {name: dock(viewer, name) for name in PANELS}
    watch = Watch(monkeypatch)
    dialogs = open_and_train(qtbot, viewer, panels["Annotate"].model, panels["Train"],
                             tmp_path, monkeypatch, watch)
    clicked = []
    for name, panel in panels.items():
        done: set[int] = set()
        clicked += [f"{name}: {c}" for c in click_every_button(qtbot, panel, done)]
        toggle_every_check_box(qtbot, panel)
        change_every_combo_box(qtbot, panel)
        assert watch.problems() == [], name
    check_outputs(dialogs, clicked)
