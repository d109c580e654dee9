"""One :class:`~napari_ish_annotator.session.AnnotatorSession` per viewer, bound to it."""

from __future__ import annotations

from typing import Any

from ..session import AnnotatorSession
from ._loading import freeze_long_lived, release_frozen
from ._napari_private import on_window_destroyed, real_viewer
from ._viewer_binding import ViewerBinding, binding_of, bindings_alive


def get_session(viewer: Any) -> AnnotatorSession:
    """The session of ``viewer`` (created and bound to the viewer on first use)."""
    viewer = real_viewer(viewer)
    binding = binding_of(viewer)
    if binding is not None:
        return binding.session
    session = AnnotatorSession()
    binding = ViewerBinding(viewer, session)
    # closing the window closes the label store and drops the session (and its viewer refs)
    on_window_destroyed(viewer, lambda *_: _forget(binding))
    freeze_long_lived("start-up")  # napari's and Qt's objects: see its docstring
    return session


def _forget(binding: ViewerBinding) -> None:
    binding.close()
    binding.session.close()
    if not bindings_alive():
        release_frozen()  # the freeze lasts while the plugin is in use, no longer


def forget_session(viewer: Any) -> None:
    """Close the session's label store (used when a viewer closes)."""
    binding = binding_of(real_viewer(viewer))
    if binding is not None:
        _forget(binding)
