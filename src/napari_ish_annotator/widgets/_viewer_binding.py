"""Connect a session to its viewer: the one embryo layer, the canvas text overlay, the keys.

This lives outside the dock widgets so the image, the on-canvas probabilities and the
keyboard work whichever panels are open. It owns the embryo layer, the only code that makes
one: :func:`show_current` (on every ``current_changed``: fills the layer, or adds it); for a
session's first image after a background open, :func:`first_show_soon` (staged on timers);
for File > Open and the sample data, which must hand napari layer data,
:func:`open_returning_layer` (reached through :func:`napari_ish_annotator.widgets.open_in_viewer`).
While one of the last two is under way, :func:`show_current` leaves the layer to it.
"""

from __future__ import annotations

from typing import Any

from ..core.utils.errors import InputError
from ..session import AnnotatorSession
from ._embryo_features import bind_table_layer
from ._errors import report_error, shows_input_error
from ._napari_private import route_csv_saves, window_closed

EMBRYO_LAYER = "ISH embryo"
META_KEY = "ish_annotator"


def embryo_layer(viewer: Any) -> Any | None:
    """The session's image layer (identified by its metadata, whatever its name)."""
    for layer in viewer.layers:
        if layer.metadata.get(META_KEY) == "embryo":
            return layer
    return None


def embryo_layer_kwargs(session: AnnotatorSession) -> dict:
    """Layer kwargs for the embryo layer."""
    return {"name": EMBRYO_LAYER, "rgb": True,
            "metadata": {META_KEY: "embryo", "path": str(session.current_path)}}


#: sessions whose embryo layer napari is about to add from layer data we returned
_LAYER_RETURNED: set[int] = set()


def open_returning_layer(viewer: Any, session: AnnotatorSession, inputs: list) -> list[tuple]:
    """Open ``inputs`` in the session and return the embryo layer's data for napari to add
    (a reader or sample must return layer data); the previous embryo layer goes."""
    old = embryo_layer(viewer)
    if old is not None:
        viewer.layers.remove(old)
    _LAYER_RETURNED.add(id(session))
    try:
        session.open(inputs)
    finally:
        _LAYER_RETURNED.discard(id(session))
    return [(session.image(), embryo_layer_kwargs(session), "image")]


def _current_rgb(session: AnnotatorSession) -> Any | None:
    """The current image, or None after telling the user why it cannot be read."""
    try:
        return session.image()
    except InputError as exc:
        report_error(exc)
        return None


def show_current(viewer: Any, session: AnnotatorSession) -> None:
    """Put the current image into the one reused RGB layer (created if missing)."""
    if session.current_path is None:
        return
    layer = embryo_layer(viewer)
    if layer is None and (id(session) in _FIRST_SHOW_PENDING or id(session) in _LAYER_RETURNED):
        return  # the staged first show or napari (open_returning_layer) adds it
    rgb = _current_rgb(session)
    if rgb is None:
        return
    if layer is None:
        viewer.add_image(rgb, **embryo_layer_kwargs(session))
        viewer.reset_view()
        return
    old_shape = layer.data.shape
    layer.data = rgb
    layer.metadata["path"] = str(session.current_path)
    if old_shape != rgb.shape:
        layer.reset_contrast_limits()
        viewer.reset_view()


#: ms between the stages of a session's first image. napari's first layer costs 0.3-0.5 s of
#: GUI time in one piece (layer controls, the image shaders, the overlay's glyphs and shaders);
#: staged on timers (a zero delay would run in the same batch of events) no piece blocks the
#: viewer for more than ~0.13 s here, and the opening's own work is not added to any of them
FIRST_SHOW_STAGE_MS = 40
_FIRST_SHOW_PENDING: set[int] = set()  # sessions whose first image is being staged


def stage_first_show(viewer: Any, session: AnnotatorSession) -> None:
    """Leave the first embryo layer to :func:`first_show_soon`: from now on a session change
    that would add it (the background Open's result, applied next) leaves it be."""
    if embryo_layer(viewer) is None:
        first_show_soon(viewer, session)


def first_show_soon(viewer: Any, session: AnnotatorSession) -> None:
    """Show the session's first embryo in timer events of their own: add the layer hidden
    (layer controls), show it (image shaders), write the first word of the canvas text (text
    shaders, a few glyphs), then all of it (the other glyphs), whatever image is current."""
    from qtpy.QtCore import QTimer

    if id(session) in _FIRST_SHOW_PENDING:
        return
    _FIRST_SHOW_PENDING.add(id(session))
    layer: list[Any] = []

    def add() -> bool:
        if embryo_layer(viewer) is not None or session.current_path is None:
            return False
        rgb = _current_rgb(session)
        if rgb is None:
            return False
        layer.append(viewer.add_image(rgb, visible=False, **embryo_layer_kwargs(session)))
        viewer.reset_view()
        return True

    def show() -> bool:
        layer[0].visible = True
        return True

    def first_word() -> bool:
        overlay = text_overlay(viewer)
        overlay.text = overlay_text(session).split(" ", 1)[0]
        overlay.visible = bool(overlay.text)
        return True

    stages = [add, show, first_word]

    def run_next() -> None:
        stage = stages.pop(0)
        go_on = not window_closed(viewer) and stage()
        if go_on and stages:
            QTimer.singleShot(FIRST_SHOW_STAGE_MS, run_next)
            return
        _FIRST_SHOW_PENDING.discard(id(session))
        if go_on:  # the whole text, the rest of its glyphs rendered in the next paint
            update_overlay(viewer, session)

    QTimer.singleShot(FIRST_SHOW_STAGE_MS, run_next)


#: the canvas text before any image is open: what to do first. napari's welcome screen hides
#: it while the viewer has no layer (it shows over other layers), but it is drawn either way,
#: which prepares the text shaders and most glyphs: opening's longest GUI stall 0.21 -> 0.13 s
OPEN_HINT = ("ISH Annotator: open embryo images in the Embryos tab\n"
             "(Images…, Folder… or Manifest…), or File > Open a manifest.csv")


def overlay_text(session: AnnotatorSession) -> str:
    """The terms called present (the one rule, :mod:`..core.learn.decision`) with their
    probabilities, highest first: the same answer as the Annotate list's pred. column."""
    if session.current_path is None:
        return OPEN_HINT if session.n_images == 0 else ""
    lines = [f"{session.index + 1}/{session.n_images}  {session.current_path.name}"]
    probs, called = session.probabilities_for(), session.called_for()
    if probs:
        shown = [(t, p) for t, p in sorted(probs.items(), key=lambda kv: -kv[1]) if called[t]]
        lines += [f"{p:.2f}  {t}" for t, p in shown] or ["(no term called present)"]
    return "\n".join(lines)


def text_overlay(viewer: Any) -> Any:
    """The canvas text overlay (``viewer.canvas.overlays.text`` since napari 0.9)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    if overlays is not None and hasattr(overlays, "text"):
        return overlays.text
    return viewer.text_overlay


def update_overlay(viewer: Any, session: AnnotatorSession) -> None:
    """Write the canvas text; it waits while the session's first image is being staged."""
    if id(session) in _FIRST_SHOW_PENDING:
        return
    overlay = text_overlay(viewer)
    overlay.text = overlay_text(session)
    overlay.visible = bool(overlay.text)


#: each bound session's key handlers by napari key name, for the panels' tables
_KEYS: dict[int, dict[str, Any]] = {}


def hint(viewer: Any, text: str) -> None:
    """A key's "nothing to do" answer in the status bar: a toast would stay on the canvas
    after it stopped being true (and the term list already shows every label change)."""
    viewer.status = text


def key_name(event: Any) -> str:
    """napari's spelling of a Qt key press ("n", "Shift-N", "Control-Z", "PageDown"), or ""."""
    from qtpy.QtCore import Qt

    key, mods = event.key(), event.modifiers()
    names = {Qt.Key.Key_PageDown: "PageDown", Qt.Key.Key_PageUp: "PageUp"}
    if key in names:
        return names[key]
    text = chr(key) if Qt.Key.Key_0 <= key <= Qt.Key.Key_9 or Qt.Key.Key_A <= key <= Qt.Key.Key_Z \
        else ""
    if not text:
        return ""
    if mods & Qt.KeyboardModifier.ControlModifier:
        return f"Control-{text.upper()}"
    if mods & Qt.KeyboardModifier.ShiftModifier and text.isalpha():
        return f"Shift-{text.upper()}"
    return text.lower()


def forward_annotation_keys(widget: Any, session: AnnotatorSession) -> None:
    """The annotation keys act while ``widget`` (a panel's table) has focus, as on the canvas:
    a table would otherwise swallow 1-0 and n/p for its own keyboard search."""
    from qtpy.QtCore import QEvent, QObject

    class _Forward(QObject):
        def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 - Qt API
            if event.type() != QEvent.Type.KeyPress:
                return False
            handler = _KEYS.get(id(session), {}).get(key_name(event))
            if handler is None:
                return False
            handler()
            return True

    widget.installEventFilter(_Forward(widget))


def unbind_session(session: AnnotatorSession) -> None:
    """Forget a closed session's key handlers (they hold its viewer)."""
    _KEYS.pop(id(session), None)


def bind_viewer(viewer: Any, session: AnnotatorSession) -> None:
    """Keep viewer and session in step; bind PageUp/PageDown, n/p, 1-9/0, u, Shift+N, Ctrl+Z."""
    overlay = text_overlay(viewer)
    try:
        overlay.position = "top_left"
        overlay.font_size = 11
        overlay.color = "white"
    except Exception:  # older napari versions name these differently
        pass

    update_overlay(viewer, session)  # the hint, until images are open
    session.current_changed.connect(lambda *_: (show_current(viewer, session),
                                                update_overlay(viewer, session)))
    def drop_stale_gradcam() -> None:
        for layer in list(viewer.layers):
            if layer.metadata.get(META_KEY) == "gradcam":
                viewer.layers.remove(layer)
    session.dataset_changed.connect(drop_stale_gradcam)
    for sig in (session.predictions_changed, session.settings_changed, session.dataset_changed):
        sig.connect(lambda *_: update_overlay(viewer, session))
    bind_table_layer(viewer, session)  # predictions as a layer's features table

    def guarded(func):
        handler = shows_input_error(func)

        def bound(_viewer: Any = None) -> None:
            handler()
        bound.__name__ = getattr(func, "__name__", "handler")
        return bound

    def step(delta: int):
        def go() -> None:
            session.step(delta)
        go.__name__ = f"ish_step_{'next' if delta > 0 else 'previous'}"
        return guarded(go)

    keys: dict[str, Any] = {}
    for key in ("PageDown", "n"):
        keys[key] = step(+1)
    for key in ("PageUp", "p"):
        keys[key] = step(-1)

    def toggle(k: int):
        def go() -> None:
            if k < len(session.vocabulary) and session.current_path is not None:
                session.cycle_label(session.vocabulary[k])  # the term list shows it
        go.__name__ = f"ish_toggle_term_{k + 1}"
        return guarded(go)

    for k in range(10):
        keys[str((k + 1) % 10)] = toggle(k)

    def undo() -> None:
        if not session.undo():
            hint(viewer, "nothing to undo")
    keys["Control-Z"] = guarded(undo)

    def next_uncertain() -> None:
        if session.probabilities is None:
            hint(viewer, "no predictions yet: train a model or press Predict")
        elif session.next_uncertain() is None:
            hint(viewer, "no unlabelled uncertain term left")
    keys["u"] = guarded(next_uncertain)

    def next_to_label() -> None:
        if session.label_order is None:
            hint(viewer, "no 'next to label' order yet: press Next to label in the Embryos panel")
        elif session.next_to_label() is None:
            hint(viewer, "every ranked image is labelled: press Next to label to rank again")
    keys["Shift-N"] = guarded(next_to_label)

    _KEYS[id(session)] = keys
    route_csv_saves(viewer, lambda layer: layer.metadata.get(META_KEY) == "embryo",
                    session.export_all)

    def bind(provider: Any) -> None:
        for key, func in keys.items():
            provider.bind_key(key, func, overwrite=True)

    bind(viewer)

    # An active image layer's own keys (1/2 = pan/transform mode, ...) come before the
    # viewer's, so our layers get the annotation keys too.
    def layer_added(event: Any) -> None:
        layer = event.value
        if layer.metadata.get(META_KEY) in ("embryo", "gradcam"):
            bind(layer)

    viewer.layers.events.inserted.connect(layer_added)
    for layer in viewer.layers:
        if layer.metadata.get(META_KEY) in ("embryo", "gradcam"):
            bind(layer)
