"""One way to show a problem: a user-fixable :class:`InputError` as its message, a bug with
its type (the docks, the key bindings and the workers all report through here)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from ..core.utils.errors import InputError

F = TypeVar("F", bound=Callable[..., Any])


def report_error(exc: BaseException) -> str:
    """Show a notification: a user-fixable problem as its message, a bug with its type."""
    import logging
    import traceback

    from napari.utils.notifications import show_error

    if isinstance(exc, InputError):
        message = str(exc)
    else:
        message = f"{type(exc).__name__}: {exc}"
        logging.getLogger(__name__).error("".join(traceback.format_exception(exc)))
    show_error(message)
    return message


def shows_input_error(func: F) -> F:
    """Run a GUI handler; an :class:`InputError` becomes one notification (returns None).

    Extra positional arguments a signal adds (``clicked(checked)``) are dropped when the
    handler takes fewer, so a wrapped slot keeps its own signature."""
    params = list(inspect.signature(func).parameters.values())
    varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    n_positional = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not varargs:
            args = args[:n_positional]
        try:
            return func(*args, **kwargs)
        except InputError as exc:
            report_error(exc)
            return None

    return wrapper  # type: ignore[return-value]
