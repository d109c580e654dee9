"""The one progress/cancel protocol every long computation uses.

Long work is written as a *generator* that yields :class:`Progress` tuples
``(done, total, message)`` and ``return``s its result. That single shape serves all callers:

* napari widgets hand the generator function to ``thread_worker``; ``yielded`` drives the
  progress bar, ``returned`` delivers the result, and ``worker.quit()`` cancels at the next
  yield (so cancellation granularity is one batch / one member / one epoch);
* the CLI and notebooks call :func:`drive`, which forwards progress to a callback (a tqdm bar
  on stderr for the CLI) and honours a :class:`CancelToken`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")


class Progress(NamedTuple):
    done: int
    total: int
    message: str = ""


ProgressGen = Generator[Progress, None, T]
ProgressCallback = Callable[[int, int, str], None]


class Cancelled(RuntimeError):
    """Raised by :func:`drive` when its cancel token is set; partial results are discarded."""


class CancelToken:
    """Thread-safe flag a GUI or signal handler sets to stop long work at the next step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


def drive(
    gen: ProgressGen[T],
    callback: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> T:
    """Run a progress generator to completion and return its result.

    Checks ``cancel`` after every step; on cancel the generator is closed (its ``finally``
    blocks run, so temporary files are cleaned up) and :class:`Cancelled` is raised.
    """
    try:
        while True:
            if cancel is not None and cancel.cancelled:
                gen.close()
                raise Cancelled("cancelled by the user")
            step = next(gen)
            if callback is not None:
                callback(*step)
    except StopIteration as stop:
        return stop.value


def sub_progress(
    gen: ProgressGen[T], offset: int, scale_total: int | None = None, prefix: str = ""
) -> Generator[Progress, None, T]:
    """Re-yield a nested generator's progress shifted by ``offset`` (for multi-stage work)."""
    try:
        while True:
            done, total, message = next(gen)
            yield Progress(offset + done, scale_total if scale_total else offset + total,
                           f"{prefix}{message}")
    except StopIteration as stop:
        return stop.value


class TqdmCallback:
    """A progress callback that draws a tqdm bar on stderr (used by the CLI).

    ``disable=None`` hides the bar when stderr is not a terminal. When stderr is a log file
    (batch jobs: ``2> log``) and the bar is shown, it is redrawn at most every
    ``log_interval`` seconds so the log stays readable.
    """

    def __init__(self, desc: str = "", disable: bool | None = None,
                 log_interval: float = 10.0) -> None:
        self.desc = desc
        self.disable = disable
        self.log_interval = log_interval
        self._tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self._last = float("-inf")
        self._bar: Any = None

    def __call__(self, done: int, total: int, message: str) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=self.desc, file=sys.stderr, disable=self.disable,
                             leave=False, dynamic_ncols=True)
        if self._bar.total != total:
            self._bar.total = total
        self._bar.n = done
        if message:
            self._bar.set_postfix_str(message, refresh=False)
        now = time.monotonic()
        if self._tty or done >= total or now - self._last >= self.log_interval:
            self._last = now
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> TqdmCallback:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: at most this many progress reports per second reach the caller
PROGRESS_RATE = 10.0


def throttled(gen: ProgressGen, rate: float = PROGRESS_RATE) -> ProgressGen:
    """Pass on at most ``rate`` progress steps a second (plus every step carrying a ``record``,
    e.g. fine-tuning's per-epoch history); returns ``gen``'s result.

    Without it a fit of 73 terms x 11 members reports ~800 steps and the GUI spends its time
    repainting the progress bar.
    """
    interval = 1.0 / rate
    last = -interval
    try:
        step = next(gen)
        while True:
            now = time.perf_counter()
            if now - last >= interval or getattr(step, "record", None) is not None:
                last = now
                yield step
            step = next(gen)
    except StopIteration as stop:
        return stop.value
    finally:
        gen.close()
