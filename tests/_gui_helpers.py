"""Shared fixtures-as-functions for the GUI tests (tests/conftest.py belongs to the core)."""

from __future__ import annotations

import csv
import re
import sys
import threading
import traceback
from pathlib import Path

import numpy as np
from PIL import Image

TERMS = ("ventral nerve cord", "brain", "hindgut")


def embryo_png(path: Path, rng: np.random.Generator, present: set[str], size=(48, 96)) -> None:
    """A pale ellipse with blue blobs where the present terms sit (tiny, fast to decode)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy - h / 2) / (h * 0.42)) ** 2 + ((xx - w / 2) / (w * 0.45)) ** 2 <= 1
    img = np.full((h, w, 3), 235, np.float32)
    img[inside] = (215, 205, 185)
    centres = {"ventral nerve cord": (0.7, 0.5), "brain": (0.35, 0.2), "hindgut": (0.4, 0.85)}
    for term in present:
        cy, cx = centres[term]
        blob = ((yy - cy * h) ** 2 + (xx - cx * w) ** 2) <= (0.12 * h) ** 2
        img[blob & inside] = (70, 60, 150)
    img += rng.normal(0, 6, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)


def make_dataset(folder: Path, n: int = 8, seed: int = 0) -> Path:
    """n images, genes in pairs, every term present in some and absent in others."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        present = {t for k, t in enumerate(TERMS) if (i >> k) & 1 or (i == 7 and k == 0)}
        name = f"embryo_{i:02d}.png"
        embryo_png(folder / name, rng, present)
        rows.append({"image": name, "terms": ";".join(t for t in TERMS if t in present),
                     "stage": "13-16", "gene": f"gene{i // 2}"})
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "terms", "stage", "gene"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def press(viewer, key: str) -> None:
    """Press a key on the napari canvas as a user does (Qt key events through vispy), named
    as napari names keys: "n", "1", "PageDown", "Shift-N", "Control-Z"."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    *held, name = key.split("-")
    modifier = Qt.KeyboardModifier.NoModifier
    for m in held:
        modifier |= {"Shift": Qt.KeyboardModifier.ShiftModifier,
                     "Control": Qt.KeyboardModifier.ControlModifier,
                     "Alt": Qt.KeyboardModifier.AltModifier}[m]
    qt_key = getattr(Qt.Key, f"Key_{name.upper() if len(name) == 1 else name}")
    native = canvas_widget(viewer)
    native.setFocus()
    QTest.keyClick(native, qt_key, modifier)


def main_window(viewer):
    """The viewer's Qt main window (to size it like a laptop's): napari has no public
    accessor, so the tests ask the plugin's one helper that reaches it."""
    from napari_ish_annotator.widgets import qt_main_window

    return qt_main_window(viewer)


def canvas_widget(viewer):
    """The canvas's Qt widget (key presses, its width): the main window's one OpenGL widget,
    found with Qt's public API (napari has no public accessor; its size in the viewer's
    model is ``viewer.canvas.size``)."""
    from qtpy.QtWidgets import QOpenGLWidget

    (canvas,) = main_window(viewer).findChildren(QOpenGLWidget)
    return canvas


def dock(viewer, name: str):
    """Open one of the plugin's dock widgets through napari's plugin machinery."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-ish-annotator", name)
    return widget


WAIT_MS = 120_000
#: "TypeError: ..." - how widgets/_errors.report_error shows a bug (not a user's mistake)
BUG = re.compile(r"^\s*[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Warning)\b[^\n]*:")


def wait_done(qtbot, runner, timeout: int = WAIT_MS) -> None:
    """Wait for a widget's background task and fail with its error if it did not finish."""
    qtbot.waitUntil(lambda: not runner.running, timeout=timeout)
    assert runner.last_outcome == "done", runner.last_error


def wait_embryo_shown(qtbot, viewer, timeout: int = WAIT_MS):
    """Wait until the embryo layer is on the canvas (a background Open adds the session's
    first one in stages on timers) and return it."""
    from napari_ish_annotator.widgets import (
        OPEN_HINT,
        embryo_layer,
        text_overlay,
    )

    def shown() -> bool:
        layer = embryo_layer(viewer)
        text = text_overlay(viewer).text
        return layer is not None and layer.visible and bool(text) and text != OPEN_HINT

    qtbot.waitUntil(shown, timeout=timeout)
    return embryo_layer(viewer)


# ---------------------------------------------------------------------- user actions
def reveal(qtbot, widget) -> None:
    """Bring ``widget`` into view as a user would: click the tabs it sits in, scroll to it."""
    from qtpy.QtWidgets import QScrollArea, QTabWidget

    chain = []
    parent = widget.parentWidget()
    while parent is not None:
        chain.append(parent)
        parent = parent.parentWidget()
    for ancestor in reversed(chain):  # outer tabs first
        if isinstance(ancestor, QTabWidget):
            for i in range(ancestor.count()):
                page = ancestor.widget(i)
                if page is not ancestor.currentWidget() and (page is widget or page in chain):
                    click_tab(qtbot, ancestor, i)
        toggle = getattr(ancestor, "toggle", None)  # a folded section (widgets._base.Collapsible)
        content = getattr(ancestor, "content", None)
        if toggle is not None and content in chain and not content.isVisible():
            click(qtbot, toggle)
    for ancestor in chain:
        if isinstance(ancestor, QScrollArea) and ancestor.widget() in chain + [widget]:
            ancestor.ensureWidgetVisible(widget)


def click(qtbot, widget, pos=None) -> None:
    """Left-click ``widget`` as a user does: brought into view first, it must be enabled;
    a check box is clicked on its box and text, wherever its layout stretched it."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QCheckBox, QStyle, QStyleOptionButton, QTabBar

    if not isinstance(widget, QTabBar):
        reveal(qtbot, widget)
    # a user sees a button only once its layout gave it room (a section that just grew, e.g.
    # the fine-tuning plot, lays out on the next event-loop turn); until then a click at its
    # centre lands on whatever is there
    qtbot.waitUntil(lambda: not widget.rect().isEmpty(), timeout=5000)
    assert widget.isEnabled(), f"{widget.__class__.__name__} {_text(widget)!r} is disabled"
    if pos is None and isinstance(widget, QCheckBox):
        option = QStyleOptionButton()
        widget.initStyleOption(option)
        pos = widget.style().subElementRect(QStyle.SubElement.SE_CheckBoxClickRect, option,
                                            widget).center()
    if pos is None:
        qtbot.mouseClick(widget, Qt.MouseButton.LeftButton)
    else:
        qtbot.mouseClick(widget, Qt.MouseButton.LeftButton, pos=pos)


def click_tab(qtbot, tabs, index: int) -> None:
    """Click the ``index``-th tab of a QTabWidget on its tab bar."""
    bar = tabs.tabBar()
    click(qtbot, bar, bar.tabRect(index).center())
    assert tabs.currentIndex() == index


def choose(qtbot, combo, text: str) -> None:
    """Pick ``text`` in a combo box with the arrow keys (which also emits ``activated``)."""
    from qtpy.QtCore import Qt

    want = combo.findText(text)
    assert want >= 0, f"{text!r} is not in the combo box"
    reveal(qtbot, combo)
    combo.setFocus()
    while combo.currentIndex() != want:
        before = combo.currentIndex()
        qtbot.keyClick(combo, Qt.Key.Key_Down if want > before else Qt.Key.Key_Up)
        assert combo.currentIndex() != before, f"{text!r} cannot be chosen with the keys"


def type_value(qtbot, spin, value) -> None:
    """Select a spin box's text, type ``value`` and press Enter."""
    from qtpy.QtCore import Qt

    reveal(qtbot, spin)
    spin.setFocus()
    spin.selectAll()
    qtbot.keyClicks(spin, str(value))
    qtbot.keyClick(spin, Qt.Key.Key_Return)
    assert spin.value() == value


def answer_save_dialog(monkeypatch, path: Path) -> None:
    """The next save dialogs answer ``path`` (as if the user typed it and pressed Save)."""
    from qtpy.QtWidgets import QFileDialog

    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        staticmethod(lambda *_a, **_k: (str(path), "")))


def _text(widget) -> str:
    return widget.text() if hasattr(widget, "text") else widget.objectName()


# ---------------------------------------------------------------------- watching, dialogs
class Watch:
    """Exceptions reaching sys/threading.excepthook and notifications, from now on."""

    def __init__(self, monkeypatch) -> None:
        from napari.utils.notifications import notification_manager

        self.errors: list[str] = []
        self.records = notification_manager.records
        self.start = len(self.records)
        monkeypatch.setattr(sys, "excepthook", self._hook)
        monkeypatch.setattr(threading, "excepthook",
                            lambda a: self._hook(a.exc_type, a.exc_value, a.exc_traceback))

    def _hook(self, kind, value, tb) -> None:
        self.errors.append("".join(traceback.format_exception(kind, value, tb)))

    def problems(self) -> list[str]:
        """Every exception, and every warning/error notification that is not one line of
        plain words (an InputError's message) - a bug's "TypeError: ..." included."""
        from napari.utils.notifications import NotificationSeverity

        bad = list(self.errors)
        for note in self.records[self.start:]:
            text = str(note.message)
            if getattr(note, "exception", None) is not None:
                bad.append(f"error notification: {text}")
            elif note.severity >= NotificationSeverity.WARNING and (
                    "\n" in text.strip() or BUG.match(text)):
                bad.append(f"{note.severity}: {text}")
        return bad


class Dialogs:
    """Answers the static QFileDialog/QMessageBox/QInputDialog calls from files on disk, so
    a new button's dialog gets a sensible answer too: a save dialog a fresh path (with the
    suggested name), an open dialog the first prepared file its filter matches, a folder
    dialog the saved model for a model/bundle caption and the image folder otherwise."""

    def __init__(self, monkeypatch, tmp_path: Path, data: Path) -> None:
        from qtpy.QtWidgets import QDialog, QFileDialog, QInputDialog, QMessageBox

        self.out = tmp_path / "answers"
        self.out.mkdir()
        self.data = data
        terms = tmp_path / "terms.txt"
        terms.write_text("\n".join(TERMS) + "\n", encoding="utf-8")
        self.files = [terms, data / "manifest.csv", *sorted(data.glob("*.png"))]
        self.saved: list[Path] = []
        self.asked: list[str] = []
        for name, fn in (("getSaveFileName", self.save), ("getOpenFileName", self.open_one),
                         ("getOpenFileNames", self.open_many),
                         ("getExistingDirectory", self.folder)):
            monkeypatch.setattr(QFileDialog, name, staticmethod(fn))
        yes = QMessageBox.StandardButton.Yes
        for name in ("question", "warning", "information", "critical"):
            monkeypatch.setattr(QMessageBox, name, staticmethod(lambda *a, **k: yes))
        monkeypatch.setattr(QInputDialog, "getText", staticmethod(lambda *a, **k: ("tester", True)))
        monkeypatch.setattr(QInputDialog, "getItem",
                            staticmethod(lambda _p, _t, _l, items, current=0, *a, **k:
                                         (items[current], True)))
        for name in ("exec", "exec_"):  # a modal dialog nobody answers would hang the test
            for cls in (QDialog, QMessageBox, QFileDialog):
                if hasattr(cls, name):
                    monkeypatch.setattr(cls, name, lambda dialog, *_a: self._unanswered(dialog))

    def _unanswered(self, dialog) -> int:
        self.asked.append(f"unanswered dialog {dialog.windowTitle()!r}")
        return 0

    def model(self) -> Path | None:
        return next((p for p in self.saved if p.is_dir()), None)

    @staticmethod
    def _patterns(filters: str) -> list[str]:
        return re.findall(r"\*\.[\w.]+", filters or "")

    def save(self, _parent=None, caption="", directory="", filters="", *_a, **_k):
        self.asked.append(caption)
        name = Path(directory).name or "out"
        patterns = self._patterns(filters)
        if not Path(name).suffix and patterns:
            name += patterns[0][1:]
        path = self.out / f"{len(self.asked):02d}_{name}"
        self.saved.append(path)
        return str(path), filters

    def open_one(self, _parent=None, caption="", _directory="", filters="", *_a, **_k):
        self.asked.append(caption)
        found = [f for f in self.files if any(f.match(p) for p in self._patterns(filters))]
        return (str(found[0]) if found else ""), filters

    def open_many(self, _parent=None, caption="", _directory="", filters="", *_a, **_k):
        self.asked.append(caption)
        found = [str(f) for f in self.files if any(f.match(p) for p in self._patterns(filters))]
        return found, filters

    def folder(self, _parent=None, caption="", *_a, **_k):
        self.asked.append(caption)
        if re.search(r"model|bundle", caption, re.IGNORECASE):
            model = self.model()
            return str(model) if model is not None else ""
        return str(self.data)


# ---------------------------------------------------------------------- setup by clicks
def open_annotator(qtbot, make_napari_viewer, manifest: Path, monkeypatch):
    """File > Open of ``manifest`` through the reader in a shown viewer, then the ISH
    Annotator dock; returns (viewer, annotator, session, watch)."""
    from napari_ish_annotator.widgets import session_of

    viewer = make_napari_viewer(show=True)
    viewer.open(str(manifest), plugin="napari-ish-annotator")
    annotator = dock(viewer, "ISH Annotator")
    wait_embryo_shown(qtbot, viewer)
    return viewer, annotator, session_of(viewer), Watch(monkeypatch)


def choose_small_model(qtbot, model, train) -> None:
    """Pick a small random-weights model in the Model and Train controls, as a user does:
    VGG16 layer 21 at 64 px on the CPU, 3 ensemble members."""
    choose(qtbot, model.weights_combo, "random")
    choose(qtbot, model.layer_combo, "21")
    choose(qtbot, model.device_combo, "cpu")
    type_value(qtbot, model.size_spin, 64)
    type_value(qtbot, train.members_spin, 3)


def open_and_train(qtbot, viewer, model, train, tmp_path: Path, monkeypatch, watch: Watch):
    """Open a small dataset through the reader, pick a small random-weights model in the
    Model controls, click Train and Save model… (its dialog answered)."""
    data = tmp_path / "data"
    make_dataset(data, n=6)
    viewer.open(str(data / "manifest.csv"), plugin="napari-ish-annotator")
    wait_embryo_shown(qtbot, viewer)
    dialogs = Dialogs(monkeypatch, tmp_path, data)
    choose_small_model(qtbot, model, train)
    click(qtbot, train.cv_check)
    assert not train.cv_check.isChecked()
    click(qtbot, train.train_button)
    wait_done(qtbot, train.runner)
    assert watch.problems() == []
    click(qtbot, train.save_button)
    assert dialogs.model() is not None, ("Save model… wrote no bundle", watch.problems())
    click(qtbot, train.cv_check)
    return dialogs
