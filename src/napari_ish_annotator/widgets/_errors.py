"""One way to show a problem: a user-fixable :class:`InputError` as its message, a bug with
its type (the docks, the key bindings and the workers all report through here).

core/ shares its messages with the command line, whose advice names options (``--weights
FILE``); :data:`GUI_WORDS` says the same in the panels' words, in one table, and
:func:`error_text` puts what is wrong and what to do first, the file after.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from typing import Any, TypeVar

from ..core.utils.errors import InputError

F = TypeVar("F", bound=Callable[..., Any])

_MODEL = "in the Model panel"
#: the command line's advice -> the panels' words (first match first; the last rule is for
#: options nobody wrote a rule for yet: never a bare ``--option`` in a notification)
GUI_WORDS: tuple[tuple[str, str], ...] = (
    (r"\. Without internet, download that file on another machine and place it at \S+ \(the "
     r"folder is torch hub's cache, \$TORCH_HOME/hub/checkpoints\), or ",
     "; without internet, download that file on another machine and place it at the path "
     "below (torch hub's cache), or "),
    (r"pass --weights FILE with a local state dict \(--weights random for an offline smoke "
     r"run\)", f"choose a weights file (File… {_MODEL}), or random weights for a trial run"),
    (r"use --weights random / a weights file",
     f"choose random weights or a weights file (File… {_MODEL})"),
    (r"use --device auto or --device cpu", f"choose Device auto or cpu {_MODEL}"),
    (r"choose --backbone vgg16 / resnet50", f"choose Backbone vgg16 or resnet50 {_MODEL}"),
    (r"(?:pass|use) --backbone (\S+)", rf"choose Backbone \1 {_MODEL}"),
    (r"use --layer (\S+)", rf"choose Layer \1 {_MODEL}"),
    (r"give a model folder \(ish-annotator train --out\) or a fine-tuning checkpoint "
     r"\(ish-annotator finetune --out\)",
     "choose a model folder saved with Save model… (Train panel) or a fine-tuning checkpoint"),
    (r"give the folder written by 'ish-annotator train --out'",
     "choose a folder saved with Save model… in the Train panel"),
    (r"use e\.g\. --ensemble (\d+)", r"set Ensemble members (Train panel) to e.g. \1"),
    (r"use --folds \d+ or fewer, add images of more genes, or give a separate --test manifest",
     "label images of more genes, or untick cross-validated AUC in the Train panel"),
    (r"use e\.g\. --folds 5", "untick cross-validated AUC in the Train panel"),
    (r"raise the limit with --max-pixels (\d+) \(GUI and scripts: (\w+)=\d+\)",
     r"raise the limit by starting napari with the environment variable \2=\1"),
    (r"point --cache \(or TMPDIR\) to a larger disk",
     "start napari with TMPDIR pointing to a larger disk"),
    (r"use --precision fp32 or auto", "use fp32 or auto precision"),
    (r"(?<![\w-])--(?!force-reinstall)([a-z][\w-]*)", r"the \1 setting"),
)
_RULES = tuple((re.compile(pattern), words) for pattern, words in GUI_WORDS)


def gui_words(message: str) -> str:
    """``message`` with the command line's options said as the panels say them."""
    for pattern, words in _RULES:
        message = pattern.sub(words, message)
    return message


def error_text(exc: BaseException) -> str:
    """What a notification says: for an InputError what is wrong and what to do (one line),
    then the file (and row) it is about; for a bug its type and message."""
    if not isinstance(exc, InputError):
        return f"{type(exc).__name__}: {exc}"
    text = gui_words(str(exc.message))
    if exc.path is not None:
        text += f"\n{exc.path}" + (f", row {exc.row}" if exc.row is not None else "")
    return text


def report_error(exc: BaseException) -> str:
    """Show a notification: a user-fixable problem as its message, a bug with its type."""
    import logging
    import traceback

    from napari.utils.notifications import show_error

    message = error_text(exc)
    if not isinstance(exc, InputError):
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
