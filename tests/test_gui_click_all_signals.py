"""A handler wrapped by widgets/_errors.shows_input_error works on every kind of signal the
docks connect, whatever the signal passes (issue 22: PyQt's clicked(checked) reached
handlers that take no argument and raised a TypeError on 10 of 21 buttons)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from qtpy.QtCore import Qt
from qtpy.QtGui import QAction
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from _gui_helpers import Watch, click
from napari_ish_annotator.core.utils.errors import InputError
from napari_ish_annotator.widgets import shows_input_error

pytestmark = pytest.mark.gui


class Panel(QWidget):
    """One control per signal kind, each connected to a wrapped method taking no argument
    and to one taking the signal's value."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple]] = []
        self.button = QPushButton("Go")
        self.check = QCheckBox("on")
        self.edit = QLineEdit()
        self.combo = QComboBox()
        self.combo.addItems(["a", "b", "c"])
        self.spin = QSpinBox()
        self.action = QAction("Do", self)
        self.tool = QToolButton()
        self.tool.setDefaultAction(self.action)
        self.failing = QPushButton("Fails")
        layout = QVBoxLayout(self)
        for w in (self.button, self.check, self.edit, self.combo, self.spin, self.tool,
                  self.failing):
            layout.addWidget(w)
        for signal in (self.button.clicked, self.check.toggled, self.edit.returnPressed,
                       self.edit.textChanged, self.combo.currentIndexChanged,
                       self.combo.currentTextChanged, self.combo.activated,
                       self.spin.valueChanged, self.action.triggered):
            signal.connect(self.no_argument)
            signal.connect(self.one_argument)
        self.failing.clicked.connect(self.fails)

    @shows_input_error
    def no_argument(self) -> None:
        self.calls.append(("none", ()))

    @shows_input_error
    def one_argument(self, value=None) -> None:
        self.calls.append(("one", (value,)))

    @shows_input_error
    def fails(self) -> None:
        raise InputError("terms.txt: line 3 is empty; remove it")


def test_wrapped_handlers_keep_their_signature(qtbot):
    assert list(inspect.signature(Panel.no_argument).parameters) == ["self"]
    assert str(inspect.signature(Panel.one_argument).parameters["value"]) == "value=None"
    assert Panel.no_argument.__name__ == "no_argument"
    # a direct call still passes what it is given
    panel = Panel()
    qtbot.addWidget(panel)
    panel.one_argument(7)
    assert panel.calls == [("one", (7,))]


@pytest.mark.parametrize("action", ["button", "check", "return", "typing", "combo", "spin",
                                    "tool"])
def test_every_signal_reaches_wrapped_handlers(qtbot, monkeypatch, action):
    panel = Panel()
    qtbot.addWidget(panel)
    panel.show()
    watch = Watch(monkeypatch)
    if action == "button":
        click(qtbot, panel.button)
        want = [False]  # clicked(checked)
    elif action == "check":
        click(qtbot, panel.check)
        want = [True]  # toggled(on); clicked is not connected here
    elif action == "return":
        qtbot.keyClick(panel.edit, Qt.Key.Key_Return)
        want = [None]  # returnPressed()
    elif action == "typing":
        qtbot.keyClicks(panel.edit, "x")
        want = ["x"]  # textChanged(str)
    elif action == "combo":
        panel.combo.setFocus()
        qtbot.keyClick(panel.combo, Qt.Key.Key_Down)
        want = [1, "b", 1]  # currentIndexChanged(int), currentTextChanged(str), activated(int)
    elif action == "spin":
        qtbot.keyClick(panel.spin, Qt.Key.Key_Up)
        want = [1]  # valueChanged(int)
    else:
        click(qtbot, panel.tool)
        want = [False]  # triggered(checked)
    assert watch.problems() == []
    assert [c for c in panel.calls if c[0] == "none"] == [("none", ())] * len(want)
    assert sorted(map(repr, (c[1][0] for c in panel.calls if c[0] == "one"))) == sorted(
        map(repr, want))


def test_an_input_error_in_a_clicked_handler_is_one_message(qtbot, monkeypatch):
    from napari.utils.notifications import NotificationSeverity

    panel = Panel()
    qtbot.addWidget(panel)
    panel.show()
    watch = Watch(monkeypatch)
    click(qtbot, panel.failing)
    notes = watch.records[watch.start:]
    assert [(str(n.message), n.severity) for n in notes] == [
        ("terms.txt: line 3 is empty; remove it", NotificationSeverity.ERROR)]
    assert watch.problems() == []


def test_dialogs_answer_from_files_and_refuse_to_hang(qtbot, monkeypatch, tmp_path):
    """The click-all tests' dialog answers (tests/_gui_helpers.Dialogs)."""
    from qtpy.QtWidgets import QFileDialog, QMessageBox

    from _gui_helpers import Dialogs, make_dataset

    make_dataset(tmp_path / "data", n=2)
    dialogs = Dialogs(monkeypatch, tmp_path, tmp_path / "data")
    path, _ = QFileDialog.getSaveFileName(None, "Label file", "", "SQLite (*.sqlite)")
    assert path.endswith("_out.sqlite") and Path(path).parent == dialogs.out
    assert QFileDialog.getOpenFileName(None, "Open", "", "Manifest (*.csv)")[0].endswith(
        "manifest.csv")
    assert len(QFileDialog.getOpenFileNames(None, "Open", "", "Images (*.png *.tif)")[0]) == 2
    assert QFileDialog.getOpenFileName(None, "Weights", "", "Weights (*.pt)")[0] == ""
    assert QFileDialog.getExistingDirectory(None, "Model bundle folder") == ""  # none saved
    box = QMessageBox()
    qtbot.addWidget(box)
    assert box.exec() == 0
    assert dialogs.asked[-1] == "unanswered dialog ''"
