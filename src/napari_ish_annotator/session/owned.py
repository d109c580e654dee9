"""Session state is written by one thread only: the GUI thread that made it.

Steps run in workers and return frozen results; only the owning thread applies them. The
session and its parts (:mod:`.labels`, :mod:`.model`) all check this on every attribute
write, so a step that writes state from a worker fails at once instead of racing the GUI.
"""

from __future__ import annotations

import threading
from typing import Any


class WrongThreadError(RuntimeError):
    """A session attribute was written from a thread other than the one that owns it."""


class OwnedByOneThread:
    """Base of the session and its parts: attribute writes from another thread raise."""

    _owner: int  # the thread that made the session

    def __init__(self, owner: int | None = None) -> None:
        object.__setattr__(self, "_owner", threading.get_ident() if owner is None else owner)

    def __setattr__(self, name: str, value: Any) -> None:
        if threading.get_ident() != self._owner:
            raise WrongThreadError(
                f"{type(self).__name__}.{name} written from thread "
                f"{threading.current_thread().name}; steps return results and only the "
                "owning (GUI) thread applies them")
        object.__setattr__(self, name, value)
