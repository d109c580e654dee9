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


def positional_limit(func: Callable[..., Any]) -> int | None:
    """How many positional arguments ``func`` takes (None: any number, it has ``*args``)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: pass everything
        return None
    kinds = [p.kind for p in params]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return None
    return sum(k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
               for k in kinds)


def shows_input_error(func: F) -> F:
    """Run a GUI handler; an :class:`InputError` becomes one notification (returns None).

    The wrapper keeps the handler's signature: Qt signals hand slots more arguments than
    they may want (``clicked(checked)``, ``returnPressed()``, ``currentIndexChanged(int)``,
    ...) and PyQt drops the surplus only for a slot whose own signature refuses it, so the
    wrapper drops positional arguments beyond what ``func`` takes, as PyQt does for a plain
    method. Every signal can then be connected to a wrapped handler directly.
    """
    limit = positional_limit(func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if limit is not None:
            args = args[:limit]
        try:
            return func(*args, **kwargs)
        except InputError as exc:
            report_error(exc)
            return None

    return wrapper  # type: ignore[return-value]
