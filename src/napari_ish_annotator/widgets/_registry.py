"""One :class:`~napari_ish_annotator.session.AnnotatorSession` per viewer, bound to it."""

from __future__ import annotations

import functools
import weakref
from typing import Any

from ..session import AnnotatorSession
from ._loading import freeze_long_lived
from ._napari_private import on_window_destroyed, real_viewer
from ._viewer_binding import bind_viewer, unbind_session

_SESSIONS: dict[int, tuple[Any, AnnotatorSession]] = {}


def get_session(viewer: Any) -> AnnotatorSession:
    """The session of ``viewer`` (created and bound to the viewer on first use)."""
    viewer = real_viewer(viewer)
    key = id(viewer)
    entry = _SESSIONS.get(key)
    if entry is not None and entry[0]() is viewer:
        return entry[1]
    session = AnnotatorSession()
    _SESSIONS[key] = (weakref.ref(viewer), session)
    weakref.finalize(viewer, _forget, key, session)
    # closing the window closes the label store and drops the session (and its viewer refs)
    on_window_destroyed(viewer, functools.partial(_forget, key, session))
    bind_viewer(viewer, session)
    freeze_long_lived("start-up")  # napari's and Qt's objects: see its docstring
    return session


def _forget(key: int, session: AnnotatorSession, *_: Any) -> None:
    entry = _SESSIONS.get(key)
    if entry is not None and entry[1] is session:
        del _SESSIONS[key]
    unbind_session(session)
    session.close()


def forget_session(viewer: Any) -> None:
    """Close the session's label store (used when a viewer closes)."""
    entry = _SESSIONS.pop(id(real_viewer(viewer)), None)
    if entry is not None:
        unbind_session(entry[1])
        entry[1].close()
