"""Run session steps (progress generators) off the GUI thread with a progress bar and Cancel.

Set ``SYNCHRONOUS = True`` (or the environment variable ``ISH_ANNOTATOR_SYNC=1``, read when a
task starts) to run the same generators on the calling thread, which makes debugging with
breakpoints easy.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import traceback
from collections.abc import Callable, Generator
from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..core.utils.errors import InputError
from ..core.utils.progress import Progress, throttled
from ._errors import report_error
from ._loading import load_torch, torch_loaded, triton_blocked

#: run tasks inline (True/False); None: as ``ISH_ANNOTATOR_SYNC`` says when a task starts
SYNCHRONOUS: bool | None = None


def synchronous() -> bool:
    """Whether tasks run on the calling thread (:data:`SYNCHRONOUS`, else the environment)."""
    if SYNCHRONOUS is not None:
        return SYNCHRONOUS
    return os.environ.get("ISH_ANNOTATOR_SYNC", "") == "1"
log = logging.getLogger(__name__)


def _orphan(life: dict[str, Any], *_: Any) -> None:
    """The runner's widget is being destroyed: stop its worker at the next progress step."""
    life["alive"] = False
    worker = life.get("worker")
    if worker is not None:
        with contextlib.suppress(RuntimeError):
            worker.quit()


class TaskRunner(QWidget):
    """A progress bar, a status line and a Cancel button driving one worker at a time."""

    started = Signal()
    finished = Signal(str)  # "done", "cancelled" or "error"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.worker: Any = None
        self.last_error: str | None = None
        self.last_outcome: str | None = None
        self._cancel_requested = False
        # survives this widget: closing napari mid-task stops the worker, and its late
        # signals must not touch deleted Qt objects (that aborts the whole process)
        self._life: dict[str, Any] = {"alive": True, "worker": None}
        self.destroyed.connect(functools.partial(_orphan, self._life))
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.bar, 1)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.status)
        self.bar.setVisible(False)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def _progress(self, step: Any) -> None:
        done, total, message = step
        self.bar.setMaximum(max(int(total), 0))  # 0: busy, total unknown
        self.bar.setValue(min(int(done), max(int(total), 0)))
        self.status.setText(message)

    def _begin(self, message: str) -> None:
        self.last_error = None
        self.last_outcome = None
        self._cancel_requested = False
        self.bar.setVisible(True)
        self.bar.setMaximum(0)  # busy until the first progress step
        self.bar.setValue(0)
        self.status.setText(message)
        self.cancel_button.setEnabled(True)
        self.started.emit()

    def _end(self, outcome: str, text: str = "") -> None:
        self.worker = None
        self.cancel_button.setEnabled(False)
        self.bar.setVisible(False)
        self.last_outcome = outcome
        self.status.setText(text)
        self.finished.emit(outcome)

    def start_request(self, build: Callable[[], Any], func: Callable[..., Generator],
                      **kwargs: Any) -> Any:
        """Build a step's request now (GUI thread), then run ``func(request)`` in a worker.

        A request that cannot be built (no model, nothing open, a bad path) is one message
        and nothing runs; returns the worker or None.
        """
        try:
            request = build()
        except InputError as exc:
            report_error(exc)
            return None
        return self.start(func, request, **kwargs)

    def start(
        self,
        func: Callable[..., Generator],
        *args: Any,
        on_done: Callable[[Any], None] | None = None,
        message: str = "working…",
        done_message: str = "",
        needs_torch: bool | Callable[[], bool] = True,
    ) -> Any:
        """Run ``func(*args)`` (a progress generator) in a napari ``thread_worker``.

        ``needs_torch``: the step runs a network, so torch is imported first, in the worker
        (:func:`._loading.load_torch`); a callable decides in the worker (e.g. Train: only if
        some features are not cached, as the CLI's warm path imports no torch)."""
        if self.running:
            report_error(InputError("another task is still running; wait or press Cancel"))
            return None
        load_first = bool(needs_torch) and not torch_loaded()

        def must_load() -> bool:
            return load_first and (not callable(needs_torch) or needs_torch())

        self._begin(message)
        if synchronous():
            if must_load():
                load_torch()
            return self._run_sync(func, args, on_done, done_message)
        from superqt.utils import create_worker  # napari's adds a traceback relay on error

        def run() -> Generator:  # progress reaches the GUI at most ~10 times a second
            if must_load():
                yield Progress(0, 0, "loading PyTorch (once per session)…")
                load_torch()
            with triton_blocked():  # a step that imports torch after all keeps triton out
                return (yield from throttled(func(*args)))

        worker = create_worker(run, _start_thread=False, _ignore_errors=True)
        self.worker = worker
        self._life["worker"] = worker
        life = self._life
        state: dict[str, Any] = {"outcome": "done"}

        def progress(step: Any) -> None:
            if life["alive"]:
                self._progress(step)

        def returned(result: Any) -> None:
            if not life["alive"]:
                return  # the panel (napari) was closed: drop the result
            if on_done is not None:
                try:
                    on_done(result)
                except Exception as exc:
                    state["outcome"] = "error"
                    self.last_error = report_error(exc)

        def errored(exc: BaseException) -> None:
            if not life["alive"]:
                log.error("".join(traceback.format_exception(exc)))
                return
            state["outcome"] = "error"
            self.last_error = report_error(exc)

        def aborted() -> None:
            state["outcome"] = "cancelled"

        def finished() -> None:
            if life["worker"] is worker:
                life["worker"] = None
            if life["alive"] and self.worker is worker:
                outcome = state["outcome"]
                text = {"done": done_message, "cancelled": "cancelled",
                        "error": self.last_error or "failed"}[outcome]
                self._end(outcome, text)

        worker.yielded.connect(progress)
        worker.returned.connect(returned)
        worker.errored.connect(errored)
        worker.aborted.connect(aborted)
        worker.finished.connect(finished)
        worker.start()
        return worker

    def _run_sync(self, func: Callable[..., Generator], args: tuple,
                  on_done: Callable[[Any], None] | None, done_message: str) -> None:
        from qtpy.QtWidgets import QApplication

        self.worker = "sync"
        gen = throttled(func(*args))
        try:
            while True:
                if self._cancel_requested:
                    gen.close()
                    self._end("cancelled", "cancelled")
                    return None
                self._progress(next(gen))
                QApplication.processEvents()
        except StopIteration as stop:
            try:
                if on_done is not None:
                    on_done(stop.value)
            except Exception as exc:
                self._end("error", report_error(exc))
                return None
            self._end("done", done_message)
        except Exception as exc:
            self.last_error = report_error(exc)
            self._end("error", self.last_error)
        return None

    def cancel(self) -> None:
        """Stop the running task at its next progress step (results are discarded)."""
        self._cancel_requested = True
        if self.worker is not None and self.worker != "sync":
            self.status.setText("cancelling…")
            self.worker.quit()
